//! The octez remote-signer HTTP API (protocol.md §1): one handler, [`Api::handle`], served per
//! connection by [`crate::server`].
//!
//! Every error is answered with an octez-style error trace (a JSON array) so the octez
//! client shows the message; statuses follow protocol.md and are never 502.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::config::ApiConfig;
use crate::metrics::Metrics;
use crate::signing::{SignError, Signing};
use crate::tezos::Pkh;

/// The response body type of both HTTP services.
pub type Body = Full<Bytes>;

/// Shared state of the signing API.
pub struct Api {
    signing: Arc<Signing>,
    metrics: Arc<Metrics>,
    prefix: String,
    max_body: usize,
    body_timeout: Duration,
    max_drain: usize,
}

/// Build a JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An octez-style error trace: `[{"kind":…,"id":…,"msg":…}]`.
pub fn error_trace(status: StatusCode, kind: &str, id: &str, msg: &str) -> Response<Body> {
    json(status, &serde_json::json!([{ "kind": kind, "id": id, "msg": msg }]))
}

/// The response header naming the signer that produced an answer (`cache` for an identical
/// repeat answered from the watermark), so failover is visible from the baker's side.
pub const SIGNER_HEADER: &str = "x-signer";

/// `resp` with [`SIGNER_HEADER`] set to `signer`.
fn served_by(mut resp: Response<Body>, signer: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(signer) {
        resp.headers_mut().insert(SIGNER_HEADER, v);
    }
    resp
}

fn sign_error(e: &SignError) -> Response<Body> {
    error_trace(e.status(), e.trace_kind(), e.id(), &e.to_string())
}

fn bad_request(msg: &str) -> Response<Body> {
    error_trace(StatusCode::BAD_REQUEST, "permanent", "signer_gateway.bad_request", msg)
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error_trace(
        StatusCode::METHOD_NOT_ALLOWED,
        "permanent",
        "signer_gateway.method_not_allowed",
        &format!("method not allowed; allowed: {allow}"),
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn not_found(path: &str) -> Response<Body> {
    error_trace(
        StatusCode::NOT_FOUND,
        "permanent",
        "signer_gateway.not_found",
        &format!("no such path: {path}"),
    )
}

/// The routes, after the prefix is stripped.
enum Route<'a> {
    AuthorizedKeys,
    KnownKeys,
    Key(&'a str),
    BlsProvePossession(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/authorized_keys" => Some(Route::AuthorizedKeys),
        "/known_keys" => Some(Route::KnownKeys),
        _ => {
            if let Some(k) = path.strip_prefix("/keys/") {
                Some(Route::Key(k))
            } else {
                path.strip_prefix("/bls_prove_possession/")
                    .map(Route::BlsProvePossession)
            }
        }
    }
}

fn parse_pkh(s: &str) -> Result<Pkh, String> {
    s.parse::<Pkh>().map_err(|e| format!("invalid key hash {s:?}: {e}"))
}

impl Api {
    /// The API over `signing`, with the prefix, body cap and body deadline of `cfg`.
    pub fn new(signing: Arc<Signing>, metrics: Arc<Metrics>, cfg: &ApiConfig) -> Api {
        Api {
            signing,
            metrics,
            prefix: cfg.path_prefix.clone(),
            max_body: cfg.max_body_bytes,
            body_timeout: cfg.body_timeout,
            max_drain: cfg.max_drain_bytes,
        }
    }

    /// Handle one request; never fails (errors are responses).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let resp = self.dispatch(req).await;
        self.metrics
            .http_responses
            .with_label_values(&[resp.status().as_str()])
            .inc();
        Ok(resp)
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Response<Body> {
        let full_path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let Some(path) = full_path.strip_prefix(self.prefix.as_str()) else {
            return not_found(&full_path);
        };
        let Some(route) = route(path) else {
            return not_found(&full_path);
        };
        let method = req.method().clone();
        match route {
            Route::AuthorizedKeys => {
                if method != Method::GET {
                    return method_not_allowed("GET");
                }
                signer_answer(self.signing.authorized_keys(query.as_deref()).await)
            }
            Route::KnownKeys => {
                if method != Method::GET {
                    return method_not_allowed("GET");
                }
                let pq = match &query {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                signer_answer(self.signing.pass_through(&pq).await)
            }
            Route::BlsProvePossession(k) => {
                if method != Method::GET {
                    return method_not_allowed("GET");
                }
                let pkh = match parse_pkh(k) {
                    Ok(p) => p,
                    Err(m) => return bad_request(&m),
                };
                match self.signing.prove_possession(pkh, query.as_deref()).await {
                    Ok(s) => served_by(
                        json(
                            StatusCode::OK,
                            &serde_json::json!({ "bls_prove_possession": s.signature }),
                        ),
                        &s.signer,
                    ),
                    Err(e) => sign_error(&e),
                }
            }
            Route::Key(k) => {
                let pkh = match parse_pkh(k) {
                    Ok(p) => p,
                    Err(m) => return bad_request(&m),
                };
                match method {
                    Method::GET => match self.signing.public_key(pkh).await {
                        Ok(pk) => json(StatusCode::OK, &serde_json::json!({ "public_key": pk.to_string() })),
                        Err(e) => sign_error(&e),
                    },
                    Method::POST => {
                        let bytes = match self.read_payload(req).await {
                            Ok(b) => b,
                            Err(r) => return r,
                        };
                        match self.signing.sign(pkh, bytes, query.as_deref()).await {
                            Ok(s) => served_by(
                                json(StatusCode::OK, &serde_json::json!({ "signature": s.signature })),
                                &s.signer,
                            ),
                            Err(e) => sign_error(&e),
                        }
                    }
                    _ => method_not_allowed("GET, POST"),
                }
            }
        }
    }

    /// Read the body (JSON string of hex), capped at `max_body` bytes and `body_timeout`.
    async fn read_payload(&self, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = req.into_body();
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(self.too_large(body, declared).await);
        }
        let read = tokio::time::timeout(self.body_timeout, Limited::new(body, self.max_body).collect()).await;
        let body = match read {
            Err(_) => return Err(self.body_too_slow()),
            Ok(Ok(c)) => c.to_bytes(),
            // Over the cap while reading (chunked, no length declared): the rest is unread.
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(self.too_large_closing()),
            Ok(Err(e)) => return Err(bad_request(&format!("cannot read request body: {e}"))),
        };
        decode_body(&body).map(Bytes::from).map_err(|m| bad_request(&m))
    }

    /// 413 for a body declared too large. A body up to `max_drain` bytes is read and
    /// discarded first (within the body deadline): closing with unread bytes in the socket
    /// makes the kernel reset the connection, and the client never reads the answer.
    async fn too_large(&self, body: Incoming, declared: Option<u64>) -> Response<Body> {
        if declared.is_some_and(|n| n <= self.max_drain as u64) {
            let drain = Limited::new(body, self.max_drain).collect();
            if let Ok(Ok(_)) = tokio::time::timeout(self.body_timeout, drain).await {
                return error_trace(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "permanent",
                    "signer_gateway.body_too_large",
                    &format!("request body exceeds {} bytes", self.max_body),
                );
            }
        }
        self.too_large_closing()
    }

    /// 413 on a connection that cannot be reused (the rest of the body is unread).
    fn too_large_closing(&self) -> Response<Body> {
        let mut r = error_trace(
            StatusCode::PAYLOAD_TOO_LARGE,
            "permanent",
            "signer_gateway.body_too_large",
            &format!("request body exceeds {} bytes", self.max_body),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }

    /// 408 for a body that did not arrive within `body_timeout`.
    fn body_too_slow(&self) -> Response<Body> {
        self.metrics
            .http_refused
            .with_label_values(&["api", "body_timeout"])
            .inc();
        let mut r = error_trace(
            StatusCode::REQUEST_TIMEOUT,
            "temporary",
            "signer_gateway.body_timeout",
            &format!("request body not received within {:?}", self.body_timeout),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }
}

/// A signer's answer to a read-only call, passed on: JSON as it is, anything else wrapped in
/// an error trace; a signer's 502 never reaches the octez client as a 502 (it would retry).
fn signer_answer(answer: Result<(String, StatusCode, Bytes), SignError>) -> Response<Body> {
    let (signer, status, body) = match answer {
        Ok(a) => a,
        Err(e) => return sign_error(&e),
    };
    let status = if status == StatusCode::BAD_GATEWAY {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        status
    };
    let resp = if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    } else {
        let msg = format!("signer answered {status}: {}", String::from_utf8_lossy(&body).trim());
        error_trace(status, "permanent", "signer_gateway.signer_answer", &msg)
    };
    served_by(resp, &signer)
}

/// `"0a1b…"` (a JSON string, surrounding whitespace allowed) → bytes.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty request body: expected a JSON string of hex bytes".into());
    }
    let text: String = serde_json::from_slice(body).map_err(|e| format!("body is not a JSON string: {e}"))?;
    if text.is_empty() {
        return Err("empty payload: nothing to sign".into());
    }
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex ({} digits)", text.len()));
    }
    hex::decode(&text).map_err(|e| format!("invalid hex: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_decoding() {
        assert_eq!(decode_body(b"\"13ab\"\n").unwrap(), vec![0x13, 0xab]);
        assert_eq!(decode_body(b" \"13AB\" ").unwrap(), vec![0x13, 0xab]);
        assert!(decode_body(b"").unwrap_err().contains("empty"));
        assert!(decode_body(b"\"\"").unwrap_err().contains("empty"));
        assert!(decode_body(b"13ab").unwrap_err().contains("JSON"));
        assert!(decode_body(b"\"13a\"").unwrap_err().contains("odd"));
        assert!(decode_body(b"\"zz\"").unwrap_err().contains("hex"));
        assert!(decode_body(b"{\"a\":1}").unwrap_err().contains("JSON"));
    }

    #[test]
    fn routes() {
        assert!(matches!(route("/authorized_keys"), Some(Route::AuthorizedKeys)));
        assert!(matches!(route("/keys/tz1x"), Some(Route::Key("tz1x"))));
        assert!(matches!(
            route("/bls_prove_possession/tz4x"),
            Some(Route::BlsProvePossession("tz4x"))
        ));
        assert!(route("/nope").is_none());
    }
}
