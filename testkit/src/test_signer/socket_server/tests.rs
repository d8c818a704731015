//! The socket test signer driven with the gateway's codec: every request kind, every mode,
//! connection reuse and the ends of a connection. In process, on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use signer_gateway::socket::{
    decode_response, encode_request, read_frame, write_frame, AuthenticatedRequest, AuthorizedKeys, BlsProvePossession,
    DecodeError, FrameError, Request, Response, SignRequest, Signature, SignatureVersion, MAX_FRAME,
};
use signer_gateway::tezos::{self, BlsScheme, Pkh, PublicKey};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::harness::{eventually, SignerControl, TestSignerProcess};
use crate::test_signer::{
    bls_key_from_seed, key_from_seed, seed, Mode, Protocol, TestKey, TestSigner, TestSignerHandle, TestSignerOptions,
};

/// A socket signer with tz1 keys 1 and 2 and tz4 key 1, in `mode`.
async fn spawn(mode: Mode) -> TestSignerHandle {
    TestSigner::spawn(TestSignerOptions {
        protocol: Protocol::Socket,
        seeds: vec![seed(1), seed(2)],
        keys: vec![bls_key_from_seed(1)],
        mode,
        ..Default::default()
    })
    .await
    .expect("spawn socket test signer")
}

/// One request on `conn`, its raw answer frame (`None` when the signer closed instead).
async fn call_raw(conn: &mut TcpStream, request: &Request) -> Result<Option<Vec<u8>>, FrameError> {
    write_frame(conn, &encode_request(request).expect("request encodes")).await?;
    read_frame(conn, MAX_FRAME).await
}

/// One request on `conn`, its decoded answer (`None` when the signer closed instead).
async fn call(conn: &mut TcpStream, request: &Request) -> Option<Response> {
    let frame = call_raw(conn, request).await.expect("a whole frame or a clean close")?;
    Some(decode_response(request.kind(), &frame).expect("answer decodes"))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

fn sign(pkh: Pkh, version: Option<SignatureVersion>, data: &[u8]) -> Request {
    Request::Sign(SignRequest {
        pkh,
        version,
        data: data.to_vec(),
        authentication: None,
    })
}

/// The signature as the HTTP protocol writes it, for `PublicKey::verify_as`.
fn text(sig: &Signature) -> String {
    match sig {
        Signature::Generic(b) => tezos::encode_ed25519_signature(b),
        Signature::Bls(b) => tezos::encode_bls_signature(b),
        Signature::MlDsa44(_) => panic!("no test key makes ML-DSA signatures"),
    }
}

/// The messages of an error answer; panics on any other answer.
fn error_messages(response: Option<Response>) -> Vec<String> {
    let Some(Response::Error(trace)) = response else {
        panic!("expected an error answer, got {response:?}");
    };
    let json = trace.to_json();
    let errors = json.as_array().expect("a trace is an array");
    for e in errors {
        assert_eq!(
            (e["kind"].as_str(), e["id"].as_str()),
            (Some("permanent"), Some("failure")),
            "{e}"
        );
    }
    errors
        .iter()
        .map(|e| e["msg"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Assert `response` is a signature by `key` over `data` under `scheme`, and not over other data.
fn assert_signed(key: &TestKey, response: Option<Response>, data: &[u8], scheme: BlsScheme) -> Signature {
    let Some(Response::Signature(sig)) = response else {
        panic!("expected a signature, got {response:?}");
    };
    let len = if key.pkh().curve == tezos::Curve::Bls { 96 } else { 64 };
    assert_eq!(sig.as_bytes().len(), len);
    key.public_key()
        .verify_as(data, &text(&sig), scheme)
        .expect("signature verifies");
    assert!(key.public_key().verify_as(b"\x13other", &text(&sig), scheme).is_err());
    sig
}

const DATA: &[u8] = b"\x13\x7a\x06\xa7\x70some attestation";

#[tokio::test]
async fn every_request_kind_on_one_connection() {
    let s = spawn(Mode::Ok).await;
    assert_eq!(s.protocol(), Protocol::Socket);
    let (tz1, tz4) = (key_from_seed(1), bls_key_from_seed(1));
    let mut conn = connect(s.addr()).await;

    assert_eq!(
        call(&mut conn, &Request::AuthorizedKeys).await,
        Some(Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication))
    );
    assert_eq!(
        call(&mut conn, &Request::KnownKeys).await,
        Some(Response::KnownKeys(s.pkhs()))
    );
    for key in s.keys() {
        assert_eq!(
            call(&mut conn, &Request::PublicKey(key.pkh())).await,
            Some(Response::PublicKey(key.public_key().clone()))
        );
    }

    // tz1: ed25519 over blake2b of the bytes, whatever the scheme.
    assert_signed(
        &tz1,
        call(&mut conn, &sign(tz1.pkh(), None, DATA)).await,
        DATA,
        BlsScheme::ProofOfPossession,
    );
    assert_eq!(s.stats().last_query, None);
    // tz4: the scheme of the version, as `?version=` maps it; the version shows in last_query.
    for (version, scheme) in [
        (None, BlsScheme::ProofOfPossession),
        (Some(SignatureVersion::V1), BlsScheme::Augmented),
        (Some(SignatureVersion::V2), BlsScheme::ProofOfPossession),
        (Some(SignatureVersion::V3), BlsScheme::ProofOfPossession),
    ] {
        let sig = assert_signed(
            &tz4,
            call(&mut conn, &sign(tz4.pkh(), version, DATA)).await,
            DATA,
            scheme,
        );
        assert!(tz4.public_key().verify_as(DATA, &text(&sig), scheme.other()).is_err());
        // The codec, as octez's client, sends its latest version when none was given.
        let sent = version.unwrap_or(SignatureVersion::LATEST);
        assert_eq!(s.stats().last_query, Some(format!("version={}", sent.number())));
    }
    let msgs = error_messages(call(&mut conn, &sign(tz4.pkh(), Some(SignatureVersion::V0), DATA)).await);
    assert!(msgs[0].contains("version 0"), "{msgs:?}");

    // Unknown keys: octez's message for sign and the other keyed requests.
    let other = key_from_seed(9).pkh();
    let no_keys = vec![format!("no keys for the source contract {other}")];
    assert_eq!(error_messages(call(&mut conn, &sign(other, None, DATA)).await), no_keys);
    assert_eq!(
        error_messages(call(&mut conn, &Request::SupportsDeterministicNonces(other)).await),
        no_keys
    );

    // Deterministic nonces: not supported, said both ways.
    assert_eq!(
        call(&mut conn, &Request::SupportsDeterministicNonces(tz1.pkh())).await,
        Some(Response::SupportsDeterministicNonces(false))
    );
    let nonce = AuthenticatedRequest {
        pkh: tz1.pkh(),
        data: DATA.to_vec(),
        authentication: None,
    };
    for request in [
        Request::DeterministicNonce(nonce.clone()),
        Request::DeterministicNonceHash(nonce),
    ] {
        assert_eq!(error_messages(call(&mut conn, &request).await).len(), 1);
    }

    // Proofs of possession: own key, another key, and none for tz1.
    let override_key = match bls_key_from_seed(2).public_key() {
        PublicKey::Bls(k) => k.clone(),
        other => panic!("tz4 key {other:?}"),
    };
    for over in [None, Some(override_key)] {
        let request = Request::BlsProvePossession(BlsProvePossession {
            pkh: tz4.pkh(),
            override_pk: over.clone(),
        });
        let Some(Response::BlsProofOfPossession(proof)) = call(&mut conn, &request).await else {
            panic!("no proof");
        };
        let proof = tezos::encode_bls_signature(&proof);
        tz4.public_key()
            .verify_possession(&proof, over.as_ref())
            .expect("proof verifies");
    }
    let request = Request::BlsProvePossession(BlsProvePossession {
        pkh: tz1.pkh(),
        override_pk: None,
    });
    assert_eq!(
        error_messages(call(&mut conn, &request).await),
        ["Proof of possession can only be requested for BLS keys."]
    );

    let st = s.stats();
    assert_eq!(st.sign_requests, 7, "{st:?}");
    assert_eq!(st.signs, 5, "{st:?}");
    assert_eq!(st.requests, 19, "{st:?}");
    assert_eq!(st.last_sign_hex, Some(hex::encode(DATA)));
    assert_eq!((st.in_flight, st.max_in_flight), (0, 1));
}

#[tokio::test]
async fn connections_are_independent_and_closed_on_bad_requests() {
    let s = spawn(Mode::Ok).await;
    let pkh = s.pkhs()[0];
    let (mut a, mut b) = (connect(s.addr()).await, connect(s.addr()).await);
    assert!(matches!(
        call(&mut a, &sign(pkh, None, DATA)).await,
        Some(Response::Signature(_))
    ));
    assert!(matches!(
        call(&mut b, &sign(pkh, None, DATA)).await,
        Some(Response::Signature(_))
    ));
    assert!(matches!(
        call(&mut a, &sign(pkh, None, DATA)).await,
        Some(Response::Signature(_))
    ));

    // A public key octez does not hold: the connection closes, no answer (its `Not_found`).
    assert_eq!(call(&mut a, &Request::PublicKey(key_from_seed(9).pkh())).await, None);

    // A frame that is no request (unknown tag; trailing bytes): closed without an answer.
    for bad in [
        vec![0x09],
        [encode_request(&Request::AuthorizedKeys).unwrap(), vec![0]].concat(),
    ] {
        let mut conn = connect(s.addr()).await;
        write_frame(&mut conn, &bad).await.unwrap();
        assert_eq!(read_frame(&mut conn, MAX_FRAME).await, Ok(None), "{bad:?}");
    }
    // The signer still serves.
    assert!(matches!(
        call(&mut b, &sign(pkh, None, DATA)).await,
        Some(Response::Signature(_))
    ));
}

#[tokio::test]
async fn modes_fault_the_socket_answers() {
    let s = spawn(Mode::Ok).await;
    let (tz1, tz4) = (key_from_seed(1), bls_key_from_seed(1));
    let mut conn = connect(s.addr()).await;
    let v1 = Some(SignatureVersion::V1);

    s.set_mode(Mode::Fail);
    for request in [
        Request::AuthorizedKeys,
        Request::PublicKey(tz1.pkh()),
        sign(tz1.pkh(), None, DATA),
    ] {
        assert_eq!(error_messages(call(&mut conn, &request).await), ["injected failure"]);
    }

    for (mode, msg) in [(Mode::FailSign, "injected failure"), (Mode::Refuse, "signing refused")] {
        s.set_mode(mode);
        assert!(matches!(
            call(&mut conn, &Request::AuthorizedKeys).await,
            Some(Response::AuthorizedKeys(_))
        ));
        assert_eq!(
            error_messages(call(&mut conn, &sign(tz1.pkh(), None, DATA)).await),
            [msg]
        );
    }

    s.set_mode(Mode::WrongSig);
    let mut other = DATA.to_vec();
    other.extend_from_slice(b"\x00wrong");
    for (key, scheme) in [(&tz1, BlsScheme::ProofOfPossession), (&tz4, BlsScheme::Augmented)] {
        let Some(Response::Signature(sig)) = call(&mut conn, &sign(key.pkh(), v1, DATA)).await else {
            panic!("no signature");
        };
        assert!(key.public_key().verify_as(DATA, &text(&sig), scheme).is_err());
        key.public_key()
            .verify_as(&other, &text(&sig), scheme)
            .expect("a signature over other bytes");
    }
    let request = Request::BlsProvePossession(BlsProvePossession {
        pkh: tz4.pkh(),
        override_pk: None,
    });
    let Some(Response::BlsProofOfPossession(proof)) = call(&mut conn, &request).await else {
        panic!("no proof");
    };
    assert!(tz4
        .public_key()
        .verify_possession(&tezos::encode_bls_signature(&proof), None)
        .is_err());

    s.set_mode(Mode::WrongScheme);
    let sig = assert_signed(
        &tz4,
        call(&mut conn, &sign(tz4.pkh(), v1, DATA)).await,
        DATA,
        BlsScheme::ProofOfPossession,
    );
    assert!(tz4
        .public_key()
        .verify_as(DATA, &text(&sig), BlsScheme::Augmented)
        .is_err());
    assert_signed(
        &tz1,
        call(&mut conn, &sign(tz1.pkh(), None, DATA)).await,
        DATA,
        BlsScheme::ProofOfPossession,
    );

    // The other curve's length: decodes, cannot verify.
    s.set_mode(Mode::MalformedSig);
    for (key, len) in [(&tz1, 96), (&tz4, 64)] {
        let Some(Response::Signature(sig)) = call(&mut conn, &sign(key.pkh(), None, DATA)).await else {
            panic!("no signature");
        };
        assert_eq!(sig.as_bytes().len(), len);
    }

    // A tz4 key off the curve, whatever the key: the codec refuses it.
    s.set_mode(Mode::BadKey);
    for key in [&tz1, &tz4] {
        let frame = call_raw(&mut conn, &Request::PublicKey(key.pkh()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.len(), 2 + 48);
        assert!(matches!(
            decode_response(Request::PublicKey(key.pkh()).kind(), &frame),
            Err(DecodeError::BadBlsKey { .. })
        ));
    }

    // An unknown result tag, well framed; the connection goes on.
    s.set_mode(Mode::Garbage);
    let request = sign(tz1.pkh(), None, DATA);
    let frame = call_raw(&mut conn, &request).await.unwrap().unwrap();
    assert_eq!(
        decode_response(request.kind(), &frame),
        Err(DecodeError::UnknownTag { what: "result", tag: 7 })
    );
    assert!(matches!(
        call(&mut conn, &Request::AuthorizedKeys).await,
        Some(Response::AuthorizedKeys(_))
    ));

    // Slow: every answer waits (a lower bound: that is the behaviour, not a speed target).
    s.set_mode(Mode::Slow(Duration::from_millis(150)));
    let t = Instant::now();
    assert!(matches!(
        call(&mut conn, &Request::AuthorizedKeys).await,
        Some(Response::AuthorizedKeys(_))
    ));
    assert!(t.elapsed() >= Duration::from_millis(150));

    // The length and a few bytes of the answer, then the end.
    s.set_mode(Mode::CloseMidAnswer);
    assert!(matches!(
        call(&mut conn, &Request::AuthorizedKeys).await,
        Some(Response::AuthorizedKeys(_))
    ));
    assert_eq!(
        call_raw(&mut conn, &sign(tz1.pkh(), None, DATA)).await,
        Err(FrameError::Truncated { expected: 65, got: 3 })
    );

    let st = s.stats();
    assert_eq!(st.mode, "close-mid-answer");
    // Signatures returned: wrong-sig 2, wrong-scheme 2, malformed-sig 2.
    assert_eq!((st.sign_requests, st.signs), (11, 6), "{st:?}");
}

#[tokio::test]
async fn hang_reads_and_never_answers_until_the_peer_leaves() {
    let s = spawn(Mode::Hang).await;
    let mut conn = connect(s.addr()).await;
    write_frame(&mut conn, &encode_request(&sign(s.pkhs()[0], None, DATA)).unwrap())
        .await
        .unwrap();
    let read = tokio::time::timeout(Duration::from_millis(200), read_frame(&mut conn, MAX_FRAME)).await;
    assert!(read.is_err(), "answered while hanging: {read:?}");
    let st = s.stats();
    assert_eq!((st.sign_requests, st.signs, st.in_flight), (1, 0, 1));
    conn.shutdown().await.unwrap();
    drop(conn);
    eventually(Duration::from_secs(5), "hung request let go", || async {
        anyhow::ensure!(s.stats().in_flight == 0);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn control_port_serves_control_only() {
    let s = TestSigner::spawn(TestSignerOptions {
        protocol: Protocol::Socket,
        control_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    })
    .await
    .unwrap();
    let control_addr = s.control_addr().expect("a control port");
    let ctl = SignerControl::new(control_addr);
    ctl.set_mode(Mode::Refuse).await.unwrap();
    assert_eq!(s.mode(), Mode::Refuse);
    let mut conn = connect(s.addr()).await;
    let msgs = error_messages(call(&mut conn, &sign(s.pkhs()[0], None, DATA)).await);
    assert_eq!(msgs, ["signing refused"]);
    let st = ctl.stats().await.unwrap();
    assert_eq!((st.sign_requests, st.mode.as_str()), (1, "refuse"));
    // No protocol on the control port.
    let c = crate::harness::Client::fresh_connections();
    let (code, _) = c.get(&format!("http://{control_addr}/authorized_keys")).await.unwrap();
    assert_eq!(code, http::StatusCode::NOT_FOUND);
}

/// The binary through the harness: socket protocol, control through its own port, and a
/// restart keeping both ports. Needs a fresh `test-signer` (`cargo build -p testkit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_speaks_socket_and_is_controlled_on_its_control_port() {
    let keys = [key_from_seed(4), bls_key_from_seed(4)];
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut p = TestSignerProcess::start_socket(any, &keys, Mode::Ok).await.unwrap();
    assert_eq!(p.protocol(), Protocol::Socket);
    assert_eq!(p.pkhs(), [keys[0].pkh(), keys[1].pkh()]);
    let control_addr = p.control_addr().expect("a control port");
    assert_ne!(control_addr, p.addr());

    let mut conn = connect(p.addr()).await;
    let request = sign(keys[1].pkh(), Some(SignatureVersion::V1), DATA);
    assert_signed(&keys[1], call(&mut conn, &request).await, DATA, BlsScheme::Augmented);
    let st = p.stats().await.unwrap();
    assert_eq!((st.signs, st.last_query.as_deref()), (1, Some("version=1")));

    p.restart(Mode::FailSign).await.unwrap();
    assert_eq!(p.control_addr(), Some(control_addr));
    let mut conn = connect(p.addr()).await;
    assert_eq!(error_messages(call(&mut conn, &request).await), ["injected failure"]);
    p.set_mode(Mode::Ok).await.unwrap();
    assert_signed(&keys[1], call(&mut conn, &request).await, DATA, BlsScheme::Augmented);
}
