//! Concurrent requests at one (key, kind, level, round) through the real gateway binary:
//! exactly one of many conflicting payloads is signed, and many identical payloads get one
//! signature from one signer call; for a tz1 and a tz4 key alike.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::time::Duration;

use http::StatusCode;
use testkit::harness::{
    assert_error_trace, attestation, bls_attestation, bls_preattestation, preattestation, Client, Gateway,
    GatewayConfig, TEST_CHAIN,
};
use testkit::test_signer::{bls_key_from_seed, key_from_seed, TestKey, TestSigner, TestSignerOptions};
use tokio::task::JoinSet;

const N: usize = 64;

/// A consensus payload builder: (chain, level, round, variant) → bytes.
type Build = fn([u8; 4], i32, i32, u8) -> Vec<u8>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_among_conflicting_payloads_and_one_signature_for_identical_ones() {
    one_winner(key_from_seed(1), attestation, preattestation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_winner_with_a_tz4_key() {
    one_winner(bls_key_from_seed(1), bls_attestation, bls_preattestation).await;
}

async fn one_winner(key: TestKey, attestation: Build, preattestation: Build) {
    let signer = TestSigner::spawn(TestSignerOptions {
        seeds: vec![],
        keys: vec![key],
        ..Default::default()
    })
    .await
    .unwrap();
    let pkh = signer.pkhs()[0];
    let pk = signer.public_keys()[0].clone();
    let gw = Gateway::start(&GatewayConfig::new(&[("primary", signer.addr())]).to_yaml())
        .await
        .unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(10)).await.unwrap();
    let api = gw.api;
    let client = Client::new().with_timeout(Duration::from_secs(15));

    // 1. N different attestations at (level 100, round 0), all at once.
    let mut set = JoinSet::new();
    for i in 0..N {
        let c = client.clone();
        let payload = attestation(TEST_CHAIN, 100, 0, i as u8);
        set.spawn(async move {
            let r = c.sign(api, "", pkh, &payload).await;
            (payload, r)
        });
    }
    let mut winners = Vec::new();
    let mut refused = 0;
    while let Some(joined) = set.join_next().await {
        let (payload, result) = joined.unwrap();
        let (status, body) = result.unwrap();
        match status {
            StatusCode::OK => winners.push((payload, body)),
            StatusCode::CONFLICT => {
                assert_error_trace(&body).unwrap();
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one signature at one (level, round): {winners:?}"
    );
    assert_eq!(refused, N - 1);
    let (payload, body) = &winners[0];
    pk.verify(payload, body["signature"].as_str().unwrap()).unwrap();
    let st = signer.stats();
    assert_eq!(st.signs, 1, "refused requests never reach the signer: {st:?}");
    assert_eq!(st.last_sign_hex.as_deref(), Some(hex::encode(payload).as_str()));

    // Kinds are independent: a preattestation at the same (level, round) is fine.
    let pre = preattestation(TEST_CHAIN, 100, 0, 0);
    let (status, body) = client.sign(api, "", pkh, &pre).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    pk.verify(&pre, body["signature"].as_str().unwrap()).unwrap();
    let signs_before = signer.stats().signs;

    // 2. N identical attestations at a higher level, all at once: one signer call, one answer.
    let payload = attestation(TEST_CHAIN, 101, 0, 7);
    let mut set = JoinSet::new();
    for _ in 0..N {
        let c = client.clone();
        let payload = payload.clone();
        set.spawn(async move { c.sign(api, "", pkh, &payload).await });
    }
    let mut signatures = BTreeSet::new();
    while let Some(joined) = set.join_next().await {
        let (status, body) = joined.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "identical repeats are answered: {body}");
        signatures.insert(body["signature"].as_str().unwrap().to_string());
    }
    assert_eq!(signatures.len(), 1, "one signature for identical bytes: {signatures:?}");
    let sig = signatures.first().unwrap();
    pk.verify(&payload, sig).unwrap();
    let st = signer.stats();
    assert_eq!(
        st.signs,
        signs_before + 1,
        "the signer signed the identical payload once (a Ledger refuses repeats): {st:?}"
    );
    assert_eq!(st.last_sign_hex.as_deref(), Some(hex::encode(&payload).as_str()));

    // A later identical repeat is answered from the stored mark, without the signer.
    let (status, body) = client.sign(api, "", pkh, &payload).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["signature"].as_str(), Some(sig.as_str()));
    assert_eq!(signer.stats().signs, signs_before + 1);
}

/// The per-key lock covers the watermark check only: with a slow signer, a request for level
/// L+1 is answered without waiting for L's signer, and identical requests in flight still get
/// one signature from one signer call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_higher_level_never_waits_on_a_lower_ones_signer() {
    const SIGNER_DELAY: Duration = Duration::from_secs(3);
    let signer = TestSigner::spawn(TestSignerOptions {
        seeds: vec![],
        keys: vec![key_from_seed(2)],
        mode: testkit::test_signer::Mode::Slow(SIGNER_DELAY),
        ..Default::default()
    })
    .await
    .unwrap();
    let pkh = signer.pkhs()[0];
    let mut cfg = GatewayConfig::new(&[("primary", signer.addr())]);
    // The probes are as slow as the signs: give them (and the signs) room.
    cfg.health_timeout = "10s".into();
    cfg.request_timeout = "10s".into();
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    gw.wait_signers_up(&["primary"], Duration::from_secs(30)).await.unwrap();
    let (api, client) = (gw.api, Client::new().with_timeout(Duration::from_secs(30)));
    // The public key first (as a baker's first call does), so the signs below reach the
    // watermark in the order they are sent.
    let (status, _) = client.get(&gw.api_url(&format!("/keys/{pkh}"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let started = tokio::time::Instant::now();
    let sign_at = |level: i32, variant: u8| {
        let c = client.clone();
        async move {
            let r = c.sign(api, "", pkh, &attestation(TEST_CHAIN, level, 0, variant)).await;
            (r, started.elapsed())
        }
    };
    let before = signer.stats().sign_requests;
    let low = tokio::spawn(sign_at(10, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let high = tokio::spawn(sign_at(11, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Identical requests for level 12, all at once: one of them asks the signer.
    let identical: Vec<_> = (0..16).map(|_| tokio::spawn(sign_at(12, 1))).collect();
    let ((low_reply, low_done), (high_reply, high_done)) = (low.await.unwrap(), high.await.unwrap());
    let low_reply = low_reply.unwrap();
    assert_eq!(low_reply.0, StatusCode::OK, "{}", low_reply.1);
    let high_reply = high_reply.unwrap();
    assert_eq!(high_reply.0, StatusCode::OK, "{}", high_reply.1);
    // Behind the lock, L+1 would end a whole signer delay after L.
    assert!(
        high_done < low_done + SIGNER_DELAY / 2,
        "level 11 answered at {high_done:?}, level 10 at {low_done:?}: it waited for level 10's signer"
    );
    let mut signatures = BTreeSet::new();
    for h in identical {
        let (reply, _) = h.await.unwrap();
        let (status, body) = reply.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        signatures.insert(body["signature"].as_str().unwrap().to_string());
    }
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    let asked = signer.stats().sign_requests - before;
    assert_eq!(
        asked, 3,
        "levels 10, 11 and one call for the 16 identical level-12 requests"
    );
}
