//! Limits a peer cannot get around by opening more connections: per-source connection caps,
//! and log lines for events a peer can trigger at will, rate-limited.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Things open per key (a source address, a signer), capped.
pub struct Counts<K: Hash + Eq + Clone> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// Connections open per source address.
pub type SourceCounts = Counts<IpAddr>;

/// One counted thing; dropping it frees its place.
pub struct CountGuard<K: Hash + Eq + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

/// A counted connection from one source address.
pub type SourceGuard = CountGuard<IpAddr>;

impl<K: Hash + Eq + Clone> Counts<K> {
    /// Count one more for `key`, unless `cap` are open already.
    pub fn enter(self: &Arc<Self>, key: K, cap: usize) -> Option<CountGuard<K>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(CountGuard {
            counts: Arc::clone(self),
            key,
        })
    }

    /// How many are open for `key`.
    pub fn open_for(&self, key: &K) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for CountGuard<K> {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// At most a few log lines per second for one kind of event a peer can trigger at will; the
/// rest are counted and reported with the next line that gets through.
pub struct LogLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }
}

impl LogLimiter {
    const PER_SECOND: u32 = 5;

    /// `Some(suppressed since the last line)` when this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count, suppressed) = &mut *s;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *count = 0;
        }
        if *count < Self::PER_SECOND {
            *count += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_caps_free_on_drop() {
        let counts = Arc::new(SourceCounts::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = counts.enter(a, 2).unwrap();
        let _g2 = counts.enter(a, 2).unwrap();
        assert!(counts.enter(a, 2).is_none(), "third from one source");
        assert!(counts.enter(b, 2).is_some(), "another source is not affected");
        drop(g1);
        assert_eq!(counts.open_for(&a), 1);
        assert!(counts.enter(a, 2).is_some());
    }

    #[test]
    fn log_limiter_lets_a_few_through_and_counts_the_rest() {
        let l = LogLimiter::default();
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed, LogLimiter::PER_SECOND as usize);
    }
}
