//! The high-watermark rule table (protocol.md section 3) as a conformance suite every backend
//! runs: each row's history is played on a new store, then the request is checked on the same
//! store or on the same state reopened, and the marks are compared before and after. Used by
//! the file and memory stores' unit tests and by the etcd store's tests against a real cluster
//! (tests/etcd.rs). Test support, not used by the gateway itself: it panics on a failed row.

use std::future::Future;
use std::sync::Arc;

use super::{mark_for, MarkKey, MarkRequest, Outcome, RefusalReason, WatermarkStore};
use crate::payload::Kind;
use crate::tezos::{ChainId, Curve, Pkh};

/// Test chain `n`.
pub fn chain(n: u8) -> ChainId {
    ChainId([0x7a, 0x06, 0xa7, n])
}

/// Test key `n` (0: a real tz1).
pub fn pkh(n: u8) -> Pkh {
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

/// The mark of `kind` for key 0 on chain 0.
pub fn key(kind: Kind) -> MarkKey {
    MarkKey {
        chain: chain(0),
        pkh: pkh(0),
        kind,
    }
}

/// A request at (level, round) whose digest is `d` repeated.
pub fn req(key: MarkKey, level: i32, round: i32, d: u8) -> MarkRequest {
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
/// The signature the table records.
pub const SIG: &str =
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
pub fn tz4_pkh() -> Pkh {
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

/// A store may keep a signature after `record_signature` returns (etcd: in the background);
/// wait until it shows, when the mark is still the one it belongs to.
async fn signature_kept(store: &dyn WatermarkStore, r: &MarkRequest) {
    for _ in 0..500 {
        let marks = store.list().await.expect("list");
        let pending = marks
            .iter()
            .any(|(k, m)| *k == r.key && super::is_mark_of(m, r) && m.signature.is_none());
        if !pending {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the signature for {:?} was not kept within 5 s", r.key);
}

/// Runs every case of the table, for a tz1 and a tz4 key. `fresh(true)` must give a new empty
/// store, on which the case's history is played; that handle is dropped, then `fresh(false)`
/// gives the store the request is checked on: the same one, or the same state reopened.
pub async fn run_table<F, Fut>(mut fresh: F)
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Arc<dyn WatermarkStore>>,
{
    let cases: Vec<Case> = [pkh(0), tz4_pkh()].into_iter().flat_map(table).collect();
    assert!(cases.len() >= 60, "table has {} cases", cases.len());
    for c in cases {
        let store = fresh(true).await;
        for step in &c.before {
            match *step {
                Sign(r) => {
                    let got = store.check_and_record(&r).await;
                    assert!(got.is_ok(), "{}: setup sign {r:?}: {got:?}", c.name);
                }
                Sig(r) => {
                    let got = store.record_signature(&r, SIG).await;
                    assert_eq!(got, Ok(()), "{}: setup signature", c.name);
                    signature_kept(store.as_ref(), &r).await;
                }
                Set(k, level, round) => {
                    let got = store.set(k, level, round).await;
                    assert!(got.is_ok(), "{}: setup set: {got:?}", c.name);
                }
            }
        }
        drop(store);
        let store = fresh(false).await;
        let before = store.list().await.expect("list before");
        let got = match store.check_and_record(&c.req).await {
            Ok(Outcome::Recorded) => Want::Recorded,
            Ok(Outcome::Repeat(sig)) => Want::Repeat(sig.map(|s| if s == SIG { SIG } else { "unexpected signature" })),
            Err(e) => Want::Refused(e.reason()),
        };
        assert_eq!(got, c.want, "case {:?} for {}", c.name, c.req.key);
        let after = store.list().await.expect("list after");
        let mark = after.iter().find(|(k, _)| *k == c.req.key).map(|(_, m)| m.clone());
        match c.want {
            Want::Recorded => assert_eq!(mark, Some(mark_for(&c.req)), "case {:?}: mark after", c.name),
            // A refusal or a repeat changes nothing.
            _ => assert_eq!(before, after, "case {:?}: marks changed", c.name),
        }
        assert!(store.health().healthy, "case {:?}", c.name);
    }
}
