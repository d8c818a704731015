//! The SSH tunnel broker: Pi signers connect in with `ssh -R` semantics, and the gateway
//! routes to them by identity instead of binding ports.
//!
//! - Only public-key authentication, only listed keys; each key belongs to one signer.
//! - A `tcpip-forward` request binds nothing: it registers the session as the route to its
//!   signer. A stale session can therefore never block a reconnect ("Address in use" with
//!   sshd): the newest session of a signer wins at once, and the old one is disconnected and
//!   its socket shut down after a short grace (russh's `disconnect` alone leaves a dead peer
//!   lingering until the inactivity timeout).
//! - Everything else is refused: session channels (so no shell, exec, subsystem, pty or agent),
//!   `direct-tcpip` (it would let a Pi into the cluster), X11, streamlocal.
//! - Dead links: server keepalives, an inactivity timeout, and TCP_USER_TIMEOUT on the socket
//!   (keepalives cannot fire while a write to a dead peer is blocked).
//! - Requests reach the Pi through a `forwarded-tcpip` channel opened on its session
//!   ([`TunnelConnect`]); the pool keeps those channels open between requests.
//!
//! We own the accept loop (russh's `run_on_socket` stops at the first accept error and does
//! not track sessions): pre-authentication connections are capped and get a deadline.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::{MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

mod connect;
mod handler;
mod host_key;

pub use connect::TunnelConnect;
use handler::{Admitted, SessionHandler};
pub use host_key::load_or_create_host_key;

use crate::config::SshConfig;
use crate::limits::{Counts, LogLimiter, SourceCounts};
use crate::metrics::Metrics;
pub use crate::transport::RouteObserver;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The host key file exists but cannot be used.
    #[error("ssh host key {path}: {message}")]
    HostKey {
        /// File named by `ssh.host_key`.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The SSH port could not be bound.
    #[error("cannot listen on {addr} (ssh.listen): {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The session currently carrying a signer's forward.
struct Route {
    session: u64,
    handle: russh::server::Handle,
    /// Address and port the client asked to have forwarded; channels name them so the
    /// client maps them to its local target.
    forward: (String, u32),
    peer: SocketAddr,
    since: SystemTime,
    socket: Arc<std::net::TcpStream>,
}

/// What `/status` shows of one tunnel signer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TunnelStatus {
    /// Signer name.
    pub signer: String,
    /// A session currently carries its forward.
    pub connected: bool,
    /// Peer address of that session.
    pub peer: Option<String>,
    /// When that session registered its forward (RFC 3339).
    pub connected_since: Option<String>,
    /// When a newer session last replaced an older one (RFC 3339).
    pub last_replacement: Option<String>,
    /// Sessions replaced since start.
    pub replacements: u64,
    /// When and why the last session ended.
    pub last_disconnect: Option<String>,
}

#[derive(Default)]
struct TunnelInfo {
    last_replacement: Option<SystemTime>,
    replacements: u64,
    recent_replacements: Vec<Instant>,
    last_storm_log: Option<Instant>,
    last_disconnect: Option<(SystemTime, String)>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The broker: authorized keys, the route table and the SSH server settings.
pub struct Broker {
    settings: SshConfig,
    server_config: Arc<russh::server::Config>,
    fingerprint: String,
    /// Authorized keys (wire encoding) → signer name.
    keys: HashMap<Vec<u8>, String>,
    signers: Vec<String>,
    routes: Mutex<HashMap<String, Route>>,
    info: Mutex<HashMap<String, TunnelInfo>>,
    observer: OnceLock<Arc<dyn RouteObserver>>,
    next_session: AtomicU64,
    /// Every live session's socket, routed or not (a session holding no forward too), so a
    /// shutdown can end them all at once.
    sessions: Mutex<HashMap<u64, Arc<std::net::TcpStream>>>,
    auth_log: LogLimiter,
    /// Requests refused on authenticated sessions, logged at a bounded rate.
    refusals_log: LogLimiter,
    /// Places among authenticated sessions, all signers together.
    authenticated: Arc<Semaphore>,
    /// Authenticated sessions per signer.
    sessions_per_signer: Arc<Counts<String>>,
    metrics: Arc<Metrics>,
}

fn key_bytes(key: &PublicKey) -> Option<Vec<u8>> {
    key.to_bytes().ok()
}

impl Broker {
    /// A broker for `signers` (name and authorized keys) with the given host key.
    pub fn new(
        settings: SshConfig,
        host_key: PrivateKey,
        signers: Vec<(String, Vec<PublicKey>)>,
        metrics: Arc<Metrics>,
    ) -> Broker {
        let fingerprint = host_key.public_key().fingerprint(HashAlg::Sha256).to_string();
        let mut keys = HashMap::new();
        for (name, list) in &signers {
            for k in list {
                if let Some(b) = key_bytes(k) {
                    keys.insert(b, name.clone());
                }
            }
            metrics.tunnel_connected.with_label_values(&[name.as_str()]).set(0);
        }
        let server_config = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // OpenSSH clients first try "none": answering it slowly would slow every
            // reconnect. Failed key attempts still get the usual delay.
            auth_rejection_time_initial: Some(Duration::ZERO),
            auth_rejection_time: Duration::from_millis(500),
            max_auth_attempts: 6,
            keys: vec![host_key],
            inactivity_timeout: Some(settings.inactivity_timeout),
            keepalive_interval: Some(settings.keepalive_interval),
            keepalive_max: settings.keepalive_max,
            nodelay: true,
            ..Default::default()
        };
        let max_sessions = settings.max_sessions;
        Broker {
            settings,
            server_config: Arc::new(server_config),
            fingerprint,
            keys,
            signers: signers.into_iter().map(|(n, _)| n).collect(),
            routes: Mutex::new(HashMap::new()),
            info: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
            next_session: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            auth_log: LogLimiter::default(),
            refusals_log: LogLimiter::default(),
            authenticated: Arc::new(Semaphore::new(max_sessions)),
            sessions_per_signer: Arc::new(Counts::default()),
            metrics,
        }
    }

    /// SHA256 fingerprint of the host key, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Who to tell when routes change (the pool). Set once.
    pub fn set_observer(&self, observer: Arc<dyn RouteObserver>) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, signer: &str, up: bool, reason: &str) {
        self.metrics
            .tunnel_connected
            .with_label_values(&[signer])
            .set(i64::from(up));
        if let Some(o) = self.observer.get() {
            o.route_changed(signer, up, reason);
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self) -> std::sync::MutexGuard<'_, HashMap<String, TunnelInfo>> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Status of every tunnel signer, in configuration order.
    pub fn status(&self) -> Vec<TunnelStatus> {
        let routes = self.routes();
        let info = self.info();
        self.signers
            .iter()
            .map(|name| {
                let r = routes.get(name);
                let i = info.get(name);
                TunnelStatus {
                    signer: name.clone(),
                    connected: r.is_some(),
                    peer: r.map(|r| r.peer.to_string()),
                    connected_since: r.map(|r| rfc3339(r.since)),
                    last_replacement: i.and_then(|i| i.last_replacement).map(rfc3339),
                    replacements: i.map_or(0, |i| i.replacements),
                    last_disconnect: i
                        .and_then(|i| i.last_disconnect.as_ref())
                        .map(|(t, why)| format!("{} {why}", rfc3339(*t))),
                }
            })
            .collect()
    }

    /// The connector the pool uses for `signer`.
    pub fn connector(self: &Arc<Self>, signer: &str) -> TunnelConnect {
        TunnelConnect {
            broker: Arc::clone(self),
            signer: signer.to_string(),
        }
    }

    /// Bind `ssh.listen`.
    pub async fn bind(&self) -> Result<TcpListener, BrokerError> {
        let addr = self.settings.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })
    }

    /// Accept SSH connections until `cancel` fires; then disconnect every session.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tracker: TaskTracker, cancel: CancellationToken) {
        let startups = self.settings.max_startups;
        let unauthenticated = Arc::new(Semaphore::new(startups.full));
        let sources = Arc::new(SourceCounts::default());
        let mut backoff = Duration::from_millis(10);
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => { backoff = Duration::from_millis(10); a }
                    Err(e) => {
                        warn!(error = %e, "ssh accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let Some(admitted) = self.admit(peer, &unauthenticated, &sources) else {
                continue;
            };
            let broker = Arc::clone(&self);
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!("ssh", session = id, %peer);
            tracker.spawn(broker.run_session(id, stream, peer, admitted).instrument(span));
        }
        // Sessions stay up: requests still in flight through them finish first, then the
        // gateway calls `close_all`.
    }

    /// End every SSH session at once, routed or not: a polite disconnect to the routed ones
    /// (bounded, all in parallel), then every socket shut down, which ends even a session
    /// whose peer is silent or that never asked for a forward.
    pub async fn close_all(&self) {
        let routes: Vec<_> = self.routes().drain().collect();
        let goodbyes = routes.iter().map(|(name, route)| {
            info!(signer = %name, "closing tunnel session: gateway shutting down");
            tokio::time::timeout(
                Duration::from_millis(500),
                route.handle.disconnect(
                    russh::Disconnect::ByApplication,
                    "gateway shutting down".into(),
                    "".into(),
                ),
            )
        });
        futures_util::future::join_all(goodbyes).await;
        let sockets: Vec<_> = self.sessions().values().cloned().collect();
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<std::net::TcpStream>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admission before authentication, as OpenSSH's `MaxStartups` plus a per-source cap:
    /// a connection from a source with `max_unauthenticated_per_source` open is closed; past
    /// `start` unauthenticated connections, a new one is dropped at random with a rising
    /// probability, so a flood cannot keep every place and a Pi still gets in.
    fn admit(
        &self,
        peer: SocketAddr,
        unauthenticated: &Arc<Semaphore>,
        sources: &Arc<SourceCounts>,
    ) -> Option<Admitted> {
        let refuse = |reason: &'static str, what: &str| {
            self.metrics.ssh_sessions.with_label_values(&[reason]).inc();
            self.log_auth_failure(peer, what);
        };
        let Some(source) = sources.enter(peer.ip(), self.settings.max_unauthenticated_per_source) else {
            refuse(
                "rejected_per_source",
                "too many unauthenticated connections from this address: closed",
            );
            return None;
        };
        let startups = self.settings.max_startups;
        let open = startups.full - unauthenticated.available_permits();
        let p = startups.drop_probability(open);
        if p > 0.0 && rand::random::<f64>() < p {
            let reason = if p >= 1.0 {
                "rejected_too_many_unauthenticated"
            } else {
                "rejected_early_drop"
            };
            refuse(reason, "too many unauthenticated connections: closed");
            return None;
        }
        let Ok(permit) = Arc::clone(unauthenticated).try_acquire_owned() else {
            refuse(
                "rejected_too_many_unauthenticated",
                "too many unauthenticated connections: closed",
            );
            return None;
        };
        Some(Admitted {
            _permit: permit,
            _source: source,
        })
    }

    fn log_auth_failure(&self, peer: SocketAddr, what: &str) {
        let allowed = self.auth_log.allow();
        if let Some(suppressed) = allowed {
            warn!(%peer, suppressed, "ssh: {what}");
        }
    }

    fn tune_socket(&self, stream: &TcpStream) {
        let sock = socket2::SockRef::from(stream);
        if let Err(e) = sock.set_tcp_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Err(e) = sock.set_tcp_user_timeout(Some(self.settings.tcp_user_timeout)) {
            debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }

    async fn run_session(self: Arc<Self>, id: u64, stream: TcpStream, peer: SocketAddr, admitted: Admitted) {
        // A client sends its banner at once; one that says nothing holds a place for nothing.
        if tokio::time::timeout(self.settings.banner_timeout, stream.readable())
            .await
            .is_err()
        {
            self.metrics
                .ssh_sessions
                .with_label_values(&["rejected_banner_timeout"])
                .inc();
            self.log_auth_failure(peer, "no SSH banner in time: closed");
            return;
        }
        self.tune_socket(&stream);
        // Keep a second handle on the socket: shutting it down is the only sure way to end a
        // session whose peer went silent (replacement, auth deadline).
        let socket = match stream.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
            Ok((clone, s)) => match TcpStream::from_std(s) {
                Ok(stream) => (Arc::new(clone), stream),
                Err(e) => return warn!(error = %e, "cannot register the ssh socket"),
            },
            Err(e) => return warn!(error = %e, "cannot duplicate the ssh socket"),
        };
        let (socket, stream) = socket;
        self.sessions().insert(id, Arc::clone(&socket));
        let (authed_tx, authed_rx) = oneshot::channel();
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = SessionHandler {
            broker: Arc::clone(&self),
            id,
            peer,
            signer: None,
            admitted: Some(admitted),
            session_slots: None,
            authed: Some(authed_tx),
            socket: Arc::clone(&socket),
            forwarded: None,
            rejected: None,
            timed_out: Arc::clone(&timed_out),
        };
        let deadline = self.settings.auth_timeout;
        let watchdog_socket = Arc::clone(&socket);
        let watchdog_flag = Arc::clone(&timed_out);
        // Handshake and authentication must finish within the deadline.
        let watchdog = tokio::spawn(async move {
            if tokio::time::timeout(deadline, authed_rx).await.is_err() {
                watchdog_flag.store(true, Ordering::Relaxed);
                debug!("no authentication within {deadline:?}: closing");
                let _ = watchdog_socket.shutdown(Shutdown::Both);
            }
        });
        let result = match russh::server::run_stream(Arc::clone(&self.server_config), stream, handler).await {
            Ok(session) => session.await,
            Err(e) => Err(e),
        };
        watchdog.abort();
        let reason = match &result {
            Ok(()) => "closed".to_string(),
            Err(russh::Error::KeepaliveTimeout) => "keepalive timeout".to_string(),
            Err(russh::Error::InactivityTimeout) => "inactivity timeout".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = socket.shutdown(Shutdown::Both);
        self.sessions().remove(&id);
        self.session_ended(id, &reason);
    }

    /// Remove the route if this session still holds it.
    fn session_ended(&self, id: u64, reason: &str) {
        let mut routes = self.routes();
        let Some(name) = routes.iter().find(|(_, r)| r.session == id).map(|(n, _)| n.clone()) else {
            debug!(reason, "ssh session ended");
            return;
        };
        routes.remove(&name);
        drop(routes);
        if reason == "keepalive timeout" {
            self.metrics
                .tunnel_keepalive_timeouts
                .with_label_values(&[name.as_str()])
                .inc();
        }
        self.info().entry(name.clone()).or_default().last_disconnect = Some((SystemTime::now(), reason.to_string()));
        warn!(signer = %name, reason, "tunnel down");
        self.notify(&name, false, reason);
    }

    /// Register `route` for `signer`; the newest session wins.
    fn register(&self, signer: &str, route: Route) {
        let session = route.session;
        let peer = route.peer;
        let old = self.routes().insert(signer.to_string(), route);
        match old {
            Some(old) if old.session != session => {
                self.metrics.tunnel_replacements.with_label_values(&[signer]).inc();
                let flapping = {
                    let mut info = self.info();
                    let i = info.entry(signer.to_string()).or_default();
                    i.replacements += 1;
                    i.last_replacement = Some(SystemTime::now());
                    i.recent_replacements.retain(|t| t.elapsed() < Duration::from_secs(60));
                    i.recent_replacements.push(Instant::now());
                    i.recent_replacements.len() as u32 > self.settings.max_replacements_per_minute
                };
                if flapping {
                    self.metrics
                        .tunnel_replacement_storms
                        .with_label_values(&[signer])
                        .inc();
                    // One error line a minute is enough to page someone; the metric counts all.
                    let due = {
                        let mut info = self.info();
                        let i = info.entry(signer.to_string()).or_default();
                        let due = i.last_storm_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                        if due {
                            i.last_storm_log = Some(Instant::now());
                        }
                        due
                    };
                    if due {
                        error!(
                            signer,
                            new_peer = %peer,
                            old_peer = %old.peer,
                            "tunnel sessions keep replacing each other: are two live devices sharing one key?"
                        );
                    }
                } else {
                    warn!(signer, new_peer = %peer, old_peer = %old.peer, "newer session replaces the tunnel");
                }
                tokio::spawn(reap(old));
            }
            _ => info!(signer, %peer, "tunnel up"),
        }
        self.notify(signer, true, "tunnel up");
    }

    fn unregister(&self, signer: &str, session: u64, reason: &str) {
        let mut routes = self.routes();
        if routes.get(signer).is_some_and(|r| r.session == session) {
            routes.remove(signer);
            drop(routes);
            info!(signer, reason, "tunnel route withdrawn");
            self.notify(signer, false, reason);
        }
    }
}

/// Close a replaced session: ask politely, then shut its socket down so a dead peer cannot
/// linger until the inactivity timeout.
async fn reap(old: Route) {
    let polite = old.handle.disconnect(
        russh::Disconnect::ByApplication,
        "replaced by a newer session of the same signer".into(),
        "".into(),
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), polite).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = old.socket.shutdown(Shutdown::Both);
}
