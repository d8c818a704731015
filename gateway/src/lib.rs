//! signer-gateway: one signing endpoint for Tezos bakers in front of remote signers, with a
//! durable high watermark and ordered failover.
//!
//! # Layout
//!
//! - [`config`]: the YAML file, parsed strictly and validated before anything starts.
//! - [`tezos`]: base58check encodings, key hashes, signature verification ([`tezos::bls`]
//!   for tz4).
//! - [`payload`]: strict parser of the bytes to sign (kind, chain, level, round).
//! - [`watermark`]: the high-watermark rule and its stores (memory, file).
//! - [`transport`]: how a signer is reached ([`transport::Connect`]: TCP, or a channel through
//!   a Pi's tunnel) and how the broker tells the pool a route changed.
//! - [`pool`]: signers in priority order, health checks, failover, per-signer limits.
//! - [`signing`]: the pipeline parse → policy → watermark → signer → verify.
//! - [`api`]: the octez remote-signer HTTP protocol over [`signing`].
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//! - [`metrics`]: the Prometheus registry.
//! - [`server`]: accept loops, connection limits (total, per source, first byte, headers),
//!   graceful shutdown; [`http_errors`]: hyper's own answers as JSON error traces;
//!   [`limits`]: per-source caps and rate-limited logs, shared with the SSH broker.
//! - [`socket`]: octez's binary socket signer protocol (messages, encodings, framing); not
//!   wired in yet.
//! - [`tunnel`]: the embedded SSH server Pi signers open reverse tunnels to; routes by
//!   identity, newest session wins.
//!
//! `main` parses flags and calls [`Gateway::start`] then [`Gateway::run`]; tests and
//! benchmarks call the same two.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod config;
pub mod http_errors;
pub mod limits;
pub mod metrics;
pub mod payload;
pub mod pool;
pub mod server;
pub mod signing;
pub mod socket;
#[cfg(test)]
mod testing;
pub mod tezos;
pub mod transport;
pub mod tunnel;
pub mod watermark;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Settings, SignerRoute, StoreSettings};
use crate::metrics::StoreMetrics;
use crate::pool::{Connect, Pool, PoolObserver, Signer, SignerLimits, TcpConnect};
use crate::watermark::{FileStore, Instrumented, MemoryStore, OpenError, WatermarkStore};

/// How long the last step of a stop (sessions and background tasks ending after their sockets
/// were shut down) may take before the gateway exits anyway.
pub const STOP_BOUND: Duration = Duration::from_secs(2);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The watermark store is missing, unreadable or locked: refusing to start rather than
    /// signing without it.
    #[error("watermark store: {0}")]
    Store(#[from] OpenError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The SSH broker could not start (host key, port).
    #[error(transparent)]
    Broker(#[from] tunnel::BrokerError),
    /// `watermark.backend: etcd` in a build without the `etcd` feature.
    #[error(
        "watermark.backend: etcd needs a signer-gateway built with the etcd feature \
         (cargo build --release -p signer-gateway --features etcd; building needs protoc)"
    )]
    NoEtcd,
    /// Internal set-up failure (metrics registry).
    #[error("internal: {0}")]
    Internal(String),
}

/// Open the configured watermark store (blocking file I/O runs off the async threads),
/// observed by `metrics`.
pub async fn open_store(store: &StoreSettings, metrics: &StoreMetrics) -> Result<Arc<dyn WatermarkStore>, StartError> {
    let inner: Arc<dyn WatermarkStore> = match store {
        StoreSettings::Memory => {
            warn!("watermark backend is memory: marks are lost on restart; never use this for a real baker");
            Arc::new(MemoryStore::new())
        }
        StoreSettings::File { dir, create_if_missing } => {
            let (dir, create) = (dir.clone(), *create_if_missing);
            let store = tokio::task::spawn_blocking(move || FileStore::open(&dir, create))
                .await
                .map_err(|e| StartError::Internal(format!("opening the watermark store panicked: {e}")))??;
            Arc::new(store)
        }
        #[cfg(feature = "etcd")]
        StoreSettings::Etcd(etcd) => Arc::new(
            watermark::EtcdStore::connect(etcd.clone(), metrics.clone())
                .await
                .map_err(|e| StartError::Internal(e.to_string()))?,
        ),
        #[cfg(not(feature = "etcd"))]
        StoreSettings::Etcd(_) => return Err(StartError::NoEtcd),
    };
    Ok(Arc::new(Instrumented::new(inner, metrics.clone())))
}

/// A gateway whose store is open and whose ports are bound, ready to [`run`](Gateway::run).
pub struct Gateway {
    settings: Settings,
    api_listener: TcpListener,
    admin_listener: TcpListener,
    socket_listener: Option<TcpListener>,
    ssh: Option<(Arc<tunnel::Broker>, TcpListener)>,
    signing: Arc<signing::Signing>,
    metrics: Arc<metrics::Metrics>,
}

impl Gateway {
    /// Open the store and bind both ports. Nothing is served yet.
    pub async fn start(settings: Settings) -> Result<Gateway, StartError> {
        let cfg = &settings.config;
        let metrics = Arc::new(metrics::Metrics::new().map_err(|e| StartError::Internal(e.to_string()))?);
        let store = open_store(&settings.store, &metrics.store).await?;
        metrics.store_healthy.set(i64::from(store.health().healthy));
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let api_listener = bind("api.listen", cfg.api.listen).await?;
        let admin_listener = bind("admin.listen", cfg.admin.listen).await?;
        let socket_listener = match &cfg.socket_api {
            Some(s) => Some(bind("socket_api.listen", s.listen).await?),
            None => None,
        };
        let ssh = match &cfg.ssh {
            Some(ssh_cfg) => {
                let path = ssh_cfg.host_key.clone();
                let key = tokio::task::spawn_blocking(move || tunnel::load_or_create_host_key(&path))
                    .await
                    .map_err(|e| StartError::Internal(format!("loading the host key panicked: {e}")))??;
                let tunnel_signers = cfg
                    .signers
                    .iter()
                    .zip(&settings.routes)
                    .filter_map(|(s, r)| match r {
                        SignerRoute::Tunnel(keys) => Some((s.name.clone(), keys.clone())),
                        SignerRoute::Tcp(_) => None,
                    })
                    .collect();
                let broker = Arc::new(tunnel::Broker::new(
                    ssh_cfg.clone(),
                    key,
                    tunnel_signers,
                    Arc::clone(&metrics),
                ));
                let listener = broker.bind().await?;
                info!(fingerprint = broker.fingerprint(), "ssh host key");
                Some((broker, listener))
            }
            None => None,
        };
        let mut signers = Vec::with_capacity(cfg.signers.len());
        for (i, (s, route)) in cfg.signers.iter().zip(&settings.routes).enumerate() {
            let connector: Arc<dyn Connect> = match (route, &ssh) {
                (SignerRoute::Tcp(address), _) => Arc::new(TcpConnect::new(address.clone())),
                (SignerRoute::Tunnel(_), Some((broker, _))) => Arc::new(broker.connector(&s.name)),
                (SignerRoute::Tunnel(_), None) => {
                    return Err(StartError::Internal(format!("signer {} needs the ssh section", s.name)));
                }
            };
            let limits = SignerLimits {
                max_in_flight: cfg.max_in_flight_per_signer,
                max_queued: cfg.max_queued_per_signer,
            };
            let signer = Signer::with_limits(s.name.clone(), i, connector, limits);
            signers.push(Arc::new(match s.protocol {
                config::SignerProtocol::Http => signer,
                config::SignerProtocol::Socket => signer.speaking_socket(),
            }));
        }
        let pool = Arc::new(Pool::new(
            signers,
            cfg.request_timeout,
            cfg.health_check.clone(),
            Arc::clone(&metrics),
        ));
        if let Some((broker, _)) = &ssh {
            broker.set_observer(Arc::new(PoolObserver(Arc::downgrade(&pool))));
        }
        let signing = Arc::new(signing::Signing::new(
            pool,
            store,
            settings.policy.clone(),
            Arc::clone(&metrics),
        ));
        Ok(Gateway {
            settings,
            api_listener,
            admin_listener,
            socket_listener,
            ssh,
            signing,
            metrics,
        })
    }

    /// Address the signing API listens on.
    pub fn api_addr(&self) -> std::io::Result<SocketAddr> {
        self.api_listener.local_addr()
    }

    /// Address the admin endpoint listens on.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Address the socket-protocol front end listens on, if configured.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.socket_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address the SSH broker listens on, if configured.
    pub fn ssh_addr(&self) -> Option<SocketAddr> {
        self.ssh.as_ref().and_then(|(_, l)| l.local_addr().ok())
    }

    /// SHA256 fingerprint of the SSH host key, if the broker is configured.
    pub fn ssh_fingerprint(&self) -> Option<String> {
        self.ssh.as_ref().map(|(b, _)| b.fingerprint().to_string())
    }

    /// Serve until `shutdown` fires, then stop in this order: stop accepting (API, admin,
    /// SSH); let in-flight HTTP requests finish, through tunnels too, within `shutdown_grace`;
    /// end every SSH session at once; stop the background tasks, waiting at most
    /// [`STOP_BOUND`] for them. The whole stop is bounded.
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = &self.settings.config;
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        self.signing.pool().spawn_health_checks(&tracker, background.clone());

        let api = Arc::new(api::Api::new(
            Arc::clone(&self.signing),
            Arc::clone(&self.metrics),
            &cfg.api,
        ));
        let broker = self.ssh.as_ref().map(|(b, _)| Arc::clone(b));
        let admin = Arc::new(admin::Admin::new(
            Arc::clone(&self.signing),
            Arc::clone(&self.metrics),
            broker.clone(),
        ));
        let ssh_loop = self
            .ssh
            .map(|(broker, listener)| tracker.spawn(broker.serve(listener, tracker.clone(), shutdown.clone())));
        let api_graceful = Arc::new(GracefulShutdown::new());
        let admin_graceful = Arc::new(GracefulShutdown::new());
        let api_limits = server::Limits {
            port: "api",
            max_connections: cfg.api.max_connections,
            per_source: cfg.api.max_connections_per_source,
            first_byte: cfg.api.first_byte_timeout,
            header: cfg.api.header_timeout,
        };
        let api_loop = tracker.spawn(server::serve(
            self.api_listener,
            move |req| Arc::clone(&api).handle(req),
            api_limits,
            Arc::clone(&self.metrics),
            shutdown.clone(),
            Arc::clone(&api_graceful),
        ));
        // The socket front end's connections, drained with the HTTP ones; `hard_stop` ends
        // those still open when the grace period is over.
        let socket_conns = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let socket_loop = match (self.socket_listener, &cfg.socket_api) {
            (Some(listener), Some(sock_cfg)) => {
                let front = Arc::new(socket::Front::new(
                    Arc::clone(&self.signing),
                    Arc::clone(&self.metrics),
                    sock_cfg.clone(),
                ));
                Some(tracker.spawn(front.serve(listener, socket_conns.clone(), shutdown.clone(), hard_stop.clone())))
            }
            _ => None,
        };
        let admin_loop = tracker.spawn(server::serve(
            self.admin_listener,
            move |req| Arc::clone(&admin).handle(req),
            server::Limits::admin(),
            Arc::clone(&self.metrics),
            shutdown.clone(),
            Arc::clone(&admin_graceful),
        ));

        shutdown.cancelled().await;
        info!(grace = ?cfg.shutdown_grace, "shutting down: no new connections, waiting for in-flight requests");
        // The accept loops return on the same token; once they have, nothing else holds the
        // graceful handles and they can be consumed.
        let _ = api_loop.await;
        let _ = admin_loop.await;
        if let Some(l) = ssh_loop {
            let _ = l.await;
        }
        if let Some(l) = socket_loop {
            let _ = l.await;
        }
        socket_conns.close();
        let drain = async {
            socket_conns.wait().await;
            if let Some(g) = Arc::into_inner(api_graceful) {
                g.shutdown().await;
            }
            if let Some(g) = Arc::into_inner(admin_graceful) {
                g.shutdown().await;
            }
        };
        if tokio::time::timeout(cfg.shutdown_grace, drain).await.is_err() {
            warn!("shutdown grace period over: closing the remaining connections");
        }
        hard_stop.cancel();
        // Only now the tunnels: a request in flight through one had its answer above.
        if let Some(broker) = &broker {
            broker.close_all().await;
        }
        background.cancel();
        tracker.close();
        if tokio::time::timeout(STOP_BOUND, tracker.wait()).await.is_err() {
            warn!(bound = ?STOP_BOUND, "tasks still running after the stop bound: exiting anyway");
        }
        info!("stopped");
    }
}
