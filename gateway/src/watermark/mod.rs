//! High watermark: nothing at or below a signed (level, round) is signed again, except the
//! very same bytes. Rules in `protocol.md` section 3.
//!
//! # Layout
//!
//! - this module: the types, the pure rule ([`decide`]), the errors and the
//!   [`WatermarkStore`] trait every backend implements;
//! - [`MemoryStore`]: a non-durable map, for tests and benchmarks;
//! - [`FileStore`]: the default backend, one JSON file made durable (temp file, fsync, rename,
//!   directory fsync) by a dedicated writer thread that group-commits concurrent changes.
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

mod file;
mod memory;
mod octez;

pub use file::{durable_write, FileStore, IfMissing, OpenError};
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
    Store(String),
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

    /// Snapshot of all marks, sorted by key.
    fn list(&self) -> Vec<(MarkKey, Mark)>;

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
    use crate::tezos::Curve;

    pub(crate) fn chain(n: u8) -> ChainId {
        ChainId([0x7a, 0x06, 0xa7, n])
    }

    pub(crate) fn pkh(n: u8) -> Pkh {
        if n == 0 {
            return "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        }
        Pkh {
            curve: Curve::Ed25519,
            hash: [n; 20],
        }
    }

    pub(crate) fn key(kind: Kind) -> MarkKey {
        MarkKey {
            chain: chain(0),
            pkh: pkh(0),
            kind,
        }
    }

    pub(crate) fn req(key: MarkKey, level: i32, round: i32, d: u8) -> MarkRequest {
        MarkRequest {
            key,
            level,
            round,
            digest: [d; 32],
        }
    }

    const A: Kind = Kind::Attestation;
    const B: Kind = Kind::Block;
    const P: Kind = Kind::Preattestation;
    const SIG: &str =
        "edsigtXomBKi5CTRf5cjATJWSyaRvhfYNHqSUGrn4SdbYRcGwQrUGjzEfQDTuqHhuA8b2d8NarZjz8TRf65WkpQmo423BtomS8Q";

    /// What happened before the request under test.
    #[derive(Clone, Copy)]
    enum Step {
        /// A sign that must be recorded (or repeat).
        Sign(MarkRequest),
        /// The signature released for a recorded request.
        Sig(MarkRequest),
        /// An operator set.
        Set(MarkKey, i32, i32),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Want {
        Recorded,
        Repeat(Option<&'static str>),
        Refused(RefusalReason),
    }

    struct Case {
        name: &'static str,
        before: Vec<Step>,
        req: MarkRequest,
        want: Want,
    }

    fn case(name: &'static str, before: Vec<Step>, req: MarkRequest, want: Want) -> Case {
        Case {
            name,
            before,
            req,
            want,
        }
    }

    use RefusalReason::{Below as RBelow, DifferentData as RDiff};
    use Step::{Set, Sig, Sign};
    use Want::{Recorded, Refused, Repeat};

    /// A tz4 key: the rule is the same whatever the key type.
    pub(crate) fn tz4_pkh() -> Pkh {
        Pkh {
            curve: Curve::Bls,
            hash: [4; 20],
        }
    }

    /// Every row of protocol.md §3, plus independence and boundaries, for the key `base`. One
    /// case per line.
    #[rustfmt::skip]
    fn table(base: Pkh) -> Vec<Case> {
        let ka = MarkKey { pkh: base, ..key(A) };
        let kb = MarkKey { pkh: base, ..key(B) };
        let kp = MarkKey { pkh: base, ..key(P) };
        // A tz4 consensus key's companion is another key with marks of its own.
        let other = if base.curve == Curve::Bls { Pkh { curve: Curve::Bls, hash: [5; 20] } } else { pkh(7) };
        let other_pkh = MarkKey { pkh: other, ..ka };
        let other_chain = MarkKey { chain: chain(9), ..ka };
        let max = i32::MAX;
        vec![
            // no mark yet
            case("no mark",                          vec![], req(ka, 100, 0, 1), Recorded),
            case("no mark, level 0 round 0",         vec![], req(ka, 0, 0, 1), Recorded),
            case("no mark, i32::MAX",                vec![], req(ka, max, max, 1), Recorded),
            // higher level, or same level and higher round
            case("higher level",                     vec![Sign(req(ka, 100, 0, 1))], req(ka, 101, 0, 2), Recorded),
            case("higher level, lower round",        vec![Sign(req(ka, 100, 5, 1))], req(ka, 101, 0, 2), Recorded),
            case("same level higher round",          vec![Sign(req(ka, 100, 0, 1))], req(ka, 100, 1, 2), Recorded),
            case("higher level, same digest",        vec![Sign(req(ka, 100, 0, 1))], req(ka, 101, 0, 1), Recorded),
            case("from 0/0 to 0/1",                  vec![Sign(req(ka, 0, 0, 1))], req(ka, 0, 1, 2), Recorded),
            case("from 0/0 to 1/0",                  vec![Sign(req(ka, 0, 0, 1))], req(ka, 1, 0, 2), Recorded),
            case("up to i32::MAX level",             vec![Sign(req(ka, max - 1, max, 1))], req(ka, max, 0, 2), Recorded),
            case("up to i32::MAX round",             vec![Sign(req(ka, max, max - 1, 1))], req(ka, max, max, 2), Recorded),
            // same level and round, same digest
            case("identical repeat, no signature",   vec![Sign(req(ka, 100, 0, 1))], req(ka, 100, 0, 1), Repeat(None)),
            case("identical repeat, signature",      vec![Sign(req(ka, 100, 0, 1)), Sig(req(ka, 100, 0, 1))], req(ka, 100, 0, 1), Repeat(Some(SIG))),
            case("identical repeat at 0/0",          vec![Sign(req(ka, 0, 0, 1))], req(ka, 0, 0, 1), Repeat(None)),
            case("identical repeat at MAX/MAX",      vec![Sign(req(ka, max, max, 3))], req(ka, max, max, 3), Repeat(None)),
            case("signature for old bytes dropped",  vec![Sign(req(ka, 100, 0, 1)), Sign(req(ka, 101, 0, 2)), Sig(req(ka, 100, 0, 1))], req(ka, 101, 0, 2), Repeat(None)),
            // same level and round, different digest
            case("other digest",                     vec![Sign(req(ka, 100, 0, 1))], req(ka, 100, 0, 2), Refused(RDiff)),
            case("other digest, signature stored",   vec![Sign(req(ka, 100, 0, 1)), Sig(req(ka, 100, 0, 1))], req(ka, 100, 0, 2), Refused(RDiff)),
            case("other digest at 0/0",              vec![Sign(req(ka, 0, 0, 1))], req(ka, 0, 0, 2), Refused(RDiff)),
            case("other digest at MAX/MAX",          vec![Sign(req(ka, max, max, 1))], req(ka, max, max, 2), Refused(RDiff)),
            // lower level, or same level and lower round
            case("lower level",                      vec![Sign(req(ka, 100, 0, 1))], req(ka, 5, 0, 2), Refused(RBelow)),
            case("lower level, higher round",        vec![Sign(req(ka, 100, 0, 1))], req(ka, 99, 9, 2), Refused(RBelow)),
            case("same level lower round",           vec![Sign(req(ka, 100, 3, 1))], req(ka, 100, 2, 2), Refused(RBelow)),
            case("lower level, same digest",         vec![Sign(req(ka, 100, 0, 1))], req(ka, 99, 0, 1), Refused(RBelow)),
            case("level 0 below level 1",            vec![Sign(req(ka, 1, 0, 1))], req(ka, 0, 0, 2), Refused(RBelow)),
            case("anything below MAX/MAX",           vec![Sign(req(ka, max, max, 1))], req(ka, max, max - 1, 2), Refused(RBelow)),
            case("former mark after a raise",        vec![Sign(req(ka, 100, 0, 1)), Sign(req(ka, 100, 1, 2))], req(ka, 100, 0, 1), Refused(RBelow)),
            // after an operator set (no digest: nothing at the mark itself)
            case("set on empty, below",              vec![Set(ka, 100, 0)], req(ka, 99, 0, 1), Refused(RBelow)),
            case("set on empty, at the mark",        vec![Set(ka, 100, 0)], req(ka, 100, 0, 1), Refused(RDiff)),
            case("set on empty, above",              vec![Set(ka, 100, 0)], req(ka, 100, 1, 1), Recorded),
            case("set raises over a signed mark",    vec![Sign(req(ka, 100, 0, 1)), Set(ka, 200, 0)], req(ka, 150, 0, 2), Refused(RBelow)),
            case("set lowers a signed mark",         vec![Sign(req(ka, 100, 0, 1)), Set(ka, 50, 0)], req(ka, 60, 0, 2), Recorded),
            case("set at same mark forgets digest",  vec![Sign(req(ka, 100, 0, 1)), Sig(req(ka, 100, 0, 1)), Set(ka, 100, 0)], req(ka, 100, 0, 1), Refused(RDiff)),
            case("set to 0/0, then 0/0",             vec![Set(ka, 0, 0)], req(ka, 0, 0, 1), Refused(RDiff)),
            // kinds, keys and chains are independent
            case("block after attestation",          vec![Sign(req(ka, 100, 0, 1))], req(kb, 100, 0, 2), Recorded),
            case("preattestation after attestation", vec![Sign(req(ka, 100, 0, 1))], req(kp, 100, 0, 2), Recorded),
            case("block lower than attestation",     vec![Sign(req(ka, 100, 0, 1))], req(kb, 5, 0, 2), Recorded),
            case("attestation guarded after others", vec![Sign(req(ka, 100, 0, 1)), Sign(req(kb, 200, 0, 2)), Sign(req(kp, 200, 0, 3))], req(ka, 100, 0, 4), Refused(RDiff)),
            case("other key, same level",            vec![Sign(req(ka, 100, 0, 1))], req(other_pkh, 100, 0, 2), Recorded),
            case("other key, lower level",           vec![Sign(req(ka, 100, 0, 1))], req(other_pkh, 1, 0, 2), Recorded),
            case("other chain, same level",          vec![Sign(req(ka, 100, 0, 1))], req(other_chain, 100, 0, 2), Recorded),
            case("set on one kind leaves others",    vec![Set(kb, 1000, 0)], req(ka, 10, 0, 1), Recorded),
        ]
    }

    /// Runs every case of the table. `fresh(true)` must give a new empty store, on which the
    /// case's history is played; that handle is dropped, then `fresh(false)` gives the store the
    /// request is checked on: the same one, or (file store) the same state reopened.
    /// Run the table for a tz1 and a tz4 key on stores made by `fresh` (`true`: a new one;
    /// `false`: the same one reopened).
    pub(crate) async fn run_table<F>(mut fresh: F)
    where
        F: FnMut(bool) -> Arc<dyn WatermarkStore>,
    {
        let cases: Vec<Case> = [pkh(0), tz4_pkh()].into_iter().flat_map(table).collect();
        assert!(cases.len() >= 60, "table has {} cases", cases.len());
        for c in cases {
            let store = fresh(true);
            for step in &c.before {
                match *step {
                    Sign(r) => {
                        let got = store.check_and_record(&r).await;
                        assert!(got.is_ok(), "{}: setup sign {r:?}: {got:?}", c.name);
                    }
                    Sig(r) => {
                        let got = store.record_signature(&r, SIG).await;
                        assert_eq!(got, Ok(()), "{}: setup signature", c.name);
                    }
                    Set(k, level, round) => {
                        let got = store.set(k, level, round).await;
                        assert!(got.is_ok(), "{}: setup set: {got:?}", c.name);
                    }
                }
            }
            drop(store);
            let store = fresh(false);
            let before = store.list();
            let got = match store.check_and_record(&c.req).await {
                Ok(Outcome::Recorded) => Want::Recorded,
                Ok(Outcome::Repeat(sig)) => {
                    Want::Repeat(sig.map(|s| if s == SIG { SIG } else { "unexpected signature" }))
                }
                Err(e) => Want::Refused(e.reason()),
            };
            assert_eq!(got, c.want, "case {:?} for {}", c.name, c.req.key);
            let after = store.list();
            let mark = after.iter().find(|(k, _)| *k == c.req.key).map(|(_, m)| m.clone());
            match c.want {
                Want::Recorded => assert_eq!(mark, Some(mark_for(&c.req)), "case {:?}: mark after", c.name),
                // A refusal or a repeat changes nothing.
                _ => assert_eq!(before, after, "case {:?}: marks changed", c.name),
            }
            assert!(store.health().healthy, "case {:?}", c.name);
        }
    }

    #[tokio::test]
    async fn table_on_memory_store() {
        let mut current: Option<Arc<MemoryStore>> = None;
        run_table(|new| {
            if new || current.is_none() {
                current = Some(Arc::new(MemoryStore::new()));
            }
            match &current {
                Some(s) => s.clone() as Arc<dyn WatermarkStore>,
                None => unreachable!(),
            }
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
        let store = WatermarkError::Store("disk full".into());
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
