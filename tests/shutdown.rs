//! The gateway stops as Kubernetes stops it, with SSH sessions open: SIGTERM stops accepting,
//! lets a signature in flight through a tunnel finish, then ends every SSH session (a session
//! holding no forward, and one whose Pi withdrew its forward, too) and exits within the bound;
//! a second signal exits at once.
//!
//! Needs the `signer-gateway` and `signer-tunnel` binaries (`cargo build --workspace --bins`)
//! and OpenSSH's `ssh` and `ssh-keygen`.

use std::time::{Duration, Instant};

use http::StatusCode;
use tempfile::TempDir;
use testkit::harness::{attestation, eventually, Client, Gateway, TEST_CHAIN};
use testkit::ssh_client::{SshClient, SshKey, ALLOCATED};
use testkit::test_signer::{seed, Mode, TestSigner, TestSignerHandle, TestSignerOptions};
use testkit::tunnel_harness::{TunnelClient, TunnelConfig};

/// `shutdown_grace` in the config.
const GRACE: Duration = Duration::from_secs(5);
/// A stop must end within the grace, the gateway's own stop bound (2 s) and process slack.
const STOP_WITHIN: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(15);

struct Rig {
    gw: Gateway,
    pi: TestSignerHandle,
    key: SshKey,
    _dir: TempDir,
}

impl Rig {
    async fn start(grace: Duration) -> Rig {
        let dir = tempfile::Builder::new().prefix("gateway-shutdown-").tempdir().unwrap();
        let key = SshKey::generate(dir.path(), "pi_ed25519").unwrap();
        let pi = TestSigner::spawn(TestSignerOptions {
            seeds: vec![seed(21)],
            ..Default::default()
        })
        .await
        .unwrap();
        let yaml = format!(
            r#"api: {{listen: 127.0.0.1:0}}
admin: {{listen: 127.0.0.1:0}}
watermark: {{backend: file, dir: "{{dir}}/watermarks", create_if_missing: true}}
ssh: {{listen: 127.0.0.1:0, host_key: "{{dir}}/ssh_host_ed25519_key"}}
signers:
  - name: pi
    tunnel: {{keys: ["{}"]}}
request_timeout: 30s
health_check: {{interval: 200ms, timeout: 5s, rise: 1, fall: 1}}
shutdown_grace: {}ms
log_format: text
"#,
            key.public,
            grace.as_millis()
        );
        let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
        Rig { gw, pi, key, _dir: dir }
    }

    /// `ssh -N -R` to the Pi's signer, up and serving.
    async fn tunnel(&self) -> SshClient {
        let (ssh, _) = self.gw.ssh_endpoint().unwrap();
        let mut client = SshClient::reverse_tunnel(&self.key, ssh, "pi", self.pi.addr(), &[]).unwrap();
        client.wait_stderr(ALLOCATED, SETTLE).await.unwrap();
        self.gw.wait_signers_up(&["pi"], SETTLE).await.unwrap();
        // The gateway learns the key now, so a later sign only needs the signature.
        let url = self.gw.api_url(&format!("/keys/{}", self.pi.pkhs()[0]));
        let (status, body) = Client::new().get(&url).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        client
    }

    /// Wait until the gateway has accepted (authenticated) `want` SSH sessions.
    async fn wait_sessions(&self, want: usize) {
        eventually(SETTLE, &format!("{want} accepted ssh session(s)"), || async {
            let n = self
                .gw
                .metric("signer_gateway_ssh_sessions_total", "result", "accepted")
                .await?;
            anyhow::ensure!(n as usize == want, "{n} accepted");
            Ok(())
        })
        .await
        .unwrap();
    }

    /// A signature request through the tunnel, started and waited for until it reached the
    /// Pi's signer (switched to `mode` first); returns the request's task.
    async fn sign_in_flight(
        &self,
        mode: Mode,
    ) -> tokio::task::JoinHandle<anyhow::Result<(StatusCode, serde_json::Value)>> {
        self.pi.set_mode(mode);
        let (api, pkh) = (self.gw.api, self.pi.pkhs()[0]);
        let sign = tokio::spawn(async move {
            Client::new()
                .with_timeout(Duration::from_secs(60))
                .sign(api, "", pkh, &attestation(TEST_CHAIN, 5, 0, 1))
                .await
        });
        eventually(SETTLE, "the sign request to reach the pi", || async {
            anyhow::ensure!(self.pi.stats().sign_requests == 1);
            Ok(())
        })
        .await
        .unwrap();
        sign
    }

    /// SIGTERM; the process must be gone within `within`.
    async fn stop_within(&mut self, within: Duration) -> Duration {
        let t = Instant::now();
        let status = self.gw.terminate(within).await.unwrap();
        assert!(status.success(), "exit status {status}");
        t.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_session_that_holds_no_forward() {
    let mut rig = Rig::start(GRACE).await;
    let (ssh, _) = rig.gw.ssh_endpoint().unwrap();
    // Authenticated, asks for nothing: `ssh -N` without -R.
    let mut plain = SshClient::spawn(&rig.key, ssh, "pi", &["-N"]).unwrap();
    rig.wait_sessions(1).await;
    let took = rig.stop_within(STOP_WITHIN).await;
    assert!(took < GRACE, "nothing was in flight, yet the stop took {took:?}");
    plain.wait_exit(SETTLE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_session_whose_forward_was_withdrawn() {
    let mut rig = Rig::start(GRACE).await;
    let (ssh, host_key) = rig.gw.ssh_endpoint().unwrap();
    // The Pi's signer is down: signer-tunnel keeps its session but withdraws the forward.
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tunnel = TunnelClient::start(dir.path(), &TunnelConfig::new(ssh, &host_key, &rig.key.private, closed)).unwrap();
    rig.wait_sessions(1).await;
    let took = rig.stop_within(STOP_WITHIN).await;
    assert!(took < GRACE, "nothing was in flight, yet the stop took {took:?}");
    drop(tunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_signature_through_a_tunnel_finish() {
    let mut rig = Rig::start(GRACE).await;
    let _tunnel = rig.tunnel().await;
    // The request reaches the Pi, then the gateway is stopped under it.
    let sign = rig.sign_in_flight(Mode::Slow(Duration::from_millis(1500))).await;
    let took = rig.stop_within(STOP_WITHIN).await;
    let (status, body) = sign.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "the signature in flight completes: {body}");
    assert_eq!(rig.pi.stats().signs, 1);
    assert!(took < GRACE + Duration::from_secs(3), "stop took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    // A long grace: only the second signal can end this stop quickly.
    let mut rig = Rig::start(Duration::from_secs(60)).await;
    let _tunnel = rig.tunnel().await;
    let sign = rig.sign_in_flight(Mode::Hang).await;
    rig.gw.signal(libc::SIGTERM).unwrap();
    // The first signal starts a graceful stop that waits for the hung request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rig.gw.is_running(), "the graceful stop waits for the request in flight");
    let t = Instant::now();
    rig.gw.signal(libc::SIGTERM).unwrap();
    let status = rig.gw.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "exit took {:?}", t.elapsed());
    assert_eq!(status.code(), Some(130), "{status}");
    sign.abort();
}
