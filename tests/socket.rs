//! octez's socket protocol end to end, through the real gateway binary: socket signers in the
//! pool (`signers[].protocol: socket`), mixed with HTTP ones under one watermark and failing
//! over both ways, bad answers from a socket signer, and the socket front end
//! (`socket_api`) a baker with a `tcp://` key URI talks to, bad input included.
//!
//! The signers are `testkit`'s test signers in this process (the socket flavour answers as
//! octez's `socket_daemon.ml` does); the baker's side is driven with the gateway's own codec
//! (`signer_gateway::socket`), whose encodings are checked against octez's in its unit tests.
//! A socket signer behind a real tunnel is in `tests/tunnel_client.rs`.
//!
//! Needs the `signer-gateway` binary: `cargo build --workspace --bins` first.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use signer_gateway::socket::{
    decode_response, encode_request, read_frame, write_frame, AuthenticatedRequest, AuthorizedKeys, BlsProvePossession,
    Request, Response, SignRequest, SignatureVersion, MAX_FRAME,
};
use signer_gateway::tezos::{self, BlsScheme};
use testkit::harness::{
    assert_error_trace, attestation, bls_attestation, eventually, Client, Gateway, GatewayConfig, TEST_CHAIN,
};
use testkit::test_signer::{
    bls_key_from_seed, key_from_seed, Mode, Protocol, TestKey, TestSigner, TestSignerHandle, TestSignerOptions,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const SETTLE: Duration = Duration::from_secs(10);

fn keys() -> Vec<TestKey> {
    vec![key_from_seed(61), bls_key_from_seed(62)]
}

async fn signer(protocol: Protocol) -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        protocol,
        seeds: Vec::new(),
        keys: keys(),
        ..TestSignerOptions::default()
    })
    .await
    .unwrap()
}

/// A gateway over `signers` (name, handle) in this order, each declared with its protocol.
async fn gateway(signers: &[(&str, &TestSignerHandle)], tweak: impl FnOnce(&mut GatewayConfig)) -> Gateway {
    let list: Vec<(&str, SocketAddr)> = signers.iter().map(|(n, s)| (*n, s.addr())).collect();
    let mut cfg = GatewayConfig::new(&list);
    cfg.socket_signers = signers
        .iter()
        .filter(|(_, s)| s.protocol() == Protocol::Socket)
        .map(|(n, _)| n.to_string())
        .collect();
    cfg.policy_keys = format!("{{ {}: {{ allow_prove_possession: true }} }}", keys()[1].pkh());
    tweak(&mut cfg);
    let gw = Gateway::start(&cfg.to_yaml()).await.unwrap();
    let names: Vec<&str> = signers.iter().map(|(n, _)| *n).collect();
    gw.wait_signers_up(&names, SETTLE).await.unwrap();
    gw
}

/// Sign `bytes` with `key` over HTTP: the status and the body (the signers' counters tell
/// who served).
async fn sign(gw: &Gateway, key: &TestKey, query: Option<&str>, bytes: &[u8]) -> (StatusCode, Value) {
    Client::new()
        .sign_query(gw.api, "", key.pkh(), query, bytes)
        .await
        .unwrap()
}

fn verify(key: &TestKey, bytes: &[u8], body: &Value, scheme: BlsScheme) {
    let sig = body["signature"]
        .as_str()
        .unwrap_or_else(|| panic!("no signature in {body}"));
    key.public_key()
        .verify_as(bytes, sig, scheme)
        .unwrap_or_else(|e| panic!("{sig} does not verify: {e}"));
}

#[tokio::test]
async fn a_socket_signer_serves_every_call_through_the_gateway() {
    let s = signer(Protocol::Socket).await;
    let gw = gateway(&[("pi", &s)], |_| {}).await;
    let (tz1, tz4) = (&keys()[0], &keys()[1]);
    let status = gw.status().await.unwrap();
    assert_eq!(status["signers"][0]["protocol"], "socket", "{status}");

    let client = Client::new();
    let (code, body) = client.get(&gw.api_url("/authorized_keys")).await.unwrap();
    assert_eq!((code, body), (StatusCode::OK, serde_json::json!({})));
    for key in [tz1, tz4] {
        let (code, body) = client.get(&gw.api_url(&format!("/keys/{}", key.pkh()))).await.unwrap();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["public_key"], key.public_key().to_string());
    }
    // octez's socket signer closes the connection for a key it does not hold: a 404.
    let stranger = key_from_seed(99);
    let (code, body) = client
        .get(&gw.api_url(&format!("/keys/{}", stranger.pkh())))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        gw.signer_state("pi").await.unwrap(),
        "up",
        "not held against the signer"
    );

    let bytes = attestation(TEST_CHAIN, 10, 0, 1);
    let (code, body) = sign(&gw, tz1, None, &bytes).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    verify(tz1, &bytes, &body, BlsScheme::ProofOfPossession);
    assert_eq!(s.stats().last_query, None, "no version is sent for a tz1 key");

    // tz4: the version a baker sends over HTTP is the socket request's version; none is
    // octez's latest (3).
    let augmented = bls_attestation(TEST_CHAIN, 11, 0, 1);
    let (code, body) = sign(&gw, tz4, Some("version=1"), &augmented).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    verify(tz4, &augmented, &body, BlsScheme::Augmented);
    assert_eq!(s.stats().last_query.as_deref(), Some("version=1"));
    let pop = bls_attestation(TEST_CHAIN, 12, 0, 1);
    let (code, body) = sign(&gw, tz4, None, &pop).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    verify(tz4, &pop, &body, BlsScheme::ProofOfPossession);
    assert_eq!(s.stats().last_query.as_deref(), Some("version=3"));

    let (code, body) = client
        .get(&gw.api_url(&format!("/bls_prove_possession/{}", tz4.pkh())))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    let proof = body["bls_prove_possession"].as_str().unwrap();
    tz4.public_key().verify_possession(proof, None).unwrap();

    let (code, body) = client.get(&gw.api_url("/known_keys")).await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["known_keys"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(s.stats().signs, 3);
}

/// Ordered failover from an HTTP signer to a socket one and from a socket one to an HTTP one,
/// each holding the same keys, with one watermark over both: what one signed, the other
/// cannot be made to sign again below it.
#[tokio::test]
async fn failover_between_http_and_socket_signers_both_ways_under_one_watermark() {
    for (first, second) in [(Protocol::Http, Protocol::Socket), (Protocol::Socket, Protocol::Http)] {
        let (primary, backup) = (signer(first).await, signer(second).await);
        let gw = gateway(&[("primary", &primary), ("backup", &backup)], |_| {}).await;
        let what = format!("{first} primary, {second} backup");
        let (tz1, tz4) = (&keys()[0], &keys()[1]);

        let b = attestation(TEST_CHAIN, 20, 0, 1);
        let (code, body) = sign(&gw, tz1, None, &b).await;
        assert_eq!(code, StatusCode::OK, "{what}: {body}");
        assert_eq!((primary.stats().signs, backup.stats().signs), (1, 0), "{what}");

        for mode in [Mode::Fail, Mode::Hang] {
            primary.set_mode(mode);
            let level = if mode == Mode::Fail { 21 } else { 22 };
            let b = bls_attestation(TEST_CHAIN, level, 0, 1);
            let (code, body) = sign(&gw, tz4, Some("version=1"), &b).await;
            assert_eq!(code, StatusCode::OK, "{what}, primary {mode}: {body}");
            verify(tz4, &b, &body, BlsScheme::Augmented);
            assert!(backup.stats().signs >= 1, "{what}, primary {mode}: the backup signed");
            primary.set_mode(Mode::Ok);
            gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
        }

        // The watermark spans both: level 20 was signed by the primary, 22 by the backup.
        let before = (primary.stats().sign_requests, backup.stats().sign_requests);
        for (key, bytes) in [
            (tz1, attestation(TEST_CHAIN, 20, 0, 2)),
            (tz1, attestation(TEST_CHAIN, 19, 0, 1)),
            (tz4, bls_attestation(TEST_CHAIN, 22, 0, 2)),
            (tz4, bls_attestation(TEST_CHAIN, 21, 0, 1)),
        ] {
            let (code, body) = sign(&gw, key, None, &bytes).await;
            assert_eq!(code, StatusCode::CONFLICT, "{what}: {body}");
            assert_error_trace(&body).unwrap();
        }
        assert_eq!(
            (primary.stats().sign_requests, backup.stats().sign_requests),
            before,
            "{what}: refused before any signer"
        );
        // An identical repeat is answered from the kept signature, whoever signed it.
        let b = bls_attestation(TEST_CHAIN, 22, 0, 1);
        let (code, body) = sign(&gw, tz4, Some("version=1"), &b).await;
        assert_eq!(code, StatusCode::OK, "{what}: {body}");
        verify(tz4, &b, &body, BlsScheme::Augmented);

        // The backup goes away: the primary serves.
        backup.set_mode(Mode::Fail);
        let b = attestation(TEST_CHAIN, 23, 0, 1);
        let (code, body) = sign(&gw, tz1, None, &b).await;
        assert_eq!(code, StatusCode::OK, "{what}: {body}");
        verify(tz1, &b, &body, BlsScheme::ProofOfPossession);
    }
}

/// Every way a socket signer can answer wrong is that attempt's failure: the request moves
/// on to the next signer, gets a good signature, and the gateway keeps serving.
#[tokio::test]
async fn bad_answers_from_a_socket_signer_fail_over() {
    let (primary, backup) = (signer(Protocol::Socket).await, signer(Protocol::Http).await);
    let gw = gateway(&[("primary", &primary), ("backup", &backup)], |c| {
        c.request_timeout = "1s".into();
    })
    .await;
    let (tz1, tz4) = (&keys()[0], &keys()[1]);
    let mut level = 30;
    for (mode, result) in [
        (Mode::CloseMidAnswer, "connect_error"),
        (Mode::Garbage, "bad_answer"),
        (Mode::MalformedSig, "bad_signature"),
        (Mode::WrongSig, "bad_signature"),
        (Mode::WrongScheme, "bad_signature"),
        (Mode::FailSign, "server_error"),
        // A probe times out before the request does, and the request moves on then.
        (Mode::Hang, "went_down"),
    ] {
        primary.set_mode(mode);
        let before = gw
            .metric("signer_gateway_signer_attempts_total", "result", result)
            .await
            .unwrap_or(0.0);
        level += 1;
        let key = if mode == Mode::WrongScheme { tz4 } else { tz1 };
        let bytes = if mode == Mode::WrongScheme {
            bls_attestation(TEST_CHAIN, level, 0, 1)
        } else {
            attestation(TEST_CHAIN, level, 0, 1)
        };
        let backup_signs = backup.stats().signs;
        let (code, body) = sign(&gw, key, None, &bytes).await;
        assert_eq!(code, StatusCode::OK, "primary {mode}: {body}");
        verify(key, &bytes, &body, BlsScheme::ProofOfPossession);
        assert_eq!(
            backup.stats().signs,
            backup_signs + 1,
            "primary {mode}: the backup signed"
        );
        let after = gw
            .metric("signer_gateway_signer_attempts_total", "result", result)
            .await
            .unwrap();
        assert!(after > before, "primary {mode}: counted as {result}");
        primary.set_mode(Mode::Ok);
        gw.wait_signers_up(&["primary"], SETTLE).await.unwrap();
    }
    // And it serves again, first.
    let bytes = attestation(TEST_CHAIN, level + 1, 0, 1);
    let signs = primary.stats().signs;
    let (code, body) = sign(&gw, tz1, None, &bytes).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(primary.stats().signs, signs + 1);
    // A socket signer that is gone: the backup, at once.
    primary.shutdown().await;
    let bytes = attestation(TEST_CHAIN, level + 2, 0, 1);
    let (code, body) = sign(&gw, tz1, None, &bytes).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

// ---------------------------------------------------------------------------------------------
// The socket front end: a baker with a `tcp://` key URI.

/// One request on `conn` and its answer, as octez's client sends and reads them.
async fn call(conn: &mut TcpStream, request: &Request) -> Response {
    write_frame(conn, &encode_request(request).unwrap()).await.unwrap();
    let frame = tokio::time::timeout(SETTLE, read_frame(conn, MAX_FRAME))
        .await
        .expect("an answer in time")
        .unwrap()
        .expect("an answer, not a close");
    decode_response(request.kind(), &frame).unwrap()
}

fn sign_request(key: &TestKey, version: Option<SignatureVersion>, data: Vec<u8>) -> Request {
    Request::Sign(SignRequest {
        pkh: key.pkh(),
        version,
        data,
        authentication: None,
    })
}

/// The signature's text, as the HTTP protocol would give it, for `verify_as`.
fn text(sig: &signer_gateway::socket::Signature, key: &TestKey) -> String {
    match sig {
        signer_gateway::socket::Signature::Generic(b) => tezos::encode_signature(key.pkh().curve, b),
        signer_gateway::socket::Signature::Bls(b) => tezos::encode_bls_signature(b),
        other => panic!("unexpected signature {other:?}"),
    }
}

fn error_ids(response: &Response) -> Vec<String> {
    let Response::Error(trace) = response else {
        panic!("not an error answer: {response:?}")
    };
    trace
        .to_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn front_end(tweak: impl FnOnce(&mut GatewayConfig)) -> (TestSignerHandle, Gateway) {
    let s = signer(Protocol::Http).await;
    let gw = gateway(&[("signer", &s)], |c| {
        c.socket_api = true;
        tweak(c);
    })
    .await;
    (s, gw)
}

#[tokio::test]
async fn a_baker_gets_the_same_service_over_the_socket_protocol() {
    let (s, gw) = front_end(|_| {}).await;
    let (tz1, tz4) = (&keys()[0], &keys()[1]);
    let mut conn = TcpStream::connect(gw.socket.expect("socket= on the ready line"))
        .await
        .unwrap();

    // As octez's client: authorized keys, then the operation, on one connection.
    assert_eq!(
        call(&mut conn, &Request::AuthorizedKeys).await,
        Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication)
    );
    let bytes = attestation(TEST_CHAIN, 40, 0, 1);
    let Response::Signature(sig) = call(&mut conn, &sign_request(tz1, None, bytes.clone())).await else {
        panic!("no signature")
    };
    tz1.public_key().verify(&bytes, &text(&sig, tz1)).unwrap();
    for (version, scheme, level) in [
        (SignatureVersion::V1, BlsScheme::Augmented, 41),
        (SignatureVersion::V3, BlsScheme::ProofOfPossession, 42),
    ] {
        let bytes = bls_attestation(TEST_CHAIN, level, 0, 1);
        let Response::Signature(sig) = call(&mut conn, &sign_request(tz4, Some(version), bytes.clone())).await else {
            panic!("no signature")
        };
        tz4.public_key().verify_as(&bytes, &text(&sig, tz4), scheme).unwrap();
    }
    assert_eq!(
        s.stats().last_query.as_deref(),
        Some("version=3"),
        "the version reaches the signer"
    );
    // `-A` authentication: the signature of an authorized key reaches the signer as the HTTP
    // protocol's `authentication` parameter, the very bytes the baker sent.
    let bytes = attestation(TEST_CHAIN, 43, 0, 1);
    let auth = [7u8; 64];
    let authenticated = Request::Sign(SignRequest {
        pkh: tz1.pkh(),
        version: None,
        data: bytes.clone(),
        authentication: Some(signer_gateway::socket::Signature::Generic(auth)),
    });
    assert!(matches!(call(&mut conn, &authenticated).await, Response::Signature(_)));
    let query = s.stats().last_query.unwrap_or_default();
    let sent = query
        .strip_prefix("authentication=")
        .unwrap_or_else(|| panic!("no authentication in {query:?}"));
    assert_eq!(tezos::decode_signature(sent).unwrap(), auth.to_vec());

    // Refusals are error traces with the HTTP API's ids, and the connection goes on.
    let lower = sign_request(tz1, None, attestation(TEST_CHAIN, 39, 0, 1));
    assert_eq!(
        error_ids(&call(&mut conn, &lower).await),
        ["signer_gateway.below_watermark"]
    );
    let double = sign_request(tz1, None, attestation(TEST_CHAIN, 43, 0, 2));
    assert_eq!(
        error_ids(&call(&mut conn, &double).await),
        ["signer_gateway.different_data"]
    );
    let garbage = sign_request(tz1, None, vec![0x13, 1, 2]);
    assert_eq!(
        error_ids(&call(&mut conn, &garbage).await),
        ["signer_gateway.bad_payload"]
    );
    let stranger = key_from_seed(98);
    assert_eq!(
        error_ids(&call(&mut conn, &Request::PublicKey(stranger.pkh())).await),
        ["signer_gateway.unknown_key"]
    );

    assert_eq!(
        call(&mut conn, &Request::PublicKey(tz4.pkh())).await,
        Response::PublicKey(tz4.public_key().clone())
    );
    // The signer behind has no `/known_keys`: its own refusal is passed on.
    let refused = call(&mut conn, &Request::KnownKeys).await;
    let Response::Error(trace) = &refused else {
        panic!("not an error: {refused:?}")
    };
    assert!(trace.message().contains("/known_keys"), "{}", trace.message());
    let Response::BlsProofOfPossession(proof) = call(
        &mut conn,
        &Request::BlsProvePossession(BlsProvePossession {
            pkh: tz4.pkh(),
            override_pk: None,
        }),
    )
    .await
    else {
        panic!("no proof")
    };
    tz4.public_key()
        .verify_possession(&tezos::encode_bls_signature(&proof), None)
        .unwrap();
    // The gateway serves no deterministic nonces, and says so.
    assert_eq!(
        call(&mut conn, &Request::SupportsDeterministicNonces(tz1.pkh())).await,
        Response::SupportsDeterministicNonces(false)
    );
    let nonce = Request::DeterministicNonce(AuthenticatedRequest {
        pkh: tz1.pkh(),
        data: vec![1, 2, 3],
        authentication: None,
    });
    assert_eq!(
        error_ids(&call(&mut conn, &nonce).await),
        ["signer_gateway.no_deterministic_nonces"]
    );

    // Counted by kind and result.
    let signs = gw
        .metric("signer_gateway_socket_requests_total", "kind", "sign")
        .await
        .unwrap();
    assert_eq!(signs, 7.0);
    // The same watermark as HTTP: level 43 is taken.
    let (code, body) = sign(&gw, tz1, None, &attestation(TEST_CHAIN, 43, 0, 3)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
}

/// Whatever a client sends, the gateway answers an error (then closes that connection) or, for
/// a frame cut short, just closes it; it never panics and goes on serving everyone else.
#[tokio::test]
async fn bad_input_to_the_socket_front_end_closes_that_connection_only() {
    let (_s, gw) = front_end(|c| c.socket_frame_timeout = Some("500ms".into())).await;
    let addr = gw.socket.unwrap();
    let tz1 = &keys()[0];
    let mut level = 50;
    let mut good_sign = || {
        level += 1;
        sign_request(tz1, None, attestation(TEST_CHAIN, level, 0, 1))
    };
    // (what, bytes, answered): a whole frame gets an error answer, a cut one nothing.
    let cases: [(&str, Vec<u8>, bool); 6] = [
        ("unknown tag", vec![0, 1, 9], true),
        ("empty message", vec![0, 0], true),
        ("truncated sign request", vec![0, 4, 0, 0, 1, 2], true),
        (
            "trailing bytes",
            {
                let mut m = encode_request(&Request::AuthorizedKeys).unwrap();
                m.push(0);
                let mut f = (m.len() as u16).to_be_bytes().to_vec();
                f.extend_from_slice(&m);
                f
            },
            true,
        ),
        ("frame cut short", vec![0xff, 0xff, 1, 2, 3], false),
        ("half a length", vec![0], false),
    ];
    for (what, bytes, answered) in cases {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        // Answered (or not), then closed, within the frame timeout at worst.
        let mut buf = Vec::new();
        let read = tokio::time::timeout(SETTLE, conn.read_to_end(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(_))), "{what}: {read:?}");
        if answered {
            let frame = read_frame(&mut buf.as_slice(), MAX_FRAME).await.unwrap().unwrap();
            // An error answer reads the same whatever the request was.
            let answer = decode_response(signer_gateway::socket::RequestKind::Sign, &frame).unwrap();
            assert_eq!(error_ids(&answer), ["signer_gateway.bad_request"], "{what}");
            let Response::Error(trace) = &answer else {
                unreachable!()
            };
            assert!(
                trace.message().starts_with("undecodable request: "),
                "{what}: {}",
                trace.message()
            );
        } else {
            assert!(buf.is_empty(), "{what}: answered {buf:?}");
        }
        // Everyone else is served.
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        assert!(
            matches!(call(&mut fresh, &good_sign()).await, Response::Signature(_)),
            "{what}: the next client is served"
        );
    }
    let undecodable = gw
        .metric("signer_gateway_socket_requests_total", "kind", "undecodable")
        .await
        .unwrap();
    assert_eq!(undecodable, 4.0, "unknown tag, empty, truncated, trailing");
    // A client that opens and says nothing costs nothing to the others either.
    let _silent: Vec<TcpStream> = futures_util::future::join_all((0..8).map(|_| TcpStream::connect(addr)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    assert!(matches!(call(&mut fresh, &good_sign()).await, Response::Signature(_)));
}

/// SIGTERM with a socket request in flight: its answer is written before the gateway stops,
/// an idle connection is closed at once, and the stop stays bounded.
#[tokio::test]
async fn sigterm_lets_a_socket_request_in_flight_finish() {
    // A slow signer, but not a dead one: its probes answer within their timeout.
    let (s, mut gw) = front_end(|c| {
        c.health_timeout = "3s".into();
        c.request_timeout = "5s".into();
    })
    .await;
    let addr = gw.socket.unwrap();
    let tz1 = keys()[0].clone();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    s.set_mode(Mode::Slow(Duration::from_millis(1500)));
    let bytes = attestation(TEST_CHAIN, 60, 0, 1);
    let request = sign_request(&tz1, None, bytes.clone());
    let in_flight = tokio::spawn(async move { call(&mut busy, &request).await });
    eventually(SETTLE, "the request reached the signer", || async {
        anyhow::ensure!(s.stats().in_flight > 0);
        Ok(())
    })
    .await
    .unwrap();
    gw.signal(libc::SIGTERM).unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed at once: {closed:?}"
    );
    let answer = in_flight.await.unwrap();
    let Response::Signature(sig) = answer else {
        panic!("no signature: {answer:?}")
    };
    tz1.public_key().verify(&bytes, &text(&sig, &tz1)).unwrap();
    let exit = gw.wait_exit(Duration::from_secs(8)).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}
