//! Reaching a tunnel signer through its Pi's current session.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::Broker;
use crate::transport::{Connect, Io};

/// Reaches a tunnel signer: opens a `forwarded-tcpip` channel on its current session.
pub struct TunnelConnect {
    pub(super) broker: Arc<Broker>,
    pub(super) signer: String,
}

impl Connect for TunnelConnect {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn Io>>> {
        let route = {
            let routes = self.broker.routes();
            routes.get(&self.signer).map(|r| (r.handle.clone(), r.forward.clone()))
        };
        let timeout = self.broker.settings.channel_open_timeout;
        let metrics = Arc::clone(&self.broker.metrics);
        Box::pin(async move {
            let Some((handle, (address, port))) = route else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no tunnel session",
                ));
            };
            let started = Instant::now();
            let open = handle.channel_open_forwarded_tcpip(address, port, "127.0.0.1", 0);
            let channel = tokio::time::timeout(timeout, open)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "channel open timed out"))?
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e.to_string()))?;
            metrics.tunnel_channel_open.observe(started.elapsed().as_secs_f64());
            Ok(Box::new(channel.into_stream()) as Box<dyn Io>)
        })
    }

    fn describe(&self) -> String {
        format!("ssh-tunnel://{}", self.signer)
    }
}
