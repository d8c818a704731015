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
//! - [`etcd`]: real etcd members on loopback (one, or a cluster of three) behind fault proxies.
//! - [`fault_proxy`]: a TCP proxy that blackholes, resets, delays and freezes links.
//! - [`traffic`]: what the tunnel tests send during a phase and who answered.
//! - [`tunnel_rig`]: the one rig of the tunnel tests and benchmarks: gateway, `pi` behind a
//!   tunnel, a TCP `backup`, the fault proxy, the tunnel's client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod etcd;
pub mod fault_proxy;
pub mod harness;
pub mod ssh_client;
pub mod test_signer;
pub mod traffic;
pub mod tunnel_harness;
pub mod tunnel_rig;

/// One end-to-end test on a fresh rig: `$start()` (an `async fn() -> anyhow::Result<R>`, e.g.
/// a [`tunnel_rig::TunnelRig`] with the suite's options; or `<$rig>::start()` for a rig type),
/// then `$body(&mut rig)` (an `async fn(&mut R) -> anyhow::Result<()>`), then
/// `rig.check(result)`, which panics with the error and whatever logs the rig keeps.
///
/// ```text
/// testkit::rig_test!(with start_rig;
///     /// What it checks.
///     signatures_flow,
///     signatures_flow_body
/// );
/// ```
#[macro_export]
macro_rules! rig_test {
    (with $start:expr; $(#[$meta:meta])* $name:ident, $body:ident) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let mut rig = $start().await.expect("starting the rig");
            let result = $body(&mut rig).await;
            rig.check(result);
        }
    };
    ($rig:ty; $(#[$meta:meta])* $name:ident, $body:ident) => {
        $crate::rig_test!(with <$rig>::start; $(#[$meta])* $name, $body);
    };
}
