//! HTTP accept loops with limits and graceful shutdown, shared by the API and admin ports.
//!
//! A connection holds one of `max_connections` permits and one of its source address's
//! `per_source` places, must send its first byte within `first_byte` and each request's
//! headers within `header` (hyper's header timeout, which also bounds an idle keep-alive
//! connection); the body deadline is the handler's. Answers hyper makes by itself are JSON
//! error traces ([`crate::http_errors`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::Body;
use crate::http_errors::JsonErrors;
use crate::limits::{LogLimiter, SourceCounts};
use crate::metrics::Metrics;

/// The answer to a connection over its source's cap: a JSON error trace, then close.
fn too_many_from_source() -> Vec<u8> {
    let body = serde_json::json!([{
        "kind": "temporary",
        "id": "signer_gateway.too_many_connections",
        "msg": "too many connections from this address",
    }])
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The limits of one HTTP port.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `api` or `admin`, for metrics and logs.
    pub port: &'static str,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections from one source address at once; more are closed on accept.
    pub per_source: usize,
    /// Time a new connection has to send its first byte.
    pub first_byte: Duration,
    /// Time to receive a request's headers.
    pub header: Duration,
}

impl Limits {
    /// The admin port's: a few scrapers and probes.
    pub fn admin() -> Limits {
        Limits {
            port: "admin",
            max_connections: 64,
            per_source: 16,
            first_byte: Duration::from_secs(2),
            header: Duration::from_secs(5),
        }
    }
}

/// Accepts connections within a cap on those open at once, backing off when `accept` fails.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    backoff: Duration,
}

impl Acceptor {
    /// At most `max_connections` accepted connections open at once (each holds a permit).
    pub fn new(listener: TcpListener, max_connections: usize) -> Acceptor {
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            backoff: Duration::from_millis(10),
        }
    }

    /// The next connection with its permit, once a permit is free; `None` once `cancel` fires.
    pub async fn next(&mut self, cancel: &CancellationToken) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return None,
            p = Arc::clone(&self.permits).acquire_owned() => p.ok()?,
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.backoff = Duration::from_millis(10);
                        return Some((permit, stream, peer));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
    }
}

/// Accept connections on `listener` until `cancel` fires, serving each with `handler` under
/// `graceful` (so shutdown can wait for in-flight requests), within `limits`.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    graceful: Arc<GracefulShutdown>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut accept = Acceptor::new(listener, limits.max_connections);
    let sources = Arc::new(SourceCounts::default());
    let refusals_log = Arc::new(LogLimiter::default());
    loop {
        let Some((permit, stream, peer)) = accept.next(&cancel).await else {
            return;
        };
        let refuse = |reason: &'static str| {
            metrics.http_refused.with_label_values(&[limits.port, reason]).inc();
            if let Some(suppressed) = refusals_log.allow() {
                warn!(port = limits.port, %peer, reason, suppressed, "connection refused");
            }
        };
        let Some(source) = sources.enter(peer.ip(), limits.per_source) else {
            // Answered and closed at once (off the accept loop): the permit goes back to the
            // next client, and this one reads why.
            refuse("per_source");
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&too_many_from_source())).await;
                drop(permit);
            });
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(tower::service_fn(handler.clone()));
        let metrics = Arc::clone(&metrics);
        // A watcher, not the shutdown handle itself: the gateway consumes that handle to
        // drain, which it can only do once the accept loop holds the last reference.
        let watcher = graceful.watcher();
        let refusals_log = Arc::clone(&refusals_log);
        let limits = limits.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _held = (permit, source);
            // A client that connects and says nothing holds a permit for nothing; at shutdown
            // it has no request to finish.
            let first_byte = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(limits.first_byte, stream.readable()) => r,
            };
            if first_byte.is_err() {
                metrics
                    .http_refused
                    .with_label_values(&[limits.port, "first_byte_timeout"])
                    .inc();
                return;
            }
            let io = JsonErrors::new(stream, Some((Arc::clone(&metrics), limits.port)));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header)
                .keep_alive(true)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                if e.is_timeout() {
                    metrics
                        .http_refused
                        .with_label_values(&[limits.port, "header_timeout"])
                        .inc();
                    if let Some(suppressed) = refusals_log.allow() {
                        debug!(port = limits.port, %peer, suppressed, "headers not received in time: closed");
                    }
                } else {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        });
    }
}
