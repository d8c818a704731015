//! The socket-protocol front end: bakers given a `tcp://gateway:7732/tz…` key URI get the
//! same service as over HTTP, from the same pipeline ([`Signing`]): policy, watermark,
//! failover, verification. Off unless `socket_api` is configured.
//!
//! Like octez's socket daemon (`src/bin_signer/socket_daemon.ml`), a connection serves
//! requests one after the other until the client closes it. Every whole frame is answered: a
//! refusal is an error trace whose entry carries the same `kind`, `id` and `msg` as the HTTP
//! API's trace for it. A frame whose request does not decode gets one too (octez closes without
//! a word; an error answer reads the same whatever was asked, so a client learns why), and the
//! connection is then closed: a client that sends what it does not mean is not trusted with
//! more. A frame cut short or too slow is closed on, having nothing to answer.
//!
//! Limits: `max_connections` at once (more wait in the kernel's backlog), a per-source cap
//! (more are closed on accept), `idle_timeout` between requests, `frame_timeout` for one
//! request to arrive once started and for its answer to be written. A request is at most
//! [`MAX_FRAME`] bytes by construction (its length is a `u16`).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{
    decode_request, encode_response, read_frame, write_frame, AuthorizedKeys, ErrorTrace, Request, Response, Signature,
    MAX_FRAME,
};
use crate::config::SocketApiConfig;
use crate::limits::{LogLimiter, SourceCounts};
use crate::metrics::Metrics;
use crate::server::Acceptor;
use crate::signing::{SignError, Signing};
use crate::tezos::{self, Pkh, PublicKey};

/// The socket front end's shared state.
pub struct Front {
    signing: Arc<Signing>,
    metrics: Arc<Metrics>,
    cfg: SocketApiConfig,
}

impl Front {
    /// A front end over `signing`, within the limits of `cfg`.
    pub fn new(signing: Arc<Signing>, metrics: Arc<Metrics>, cfg: SocketApiConfig) -> Front {
        Front { signing, metrics, cfg }
    }

    /// Accept connections until `cancel` fires; each is served on `conns`, which the caller
    /// waits on (within its grace period) to let requests in flight finish. A connection
    /// waiting for its next request closes at once on `cancel`; `hard` ends the rest.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        conns: TaskTracker,
        cancel: CancellationToken,
        hard: CancellationToken,
    ) {
        let mut accept = Acceptor::new(listener, self.cfg.max_connections);
        let sources = Arc::new(SourceCounts::default());
        let refusals_log = Arc::new(LogLimiter::default());
        loop {
            let Some((permit, stream, peer)) = accept.next(&cancel).await else {
                return;
            };
            let Some(source) = sources.enter(peer.ip(), self.cfg.max_connections_per_source) else {
                // The protocol has no way to say why before a request: closed at once.
                self.metrics
                    .http_refused
                    .with_label_values(&["socket", "per_source"])
                    .inc();
                if let Some(suppressed) = refusals_log.allow() {
                    warn!(%peer, suppressed, "socket api: too many connections from this address: closed");
                }
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let front = Arc::clone(&self);
            let (cancel, hard) = (cancel.clone(), hard.clone());
            conns.spawn(async move {
                let _held = (permit, source);
                tokio::select! {
                    _ = hard.cancelled() => {}
                    _ = front.connection(stream, &cancel) => {}
                }
            });
        }
    }

    /// Serve one connection's requests in turn until it closes, idles out, breaks the
    /// protocol, or the gateway stops.
    async fn connection(&self, mut stream: TcpStream, cancel: &CancellationToken) {
        loop {
            // Wait for the first byte of the next request (without reading it).
            let mut first = [0u8; 1];
            let arrived = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(self.cfg.idle_timeout, stream.peek(&mut first)) => r,
            };
            match arrived {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) | Ok(Err(_)) => return,
                Err(_) => {
                    self.metrics
                        .http_refused
                        .with_label_values(&["socket", "idle_timeout"])
                        .inc();
                    return;
                }
            }
            let frame = match tokio::time::timeout(self.cfg.frame_timeout, read_frame(&mut stream, MAX_FRAME)).await {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    debug!(error = %e, "socket api: cannot read a request: closed");
                    self.metrics
                        .http_refused
                        .with_label_values(&["socket", "malformed"])
                        .inc();
                    return;
                }
                Err(_) => {
                    self.metrics
                        .http_refused
                        .with_label_values(&["socket", "frame_timeout"])
                        .inc();
                    return;
                }
            };
            let request = match decode_request(&frame) {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "socket api: undecodable request: answered, then closed");
                    self.metrics
                        .socket_requests
                        .with_label_values(&["undecodable", "error"])
                        .inc();
                    let answer = error(
                        "permanent",
                        "signer_gateway.bad_request",
                        &format!("undecodable request: {e}"),
                    );
                    if let Ok(bytes) = encode_response(&answer) {
                        let _ = tokio::time::timeout(self.cfg.frame_timeout, write_frame(&mut stream, &bytes)).await;
                    }
                    return;
                }
            };
            let kind = request.kind();
            let response = self.answer(request).await;
            let result = match &response {
                Response::Error(_) => "error",
                _ => "ok",
            };
            self.metrics
                .socket_requests
                .with_label_values(&[kind.as_str(), result])
                .inc();
            let bytes = match encode_response(&response) {
                Ok(b) => b,
                Err(e) => {
                    // Only a trace too long for a frame gets here: say so in a short one.
                    warn!(error = %e, "socket api: cannot encode an answer");
                    match encode_response(&error(
                        "temporary",
                        "signer_gateway.answer_too_long",
                        &format!("the answer cannot be encoded: {e}"),
                    )) {
                        Ok(b) => b,
                        Err(_) => return,
                    }
                }
            };
            match tokio::time::timeout(self.cfg.frame_timeout, write_frame(&mut stream, &bytes)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// The answer to one request, from the signing pipeline.
    async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Sign(r) => {
                let mut query = Vec::new();
                if let Some(v) = r.version {
                    query.push(format!("version={}", v.number()));
                }
                if let Some(sig) = r
                    .authentication
                    .as_ref()
                    .and_then(|s| tezos::encode_untyped_signature(s.as_bytes()))
                {
                    query.push(format!("authentication={sig}"));
                }
                let query = query.join("&");
                match self.signing.sign(r.pkh, Bytes::from(r.data), Some(&query)).await {
                    Ok(signed) => match socket_signature(&signed.signature) {
                        Some(sig) => Response::Signature(sig),
                        None => internal(&format!(
                            "cannot carry signature {} in the socket protocol",
                            signed.signature
                        )),
                    },
                    Err(e) => refusal(&e),
                }
            }
            Request::PublicKey(pkh) => match self.signing.public_key(pkh).await {
                Ok(pk) => Response::PublicKey(pk),
                Err(e) => refusal(&e),
            },
            Request::AuthorizedKeys => match self.signing.authorized_keys(None).await {
                Ok((_, status, body)) => keys_answer(status, &body, "authorized_keys")
                    .map(|keys| {
                        Response::AuthorizedKeys(keys.map_or(AuthorizedKeys::NoAuthentication, AuthorizedKeys::Keys))
                    })
                    .unwrap_or_else(Response::Error),
                Err(e) => refusal(&e),
            },
            Request::KnownKeys => match self.signing.pass_through("/known_keys").await {
                Ok((_, status, body)) => keys_answer(status, &body, "known_keys")
                    .map(|keys| Response::KnownKeys(keys.unwrap_or_default()))
                    .unwrap_or_else(Response::Error),
                Err(e) => refusal(&e),
            },
            Request::BlsProvePossession(r) => {
                let query = r
                    .override_pk
                    .map(|pk| format!("bls_pk={}", PublicKey::Bls(pk)))
                    .unwrap_or_default();
                match self.signing.prove_possession(r.pkh, Some(&query)).await {
                    Ok(signed) => match tezos::decode_bls_signature(&signed.signature) {
                        Ok(proof) => Response::BlsProofOfPossession(proof),
                        Err(e) => internal(&format!("cannot carry proof {}: {e}", signed.signature)),
                    },
                    Err(e) => refusal(&e),
                }
            }
            // The gateway serves no deterministic nonces (nor does its HTTP API): a nonce is
            // derived from the secret key and has no watermark to guard it.
            Request::SupportsDeterministicNonces(_) => Response::SupportsDeterministicNonces(false),
            Request::DeterministicNonce(_) | Request::DeterministicNonceHash(_) => error(
                "permanent",
                "signer_gateway.no_deterministic_nonces",
                "the gateway does not serve deterministic nonces",
            ),
        }
    }
}

/// An error answer of one entry, in the shape of the HTTP API's traces.
fn error(kind: &str, id: &str, msg: &str) -> Response {
    Response::Error(trace(kind, id, msg))
}

fn trace(kind: &str, id: &str, msg: &str) -> ErrorTrace {
    ErrorTrace::from_json(&[serde_json::json!({
        "kind": kind,
        "id": id,
        "msg": msg,
    })])
}

fn refusal(e: &SignError) -> Response {
    error(e.trace_kind(), e.id(), &e.to_string())
}

fn internal(msg: &str) -> Response {
    error("temporary", "signer_gateway.internal", msg)
}

/// A signature as the pipeline returns it (`edsig…`, `BLsig…`…) as the socket protocol
/// carries it.
fn socket_signature(text: &str) -> Option<Signature> {
    let bytes = tezos::decode_signature(text).ok()?;
    if let Ok(b) = <[u8; 64]>::try_from(bytes.as_slice()) {
        return Some(Signature::Generic(b));
    }
    <[u8; 96]>::try_from(bytes.as_slice()).ok().map(Signature::Bls)
}

/// A signer's answer to `/authorized_keys` or `/known_keys` (passed on by the pipeline):
/// the key list under `field`, `None` when absent (`{}`: no authentication), or the error
/// trace to answer.
fn keys_answer(status: StatusCode, body: &[u8], field: &str) -> Result<Option<Vec<Pkh>>, ErrorTrace> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        // The signer's own trace when it sent one, else what it said.
        return Err(match json {
            Some(serde_json::Value::Array(errors)) if !errors.is_empty() => ErrorTrace::from_json(&errors),
            _ => trace(
                "temporary",
                "signer_gateway.signer_answer",
                &format!("signer answered {status}: {}", String::from_utf8_lossy(body).trim()),
            ),
        });
    }
    let bad = || {
        trace(
            "temporary",
            "signer_gateway.signer_answer",
            &format!("the signer's {field} answer is not a list of key hashes"),
        )
    };
    let Some(list) = json.as_ref().and_then(|v| v.get(field)) else {
        return if json.as_ref().is_some_and(serde_json::Value::is_object) {
            Ok(None)
        } else {
            Err(bad())
        };
    };
    list.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|k| k.as_str().and_then(|s| s.parse::<Pkh>().ok()).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_pass_on_and_bad_ones_are_errors() {
        let pkh = crate::testing::Fake::new().public_key().hash();
        let ok = |body: String| keys_answer(StatusCode::OK, body.as_bytes(), "authorized_keys");
        assert_eq!(ok("{}".into()).ok(), Some(None));
        assert_eq!(
            ok(format!("{{\"authorized_keys\":[\"{pkh}\"]}}")).ok(),
            Some(Some(vec![pkh]))
        );
        for body in [
            "[]",
            "{\"authorized_keys\":[\"tz1nope\"]}",
            "{\"authorized_keys\":1}",
            "x",
        ] {
            assert!(ok(body.into()).is_err(), "{body}");
        }
        let Err(trace) = keys_answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"[{"kind":"temporary","id":"failure","msg":"no"}]"#,
            "known_keys",
        ) else {
            panic!("an error answer")
        };
        assert_eq!(trace.message(), "no", "the signer's own trace is passed on");
    }

    #[test]
    fn signatures_convert_both_ways() {
        let ed = tezos::encode_ed25519_signature(&[5; 64]);
        assert_eq!(socket_signature(&ed), Some(Signature::Generic([5; 64])));
        assert!(socket_signature("edsig").is_none());
        assert_eq!(
            tezos::encode_untyped_signature(&[5; 64]).and_then(|s| socket_signature(&s)),
            Some(Signature::Generic([5; 64]))
        );
        assert_eq!(tezos::encode_untyped_signature(&[5; 63]), None);
    }
}
