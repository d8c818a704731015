//! High watermark: nothing at or below a signed (level, round) is signed again, except the
//! very same bytes. Rules in `protocol.md` section 3.
//!
//! # Layout
//!
//! - this module: the types, the pure rule ([`decide`]), the errors and the
//!   [`WatermarkStore`] trait every backend implements;
//! - [`MemoryStore`]: a non-durable map, for tests and benchmarks;
//! - [`FileStore`]: the default backend, one JSON file made durable (temp file, fsync, rename,
//!   directory fsync) by a dedicated writer thread that group-commits concurrent changes;
//! - `EtcdStore` (cargo feature `etcd`): one key per mark in an etcd cluster shared by every
//!   gateway replica, written by conditional transactions;
//! - [`Instrumented`]: any of them, timed and with failures counted for Prometheus.
//!
//! A store is used as `Arc<dyn WatermarkStore>`. The caller's sequence for a consensus payload
//! is: [`WatermarkStore::check_and_record`]; on [`Outcome::Recorded`] forward to a signer and,
//! once it answers, [`WatermarkStore::record_signature`]; on [`Outcome::Repeat`] answer with the
//! stored signature (or forward the same bytes again when none is known yet); on an error,
//! refuse with [`WatermarkError::reason`].

use std::fmt;

use futures_util::future::BoxFuture;

use crate::payload::Kind;
use crate::tezos::{ChainId, Pkh};

pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod instrumented;
mod memory;
mod octez;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdOpenError, EtcdStore};
pub use file::{
    durable_write, encode_state as encode_marks, parse_state as parse_marks, FileStore, IfMissing, OpenError,
};
pub use instrumented::Instrumented;
pub use memory::MemoryStore;
pub use octez::{read_octez_dir, OctezErrorKind, OctezImportError, OctezMarkProblem, OCTEZ_FILES, OCTEZ_FILE_LIMIT};

/// What a watermark is kept for: one (chain, key, kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MarkKey {
    /// Chain id from the payload.
    pub chain: ChainId,
    /// Signing key named in the request path.
    pub pkh: Pkh,
    /// Block, preattestation or attestation.
    pub kind: Kind,
}

impl fmt::Display for MarkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} on {}", self.kind, self.pkh, self.chain)
    }
}

/// A request to sign at (level, round) bytes whose blake2b-256 is `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkRequest {
    /// Which mark.
    pub key: MarkKey,
    /// Level read from the payload.
    pub level: i32,
    /// Round read from the payload.
    pub round: i32,
    /// blake2b-256 of the whole payload.
    pub digest: [u8; 32],
}

/// The stored mark.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// Highest level signed.
    pub level: i32,
    /// Highest round signed at that level.
    pub round: i32,
    /// Digest of the bytes signed there; `None` after an operator `set`.
    pub digest: Option<[u8; 32]>,
    /// Signature released for those bytes, once known.
    pub signature: Option<String>,
}

/// Outcome of an allowed check-and-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new mark is durable: forward to a signer.
    Recorded,
    /// The very same bytes were recorded before: answer with this signature if known, else
    /// forward the same bytes again (safe: identical bytes are not a double signature).
    Repeat(Option<String>),
}

/// What the rule allows for a request, before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Strictly above the stored mark (or no mark yet): raise the mark to the request.
    Record,
    /// Same (level, round) and same digest as the stored mark: the stored signature, if any.
    Repeat(Option<String>),
}

/// Why a request was refused. `Copy + Eq` so tests and metrics can use it as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Lower level, or same level and lower round, than the stored mark.
    Below,
    /// Same (level, round) as the stored mark but other bytes (or a mark set by the operator).
    DifferentData,
    /// The store could not make the mark durable, or is unusable.
    Store,
}

impl RefusalReason {
    /// Stable snake-case name for metrics labels and error ids.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Below => "below_watermark",
            RefusalReason::DifferentData => "different_data",
            RefusalReason::Store => "store_error",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal by the watermark. Every variant means: do not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    /// The request is below the stored mark.
    #[error("{kind} level {level} round {round} is below high watermark level {stored_level} round {stored_round}", kind = .key.kind)]
    Below {
        /// Which mark.
        key: MarkKey,
        /// Requested level.
        level: i32,
        /// Requested round.
        round: i32,
        /// Level of the stored mark.
        stored_level: i32,
        /// Round of the stored mark.
        stored_round: i32,
    },
    /// Same (level, round) as the stored mark, different bytes.
    #[error("{kind} level {level} round {round} already signed with different data", kind = .key.kind)]
    DifferentData {
        /// Which mark.
        key: MarkKey,
        /// Requested (and stored) level.
        level: i32,
        /// Requested (and stored) round.
        round: i32,
    },
    /// The mark could not be made durable, or the store is unusable: refuse (fail closed).
    #[error("watermark store error: {0}")]
    Store(StoreFailure),
}

impl WatermarkError {
    /// A store failure of this cause.
    pub fn store(cause: StoreCause, message: impl Into<String>) -> WatermarkError {
        WatermarkError::Store(StoreFailure {
            cause,
            message: message.into(),
        })
    }
}

/// Why a store could not answer: the message for people, the cause for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreFailure {
    /// Metrics label.
    pub cause: StoreCause,
    /// What happened.
    pub message: String,
}

/// The cause of a [`StoreFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCause {
    /// A durable write failed (file store: disk full, I/O error).
    Write,
    /// The store's writer or connection is gone for good.
    Closed,
    /// No answer within the configured bound (etcd: no quorum, a frozen link).
    Timeout,
    /// The store refused or could not be reached (etcd: connection refused, no leader, auth).
    Unavailable,
    /// Other gateways kept changing the same mark: too many lost races in a row.
    Contention,
    /// No store where the config points (etcd: no marker under the prefix).
    NotInitialized,
    /// The stored value cannot be read back (never written by this gateway's format).
    Corrupt,
}

impl StoreCause {
    /// Stable snake-case name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreCause::Write => "write_failed",
            StoreCause::Closed => "closed",
            StoreCause::Timeout => "timeout",
            StoreCause::Unavailable => "unavailable",
            StoreCause::Contention => "contention",
            StoreCause::NotInitialized => "not_initialized",
            StoreCause::Corrupt => "corrupt",
        }
    }
}

impl WatermarkError {
    /// The reason code, for metrics labels and tests.
    pub fn reason(&self) -> RefusalReason {
        match self {
            WatermarkError::Below { .. } => RefusalReason::Below,
            WatermarkError::DifferentData { .. } => RefusalReason::DifferentData,
            WatermarkError::Store(_) => RefusalReason::Store,
        }
    }
}

/// Health of a store, for `/readyz` and `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// Backend name: `memory` or `file`.
    pub backend: &'static str,
    /// Where the state lives (the directory for `file`).
    pub location: Option<String>,
    /// False while the latest durable write failed or the writer is gone: requests are refused.
    pub healthy: bool,
    /// The most recent write error, kept after recovery for diagnosis.
    pub last_error: Option<String>,
    /// Number of marks held.
    pub marks: usize,
}

/// A watermark backend. Object-safe: used as `Arc<dyn WatermarkStore>`.
pub trait WatermarkStore: Send + Sync + 'static {
    /// One atomic check-and-record per (chain, key, kind). `Ok(Recorded)` only once the new mark
    /// is durable; `Ok(Repeat)` only once the mark it matches is durable.
    ///
    /// Cancel safety: if the future is dropped while waiting for durability the mark stays
    /// raised in memory (and will be written); the caller never saw `Recorded`, so nothing was
    /// signed. A skipped level is safe.
    fn check_and_record<'a>(&'a self, req: &'a MarkRequest) -> BoxFuture<'a, Result<Outcome, WatermarkError>>;

    /// Remember the signature released for exactly these bytes (answers identical repeats).
    /// Need not wait for durability. Ignored if the mark has moved on or already has one.
    fn record_signature<'a>(
        &'a self,
        req: &'a MarkRequest,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<(), WatermarkError>>;

    /// Operator action: set (raise or lower) a mark, forgetting its digest and signature.
    /// Durable when it returns; logged at warn with old and new values. Returns the old mark.
    fn set<'a>(&'a self, key: MarkKey, level: i32, round: i32) -> BoxFuture<'a, Result<Option<Mark>, WatermarkError>>;

    /// Import: raise the mark of `key` to `mark` unless the stored one is already at or above
    /// its (level, round). Never lowers a mark, so it is safe while gateways sign. Durable when
    /// it returns; `true` when the mark was raised.
    fn raise<'a>(&'a self, key: MarkKey, mark: Mark) -> BoxFuture<'a, Result<bool, WatermarkError>>;

    /// Every mark, sorted by key (etcd: one linearizable range read).
    fn list(&self) -> BoxFuture<'_, Result<Vec<(MarkKey, Mark)>, WatermarkError>>;

    /// For `/readyz` and `/status`.
    fn health(&self) -> StoreHealth;
}

/// The high-watermark rule of `protocol.md` section 3, as a pure function.
///
/// | request vs `stored` | result |
/// |---|---|
/// | no mark | `Record` |
/// | higher level, or same level and higher round | `Record` |
/// | same (level, round), same digest | `Repeat(stored signature)` |
/// | same (level, round), other digest, or no digest (set by the operator) | `DifferentData` |
/// | lower level, or same level and lower round | `Below` |
pub fn decide(stored: Option<&Mark>, req: &MarkRequest) -> Result<Decision, WatermarkError> {
    let Some(mark) = stored else {
        return Ok(Decision::Record);
    };
    match (req.level, req.round).cmp(&(mark.level, mark.round)) {
        std::cmp::Ordering::Greater => Ok(Decision::Record),
        std::cmp::Ordering::Equal => match &mark.digest {
            Some(stored_digest) if digest_eq(stored_digest, &req.digest) => {
                Ok(Decision::Repeat(mark.signature.clone()))
            }
            // A mark set by the operator has no digest: nothing at that (level, round) may be
            // signed, since we cannot tell what was signed there before.
            _ => Err(WatermarkError::DifferentData {
                key: req.key,
                level: req.level,
                round: req.round,
            }),
        },
        std::cmp::Ordering::Less => Err(WatermarkError::Below {
            key: req.key,
            level: req.level,
            round: req.round,
            stored_level: mark.level,
            stored_round: mark.round,
        }),
    }
}

/// Compare two digests in time independent of where they differ (style item 7: never `!=`
/// on digests). XOR-fold every byte; `black_box` keeps the optimiser from short-circuiting.
pub(crate) fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        acc |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(acc) == 0
}

/// The mark a recorded request leaves behind.
fn mark_for(req: &MarkRequest) -> Mark {
    Mark {
        level: req.level,
        round: req.round,
        digest: Some(req.digest),
        signature: None,
    }
}

/// Whether an imported `mark` is above `stored` (strictly higher (level, round), or none).
fn raises(stored: Option<&Mark>, mark: &Mark) -> bool {
    stored.is_none_or(|s| (mark.level, mark.round) > (s.level, s.round))
}

/// Whether `mark` is the mark `req` recorded (same level, round and digest).
fn is_mark_of(mark: &Mark, req: &MarkRequest) -> bool {
    mark.level == req.level
        && mark.round == req.round
        && mark.digest.as_ref().is_some_and(|d| digest_eq(d, &req.digest))
}

/// Lock a std mutex, recovering from poisoning.
///
/// Every critical section in this module is "compare, then one insert or field update": no
/// code that can panic runs between reading a mark and writing it back (allocation failure
/// aborts rather than unwinds), so a poisoned map is still consistent.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    pub(crate) use super::conformance::{chain, key, pkh, req, run_table, SIG};

    const A: Kind = Kind::Attestation;
    const B: Kind = Kind::Block;

    #[tokio::test]
    async fn table_on_memory_store() {
        let mut current: Option<Arc<MemoryStore>> = None;
        run_table(|new| {
            if new || current.is_none() {
                current = Some(Arc::new(MemoryStore::new()));
            }
            std::future::ready(match &current {
                Some(s) => s.clone() as Arc<dyn WatermarkStore>,
                None => unreachable!(),
            })
        })
        .await;
    }

    #[test]
    fn decide_rows() {
        let k = key(A);
        let signed = Mark {
            level: 10,
            round: 2,
            digest: Some([1; 32]),
            signature: Some(SIG.into()),
        };
        let unsigned = Mark {
            signature: None,
            ..signed.clone()
        };
        let operator = Mark {
            digest: None,
            signature: None,
            ..signed.clone()
        };
        assert_eq!(decide(None, &req(k, 0, 0, 1)), Ok(Decision::Record));
        assert_eq!(decide(Some(&signed), &req(k, 11, 0, 1)), Ok(Decision::Record));
        assert_eq!(decide(Some(&signed), &req(k, 10, 3, 1)), Ok(Decision::Record));
        assert_eq!(
            decide(Some(&signed), &req(k, 10, 2, 1)),
            Ok(Decision::Repeat(Some(SIG.into())))
        );
        assert_eq!(decide(Some(&unsigned), &req(k, 10, 2, 1)), Ok(Decision::Repeat(None)));
        assert_eq!(
            decide(Some(&signed), &req(k, 10, 2, 2)),
            Err(WatermarkError::DifferentData {
                key: k,
                level: 10,
                round: 2
            })
        );
        assert_eq!(
            decide(Some(&operator), &req(k, 10, 2, 1)).map_err(|e| e.reason()),
            Err(RefusalReason::DifferentData)
        );
        assert_eq!(
            decide(Some(&signed), &req(k, 10, 1, 1)),
            Err(WatermarkError::Below {
                key: k,
                level: 10,
                round: 1,
                stored_level: 10,
                stored_round: 2
            })
        );
        assert_eq!(
            decide(Some(&signed), &req(k, 9, 9, 1)).map_err(|e| e.reason()),
            Err(RefusalReason::Below)
        );
    }

    #[test]
    fn digest_eq_compares_every_byte() {
        let a = [0x5a; 32];
        assert!(digest_eq(&a, &a));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!digest_eq(&a, &b), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn messages_and_reasons() {
        let k = key(A);
        let below = WatermarkError::Below {
            key: k,
            level: 5,
            round: 0,
            stored_level: 100,
            stored_round: 0,
        };
        assert_eq!(
            below.to_string(),
            "attestation level 5 round 0 is below high watermark level 100 round 0"
        );
        assert_eq!(below.reason().as_str(), "below_watermark");
        let diff = WatermarkError::DifferentData {
            key: key(B),
            level: 7,
            round: 1,
        };
        assert_eq!(
            diff.to_string(),
            "block level 7 round 1 already signed with different data"
        );
        assert_eq!(diff.reason().as_str(), "different_data");
        let store = WatermarkError::store(StoreCause::Write, "disk full");
        assert_eq!(store.to_string(), "watermark store error: disk full");
        assert_eq!(store.reason().as_str(), "store_error");
        assert_eq!(RefusalReason::Store.to_string(), "store_error");
    }

    #[test]
    fn store_is_object_safe() {
        let s: Arc<dyn WatermarkStore> = Arc::new(MemoryStore::new());
        assert_eq!(s.health().backend, "memory");
    }
}
