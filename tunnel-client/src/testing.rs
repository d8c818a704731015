//! A scripted network for the supervisors' tests, behind the [`Connector`] seam: one gateway
//! replica reached at some addresses over numbered uplinks, each path set to fail the way
//! paths fail. A blackholed path freezes (connects hang until `connect_timeout`, pings go
//! unanswered, sessions end after the keepalives run out), it does not reset; a refusing one is
//! a gateway that is down (connects refused, sessions closed by the gateway). The gateway keeps
//! the newest forwarding session, as the real one does. Everything runs on the paused clock and
//! is recorded with its time from the start, for exact assertions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::config::{Config, Settings};
use crate::link::{Connector, Tunnel};
use crate::session::{Closed, Ended, SessionError};

/// Time a handshake (TCP, SSH, authentication, forward) takes on a working path.
pub const HANDSHAKE: Duration = Duration::from_millis(20);
/// Round trip of a ping on a working path.
pub const RTT: Duration = Duration::from_millis(2);

/// Settings from `yaml` (a config without `identity`, which is added).
pub fn settings(yaml: &str) -> Arc<Settings> {
    let text = format!("identity: /nonexistent/id\n{yaml}");
    match Config::parse(&text) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("test config refused: {e}\n{text}"),
    }
}

/// What a path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Works.
    Up,
    /// Silently dead: nothing gets through, nothing is refused.
    Blackhole,
    /// The gateway is down: connections refused, sessions closed.
    Refuse,
    /// Another host key answers.
    WrongKey,
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection attempt began.
    Attempt { address: String, uplink: usize },
    /// A session opened (`forward`: with the forward).
    Opened {
        id: usize,
        address: String,
        uplink: usize,
        forward: bool,
    },
    /// The forward was requested (true) or withdrawn (false).
    Forward { id: usize, on: bool },
    /// The client closed the session politely.
    Closed { id: usize, why: &'static str },
    /// The session's value was dropped (its connection gone).
    Dropped { id: usize },
    /// The session ended on the network's side.
    Ended { id: usize, reason: String },
}

struct State {
    uplinks: HashMap<usize, Path>,
    addresses: HashMap<String, Path>,
    events: Vec<(Duration, Event)>,
    /// Sessions alive, to end the replaced ones: id, address, uplink, forwarding, kick.
    live: Vec<(usize, String, usize, bool, Arc<Notify>)>,
}

struct Inner {
    t0: Instant,
    /// The replica's addresses and the number of uplinks, for reachability.
    addresses: Vec<String>,
    uplinks: usize,
    connect_timeout: Duration,
    /// Time from a path going silent to its sessions ending (the keepalives running out).
    keepalive_death: Duration,
    state: Mutex<State>,
    /// Bumped on every path change.
    changed: watch::Sender<u64>,
    ids: AtomicUsize,
}

/// One replica's network. Clones share it.
#[derive(Clone)]
pub struct FakeNet(Arc<Inner>);

impl FakeNet {
    /// Replica number `replica` of `settings`, every path up; timeouts as `settings` has them.
    pub fn new(settings: &Settings, replica: usize) -> FakeNet {
        let cfg = &settings.config;
        FakeNet(Arc::new(Inner {
            t0: Instant::now(),
            addresses: settings.replicas[replica].addresses.clone(),
            uplinks: settings.uplinks.len(),
            connect_timeout: cfg.connect_timeout,
            keepalive_death: cfg.keepalive_interval * (cfg.keepalive_max as u32 + 1),
            state: Mutex::new(State {
                uplinks: HashMap::new(),
                addresses: HashMap::new(),
                events: Vec::new(),
                live: Vec::new(),
            }),
            changed: watch::Sender::new(0),
            ids: AtomicUsize::new(0),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every path over `uplink` does `path`.
    pub fn set_uplink(&self, uplink: usize, path: Path) {
        self.state().uplinks.insert(uplink, path);
        self.0.changed.send_modify(|n| *n += 1);
    }

    /// Every path to `address` does `path`.
    pub fn set_address(&self, address: &str, path: Path) {
        self.state().addresses.insert(address.to_string(), path);
        self.0.changed.send_modify(|n| *n += 1);
    }

    /// What the path to `address` over `uplink` does now: the address's fault, else the uplink's.
    fn path(&self, address: &str, uplink: usize) -> Path {
        let st = self.state();
        match st.addresses.get(address) {
            Some(p) if *p != Path::Up => *p,
            _ => st.uplinks.get(&uplink).copied().unwrap_or(Path::Up),
        }
    }

    fn record(&self, event: Event) {
        let at = self.0.t0.elapsed();
        self.state().events.push((at, event));
    }

    /// Time since the network was made.
    pub fn now(&self) -> Duration {
        self.0.t0.elapsed()
    }

    /// Everything so far.
    pub fn events(&self) -> Vec<(Duration, Event)> {
        self.state().events.clone()
    }

    /// Connection attempts so far: (when, address, uplink).
    pub fn attempts(&self) -> Vec<(Duration, String, usize)> {
        self.events()
            .into_iter()
            .filter_map(|(at, e)| match e {
                Event::Attempt { address, uplink } => Some((at, address, uplink)),
                _ => None,
            })
            .collect()
    }

    /// Sessions opened so far: (when, id, uplink).
    pub fn opened(&self) -> Vec<(Duration, usize, usize)> {
        self.events()
            .into_iter()
            .filter_map(|(at, e)| match e {
                Event::Opened { id, uplink, .. } => Some((at, id, uplink)),
                _ => None,
            })
            .collect()
    }

    /// When session `id` was dropped, if it was.
    pub fn dropped(&self, id: usize) -> Option<Duration> {
        self.events()
            .into_iter()
            .find_map(|(at, e)| (e == Event::Dropped { id }).then_some(at))
    }

    /// The sessions alive now: (id, uplink, forwarding).
    pub fn live(&self) -> Vec<(usize, usize, bool)> {
        self.state().live.iter().map(|(id, _, u, f, _)| (*id, *u, *f)).collect()
    }

    /// Wait until the live sessions satisfy `ok`, at most `within` of paused time.
    pub async fn wait_live(&self, within: Duration, ok: impl Fn(&[(usize, usize, bool)]) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(&self.live()) {
            assert!(
                Instant::now() < deadline,
                "live sessions {:?} after {within:?}; events: {:#?}",
                self.live(),
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The gateway takes the route for `id`: every other forwarding session it can still
    /// reach is closed (newest wins).
    fn take_route(&self, id: usize) {
        let others: Vec<(String, usize, Arc<Notify>)> = {
            let mut st = self.state();
            for s in st.live.iter_mut().filter(|s| s.0 == id) {
                s.3 = true;
            }
            st.live
                .iter()
                .filter(|s| s.0 != id && s.3)
                .map(|s| (s.1.clone(), s.2, Arc::clone(&s.4)))
                .collect()
        };
        for (address, uplink, kick) in others {
            if self.path(&address, uplink) == Path::Up {
                kick.notify_one();
            }
        }
    }

    fn set_forwarding(&self, id: usize, on: bool) {
        if let Some(s) = self.state().live.iter_mut().find(|s| s.0 == id) {
            s.3 = on;
        }
        self.record(Event::Forward { id, on });
    }

    async fn open(&self, address: &str, uplink: usize, forward: bool) -> Result<FakeSession, SessionError> {
        self.record(Event::Attempt {
            address: address.to_string(),
            uplink,
        });
        // The path as the attempt begins decides it: a flow begun on a dead path stays frozen.
        match self.path(address, uplink) {
            Path::Up => {}
            Path::Blackhole => {
                tokio::time::sleep(self.0.connect_timeout).await;
                return Err(SessionError::Timeout("SSH handshake"));
            }
            Path::Refuse => {
                tokio::time::sleep(RTT).await;
                return Err(SessionError::Connect {
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                    uplink: uplink.to_string(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            Path::WrongKey => {
                tokio::time::sleep(HANDSHAKE).await;
                return Err(SessionError::HostKeyMismatch(
                    "expected SHA256:pinned, got SHA256:other".into(),
                ));
            }
        }
        let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        self.state()
            .live
            .push((id, address.to_string(), uplink, false, Arc::clone(&kick)));
        let (end_tx, end_rx) = oneshot::channel();
        let watcher = tokio::spawn(
            self.clone()
                .watch_session(id, address.to_string(), uplink, kick, end_tx),
        );
        let session = FakeSession {
            net: self.clone(),
            id,
            address: address.to_string(),
            uplink,
            forwarding: false,
            closed: Some(end_rx),
            watcher,
        };
        // Half-way through the handshake the forward is granted, and the gateway closes the
        // session it replaces, possibly before this attempt reports back.
        tokio::time::sleep(HANDSHAKE / 2).await;
        if forward {
            self.take_route(id);
        }
        tokio::time::sleep(HANDSHAKE / 2).await;
        let mut session = session;
        session.forwarding = forward;
        self.record(Event::Opened {
            id,
            address: address.to_string(),
            uplink,
            forward,
        });
        Ok(session)
    }

    /// End session `id` the way its path fails: at once when the gateway closes it, after the
    /// keepalives run out when the path goes silent (unless it heals first).
    async fn watch_session(
        self,
        id: usize,
        address: String,
        uplink: usize,
        kick: Arc<Notify>,
        end: oneshot::Sender<Ended>,
    ) {
        let mut changed = self.0.changed.subscribe();
        let ended = loop {
            match self.path(&address, uplink) {
                Path::Up => {
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = kick.notified() => break Ended { reason: "gateway closed the session: replaced".into(), link_failure: false },
                    }
                }
                Path::Refuse | Path::WrongKey => {
                    break Ended {
                        reason: "gateway closed the session".into(),
                        link_failure: false,
                    }
                }
                Path::Blackhole => {
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = tokio::time::sleep(self.0.keepalive_death) => break Ended { reason: "keepalive timeout".into(), link_failure: true },
                    }
                }
            }
        };
        self.state().live.retain(|s| s.0 != id);
        self.record(Event::Ended {
            id,
            reason: ended.reason.clone(),
        });
        let _ = end.send(ended);
    }
}

/// A session on the [`FakeNet`].
pub struct FakeSession {
    net: FakeNet,
    id: usize,
    address: String,
    uplink: usize,
    forwarding: bool,
    closed: Option<oneshot::Receiver<Ended>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        self.watcher.abort();
        self.net.state().live.retain(|s| s.0 != self.id);
        self.net.record(Event::Dropped { id: self.id });
    }
}

impl Tunnel for FakeSession {
    fn uplink(&self) -> usize {
        self.uplink
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn take_closed(&mut self) -> Closed {
        match self.closed.take() {
            Some(rx) => Closed::new(rx),
            None => panic!("the end of session {} taken twice", self.id),
        }
    }

    fn is_forwarding(&self) -> bool {
        self.forwarding
    }

    async fn request_forward(&mut self) -> Result<(), SessionError> {
        if self.net.path(&self.address, self.uplink) != Path::Up {
            return Err(SessionError::ForwardRefused("path down".into()));
        }
        tokio::time::sleep(RTT).await;
        self.forwarding = true;
        self.net.set_forwarding(self.id, true);
        self.net.take_route(self.id);
        Ok(())
    }

    async fn cancel_forward(&mut self) -> Result<(), SessionError> {
        if self.net.path(&self.address, self.uplink) != Path::Up {
            return Err(SessionError::Timeout("cancelling the forward"));
        }
        tokio::time::sleep(RTT).await;
        self.forwarding = false;
        self.net.set_forwarding(self.id, false);
        Ok(())
    }

    fn ping(&self, within: Duration) -> impl Future<Output = bool> + Send + 'static {
        let up = self.net.path(&self.address, self.uplink) == Path::Up;
        async move {
            if up {
                tokio::time::sleep(RTT).await;
            } else {
                tokio::time::sleep(within).await;
            }
            up
        }
    }

    fn close(self, why: &'static str) -> impl Future<Output = ()> + Send + 'static {
        self.net.record(Event::Closed { id: self.id, why });
        let up = self.net.path(&self.address, self.uplink) == Path::Up;
        async move {
            // A dead path takes no goodbye: the real close gives up after a second.
            tokio::time::sleep(if up { RTT } else { Duration::from_secs(1) }).await;
            drop(self);
        }
    }
}

impl Connector for FakeNet {
    type Session = FakeSession;

    fn connect(
        &self,
        address: &str,
        uplink: usize,
        forward: bool,
    ) -> impl Future<Output = Result<FakeSession, SessionError>> + Send {
        self.open(address, uplink, forward)
    }

    fn reachable(&self, within: Duration) -> impl Future<Output = bool> + Send {
        // TCP accepts where the path works, whatever key answers.
        let paths: Vec<Path> = self
            .0
            .addresses
            .iter()
            .flat_map(|a| (0..self.0.uplinks).map(move |u| (a, u)))
            .map(|(a, u)| self.path(a, u))
            .collect();
        let up = paths.iter().any(|p| matches!(p, Path::Up | Path::WrongKey));
        let silent = paths.contains(&Path::Blackhole);
        async move {
            tokio::time::sleep(if !up && silent { within } else { RTT }).await;
            up
        }
    }
}
