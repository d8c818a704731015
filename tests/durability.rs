//! The high watermark survives a crash: signs stream at increasing levels, the gateway is
//! killed with SIGKILL mid-stream and restarted on the same directory; nothing at or below a
//! released signature is signed again with other data. Also: a graceful SIGTERM stop.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use signer_gateway::payload::Kind;
use testkit::harness::{
    assert_error_trace, attestation, block, eventually, preattestation, Client, Gateway, GatewayConfig, TEST_CHAIN,
};
use testkit::test_signer::{seed, TestSigner, TestSignerOptions};
use tokio_util::sync::CancellationToken;

/// The payload of `kind` at (level, round 0); `variant` changes the bytes.
fn payload(kind: Kind, level: i32, variant: u8) -> Vec<u8> {
    match kind {
        Kind::Block => block(TEST_CHAIN, level, 0, variant).unwrap(),
        Kind::Preattestation => preattestation(TEST_CHAIN, level, 0, variant),
        Kind::Attestation => attestation(TEST_CHAIN, level, 0, variant),
    }
}

/// A signature the gateway released (answered 200) before the crash.
#[derive(Debug, Clone)]
struct Released {
    kind: Kind,
    level: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watermark_survives_kill_9_mid_stream() {
    let signer = TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(2)],
        ..Default::default()
    })
    .await
    .unwrap();
    let pkh = signer.pkhs()[0];
    let pk = signer.public_keys()[0].clone();
    let yaml = GatewayConfig::new(&[("primary", signer.addr())]).to_yaml();
    let mut gw = Gateway::start(&yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();

    // One task signs block, preattestation, attestation at levels 1, 2, 3… until the
    // gateway disappears. Only 200 answers count as released.
    let released: Arc<Mutex<Vec<Released>>> = Arc::default();
    let unexpected: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = CancellationToken::new();
    let stream = {
        let (released, unexpected, killed) = (released.clone(), unexpected.clone(), killed.clone());
        let api = gw.api;
        let pk = pk.clone();
        tokio::spawn(async move {
            let client = Client::new().with_timeout(Duration::from_secs(10));
            for level in 1.. {
                for kind in Kind::ALL {
                    let bytes = payload(kind, level, 1);
                    match client.sign(api, "", pkh, &bytes).await {
                        Ok((StatusCode::OK, body)) => {
                            let sig = body["signature"].as_str().unwrap_or_default();
                            if let Err(e) = pk.verify(&bytes, sig) {
                                unexpected.lock().unwrap().push(format!("{kind} {level}: {e}: {body}"));
                            }
                            released.lock().unwrap().push(Released { kind, level });
                        }
                        // An answer cut short by the kill, or a connection refused after it.
                        Err(_) if killed.is_cancelled() => return,
                        Ok(_) if killed.is_cancelled() => return,
                        Ok((status, body)) => {
                            unexpected
                                .lock()
                                .unwrap()
                                .push(format!("{kind} {level}: {status} {body}"));
                            return;
                        }
                        Err(e) => {
                            unexpected.lock().unwrap().push(format!("{kind} {level}: {e:#}"));
                            return;
                        }
                    }
                }
            }
        })
    };
    eventually(Duration::from_secs(15), "30 signatures released", || async {
        let n = released.lock().unwrap().len();
        anyhow::ensure!(n >= 30, "{n} so far; unexpected: {:?}", unexpected.lock().unwrap());
        Ok(())
    })
    .await
    .unwrap();
    killed.cancel();
    gw.kill();
    tokio::time::timeout(Duration::from_secs(15), stream)
        .await
        .expect("stream task ends once the gateway is gone")
        .unwrap();
    let unexpected = unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "before the kill: {unexpected:?}");
    let released = released.lock().unwrap().clone();
    let top = released.iter().map(|r| r.level).max().unwrap();
    let signs_at_kill = signer.stats().signs;

    gw.restart().await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let client = Client::new();
    for r in &released {
        // Same level, other bytes: a double sign.
        let (status, body) = client
            .sign(gw.api, "", pkh, &payload(r.kind, r.level, 2))
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{} at released level {}: {body}",
            r.kind,
            r.level
        );
        assert_error_trace(&body).unwrap();
        // Below the mark.
        let (status, body) = client
            .sign(gw.api, "", pkh, &payload(r.kind, r.level - 1, 3))
            .await
            .unwrap();
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{} below level {}: {body}",
            r.kind,
            r.level
        );
        assert_error_trace(&body).unwrap();
    }
    assert_eq!(signer.stats().signs, signs_at_kill, "refusals never reach the signer");

    // At most one request was in flight at the kill (its mark may be durable without a
    // release), so top + 2 is above every mark: it signs, for every kind.
    for kind in Kind::ALL {
        let bytes = payload(kind, top + 2, 1);
        let (status, body) = client.sign(gw.api, "", pkh, &bytes).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{kind} at {}: {body}", top + 2);
        pk.verify(&bytes, body["signature"].as_str().unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_marks_persist() {
    let signer = TestSigner::spawn(TestSignerOptions {
        seeds: vec![seed(3)],
        ..Default::default()
    })
    .await
    .unwrap();
    let pkh = signer.pkhs()[0];
    let dir = tempfile::tempdir().unwrap();
    let yaml = GatewayConfig::new(&[("primary", signer.addr())]).to_yaml();
    let mut gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let client = Client::new();
    let signed = attestation(TEST_CHAIN, 50, 1, 1);
    let (status, first) = client.sign(gw.api, "", pkh, &signed).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");

    let exit = gw.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(exit.success(), "SIGTERM should exit 0: {exit:?}\n{}", gw.log());
    drop(gw);

    // A new gateway process on the same dir.
    let gw = Gateway::start_in(dir.path(), &yaml).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let signs = signer.stats().signs;
    let (status, body) = client.sign(gw.api, "", pkh, &signed).await.unwrap();
    assert_eq!(status, StatusCode::OK, "identical repeat at the mark: {body}");
    assert_eq!(
        body["signature"], first["signature"],
        "the stored signature is returned"
    );
    assert_eq!(signer.stats().signs, signs, "…without asking the signer");
    for (level, round) in [(50, 0), (49, 5)] {
        let (status, body) = client
            .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, level, round, 2))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "({level}, {round}): {body}");
    }
    let (status, body) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 50, 1, 2))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "same (level, round), other bytes: {body}");
    let (status, body) = client
        .sign(gw.api, "", pkh, &attestation(TEST_CHAIN, 50, 2, 2))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "higher round: {body}");
}
