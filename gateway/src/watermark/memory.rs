//! A non-durable store: a map behind a mutex. For tests, benchmarks and `backend: memory`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{decide, is_mark_of, lock, mark_for, raises, Decision, Mark, MarkKey, MarkRequest, Outcome, StoreHealth};
use super::{WatermarkError, WatermarkStore};

/// Marks kept in memory only: lost on restart. Never use it for a key that signs on a real
/// chain unless something else guarantees the watermark.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // A std mutex, not a tokio one: it is held only for a compare and an insert, never across
    // an `.await`, so contention is a few hundred nanoseconds at most.
    marks: Mutex<BTreeMap<MarkKey, Mark>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The same rule and update as every store, synchronously.
    fn check_and_record_now(&self, req: &MarkRequest) -> Result<Outcome, WatermarkError> {
        let mut marks = lock(&self.marks);
        match decide(marks.get(&req.key), req)? {
            Decision::Record => {
                marks.insert(req.key, mark_for(req));
                Ok(Outcome::Recorded)
            }
            Decision::Repeat(signature) => Ok(Outcome::Repeat(signature)),
        }
    }
}

impl WatermarkStore for MemoryStore {
    fn check_and_record<'a>(&'a self, req: &'a MarkRequest) -> BoxFuture<'a, Result<Outcome, WatermarkError>> {
        Box::pin(async move { self.check_and_record_now(req) })
    }

    fn record_signature<'a>(
        &'a self,
        req: &'a MarkRequest,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<(), WatermarkError>> {
        Box::pin(async move {
            let mut marks = lock(&self.marks);
            if let Some(mark) = marks.get_mut(&req.key) {
                if is_mark_of(mark, req) && mark.signature.is_none() {
                    mark.signature = Some(signature.to_owned());
                }
            }
            Ok(())
        })
    }

    fn set<'a>(&'a self, key: MarkKey, level: i32, round: i32) -> BoxFuture<'a, Result<Option<Mark>, WatermarkError>> {
        Box::pin(async move {
            let new = Mark {
                level,
                round,
                digest: None,
                signature: None,
            };
            let old = lock(&self.marks).insert(key, new);
            tracing::warn!(
                %key,
                old_level = old.as_ref().map(|m| m.level),
                old_round = old.as_ref().map(|m| m.round),
                new_level = level,
                new_round = round,
                backend = "memory",
                "watermark set by operator"
            );
            Ok(old)
        })
    }

    fn raise<'a>(&'a self, key: MarkKey, mark: Mark) -> BoxFuture<'a, Result<bool, WatermarkError>> {
        let mut marks = lock(&self.marks);
        let raised = raises(marks.get(&key), &mark);
        if raised {
            marks.insert(key, mark);
        }
        Box::pin(std::future::ready(Ok(raised)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(MarkKey, Mark)>, WatermarkError>> {
        let marks = lock(&self.marks).iter().map(|(k, m)| (*k, m.clone())).collect();
        Box::pin(std::future::ready(Ok(marks)))
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: "memory",
            location: None,
            healthy: true,
            last_error: None,
            marks: lock(&self.marks).len(),
        }
    }
}
