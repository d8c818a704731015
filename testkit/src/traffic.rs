//! What the tunnel tests send through the gateway during a phase (a fault, a recovery) and
//! who answered: [`Signed`] per request, [`Traffic`] per phase.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

/// Who signed a payload, going by the signers' `last_sign_hex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The Pi behind the tunnel.
    Pi,
    /// The backup signer.
    Backup,
    /// Neither (a refusal, a failure).
    Neither,
}

/// One sign through the gateway.
#[derive(Debug)]
pub struct Signed {
    /// HTTP status.
    pub status: StatusCode,
    /// The answer's body.
    pub body: Value,
    /// Time it took.
    pub took: Duration,
    /// Who signed.
    pub by: Served,
}

impl Signed {
    /// Answered 200 with a signature.
    pub fn ok(&self) -> bool {
        self.status == StatusCode::OK && self.body["signature"].as_str().is_some_and(|s| s.starts_with("edsig"))
    }
}

/// Requests sent during a phase, with when each was sent (from the phase's start).
#[derive(Default)]
pub struct Traffic {
    sent: Vec<(Duration, anyhow::Result<Signed>)>,
}

impl Traffic {
    /// Record a request sent `at` (from the phase's start).
    pub fn record(&mut self, at: Duration, r: anyhow::Result<Signed>) {
        self.sent.push((at, r));
    }

    /// The last `n` requests were all served by `by`.
    pub fn last_served_by(&self, n: usize, by: Served) -> bool {
        self.sent
            .iter()
            .rev()
            .take(n)
            .all(|(_, r)| r.as_ref().is_ok_and(|s| s.by == by))
    }

    /// Requests sent.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Nothing sent yet.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Requests not answered 200 with a signature (and by whom), as text.
    pub fn failures(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter_map(|(at, r)| match r {
                Ok(s) if s.ok() && s.by != Served::Neither => None,
                Ok(s) => Some(format!("at {at:?}: {} {} (by {:?})", s.status, s.body, s.by)),
                Err(e) => Some(format!("at {at:?}: {e:#}")),
            })
            .collect()
    }

    /// Requests served by `by`.
    pub fn count(&self, by: Served) -> usize {
        self.sent
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|s| s.by == by))
            .count()
    }

    /// Requests slower than `bound`, as text.
    pub fn slower_than(&self, bound: Duration) -> Vec<String> {
        self.sent
            .iter()
            .filter_map(|(at, r)| match r {
                Ok(s) if s.took > bound => Some(format!("at {at:?}: took {:?} (by {:?})", s.took, s.by)),
                _ => None,
            })
            .collect()
    }

    /// The slowest answer.
    pub fn slowest(&self) -> Duration {
        self.sent
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.took))
            .max()
            .unwrap_or_default()
    }

    /// Fail unless every request got a signature.
    pub fn ensure_all_ok(&self, phase: &str) -> anyhow::Result<()> {
        let failures = self.failures();
        anyhow::ensure!(
            failures.is_empty(),
            "{phase}: {} of {} requests failed: {failures:?}",
            failures.len(),
            self.len()
        );
        Ok(())
    }

    /// One line: counts, failures, who served, the slowest.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} failed, {} by pi, {} by backup, slowest {:?}",
            self.len(),
            self.failures().len(),
            self.count(Served::Pi),
            self.count(Served::Backup),
            self.slowest()
        )
    }
}
