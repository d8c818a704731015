//! One SSH session's callbacks: public-key authentication of listed keys within the session
//! caps, `tcpip-forward` registering the route, and everything else refused (counted, logged
//! at a bounded rate).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::HashAlg;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::{debug, info, warn};

use super::{key_bytes, Broker, Route};
use crate::limits::{CountGuard, SourceGuard};

/// A connection's places before authentication: one of `max_startups.full`, one of its
/// source's `max_unauthenticated_per_source`. Released when it authenticates.
pub(super) struct Admitted {
    // Held, never read: dropping them frees the places.
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _source: SourceGuard,
}

/// One SSH session's callbacks.
pub(super) struct SessionHandler {
    pub(super) broker: Arc<Broker>,
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    /// Set once a listed key authenticated.
    pub(super) signer: Option<String>,
    /// Counts against the pre-authentication limits until authentication succeeds.
    pub(super) admitted: Option<Admitted>,
    /// The session's places among authenticated sessions (total, per signer).
    pub(super) session_slots: Option<(OwnedSemaphorePermit, CountGuard<String>)>,
    pub(super) authed: Option<oneshot::Sender<()>>,
    pub(super) socket: Arc<std::net::TcpStream>,
    pub(super) forwarded: Option<String>,
    /// Why authentication last failed, counted once when an unauthenticated session ends.
    pub(super) rejected: Option<&'static str>,
    /// Set by the watchdog when the authentication deadline passed.
    pub(super) timed_out: Arc<std::sync::atomic::AtomicBool>,
}

impl SessionHandler {
    /// Remember why this connection failed to authenticate and log it (rate-limited).
    fn reject(&mut self, reason: &'static str, what: &str) {
        self.rejected = Some(reason);
        self.broker.log_auth_failure(self.peer, what);
    }
}

impl Drop for SessionHandler {
    /// A connection that never authenticated is counted once, by its last failure.
    fn drop(&mut self) {
        if self.signer.is_some() && self.authed.is_none() {
            return;
        }
        let reason = if self.timed_out.load(Ordering::Relaxed) {
            "rejected_auth_timeout"
        } else {
            self.rejected.unwrap_or("closed_before_auth")
        };
        self.broker.metrics.ssh_sessions.with_label_values(&[reason]).inc();
    }
}

impl russh::server::Handler for SessionHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.reject(
            "rejected_auth_method",
            &format!("password authentication refused (user {user:?})"),
        );
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.reject(
            "rejected_auth_method",
            &format!("keyboard-interactive authentication refused (user {user:?})"),
        );
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Tell the client at once that an unknown key will not do, before it signs anything
        // (clients that ask first never reach `auth_publickey` with an unknown key).
        let known = key_bytes(offer.public_key).is_some_and(|b| self.broker.keys.contains_key(&b));
        if known {
            return Ok(Auth::Accept);
        }
        let fp = offer.public_key.fingerprint(HashAlg::Sha256);
        self.reject(
            "rejected_unknown_key",
            &format!("unknown key {fp} (user {user:?}) refused"),
        );
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let signer = key_bytes(key.public_key).and_then(|b| self.broker.keys.get(&b).cloned());
        match signer {
            Some(name) => {
                // Caps on authenticated sessions: all together, and per signer (newest wins
                // makes a reconnect briefly hold two; a leaked key cannot open hundreds).
                let total = Arc::clone(&self.broker.authenticated).try_acquire_owned().ok();
                let mine = self
                    .broker
                    .sessions_per_signer
                    .enter(name.clone(), self.broker.settings.max_sessions_per_signer);
                let (Some(total), Some(mine)) = (total, mine) else {
                    self.reject(
                        "rejected_too_many_sessions",
                        &format!("too many sessions for signer {name} (or in all): refused"),
                    );
                    return Ok(Auth::reject());
                };
                info!(signer = %name, user, "ssh key accepted");
                self.session_slots = Some((total, mine));
                self.signer = Some(name);
                Ok(Auth::Accept)
            }
            None => {
                let fp = key.public_key.fingerprint(HashAlg::Sha256);
                self.reject(
                    "rejected_unknown_key",
                    &format!("unknown key {fp} (user {user:?}) refused"),
                );
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.admitted.take();
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        self.broker.metrics.ssh_sessions.with_label_values(&["accepted"]).inc();
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        debug!(signer = ?self.signer, "session channel refused (no shell, exec, subsystem or agent)");
        self.broker
            .metrics
            .ssh_refused_requests
            .with_label_values(&["session"])
            .inc();
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(suppressed) = self.broker.refusals_log.allow() {
            warn!(signer = ?self.signer, host, port, suppressed, "direct-tcpip refused: tunnels never reach into the cluster");
        }
        self.broker
            .metrics
            .ssh_refused_requests
            .with_label_values(&["direct_tcpip"])
            .inc();
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(signer) = self.signer.clone() else {
            return Ok(false);
        };
        // Nothing is bound. A client asking for port 0 expects to be told one: name the
        // octez-signer port, which it only uses to label the channels we open.
        if *port == 0 {
            *port = 6732;
        }
        let route = Route {
            session: self.id,
            handle: session.handle(),
            forward: (address.to_string(), *port),
            peer: self.peer,
            since: SystemTime::now(),
            socket: Arc::clone(&self.socket),
        };
        self.forwarded = Some(signer.clone());
        self.broker.register(&signer, route);
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        _port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if let Some(signer) = self.forwarded.take() {
            self.broker
                .unregister(&signer, self.id, "forward cancelled by the client");
        }
        Ok(true)
    }

    async fn streamlocal_forward(&mut self, _socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        self.broker
            .metrics
            .ssh_refused_requests
            .with_label_values(&["streamlocal"])
            .inc();
        Ok(false)
    }

    async fn channel_close(&mut self, _channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        Ok(())
    }
}
