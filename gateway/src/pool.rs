//! The signer pool: signers in priority order, their health, and ordered failover.
//!
//! # Failover state machine (per signer)
//!
//! ```text
//!            1 success                 `rise` consecutive successes
//!  Unknown ─────────────▶ Up ◀──────────────────────────────── Down
//!     │                    │ `fall` failed probes, or one failed   ▲
//!     │ 1 failure          │ request (connect error, timeout,      │
//!     └────────────────────┴─ 5xx, bad signature) ────────────────┘
//! ```
//!
//! A request tries the `Up` signers in priority order, then the `Unknown` ones; `Down`
//! signers are skipped without spending a timeout on them, and a background probe brings
//! them back. When no signer is a candidate the request fails at once (503). Each attempt
//! is bounded by `request_timeout`, so a request's worst case is the number of candidates
//! times that; but an attempt also ends the moment its signer goes down (a probe times out,
//! its tunnel closes), so a hung or silently dead signer usually costs one probe interval
//! plus one probe timeout, not a whole `request_timeout`.
//!
//! How the bytes reach a signer is behind [`Connect`]: a TCP address, or an SSH tunnel. What
//! is spoken over them is HTTP, or octez's socket protocol for a signer made with
//! [`Signer::speaking_socket`] (`crate::socket::SocketClient` translates the same calls).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::HealthCheckConfig;
use crate::metrics::Metrics;
use crate::socket::SocketClient;
pub use crate::transport::{Connect, Io, TcpConnect};

/// Largest response body accepted from a signer.
const MAX_SIGNER_BODY: usize = 64 * 1024;
/// Idle keep-alive connections kept per signer.
const MAX_IDLE: usize = 32;

/// Why one attempt on one signer failed. `Copy + Eq` so tests can assert kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Could not open a stream or speak HTTP on it.
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// Answered 5xx.
    ServerError,
    /// Answered 2xx with a body that is not a valid signature for the key.
    BadSignature,
    /// A health probe or the tunnel broker took the signer down while the request waited.
    WentDown,
    /// The signer's queue was full (`max_queued_per_signer`): not held against its health.
    QueueFull,
    /// An answer that breaks the signer's protocol (a socket signer's undecodable frame).
    BadAnswer,
}

impl AttemptFailure {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptFailure::Connect => "connect_error",
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::ServerError => "server_error",
            AttemptFailure::BadSignature => "bad_signature",
            AttemptFailure::WentDown => "went_down",
            AttemptFailure::QueueFull => "queue_full",
            AttemptFailure::BadAnswer => "bad_answer",
        }
    }
}

/// Health as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not probed yet.
    Unknown,
    /// Serving.
    Up,
    /// Skipped until it passes `rise` probes.
    Down,
}

#[derive(Debug)]
struct Health {
    state: State,
    successes: u32,
    failures: u32,
    since: SystemTime,
    last_success: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
}

/// A signer's health and activity, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignerStatus {
    /// Configured name.
    pub name: String,
    /// Where it is reached.
    pub address: String,
    /// The protocol it speaks: `http` or `socket`.
    pub protocol: &'static str,
    /// Current state.
    pub state: State,
    /// Position in the priority order (0 = first).
    pub priority: usize,
    /// When the state last changed (RFC 3339).
    pub since: String,
    /// Last successful probe or request (RFC 3339).
    pub last_success: Option<String>,
    /// Last failure, with its time.
    pub last_error: Option<String>,
    /// When the last failure happened (RFC 3339).
    pub last_error_at: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One signer: its connector, a keep-alive connection pool and its health.
pub struct Signer {
    name: String,
    priority: usize,
    connector: Arc<dyn Connect>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Set for a signer that speaks octez's socket protocol rather than HTTP.
    socket: Option<SocketClient>,
    health: Mutex<Health>,
    /// Bumped each time the signer goes down, so requests in flight on it can move on at
    /// once instead of waiting out `request_timeout` (a health probe or a closed tunnel
    /// usually notices first).
    down_epoch: tokio::sync::watch::Sender<u64>,
    /// Body and time of the last successful health probe, so `GET /authorized_keys` (the
    /// default probe path) can be answered without a round trip to a Pi.
    last_probe: Mutex<Option<(tokio::time::Instant, Bytes)>>,
    /// Requests in flight on this signer at once (a Ledger signs one at a time; a burst must
    /// not become as many channels and connections to a Pi); the rest wait, boundedly.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Requests waiting for `in_flight`, and how many may.
    queued: std::sync::atomic::AtomicUsize,
    max_queued: usize,
}

/// Concurrency limits of one signer.
#[derive(Debug, Clone, Copy)]
pub struct SignerLimits {
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Requests waiting beyond that; more are refused (the next signer is asked).
    pub max_queued: usize,
}

impl Default for SignerLimits {
    fn default() -> Self {
        SignerLimits {
            max_in_flight: 16,
            max_queued: 256,
        }
    }
}

/// A complete answer from a signer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Whole body.
    pub body: Bytes,
}

impl Signer {
    /// A signer in position `priority` reached through `connector`, with default limits.
    pub fn new(name: impl Into<String>, priority: usize, connector: Arc<dyn Connect>) -> Signer {
        Signer::with_limits(name, priority, connector, SignerLimits::default())
    }

    /// A signer in position `priority` reached through `connector`, within `limits`.
    pub fn with_limits(
        name: impl Into<String>,
        priority: usize,
        connector: Arc<dyn Connect>,
        limits: SignerLimits,
    ) -> Signer {
        Signer {
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight.max(1))),
            queued: std::sync::atomic::AtomicUsize::new(0),
            max_queued: limits.max_queued,
            name: name.into(),
            priority,
            connector,
            idle: Mutex::new(Vec::new()),
            socket: None,
            down_epoch: tokio::sync::watch::Sender::new(0),
            last_probe: Mutex::new(None),
            health: Mutex::new(Health {
                state: State::Unknown,
                successes: 0,
                failures: 0,
                since: SystemTime::now(),
                last_success: None,
                last_error: None,
            }),
        }
    }

    /// The same signer, speaking octez's socket protocol instead of HTTP.
    pub fn speaking_socket(mut self) -> Signer {
        self.socket = Some(SocketClient::default());
        self
    }

    /// Configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Current health state.
    pub fn state(&self) -> State {
        self.lock_health().state
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A poisoned lock only means a panic elsewhere while holding it; the data is
        // plain counters, still meaningful.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send one request and read the whole answer, reusing an idle connection when there is
    /// one. No timeout here: callers bound the whole attempt.
    pub async fn send(&self, method: Method, path_and_query: &str, body: Bytes) -> Result<Answer, AttemptFailure> {
        if let Some(socket) = &self.socket {
            return socket.send(&*self.connector, &method, path_and_query, &body).await;
        }
        // A reused connection may have been closed by the signer while idle; its error
        // says nothing about the signer's health, so try once more on a fresh one.
        if let Some(sender) = self.take_idle() {
            if let Ok(answer) = self.exchange(sender, &method, path_and_query, body.clone()).await {
                return Ok(answer);
            }
        }
        let sender = self.open().await?;
        self.exchange(sender, &method, path_and_query, body).await
    }

    /// Wait for one of the signer's in-flight places, unless `max_queued` requests wait
    /// already.
    async fn admit(&self, metrics: &Metrics) -> Result<tokio::sync::OwnedSemaphorePermit, AttemptFailure> {
        use std::sync::atomic::Ordering;
        if let Ok(p) = Arc::clone(&self.in_flight).try_acquire_owned() {
            return Ok(p);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            metrics.signer_queue_full.with_label_values(&[self.name.as_str()]).inc();
            return Err(AttemptFailure::QueueFull);
        }
        let gauge = metrics.signer_queued.with_label_values(&[self.name.as_str()]);
        gauge.inc();
        // Decrements however the wait ends (a permit, the attempt's timeout, a drop).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize, prometheus::IntGauge);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
                self.1.dec();
            }
        }
        let _waiting = Waiting(&self.queued, gauge);
        Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| AttemptFailure::Connect)
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, AttemptFailure> {
        let io = self.connector.connect().await.map_err(|e| {
            debug!(signer = %self.name, error = %e, "connect failed");
            AttemptFailure::Connect
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|_| AttemptFailure::Connect)?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(signer = %name, error = %e, "signer connection ended");
            }
        });
        Ok(sender)
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        method: &Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Answer, AttemptFailure> {
        sender.ready().await.map_err(|_| AttemptFailure::Connect)?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .header(http::header::HOST, "signer")
            .header(http::header::ACCEPT, "application/json");
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body)).map_err(|_| AttemptFailure::Connect)?;
        let resp: Response<hyper::body::Incoming> =
            sender.send_request(req).await.map_err(|_| AttemptFailure::Connect)?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_SIGNER_BODY)
            .collect()
            .await
            .map_err(|_| AttemptFailure::Connect)?
            .to_bytes();
        // The answer was read whole, so the connection is ready for the next request.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
        Ok(Answer { status, body })
    }

    /// Record a success (probe or request).
    pub fn record_success(&self, rise: u32, metrics: &Metrics) {
        let mut h = self.lock_health();
        h.successes = h.successes.saturating_add(1);
        h.failures = 0;
        h.last_success = Some(SystemTime::now());
        let up = match h.state {
            State::Unknown => true,
            State::Down => h.successes >= rise,
            State::Up => false,
        };
        if up {
            self.transition(&mut h, State::Up, metrics);
        }
    }

    /// Record a failure. `immediate` takes the signer down at once (a failed request);
    /// otherwise `fall` consecutive failures do (probes).
    pub fn record_failure(&self, error: &str, fall: u32, immediate: bool, metrics: &Metrics) {
        let mut h = self.lock_health();
        h.failures = h.failures.saturating_add(1);
        h.successes = 0;
        h.last_error = Some((SystemTime::now(), error.to_string()));
        let down = match h.state {
            State::Unknown => true,
            State::Up => immediate || h.failures >= fall,
            State::Down => false,
        };
        if down {
            self.transition(&mut h, State::Down, metrics);
            // Connections to a failing signer are suspect: start afresh when it returns.
            self.reset_connections();
        }
        // Whatever it answered before no longer stands for it.
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn transition(&self, h: &mut Health, to: State, metrics: &Metrics) {
        let from = h.state;
        h.state = to;
        if to == State::Down {
            self.down_epoch.send_modify(|e| *e += 1);
        }
        h.since = SystemTime::now();
        let up = i64::from(to == State::Up);
        metrics.signer_up.with_label_values(&[self.name.as_str()]).set(up);
        let label = if to == State::Up { "up" } else { "down" };
        metrics
            .signer_transitions
            .with_label_values(&[self.name.as_str(), label])
            .inc();
        match to {
            State::Up => info!(signer = %self.name, ?from, "signer is up"),
            _ => warn!(
                signer = %self.name,
                ?from,
                error = h.last_error.as_ref().map(|e| e.1.as_str()).unwrap_or(""),
                "signer is down"
            ),
        }
    }

    /// Forget idle connections (they ran over a session that is gone or replaced).
    pub fn reset_connections(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(socket) = &self.socket {
            socket.reset();
        }
    }

    /// Snapshot for `/status`.
    pub fn status(&self) -> SignerStatus {
        let h = self.lock_health();
        SignerStatus {
            name: self.name.clone(),
            address: self.connector.describe(),
            protocol: if self.socket.is_some() { "socket" } else { "http" },
            state: h.state,
            priority: self.priority,
            since: rfc3339(h.since),
            last_success: h.last_success.map(rfc3339),
            last_error: h.last_error.as_ref().map(|e| e.1.clone()),
            last_error_at: h.last_error.as_ref().map(|e| rfc3339(e.0)),
        }
    }
}

/// What a caller decides about an answer: keep it, or move to the next signer.
pub enum Verdict<T> {
    /// Final: return this to the client.
    Done(T),
    /// The signer failed; try the next one.
    Failed(AttemptFailure, String),
    /// The signer does not have what was asked (e.g. 404 for a key): try the next one
    /// without holding it against the signer's health.
    NotHere(T),
}

/// Why no signer produced an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Every signer is down (or was tried and failed).
    NoSigner {
        /// One line per attempt, for the error trace.
        attempts: Vec<String>,
    },
}

/// Connects a tunnel broker's route changes to the pool without a reference cycle.
pub struct PoolObserver(pub std::sync::Weak<Pool>);

impl crate::transport::RouteObserver for PoolObserver {
    fn route_changed(&self, signer: &str, up: bool, reason: &str) {
        if let Some(pool) = self.0.upgrade() {
            pool.route_changed(signer, up, reason);
        }
    }
}

/// The ordered signers and their health checks.
pub struct Pool {
    signers: Vec<Arc<Signer>>,
    request_timeout: Duration,
    health: HealthCheckConfig,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// A pool over `signers` (already in priority order).
    pub fn new(
        signers: Vec<Arc<Signer>>,
        request_timeout: Duration,
        health: HealthCheckConfig,
        metrics: Arc<Metrics>,
    ) -> Pool {
        for s in &signers {
            metrics.signer_up.with_label_values(&[s.name()]).set(0);
        }
        Pool {
            signers,
            request_timeout,
            health,
            metrics,
        }
    }

    /// Signers in priority order.
    pub fn signers(&self) -> &[Arc<Signer>] {
        &self.signers
    }

    /// True when at least one signer is up.
    pub fn any_up(&self) -> bool {
        self.signers.iter().any(|s| s.state() == State::Up)
    }

    /// Candidates for a request: up signers in priority order, then unknown ones.
    fn candidates(&self) -> Vec<Arc<Signer>> {
        let mut up: Vec<_> = self
            .signers
            .iter()
            .filter(|s| s.state() == State::Up)
            .cloned()
            .collect();
        up.extend(self.signers.iter().filter(|s| s.state() == State::Unknown).cloned());
        up
    }

    /// Send a request to the first candidate that gives a final answer, failing over on
    /// connect errors, timeouts, 5xx and whatever `judge` calls a failure.
    ///
    /// Returns the serving signer's name with the judged answer. A `NotHere` answer from
    /// every candidate returns the last one.
    pub async fn request<T, F>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        mut judge: F,
    ) -> Result<(String, T), PoolError>
    where
        F: FnMut(&Answer) -> Verdict<T>,
    {
        let mut attempts = Vec::new();
        let mut not_here = None;
        let candidates = self.candidates();
        for (i, signer) in candidates.iter().enumerate() {
            let started = Instant::now();
            let mut down = signer.down_epoch.subscribe();
            down.mark_unchanged();
            let admitted = std::sync::atomic::AtomicBool::new(false);
            let attempt = tokio::time::timeout(self.request_timeout, async {
                let _permit = signer.admit(&self.metrics).await?;
                admitted.store(true, std::sync::atomic::Ordering::Relaxed);
                signer.send(method.clone(), path_and_query, body.clone()).await
            });
            // Resending the same bytes elsewhere is safe: the mark is recorded for exactly
            // these bytes, so at worst both signers sign the same payload.
            let sent = tokio::select! {
                sent = attempt => sent.map_err(|_| AttemptFailure::Timeout),
                _ = down.changed() => Err(AttemptFailure::WentDown),
            };
            let verdict = match sent {
                Err(AttemptFailure::WentDown) => Verdict::Failed(
                    AttemptFailure::WentDown,
                    "went down while the request was in flight".to_string(),
                ),
                // Timed out still waiting for a place: the signer is busy, not broken.
                Err(_) if !admitted.load(std::sync::atomic::Ordering::Relaxed) => Verdict::Failed(
                    AttemptFailure::QueueFull,
                    format!("still queued after {:?}: the signer is busy", self.request_timeout),
                ),
                Err(_) => Verdict::Failed(
                    AttemptFailure::Timeout,
                    format!("no answer within {:?}", self.request_timeout),
                ),
                Ok(Err(f)) => Verdict::Failed(f, f.as_str().replace('_', " ")),
                Ok(Ok(answer)) if answer.status.is_server_error() => Verdict::Failed(
                    AttemptFailure::ServerError,
                    format!(
                        "answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body).trim()
                    ),
                ),
                Ok(Ok(answer)) => judge(&answer),
            };
            let name = signer.name();
            match verdict {
                Verdict::Done(t) => {
                    self.metrics.signer_attempts.with_label_values(&[name, "ok"]).inc();
                    signer.record_success(self.health.rise, &self.metrics);
                    return Ok((name.to_string(), t));
                }
                Verdict::NotHere(t) => {
                    self.metrics
                        .signer_attempts
                        .with_label_values(&[name, "not_here"])
                        .inc();
                    signer.record_success(self.health.rise, &self.metrics);
                    not_here = Some((name.to_string(), t));
                }
                Verdict::Failed(kind, msg) => {
                    self.metrics
                        .signer_attempts
                        .with_label_values(&[name, kind.as_str()])
                        .inc();
                    warn!(
                        signer = name,
                        failure = kind.as_str(),
                        error = %msg,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "signer attempt failed"
                    );
                    // Already down, with the reason that took it down; keep that one. A full
                    // queue says the signer is busy, not broken.
                    if kind != AttemptFailure::WentDown && kind != AttemptFailure::QueueFull {
                        signer.record_failure(&msg, self.health.fall, true, &self.metrics);
                    }
                    if i + 1 < candidates.len() {
                        self.metrics.failovers.with_label_values(&[name]).inc();
                    }
                    attempts.push(format!("{name}: {msg}"));
                }
            }
        }
        if let Some(found) = not_here {
            return Ok(found);
        }
        if candidates.is_empty() {
            attempts.push("every signer is down".to_string());
        }
        Err(PoolError::NoSigner { attempts })
    }

    /// Start one health-check task per signer, stopped by `cancel`.
    pub fn spawn_health_checks(self: &Arc<Self>, tracker: &TaskTracker, cancel: CancellationToken) {
        for signer in &self.signers {
            let pool = Arc::clone(self);
            let signer = Arc::clone(signer);
            let cancel = cancel.clone();
            let span = tracing::info_span!("health", signer = %signer.name());
            tracker.spawn(
                async move {
                    let mut tick = tokio::time::interval(pool.health.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        // A probe of a slow signer must not hold up the stop.
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = pool.probe(&signer) => {}
                        }
                    }
                }
                .instrument(span),
            );
        }
    }

    /// One probe of one signer.
    pub async fn probe(&self, signer: &Signer) {
        let hc = &self.health;
        let result = tokio::time::timeout(hc.timeout, signer.send(Method::GET, &hc.path, Bytes::new())).await;
        match result {
            Ok(Ok(a)) if a.status.is_success() => {
                signer.record_success(hc.rise, &self.metrics);
                *signer.last_probe.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((tokio::time::Instant::now(), a.body));
            }
            Ok(Ok(a)) => signer.record_failure(
                &format!("health check answered {}", a.status),
                hc.fall,
                false,
                &self.metrics,
            ),
            Ok(Err(f)) => {
                signer.record_failure(&format!("health check: {}", f.as_str()), hc.fall, false, &self.metrics)
            }
            Err(_) => signer.record_failure(
                &format!("health check: no answer within {:?}", hc.timeout),
                hc.fall,
                false,
                &self.metrics,
            ),
        }
    }

    /// A tunnel's route changed: when it went away, take the signer down at once (the next
    /// request goes straight to the next signer); when a session came up, probe it right
    /// away instead of waiting for the next interval.
    pub fn route_changed(self: &Arc<Self>, name: &str, up: bool, reason: &str) {
        let Some(signer) = self.signers.iter().find(|s| s.name() == name).cloned() else {
            return;
        };
        signer.reset_connections();
        if !up {
            signer.record_failure(&format!("tunnel: {reason}"), self.health.fall, true, &self.metrics);
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            for _ in 0..pool.health.rise {
                pool.probe(&signer).await;
                if signer.state() == State::Up {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// The body of the last health probe of the signer a request would go to first, when
    /// the probe asks `path` and answered within two probe intervals; `None` otherwise (not
    /// the probe's path, nobody up, a probe missed), and the caller asks a signer.
    pub fn fresh_probe_answer(&self, path: &str) -> Option<(String, Bytes)> {
        if path != self.health.path {
            return None;
        }
        let first = self.candidates().into_iter().next()?;
        if first.state() != State::Up {
            return None;
        }
        let last = first.last_probe.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, body)) if at.elapsed() <= self.health.interval * 2 => Some((first.name.clone(), body.clone())),
            _ => None,
        }
    }

    /// Status of every signer, in priority order.
    pub fn status(&self) -> Vec<SignerStatus> {
        self.signers.iter().map(|s| s.status()).collect()
    }

    /// The signers' names by state, for logs.
    pub fn summary(&self) -> HashMap<String, State> {
        self.signers.iter().map(|s| (s.name().to_string(), s.state())).collect()
    }
}

/// The failover state machine, in process and on paused time: signers are HTTP servers at
/// the other end of an in-memory pipe ([`tokio::io::duplex`]) reached through the same
/// [`Connect`] seam as TCP and tunnels, with behaviours switched at will. Milliseconds of
/// real time; timings are asserted exactly on the paused clock.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Behaviour, Fake};

    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

    fn health(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/authorized_keys".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise,
            fall,
        }
    }

    fn pool(fakes: &[&Fake], rise: u32, fall: u32) -> Arc<Pool> {
        let signers = fakes
            .iter()
            .enumerate()
            .map(|(i, f)| Arc::new(Signer::new(format!("s{i}"), i, Arc::new((*f).clone()))))
            .collect();
        let metrics = Arc::new(Metrics::new().unwrap());
        Arc::new(Pool::new(signers, REQUEST_TIMEOUT, health(rise, fall), metrics))
    }

    /// A pool whose signers were each probed once (up, if they answer).
    async fn probed(fakes: &[&Fake], rise: u32, fall: u32) -> Arc<Pool> {
        let pool = pool(fakes, rise, fall);
        for s in pool.signers() {
            pool.probe(s).await;
        }
        pool
    }

    /// A request that any answer ends; returns who answered.
    async fn ask(pool: &Pool) -> Result<String, PoolError> {
        pool.request(Method::GET, "/x", Bytes::new(), |a| Verdict::Done(a.status))
            .await
            .map(|(name, _)| name)
    }

    #[tokio::test(start_paused = true)]
    async fn probes_bring_signers_up_after_rise_and_down_after_fall() {
        let f = Fake::new();
        let pool = pool(&[&f], 2, 2);
        let s = Arc::clone(&pool.signers()[0]);
        assert_eq!(s.state(), State::Unknown);
        pool.probe(&s).await;
        assert_eq!(s.state(), State::Up, "the first good probe of an unknown signer");
        f.set(Behaviour::Status(500));
        pool.probe(&s).await;
        assert_eq!(s.state(), State::Up, "one failure of fall 2");
        pool.probe(&s).await;
        assert_eq!(s.state(), State::Down);
        f.set(Behaviour::Ok);
        pool.probe(&s).await;
        assert_eq!(s.state(), State::Down, "one success of rise 2");
        pool.probe(&s).await;
        assert_eq!(s.state(), State::Up);
        // A probe with no answer counts as a failure, after exactly the probe timeout.
        f.set(Behaviour::Hang);
        let t = tokio::time::Instant::now();
        pool.probe(&s).await;
        assert_eq!(t.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_requests_move_on_and_take_the_signer_down_at_once() {
        let (a, b) = (Fake::new(), Fake::new());
        let pool = probed(&[&a, &b], 2, 3).await;
        a.set(Behaviour::Status(503));
        assert_eq!(ask(&pool).await.unwrap(), "s1", "a 5xx fails over within the request");
        assert_eq!(
            pool.signers()[0].state(),
            State::Down,
            "one failed request is enough (fall applies to probes)"
        );
        // Down signers are skipped without spending anything on them.
        let before = a.requests();
        assert_eq!(ask(&pool).await.unwrap(), "s1");
        assert_eq!(a.requests(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_moves_on_the_moment_its_signer_goes_down() {
        let (a, b) = (Fake::new(), Fake::new());
        let pool = probed(&[&a, &b], 1, 1).await;
        a.set(Behaviour::Hang);
        let started = tokio::time::Instant::now();
        let request = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { ask(&pool).await })
        };
        // 200 ms later a probe (or a closed tunnel) takes the primary down.
        tokio::time::sleep(Duration::from_millis(200)).await;
        pool.signers()[0].record_failure("probe: no answer", 1, false, &pool.metrics);
        assert_eq!(request.await.unwrap().unwrap(), "s1");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "not a whole request_timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_signer_costs_one_request_timeout_then_the_next_answers() {
        let (a, b) = (Fake::new(), Fake::new());
        let pool = probed(&[&a, &b], 1, 1).await;
        a.set(Behaviour::Hang);
        let started = tokio::time::Instant::now();
        assert_eq!(ask(&pool).await.unwrap(), "s1");
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
        assert_eq!(pool.signers()[0].state(), State::Down);
    }

    #[tokio::test(start_paused = true)]
    async fn all_down_fails_fast_and_recovery_needs_rise_probes() {
        let (a, b) = (Fake::new(), Fake::new());
        let pool = pool(&[&a, &b], 2, 1);
        for f in [&a, &b] {
            f.set(Behaviour::Status(500));
        }
        for s in pool.signers() {
            pool.probe(s).await;
        }
        let started = tokio::time::Instant::now();
        let e = ask(&pool).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO, "no signer to try: at once");
        let PoolError::NoSigner { attempts } = e;
        assert_eq!(attempts, vec!["every signer is down".to_string()]);
        b.set(Behaviour::Ok);
        let s1 = Arc::clone(&pool.signers()[1]);
        pool.probe(&s1).await;
        assert!(ask(&pool).await.is_err(), "one good probe of rise 2");
        pool.probe(&s1).await;
        assert_eq!(ask(&pool).await.unwrap(), "s1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_signer_queues_within_its_cap_and_is_not_taken_down() {
        let a = Fake::new();
        let signer = Arc::new(Signer::with_limits(
            "s0",
            0,
            Arc::new(a.clone()),
            SignerLimits {
                max_in_flight: 1,
                max_queued: 1,
            },
        ));
        let metrics = Arc::new(Metrics::new().unwrap());
        let pool = Arc::new(Pool::new(vec![signer], REQUEST_TIMEOUT, health(1, 1), metrics));
        pool.probe(&pool.signers()[0]).await;
        a.set(Behaviour::Hang);
        let spawn = |pool: &Arc<Pool>| {
            let pool = Arc::clone(pool);
            tokio::spawn(async move { ask(&pool).await })
        };
        let (first, queued) = (spawn(&pool), spawn(&pool));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A third finds the one place taken and the queue full: refused at once, and the
        // signer is not held responsible.
        let third = ask(&pool).await.unwrap_err();
        assert!(format!("{third:?}").contains("queue full"), "{third:?}");
        assert_eq!(pool.signers()[0].state(), State::Up);
        // The first times out (the signer hangs) and takes it down; the queued one, out of
        // time at that same moment, fails too without ever being sent.
        assert!(first.await.unwrap().is_err());
        assert!(queued.await.unwrap().is_err());
        assert_eq!(a.requests(), 2, "the probe and the first request only");
    }
}
