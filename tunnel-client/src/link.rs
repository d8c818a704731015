//! The seam between a supervisor and the network: "open a session over this uplink to this
//! address" ([`Connector`]) and the session's life ([`Tunnel`]: its end, its liveness, its
//! forward). Production plugs in SSH ([`crate::session::SshConnector`]); the supervisor's tests
//! plug in a scripted network and run on paused time.
//!
//! As in rathole's control channels, a session is owned by one value: the supervisor holds it
//! while it serves and drops it (after a polite close, when the path still takes one) to end
//! it; a session being opened is a future, dropped with its socket when another attempt wins.

use std::future::Future;
use std::time::Duration;

use crate::session::{Closed, SessionError};

/// Opens sessions to one gateway replica.
pub trait Connector: Send + Sync + 'static {
    /// An open session.
    type Session: Tunnel;

    /// Open a session to `address` over uplink number `uplink` (preference order), asking
    /// for the remote forward when `forward`. Fails within the connector's own timeouts.
    fn connect(
        &self,
        address: &str,
        uplink: usize,
        forward: bool,
    ) -> impl Future<Output = Result<Self::Session, SessionError>> + Send;

    /// Does any address of the replica accept TCP connections over any uplink (no handshake)?
    fn reachable(&self, within: Duration) -> impl Future<Output = bool> + Send;
}

/// An open session, as the supervisor drives it. Dropping it drops the connection.
pub trait Tunnel: Send + 'static {
    /// The uplink it runs over (index in preference order).
    fn uplink(&self) -> usize;

    /// The gateway address it was opened to.
    fn address(&self) -> &str;

    /// The end of the session, to await beside other work. Taken once.
    fn take_closed(&mut self) -> Closed;

    /// True while the forward is requested.
    fn is_forwarding(&self) -> bool;

    /// Ask the gateway to route to us.
    fn request_forward(&mut self) -> impl Future<Output = Result<(), SessionError>> + Send;

    /// Withdraw the forward: the gateway stops routing to us at once.
    fn cancel_forward(&mut self) -> impl Future<Output = Result<(), SessionError>> + Send;

    /// A liveness check that does not borrow the session: answered within `within` or not.
    fn ping(&self, within: Duration) -> impl Future<Output = bool> + Send + 'static;

    /// Close politely, bounded.
    fn close(self, why: &'static str) -> impl Future<Output = ()> + Send + 'static;
}
