//! Polling with a deadline instead of fixed sleeps.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two attempts of [`eventually`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Call `attempt` until it returns `Ok`, for at most `within`; then fail with `what` and the
/// last error. Each attempt is itself cut off at the deadline.
///
/// ```no_run
/// # async fn f(gw: &testkit::harness::Gateway) -> anyhow::Result<()> {
/// use testkit::harness::eventually;
/// use std::time::Duration;
/// eventually(Duration::from_secs(5), "primary up", || async {
///     anyhow::ensure!(gw.signer_state("primary").await? == "up");
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let deadline = start + within;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left.max(Duration::from_millis(1)), attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "attempt still running at the deadline".to_string(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            anyhow::bail!("{what}: not true within {within:?} ({tries} tries); last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Run `fut` and fail if it takes longer than `bound`; returns its output and the time taken.
pub async fn within<T>(bound: Duration, what: &str, fut: impl Future<Output = T>) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    match tokio::time::timeout(bound, fut).await {
        Ok(v) => Ok((v, start.elapsed())),
        Err(_) => anyhow::bail!("{what}: took longer than {bound:?}"),
    }
}
