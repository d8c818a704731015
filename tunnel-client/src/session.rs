//! One SSH session to the gateway: dial over an uplink, verify the pinned host key,
//! authenticate, request the reverse forward, and serve every channel the gateway opens by
//! connecting it to the local signer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, DisconnectReason};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::config::{HostKeyPin, Replica, Settings, Uplink};

/// Time the local signer gets to accept a forwarded connection before the channel is refused
/// (a refusal makes the gateway fail over at once).
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session could not be set up. `is_fatal`/`is_host_key_mismatch` drive the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The gateway name did not resolve (to an address of the uplink's family).
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TCP connect (or binding to the uplink) failed.
    #[error("connect to {addr} via {uplink}: {source}")]
    Connect {
        /// Gateway address.
        addr: SocketAddr,
        /// Uplink name.
        uplink: String,
        /// Why.
        source: std::io::Error,
    },
    /// A step did not finish within `connect_timeout`.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The gateway presented a host key that is not the pinned one: a security event.
    #[error("host key mismatch: {0}")]
    HostKeyMismatch(String),
    /// The gateway refused our key.
    #[error("authentication refused: is this Pi's public key listed for a signer in the gateway config?")]
    AuthRejected,
    /// The gateway refused the remote forward.
    #[error("remote forward refused: {0}")]
    ForwardRefused(String),
    /// Any other SSH failure.
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}

impl SessionError {
    /// A wrong host key: never connect anyway; retry slowly.
    pub fn is_host_key_mismatch(&self) -> bool {
        matches!(self, SessionError::HostKeyMismatch(_))
    }
}

/// russh callbacks for one session.
struct ClientHandler {
    pin: Arc<HostKeyPin>,
    mismatch: Arc<Mutex<Option<String>>>,
    signer: Arc<str>,
    closed: Option<oneshot::Sender<Ended>>,
    /// Last time a refused local connection was logged at warn (ms since the Unix epoch).
    last_refusal_log: Arc<AtomicU64>,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// For logs.
    pub reason: String,
    /// The path itself failed (keepalives unanswered, TCP timeout): try other uplinks first
    /// next time. A gateway that closed or restarted says nothing about the uplink.
    pub link_failure: bool,
}

/// Warn about refused local connections at most this often (the gateway's health checks
/// would otherwise log one every probe until the forward is withdrawn).
const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Did the path fail (as opposed to the gateway closing the session)?
fn is_link_failure(e: &russh::Error) -> bool {
    match e {
        russh::Error::KeepaliveTimeout | russh::Error::InactivityTimeout | russh::Error::ConnectionTimeout => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let result = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.pin.check(key),
            PublicKeyOrCertificate::Certificate(_) => {
                Err("the gateway presented a certificate; a plain key is pinned".into())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let signer = Arc::clone(&self.signer);
        let last_log = Arc::clone(&self.last_refusal_log);
        let log_refusal = move |what: String| {
            let now = now_ms();
            let last = last_log.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= REFUSAL_LOG_EVERY_MS
                && last_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn!("{what} (the channel was refused; repeats within 10 s are logged at debug)");
            } else {
                debug!("{what}");
            }
        };
        // Connect off the session loop so keepalives keep flowing meanwhile.
        tokio::spawn(async move {
            match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(&*signer)).await {
                Ok(Ok(mut tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
                        debug!(error = %e, "forwarded channel ended");
                    }
                }
                Ok(Err(e)) => {
                    log_refusal(format!("local signer {signer} refused a forwarded connection: {e}"));
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
                Err(_) => {
                    log_refusal(format!(
                        "local signer {signer} did not accept a forwarded connection in time"
                    ));
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn disconnected(&mut self, reason: DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        let ended = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => Ended {
                reason: format!("gateway closed the session: {info:?}"),
                link_failure: false,
            },
            DisconnectReason::Error(e) => Ended {
                reason: e.to_string(),
                link_failure: is_link_failure(e),
            },
        };
        if let Some(tx) = self.closed.take() {
            let _ = tx.send(ended);
        }
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Resolves when a session ends, with the reason. Cancel-safe.
pub struct Closed(Option<oneshot::Receiver<Ended>>);

impl Closed {
    /// The end signalled through `rx` (a sender dropped without a word is a plain end).
    pub fn new(rx: oneshot::Receiver<Ended>) -> Closed {
        Closed(Some(rx))
    }

    /// Wait for the end.
    pub async fn wait(&mut self) -> Ended {
        match &mut self.0 {
            Some(rx) => rx.await.unwrap_or_else(|_| Ended {
                reason: "session ended".to_string(),
                link_failure: false,
            }),
            None => std::future::pending().await,
        }
    }
}

/// An established session.
pub struct Session {
    // Shared with liveness checks ([`Session::ping`]) that run beside the supervisor's
    // other work; every call on an authenticated session takes `&self`.
    handle: Arc<client::Handle<ClientHandler>>,
    closed: Option<oneshot::Receiver<Ended>>,
    forward: (String, u32),
    forwarding: bool,
    /// Index of the uplink in preference order.
    pub uplink: usize,
    /// Uplink name.
    pub uplink_name: String,
    /// Gateway address used.
    pub gateway: String,
}

/// Open a TCP connection to `addr` bound to `uplink`.
async fn dial(addr: SocketAddr, uplink: &Uplink, settings: &Settings) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ifname) = &uplink.interface {
        socket.bind_device(Some(ifname.as_bytes()))?;
    }
    if let Some(src) = uplink.source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    socket.set_nodelay(true)?;
    // Keepalives cannot fire while a write to a dead peer is blocked; this can.
    socket2::SockRef::from(&socket).set_tcp_user_timeout(Some(settings.config.tcp_user_timeout))?;
    socket.connect(addr).await
}

/// Does any address of `replica` accept TCP connections over any uplink? A cheap check (a
/// TCP connect, no SSH handshake) used to cut a long reconnect backoff short when the link
/// comes back.
pub async fn gateway_reachable(settings: &Settings, replica: &Replica, within: Duration) -> bool {
    for up in &settings.uplinks {
        for gw in &replica.addresses {
            let Ok(Ok(addrs)) = tokio::time::timeout(within, tokio::net::lookup_host(gw.as_str())).await else {
                continue;
            };
            let addr = addrs
                .into_iter()
                .find(|a| up.source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()));
            let Some(addr) = addr else { continue };
            if let Ok(Ok(_)) = tokio::time::timeout(within, dial(addr, up, settings)).await {
                return true;
            }
        }
    }
    false
}

impl Session {
    /// Dial `gateway` over uplink number `uplink`, check its host key against `pin`,
    /// authenticate with `key`, and (if `forward`) request the remote forward. `progress`
    /// hears each step (for `check`).
    pub async fn connect(
        settings: &Settings,
        pin: &HostKeyPin,
        key: Arc<PrivateKey>,
        gateway: &str,
        uplink: usize,
        forward: bool,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Session, SessionError> {
        let cfg = &settings.config;
        let up = settings.uplinks.get(uplink).cloned().unwrap_or(Uplink {
            name: "default".into(),
            interface: None,
            source: None,
        });
        let deadline = cfg.connect_timeout;
        let addrs: Vec<SocketAddr> = tokio::time::timeout(deadline, tokio::net::lookup_host(gateway))
            .await
            .map_err(|_| SessionError::Timeout("resolving the gateway"))?
            .map_err(|_| SessionError::Resolve(gateway.to_string()))?
            .filter(|a| up.source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
            .collect();
        let addr = *addrs
            .first()
            .ok_or_else(|| SessionError::Resolve(gateway.to_string()))?;
        progress(format!("resolved {gateway} to {addr}"));

        let started = Instant::now();
        let stream = tokio::time::timeout(deadline, dial(addr, &up, settings))
            .await
            .map_err(|_| SessionError::Timeout("TCP connect"))?
            .map_err(|source| SessionError::Connect {
                addr,
                uplink: up.name.clone(),
                source,
            })?;
        progress(format!(
            "connected to {addr} via uplink {} in {} ms",
            up.name,
            started.elapsed().as_millis()
        ));

        let config = Arc::new(client::Config {
            keepalive_interval: Some(cfg.keepalive_interval),
            keepalive_max: cfg.keepalive_max,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let mismatch = Arc::new(Mutex::new(None));
        let (closed_tx, closed) = oneshot::channel();
        let handler = ClientHandler {
            pin: Arc::new(pin.clone()),
            mismatch: Arc::clone(&mismatch),
            signer: Arc::from(cfg.signer.as_str()),
            closed: Some(closed_tx),
            last_refusal_log: Arc::new(AtomicU64::new(0)),
        };
        let connected = tokio::time::timeout(deadline, client::connect_stream(config, stream, handler)).await;
        let taken_mismatch = || mismatch.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut handle = match connected {
            Err(_) => return Err(SessionError::Timeout("SSH handshake")),
            Ok(Err(e)) => {
                return Err(match taken_mismatch() {
                    Some(why) => SessionError::HostKeyMismatch(why),
                    None => SessionError::Ssh(e),
                })
            }
            Ok(Ok(h)) => h,
        };
        progress("host key matches the pin".to_string());

        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten()
                .or(Some(HashAlg::Sha256))
        } else {
            None
        };
        let auth = tokio::time::timeout(
            deadline,
            handle.authenticate_publickey(cfg.user.clone(), PrivateKeyWithHashAlg::new(key, hash)),
        )
        .await
        .map_err(|_| SessionError::Timeout("authentication"))??;
        if !auth.success() {
            return Err(SessionError::AuthRejected);
        }
        progress(format!("authenticated as {}", cfg.user));

        let mut session = Session {
            handle: Arc::new(handle),
            closed: Some(closed),
            forward: settings.forward.clone(),
            forwarding: false,
            uplink,
            uplink_name: up.name,
            gateway: gateway.to_string(),
        };
        if forward {
            tokio::time::timeout(deadline, session.request_forward())
                .await
                .map_err(|_| SessionError::Timeout("remote forward request"))??;
            progress(format!(
                "remote forward {}:{} accepted",
                session.forward.0, session.forward.1
            ));
        }
        Ok(session)
    }

    /// Ask the gateway to route to us (`tcpip-forward`).
    pub async fn request_forward(&mut self) -> Result<(), SessionError> {
        let (addr, port) = self.forward.clone();
        self.handle
            .tcpip_forward(addr, port)
            .await
            .map_err(|e| SessionError::ForwardRefused(e.to_string()))?;
        self.forwarding = true;
        Ok(())
    }

    /// Withdraw the forward: the gateway stops routing to us at once.
    pub async fn cancel_forward(&mut self) -> Result<(), SessionError> {
        let (addr, port) = self.forward.clone();
        self.handle.cancel_tcpip_forward(addr, port).await?;
        self.forwarding = false;
        Ok(())
    }

    /// A liveness check that does not borrow the session: a keepalive asking for a reply,
    /// answered within `within` (true) or not (false). The session's own keepalives end a
    /// dead session only after `keepalive_max` of them; this tells the supervisor at the
    /// first one, so it can open a session over another uplink meanwhile.
    pub fn ping(&self, within: Duration) -> impl std::future::Future<Output = bool> + Send + 'static {
        let handle = Arc::clone(&self.handle);
        async move { matches!(tokio::time::timeout(within, handle.send_ping()).await, Ok(Ok(()))) }
    }

    /// True while the forward is requested.
    pub fn is_forwarding(&self) -> bool {
        self.forwarding
    }

    /// The end of this session, to await separately from the session itself: resolves with
    /// the reason. Taken once.
    pub fn take_closed(&mut self) -> Closed {
        Closed(self.closed.take())
    }

    /// Close the session politely (waiting a second at most: a dead path takes no goodbye).
    pub async fn close(self, why: &'static str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.handle.disconnect(russh::Disconnect::ByApplication, why, ""),
        )
        .await;
    }
}

impl crate::link::Tunnel for Session {
    fn uplink(&self) -> usize {
        self.uplink
    }

    fn address(&self) -> &str {
        &self.gateway
    }

    fn take_closed(&mut self) -> Closed {
        Session::take_closed(self)
    }

    fn is_forwarding(&self) -> bool {
        Session::is_forwarding(self)
    }

    fn request_forward(&mut self) -> impl Future<Output = Result<(), SessionError>> + Send {
        Session::request_forward(self)
    }

    fn cancel_forward(&mut self) -> impl Future<Output = Result<(), SessionError>> + Send {
        Session::cancel_forward(self)
    }

    fn ping(&self, within: Duration) -> impl Future<Output = bool> + Send + 'static {
        Session::ping(self, within)
    }

    fn close(self, why: &'static str) -> impl Future<Output = ()> + Send + 'static {
        Session::close(self, why)
    }
}

/// Opens SSH sessions to one replica: the production [`Connector`](crate::link::Connector).
pub struct SshConnector {
    settings: Arc<Settings>,
    replica: Arc<Replica>,
    key: Arc<PrivateKey>,
}

impl SshConnector {
    /// Sessions to `replica`, authenticated with `key`.
    pub fn new(settings: Arc<Settings>, replica: Arc<Replica>, key: Arc<PrivateKey>) -> SshConnector {
        SshConnector { settings, replica, key }
    }
}

impl crate::link::Connector for SshConnector {
    type Session = Session;

    fn connect(
        &self,
        address: &str,
        uplink: usize,
        forward: bool,
    ) -> impl Future<Output = Result<Session, SessionError>> + Send {
        let key = Arc::clone(&self.key);
        async move {
            let mut quiet = |_: String| {};
            Session::connect(
                &self.settings,
                &self.replica.pin,
                key,
                address,
                uplink,
                forward,
                &mut quiet,
            )
            .await
        }
    }

    fn reachable(&self, within: Duration) -> impl Future<Output = bool> + Send {
        gateway_reachable(&self.settings, &self.replica, within)
    }
}
