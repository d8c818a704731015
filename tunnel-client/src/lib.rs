//! signer-tunnel: the Pi-side client of signer-gateway's SSH broker. It replaces autossh:
//! it dials the gateway, pins its host key, authenticates with this Pi's key, asks for the
//! reverse forward, and connects every channel the gateway opens to the local signer.
//!
//! # Layout
//!
//! - [`config`]: the YAML file, validated before anything connects; one gateway
//!   (`gateways:`) or several replicas (`replicas:`), each resolved to a [`config::Replica`].
//! - [`supervisor`]: one per replica; reconnects with backoff, prefers the best uplink, gates
//!   the forward on the local signer's health. [`supervisor::run`] starts them all.
//! - [`link`]: the seam between a supervisor and the network (open a session, its life).
//! - [`session`]: one SSH session (dial over an uplink, verify, authenticate, forward, serve),
//!   and the production [`link::Connector`].
//! - [`probe`]: the local signer health probe, in its protocol (HTTP, or octez's socket
//!   protocol), and the one task that tracks it for everyone.
//! - [`status`]: each replica's state and the systemd STATUS line.
//! - [`notify`]: systemd notifications and the watchdog.
//! - [`keys`]: identity key loading and generation.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod keys;
pub mod link;
pub mod notify;
pub mod probe;
pub mod session;
pub mod status;
pub mod supervisor;
#[cfg(test)]
mod testing;
