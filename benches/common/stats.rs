//! Latency statistics: every measured request in an HDR histogram of nanoseconds (three
//! significant digits, up to a minute), so percentiles cost no sorting and a window of any
//! length fits in a fixed few hundred KiB; and the spread of a few runs' figures.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency recorded exactly; anything slower counts as this (a request timeout is
/// far below it).
const HIGHEST_NS: u64 = 60_000_000_000;

/// Latencies of one window.
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, 3 digits).
        Latencies(Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Count one request of `took`.
    pub fn record(&mut self, took: Duration) {
        self.0
            .saturating_record(u64::try_from(took.as_nanos()).unwrap_or(HIGHEST_NS).max(1));
    }

    /// Add every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0.5 for the median), to 0.1 %.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_nanos(self.0.value_at_quantile(q))
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// Smallest, median and largest of one figure over a few runs (`None` for no runs).
pub fn spread(figures: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut v = figures.to_vec();
    v.sort_unstable();
    Some((*v.first()?, v[(v.len() - 1) / 2], *v.last()?))
}
