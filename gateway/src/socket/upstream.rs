//! The gateway as a client of a socket signer (`protocol: socket`).
//!
//! The pool and the signing pipeline speak in the HTTP protocol's terms (a method, a path, a
//! JSON answer with a status), so a socket signer is used exactly like an HTTP one: the same
//! failover, health checks, verification and watermark. This module translates one such call
//! into a socket request ([`translate`]), sends it on a kept connection or a new one
//! ([`SocketClient`]), and turns the answer back into the JSON an octez HTTP signer would
//! have given ([`to_http`]):
//!
//! | HTTP call | socket request | answer |
//! |---|---|---|
//! | `GET /authorized_keys` | `Authorized_keys` | `{}` or `{"authorized_keys":[…]}` |
//! | `GET /keys/<pkh>` | `Public_key` | `{"public_key":…}` |
//! | `POST /keys/<pkh>?version=N&authentication=<sig>` | `Sign` (version for tz4) | `{"signature":…}` |
//! | `GET /known_keys` | `Known_keys` | `{"known_keys":[…]}` |
//! | `GET /bls_prove_possession/<pkh>?bls_pk=…` | `Bls_prove_possession` | `{"bls_prove_possession":…}` |
//! | `POST /keys/<pkh>/deterministic_nonce[_hash]` | `Deterministic_nonce[_hash]` | `{"deterministic_nonce[_hash]":"<hex>"}` |
//! | `GET /keys/<pkh>/supports_deterministic_nonces` | `Supports_deterministic_nonces` | `{"supports_deterministic_nonces":…}` |
//!
//! An error answer becomes a 500 with the signer's trace as JSON (octez's HTTP signer answers
//! its errors with 500 too), except "no keys for the source contract" (octez's error for a key
//! it does not hold), which becomes a 404 so the next signer is asked. octez's socket signer
//! answers `Public_key` for a key it does not hold by closing the connection
//! (`handler.ml`: `Lwt.fail Not_found`): on a new connection, that close is a 404 too.
//!
//! Connections are kept and reused (octez's server loops on a connection until it closes);
//! a kept connection that fails is dropped and the call is made once more on a new one, as
//! for HTTP keep-alive.

use std::sync::Mutex;

use bytes::Bytes;
use http::{Method, StatusCode};
use tracing::debug;

use super::{
    decode_response, encode_request, read_frame, write_frame, AuthenticatedRequest, AuthorizedKeys, BlsProvePossession,
    Request, RequestKind, Response, SignRequest, Signature, SignatureVersion, MAX_FRAME,
};
use crate::pool::{Answer, AttemptFailure};
use crate::tezos::{self, Curve, Pkh, PublicKey};
use crate::transport::{Connect, Io};

/// Idle connections kept per signer.
const MAX_IDLE: usize = 32;

/// octez's message for a key its wallet does not hold (`client_keys.ml`, `get_key`).
const NO_KEY: &str = "no keys for the source contract";

/// Kept connections to one socket signer.
#[derive(Default)]
pub struct SocketClient {
    idle: Mutex<Vec<Box<dyn Io>>>,
}

/// What went wrong on one connection.
enum Failed {
    /// The call could not be made or answered on it.
    Attempt(AttemptFailure, String),
    /// It closed cleanly, before any byte of the answer.
    ClosedUnanswered,
}

impl SocketClient {
    /// Make one call (in HTTP terms) and return the answer in HTTP terms. A call with no
    /// socket counterpart, or that cannot be encoded, gets a 4xx answer without a connection.
    pub async fn send(
        &self,
        connector: &dyn Connect,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<Answer, AttemptFailure> {
        let request = match translate(method, path_and_query, body) {
            Ok(r) => r,
            Err(answer) => return Ok(answer),
        };
        let frame = match encode_request(&request) {
            Ok(f) => f,
            Err(e) => {
                return Ok(trace(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot encode the request: {e}"),
                ))
            }
        };
        let kind = request.kind();
        if let Some(conn) = self.take_idle() {
            // A kept connection may have been closed by the signer while idle: try a new one.
            if let Ok(response) = self.exchange(conn, &frame, kind).await {
                return to_http(&request, response);
            }
        }
        let conn = connector.connect().await.map_err(|e| {
            debug!(signer = %connector.describe(), error = %e, "connect failed");
            AttemptFailure::Connect
        })?;
        match self.exchange(conn, &frame, kind).await {
            Ok(response) => to_http(&request, response),
            Err(Failed::ClosedUnanswered) if kind == RequestKind::PublicKey => Ok(trace(
                StatusCode::NOT_FOUND,
                "the signer closed the connection without answering: octez's socket signer does so for a key it does not hold",
            )),
            Err(Failed::ClosedUnanswered) => {
                debug!(signer = %connector.describe(), "closed without answering");
                Err(AttemptFailure::Connect)
            }
            Err(Failed::Attempt(f, why)) => {
                debug!(signer = %connector.describe(), error = %why, "socket call failed");
                Err(f)
            }
        }
    }

    /// Forget kept connections (the signer failed, or its route changed).
    pub fn reset(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn take_idle(&self) -> Option<Box<dyn Io>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// One request and its answer on `conn`; the connection is kept when the answer was read
    /// whole and decoded.
    async fn exchange(&self, mut conn: Box<dyn Io>, frame: &[u8], kind: RequestKind) -> Result<Response, Failed> {
        write_frame(&mut conn, frame)
            .await
            .map_err(|e| Failed::Attempt(AttemptFailure::Connect, format!("sending: {e}")))?;
        let answer = match read_frame(&mut conn, MAX_FRAME).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(Failed::ClosedUnanswered),
            Err(e) => {
                return Err(Failed::Attempt(
                    AttemptFailure::Connect,
                    format!("reading the answer: {e}"),
                ))
            }
        };
        let response = decode_response(kind, &answer)
            .map_err(|e| Failed::Attempt(AttemptFailure::BadAnswer, format!("undecodable answer: {e}")))?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(response)
    }
}

/// A JSON error trace answer, as the gateway writes its own.
fn trace(status: StatusCode, msg: &str) -> Answer {
    let body = serde_json::json!([{ "kind": "permanent", "id": "signer_gateway.socket_signer", "msg": msg }]);
    Answer {
        status,
        body: Bytes::from(body.to_string()),
    }
}

fn json(value: serde_json::Value) -> Answer {
    Answer {
        status: StatusCode::OK,
        body: Bytes::from(value.to_string()),
    }
}

/// The socket request for a call of the HTTP protocol; `Err` holds the answer for a call
/// that has none (404) or is malformed (400).
pub fn translate(method: &Method, path_and_query: &str, body: &[u8]) -> Result<Request, Answer> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let bad = |msg: String| trace(StatusCode::BAD_REQUEST, &msg);
    let pkh = |s: &str| {
        s.parse::<Pkh>()
            .map_err(|e| bad(format!("invalid key hash {s:?}: {e}")))
    };
    let data = || crate::api::decode_body(body).map_err(bad);
    let authentication = || match param("authentication") {
        None => Ok(None),
        Some(s) => signature(s).map(Some).map_err(bad),
    };
    let get = method == Method::GET;
    let post = method == Method::POST;
    match path {
        "/authorized_keys" if get => return Ok(Request::AuthorizedKeys),
        "/known_keys" if get => return Ok(Request::KnownKeys),
        _ => {}
    }
    if let Some(k) = path.strip_prefix("/bls_prove_possession/").filter(|_| get) {
        let override_pk = match param("bls_pk") {
            None => None,
            Some(v) => match v.parse::<PublicKey>() {
                Ok(PublicKey::Bls(k)) => Some(k),
                _ => return Err(bad(format!("bls_pk {v:?} is not a valid BLpk public key"))),
            },
        };
        return Ok(Request::BlsProvePossession(BlsProvePossession {
            pkh: pkh(k)?,
            override_pk,
        }));
    }
    let Some(rest) = path.strip_prefix("/keys/") else {
        return Err(no_such_call(method, path));
    };
    let (k, call) = rest.split_once('/').unwrap_or((rest, ""));
    let nonce = |pkh: Pkh| -> Result<AuthenticatedRequest, Answer> {
        Ok(AuthenticatedRequest {
            pkh,
            data: data()?,
            authentication: authentication()?,
        })
    };
    match (call, get, post) {
        ("", true, _) => Ok(Request::PublicKey(pkh(k)?)),
        ("", _, true) => {
            let pkh = pkh(k)?;
            let version = match param("version") {
                None => None,
                Some(v) => Some(
                    v.parse::<u8>()
                        .ok()
                        .and_then(SignatureVersion::from_number)
                        .ok_or_else(|| bad(format!("unsupported signature version {v:?}")))?,
                ),
            };
            // octez sends the version with tz4 (and tz5) keys only.
            let version = version.filter(|_| matches!(pkh.curve, Curve::Bls | Curve::MlDsa44));
            Ok(Request::Sign(SignRequest {
                pkh,
                version,
                data: data()?,
                authentication: authentication()?,
            }))
        }
        ("deterministic_nonce", _, true) => Ok(Request::DeterministicNonce(nonce(pkh(k)?)?)),
        ("deterministic_nonce_hash", _, true) => Ok(Request::DeterministicNonceHash(nonce(pkh(k)?)?)),
        ("supports_deterministic_nonces", true, _) => Ok(Request::SupportsDeterministicNonces(pkh(k)?)),
        _ => Err(no_such_call(method, path)),
    }
}

fn no_such_call(method: &Method, path: &str) -> Answer {
    trace(
        StatusCode::NOT_FOUND,
        &format!("the socket protocol has no call for {method} {path}"),
    )
}

/// A `b58` signature (as the HTTP protocol writes it) as the socket protocol carries it.
fn signature(s: &str) -> Result<Signature, String> {
    let bytes = tezos::decode_signature(s).map_err(|e| format!("invalid authentication signature {s:?}: {e}"))?;
    if let Ok(b) = <[u8; 64]>::try_from(bytes.as_slice()) {
        return Ok(Signature::Generic(b));
    }
    <[u8; 96]>::try_from(bytes.as_slice())
        .map(Signature::Bls)
        .map_err(|_| format!("invalid authentication signature {s:?}"))
}

/// The answer a socket signer gave, as an octez HTTP signer would have given it.
pub fn to_http(request: &Request, response: Response) -> Result<Answer, AttemptFailure> {
    Ok(match response {
        Response::Error(errors) => {
            let message = errors.message();
            let status = if message.contains(NO_KEY) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            Answer {
                status,
                body: Bytes::from(errors.to_json().to_string()),
            }
        }
        Response::Signature(sig) => {
            let curve = match request {
                Request::Sign(r) => r.pkh.curve,
                _ => return Err(AttemptFailure::BadAnswer),
            };
            let text = match &sig {
                Signature::Generic(b) => tezos::encode_signature(curve, b),
                Signature::Bls(b) => tezos::encode_bls_signature(b),
                // No scheme the gateway can verify: it would never be released anyway.
                Signature::MlDsa44(_) => return Err(AttemptFailure::BadAnswer),
            };
            json(serde_json::json!({ "signature": text }))
        }
        Response::PublicKey(pk) => json(serde_json::json!({ "public_key": pk.to_string() })),
        Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication) => json(serde_json::json!({})),
        Response::AuthorizedKeys(AuthorizedKeys::Keys(keys)) => json(serde_json::json!({
            "authorized_keys": keys.iter().map(ToString::to_string).collect::<Vec<_>>()
        })),
        Response::KnownKeys(keys) => json(serde_json::json!({
            "known_keys": keys.iter().map(ToString::to_string).collect::<Vec<_>>()
        })),
        Response::BlsProofOfPossession(proof) => {
            json(serde_json::json!({ "bls_prove_possession": tezos::encode_bls_signature(&proof) }))
        }
        Response::DeterministicNonce(n) => json(serde_json::json!({ "deterministic_nonce": hex::encode(n) })),
        Response::DeterministicNonceHash(n) => json(serde_json::json!({ "deterministic_nonce_hash": hex::encode(n) })),
        Response::SupportsDeterministicNonces(b) => json(serde_json::json!({ "supports_deterministic_nonces": b })),
    })
}

/// The client against scripted socket signers at the other end of in-memory pipes: each new
/// connection runs the next script.
#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use serde_json::json;
    use tokio::io::{AsyncWriteExt as _, DuplexStream};

    use super::*;
    use crate::socket::{decode_request, encode_response, ErrorTrace};

    type Script = Box<dyn FnOnce(DuplexStream) -> BoxFuture<'static, ()> + Send>;

    /// Hands each new connection to the next script; no script left is a refused connection.
    #[derive(Clone, Default)]
    struct Scripted(Arc<Mutex<VecDeque<Script>>>);

    impl Scripted {
        fn then(&self, script: impl FnOnce(DuplexStream) -> BoxFuture<'static, ()> + Send + 'static) -> &Self {
            self.0.lock().unwrap().push_back(Box::new(script));
            self
        }
        fn left(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl Connect for Scripted {
        fn connect(&self) -> futures_util::future::BoxFuture<'static, std::io::Result<Box<dyn Io>>> {
            let next = self.0.lock().unwrap().pop_front();
            Box::pin(async move {
                let script = next.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
                let (client, server) = tokio::io::duplex(1 << 16);
                tokio::spawn(script(server));
                Ok(Box::new(client) as Box<dyn Io>)
            })
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// Answer `n` requests with `answer(request)`, then close.
    fn serve(n: usize, answer: fn(&Request) -> Response) -> impl FnOnce(DuplexStream) -> BoxFuture<'static, ()> {
        move |mut s| {
            Box::pin(async move {
                for _ in 0..n {
                    let Ok(Some(frame)) = read_frame(&mut s, MAX_FRAME).await else {
                        return;
                    };
                    let request = decode_request(&frame).unwrap();
                    write_frame(&mut s, &encode_response(&answer(&request)).unwrap())
                        .await
                        .unwrap();
                }
            })
        }
    }

    /// Read one request, then write `bytes` raw and close.
    fn raw(bytes: &'static [u8]) -> impl FnOnce(DuplexStream) -> BoxFuture<'static, ()> {
        move |mut s| {
            Box::pin(async move {
                let _ = read_frame(&mut s, MAX_FRAME).await;
                let _ = s.write_all(bytes).await;
            })
        }
    }

    fn no_auth(_: &Request) -> Response {
        Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication)
    }

    fn tz1() -> String {
        crate::testing::Fake::new().public_key().hash().to_string()
    }

    async fn get(client: &SocketClient, net: &Scripted, path: &str) -> Result<Answer, AttemptFailure> {
        client.send(net, &Method::GET, path, b"").await
    }

    fn body(a: &Answer) -> serde_json::Value {
        serde_json::from_slice(&a.body).unwrap()
    }

    #[test]
    fn http_calls_translate_to_socket_requests() {
        let pkh: Pkh = tz1().parse().unwrap();
        assert_eq!(
            translate(&Method::GET, "/authorized_keys", b"").ok(),
            Some(Request::AuthorizedKeys)
        );
        assert_eq!(
            translate(&Method::GET, "/known_keys", b"").ok(),
            Some(Request::KnownKeys)
        );
        assert_eq!(
            translate(&Method::GET, &format!("/keys/{pkh}"), b"").ok(),
            Some(Request::PublicKey(pkh))
        );
        assert_eq!(
            translate(&Method::GET, &format!("/keys/{pkh}/supports_deterministic_nonces"), b"").ok(),
            Some(Request::SupportsDeterministicNonces(pkh))
        );
        let sign = translate(&Method::POST, &format!("/keys/{pkh}?version=1"), b"\"0300ff\"\n").unwrap();
        assert_eq!(
            sign,
            Request::Sign(SignRequest {
                pkh,
                version: None,
                data: vec![3, 0, 0xff],
                authentication: None,
            }),
            "no version for a tz1 key, as octez's client"
        );
        let nonce = translate(
            &Method::POST,
            &format!("/keys/{pkh}/deterministic_nonce_hash"),
            b"\"00\"",
        )
        .unwrap();
        assert_eq!(nonce.kind(), RequestKind::DeterministicNonceHash);
        // What has no socket counterpart, and what is malformed, is answered without a signer.
        for (method, path, status) in [
            (Method::GET, "/healthz".to_string(), StatusCode::NOT_FOUND),
            (Method::DELETE, format!("/keys/{pkh}"), StatusCode::NOT_FOUND),
            (Method::GET, "/keys/tz1nope".to_string(), StatusCode::BAD_REQUEST),
            (Method::POST, format!("/keys/{pkh}?version=9"), StatusCode::BAD_REQUEST),
            (
                Method::POST,
                format!("/keys/{pkh}?authentication=edsigX"),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                format!("/bls_prove_possession/{pkh}?bls_pk=edpk"),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let answer = translate(&method, &path, b"\"00\"").unwrap_err();
            assert_eq!(answer.status, status, "{method} {path}");
            assert!(body(&answer)[0]["msg"].is_string());
        }
    }

    #[test]
    fn tz4_requests_carry_the_version_and_authentication_is_kept() {
        let pkh = crate::testing::Fake::bls().public_key().hash();
        let auth = crate::tezos::encode_ed25519_signature(&[9; 64]);
        let Ok(Request::Sign(r)) = translate(
            &Method::POST,
            &format!("/keys/{pkh}?version=1&authentication={auth}"),
            b"\"11\"",
        ) else {
            panic!("not a sign request")
        };
        assert_eq!(r.version, Some(SignatureVersion::V1));
        assert_eq!(r.authentication, Some(Signature::Generic([9; 64])));
        let Ok(Request::Sign(r)) = translate(&Method::POST, &format!("/keys/{pkh}"), b"\"11\"") else {
            panic!("not a sign request")
        };
        assert_eq!(
            r.version, None,
            "the encoder sends octez's latest for a tz4 key without one"
        );
    }

    #[tokio::test]
    async fn answers_become_the_http_protocol_json() {
        let net = Scripted::default();
        let client = SocketClient::default();
        net.then(serve(1, no_auth));
        let a = get(&client, &net, "/authorized_keys").await.unwrap();
        assert_eq!((a.status, body(&a)), (StatusCode::OK, json!({})));
        net.then(serve(1, |_| Response::KnownKeys(vec![tz1().parse().unwrap()])));
        client.reset();
        let a = get(&client, &net, "/known_keys").await.unwrap();
        assert_eq!(body(&a), json!({ "known_keys": [tz1()] }));
        let sign = Request::Sign(SignRequest {
            pkh: tz1().parse().unwrap(),
            version: None,
            data: vec![3],
            authentication: None,
        });
        let a = to_http(&sign, Response::Signature(Signature::Generic([1; 64]))).unwrap();
        assert!(body(&a)["signature"].as_str().unwrap().starts_with("edsig"));
    }

    #[tokio::test]
    async fn a_connection_is_kept_and_a_closed_one_replaced() {
        let net = Scripted::default();
        let client = SocketClient::default();
        // Two calls on one connection, which the signer then closes.
        net.then(serve(2, no_auth)).then(serve(1, no_auth));
        for _ in 0..2 {
            assert_eq!(
                get(&client, &net, "/authorized_keys").await.unwrap().status,
                StatusCode::OK
            );
        }
        assert_eq!(net.left(), 1, "the second call reused the first connection");
        // The kept connection is closed now: the call is made again on a new one.
        assert_eq!(
            get(&client, &net, "/authorized_keys").await.unwrap().status,
            StatusCode::OK
        );
        assert_eq!(net.left(), 0);
        // No signer at all: a connect failure.
        client.reset();
        assert_eq!(
            get(&client, &net, "/authorized_keys").await.unwrap_err(),
            AttemptFailure::Connect
        );
    }

    #[tokio::test]
    async fn errors_map_to_statuses_and_keep_the_trace() {
        let net = Scripted::default();
        let client = SocketClient::default();
        net.then(serve(1, |_| {
            Response::Error(ErrorTrace::from_json(&[json!({
                "kind": "permanent", "id": "failure",
                "msg": format!("no keys for the source contract {}", tz1())
            })]))
        }));
        let path = format!("/keys/{}", tz1());
        let a = client.send(&net, &Method::POST, &path, b"\"03\"").await.unwrap();
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "not this signer's key: ask the next one"
        );
        net.then(serve(1, |_| {
            Response::Error(ErrorTrace::from_json(&[
                json!({"kind": "temporary", "id": "failure", "msg": "level too low"}),
            ]))
        }));
        client.reset();
        let a = client.send(&net, &Method::POST, &path, b"\"03\"").await.unwrap();
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body(&a)[0]["msg"], "level too low");
    }

    #[tokio::test]
    async fn bad_answers_fail_the_attempt_and_a_silent_close_is_an_unknown_public_key() {
        let net = Scripted::default();
        let client = SocketClient::default();
        let path = format!("/keys/{}", tz1());
        // octez closes without a word for a public key it does not hold.
        net.then(raw(b""));
        assert_eq!(get(&client, &net, &path).await.unwrap().status, StatusCode::NOT_FOUND);
        // Any other call: a failure.
        net.then(raw(b""));
        assert_eq!(
            get(&client, &net, "/authorized_keys").await.unwrap_err(),
            AttemptFailure::Connect
        );
        // Cut mid-answer, a length announcing far more than comes, an unknown tag, trailing
        // bytes.
        for bytes in [
            &b"\x00\x05\x00\x00"[..],
            &b"\xff\xff\x00"[..],
            &b"\x00\x01\x07"[..],
            &b"\x00\x03\x00\x00\x00"[..],
        ] {
            net.then(raw(bytes));
            let e = get(&client, &net, "/authorized_keys").await.unwrap_err();
            assert!(
                matches!(e, AttemptFailure::Connect | AttemptFailure::BadAnswer),
                "{bytes:?}: {e:?}"
            );
        }
        net.then(raw(b"\x00\x01\x07"));
        assert_eq!(
            get(&client, &net, "/authorized_keys").await.unwrap_err(),
            AttemptFailure::BadAnswer
        );
        assert_eq!(net.left(), 0);
    }
}
