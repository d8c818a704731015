//! The supervisors: one per gateway replica ([`run`] starts them), each keeping one session to
//! its replica up, reconnecting with jittered exponential backoff, preferring the best uplink
//! (make-before-break when a better one works again), and withdrawing the forward while the
//! local signer does not answer. They share the identity, the local signer's health
//! ([`crate::probe::track`]), the status line ([`crate::status`]) and the watchdog, and nothing
//! else: a replica that dies costs the others nothing. Each reaches the network through the
//! [`Connector`] seam, so its tests run in process on paused time.
//!
//! One supervisor:
//!
//! ```text
//!   connect (uplinks in preference order, the one that just failed last, and on each the
//!     │      replica's addresses in order; while an attempt is stuck in its handshake,
//!     │      another starts every second: the first wins)
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
use std::time::Duration;

use rand::Rng as _;
use russh::keys::PrivateKey;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument as _};

use crate::config::{BackoffConfig, Replica, Settings};
use crate::link::{Connector, Tunnel};
use crate::notify::{self, Heartbeat};
use crate::probe::{probe, track};
use crate::session::{Closed, Ended, SessionError, SshConnector};
use crate::status::{Board, State};

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

/// Keep a session to every replica until `shutdown` fires: one supervisor each, sharing the
/// identity, the local signer's health, the status line and the watchdog. Returns once every
/// supervisor closed its session; an error only if one panicked (the process should exit).
pub async fn run(settings: Settings, key: Arc<PrivateKey>, shutdown: CancellationToken) -> Result<(), JoinError> {
    let settings = Arc::new(settings);
    let board = Board::new(settings.replicas.iter().map(|r| r.name.clone()).collect());
    let connectors = settings
        .replicas
        .iter()
        .map(|r| SshConnector::new(Arc::clone(&settings), Arc::new(r.clone()), Arc::clone(&key)))
        .collect();
    let local = Arc::clone(&settings);
    let probe_local = move || {
        let local = Arc::clone(&local);
        async move { probe(&local.config).await }
    };
    run_with(settings, board, connectors, probe_local, shutdown).await
}

/// [`run`] with the network (`connectors`, one per replica, in order) and the local signer's
/// probe given: what the tests drive.
pub async fn run_with<C, P, Fut>(
    settings: Arc<Settings>,
    board: Board,
    connectors: Vec<C>,
    probe_local: P,
    shutdown: CancellationToken,
) -> Result<(), JoinError>
where
    C: Connector,
    P: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let mut probe_local = probe_local;
    // Ready as soon as the supervisors run: whether they forward is STATUS, not readiness, so
    // a Pi that boots with its signer locked or no uplink yet is not restarted by systemd.
    notify::ready();
    let (watchdog, hearts) = notify::Watchdog::from_env(settings.replicas.len());
    let first = probe_local().await.is_ok();
    let (healthy, signer) = watch::channel(first);
    // Aborted when dropped, once the supervisors are done.
    let mut background = JoinSet::new();
    background.spawn(watchdog.run());
    let hc = settings.config.health_check.clone();
    let local = settings.config.signer.clone();
    background.spawn(async move { track(probe_local, &hc, &local, healthy).await });
    let mut supervisors = JoinSet::new();
    let each = settings.replicas.iter().zip(connectors).zip(hearts);
    for (slot, ((replica, connector), heart)) in each.enumerate() {
        let span = tracing::info_span!("replica", replica = %replica.name);
        let supervisor = Supervisor {
            settings: Arc::clone(&settings),
            replica: Arc::new(replica.clone()),
            slot,
            connector,
            signer: signer.clone(),
            board: board.clone(),
        };
        supervisors.spawn(supervisor.run(heart, shutdown.clone()).instrument(span));
    }
    // A supervisor returns only on shutdown, unless it panicked.
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        Some(Err(e)) = supervisors.join_next() => {
            error!(error = %e, "a supervisor failed: stopping");
            Err(e)
        }
    };
    notify::stopping();
    shutdown.cancel();
    while supervisors.join_next().await.is_some() {}
    result
}

/// Counters shown in logs and the status line.
#[derive(Debug, Default)]
struct Stats {
    sessions: u64,
    switches: u64,
}

/// While every attempt so far is still pending, start another this often.
pub const ATTEMPT_EVERY: Duration = Duration::from_secs(1);

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
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
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
type Attempt<'a, S> = Pin<Box<dyn Future<Output = Result<S, SessionError>> + Send + 'a>>;

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

/// The session being served, with its end signal and when it became current.
struct Current<S> {
    session: S,
    closed: Closed,
    since: Instant,
}

impl<S: Tunnel> Current<S> {
    fn new(mut session: S) -> Current<S> {
        let closed = session.take_closed();
        Current {
            session,
            closed,
            since: Instant::now(),
        }
    }
}

/// Await `fut` while beating the watchdog; `None` if `shutdown` fires first.
async fn beating<F: Future>(fut: F, heartbeat: &mut Heartbeat, shutdown: &CancellationToken) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = heartbeat.beat() => {}
            out = &mut fut => return Some(out),
        }
    }
}

/// Keeps one session to one replica: to `replica`, through `connector`, forwarding while
/// `signer` says the local signer is healthy, reporting at `slot` on `board`.
struct Supervisor<C> {
    settings: Arc<Settings>,
    replica: Arc<Replica>,
    slot: usize,
    connector: C,
    /// The local signer's health, as [`track`] publishes it.
    signer: watch::Receiver<bool>,
    board: Board,
}

impl<C: Connector> Supervisor<C> {
    fn uplink_name(&self, uplink: usize) -> &str {
        self.settings.uplinks.get(uplink).map_or("?", |u| u.name.as_str())
    }

    /// Try every uplink in `order` and, on each, every address in order; the first session wins.
    async fn connect_first(&self, order: &[usize], forward: bool) -> Result<C::Session, SessionError> {
        let mut last = None;
        let mut mismatch = None;
        for &u in order {
            for gw in &self.replica.addresses {
                let uplink = self.uplink_name(u);
                match self.connector.connect(gw, u, forward).await {
                    Ok(s) => return Ok(s),
                    Err(e) if e.is_host_key_mismatch() => {
                        // A security event, but only about this path: every other address and
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

    /// [`Self::connect_first`], started again every [`ATTEMPT_EVERY`] while every earlier
    /// attempt is still pending: after an outage, an attempt begun while the link was down may
    /// sit in a handshake that will never finish (a NAT that forgot the flow, a half-dead LTE
    /// link accept the TCP connect, then nothing), and waiting out `connect_timeout` for it
    /// would keep the Pi off for seconds after its link came back. The first session wins;
    /// the other attempts are dropped, closing their sockets.
    async fn connect_overlapping(&self, order: &[usize], forward: bool) -> Result<C::Session, SessionError> {
        // Every attempt gives up after its own timeouts, so this bounds how many run at once.
        let max = (self.settings.config.connect_timeout.as_millis() / ATTEMPT_EVERY.as_millis()).max(1) as usize + 1;
        first_of_overlapping(|| self.connect_first(order, forward), ATTEMPT_EVERY, max).await
    }

    /// Run until `shutdown` fires (every error is retried), then close the session.
    async fn run(self, mut heartbeat: Heartbeat, shutdown: CancellationToken) {
        let cfg = &self.settings.config;
        let mut backoff = Backoff::new(cfg.backoff.clone());
        let mut stats = Stats::default();
        let mut failed_uplink = None;
        loop {
            let signer_ok = *self.signer.borrow();
            if !signer_ok {
                warn!(signer = %cfg.signer, "local signer not answering: connecting without the forward for now");
            }
            let order = uplink_order(self.settings.uplinks.len(), failed_uplink);
            // No attempt asks for the forward: when several complete together (held by a link
            // that just came back), one that lost the race but had asked would take the route
            // at the gateway (the newest session wins) and the winner's session would be
            // closed. The forward is asked on the adopted session, one round trip later.
            let connect = self.connect_overlapping(&order, false);
            let Some(connected) = beating(connect, &mut heartbeat, &shutdown).await else {
                return;
            };
            let delay = match connected {
                Ok(session) => {
                    stats.sessions += 1;
                    match self.serve(session, &mut stats, &mut heartbeat, &shutdown).await {
                        Outcome::Shutdown => return,
                        Outcome::Closed { uplink, up_for, ended } => {
                            if up_for >= cfg.backoff.reset_after {
                                backoff.reset();
                            }
                            // Only a failed path is tried last; a gateway restart says nothing
                            // about the uplink, so the preferred one is tried first again.
                            failed_uplink = ended.link_failure.then_some(uplink);
                            let delay = backoff.next_delay();
                            warn!(uplink = %self.uplink_name(uplink), reason = %ended.reason, link_failure = ended.link_failure, up_for = ?up_for, retry_in = ?delay, "session ended");
                            self.set_state(State::Reconnecting {
                                reason: ended.reason,
                                retry_in: delay,
                            });
                            delay
                        }
                    }
                }
                Err(e) if e.is_host_key_mismatch() => {
                    // Each mismatching path was already logged at error level with both keys.
                    warn!(retry_in = ?cfg.host_key_mismatch_retry, "no gateway could be reached with the pinned host key; retrying slowly");
                    self.set_state(State::HostKeyMismatch);
                    // A plain sleep: the gateway being reachable is no reason to retry sooner.
                    let sleep = tokio::time::sleep(cfg.host_key_mismatch_retry);
                    if beating(sleep, &mut heartbeat, &shutdown).await.is_none() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    let d = backoff.next_delay();
                    warn!(error = %e, retry_in = ?d, "cannot reach the gateway");
                    self.set_state(State::Unreachable {
                        error: e.to_string(),
                        retry_in: d,
                    });
                    d
                }
            };
            if beating(self.wait_backoff(delay), &mut heartbeat, &shutdown)
                .await
                .is_none()
            {
                return;
            }
        }
    }

    fn set_state(&self, state: State) {
        self.board.set(self.slot, state);
    }

    fn report(&self, session: &C::Session, stats: &Stats) {
        self.set_state(State::Up {
            uplink: self.uplink_name(session.uplink()).to_string(),
            address: session.address().to_string(),
            forwarding: session.is_forwarding(),
            switches: stats.switches,
            sessions: stats.sessions,
        });
    }

    /// Sleep `delay`, but when it is long, check every second whether the replica accepts TCP
    /// connections again and stop early if so: after a long outage the backoff has grown to
    /// seconds, and the link coming back should not wait it out. A TCP connect is cheap for
    /// both sides; the SSH handshakes that the backoff spaces out are not.
    async fn wait_backoff(&self, delay: Duration) {
        const CHECK_EVERY: Duration = Duration::from_secs(1);
        let until = Instant::now() + delay;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left <= CHECK_EVERY {
                tokio::time::sleep(left).await;
                return;
            }
            tokio::time::sleep(CHECK_EVERY).await;
            if self.connector.reachable(Duration::from_millis(500)).await {
                info!("the gateway is reachable again: reconnecting now");
                return;
            }
        }
    }

    /// Request or withdraw the forward so that it follows the local signer's health.
    async fn follow_signer(&self, session: &mut C::Session, healthy: bool) {
        if healthy && !session.is_forwarding() {
            match session.request_forward().await {
                Ok(()) => info!("local signer answers: forward requested"),
                Err(e) => warn!(error = %e, "cannot request the forward"),
            }
        } else if !healthy && session.is_forwarding() {
            warn!(signer = %self.settings.config.signer, "local signer not answering: withdrawing the forward so the gateway fails over");
            if let Err(e) = session.cancel_forward().await {
                warn!(error = %e, "cannot withdraw the forward");
            }
        }
    }

    async fn serve(
        &self,
        session: C::Session,
        stats: &mut Stats,
        heartbeat: &mut Heartbeat,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let cfg = &self.settings.config;
        let mut cur = Current::new(session);
        info!(gateway = %cur.session.address(), uplink = %self.uplink_name(cur.session.uplink()), forwarding = cur.session.is_forwarding(), "session up");
        self.report(&cur.session, stats);
        let mut signer = self.signer.clone();
        signer.mark_changed();
        let mut signer_gone = false;
        // Also follow the signer at every health interval: a request or a withdrawal that
        // failed is tried again.
        let mut follow = tokio::time::interval(cfg.health_check.interval);
        follow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start_better = Instant::now() + cfg.uplink_retry;
        let mut better = tokio::time::interval_at(start_better, cfg.uplink_retry);
        better.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A session being opened on another uplink. Polled as its own branch so the forward,
        // liveness and shutdown keep being handled while it connects (up to connect_timeout
        // per step on a silently dead path).
        let mut attempt: Option<(Move, Attempt<'_, C::Session>)> = None;
        let mut attempt_started = Instant::now();
        // Liveness: a ping every half keepalive interval, each answered within one interval or
        // counted as missed. Only worth it with another uplink to move to.
        let mut liveness = tokio::time::interval(cfg.keepalive_interval / 2);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping: Option<Ping> = None;
        let mut missed_since: Option<Instant> = None;
        let can_move = self.settings.uplinks.len() > 1;
        loop {
            tokio::select! {
                _ = heartbeat.beat() => {}
                _ = shutdown.cancelled() => {
                    cur.session.close("tunnel client stopping").await;
                    return Outcome::Shutdown;
                }
                ended = cur.closed.wait() => {
                    // The gateway closes this session the moment a newer one of ours takes the
                    // route, possibly before that session's own attempt has reported back here:
                    // finish the attempt and adopt it rather than drop the session that now
                    // carries the route.
                    let here = cur.session.uplink();
                    let adopted = match attempt.take() {
                        Some((why, pending)) => pending
                            .await
                            .ok()
                            .filter(|new| why == Move::Failover || new.uplink() < here)
                            .map(|new| (why, new)),
                        None => None,
                    };
                    let Some((why, new)) = adopted else {
                        return Outcome::Closed { uplink: here, up_for: cur.since.elapsed(), ended };
                    };
                    // The old session is already gone: nothing to close.
                    drop(self.switch_to(&mut cur, new, stats, attempt_started.elapsed(), why));
                    (ping, missed_since) = (None, None);
                    self.report(&cur.session, stats);
                }
                changed = signer.changed(), if !signer_gone => {
                    signer_gone = changed.is_err();
                    let healthy = *signer.borrow_and_update();
                    self.follow_signer(&mut cur.session, healthy).await;
                    self.report(&cur.session, stats);
                }
                _ = follow.tick() => {
                    let healthy = *signer.borrow();
                    if healthy != cur.session.is_forwarding() {
                        self.follow_signer(&mut cur.session, healthy).await;
                        self.report(&cur.session, stats);
                    }
                }
                _ = liveness.tick(), if can_move && ping.is_none() => {
                    ping = Some(Box::pin(cur.session.ping(cfg.keepalive_interval)));
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
                            info!(uplink = %self.uplink_name(cur.session.uplink()), silent_for = ?since.elapsed(), "the session answers again");
                        }
                        continue;
                    }
                    if missed_since.is_none() {
                        missed_since = Some(Instant::now());
                        warn!(uplink = %self.uplink_name(cur.session.uplink()), "the session did not answer a keepalive: opening a session over another uplink");
                    }
                    // Make before break: the new session takes the route at the gateway the
                    // moment it forwards; this one is closed only then. A better-uplink attempt
                    // already under way is replaced: this path is the problem now.
                    if !matches!(attempt, Some((Move::Failover, _))) {
                        let here = cur.session.uplink();
                        let order: Vec<usize> = (0..self.settings.uplinks.len()).filter(|&u| u != here).collect();
                        let forward = cur.session.is_forwarding();
                        attempt_started = Instant::now();
                        attempt = Some((
                            Move::Failover,
                            Box::pin(async move { self.connect_first(&order, forward).await }),
                        ));
                    }
                }
                _ = better.tick(), if cur.session.uplink() > 0 && attempt.is_none() && missed_since.is_none() => {
                    // Make before break: a session on a better uplink first, then close this one.
                    let order: Vec<usize> = (0..cur.session.uplink()).collect();
                    let forward = cur.session.is_forwarding();
                    attempt_started = Instant::now();
                    attempt = Some((Move::Better, Box::pin(async move { self.connect_first(&order, forward).await })));
                }
                result = async {
                    match attempt.as_mut() {
                        Some((_, pending)) => pending.await,
                        None => std::future::pending().await,
                    }
                }, if attempt.is_some() => {
                    let Some((why, _)) = attempt.take() else { continue };
                    let Ok(mut new) = result else { continue };
                    if why == Move::Better && new.uplink() >= cur.session.uplink() {
                        continue;
                    }
                    // The local signer may have gone away while the new session was opening.
                    if new.is_forwarding() && !cur.session.is_forwarding() {
                        let _ = new.cancel_forward().await;
                    }
                    let old = self.switch_to(&mut cur, new, stats, attempt_started.elapsed(), why);
                    (ping, missed_since) = (None, None);
                    // A dead path's session may not take a polite goodbye: do not wait on it.
                    match why {
                        Move::Better => old.close("moved to a preferred uplink").await,
                        Move::Failover => drop(tokio::spawn(old.close("moved away from a path that stopped answering"))),
                    }
                    self.report(&cur.session, stats);
                }
            }
        }
    }

    /// Make `new` the current session (with its end signal); returns the old one.
    fn switch_to(
        &self,
        cur: &mut Current<C::Session>,
        new: C::Session,
        stats: &mut Stats,
        took: Duration,
        why: Move,
    ) -> C::Session {
        stats.switches += 1;
        info!(
            from = %self.uplink_name(cur.session.uplink()),
            to = %self.uplink_name(new.uplink()),
            switches = stats.switches,
            took_ms = took.as_millis() as u64,
            "{}",
            why.reason()
        );
        std::mem::replace(cur, Current::new(new)).session
    }
}

#[cfg(test)]
mod tests;
