//! How a signer is reached: a byte stream per connection ([`Connect`], [`Io`]) over TCP
//! ([`TcpConnect`]) or through a Pi's SSH tunnel (`tunnel::TunnelConnect`), and how the tunnel
//! broker tells the pool that a route came or went ([`RouteObserver`]). Both the pool and the
//! broker depend on this module; neither depends on the other.

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a signer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How to open a new byte stream to one signer.
pub trait Connect: Send + Sync + 'static {
    /// Open a new stream (TCP connection, tunnel channel…).
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn Io>>>;
    /// Human-readable address for status and logs.
    fn describe(&self) -> String;
}

/// A signer reachable over plain TCP at `host:port` (resolved at every connect).
pub struct TcpConnect {
    address: String,
}

impl TcpConnect {
    /// Connector for `host:port`.
    pub fn new(address: impl Into<String>) -> TcpConnect {
        TcpConnect {
            address: address.into(),
        }
    }
}

impl Connect for TcpConnect {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn Io>>> {
        let address = self.address.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address.as_str()).await?;
            // Small request/response exchanges: Nagle would add tens of ms of tail latency.
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }

    fn describe(&self) -> String {
        format!("tcp://{}", self.address)
    }
}

/// Told when a signer's route appears or disappears, so the pool reacts at once.
pub trait RouteObserver: Send + Sync + 'static {
    /// `up`: a session now carries the signer's forward; otherwise it has none.
    fn route_changed(&self, signer: &str, up: bool, reason: &str);
}
