//! The signing pipeline, independent of HTTP: parse → policy → public key → watermark
//! (durable) → signer with failover → verify → release.
//!
//! Order matters: nothing reaches a signer before its mark is durable, and nothing leaves
//! the gateway before its signature verified against the key the request names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::sync::OwnedMutexGuard;
use tracing::{error, info, warn};

use crate::config::Policy;
use crate::metrics::Metrics;
use crate::payload::{self, Payload, PayloadError};
use crate::pool::{AttemptFailure, Pool, PoolError, Verdict};
use crate::tezos::{blake2b_256, BlsScheme, Curve, Pkh, PublicKey, TezosError};
use crate::watermark::{MarkKey, MarkRequest, Outcome, WatermarkError, WatermarkStore};

/// Why a request was not signed. One variant per answer a client can get. `Clone` so that
/// identical requests joining one signature in flight all get its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    /// Malformed request (body, path or payload).
    #[error("{0}")]
    BadRequest(String),
    /// The payload parser refused the bytes.
    #[error("cannot sign: {0}")]
    Payload(#[from] PayloadError),
    /// Policy does not allow this kind of request for this key.
    #[error("policy refuses to sign {what} with {pkh}")]
    Policy {
        /// Key named in the request.
        pkh: Pkh,
        /// What was asked ("attestation", "generic operation"…).
        what: String,
    },
    /// No signer knows this key.
    #[error("unknown key {0}")]
    UnknownKey(Pkh),
    /// The gateway cannot verify signatures of this scheme, so it will not release them.
    #[error("cannot sign with {pkh}: {source}")]
    Unverifiable {
        /// Key named in the request.
        pkh: Pkh,
        /// Which scheme.
        source: TezosError,
    },
    /// The high watermark refused, or could not be made durable.
    #[error(transparent)]
    Watermark(#[from] WatermarkError),
    /// These very bytes were signed for this tz4 key under the other BLS scheme: signing them
    /// again would release a second, different signature of one operation.
    #[error("these bytes were already signed with {pkh} under the {signed} scheme; the request asks for {asked}")]
    OtherScheme {
        /// Key named in the request.
        pkh: Pkh,
        /// Scheme of the signature already released.
        signed: &'static str,
        /// Scheme this request asks for.
        asked: &'static str,
    },
    /// No signer could answer.
    #[error("no signer available ({})", .attempts.join("; "))]
    NoSigner {
        /// One line per failed attempt.
        attempts: Vec<String>,
    },
    /// A signer refused the request itself (4xx other than 404); passed on as it said.
    #[error("signer {signer} refused: {status} {message}")]
    SignerRefused {
        /// Which signer.
        signer: String,
        /// Its status code.
        status: StatusCode,
        /// Its body, as text.
        message: String,
    },
}

impl From<PoolError> for SignError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::NoSigner { attempts } => SignError::NoSigner { attempts },
        }
    }
}

impl SignError {
    /// The HTTP status for this error (protocol.md §1). Never 502: the octez client retries
    /// a 502 up to ten times, which would turn one refusal into ten.
    pub fn status(&self) -> StatusCode {
        match self {
            SignError::BadRequest(_) | SignError::Payload(_) => StatusCode::BAD_REQUEST,
            SignError::Policy { .. } | SignError::Unverifiable { .. } => StatusCode::FORBIDDEN,
            SignError::UnknownKey(_) => StatusCode::NOT_FOUND,
            SignError::Watermark(WatermarkError::Store(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            SignError::Watermark(_) | SignError::OtherScheme { .. } => StatusCode::CONFLICT,
            SignError::NoSigner { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SignError::SignerRefused { status, .. } if *status == StatusCode::BAD_GATEWAY => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            SignError::SignerRefused { status, .. } => *status,
        }
    }

    /// A stable id for the error trace.
    pub fn id(&self) -> &'static str {
        match self {
            SignError::BadRequest(_) => "signer_gateway.bad_request",
            SignError::Payload(_) => "signer_gateway.bad_payload",
            SignError::Policy { .. } => "signer_gateway.policy_refusal",
            SignError::Unverifiable { .. } => "signer_gateway.unverifiable_key",
            SignError::UnknownKey(_) => "signer_gateway.unknown_key",
            SignError::Watermark(e) => match e.reason() {
                crate::watermark::RefusalReason::Below => "signer_gateway.below_watermark",
                crate::watermark::RefusalReason::DifferentData => "signer_gateway.different_data",
                crate::watermark::RefusalReason::Store => "signer_gateway.watermark_store",
            },
            SignError::OtherScheme { .. } => "signer_gateway.signed_under_other_scheme",
            SignError::NoSigner { .. } => "signer_gateway.no_signer",
            SignError::SignerRefused { .. } => "signer_gateway.signer_refused",
        }
    }

    /// `temporary` when the same request may succeed later, else `permanent`.
    pub fn trace_kind(&self) -> &'static str {
        match self {
            SignError::NoSigner { .. } | SignError::Watermark(WatermarkError::Store(_)) => "temporary",
            _ => "permanent",
        }
    }
}

/// A released signature and who produced it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// base58 signature (`edsig…`).
    pub signature: String,
    /// Serving signer, or `cache` for an identical repeat answered from the watermark.
    pub signer: String,
}

/// Per-(chain, key, kind) async locks, removed when unused.
///
/// Held for the watermark's check-and-record (and the durable write it waits for) and the
/// in-flight bookkeeping only, never across a signer's round trip: a request for a higher
/// level never waits on a lower one's signer, and unrelated keys never wait on each other.
#[derive(Default)]
struct KeyLocks {
    map: Mutex<HashMap<MarkKey, Arc<tokio::sync::Mutex<()>>>>,
}

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: MarkKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    async fn lock(&self, key: MarkKey) -> KeyGuard<'_> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key).or_default())
        };
        let guard = m.lock_owned().await;
        KeyGuard {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it now: nobody waits, so drop the entry.
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.key);
        }
    }
}

/// What identifies one signature in flight: the mark and the digest of the bytes.
type FlightKey = (MarkKey, [u8; 32]);

/// The answer of a signature in flight, once there is one.
type FlightResult = Option<Result<Signed, SignError>>;

/// Signatures in flight: identical requests that arrive while the first one's signer works
/// wait for its answer instead of asking a signer again (a Ledger refuses to sign the same
/// bytes twice).
#[derive(Default)]
struct InFlight {
    /// Each with the BLS scheme it is signed under (for other curves `version` changes
    /// nothing, and it is always proof of possession).
    map: Mutex<HashMap<FlightKey, (BlsScheme, tokio::sync::watch::Receiver<FlightResult>)>>,
}

/// Removes a signature's in-flight entry however its request ends (answered, failed, or
/// dropped because the client went away); joiners then see the sender gone and retry.
struct FlightGuard<'a> {
    flights: &'a InFlight,
    key: FlightKey,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// What the watermark check decided for one request.
enum Checked {
    /// An identical repeat, answered from the mark.
    Cached(Signed),
    /// The mark is durable: this request asks a signer and publishes the answer.
    Lead(tokio::sync::watch::Sender<FlightResult>),
    /// The identical request already signing answers this one too.
    Join(tokio::sync::watch::Receiver<FlightResult>),
}

/// The signing service shared by every API connection.
pub struct Signing {
    pool: Arc<Pool>,
    store: Arc<dyn WatermarkStore>,
    policy: Policy,
    metrics: Arc<Metrics>,
    keys: RwLock<HashMap<Pkh, PublicKey>>,
    locks: KeyLocks,
    flights: InFlight,
}

impl Signing {
    /// Assemble the pipeline.
    pub fn new(pool: Arc<Pool>, store: Arc<dyn WatermarkStore>, policy: Policy, metrics: Arc<Metrics>) -> Signing {
        Signing {
            pool,
            store,
            policy,
            metrics,
            keys: RwLock::new(HashMap::new()),
            locks: KeyLocks::default(),
            flights: InFlight::default(),
        }
    }

    /// The pool, for pass-through calls and status.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The watermark store, for status.
    pub fn store(&self) -> &Arc<dyn WatermarkStore> {
        &self.store
    }

    /// The public key of `pkh`, from the cache or the first signer that knows it. A key
    /// that does not hash to `pkh` is a signer failure, never cached.
    pub async fn public_key(&self, pkh: Pkh) -> Result<PublicKey, SignError> {
        if let Some(pk) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(&pkh) {
            return Ok(pk.clone());
        }
        let path = format!("/keys/{pkh}");
        let (_, found) = self
            .pool
            .request(Method::GET, &path, Bytes::new(), |a| {
                if a.status == StatusCode::NOT_FOUND {
                    return Verdict::NotHere(None);
                }
                if !a.status.is_success() {
                    return Verdict::Failed(AttemptFailure::ServerError, format!("GET {path} answered {}", a.status));
                }
                let Some(text) = parse_field(&a.body, "public_key") else {
                    return Verdict::Failed(AttemptFailure::BadSignature, "unparsable public key answer".into());
                };
                match text.parse::<PublicKey>() {
                    Ok(pk) if pk.hash() == pkh => Verdict::Done(Some(pk)),
                    Ok(pk) => Verdict::Failed(
                        AttemptFailure::BadSignature,
                        format!("answered public key {pk} which is not the key of {pkh}"),
                    ),
                    Err(e) => Verdict::Failed(
                        AttemptFailure::BadSignature,
                        format!("answered an invalid public key {text:?}: {e}"),
                    ),
                }
            })
            .await?;
        let pk = found.ok_or(SignError::UnknownKey(pkh))?;
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pkh, pk.clone());
        Ok(pk)
    }

    /// Sign `bytes` with `pkh`. `query` (without `?`) is passed on to the signer unchanged
    /// (`version`, `authentication`).
    pub async fn sign(&self, pkh: Pkh, bytes: Bytes, query: Option<&str>) -> Result<Signed, SignError> {
        let started = Instant::now();
        // Both checks come before anything else, so a refusal never raises a mark.
        let scheme = scheme_of(query, pkh.curve)?;
        let payload = payload::parse_for(&bytes, pkh.curve)?;
        let label = match payload {
            Payload::Consensus(c) => c.kind.as_str(),
            Payload::Generic => "generic",
            Payload::Packed => "packed",
        };
        let result = self.sign_parsed(pkh, &bytes, payload, query, scheme).await;
        match &result {
            Ok(s) => {
                self.metrics
                    .sign_requests
                    .with_label_values(&[s.signer.as_str(), label, "ok"])
                    .inc();
                self.metrics
                    .sign_duration
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
                let (level, round) = match payload {
                    Payload::Consensus(c) => (i64::from(c.level), i64::from(c.round)),
                    _ => (-1, -1),
                };
                info!(
                    key = %pkh,
                    kind = %label,
                    level,
                    round,
                    signer = %s.signer,
                    duration_us = started.elapsed().as_micros() as u64,
                    "signed"
                );
            }
            Err(e) => {
                let result = match e {
                    SignError::Watermark(_) | SignError::Policy { .. } => "refused",
                    _ => "error",
                };
                self.metrics
                    .sign_requests
                    .with_label_values(&["none", label, result])
                    .inc();
                match e {
                    SignError::Watermark(w) => {
                        self.metrics
                            .watermark_refusals
                            .with_label_values(&[label, w.reason().as_str()])
                            .inc();
                        if matches!(w, WatermarkError::Store(_)) {
                            error!(key = %pkh, kind = %label, error = %w, "watermark store failed: refusing to sign");
                        } else {
                            warn!(key = %pkh, kind = %label, reason = w.reason().as_str(), error = %w, "watermark refusal");
                        }
                    }
                    SignError::Policy { .. } => {
                        self.metrics.policy_refusals.with_label_values(&[label]).inc();
                        warn!(key = %pkh, kind = %label, error = %e, "policy refusal");
                    }
                    _ => warn!(key = %pkh, kind = %label, error = %e, "sign request failed"),
                }
            }
        }
        result
    }

    async fn sign_parsed(
        &self,
        pkh: Pkh,
        bytes: &Bytes,
        payload: Payload,
        query: Option<&str>,
        scheme: BlsScheme,
    ) -> Result<Signed, SignError> {
        if pkh.curve == Curve::MlDsa44 {
            // Refused before any signer is asked: no consensus role, and no verifier here.
            return Err(match payload {
                Payload::Consensus(c) => SignError::Policy {
                    pkh,
                    what: format!("{}: tz5 (ML-DSA-44) keys cannot be consensus keys", c.kind),
                },
                _ => SignError::Unverifiable {
                    pkh,
                    source: TezosError::UnsupportedCurve(pkh.curve),
                },
            });
        }
        self.check_policy(pkh, payload)?;
        let pk = self.public_key(pkh).await?;
        let path = match query {
            Some(q) if !q.is_empty() => format!("/keys/{pkh}?{q}"),
            _ => format!("/keys/{pkh}"),
        };
        let Payload::Consensus(c) = payload else {
            // Generic and packed data carry no level: policy alone decides.
            return self.forward(&path, bytes, &pk, scheme).await;
        };
        let req = MarkRequest {
            key: MarkKey {
                chain: c.chain,
                pkh,
                kind: c.kind,
            },
            level: c.level,
            round: c.round,
            digest: blake2b_256(bytes),
        };
        let flight_key = (req.key, req.digest);
        // For tz1/tz2/tz3 the version changes nothing: one flight whatever it says.
        let scheme_key = if pkh.curve == Curve::Bls {
            scheme
        } else {
            BlsScheme::ProofOfPossession
        };
        loop {
            let tx = match self
                .check_or_join(&req, flight_key, &pk, bytes, scheme, scheme_key)
                .await?
            {
                Checked::Cached(signed) => return Ok(signed),
                Checked::Lead(tx) => tx,
                Checked::Join(mut rx) => {
                    // If the leading request was dropped (its client went away) before it
                    // answered, check again from the top: this request may lead now.
                    let answer = rx.wait_for(Option::is_some).await.ok().and_then(|a| a.clone());
                    match answer {
                        Some(result) => return result,
                        None => continue,
                    }
                }
            };
            let _flight = FlightGuard {
                flights: &self.flights,
                key: flight_key,
            };
            let result = self.forward(&path, bytes, &pk, scheme).await;
            if let Ok(signed) = &result {
                if let Err(e) = self.store.record_signature(&req, &signed.signature).await {
                    // The mark itself is durable; only the cached answer for repeats is lost.
                    warn!(key = %pkh, error = %e, "could not keep the signature for identical repeats");
                }
            }
            tx.send_replace(Some(result.clone()));
            return result;
        }
    }

    /// Under the key's lock: join an identical signature in flight, or check and record the
    /// mark durably and lead.
    async fn check_or_join(
        &self,
        req: &MarkRequest,
        flight_key: FlightKey,
        pk: &PublicKey,
        bytes: &[u8],
        scheme: BlsScheme,
        scheme_key: BlsScheme,
    ) -> Result<Checked, SignError> {
        let _guard = self.locks.lock(req.key).await;
        let in_flight = self
            .flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&flight_key)
            .cloned();
        if let Some((flying, rx)) = in_flight {
            // The same tz4 bytes being signed under the other scheme: signing them again
            // would release a second, different signature of one operation.
            if flying != scheme_key {
                return Err(SignError::OtherScheme {
                    pkh: req.key.pkh,
                    signed: flying.as_str(),
                    asked: scheme.as_str(),
                });
            }
            return Ok(Checked::Join(rx));
        }
        let checked = Instant::now();
        let outcome = self.store.check_and_record(req).await;
        self.metrics.watermark_duration.observe(checked.elapsed().as_secs_f64());
        self.metrics.store_healthy.set(i64::from(self.store.health().healthy));
        match outcome? {
            Outcome::Repeat(Some(signature)) => {
                // A tz4 signature kept for these bytes answers only a request for its scheme.
                if pk.verify_as(bytes, &signature, scheme).is_err() {
                    return Err(SignError::OtherScheme {
                        pkh: req.key.pkh,
                        signed: scheme.other().as_str(),
                        asked: scheme.as_str(),
                    });
                }
                return Ok(Checked::Cached(Signed {
                    signature,
                    signer: "cache".into(),
                }));
            }
            // Same bytes as the mark but no signature kept (lost with a crash, or the first
            // attempt failed): signing identical bytes again is not a double signature.
            Outcome::Repeat(None) | Outcome::Recorded => {}
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        self.flights
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(flight_key, (scheme_key, rx));
        Ok(Checked::Lead(tx))
    }

    fn check_policy(&self, pkh: Pkh, payload: Payload) -> Result<(), SignError> {
        let key = self.policy.keys.get(&pkh);
        let allowed = match payload {
            Payload::Consensus(c) => key.map_or(&self.policy.default_kinds, |k| &k.kinds).contains(&c.kind),
            Payload::Generic => key.is_some_and(|k| k.allow_generic),
            Payload::Packed => key.is_some_and(|k| k.allow_packed),
        };
        if allowed {
            return Ok(());
        }
        let what = match payload {
            Payload::Consensus(c) => format!("{} (level {}, round {})", c.kind, c.level, c.round),
            Payload::Generic => "a generic operation (0x03)".into(),
            Payload::Packed => "packed data (0x05)".into(),
        };
        Err(SignError::Policy { pkh, what })
    }

    /// Send the bytes to the first signer that signs them with a signature that verifies.
    async fn forward(&self, path: &str, bytes: &Bytes, pk: &PublicKey, scheme: BlsScheme) -> Result<Signed, SignError> {
        let body = Bytes::from(format!("\"{}\"", hex::encode(bytes)));
        self.ask_for_signature(Method::POST, path, body, "signature", pk.hash(), |sig| {
            match pk.verify_as(bytes, sig, scheme) {
                Ok(()) => Ok(()),
                // A BLS signature under the other scheme is as wrong as any other.
                Err(_) if matches!(pk, PublicKey::Bls(_)) && pk.verify_as(bytes, sig, scheme.other()).is_ok() => {
                    Err(format!(
                        "returned a {} signature where the request asked for {}",
                        scheme.other().as_str(),
                        scheme.as_str()
                    ))
                }
                Err(e) => Err(format!("returned a bad signature: {e}")),
            }
        })
        .await
    }

    /// Ask the signers, in order, for a signature (`field` of a JSON answer) that `check`
    /// accepts: a 404 asks the next one ("not my key"), another refusal is passed on as the
    /// signer said it, and a signature `check` refuses is that signer's failure (the next one
    /// is asked).
    async fn ask_for_signature(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        field: &str,
        pkh: Pkh,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Signed, SignError> {
        let (signer, answer) = self
            .pool
            .request(method, path, body, |a| {
                if a.status == StatusCode::NOT_FOUND {
                    return Verdict::NotHere(SignerAnswer::NotHere);
                }
                if !a.status.is_success() {
                    let message = String::from_utf8_lossy(&a.body).trim().to_string();
                    return Verdict::Done(SignerAnswer::Refused(a.status, message));
                }
                let Some(sig) = parse_field(&a.body, field) else {
                    return Verdict::Failed(AttemptFailure::BadSignature, format!("unparsable {field} answer"));
                };
                match check(&sig) {
                    Ok(()) => Verdict::Done(SignerAnswer::Signed(sig)),
                    Err(why) => Verdict::Failed(AttemptFailure::BadSignature, why),
                }
            })
            .await?;
        match answer {
            SignerAnswer::Signed(signature) => Ok(Signed { signature, signer }),
            SignerAnswer::NotHere => Err(SignError::UnknownKey(pkh)),
            SignerAnswer::Refused(status, message) => Err(SignError::SignerRefused {
                signer,
                status,
                message,
            }),
        }
    }

    /// A BLS proof of possession for `pkh` (`GET /bls_prove_possession/<pkh>[?bls_pk=…]`),
    /// asked of the signers only when the key's policy allows it, and verified before it is
    /// returned: over the key's own compressed bytes, or over `bls_pk` when given.
    pub async fn prove_possession(&self, pkh: Pkh, query: Option<&str>) -> Result<Signed, SignError> {
        if pkh.curve != Curve::Bls {
            return Err(SignError::BadRequest(format!(
                "a proof of possession exists for tz4 (BLS) keys only, not {pkh}"
            )));
        }
        if !self.policy.keys.get(&pkh).is_some_and(|k| k.allow_prove_possession) {
            return Err(SignError::Policy {
                pkh,
                what: "a proof of possession (policy.keys.<key>.allow_prove_possession is off)".into(),
            });
        }
        let mut over = None;
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("bls_pk", v)) if over.is_none() => match v.parse::<PublicKey>() {
                    Ok(PublicKey::Bls(k)) => over = Some(k),
                    _ => {
                        return Err(SignError::BadRequest(format!(
                            "bls_pk {v:?} is not a valid BLpk public key"
                        )))
                    }
                },
                _ => {
                    return Err(SignError::BadRequest(format!(
                        "unexpected query parameter {pair:?}: only one bls_pk is allowed"
                    )))
                }
            }
        }
        let pk = self.public_key(pkh).await?;
        let path = match query {
            Some(q) if !q.is_empty() => format!("/bls_prove_possession/{pkh}?{q}"),
            _ => format!("/bls_prove_possession/{pkh}"),
        };
        let signed = self
            .ask_for_signature(Method::GET, &path, Bytes::new(), "bls_prove_possession", pkh, |proof| {
                pk.verify_possession(proof, over.as_ref())
                    .map_err(|e| format!("returned a bad proof of possession: {e}"))
            })
            .await?;
        info!(key = %pkh, signer = %signed.signer, "proof of possession");
        Ok(signed)
    }

    /// `GET /authorized_keys` without a round trip to a signer when possible: the answer of
    /// the last health probe of the signer that would serve the request, if the probe asks
    /// that very path and its answer is fresh; otherwise passed on. octez's baker calls this
    /// before every signature, so over a home link it halves the round trips per signature.
    pub async fn authorized_keys(&self, query: Option<&str>) -> Result<(String, StatusCode, Bytes), SignError> {
        let path = "/authorized_keys";
        if query.is_none_or(str::is_empty) {
            if let Some((signer, body)) = self.pool.fresh_probe_answer(path) {
                return Ok((signer, StatusCode::OK, body));
            }
        }
        let pq = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_string(),
        };
        self.pass_through(&pq).await
    }

    /// Forward a read-only call (`/authorized_keys`, `/known_keys`) to the first signer that
    /// answers without a server error; returns that signer's name with its answer.
    pub async fn pass_through(&self, path_and_query: &str) -> Result<(String, StatusCode, Bytes), SignError> {
        let (signer, (status, body)) = self
            .pool
            .request(Method::GET, path_and_query, Bytes::new(), |a| {
                if a.status == StatusCode::NOT_FOUND {
                    Verdict::NotHere((a.status, a.body.clone()))
                } else {
                    Verdict::Done((a.status, a.body.clone()))
                }
            })
            .await?;
        Ok((signer, status, body))
    }
}

/// The BLS scheme a signing request asks for, from its `version` query parameter, as
/// octez-signer reads it (`src/lib_crypto/signature.ml`, `src/bin_signer/handler.ml`): `1`
/// augmented (Rio clients); `2`, `3` or none proof of possession. Version `0` predates BLS, so
/// it is valid for tz1/tz2/tz3 keys only, where the version changes nothing. Anything else is
/// refused before a mark is raised.
pub fn scheme_of(query: Option<&str>, curve: Curve) -> Result<BlsScheme, SignError> {
    let mut version = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "version" {
            if version.is_some() {
                return Err(SignError::BadRequest(
                    "the version query parameter is given twice".into(),
                ));
            }
            version = Some(value);
        }
    }
    match version {
        None | Some("2") | Some("3") => Ok(BlsScheme::ProofOfPossession),
        Some("1") => Ok(BlsScheme::Augmented),
        Some("0") if curve != Curve::Bls => Ok(BlsScheme::ProofOfPossession),
        Some("0") => Err(SignError::BadRequest(
            "signature version 0 has no BLS signatures: a tz4 key needs version 1, 2 or 3".into(),
        )),
        Some(v) => Err(SignError::BadRequest(format!(
            "unsupported signature version {v:?}: expected 0, 1, 2 or 3 (BLS: 1 augmented, 2 and 3 proof of possession)"
        ))),
    }
}

/// What a signer answered to a call that yields a signature.
enum SignerAnswer {
    /// A signature that passed the check.
    Signed(String),
    /// 404: not this signer's key.
    NotHere,
    /// Its own refusal (4xx other than 404), passed on.
    Refused(StatusCode, String),
}

/// `{"<field>": "<string>"}` → the string.
fn parse_field(body: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get(field)?.as_str().map(str::to_string)
}

/// The per-key lock and the signatures in flight, in process on paused time: a signer that
/// takes 1.5 s per signature, and exact timings.
#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use super::*;
    use crate::config::HealthCheckConfig;
    use crate::payload::Kind;
    use crate::pool::Signer;
    use crate::testing::{Behaviour, Fake};
    use crate::watermark::MemoryStore;

    const SIGNER_DELAY: Duration = Duration::from_millis(1500);

    fn attestation(level: i32, variant: u8) -> Bytes {
        let mut v = vec![0x13, 0x7a, 0x06, 0xa7, 0x70];
        v.extend_from_slice(&[0xaa; 32]);
        v.push(21);
        v.extend_from_slice(&[0, 1]);
        v.extend_from_slice(&level.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&[variant; 32]);
        Bytes::from(v)
    }

    async fn signing(fake: &Fake) -> Arc<Signing> {
        let metrics = Arc::new(Metrics::new().unwrap());
        let signer = Arc::new(Signer::new("s0", 0, Arc::new(fake.clone())));
        let health = HealthCheckConfig {
            path: "/authorized_keys".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
        };
        let pool = Arc::new(Pool::new(
            vec![signer],
            Duration::from_secs(10),
            health,
            Arc::clone(&metrics),
        ));
        let policy = Policy {
            default_kinds: BTreeSet::from(Kind::ALL),
            keys: BTreeMap::new(),
        };
        let signing = Arc::new(Signing::new(pool, Arc::new(MemoryStore::new()), policy, metrics));
        // Learn the key first, as a baker's first call does.
        signing.public_key(fake.public_key().hash()).await.unwrap();
        signing
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_level_never_waits_on_a_lower_ones_signer() {
        let fake = Fake::new();
        let signing = signing(&fake).await;
        fake.set(Behaviour::Slow(SIGNER_DELAY));
        let pkh = fake.public_key().hash();
        let sign = |level: i32| {
            let signing = Arc::clone(&signing);
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                let r = signing.sign(pkh, attestation(level, 1), None).await;
                (r, t.elapsed())
            })
        };
        let low = sign(10);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let high = sign(11);
        let (high_result, high_took) = high.await.unwrap();
        high_result.unwrap();
        assert_eq!(high_took, SIGNER_DELAY, "level 11 took one signer delay, not two");
        let (low_result, _) = low.await.unwrap();
        low_result.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn identical_requests_in_flight_share_one_signer_call() {
        let fake = Fake::new();
        let signing = signing(&fake).await;
        fake.set(Behaviour::Slow(SIGNER_DELAY));
        let pkh = fake.public_key().hash();
        let before = fake.signs();
        let mut all = Vec::new();
        for _ in 0..16 {
            let signing = Arc::clone(&signing);
            all.push(tokio::spawn(async move {
                signing.sign(pkh, attestation(20, 1), None).await
            }));
        }
        let mut signatures = BTreeSet::new();
        for h in all {
            signatures.insert(h.await.unwrap().unwrap().signature);
        }
        assert_eq!(signatures.len(), 1);
        assert_eq!(fake.signs() - before, 1, "one signer call for 16 identical requests");
        // And a conflicting one at that level is refused, not queued behind anything.
        let e = signing.sign(pkh, attestation(20, 2), None).await.unwrap_err();
        assert!(matches!(e, SignError::Watermark(_)), "{e:?}");
    }

    /// Identical tz4 bytes asked for under both schemes at once: one signature only; the
    /// request for the other scheme is refused while the first is in flight, and after.
    #[tokio::test(start_paused = true)]
    async fn one_operation_never_gets_signatures_under_both_schemes() {
        let fake = Fake::bls();
        let signing = signing(&fake).await;
        fake.set(Behaviour::Slow(SIGNER_DELAY));
        let pkh = fake.public_key().hash();
        let mut bytes = attestation(40, 1).to_vec();
        // The tz4 layout: tag 41, no slot.
        bytes[37] = 41;
        bytes.drain(38..40);
        let bytes = Bytes::from(bytes);
        let aug = {
            let (signing, bytes) = (Arc::clone(&signing), bytes.clone());
            tokio::spawn(async move { signing.sign(pkh, bytes, Some("version=1")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let e = signing.sign(pkh, bytes.clone(), Some("version=2")).await.unwrap_err();
        assert!(matches!(e, SignError::OtherScheme { .. }), "{e:?}");
        let signed = aug.await.unwrap().unwrap();
        fake.public_key()
            .verify_as(&bytes, &signed.signature, BlsScheme::Augmented)
            .unwrap();
        let e = signing.sign(pkh, bytes.clone(), None).await.unwrap_err();
        assert!(matches!(e, SignError::OtherScheme { .. }), "{e:?}");
        assert_eq!(fake.signs(), 1);
    }

    /// A leader whose client goes away before its signer answers does not strand the
    /// identical requests that joined it: one of them signs.
    #[tokio::test(start_paused = true)]
    async fn joiners_take_over_when_the_leader_is_dropped() {
        let fake = Fake::new();
        let signing = signing(&fake).await;
        fake.set(Behaviour::Slow(SIGNER_DELAY));
        let pkh = fake.public_key().hash();
        let leader = {
            let signing = Arc::clone(&signing);
            tokio::spawn(async move { signing.sign(pkh, attestation(30, 1), None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let joiner = {
            let signing = Arc::clone(&signing);
            tokio::spawn(async move { signing.sign(pkh, attestation(30, 1), None).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let signed = joiner.await.unwrap().unwrap();
        assert!(!signed.signature.is_empty());
    }
}
