//! tz4 (BLS) keys end to end through the real gateway binary and two `test-signer`
//! processes holding the same keys: every consensus kind under both schemes (`version`), a
//! consensus key with its companion key as the baker calls them, failover past a signer that
//! signs with the wrong scheme, the proof of possession, `/authorized_keys` answered from the
//! health probe, and bad input refused before any mark is raised.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use signer_gateway::tezos::{BlsScheme, PublicKey};
use testkit::harness::{
    assert_error_trace, attestation, block, bls_attestation, bls_preattestation, Client, Gateway, GatewayConfig, Reply,
    TestSignerProcess, TEST_CHAIN,
};
use testkit::test_signer::{bls_key_from_seed, key_from_seed, Mode, TestKey};

const SETTLE: Duration = Duration::from_secs(10);

/// Two signers holding a tz1 key, a tz4 consensus key and its tz4 companion key; the
/// consensus key may prove possession, the companion key is declared as such.
struct Rig {
    primary: TestSignerProcess,
    backup: TestSignerProcess,
    gw: Gateway,
    client: Client,
    consensus: TestKey,
    companion: TestKey,
    tz1: TestKey,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut GatewayConfig)) -> Rig {
        let (consensus, companion, tz1) = (bls_key_from_seed(41), bls_key_from_seed(42), key_from_seed(43));
        let keys = [tz1.clone(), consensus.clone(), companion.clone()];
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let primary = TestSignerProcess::start_keys(any, &keys, Mode::Ok).await.unwrap();
        let backup = TestSignerProcess::start_keys(any, &keys, Mode::Ok).await.unwrap();
        let mut cfg = GatewayConfig::new(&[("primary", primary.addr()), ("backup", backup.addr())]);
        cfg.request_timeout = "2s".into();
        cfg.policy_keys = format!(
            "{{ {}: {{ allow_prove_possession: true }}, {}: {{ role: companion }} }}",
            consensus.pkh(),
            companion.pkh()
        );
        tweak(&mut cfg);
        let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
        gw.wait_signers_up(&["primary", "backup"], SETTLE).await.unwrap();
        Rig {
            primary,
            backup,
            gw,
            client: Client::new().with_timeout(Duration::from_secs(20)),
            consensus,
            companion,
            tz1,
        }
    }

    /// POST the bytes to sign with `key`, with an optional query.
    async fn sign(&self, key: &TestKey, query: Option<&str>, bytes: &[u8]) -> Reply {
        let mut url = self.gw.api_url(&format!("/keys/{}", key.pkh()));
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        let body = format!("\"{}\"\n", hex::encode(bytes));
        self.client
            .raw(Method::POST, &url, body, &[("content-type", "application/json")])
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Reply {
        self.client
            .raw(Method::GET, &self.gw.api_url(path), "", &[])
            .await
            .unwrap()
    }

    /// Set the mode of both signers.
    async fn both(&self, mode: Mode) {
        self.primary.set_mode(mode).await.unwrap();
        self.backup.set_mode(mode).await.unwrap();
    }
}

fn signer_of(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-signer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A 200 whose signature verifies for `key` over `bytes` under `scheme`; returns it.
fn signed(reply: &Reply, key: &TestKey, bytes: &[u8], scheme: BlsScheme) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let sig = reply.value()["signature"].as_str().expect("signature").to_string();
    key.public_key()
        .verify_as(bytes, &sig, scheme)
        .unwrap_or_else(|e| panic!("signature {sig} does not verify ({scheme:?}): {e}"));
    sig
}

/// A refusal with this status, as a JSON error trace whose message mentions `needle`.
fn refused(reply: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.value();
    assert_error_trace(&body).unwrap();
    let msg = body[0]["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tz4_signs_every_consensus_kind_under_the_scheme_asked_for() {
    let rig = Rig::new().await;
    let key = &rig.consensus;
    let queries = [
        (None, BlsScheme::ProofOfPossession),
        (Some("version=3"), BlsScheme::ProofOfPossession),
        (Some("version=2"), BlsScheme::ProofOfPossession),
        (Some("version=1"), BlsScheme::Augmented),
    ];
    for (i, (query, scheme)) in queries.into_iter().enumerate() {
        let level = 10 + i as i32;
        let payloads = [
            block(TEST_CHAIN, level, 0, 1).unwrap(),
            bls_preattestation(TEST_CHAIN, level, 0, 1),
            bls_attestation(TEST_CHAIN, level, 0, 1),
        ];
        for bytes in &payloads {
            let reply = rig.sign(key, query, bytes).await;
            let sig = signed(&reply, key, bytes, scheme);
            assert!(sig.starts_with("BLsig"), "{sig}");
            assert_eq!(signer_of(&reply), "primary");
            assert!(
                key.public_key().verify_as(bytes, &sig, scheme.other()).is_err(),
                "{query:?}: valid under both schemes"
            );
        }
        let stats = rig.primary.stats().await.unwrap();
        assert_eq!(stats.last_query.as_deref(), query, "version passed on unchanged");
    }
    // The identical repeat comes from the stored mark.
    let again = bls_attestation(TEST_CHAIN, 13, 0, 1);
    let reply = rig.sign(key, Some("version=1"), &again).await;
    signed(&reply, key, &again, BlsScheme::Augmented);
    assert_eq!(signer_of(&reply), "cache");
    // ... for its own scheme only: the same bytes under the other scheme would be a second,
    // different signature of one operation.
    refused(
        &rig.sign(key, Some("version=2"), &again).await,
        StatusCode::CONFLICT,
        "augmented",
    );
    // The watermark holds for tz4 exactly as for tz1.
    let conflicting = bls_attestation(TEST_CHAIN, 13, 0, 2);
    refused(
        &rig.sign(key, None, &conflicting).await,
        StatusCode::CONFLICT,
        "different",
    );
    let below = bls_attestation(TEST_CHAIN, 12, 0, 3);
    refused(&rig.sign(key, None, &below).await, StatusCode::CONFLICT, "below");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consensus_and_companion_keys_sign_what_the_baker_sends() {
    let rig = Rig::new().await;
    let (consensus, companion) = (&rig.consensus, &rig.companion);
    // octez's baker: the consensus key, then the companion key, the very same bytes.
    for level in 1..=5 {
        let bytes = bls_attestation(TEST_CHAIN, level, 0, 1);
        let a = signed(
            &rig.sign(consensus, Some("version=3"), &bytes).await,
            consensus,
            &bytes,
            BlsScheme::ProofOfPossession,
        );
        let b = signed(
            &rig.sign(companion, Some("version=3"), &bytes).await,
            companion,
            &bytes,
            BlsScheme::ProofOfPossession,
        );
        assert_ne!(a, b, "two keys, two signatures");
    }
    // A different attestation at the same (level, round) is refused for either key.
    let other = bls_attestation(TEST_CHAIN, 5, 0, 2);
    for key in [consensus, companion] {
        refused(&rig.sign(key, None, &other).await, StatusCode::CONFLICT, "different");
    }
    // The companion key signs attestations and nothing else.
    let pre = bls_preattestation(TEST_CHAIN, 6, 0, 1);
    refused(
        &rig.sign(companion, None, &pre).await,
        StatusCode::FORBIDDEN,
        "preattestation",
    );
    let blk = block(TEST_CHAIN, 6, 0, 1).unwrap();
    refused(&rig.sign(companion, None, &blk).await, StatusCode::FORBIDDEN, "block");
    // ... and a refusal raised no mark for the consensus key, which signs both.
    signed(
        &rig.sign(consensus, None, &pre).await,
        consensus,
        &pre,
        BlsScheme::ProofOfPossession,
    );
    signed(
        &rig.sign(consensus, None, &blk).await,
        consensus,
        &blk,
        BlsScheme::ProofOfPossession,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_using_the_wrong_scheme_is_skipped() {
    let rig = Rig::new().await;
    let key = &rig.consensus;
    rig.primary.set_mode(Mode::WrongScheme).await.unwrap();
    for (level, query, scheme) in [
        (1, Some("version=2"), BlsScheme::ProofOfPossession),
        (2, Some("version=1"), BlsScheme::Augmented),
    ] {
        // The backup must be up again after the previous round took the primary down.
        rig.gw.wait_signers_up(&["backup"], SETTLE).await.unwrap();
        let bytes = bls_attestation(TEST_CHAIN, level, 0, 1);
        let reply = rig.sign(key, query, &bytes).await;
        signed(&reply, key, &bytes, scheme);
        assert_eq!(signer_of(&reply), "backup", "the wrong-scheme answer is not released");
        let primary = rig.primary.stats().await.unwrap();
        assert_eq!(
            primary.last_sign_hex.as_deref(),
            Some(hex::encode(&bytes).as_str()),
            "the primary was asked first"
        );
        let status = rig.gw.status().await.unwrap();
        let err = status.to_string();
        assert!(err.contains("where the request asked for"), "{err}");
        // Let the primary come back (its probes pass) before the next round.
        rig.gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_any_mark_is_raised() {
    let rig = Rig::new().await;
    let (bls, tz1) = (&rig.consensus, &rig.tz1);
    let level = 50;
    // tz4 layout under a tz1 key, tz1 layout under a tz4 key.
    let bls_bytes = bls_attestation(TEST_CHAIN, level, 0, 1);
    let tz1_bytes = attestation(TEST_CHAIN, level, 0, 1);
    refused(
        &rig.sign(tz1, None, &bls_bytes).await,
        StatusCode::BAD_REQUEST,
        "tag 41",
    );
    refused(
        &rig.sign(bls, None, &tz1_bytes).await,
        StatusCode::BAD_REQUEST,
        "tag 21",
    );
    // Aggregates (tags 30/31) are never signed.
    for (magic, tag) in [(0x12u8, 30u8), (0x13, 31)] {
        let mut agg = bls_attestation(TEST_CHAIN, level, 0, 1);
        agg[0] = magic;
        agg[37] = tag;
        refused(&rig.sign(bls, None, &agg).await, StatusCode::BAD_REQUEST, "aggregate");
    }
    // Unknown versions, and version 0 (no BLS) for a tz4 key.
    for q in ["version=7", "version=0", "version=2&version=1", "version="] {
        refused(
            &rig.sign(bls, Some(q), &bls_bytes).await,
            StatusCode::BAD_REQUEST,
            "version",
        );
    }
    // Nothing above raised a mark: both layouts still sign at that level under their keys.
    signed(
        &rig.sign(bls, None, &bls_bytes).await,
        bls,
        &bls_bytes,
        BlsScheme::ProofOfPossession,
    );
    signed(
        &rig.sign(tz1, Some("version=0"), &tz1_bytes).await,
        tz1,
        &tz1_bytes,
        BlsScheme::ProofOfPossession,
    );

    // Malformed BLsig answers from every signer: a 503 trace naming the failure. The mark for
    // these bytes stays (a skipped level is safe), and the very same bytes sign later.
    rig.both(Mode::MalformedSig).await;
    let bytes = bls_attestation(TEST_CHAIN, level + 1, 0, 1);
    refused(
        &rig.sign(bls, None, &bytes).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "bad signature",
    );
    rig.both(Mode::Ok).await;
    rig.gw.wait_signers_up(&["primary", "backup"], SETTLE).await.unwrap();
    signed(
        &rig.sign(bls, None, &bytes).await,
        bls,
        &bytes,
        BlsScheme::ProofOfPossession,
    );

    // The gateway keeps serving: status is readable and both signers are up.
    assert!(rig.gw.status().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_off_the_curve_is_a_signer_failure() {
    let rig = Rig::new().await;
    let key = &rig.consensus;
    // Before the gateway has ever seen the key, every signer answers a BLpk that is no point.
    rig.both(Mode::BadKey).await;
    let bytes = bls_attestation(TEST_CHAIN, 7, 0, 1);
    refused(
        &rig.sign(key, None, &bytes).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not a valid point",
    );
    // Both signers failed that answer and are down until their probes pass again.
    let reply = rig.get(&format!("/keys/{}", key.pkh())).await;
    refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "no signer");
    rig.both(Mode::Ok).await;
    rig.gw.wait_signers_up(&["primary", "backup"], SETTLE).await.unwrap();
    // No mark was raised: other bytes at that level sign.
    let other = bls_attestation(TEST_CHAIN, 7, 0, 2);
    signed(
        &rig.sign(key, None, &other).await,
        key,
        &other,
        BlsScheme::ProofOfPossession,
    );
    let reply = rig.get(&format!("/keys/{}", key.pkh())).await;
    assert_eq!(reply.value()["public_key"], Value::String(key.public_key().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_of_possession_only_where_allowed_and_verified() {
    let rig = Rig::new().await;
    let (consensus, companion) = (&rig.consensus, &rig.companion);
    let PublicKey::Bls(companion_pk) = companion.public_key() else {
        panic!("tz4")
    };
    let proof_of = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.value()["bls_prove_possession"]
            .as_str()
            .expect("bls_prove_possession")
            .to_string()
    };
    // Allowed for the consensus key: over its own key, or over the key named by bls_pk.
    let own = proof_of(&rig.get(&format!("/bls_prove_possession/{}", consensus.pkh())).await);
    consensus.public_key().verify_possession(&own, None).unwrap();
    let path = format!(
        "/bls_prove_possession/{}?bls_pk={}",
        consensus.pkh(),
        companion.public_key()
    );
    let over = proof_of(&rig.get(&path).await);
    consensus
        .public_key()
        .verify_possession(&over, Some(companion_pk))
        .unwrap();
    assert!(consensus.public_key().verify_possession(&over, None).is_err());
    // Off by default (the companion key's policy does not allow it), and tz4 only.
    let reply = rig.get(&format!("/bls_prove_possession/{}", companion.pkh())).await;
    refused(&reply, StatusCode::FORBIDDEN, "allow_prove_possession");
    let reply = rig.get(&format!("/bls_prove_possession/{}", rig.tz1.pkh())).await;
    refused(&reply, StatusCode::BAD_REQUEST, "tz4");
    let reply = rig
        .get(&format!("/bls_prove_possession/{}?bls_pk=BLpkXYZ", consensus.pkh()))
        .await;
    refused(&reply, StatusCode::BAD_REQUEST, "bls_pk");
    let stats = rig.primary.stats().await.unwrap();
    // A proof that does not verify is never returned: the primary's is skipped.
    rig.primary.set_mode(Mode::WrongSig).await.unwrap();
    let reply = rig.get(&format!("/bls_prove_possession/{}", consensus.pkh())).await;
    let proof = proof_of(&reply);
    consensus.public_key().verify_possession(&proof, None).unwrap();
    assert_eq!(signer_of(&reply), "backup");
    assert!(rig.primary.stats().await.unwrap().requests > stats.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_keys_is_answered_from_the_health_probe() {
    // Probes every second: the answers below all fall between two probes.
    let rig = Rig::with(|cfg| cfg.health_interval = "1s".into()).await;
    rig.primary.control().reset().await.unwrap();
    let fresh = Client::fresh_connections().with_timeout(Duration::from_secs(5));
    for _ in 0..20 {
        let reply = fresh
            .raw(Method::GET, &rig.gw.api_url("/authorized_keys"), "", &[])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.value(), serde_json::json!({}));
        assert_eq!(signer_of(&reply), "primary");
    }
    let requests = rig.primary.stats().await.unwrap().requests;
    // 20 answers, and at most the probes of that time reached the signer.
    assert!(requests <= 3, "{requests} requests reached the primary for 20 answers");

    // With the primary failing, the answer comes from the backup's probe; with every signer
    // failing, nothing is answered from an old probe.
    rig.primary.set_mode(Mode::Fail).await.unwrap();
    rig.gw.wait_signer_states(&["primary"], "down", SETTLE).await.unwrap();
    let reply = rig.get("/authorized_keys").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(signer_of(&reply), "backup");
    rig.backup.set_mode(Mode::Fail).await.unwrap();
    rig.gw.wait_signer_states(&["backup"], "down", SETTLE).await.unwrap();
    let reply = rig.get("/authorized_keys").await;
    assert_ne!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_error_trace(&reply.value()).unwrap();
}
