//! Concurrent requests at one (key, kind, level, round) through the real gateway binary:
//! exactly one of many conflicting payloads is signed, and many identical payloads get one
//! signature from one signer call; for a tz1 and a tz4 key alike.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::time::Duration;

use gateway_e2e::harness::{
    assert_error_trace, attestation, bls_attestation, bls_preattestation, preattestation, Client, Gateway,
    GatewayConfig, TEST_CHAIN,
};
use gateway_e2e::test_signer::{bls_key_from_seed, key_from_seed, TestKey, TestSigner, TestSignerOptions};
use http::StatusCode;
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
