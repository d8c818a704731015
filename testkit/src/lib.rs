//! Test support for signer-gateway and signer-tunnel; never shipped.
//!
//! # Layout
//! - [`test_signer`]: an octez-compatible remote signer with real ed25519 and BLS keys and
//!   runtime fault modes, in-process ([`test_signer::TestSigner::spawn`]) or as the
//!   `test-signer` binary.
//! - [`harness`]: the real `signer-gateway` binary and `test-signer` processes in temp dirs, one
//!   binary finder that refuses stale binaries, one signal helper, an HTTP client, deadline
//!   polling and payload builders.
//! - [`tunnel_harness`]: the real `signer-tunnel` binary, its config and log.
//! - [`ssh_client`]: stock OpenSSH clients (`ssh -R`) and keys.
//! - [`fault_proxy`]: a TCP proxy that blackholes, resets, delays and freezes links.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fault_proxy;
pub mod harness;
pub mod ssh_client;
pub mod test_signer;
pub mod tunnel_harness;
