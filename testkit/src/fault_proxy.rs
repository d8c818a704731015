//! A userspace TCP proxy with faults switchable at runtime, to put between an SSH client and
//! the gateway (or anything else) and make the link die silently or abruptly.
//!
//! - [`ProxyMode::Pass`]: bytes flow both ways.
//! - [`ProxyMode::Blackhole`]: every socket stays open but no byte moves in either direction,
//!   and new connections are accepted but not forwarded: what a peer sees when a link goes
//!   silently dead (a pulled uplink, a NAT that forgot the flow). Bytes already read by the
//!   proxy are held, not lost, and flow again after a switch back to `Pass`, as TCP
//!   retransmission would deliver them once a link heals.
//! - [`ProxyMode::Reset`]: every current connection is closed with a RST on both sides
//!   (`SO_LINGER` 0), and new connections are reset as soon as they are accepted. (So the
//!   connect, or the first read after it, fails with `ECONNRESET` rather than the connect
//!   being refused: the listener stays bound so the port cannot be taken meanwhile.)
//!
//! The mode can also be set per client source IP ([`FaultProxy::set_mode_for_source`]): one
//! proxy in front of a server, clients binding different loopback addresses (127.0.0.2,
//! 127.0.0.3, …), and each address is a "link" that can fail on its own, as a Pi's uplinks
//! do. With [`ProxyOptions::keep_client_ip`] the proxy connects to the target from the
//! client's own address, so the target sees which link a connection came over.
//!
//! **Delay** ([`ProxyOptions::delay`], [`FaultProxy::set_delay`]): a one-way delay in each
//! direction, as a home link's latency. The proxy is then a delay line: every chunk it reads is
//! stamped and delivered `delay` later, in order, while later chunks are already on their way
//! (a burst is not serialised behind each chunk's delay), and a half-close (FIN) travels the
//! same way. A new connection pays the TCP handshake's round trip: the proxy connects to the
//! target only `2 × delay` after accepting, so the client's first bytes arrive `3 × delay` after
//! its connect, and the target's first bytes reach the client no earlier than `4 × delay`, as
//! over a real link. Faults combine with it: a blackhole also holds the bytes in flight (they
//! arrive once the link heals, as TCP would retransmit them); a reset drops them.
//!
//! Dropping the [`FaultProxy`] stops it and closes every connection.
//!
//! ```no_run
//! # async fn f(gateway_ssh: std::net::SocketAddr) -> std::io::Result<()> {
//! use testkit::fault_proxy::{FaultProxy, ProxyMode};
//! let proxy = FaultProxy::start(gateway_ssh).await?;
//! // point the client at proxy.addr() …
//! proxy.set_mode(ProxyMode::Blackhole);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read at once from one side.
const CHUNK: usize = 16 * 1024;

/// Chunks one direction's delay line holds: bytes read and not yet delivered, as a socket
/// buffer plus the bytes in flight would. A full line stops the reads, so a receiver that does
/// not read still pushes back on the sender.
const LINE_CHUNKS: usize = 256;

/// What the proxy does with bytes and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward in both directions.
    #[default]
    Pass,
    /// Keep sockets open, move no bytes, accept new connections without forwarding them.
    Blackhole,
    /// Reset every connection (RST) and reset new ones on accept.
    Reset,
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyMode::Pass => "pass",
            ProxyMode::Blackhole => "blackhole",
            ProxyMode::Reset => "reset",
        })
    }
}

/// Where the proxy listens and connects from.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// Address the proxy forwards to.
    pub target: SocketAddr,
    /// IP to listen on (port 0 is always used); default 127.0.0.1. Any 127.0.0.0/8 address
    /// works on Linux without setup, e.g. 127.0.0.2 for a second "uplink".
    pub listen_ip: IpAddr,
    /// Source IP of the connections to the target (default: chosen by the kernel). Set it
    /// to tell, on the target's side, connections through this proxy from direct ones.
    pub source_ip: Option<IpAddr>,
    /// Connect to the target from the client's own IP (port chosen by the kernel), so the
    /// target sees the client's address as if there were no proxy. Works for any
    /// 127.0.0.0/8 client on Linux; not together with `source_ip`.
    pub keep_client_ip: bool,
    /// Initial mode.
    pub mode: ProxyMode,
    /// One-way delay in each direction (default zero: none); see the module doc. Change it
    /// at runtime with [`FaultProxy::set_delay`].
    pub delay: Duration,
}

impl ProxyOptions {
    /// Listen on 127.0.0.1:0, forward to `target`, in [`ProxyMode::Pass`].
    pub fn new(target: SocketAddr) -> ProxyOptions {
        ProxyOptions {
            target,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source_ip: None,
            keep_client_ip: false,
            mode: ProxyMode::Pass,
            delay: Duration::ZERO,
        }
    }
}

/// The default mode, the per-source overrides and the delay. Connection tasks watch the whole
/// table: any change wakes them, and each re-reads the mode for its own source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Modes {
    default: ProxyMode,
    by_source: HashMap<IpAddr, ProxyMode>,
    delay: Duration,
    /// Connections with a serial below this stay blackholed for good
    /// ([`FaultProxy::restore_leaving_frozen`]).
    frozen_below: u64,
}

impl Modes {
    fn for_source(&self, ip: IpAddr) -> ProxyMode {
        self.by_source.get(&ip).copied().unwrap_or(self.default)
    }

    /// The mode of one connection: its source's, except that a connection frozen by
    /// [`FaultProxy::restore_leaving_frozen`] never passes again.
    fn for_link(&self, ip: IpAddr, serial: u64) -> ProxyMode {
        match self.for_source(ip) {
            ProxyMode::Pass if serial < self.frozen_below => ProxyMode::Blackhole,
            m => m,
        }
    }
}

/// One connection's view of the modes: the table, the client's source IP and the
/// connection's serial (its place in the order of accepts).
#[derive(Clone)]
struct Link {
    modes: watch::Receiver<Modes>,
    source: IpAddr,
    serial: u64,
}

impl Link {
    /// The mode for this connection now (marks the table seen).
    fn now(&mut self) -> ProxyMode {
        self.modes.borrow_and_update().for_link(self.source, self.serial)
    }

    /// Wait until this connection's mode is `Pass` (true) or `Reset` / the proxy is gone
    /// (false).
    async fn wait_pass(&mut self) -> bool {
        let (source, serial) = (self.source, self.serial);
        match self
            .modes
            .wait_for(|m| m.for_link(source, serial) != ProxyMode::Blackhole)
            .await
        {
            Ok(m) => m.for_link(source, serial) == ProxyMode::Pass,
            Err(_) => false,
        }
    }

    /// The one-way delay in force now (does not mark the table seen).
    fn delay(&self) -> Duration {
        self.modes.borrow().delay
    }

    /// Resolves when this connection's mode becomes `Reset` or the proxy is dropped.
    async fn reset_or_gone(&self) {
        let (mut modes, source) = (self.modes.clone(), self.source);
        let _ = modes.wait_for(|m| m.for_source(source) == ProxyMode::Reset).await;
    }
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    // Written once per accepted connection, read by tests: a plain mutex is enough.
    accepted_from: Mutex<HashMap<IpAddr, u64>>,
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running fault proxy; stops (closing every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    /// Where new connections go ([`FaultProxy::retarget`]).
    target: Arc<Mutex<SocketAddr>>,
    // Connection tasks watch this: a mode change reaches them at once, and dropping the
    // sender (with the proxy) ends them.
    modes: watch::Sender<Modes>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1:0 to `target`, in [`ProxyMode::Pass`].
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        FaultProxy::start_with(ProxyOptions::new(target)).await
    }

    /// A proxy listening on `listen_ip`:0 to `target`, in [`ProxyMode::Pass`].
    pub async fn start_on(listen_ip: IpAddr, target: SocketAddr) -> std::io::Result<FaultProxy> {
        FaultProxy::start_with(ProxyOptions {
            listen_ip,
            ..ProxyOptions::new(target)
        })
        .await
    }

    /// A proxy with these options. Must be called within a tokio runtime, which runs it.
    /// Fails with `InvalidInput` when both `source_ip` and `keep_client_ip` are set.
    pub async fn start_with(options: ProxyOptions) -> std::io::Result<FaultProxy> {
        if options.keep_client_ip && options.source_ip.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fault proxy: set either source_ip or keep_client_ip, not both",
            ));
        }
        let listener = TcpListener::bind(SocketAddr::new(options.listen_ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (modes, modes_rx) = watch::channel(Modes {
            default: options.mode,
            by_source: HashMap::new(),
            delay: options.delay,
            frozen_below: 0,
        });
        let counters = Arc::new(Counters::default());
        let target = Arc::new(Mutex::new(options.target));
        let accept = tokio::spawn(accept_loop(
            listener,
            options,
            Arc::clone(&target),
            modes_rx,
            Arc::clone(&counters),
        ));
        Ok(FaultProxy {
            addr,
            target,
            modes,
            counters,
            accept,
        })
    }

    /// Address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address it forwards to.
    pub fn target(&self) -> SocketAddr {
        *self.target.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forward new connections to `target` from now on (current ones stay where they are):
    /// for a listener whose port is only known after the proxy's address was handed out, as
    /// etcd members that must advertise their peers' addresses before those bind port 0.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    /// Switch the mode; applies at once to current and new connections, except those from
    /// a source with its own mode ([`FaultProxy::set_mode_for_source`]).
    pub fn set_mode(&self, mode: ProxyMode) {
        self.modes.send_modify(|m| m.default = mode);
    }

    /// Current mode (for sources without their own).
    pub fn mode(&self) -> ProxyMode {
        self.modes.borrow().default
    }

    /// Switch the mode of connections whose client address is `source`, current and new;
    /// it overrides [`FaultProxy::set_mode`] until [`FaultProxy::clear_mode_for_source`].
    /// (The source is the client's IP as the proxy sees it: the address a client bound, e.g.
    /// a tunnel client's uplink `source: 127.0.0.2`.)
    pub fn set_mode_for_source(&self, source: IpAddr, mode: ProxyMode) {
        self.modes.send_modify(|m| {
            m.by_source.insert(source, mode);
        });
    }

    /// Let connections from `source` follow [`FaultProxy::set_mode`] again.
    pub fn clear_mode_for_source(&self, source: IpAddr) {
        self.modes.send_modify(|m| {
            m.by_source.remove(&source);
        });
    }

    /// The mode that applies to connections from `source`.
    pub fn mode_for_source(&self, source: IpAddr) -> ProxyMode {
        self.modes.borrow().for_source(source)
    }

    /// Bring the link back the way a real outage ends: new connections pass, but every
    /// connection accepted so far stays frozen for good (a NAT or an LTE link that forgot
    /// its flows), so a client stuck in a handshake begun during the outage stays stuck.
    pub fn restore_leaving_frozen(&self) {
        let accepted = self.counters.accepted.load(Ordering::SeqCst);
        self.modes.send_modify(|m| {
            m.default = ProxyMode::Pass;
            m.frozen_below = accepted;
        });
    }

    /// Set the one-way delay of both directions. It applies to bytes read from now on (bytes
    /// already in flight keep their delivery time, and order is always kept) and to the
    /// handshake of connections not yet forwarded.
    pub fn set_delay(&self, delay: Duration) {
        self.modes.send_modify(|m| m.delay = delay);
    }

    /// The one-way delay in force.
    pub fn delay(&self) -> Duration {
        self.modes.borrow().delay
    }

    /// Connections open right now (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted since start from client IP `source`.
    pub fn accepted_from(&self, source: IpAddr) -> u64 {
        let counts = self.counters.accepted_from.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&source).copied().unwrap_or(0)
    }

    /// Bytes forwarded (client → target, target → client) since start.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.counters.bytes_up.load(Ordering::SeqCst),
            self.counters.bytes_down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Connection tasks end when the modes sender (a field) is dropped right after this.
        self.accept.abort();
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target())
            .field("mode", &self.mode())
            .field("by_source", &self.modes.borrow().by_source)
            .field("delay", &self.delay())
            .field("connections", &self.connections())
            .finish()
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut options: ProxyOptions,
    target: Arc<Mutex<SocketAddr>>,
    modes: watch::Receiver<Modes>,
    counters: Arc<Counters>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let serial = counters.accepted.fetch_add(1, Ordering::SeqCst);
        *counters
            .accepted_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer.ip())
            .or_default() += 1;
        let link = Link {
            serial,
            modes: modes.clone(),
            source: peer.ip(),
        };
        if modes.borrow().for_link(link.source, link.serial) == ProxyMode::Reset {
            reset(client);
            continue;
        }
        let _ = client.set_nodelay(true);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(Arc::clone(&counters));
        options.target = *target.lock().unwrap_or_else(|p| p.into_inner());
        tokio::spawn(connection(client, options, link, Arc::clone(&counters), guard));
    }
}

/// Close with a RST: `SO_LINGER` 0 makes close(2) abort the connection.
// tokio deprecates `set_linger` because a non-zero linger blocks the thread in close(2); a
// zero linger never blocks (the connection is aborted at once), and neither `socket2` nor
// std's (unstable) `set_linger` is available to this package.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connect_target(options: &ProxyOptions, client_ip: IpAddr) -> std::io::Result<TcpStream> {
    let socket = match options.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let source = if options.keep_client_ip {
        Some(client_ip)
    } else {
        options.source_ip
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(options.target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connection(
    client: TcpStream,
    options: ProxyOptions,
    mut link: Link,
    counters: Arc<Counters>,
    _open: OpenGuard,
) {
    // A connection accepted during a blackhole is held open until the link "heals".
    if !link.wait_pass().await {
        return reset(client);
    }
    // Over a link with a one-way delay the TCP handshake takes a round trip (SYN, SYN-ACK)
    // before the client's first bytes can leave; here the client's connect completed at once,
    // so hold its bytes that long: connect upstream 2 × delay late, and its first bytes, read
    // then, arrive one delay later (3 × delay). The target accepted 2 × delay after the client
    // connected rather than 3 ×, so its first bytes are held until 4 × delay (`floor`), when
    // they would reach the client over a real link.
    let accepted = Instant::now();
    let delay = link.delay();
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(2 * delay) => {}
            _ = link.reset_or_gone() => return reset(client),
        }
        if !link.wait_pass().await {
            return reset(client);
        }
    }
    let upstream = tokio::select! {
        c = connect_target(&options, link.source) => c,
        _ = link.reset_or_gone() => return reset(client),
    };
    let upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, target = %options.target, "fault proxy: connect failed");
            // The target refused: pass that on as abruptly as we can.
            return reset(client);
        }
    };
    let (mut client, mut upstream) = (client, upstream);
    let floor = accepted + 4 * delay;
    match pump(&mut client, &mut upstream, &link, &counters, floor).await {
        End::Reset => {
            reset(client);
            reset(upstream);
        }
        // Both directions finished or one side failed: an ordinary close.
        End::Closed => {}
    }
}

enum End {
    Reset,
    Closed,
}

/// How one direction ended.
enum Dir {
    /// Its source's EOF was passed on as a half-close.
    Eof,
    /// A read or write failed.
    Closed,
    /// The mode became `Reset` or the proxy was dropped.
    Reset,
}

/// Move bytes both ways while the mode allows, honouring half-closes. The target's bytes
/// reach the client no earlier than `down_floor`.
async fn pump(client: &mut TcpStream, upstream: &mut TcpStream, link: &Link, c: &Counters, down_floor: Instant) -> End {
    let (c_read, c_write) = client.split();
    let (u_read, u_write) = upstream.split();
    let up = direction(c_read, u_write, link.clone(), &c.bytes_up, None);
    let down = direction(u_read, c_write, link.clone(), &c.bytes_down, Some(down_floor));
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let ended = tokio::select! {
            d = &mut up, if !up_done => {
                up_done = true;
                d
            }
            d = &mut down, if !down_done => {
                down_done = true;
                d
            }
            else => return End::Closed,
        };
        match ended {
            // One way half-closed: the other keeps flowing until it ends too.
            Dir::Eof if up_done && down_done => return End::Closed,
            Dir::Eof => {}
            // A failed read or write ends the connection, as before the delay line existed.
            Dir::Closed => return End::Closed,
            Dir::Reset => return End::Reset,
        }
    }
}

/// One direction: a reader that stamps each chunk with the time it is due and a writer that
/// delivers the chunks in order, each at its time, with a bounded queue (the "wire") between
/// them. With no delay the writer delivers at once, and this is a plain copy loop.
async fn direction(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    link: Link,
    counter: &AtomicU64,
    floor: Option<Instant>,
) -> Dir {
    // An empty chunk is the EOF (a FIN on the wire).
    let (wire, mut arriving) = mpsc::channel::<(Instant, Vec<u8>)>(LINE_CHUNKS);
    let mut read_link = link.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read_link.now() {
                ProxyMode::Pass => {}
                ProxyMode::Reset => return Dir::Reset,
                ProxyMode::Blackhole => {
                    if !read_link.wait_pass().await {
                        return Dir::Reset;
                    }
                    continue;
                }
            }
            // Reads are cancel-safe: a mode change between reads loses nothing. Biased so a
            // mode change is seen before more bytes are taken in.
            let n = tokio::select! {
                biased;
                // Any change (another source's or the delay included) makes the loop re-read
                // this link's mode.
                changed = read_link.modes.changed() => {
                    if changed.is_err() {
                        return Dir::Reset;
                    }
                    continue;
                }
                r = src.read(&mut buf) => match r {
                    Ok(n) => n,
                    Err(_) => return Dir::Closed,
                },
            };
            let mut due = Instant::now() + read_link.delay();
            if let Some(floor) = floor {
                due = due.max(floor);
            }
            if wire.send((due, buf[..n].to_vec())).await.is_err() {
                // The writer ended; it said why.
                return Dir::Closed;
            }
            if n == 0 {
                return Dir::Eof;
            }
        }
    };
    let mut write_link = link;
    let writer = async move {
        while let Some((due, chunk)) = arriving.recv().await {
            if due > Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = write_link.reset_or_gone() => return Dir::Reset,
                }
            }
            // A blackhole also holds what is in flight; it arrives once the link heals.
            if write_link.now() != ProxyMode::Pass && !write_link.wait_pass().await {
                return Dir::Reset;
            }
            if chunk.is_empty() {
                // Pass the half-close on.
                let _ = dst.shutdown().await;
                return Dir::Eof;
            }
            // Only a reset interrupts a blocked write.
            let written = tokio::select! {
                w = dst.write_all(&chunk) => w,
                _ = write_link.reset_or_gone() => return Dir::Reset,
            };
            if written.is_err() {
                return Dir::Closed;
            }
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        // The reader ended without an EOF: it returned why first.
        Dir::Closed
    };
    tokio::pin!(reader, writer);
    let mut reading = true;
    loop {
        tokio::select! {
            end = &mut reader, if reading => match end {
                // The EOF is queued; the writer passes it on after the bytes before it.
                Dir::Eof => reading = false,
                other => return other,
            },
            end = &mut writer => return end,
        }
    }
}
