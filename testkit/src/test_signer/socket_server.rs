//! The test signer's socket flavour: octez's binary signer protocol, served as
//! `octez-signer launch socket signer` serves it (octez `src/bin_signer/socket_daemon.ml` and
//! `handler.ml`), with the same keys, [`Mode`]s and [`Stats`](super::Stats) as the HTTP side.
//!
//! # Connection
//! One connection serves requests in a loop until the peer closes (or a fault ends it). A
//! frame that does not decode as a request ends the connection without an answer, as octez's
//! `recv` failing ends `handle_client_loop`.
//!
//! # Answers (mode `ok`)
//! - `Sign` → the raw signature (64 bytes tz1, 96 tz4); tz4 signs under the scheme of the
//!   request's version, mapped as the HTTP side maps `?version=` (1 augmented; 2, 3 or none
//!   proof of possession; 0 refused for tz4). An unknown key → octez's
//!   `no keys for the source contract <pkh>`.
//! - `PublicKey` → the key; an unknown key closes the connection without an answer (octez's
//!   handler fails with `Not_found`, an exception, not an error answer).
//! - `AuthorizedKeys` → `NoAuthentication` (authentication signatures are ignored).
//! - `KnownKeys` → every key; `SupportsDeterministicNonces` → `false`; deterministic nonce
//!   requests → an error answer.
//! - `BlsProvePossession` → the proof (over `override_pk` when given) for a tz4 key, an
//!   error answer for a tz1 key.
//!
//! Error answers are octez `failwith` errors: `{"kind":"permanent","id":"failure","msg":…}`.
//!
//! # Modes
//! `slow:<ms>` delays every answer; `fail` answers every request with an error (authorized
//! keys included); `fail-sign` and `refuse` answer sign requests with an error; `hang` reads
//! the request and never answers (the connection stays open until the peer closes it);
//! `wrong-sig`, `wrong-scheme` as over HTTP; `malformed-sig` answers a signature of the other
//! curve's length (96 bytes for tz1, 64 for tz4), which decodes but cannot verify; `bad-key`
//! answers a tz4 public key that is not on the curve, for any key; `close-mid-answer` sends a
//! sign answer's length and its first bytes, then closes; `garbage` answers a sign request
//! with a well-framed message whose result tag is `0x07`. The last two leave other requests
//! alone, so health checks still pass and the fault is met on the sign path.

use std::sync::Arc;

use signer_gateway::signing::scheme_of;
use signer_gateway::socket::{
    decode_request, encode_response, read_frame, write_frame, AuthorizedKeys, ErrorTrace, Request, Response,
    SignRequest, Signature, MAX_FRAME,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{off_curve_bls_key, proof_in_mode, signature_in_mode, Mode, State};

/// Bytes of the answer `close-mid-answer` sends after the length: enough to be inside the
/// message, never all of it.
const MID_ANSWER_BYTES: usize = 3;

/// The result tag `garbage` answers with: neither 0 (ok) nor 1 (error).
const GARBAGE_TAG: u8 = 0x07;

/// Accept loop: one task per connection, all dropped on `cancel` (shutdown means crash).
pub(super) async fn serve(listener: TcpListener, state: Arc<State>, cancel: CancellationToken) {
    while let Some(stream) = super::accept(&listener, &cancel).await {
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                () = connection(stream, &state) => {}
            }
        });
    }
}

/// What to do with a request once handled.
enum Answer {
    /// Send this message as a frame and read the next request.
    Frame(Vec<u8>),
    /// Close without answering.
    Close,
    /// Never answer; keep the connection until the peer closes it.
    Hang,
    /// Send the start of this message's frame, then close.
    Partial(Vec<u8>),
}

/// Serve one connection: requests in a loop until the peer closes, a request does not decode,
/// or a fault ends it.
async fn connection(mut stream: TcpStream, state: &State) {
    loop {
        let frame = match read_frame(&mut stream, MAX_FRAME).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "test-signer socket connection ended");
                return;
            }
        };
        let (mode, _in_flight) = state.begin_request();
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "test-signer: request does not decode; closing");
                return;
            }
        };
        match answer(state, mode, request).await {
            Answer::Frame(message) => {
                if let Err(e) = write_frame(&mut stream, &message).await {
                    tracing::debug!(error = %e, "test-signer: answer not sent");
                    return;
                }
            }
            Answer::Close => return,
            Answer::Hang => {
                // Read and drop whatever comes, so the task ends when the peer gives up.
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
                return;
            }
            Answer::Partial(message) => {
                let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
                let mut partial = len.to_be_bytes().to_vec();
                partial.extend(
                    message
                        .iter()
                        .take(MID_ANSWER_BYTES.min(message.len().saturating_sub(1))),
                );
                let _ = stream.write_all(&partial).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// The answer to `request` in `mode`.
async fn answer(state: &State, mode: Mode, request: Request) -> Answer {
    if let Request::Sign(r) = &request {
        state.count_sign_request(version_query(r));
    }
    match mode {
        Mode::Hang => return Answer::Hang,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Fail => return error("injected failure"),
        _ => {}
    }
    let response = match request {
        Request::AuthorizedKeys => Response::AuthorizedKeys(AuthorizedKeys::NoAuthentication),
        Request::KnownKeys => Response::KnownKeys(state.keys.iter().map(|k| k.pkh).collect()),
        Request::PublicKey(pkh) => match state.key_of(&pkh) {
            None => return Answer::Close,
            // The codec encodes only valid BLS keys: the off-curve one is written by hand as
            // the codec would write a key, result tag 0 then curve tag 3 (BLS).
            Some(_) if mode == Mode::BadKey => {
                let mut message = vec![0x00, 0x03];
                message.extend_from_slice(&off_curve_bls_key());
                return Answer::Frame(message);
            }
            Some(key) => Response::PublicKey(key.public_key.clone()),
        },
        Request::SupportsDeterministicNonces(pkh) => match state.key_of(&pkh) {
            None => return no_keys(&pkh),
            Some(_) => Response::SupportsDeterministicNonces(false),
        },
        Request::DeterministicNonce(_) | Request::DeterministicNonceHash(_) => {
            return error("the test signer does not make deterministic nonces")
        }
        Request::BlsProvePossession(r) => {
            let Some(key) = state.key_of(&r.pkh) else {
                return no_keys(&r.pkh);
            };
            match proof_in_mode(mode, key, r.override_pk.as_ref()) {
                Some(proof) => Response::BlsProofOfPossession(proof),
                None => return error("Proof of possession can only be requested for BLS keys."),
            }
        }
        Request::Sign(r) => return sign(state, mode, r),
    };
    encoded(&response)
}

/// The version a sign request carries as the HTTP protocol would carry it (`version=N`), so
/// both protocols map it to a BLS scheme alike and tests read it in `last_query`.
fn version_query(request: &SignRequest) -> Option<String> {
    request.version.map(|v| format!("version={}", v.number()))
}

/// A sign request's answer (the request is already counted as received).
fn sign(state: &State, mode: Mode, request: SignRequest) -> Answer {
    let Some(key) = state.key_of(&request.pkh) else {
        return no_keys(&request.pkh);
    };
    let scheme = match scheme_of(version_query(&request).as_deref(), key.pkh.curve) {
        Ok(s) => s,
        Err(e) => return error(&e.to_string()),
    };
    let signature = match mode {
        Mode::FailSign => return error("injected failure"),
        Mode::Refuse => return error("signing refused"),
        Mode::MalformedSig => match key.sign_raw(&request.data, scheme) {
            // The other curve's length: decodes as a signature, cannot verify for this key.
            Signature::Generic(sig) => {
                let mut long = [0u8; 96];
                long[..64].copy_from_slice(&sig);
                Signature::Bls(long)
            }
            Signature::Bls(sig) => {
                let mut short = [0u8; 64];
                short.copy_from_slice(&sig[..64]);
                Signature::Generic(short)
            }
            other => other,
        },
        _ => signature_in_mode(mode, key, &request.data, scheme).socket(),
    };
    let message = match encoded(&Response::Signature(signature)) {
        Answer::Frame(m) => m,
        other => return other,
    };
    match mode {
        Mode::CloseMidAnswer => Answer::Partial(message),
        Mode::Garbage => {
            let mut garbage = message;
            if let Some(tag) = garbage.first_mut() {
                *tag = GARBAGE_TAG;
            }
            Answer::Frame(garbage)
        }
        _ => {
            state.count_sign(&request.data);
            Answer::Frame(message)
        }
    }
}

/// octez's answer to a request for a key it does not hold (`Client_keys.get_key`).
fn no_keys(pkh: &signer_gateway::tezos::Pkh) -> Answer {
    error(&format!("no keys for the source contract {pkh}"))
}

/// An error answer as octez's `failwith` makes it.
fn error(msg: &str) -> Answer {
    let trace = ErrorTrace::from_json(&[serde_json::json!({
        "kind": "permanent",
        "id": "failure",
        "msg": msg,
    })]);
    encoded(&Response::Error(trace))
}

/// `response` as a frame's message. Every answer here fits a frame (the largest, known keys,
/// is 21 bytes a key); one that did not would close the connection, as octez's `send` failing
/// does.
fn encoded(response: &Response) -> Answer {
    match encode_response(response) {
        Ok(message) => Answer::Frame(message),
        Err(e) => {
            tracing::warn!(error = %e, "test-signer: answer does not encode; closing");
            Answer::Close
        }
    }
}

#[cfg(test)]
mod tests;
