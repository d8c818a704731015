//! [`Instrumented`]: any store, timed by operation and with its failures counted by cause
//! (`signer_gateway_store_duration_seconds`, `signer_gateway_store_errors_total`), so every
//! backend is observed the same way.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::{Mark, MarkKey, MarkRequest, Outcome, StoreHealth, WatermarkError, WatermarkStore};
use crate::metrics::StoreMetrics;

/// A store whose operations feed [`StoreMetrics`].
pub struct Instrumented {
    inner: Arc<dyn WatermarkStore>,
    backend: &'static str,
    metrics: StoreMetrics,
    /// The two series every sign feeds, looked up once rather than per request.
    check_and_record: prometheus::Histogram,
    record_signature: prometheus::Histogram,
}

impl Instrumented {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn WatermarkStore>, metrics: StoreMetrics) -> Instrumented {
        let backend = inner.health().backend;
        let series = |op| metrics.duration.with_label_values(&[backend, op]);
        Instrumented {
            check_and_record: series("check_and_record"),
            record_signature: series("record_signature"),
            inner,
            backend,
            metrics,
        }
    }

    /// Time `fut` into `duration` (`op`'s series when `None`) and count its store failure, if
    /// any. Refusals by the rule are answers, not failures.
    async fn observe<T>(
        &self,
        op: &'static str,
        duration: Option<&prometheus::Histogram>,
        fut: impl std::future::Future<Output = Result<T, WatermarkError>>,
    ) -> Result<T, WatermarkError> {
        let started = Instant::now();
        let result = fut.await;
        match duration {
            Some(h) => h.observe(started.elapsed().as_secs_f64()),
            None => self.metrics.observe(self.backend, op, started),
        }
        if let Err(WatermarkError::Store(f)) = &result {
            self.metrics
                .errors
                .with_label_values(&[self.backend, f.cause.as_str()])
                .inc();
        }
        result
    }
}

impl WatermarkStore for Instrumented {
    fn check_and_record<'a>(&'a self, req: &'a MarkRequest) -> BoxFuture<'a, Result<Outcome, WatermarkError>> {
        Box::pin(self.observe(
            "check_and_record",
            Some(&self.check_and_record),
            self.inner.check_and_record(req),
        ))
    }

    fn record_signature<'a>(
        &'a self,
        req: &'a MarkRequest,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<(), WatermarkError>> {
        Box::pin(self.observe(
            "record_signature",
            Some(&self.record_signature),
            self.inner.record_signature(req, signature),
        ))
    }

    fn set<'a>(&'a self, key: MarkKey, level: i32, round: i32) -> BoxFuture<'a, Result<Option<Mark>, WatermarkError>> {
        Box::pin(self.observe("set", None, self.inner.set(key, level, round)))
    }

    fn raise<'a>(&'a self, key: MarkKey, mark: Mark) -> BoxFuture<'a, Result<bool, WatermarkError>> {
        Box::pin(self.observe("raise", None, self.inner.raise(key, mark)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(MarkKey, Mark)>, WatermarkError>> {
        Box::pin(self.observe("list", None, self.inner.list()))
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Kind;
    use crate::watermark::tests::{key, req};
    use crate::watermark::MemoryStore;

    #[tokio::test]
    async fn times_operations_and_leaves_answers_alone() {
        let metrics = StoreMetrics::new().expect("metrics");
        let store = Instrumented::new(Arc::new(MemoryStore::new()), metrics.clone());
        let r = req(key(Kind::Block), 10, 0, 1);
        assert_eq!(store.check_and_record(&r).await, Ok(Outcome::Recorded));
        let below = store.check_and_record(&req(key(Kind::Block), 9, 0, 2)).await;
        assert!(matches!(below, Err(WatermarkError::Below { .. })), "{below:?}");
        assert_eq!(store.list().await.map(|l| l.len()), Ok(1));
        let count = |op: &str| metrics.duration.with_label_values(&["memory", op]).get_sample_count();
        assert_eq!(count("check_and_record"), 2);
        assert_eq!(count("list"), 1);
        // A refusal by the rule is not a store failure.
        let errors: u64 = ["write_failed", "timeout", "unavailable"]
            .iter()
            .map(|r| metrics.errors.with_label_values(&["memory", r]).get())
            .sum();
        assert_eq!(errors, 0);
    }
}
