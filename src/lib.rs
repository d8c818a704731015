//! Test-support code for signer-gateway; never shipped.
//!
//! # Layout
//! - [`test_signer`]: an octez-compatible remote signer with real ed25519 keys and runtime
//!   fault modes, in-process ([`test_signer::TestSigner::spawn`]) or as the `test-signer` binary.
//! - [`harness`]: runs the real `signer-gateway` binary and `test-signer` processes in temp
//!   dirs, an HTTP client, deadline polling and payload builders, for the tests in `tests/`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod fault_proxy;
pub mod harness;
pub mod ssh_client;
pub mod test_signer;
pub mod tunnel_harness;
