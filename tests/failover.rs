//! Ordered failover between two test-signer processes holding the same key (two Ledgers with
//! one baking key): the backup serves when the primary is killed, hangs, fails or returns bad
//! signatures, within the configured bounds; the health check brings the primary back; with
//! no signer at all the gateway answers 503 with an error trace, quickly.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use signer_gateway::tezos::{Pkh, PublicKey};
use testkit::harness::{
    assert_error_trace, attestation, eventually, Client, Gateway, GatewayConfig, TestSignerProcess, TEST_CHAIN,
};
use testkit::test_signer::{seed, Mode};

/// `request_timeout` in the config.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of the configured bound (process scheduling on a loaded 2-core CI box).
const SLACK: Duration = Duration::from_millis(1500);
/// How long the health check may take to notice a change (interval 200ms, rise 2).
const HEALTH_SETTLE: Duration = Duration::from_secs(5);

struct Rig {
    primary: TestSignerProcess,
    backup: TestSignerProcess,
    gw: Gateway,
    client: Client,
    pkh: Pkh,
    pk: PublicKey,
    level: i32,
}

/// Which signer signed a payload, going by the signers' `last_sign_hex`.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    Primary,
    Backup,
    Neither,
}

impl Rig {
    async fn new() -> Rig {
        // Same seed: the same key on both, as two Ledgers holding one baking key.
        let primary = TestSignerProcess::start(&[seed(7)], Mode::Ok).await.unwrap();
        let backup = TestSignerProcess::start(&[seed(7)], Mode::Ok).await.unwrap();
        let mut cfg = GatewayConfig::new(&[("primary", primary.addr()), ("backup", backup.addr())]);
        cfg.request_timeout = format!("{}ms", REQUEST_TIMEOUT.as_millis());
        let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
        gw.wait_signers_up(&["primary", "backup"], HEALTH_SETTLE).await.unwrap();
        let pkh = primary.pkhs()[0];
        let pk = primary.keys()[0].public_key().clone();
        Rig {
            primary,
            backup,
            gw,
            client: Client::new().with_timeout(Duration::from_secs(20)),
            pkh,
            pk,
            level: 0,
        }
    }

    /// Sign a fresh attestation (next level); returns payload, status, body, time taken.
    async fn sign_next(&mut self) -> (Vec<u8>, StatusCode, Value, Duration) {
        self.level += 1;
        let payload = attestation(TEST_CHAIN, self.level, 0, 1);
        let t = Instant::now();
        let (status, body) = self.client.sign(self.gw.api, "", self.pkh, &payload).await.unwrap();
        (payload, status, body, t.elapsed())
    }

    async fn served_by(&self, payload: &[u8]) -> Served {
        let want = Some(hex::encode(payload));
        // A killed or hung signer has no stats: it did not serve.
        let by = |stats: anyhow::Result<testkit::test_signer::Stats>| {
            stats.map(|s| s.last_sign_hex == want).unwrap_or(false)
        };
        let backup = by(self.backup.stats().await);
        let primary = match self.primary.stats().await {
            Ok(s) => s.last_sign_hex == want && s.mode != "wrong-sig",
            Err(_) => false,
        };
        match (primary, backup) {
            (true, false) => Served::Primary,
            (false, true) => Served::Backup,
            (false, false) => Served::Neither,
            (true, true) => panic!("both signers signed one payload"),
        }
    }

    /// One request with the primary broken: 200, a valid signature, from the backup, within
    /// `request_timeout` + slack.
    async fn assert_backup_serves(&mut self, case: &str) {
        let (payload, status, body, took) = self.sign_next().await;
        eprintln!("{case}: {status} in {took:?}");
        assert_eq!(status, StatusCode::OK, "{case}: {body}\n{}", self.gw.log());
        self.pk
            .verify(&payload, body["signature"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{case}: returned signature does not verify: {e}"));
        assert_eq!(self.served_by(&payload).await, Served::Backup, "{case}");
        assert!(
            took <= REQUEST_TIMEOUT + SLACK,
            "{case}: took {took:?}, bound {:?}",
            REQUEST_TIMEOUT + SLACK
        );
    }

    /// After the primary is repaired: the health check marks it up and it serves again.
    async fn assert_primary_returns(&mut self, case: &str) {
        self.gw
            .wait_signers_up(&["primary"], HEALTH_SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let deadline = Instant::now() + HEALTH_SETTLE;
        loop {
            let (payload, status, body, _) = self.sign_next().await;
            assert_eq!(status, StatusCode::OK, "{case}: {body}");
            self.pk.verify(&payload, body["signature"].as_str().unwrap()).unwrap();
            match self.served_by(&payload).await {
                Served::Primary => return,
                other if Instant::now() > deadline => {
                    panic!("{case}: primary up but requests still go to {other:?}")
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_process_killed_then_restarted() {
    let mut rig = Rig::new().await;
    let (payload, status, _, _) = rig.sign_next().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rig.served_by(&payload).await, Served::Primary, "primary first");

    rig.primary.kill();
    rig.assert_backup_serves("primary killed").await;
    rig.assert_backup_serves("primary still dead").await;

    rig.primary.restart(Mode::Ok).await.unwrap();
    rig.assert_primary_returns("primary restarted on the same port").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_hangs_then_recovers() {
    let mut rig = Rig::new().await;
    rig.primary.set_mode(Mode::Hang).await.unwrap();
    rig.assert_backup_serves("primary hangs").await;
    rig.assert_backup_serves("primary still hangs").await;
    rig.primary.set_mode(Mode::Ok).await.unwrap();
    rig.assert_primary_returns("primary answers again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_answers_500_then_recovers() {
    let mut rig = Rig::new().await;
    rig.primary.set_mode(Mode::Fail).await.unwrap();
    rig.assert_backup_serves("primary 500 everywhere").await;
    rig.primary.set_mode(Mode::Ok).await.unwrap();
    rig.assert_primary_returns("primary healthy again").await;

    // Health path fine, signing fails: the request still fails over.
    rig.primary.set_mode(Mode::FailSign).await.unwrap();
    rig.assert_backup_serves("primary 500 on sign only").await;
    rig.primary.set_mode(Mode::Ok).await.unwrap();
    rig.assert_primary_returns("primary signs again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_returns_wrong_signatures_then_recovers() {
    let mut rig = Rig::new().await;
    rig.primary.set_mode(Mode::WrongSig).await.unwrap();
    rig.assert_backup_serves("primary signs other bytes").await;
    rig.primary.set_mode(Mode::Ok).await.unwrap();
    rig.assert_primary_returns("primary signs right again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_signers_down_is_503_with_a_trace_then_recovers() {
    let mut rig = Rig::new().await;
    rig.primary.kill();
    rig.backup.kill();
    // Bounded even before the health check has noticed.
    let (_, status, body, took) = rig.sign_next().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error_trace(&body).unwrap();
    assert!(took <= REQUEST_TIMEOUT + SLACK, "took {took:?}");
    rig.gw
        .wait_signer_states(&["primary", "backup"], "down", HEALTH_SETTLE)
        .await
        .unwrap();
    let (_, status, body, took) = rig.sign_next().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_error_trace(&body).unwrap();
    assert!(took <= SLACK, "fail fast once both are known down: took {took:?}");

    // Both alive but answering 500 everywhere: still no signer available.
    rig.backup.restart(Mode::Fail).await.unwrap();
    rig.primary.restart(Mode::Fail).await.unwrap();
    let next_level = AtomicI32::new(10_000);
    eventually(HEALTH_SETTLE, "503 with failing signers", || {
        let level = next_level.fetch_add(1, Ordering::Relaxed);
        let (client, api, pkh) = (&rig.client, rig.gw.api, rig.pkh);
        async move {
            let (status, body) = client.sign(api, "", pkh, &attestation(TEST_CHAIN, level, 0, 1)).await?;
            anyhow::ensure!(status == StatusCode::SERVICE_UNAVAILABLE, "{status} {body}");
            assert_error_trace(&body)?;
            Ok(())
        }
    })
    .await
    .unwrap();
    assert_eq!(rig.backup.stats().await.unwrap().signs, 0);

    rig.backup.set_mode(Mode::Ok).await.unwrap();
    rig.gw.wait_signers_up(&["backup"], HEALTH_SETTLE).await.unwrap();
    rig.level = next_level.load(Ordering::Relaxed);
    rig.assert_backup_serves("backup back").await;
}

/// A request in flight on a signer that hangs does not wait out `request_timeout` when a
/// health probe takes the signer down first: it moves to the next signer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_moves_on_when_health_check_takes_the_signer_down() {
    let primary = TestSignerProcess::start(&[seed(7)], Mode::Ok).await.unwrap();
    let backup = TestSignerProcess::start(&[seed(7)], Mode::Ok).await.unwrap();
    let mut cfg = GatewayConfig::new(&[("primary", primary.addr()), ("backup", backup.addr())]);
    // A patient request timeout, a quick health check: the probe must win.
    cfg.request_timeout = "10s".into();
    cfg.health_interval = "200ms".into();
    cfg.health_timeout = "300ms".into();
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary", "backup"], HEALTH_SETTLE).await.unwrap();
    let pkh = primary.pkhs()[0];
    let client = Client::new().with_timeout(Duration::from_secs(20));
    let (status, _) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 1, 0, 1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    primary.set_mode(Mode::Hang).await.unwrap();
    let payload = attestation(TEST_CHAIN, 2, 0, 1);
    let t = Instant::now();
    let (status, body) = client.sign(gw.api, "", pkh, &payload).await.unwrap();
    let took = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(backup.stats().await.unwrap().last_sign_hex, Some(hex::encode(&payload)));
    // interval + probe timeout ≈ 0.5 s, far below the 10 s request timeout.
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}: the request waited for its own timeout"
    );
    let metrics = client.get(&gw.admin_url("/metrics")).await.unwrap().1;
    let text = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains(r#"signer_gateway_signer_attempts_total{result="went_down",signer="primary"} 1"#),
        "{text}"
    );
}
