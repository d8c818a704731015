//! The supervisor: keeps one session up, reconnecting with jittered exponential backoff,
//! preferring the best uplink (make-before-break when a better one works again), and
//! withdrawing the forward while the local signer does not answer.
//!
//! ```text
//!   connect (uplinks in preference order, the one that just failed last; while an attempt
//!     │      is stuck in its handshake, another starts every second: the first wins)
//!     │ ok                                   │ host key mismatch: error, retry slowly
//!     ▼                                      │ other error: backoff (0.5 s … 10 s, jittered)
//!   serving ──── local signer fails `fall` probes ──▶ forward withdrawn (gateway fails over)
//!     │ ▲ ◀──── local signer answers `rise` probes ─── forward requested again
//!     │ ├─ every `uplink_retry` on a worse uplink: open a session on a better one, then close
//!     │ │  the old one (the gateway's newest-session-wins makes the switch seamless)
//!     │ └─ a liveness ping unanswered within `keepalive_interval`: open a session over the
//!     │    other uplinks at once and move to it (make-before-break away from a dead path)
//!     ▼ session ends (keepalive timeout, gateway restart…)
//!   backoff (reset once a session stayed up `backoff.reset_after`), reconnect
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use russh::keys::PrivateKey;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BackoffConfig, Settings};
use crate::notify;
use crate::probe::probe;
use crate::session::{Closed, Ended, Session, SessionError};

/// Jittered exponential backoff.
pub struct Backoff {
    cfg: BackoffConfig,
    next: Duration,
}

impl Backoff {
    /// Start at `cfg.initial`.
    pub fn new(cfg: BackoffConfig) -> Backoff {
        let next = cfg.initial;
        Backoff { cfg, next }
    }

    /// The next delay: uniformly in [d/2, d] where d doubles up to `max` (so many Pis
    /// reconnecting after a gateway restart do not arrive in lockstep).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        let half = d / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// Back to the first delay (after a healthy period).
    pub fn reset(&mut self) {
        self.next = self.cfg.initial;
    }
}

/// Order in which to try uplinks: preference order, the one that just failed last.
pub fn uplink_order(count: usize, failed: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).filter(|&i| Some(i) != failed).collect();
    if let Some(f) = failed.filter(|&f| f < count) {
        order.push(f);
    }
    order
}

/// Counters shown in logs and the systemd status line.
#[derive(Debug, Default)]
struct Stats {
    sessions: u64,
    switches: u64,
}

/// Try every uplink in `order` and, on each, every gateway in order; the first session wins.
async fn connect_first(
    settings: &Settings,
    key: &Arc<PrivateKey>,
    order: &[usize],
    forward: bool,
) -> Result<Session, SessionError> {
    let mut last = None;
    let mut mismatch = None;
    for &u in order {
        for gw in &settings.config.gateways {
            let uplink = settings.uplinks.get(u).map_or("?", |x| x.name.as_str());
            match Session::connect(settings, Arc::clone(key), gw, u, forward, &mut |_| {}).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_host_key_mismatch() => {
                    // A security event, but only about this path: every other gateway and
                    // uplink is still checked against the same pin, so keep trying them.
                    error!(gateway = %gw, uplink, error = %e, "SECURITY: the gateway's host key does not match the pinned key; not connecting there");
                    mismatch = Some(e);
                }
                Err(e) => {
                    warn!(gateway = %gw, uplink, error = %e, "connection attempt failed");
                    last = Some(e);
                }
            }
        }
    }
    // Nothing worked: a mismatch seen anywhere decides the (slow) retry pace.
    Err(mismatch
        .or(last)
        .unwrap_or(SessionError::Resolve("no gateway configured".into())))
}

/// While every attempt so far is still pending, start another this often.
pub const ATTEMPT_EVERY: Duration = Duration::from_secs(1);

/// [`connect_first`], started again every [`ATTEMPT_EVERY`] while every earlier attempt is
/// still pending: after an outage, an attempt begun while the link was down may sit in a
/// handshake that will never finish (a NAT that forgot the flow, a half-dead LTE link accept
/// the TCP connect, then nothing), and waiting out `connect_timeout` for it would keep the
/// Pi off for seconds after its link came back. The first session wins; the other attempts
/// are dropped, closing their sockets. Fails once every attempt has failed (a host key
/// mismatch seen by any of them decides the error).
async fn connect_overlapping(
    settings: &Settings,
    key: &Arc<PrivateKey>,
    order: &[usize],
    forward: bool,
) -> Result<Session, SessionError> {
    // Every attempt gives up after its own timeouts, so this bounds how many run at once.
    let max = (settings.config.connect_timeout.as_millis() / ATTEMPT_EVERY.as_millis()).max(1) as usize + 1;
    first_of_overlapping(|| connect_first(settings, key, order, forward), ATTEMPT_EVERY, max).await
}

/// Run `attempt()`, and again every `every` (at most `max` at once) while every earlier one
/// is still pending; the first to succeed wins and the others are dropped. Fails once every
/// attempt has failed, with a host key mismatch if any attempt saw one.
async fn first_of_overlapping<T, F, Fut>(mut attempt: F, every: Duration, max: usize) -> Result<T, SessionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SessionError>>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt as _};
    let mut attempts = FuturesUnordered::new();
    attempts.push(attempt());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed: Option<SessionError> = None;
    loop {
        tokio::select! {
            done = attempts.next() => match done {
                Some(Ok(session)) => return Ok(session),
                // A host key mismatch, once seen, decides the error.
                Some(Err(e)) if !failed.as_ref().is_some_and(SessionError::is_host_key_mismatch) => failed = Some(e),
                Some(Err(_)) | None => {}
            },
            _ = tick.tick(), if !attempts.is_empty() && attempts.len() < max => {
                info!(pending = attempts.len(), "connection attempt still pending: starting another");
                attempts.push(attempt());
            }
        }
        if attempts.is_empty() {
            return Err(failed.unwrap_or(SessionError::Resolve("no gateway configured".into())));
        }
    }
}

/// A session being opened on another uplink.
type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Session, SessionError>> + Send + 'a>>;

/// Why a session is being opened on another uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Back to a preferred uplink that may work again.
    Better,
    /// Away from a path whose session stopped answering.
    Failover,
}

impl Move {
    fn reason(self) -> &'static str {
        match self {
            Move::Better => "uplink switch: a preferred uplink works again",
            Move::Failover => "uplink failover: the session stopped answering, moved to another uplink",
        }
    }
}

/// A liveness ping in flight.
type Ping = Pin<Box<dyn Future<Output = bool> + Send>>;

/// How `serve` returned.
enum Outcome {
    Shutdown,
    Closed {
        uplink: usize,
        up_for: Duration,
        ended: Ended,
    },
}

/// Run until `shutdown` fires. Returns only then (all errors are retried).
pub async fn run(settings: Settings, key: Arc<PrivateKey>, shutdown: CancellationToken) {
    let cfg = &settings.config;
    let mut backoff = Backoff::new(cfg.backoff.clone());
    let mut stats = Stats::default();
    let mut failed_uplink = None;
    let mut watchdog = notify::Watchdog::from_env();
    // Ready as soon as the supervisor runs: whether it forwards is STATUS, not readiness, so
    // a Pi that boots with its signer locked or no uplink yet is not restarted by systemd.
    notify::status("starting: connecting to the gateway");
    notify::ready();
    loop {
        let signer_ok = probe(&cfg.signer, &cfg.health_check.path, cfg.health_check.timeout)
            .await
            .is_ok();
        if !signer_ok {
            warn!(signer = %cfg.signer, "local signer not answering: connecting without the forward for now");
        }
        let order = uplink_order(settings.uplinks.len(), failed_uplink);
        let connect = connect_overlapping(&settings, &key, &order, signer_ok);
        tokio::pin!(connect);
        let connected = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = watchdog.ping() => {}
                c = &mut connect => break c,
            }
        };
        let delay = match connected {
            Ok(session) => {
                stats.sessions += 1;
                match serve(
                    &settings,
                    &key,
                    session,
                    signer_ok,
                    &mut stats,
                    &mut watchdog,
                    &shutdown,
                )
                .await
                {
                    Outcome::Shutdown => return,
                    Outcome::Closed { uplink, up_for, ended } => {
                        let name = settings.uplinks.get(uplink).map_or("?", |u| u.name.as_str());
                        warn!(uplink = %name, reason = %ended.reason, link_failure = ended.link_failure, up_for = ?up_for, "session ended");
                        notify::status(&format!("reconnecting ({})", ended.reason));
                        if up_for >= cfg.backoff.reset_after {
                            backoff.reset();
                        }
                        // Only a failed path is tried last; a gateway restart says nothing
                        // about the uplink, so the preferred one is tried first again.
                        failed_uplink = ended.link_failure.then_some(uplink);
                        backoff.next_delay()
                    }
                }
            }
            Err(e) if e.is_host_key_mismatch() => {
                // Each mismatching path was already logged at error level with both keys.
                let _ = e;
                warn!(retry_in = ?cfg.host_key_mismatch_retry, "no gateway could be reached with the pinned host key; retrying slowly");
                notify::status("host key mismatch: not connecting");
                // A plain sleep: the gateway being reachable is no reason to retry sooner.
                let sleep = tokio::time::sleep(cfg.host_key_mismatch_retry);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = watchdog.ping() => {}
                        _ = &mut sleep => break,
                    }
                }
                continue;
            }
            Err(e) => {
                let d = backoff.next_delay();
                warn!(error = %e, retry_in = ?d, "cannot reach the gateway");
                notify::status(&format!("cannot reach the gateway: {e}"));
                d
            }
        };
        let backoff_wait = wait_backoff(&settings, delay);
        tokio::pin!(backoff_wait);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = watchdog.ping() => {}
                _ = &mut backoff_wait => break,
            }
        }
    }
}

/// Sleep `delay`, but when it is long, check every second whether a gateway accepts TCP
/// connections again and stop early if so: after a long outage the backoff has grown to
/// seconds, and the link coming back should not wait it out. A TCP connect is cheap for both
/// sides; the SSH handshakes that the backoff spaces out are not.
async fn wait_backoff(settings: &Settings, delay: Duration) {
    const CHECK_EVERY: Duration = Duration::from_secs(1);
    let until = tokio::time::Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left <= CHECK_EVERY {
            tokio::time::sleep(left).await;
            return;
        }
        tokio::time::sleep(CHECK_EVERY).await;
        if crate::session::gateway_reachable(settings, Duration::from_millis(500)).await {
            info!("the gateway is reachable again: reconnecting now");
            return;
        }
    }
}

async fn serve(
    settings: &Settings,
    key: &Arc<PrivateKey>,
    mut session: Session,
    forwarding: bool,
    stats: &mut Stats,
    watchdog: &mut notify::Watchdog,
    shutdown: &CancellationToken,
) -> Outcome {
    let cfg = &settings.config;
    let hc = &cfg.health_check;
    let mut closed = session.take_closed();
    let mut oks = 0u32;
    let mut fails = 0u32;
    info!(gateway = %session.gateway, uplink = %session.uplink_name, forwarding, "session up");
    let report = |s: &Session, stats: &mut Stats| {
        let state = if s.is_forwarding() {
            "serving"
        } else {
            "forward withdrawn (local signer down)"
        };
        notify::status(&format!(
            "{state} via {} to {} (switches: {}, sessions: {})",
            s.uplink_name, s.gateway, stats.switches, stats.sessions
        ));
    };
    report(&session, stats);
    let mut health = tokio::time::interval(hc.interval);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start_better = tokio::time::Instant::now() + cfg.uplink_retry;
    let mut better = tokio::time::interval_at(start_better, cfg.uplink_retry);
    better.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A session being opened on another uplink. Polled as its own branch so probes, the
    // forward and shutdown keep being handled while it connects (up to connect_timeout per
    // step on a silently dead path).
    let mut attempt: Option<(Move, Attempt<'_>)> = None;
    let mut attempt_started = Instant::now();
    // Liveness: a ping every half keepalive interval, each answered within one interval or
    // counted as missed. Only worth it with another uplink to move to.
    let mut liveness = tokio::time::interval(cfg.keepalive_interval / 2);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping: Option<Ping> = None;
    let mut missed_since: Option<Instant> = None;
    let can_move = settings.uplinks.len() > 1;
    loop {
        tokio::select! {
            _ = watchdog.ping() => {}
            _ = shutdown.cancelled() => {
                notify::stopping();
                session.close("tunnel client stopping").await;
                return Outcome::Shutdown;
            }
            ended = closed.wait() => {
                // The gateway closes this session the moment a newer one of ours takes the
                // route, possibly before that session's own attempt has reported back here:
                // finish the attempt and adopt it rather than drop the session that now
                // carries the route.
                let adopted = match attempt.take() {
                    Some((why, pending)) => pending
                        .await
                        .ok()
                        .filter(|new| why == Move::Failover || new.uplink < session.uplink)
                        .map(|new| (why, new)),
                    None => None,
                };
                let Some((why, new)) = adopted else {
                    return Outcome::Closed { uplink: session.uplink, up_for: session.since.elapsed(), ended };
                };
                // The old session is already gone: nothing to close.
                drop(switch_to(&mut session, &mut closed, new, stats, attempt_started.elapsed(), why));
                (ping, missed_since) = (None, None);
                report(&session, stats);
            }
            _ = health.tick() => {
                match probe(&cfg.signer, &hc.path, hc.timeout).await {
                    Ok(()) => {
                        oks += 1;
                        fails = 0;
                        if !session.is_forwarding() && oks >= hc.rise {
                            match session.request_forward().await {
                                Ok(()) => info!("local signer answers: forward requested"),
                                Err(e) => warn!(error = %e, "cannot request the forward"),
                            }
                            report(&session, stats);
                        }
                    }
                    Err(why) => {
                        fails += 1;
                        oks = 0;
                        if session.is_forwarding() && fails >= hc.fall {
                            warn!(signer = %cfg.signer, error = %why, "local signer not answering: withdrawing the forward so the gateway fails over");
                            if let Err(e) = session.cancel_forward().await {
                                warn!(error = %e, "cannot withdraw the forward");
                            }
                            report(&session, stats);
                        }
                    }
                }
            }
            _ = liveness.tick(), if can_move && ping.is_none() => {
                ping = Some(Box::pin(session.ping(cfg.keepalive_interval)));
            }
            answered = async {
                match ping.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if ping.is_some() => {
                ping = None;
                if answered {
                    if let Some(since) = missed_since.take() {
                        info!(uplink = %session.uplink_name, silent_for = ?since.elapsed(), "the session answers again");
                    }
                    continue;
                }
                if missed_since.is_none() {
                    missed_since = Some(Instant::now());
                    warn!(uplink = %session.uplink_name, "the session did not answer a keepalive: opening a session over another uplink");
                }
                // Make before break: the new session takes the route at the gateway the moment
                // it forwards; this one is closed only then. A better-uplink attempt already
                // under way is replaced: this path is the problem now.
                if !matches!(attempt, Some((Move::Failover, _))) {
                    let here = session.uplink;
                    let order: Vec<usize> = (0..settings.uplinks.len()).filter(|&u| u != here).collect();
                    let forward = session.is_forwarding();
                    attempt_started = Instant::now();
                    attempt = Some((
                        Move::Failover,
                        Box::pin(async move { connect_first(settings, key, &order, forward).await }),
                    ));
                }
            }
            _ = better.tick(), if session.uplink > 0 && attempt.is_none() && missed_since.is_none() => {
                // Make before break: a session on a better uplink first, then close this one.
                let order: Vec<usize> = (0..session.uplink).collect();
                let forward = session.is_forwarding();
                attempt_started = Instant::now();
                attempt = Some((Move::Better, Box::pin(async move { connect_first(settings, key, &order, forward).await })));
            }
            result = async {
                match attempt.as_mut() {
                    Some((_, pending)) => pending.await,
                    None => std::future::pending().await,
                }
            }, if attempt.is_some() => {
                let Some((why, _)) = attempt.take() else { continue };
                let Ok(mut new) = result else { continue };
                if why == Move::Better && new.uplink >= session.uplink {
                    continue;
                }
                // The local signer may have gone away while the new session was opening.
                if new.is_forwarding() && !session.is_forwarding() {
                    let _ = new.cancel_forward().await;
                }
                let old = switch_to(&mut session, &mut closed, new, stats, attempt_started.elapsed(), why);
                (ping, missed_since) = (None, None);
                // A dead path's session may not take a polite goodbye: do not wait on it.
                match why {
                    Move::Better => old.close("moved to a preferred uplink").await,
                    Move::Failover => drop(tokio::spawn(old.close("moved away from a path that stopped answering"))),
                }
                report(&session, stats);
            }
        }
    }
}

/// Make `new` the current session (with its end signal); returns the old one.
fn switch_to(
    session: &mut Session,
    closed: &mut Closed,
    mut new: Session,
    stats: &mut Stats,
    took: Duration,
    why: Move,
) -> Session {
    stats.switches += 1;
    info!(
        from = %session.uplink_name,
        to = %new.uplink_name,
        switches = stats.switches,
        took_ms = took.as_millis() as u64,
        "{}",
        why.reason()
    );
    *closed = new.take_closed();
    std::mem::replace(session, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_resets() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        });
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(250) && first <= Duration::from_millis(500),
            "{first:?}"
        );
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(10));
        }
        assert!(
            last >= Duration::from_secs(5),
            "capped delays stay near the cap: {last:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    /// Attempts that hang (a handshake frozen mid-way) until `hang_until`, then answer at once.
    fn attempts<'a>(
        hang_until: tokio::time::Instant,
        started: &'a std::sync::Mutex<Vec<Duration>>,
        t0: tokio::time::Instant,
    ) -> impl FnMut() -> Pin<Box<dyn Future<Output = Result<usize, SessionError>> + Send>> + 'a {
        let mut n = 0;
        move || {
            n += 1;
            let id = n;
            let begun = tokio::time::Instant::now();
            started.lock().unwrap().push(begun - t0);
            Box::pin(async move {
                if begun < hang_until {
                    // Begun while the link was down: frozen for good.
                    std::future::pending::<()>().await;
                }
                Ok(id)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_attempt_every_second_while_the_first_is_stuck_and_the_first_to_finish_wins() {
        let t0 = tokio::time::Instant::now();
        let started = std::sync::Mutex::new(Vec::new());
        // The link comes back 3.5 s in: attempts begun before stay frozen.
        let back = t0 + Duration::from_millis(3500);
        let winner = first_of_overlapping(attempts(back, &started, t0), Duration::from_secs(1), 10)
            .await
            .unwrap();
        assert_eq!(winner, 5, "the first attempt begun after the link returned");
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(4),
            "within a second of the link's return"
        );
        let started = started.lock().unwrap().clone();
        assert_eq!(started, (0..5).map(Duration::from_secs).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_are_capped_and_failures_end_the_wait() {
        let t0 = tokio::time::Instant::now();
        let started = std::sync::Mutex::new(Vec::new());
        // Never comes back: at most `max` attempts, then it waits on them (their own timeouts
        // end them in real life).
        let never = t0 + Duration::from_secs(3600);
        let wait = first_of_overlapping(attempts(never, &started, t0), Duration::from_secs(1), 3);
        assert!(tokio::time::timeout(Duration::from_secs(30), wait).await.is_err());
        assert_eq!(started.lock().unwrap().len(), 3);
        // When every attempt has failed the wait ends (the backoff takes over), and a host key
        // mismatch seen by any attempt is the error reported, even if later ones failed
        // otherwise: the first attempt (a mismatch) fails after 1.5 s, the others (timeouts)
        // 1 s after they start.
        let mut n = 0u64;
        let e = first_of_overlapping(
            || {
                n += 1;
                let (after, e) = if n == 1 {
                    (
                        Duration::from_millis(1500),
                        SessionError::HostKeyMismatch("pinned x, got y".into()),
                    )
                } else {
                    (Duration::from_millis(1000), SessionError::Timeout("handshake"))
                };
                async move {
                    tokio::time::sleep(after).await;
                    Err::<(), _>(e)
                }
            },
            Duration::from_secs(1),
            2,
        )
        .await
        .unwrap_err();
        assert!(e.is_host_key_mismatch(), "{e}");
        assert!(n >= 2, "the stuck first attempt was overlapped");
    }

    #[test]
    fn failed_uplink_goes_last() {
        assert_eq!(uplink_order(3, None), vec![0, 1, 2]);
        assert_eq!(uplink_order(3, Some(0)), vec![1, 2, 0]);
        assert_eq!(uplink_order(2, Some(1)), vec![0, 1]);
        assert_eq!(uplink_order(1, Some(0)), vec![0]);
        assert_eq!(uplink_order(2, Some(7)), vec![0, 1]);
    }
}
