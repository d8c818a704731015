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
//! Dropping the [`FaultProxy`] stops it and closes every connection.
//!
//! ```no_run
//! # async fn f(gateway_ssh: std::net::SocketAddr) -> std::io::Result<()> {
//! use gateway_e2e::fault_proxy::{FaultProxy, ProxyMode};
//! let proxy = FaultProxy::start(gateway_ssh).await?;
//! // point the client at proxy.addr() …
//! proxy.set_mode(ProxyMode::Blackhole);
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    /// Initial mode.
    pub mode: ProxyMode,
}

impl ProxyOptions {
    /// Listen on 127.0.0.1:0, forward to `target`, in [`ProxyMode::Pass`].
    pub fn new(target: SocketAddr) -> ProxyOptions {
        ProxyOptions {
            target,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            source_ip: None,
            mode: ProxyMode::Pass,
        }
    }
}

#[derive(Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
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
    target: SocketAddr,
    // Connection tasks watch this: a mode change reaches them at once, and dropping the
    // sender (with the proxy) ends them.
    mode: watch::Sender<ProxyMode>,
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
    pub async fn start_with(options: ProxyOptions) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(SocketAddr::new(options.listen_ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(options.mode);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, options, mode_rx, Arc::clone(&counters)));
        Ok(FaultProxy {
            addr,
            target: options.target,
            mode,
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
        self.target
    }

    /// Switch the mode; applies at once to current and new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Connections open right now (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
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
        // Connection tasks end when the mode sender (a field) is dropped right after this.
        self.accept.abort();
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("connections", &self.connections())
            .finish()
    }
}

async fn accept_loop(
    listener: TcpListener,
    options: ProxyOptions,
    mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        if *mode.borrow() == ProxyMode::Reset {
            reset(client);
            continue;
        }
        let _ = client.set_nodelay(true);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(Arc::clone(&counters));
        tokio::spawn(connection(client, options, mode.clone(), Arc::clone(&counters), guard));
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

/// Wait until the mode is `Pass` (true) or `Reset` / the proxy is gone (false).
async fn wait_pass(mode: &mut watch::Receiver<ProxyMode>) -> bool {
    match mode.wait_for(|m| *m != ProxyMode::Blackhole).await {
        Ok(m) => *m == ProxyMode::Pass,
        Err(_) => false,
    }
}

/// Resolves when the mode becomes `Reset` or the proxy is dropped.
async fn reset_or_gone(mut mode: watch::Receiver<ProxyMode>) {
    let _ = mode.wait_for(|m| *m == ProxyMode::Reset).await;
}

async fn connect_target(options: &ProxyOptions) -> std::io::Result<TcpStream> {
    let socket = match options.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = options.source_ip {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(options.target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connection(
    client: TcpStream,
    options: ProxyOptions,
    mut mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
    _open: OpenGuard,
) {
    // A connection accepted during a blackhole is held open until the link "heals".
    if !wait_pass(&mut mode).await {
        return reset(client);
    }
    let upstream = tokio::select! {
        c = connect_target(&options) => c,
        _ = reset_or_gone(mode.clone()) => return reset(client),
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
    match pump(&mut client, &mut upstream, &mut mode, &counters).await {
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

/// Move bytes both ways while the mode allows, honouring half-closes.
async fn pump(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    mode: &mut watch::Receiver<ProxyMode>,
    c: &Counters,
) -> End {
    let (mut c_read, mut c_write) = client.split();
    let (mut u_read, mut u_write) = upstream.split();
    let mut up_buf = vec![0u8; 16 * 1024];
    let mut down_buf = vec![0u8; 16 * 1024];
    let (mut client_eof, mut upstream_eof) = (false, false);
    loop {
        if client_eof && upstream_eof {
            return End::Closed;
        }
        let now = *mode.borrow_and_update();
        match now {
            ProxyMode::Pass => {}
            ProxyMode::Reset => return End::Reset,
            ProxyMode::Blackhole => {
                if !wait_pass(mode).await {
                    return End::Reset;
                }
                continue;
            }
        }
        // Reads are cancel-safe: a mode change between reads loses nothing.
        let (n, up) = tokio::select! {
            r = read_unless(&mut c_read, &mut up_buf, client_eof) => match r {
                Ok(n) => (n, true),
                Err(_) => return End::Closed,
            },
            r = read_unless(&mut u_read, &mut down_buf, upstream_eof) => match r {
                Ok(n) => (n, false),
                Err(_) => return End::Closed,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Reset;
                }
                continue;
            }
        };
        let (buf, dst, eof, counter) = if up {
            (&up_buf[..n], &mut u_write, &mut client_eof, &c.bytes_up)
        } else {
            (&down_buf[..n], &mut c_write, &mut upstream_eof, &c.bytes_down)
        };
        if n == 0 {
            *eof = true;
            // Pass the half-close on.
            let _ = dst.shutdown().await;
            continue;
        }
        // Bytes already read are delivered even if a blackhole starts meanwhile (they were
        // "on the wire"); only a reset interrupts a blocked write.
        let written = tokio::select! {
            w = dst.write_all(buf) => w,
            _ = reset_or_gone(mode.clone()) => return End::Reset,
        };
        if written.is_err() {
            return End::Closed;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Read into `buf`, or never resolve once that side reached EOF.
async fn read_unless<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut [u8], eof: bool) -> std::io::Result<usize> {
    if eof {
        return std::future::pending().await;
    }
    stream.read(buf).await
}
