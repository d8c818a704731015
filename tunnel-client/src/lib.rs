//! signer-tunnel: the Pi-side client of signer-gateway's SSH broker. It replaces autossh:
//! it dials the gateway, pins its host key, authenticates with this Pi's key, asks for the
//! reverse forward, and connects every channel the gateway opens to the local signer.
//!
//! # Layout
//!
//! - [`config`]: the YAML file, validated before anything connects.
//! - [`session`]: one SSH session (dial over an uplink, verify, authenticate, forward, serve).
//! - [`supervisor`]: reconnects with backoff, prefers the best uplink, gates the forward on
//!   the local signer's health.
//! - [`probe`]: the local signer health probe.
//! - [`notify`]: systemd notifications.
//! - [`keys`]: identity key loading and generation.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod keys;
pub mod notify;
pub mod probe;
pub mod session;
pub mod supervisor;
