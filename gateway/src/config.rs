//! The gateway's YAML configuration: parsed strictly (unknown fields are errors), then
//! validated as a whole before any port is bound.
//!
//! YAML is read with `serde-saphyr`: `serde_yaml` is archived, and serde-saphyr keeps the same
//! serde model, is pure Rust, and reports errors with the line, column and field path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::payload::Kind;
use crate::tezos::{Curve, Pkh};

use signer_common::{check_host_port, invalid};
pub use signer_common::{ConfigError, LogFormat};

/// Default signing API address: octez-signer's usual port, loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:6732";
/// Default admin (metrics, health, status) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default body cap: consensus payloads are a few hundred bytes, manager operations more.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default cap on concurrent client connections to the signing API.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time one signer gets to answer one request before the next one is tried.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The signing API that bakers call.
    #[serde(default)]
    pub api: ApiConfig,
    /// The same signing service in octez's binary socket protocol, for bakers given a
    /// `tcp://gateway:7732/tz…` key URI (off unless this section is present).
    #[serde(default)]
    pub socket_api: Option<SocketApiConfig>,
    /// Metrics, health and status endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where high watermarks are kept.
    pub watermark: WatermarkConfig,
    /// Which request kinds each key may sign.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Signers, in priority order: the first healthy one serves.
    pub signers: Vec<SignerConfig>,
    /// The embedded SSH server that Pi signers open reverse tunnels to (required when a
    /// signer has `tunnel`).
    #[serde(default)]
    pub ssh: Option<SshConfig>,
    /// Time one signer gets for one request before the next is tried (e.g. "3s").
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight on one signer at once; more wait (default 16). A burst must not
    /// become as many channels through a Pi's tunnel and connections to its signer.
    #[serde(default = "default_max_in_flight_per_signer")]
    pub max_in_flight_per_signer: usize,
    /// Requests waiting for one signer beyond that; more go to the next signer (default 256).
    #[serde(default = "default_max_queued_per_signer")]
    pub max_queued_per_signer: usize,
    /// Background health checks of every signer.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT (e.g. "10s").
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log output format; `--log-format` on the command line wins.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Signing API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on (default 127.0.0.1:6732).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Path prefix the API lives under, e.g. "/signer" (default: none).
    #[serde(default)]
    pub path_prefix: String,
    /// Largest request body accepted; larger ones get 413 (default 65536).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most client connections served at once; more wait to be accepted (default 1024).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections from one source address at once; more are closed on accept, so one
    /// client cannot take every permit (default 64).
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// A new connection must send its first byte within this (default 2s).
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time to receive a request's headers, counted from when the connection starts waiting
    /// for one (also bounds an idle keep-alive connection) (default 5s).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time to receive a request's whole body once its headers are in; a slower client gets
    /// 408 (default 5s; a signing payload is under 1 kB).
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A body over `max_body_bytes` is read and discarded up to this many bytes before the 413
    /// is sent, so the client can read it instead of meeting a reset (default 1048576).
    #[serde(default = "default_max_drain_bytes")]
    pub max_drain_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            path_prefix: String::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: default_max_connections_per_source(),
            first_byte_timeout: default_first_byte_timeout(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_drain_bytes: default_max_drain_bytes(),
        }
    }
}

/// The socket-protocol listener for bakers (`tcp://` key URIs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketApiConfig {
    /// Address to listen on (octez's socket signers use port 7732).
    pub listen: SocketAddr,
    /// Most client connections served at once; more wait to be accepted (default 256).
    #[serde(default = "default_socket_max_connections")]
    pub max_connections: usize,
    /// Most connections from one source address at once; more are closed on accept
    /// (default 64).
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Time a connection may wait for its next request before it is closed (default 30s;
    /// octez's client opens a connection per operation and sends its requests at once).
    #[serde(default = "default_socket_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time to receive a whole request once its first byte is in, and to write an answer
    /// (default 5s; a request is under 64 KiB).
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
}

/// Admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (default 127.0.0.1:9090).
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

/// Watermark store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkBackend {
    /// One JSON file in `dir`, written durably (the default).
    File,
    /// In memory only: marks are lost on restart. For tests and demos.
    Memory,
    /// One key per mark in an etcd cluster (v3 API), shared by every gateway replica. Needs a
    /// build with the `etcd` cargo feature.
    Etcd,
}

/// Watermark store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// `file` (default) or `memory`.
    #[serde(default = "default_backend")]
    pub backend: WatermarkBackend,
    /// Directory of the file store (required for `file`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Start with an empty store when none exists. Off by default: a missing store on a
    /// gateway that has signed before means lost state, and starting empty would allow a
    /// double signature.
    #[serde(default)]
    pub create_if_missing: bool,
    /// The etcd cluster (required for `etcd`).
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

/// `watermark.etcd`: where the shared marks live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Every key the gateway writes starts with this (default `/signer-gateway/`).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// Bound on one store operation: past it the request is refused (`temporary`).
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TLS to the members (required with `https://` endpoints).
    #[serde(default)]
    pub tls: Option<EtcdTlsConfig>,
    /// etcd user (auth enabled on the cluster); needs `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding that user's password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `watermark.etcd.tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA certificate (PEM) the members' certificates chain to.
    pub ca: PathBuf,
    /// Client certificate (PEM), for clusters that require one; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl WatermarkConfig {
    /// The store to open; errors name the field.
    fn validate(&self) -> Result<StoreSettings, ConfigError> {
        if self.backend != WatermarkBackend::Etcd && self.etcd.is_some() {
            return Err(invalid(
                "watermark.etcd",
                "only meaningful with watermark.backend: etcd",
            ));
        }
        match (self.backend, &self.dir) {
            (WatermarkBackend::File, Some(dir)) => Ok(StoreSettings::File {
                dir: dir.clone(),
                create_if_missing: self.create_if_missing,
            }),
            (WatermarkBackend::File, None) => Err(invalid("watermark.dir", "required when watermark.backend is file")),
            (WatermarkBackend::Memory | WatermarkBackend::Etcd, Some(_)) => {
                Err(invalid("watermark.dir", "only meaningful with watermark.backend: file"))
            }
            (WatermarkBackend::Memory, None) => Ok(StoreSettings::Memory),
            (WatermarkBackend::Etcd, None) => match &self.etcd {
                Some(etcd) => etcd.validate(self.create_if_missing).map(StoreSettings::Etcd),
                None => Err(invalid("watermark.etcd", "required when watermark.backend is etcd")),
            },
        }
    }
}

impl EtcdConfig {
    fn validate(&self, create_if_missing: bool) -> Result<EtcdSettings, ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid("watermark.etcd.endpoints", "at least one endpoint is required"));
        }
        let mut schemes = BTreeSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let field = format!("watermark.etcd.endpoints[{i}]");
            let uri: http::Uri = e
                .parse()
                .map_err(|err| invalid(field.clone(), format!("{e:?} is not a URL: {err}")))?;
            let scheme = uri.scheme_str().unwrap_or_default();
            if !matches!(scheme, "http" | "https") || uri.host().is_none() || uri.port_u16().is_none() {
                return Err(invalid(
                    field,
                    format!("{e:?}: want http://host:port or https://host:port"),
                ));
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                return Err(invalid(field, format!("{e:?}: no path or query allowed")));
            }
            schemes.insert(scheme.to_string());
        }
        if schemes.len() > 1 {
            return Err(invalid("watermark.etcd.endpoints", "mixes http:// and https://"));
        }
        let https = schemes.contains("https");
        let valid_prefix = self.prefix.starts_with('/')
            && self.prefix.ends_with('/')
            && self.prefix.len() <= 256
            && self.prefix.chars().all(|c| c.is_ascii_graphic());
        if !valid_prefix {
            return Err(invalid(
                "watermark.etcd.prefix",
                "must start and end with '/', printable ASCII, at most 256 characters",
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > Duration::from_secs(60) {
            return Err(invalid("watermark.etcd.request_timeout", "must be between 1ms and 60s"));
        }
        let tls = match (&self.tls, https) {
            (Some(_), false) => {
                return Err(invalid("watermark.etcd.tls", "needs https:// endpoints"));
            }
            (None, true) => {
                return Err(invalid(
                    "watermark.etcd.tls",
                    "required with https:// endpoints (at least `ca`)",
                ));
            }
            (None, false) => None,
            (Some(t), true) => Some(EtcdTls {
                ca: t.ca.clone(),
                identity: match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    (None, None) => None,
                    (Some(_), None) => return Err(invalid("watermark.etcd.tls.key", "required with tls.cert")),
                    (None, Some(_)) => return Err(invalid("watermark.etcd.tls.cert", "required with tls.key")),
                },
            }),
        };
        let auth = match (&self.username, &self.password_file) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
            (Some(_), Some(_)) => return Err(invalid("watermark.etcd.username", "must not be empty")),
            (Some(_), None) => {
                return Err(invalid(
                    "watermark.etcd.password_file",
                    "required with watermark.etcd.username",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "watermark.etcd.username",
                    "required with watermark.etcd.password_file",
                ))
            }
            (None, None) => None,
        };
        Ok(EtcdSettings {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            request_timeout: self.request_timeout,
            tls,
            auth,
            create_if_missing,
        })
    }
}

/// Policy section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Kinds any key may sign unless it has its own entry (default: all three consensus kinds).
    #[serde(default = "default_kinds")]
    pub default_kinds: Vec<Kind>,
    /// Per-key overrides, by tz address.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyPolicyConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_kinds: default_kinds(),
            keys: BTreeMap::new(),
        }
    }
}

/// One key's policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicyConfig {
    /// Consensus kinds this key may sign (default: `policy.default_kinds`).
    #[serde(default)]
    pub kinds: Option<Vec<Kind>>,
    /// Allow generic operations (0x03: transfers, delegations, reveals…). Default false.
    #[serde(default)]
    pub allow_generic: bool,
    /// Allow packed Michelson data (0x05). Default false.
    #[serde(default)]
    pub allow_packed: bool,
    /// `consensus` (default) or `companion`: a tz4 companion key signs attestations (tag 41)
    /// and nothing else.
    #[serde(default)]
    pub role: KeyRole,
    /// Pass `GET /bls_prove_possession/<pkh>` on to the signers for this tz4 key (default
    /// false, as in octez and Signatory); the proof is verified before it is returned.
    #[serde(default)]
    pub allow_prove_possession: bool,
}

/// What a key is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// A consensus key: blocks, preattestations, attestations as `kinds` allows.
    #[default]
    Consensus,
    /// A tz4 companion key: the baker sends it the very attestation bytes it sent the
    /// consensus key (DAL); it signs attestations only.
    Companion,
}

/// One signer: reached over TCP (`address`) or through a reverse SSH tunnel (`tunnel`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// Unique name, used in logs, metrics and status.
    pub name: String,
    /// `host:port` of a signer reachable over TCP (resolved at each connect, so a
    /// Kubernetes service name works).
    #[serde(default)]
    pub address: Option<String>,
    /// A signer that connects in over SSH and asks for a reverse forward.
    #[serde(default)]
    pub tunnel: Option<TunnelSignerConfig>,
    /// The protocol the signer speaks: `http` (octez-signer's HTTP protocol, the default) or
    /// `socket` (octez's binary socket protocol, `octez-signer launch socket signer`, or a
    /// device such as a Russignol reached at `tcp://…:7732`). Either is used the same way.
    #[serde(default)]
    pub protocol: SignerProtocol,
}

pub use signer_common::SignerProtocol;

/// A tunnel signer's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSignerConfig {
    /// OpenSSH public keys allowed to act as this signer (`ssh-ed25519 AAAA… comment`;
    /// ecdsa and rsa keys are accepted too).
    pub keys: Vec<String>,
}

/// How the gateway reaches a signer, resolved.
#[derive(Debug, Clone)]
pub enum SignerRoute {
    /// Plain TCP to `host:port`.
    Tcp(String),
    /// Through the signer's SSH session; these keys authenticate it.
    Tunnel(Vec<russh::keys::PublicKey>),
}

/// The embedded SSH server's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Address the Pis connect to (default 0.0.0.0:2222).
    #[serde(default = "default_ssh_listen")]
    pub listen: SocketAddr,
    /// ed25519 host key (OpenSSH format); generated (mode 0600) if missing. Its SHA256
    /// fingerprint is logged at start and shown in /status: pin it in the tunnel clients.
    pub host_key: PathBuf,
    /// Server keepalive interval (default 1s).
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the session is dropped (default 3: a silent link is
    /// dropped about (3 + 1) x 1s after its last byte).
    #[serde(default = "default_keepalive_max")]
    pub keepalive_max: usize,
    /// A session with no traffic at all for this long is dropped (default 30s; keepalives
    /// count as traffic, so this only catches a peer stuck mid-write).
    #[serde(default = "default_inactivity_timeout", with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// TCP_USER_TIMEOUT on every SSH socket: unacknowledged data older than this kills the
    /// connection, which keepalives cannot notice while a write is blocked (default 5s).
    #[serde(default = "default_tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Time a new connection gets to finish the handshake and authenticate (default 10s).
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Connections before authentication, as OpenSSH's `MaxStartups start:rate:full`: past
    /// `start` a new one is dropped with probability `rate`% (rising to 100% at `full`), so a
    /// flood cannot hold every place (default "10:30:64").
    #[serde(default)]
    pub max_startups: Startups,
    /// Connections before authentication from one source address (default 8): a flood from
    /// one address leaves room for a Pi from another.
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// A new connection must send its first bytes (the SSH banner) within this (default 3s).
    #[serde(default = "default_banner_timeout", with = "humantime_serde")]
    pub banner_timeout: Duration,
    /// Authenticated sessions at once, all signers together (default 256).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Authenticated sessions of one signer at once (default 4: a reconnect briefly makes two;
    /// a leaked key cannot open hundreds).
    #[serde(default = "default_max_sessions_per_signer")]
    pub max_sessions_per_signer: usize,
    /// Time to open a channel through a tunnel before the attempt fails over (default 1s).
    #[serde(default = "default_channel_open_timeout", with = "humantime_serde")]
    pub channel_open_timeout: Duration,
    /// More replacements of one signer's session than this within a minute is reported as
    /// two devices sharing one key (default 6: an uplink switching back and forth stays
    /// below it; two devices fighting over one key replace each other every few seconds).
    #[serde(default = "default_max_replacements_per_minute")]
    pub max_replacements_per_minute: u32,
}

/// Health-check settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET on each signer (default `/authorized_keys`).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between probes (default 1s).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time a probe may take (default 500ms).
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down signer up (default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up signer down (default 1: failover must be fast,
    /// and a request failure already counts as one).
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

fn default_ssh_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 2222))
}
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_keepalive_max() -> usize {
    3
}
fn default_inactivity_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tcp_user_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_auth_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_unauthenticated_per_source() -> usize {
    8
}
fn default_banner_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_sessions() -> usize {
    256
}
fn default_max_sessions_per_signer() -> usize {
    4
}

/// OpenSSH's `MaxStartups start:rate:full`, written `"10:30:64"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startups {
    /// Unauthenticated connections accepted without a drop.
    pub start: usize,
    /// Drop probability (percent) once `start` are open, rising linearly to 100 at `full`.
    pub rate: u32,
    /// Unauthenticated connections at most.
    pub full: usize,
}

impl Default for Startups {
    fn default() -> Self {
        Startups {
            start: 10,
            rate: 30,
            full: 64,
        }
    }
}

impl Startups {
    /// Drop probability (0..=1) for a new connection while `open` are unauthenticated.
    pub fn drop_probability(&self, open: usize) -> f64 {
        if open < self.start {
            return 0.0;
        }
        if open >= self.full {
            return 1.0;
        }
        let over = (open - self.start) as f64 / (self.full - self.start) as f64;
        let rate = f64::from(self.rate) / 100.0;
        rate + (1.0 - rate) * over
    }
}

impl std::str::FromStr for Startups {
    type Err = String;
    fn from_str(s: &str) -> Result<Startups, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("{s:?}: expected start:rate:full, e.g. \"10:30:64\"");
        let [start, rate, full] = parts.as_slice() else {
            return Err(bad());
        };
        let start: usize = start.trim().parse().map_err(|_| bad())?;
        let rate: u32 = rate.trim().parse().map_err(|_| bad())?;
        let full: usize = full.trim().parse().map_err(|_| bad())?;
        if full == 0 || start > full || rate > 100 {
            return Err(format!("{s:?}: needs start <= full, full >= 1 and rate <= 100"));
        }
        Ok(Startups { start, rate, full })
    }
}

impl<'de> Deserialize<'de> for Startups {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
fn default_channel_open_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_replacements_per_minute() -> u32 {
    6
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6732))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_in_flight_per_signer() -> usize {
    16
}
fn default_max_queued_per_signer() -> usize {
    256
}
fn default_max_connections_per_source() -> usize {
    64
}
fn default_socket_max_connections() -> usize {
    256
}
fn default_socket_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_drain_bytes() -> usize {
    1 << 20
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_shutdown_grace() -> Duration {
    DEFAULT_SHUTDOWN_GRACE
}
fn default_backend() -> WatermarkBackend {
    WatermarkBackend::File
}
fn default_etcd_prefix() -> String {
    "/signer-gateway/".to_string()
}
fn default_etcd_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_kinds() -> Vec<Kind> {
    Kind::ALL.to_vec()
}
fn default_health_path() -> String {
    "/authorized_keys".to_string()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    1
}

/// The policy in its runtime form: every key resolved, nothing optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Kinds allowed for keys without an entry.
    pub default_kinds: BTreeSet<Kind>,
    /// Per-key rules.
    pub keys: BTreeMap<Pkh, KeyPolicy>,
}

/// One key's resolved policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Consensus kinds allowed.
    pub kinds: BTreeSet<Kind>,
    /// 0x03 allowed.
    pub allow_generic: bool,
    /// 0x05 allowed.
    pub allow_packed: bool,
    /// Consensus or companion key.
    pub role: KeyRole,
    /// `/bls_prove_possession` passed on.
    pub allow_prove_possession: bool,
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The raw parsed file (listeners, timeouts, signers…), all checked.
    pub config: Config,
    /// Resolved policy.
    pub policy: Policy,
    /// How each signer of `config.signers` is reached, same order.
    pub routes: Vec<SignerRoute>,
    /// The watermark store, resolved: nothing optional left to re-check.
    pub store: StoreSettings,
}

/// Which watermark store to open, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// In memory: lost at every restart (tests and demos).
    Memory,
    /// The file store in `dir`.
    File {
        /// `watermark.dir`.
        dir: PathBuf,
        /// `watermark.create_if_missing`.
        create_if_missing: bool,
    },
    /// The etcd store.
    Etcd(EtcdSettings),
}

/// `watermark.etcd`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Member URLs, each `http://` or `https://` (all the same scheme).
    pub endpoints: Vec<String>,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    /// Bound on one store operation.
    pub request_timeout: Duration,
    /// TLS: CA, and the client certificate and key if any.
    pub tls: Option<EtcdTls>,
    /// User and the file holding the password.
    pub auth: Option<(String, PathBuf)>,
    /// `watermark.create_if_missing`: create the store's marker under an empty prefix.
    pub create_if_missing: bool,
}

/// `watermark.etcd.tls`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// CA certificate file.
    pub ca: PathBuf,
    /// Client certificate and key files.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        signer_common::load_file(path, Config::parse)
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        signer_common::parse_yaml::<Config>(text)?.validate()
    }

    /// Cross-field checks; returns the runtime form.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let api = &self.api;
        if !api.path_prefix.is_empty() && (!api.path_prefix.starts_with('/') || api.path_prefix.ends_with('/')) {
            return Err(invalid(
                "api.path_prefix",
                "must start with '/' and not end with '/' (e.g. \"/signer\")",
            ));
        }
        if api.max_body_bytes < 256 {
            return Err(invalid(
                "api.max_body_bytes",
                "must be at least 256 (a block payload is ~234 bytes)",
            ));
        }
        if api.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1"));
        }
        if self.max_in_flight_per_signer == 0 {
            return Err(invalid("max_in_flight_per_signer", "must be at least 1"));
        }
        if api.max_connections_per_source == 0 {
            return Err(invalid("api.max_connections_per_source", "must be at least 1"));
        }
        for (field, d) in [
            ("api.first_byte_timeout", api.first_byte_timeout),
            ("api.header_timeout", api.header_timeout),
            ("api.body_timeout", api.body_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if api.listen == self.admin.listen && api.listen.port() != 0 {
            return Err(invalid("admin.listen", "must differ from api.listen"));
        }
        let store = self.watermark.validate()?;
        if self.signers.is_empty() {
            return Err(invalid("signers", "at least one signer is required"));
        }
        let mut names = BTreeSet::new();
        let mut routes = Vec::with_capacity(self.signers.len());
        let mut tunnel_keys: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for (i, s) in self.signers.iter().enumerate() {
            let valid_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !valid_name {
                return Err(invalid(
                    format!("signers[{i}].name"),
                    "must be 1-64 characters of letters, digits, '-', '_' or '.'",
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    format!("signers[{i}].name"),
                    format!("duplicate signer name {:?}", s.name),
                ));
            }
            routes.push(match (&s.address, &s.tunnel) {
                (Some(address), None) => {
                    check_host_port(address).map_err(|m| invalid(format!("signers[{i}].address"), m))?;
                    SignerRoute::Tcp(address.clone())
                }
                (None, Some(t)) => {
                    if t.keys.is_empty() {
                        return Err(invalid(
                            format!("signers[{i}].tunnel.keys"),
                            "at least one public key is required",
                        ));
                    }
                    let mut keys = Vec::with_capacity(t.keys.len());
                    for (j, line) in t.keys.iter().enumerate() {
                        let field = format!("signers[{i}].tunnel.keys[{j}]");
                        let key = russh::keys::PublicKey::from_openssh(line.trim())
                            .map_err(|e| invalid(field.clone(), format!("not an OpenSSH public key line: {e}")))?;
                        let bytes = key.to_bytes().map_err(|e| invalid(field.clone(), e.to_string()))?;
                        if let Some(other) = tunnel_keys.insert(bytes, i) {
                            return Err(invalid(
                                field,
                                format!("this key is already listed for signers[{other}]"),
                            ));
                        }
                        keys.push(key);
                    }
                    SignerRoute::Tunnel(keys)
                }
                _ => {
                    return Err(invalid(
                        format!("signers[{i}]"),
                        "set exactly one of `address` and `tunnel`",
                    ));
                }
            });
        }
        let has_tunnels = routes.iter().any(|r| matches!(r, SignerRoute::Tunnel(_)));
        match &self.ssh {
            None if has_tunnels => {
                return Err(invalid(
                    "ssh",
                    "required when a signer has `tunnel` (the SSH server it connects to)",
                ));
            }
            Some(ssh) => ssh.validate()?,
            None => {}
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be greater than zero"));
        }
        if let Some(sock) = &self.socket_api {
            for (field, zero) in [
                ("socket_api.max_connections", sock.max_connections == 0),
                (
                    "socket_api.max_connections_per_source",
                    sock.max_connections_per_source == 0,
                ),
                ("socket_api.idle_timeout", sock.idle_timeout.is_zero()),
                ("socket_api.frame_timeout", sock.frame_timeout.is_zero()),
            ] {
                if zero {
                    return Err(invalid(field, "must be greater than zero"));
                }
            }
            // Port 0 picks a free port for each: only fixed ports can collide.
            if sock.listen.port() != 0 && [self.api.listen, self.admin.listen].contains(&sock.listen) {
                return Err(invalid(
                    "socket_api.listen",
                    "must differ from api.listen and admin.listen",
                ));
            }
        }
        let hc = &self.health_check;
        if !hc.path.starts_with('/') {
            return Err(invalid("health_check.path", "must start with '/'"));
        }
        let socket_signers = self.signers.iter().any(|s| s.protocol == SignerProtocol::Socket);
        if socket_signers && crate::socket::translate(&http::Method::GET, &hc.path, b"").is_err() {
            return Err(invalid(
                "health_check.path",
                "a socket signer is configured, and the socket protocol has no counterpart of this path: use /authorized_keys (or /keys/<pkh>)",
            ));
        }
        if hc.interval.is_zero() {
            return Err(invalid("health_check.interval", "must be greater than zero"));
        }
        if hc.timeout.is_zero() {
            return Err(invalid("health_check.timeout", "must be greater than zero"));
        }
        if hc.rise == 0 {
            return Err(invalid("health_check.rise", "must be at least 1"));
        }
        if hc.fall == 0 {
            return Err(invalid("health_check.fall", "must be at least 1"));
        }
        let policy = self.resolve_policy()?;
        Ok(Settings {
            config: self,
            policy,
            routes,
            store,
        })
    }

    fn resolve_policy(&self) -> Result<Policy, ConfigError> {
        let default_kinds: BTreeSet<Kind> = self.policy.default_kinds.iter().copied().collect();
        let mut keys = BTreeMap::new();
        for (name, k) in &self.policy.keys {
            let field = format!("policy.keys.{name}");
            let pkh: Pkh = name
                .parse()
                .map_err(|e| invalid(field.clone(), format!("not a tz address: {e}")))?;
            let bls_only = |what: &str| {
                if pkh.curve == Curve::Bls {
                    Ok(())
                } else {
                    Err(invalid(format!("{field}.{what}"), "only for tz4 (BLS) keys"))
                }
            };
            let kinds = match (&k.kinds, k.role) {
                (Some(list), _) => list.iter().copied().collect(),
                (None, KeyRole::Companion) => BTreeSet::from([Kind::Attestation]),
                (None, KeyRole::Consensus) => default_kinds.clone(),
            };
            if k.role == KeyRole::Companion {
                bls_only("role")?;
                if kinds != BTreeSet::from([Kind::Attestation]) {
                    return Err(invalid(
                        format!("{field}.kinds"),
                        "a companion key signs attestations and nothing else: leave kinds out or set [attestation]",
                    ));
                }
                if k.allow_generic || k.allow_packed {
                    return Err(invalid(
                        format!("{field}.role"),
                        "a companion key signs attestations only: allow_generic and allow_packed must be false",
                    ));
                }
            }
            if k.allow_prove_possession {
                bls_only("allow_prove_possession")?;
            }
            keys.insert(
                pkh,
                KeyPolicy {
                    kinds,
                    allow_generic: k.allow_generic,
                    allow_packed: k.allow_packed,
                    role: k.role,
                    allow_prove_possession: k.allow_prove_possession,
                },
            );
        }
        Ok(Policy { default_kinds, keys })
    }
}

impl SshConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("ssh.keepalive_interval", self.keepalive_interval),
            ("ssh.inactivity_timeout", self.inactivity_timeout),
            ("ssh.tcp_user_timeout", self.tcp_user_timeout),
            ("ssh.auth_timeout", self.auth_timeout),
            ("ssh.channel_open_timeout", self.channel_open_timeout),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.keepalive_max == 0 {
            return Err(invalid(
                "ssh.keepalive_max",
                "must be at least 1 (0 would never drop a silent peer)",
            ));
        }
        for (field, n) in [
            (
                "ssh.max_unauthenticated_per_source",
                self.max_unauthenticated_per_source,
            ),
            ("ssh.max_sessions", self.max_sessions),
            ("ssh.max_sessions_per_signer", self.max_sessions_per_signer),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.banner_timeout.is_zero() {
            return Err(invalid("ssh.banner_timeout", "must be greater than zero"));
        }
        if self.host_key.as_os_str().is_empty() {
            return Err(invalid("ssh.host_key", "must be a file path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
watermark:
  dir: /tmp/wm
signers:
  - name: a
    address: 127.0.0.1:6733
";

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = Config::parse(MINIMAL).unwrap();
        assert_eq!(s.config.api.listen.to_string(), DEFAULT_API_LISTEN);
        assert_eq!(s.config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(s.config.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(s.config.health_check.path, "/authorized_keys");
        assert_eq!(s.policy.default_kinds.len(), 3);
        assert!(!s.config.watermark.create_if_missing);
    }

    #[test]
    fn example_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/gateway.yaml");
        let s = Config::load(Path::new(path)).unwrap();
        assert_eq!(s.config.signers.len(), 2);
    }

    #[test]
    fn durations_are_human_readable() {
        let s = Config::parse(&format!(
            "{MINIMAL}request_timeout: 500ms\nhealth_check:\n  interval: 3s\n"
        ))
        .unwrap();
        assert_eq!(s.config.request_timeout, Duration::from_millis(500));
        assert_eq!(s.config.health_check.interval, Duration::from_secs(3));
        assert!(err(&format!("{MINIMAL}request_timeout: soon\n")).contains("request_timeout"));
    }

    #[test]
    fn unknown_fields_are_named() {
        assert!(err(&format!("{MINIMAL}colour: blue\n")).contains("colour"));
        let e = err("watermark:\n  dir: /x\n  fsync: never\nsigners: []\n");
        assert!(e.contains("fsync"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: &[(&str, &str)] = &[
            (
                "watermark: {}\nsigners: [{name: a, address: '127.0.0.1:1'}]\n",
                "watermark.dir",
            ),
            ("watermark: {dir: /x}\nsigners: []\n", "signers"),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: '127.0.0.1:1'}, {name: a, address: 'h:2'}]\n",
                "signers[1].name",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'nohost'}]\n",
                "signers[0].address",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:0'}]\n",
                "signers[0].address",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: 'a b', address: 'h:1'}]\n",
                "signers[0].name",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\napi: {path_prefix: signer}\n",
                "api.path_prefix",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nhealth_check: {rise: 0}\n",
                "health_check.rise",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nhealth_check: {path: x}\n",
                "health_check.path",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1', protocol: socket}]\nhealth_check: {path: /healthz}\n",
                "health_check.path",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1', protocol: grpc}]\n",
                "signers",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nsocket_api: {listen: '127.0.0.1:7732', idle_timeout: 0s}\n",
                "socket_api.idle_timeout",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nsocket_api: {listen: '127.0.0.1:6732'}\n",
                "socket_api.listen",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nsocket_api: {}\n",
                "socket_api",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\nrequest_timeout: 0s\n",
                "request_timeout",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\npolicy: {keys: {tz1nope: {}}}\n",
                "policy.keys.tz1nope",
            ),
            (
                "watermark: {backend: memory, dir: /x}\nsigners: [{name: a, address: 'h:1'}]\n",
                "watermark.dir",
            ),
            (
                "watermark: {dir: /x}\nsigners: [{name: a, address: 'h:1'}]\npolicy: {default_kinds: [blok]}\n",
                "blok",
            ),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert!(e.contains(field), "error for {field} does not name it: {e}");
        }
    }

    #[test]
    fn etcd_settings() {
        let sig = "signers: [{name: a, address: 'h:1'}]\n";
        let ok = format!(
            "watermark:\n  backend: etcd\n  etcd:\n    endpoints: ['https://e0:2379', 'https://e1:2379']\n    \
             tls: {{ca: /c/ca.crt, cert: /c/tls.crt, key: /c/tls.key}}\n    username: gw\n    password_file: /p\n{sig}"
        );
        let s = Config::parse(&ok).unwrap();
        let StoreSettings::Etcd(e) = &s.store else {
            panic!("{:?}", s.store)
        };
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.prefix, "/signer-gateway/");
        assert_eq!(e.request_timeout, Duration::from_secs(2));
        assert!(!e.create_if_missing);
        assert_eq!(e.auth, Some(("gw".into(), PathBuf::from("/p"))));
        let tls = e.tls.as_ref().unwrap();
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/c/tls.crt"), PathBuf::from("/c/tls.key")))
        );

        let etcd = |body: &str| format!("watermark:\n  backend: etcd\n  etcd: {body}\n{sig}");
        let cases: Vec<(String, &str)> = vec![
            (format!("watermark: {{backend: etcd}}\n{sig}"), "watermark.etcd"),
            (
                format!("watermark: {{backend: etcd, dir: /x, etcd: {{endpoints: ['http://e:1']}}}}\n{sig}"),
                "watermark.dir",
            ),
            (
                format!("watermark: {{dir: /x, etcd: {{endpoints: ['http://e:1']}}}}\n{sig}"),
                "watermark.etcd",
            ),
            (etcd("{endpoints: []}"), "watermark.etcd.endpoints"),
            (etcd("{endpoints: ['e:2379']}"), "watermark.etcd.endpoints[0]"),
            (etcd("{endpoints: ['http://e']}"), "watermark.etcd.endpoints[0]"),
            (
                etcd("{endpoints: ['http://e:1', 'ftp://e:2']}"),
                "watermark.etcd.endpoints[1]",
            ),
            (etcd("{endpoints: ['http://e:1/v3']}"), "watermark.etcd.endpoints[0]"),
            (
                etcd("{endpoints: ['http://e:1', 'https://e:2'], tls: {ca: /c}}"),
                "watermark.etcd.endpoints",
            ),
            (etcd("{endpoints: ['https://e:1']}"), "watermark.etcd.tls"),
            (etcd("{endpoints: ['http://e:1'], tls: {ca: /c}}"), "watermark.etcd.tls"),
            (
                etcd("{endpoints: ['https://e:1'], tls: {ca: /c, cert: /x}}"),
                "watermark.etcd.tls.key",
            ),
            (
                etcd("{endpoints: ['https://e:1'], tls: {ca: /c, key: /x}}"),
                "watermark.etcd.tls.cert",
            ),
            (
                etcd("{endpoints: ['http://e:1'], prefix: nope}"),
                "watermark.etcd.prefix",
            ),
            (
                etcd("{endpoints: ['http://e:1'], prefix: '/no-slash'}"),
                "watermark.etcd.prefix",
            ),
            (
                etcd("{endpoints: ['http://e:1'], request_timeout: 0s}"),
                "watermark.etcd.request_timeout",
            ),
            (
                etcd("{endpoints: ['http://e:1'], request_timeout: 2m}"),
                "watermark.etcd.request_timeout",
            ),
            (
                etcd("{endpoints: ['http://e:1'], username: gw}"),
                "watermark.etcd.password_file",
            ),
            (
                etcd("{endpoints: ['http://e:1'], password_file: /p}"),
                "watermark.etcd.username",
            ),
            (
                etcd("{endpoints: ['http://e:1'], username: '', password_file: /p}"),
                "watermark.etcd.username",
            ),
            (etcd("{endpoints: ['http://e:1'], nope: 1}"), "nope"),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert!(e.contains(field), "error for {field} does not name it: {e}\n{text}");
        }
    }

    const PI_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsc55qcwJVsJ6HxKH/W8irwSnJYsYWu6cEhZf3VGw2U pi-test";

    #[test]
    fn tunnel_signers() {
        let text = format!(
            "watermark: {{dir: /x}}\nssh: {{host_key: /x/key}}\nsigners:\n  - {{name: pi, tunnel: {{keys: ['{PI_KEY}']}}}}\n  - {{name: c, address: 'h:1'}}\n"
        );
        let s = Config::parse(&text).unwrap();
        assert!(matches!(&s.routes[0], SignerRoute::Tunnel(k) if k.len() == 1));
        assert!(matches!(&s.routes[1], SignerRoute::Tcp(a) if a == "h:1"));
        let ssh = s.config.ssh.unwrap();
        assert_eq!(ssh.listen.to_string(), "0.0.0.0:2222");
        assert_eq!(ssh.keepalive_interval, Duration::from_secs(1));

        let cases: Vec<(String, &str)> = vec![
            (format!("watermark: {{dir: /x}}\nsigners: [{{name: pi, tunnel: {{keys: ['{PI_KEY}']}}}}]\n"), "`ssh`"),
            ("watermark: {dir: /x}\nsigners: [{name: a}]\n".into(), "signers[0]"),
            (format!("watermark: {{dir: /x}}\nssh: {{host_key: /k}}\nsigners: [{{name: a, address: 'h:1', tunnel: {{keys: ['{PI_KEY}']}}}}]\n"), "signers[0]"),
            ("watermark: {dir: /x}\nssh: {host_key: /k}\nsigners: [{name: a, tunnel: {keys: ['ssh-ed25519 AAAAnope']}}]\n".into(), "signers[0].tunnel.keys[0]"),
            ("watermark: {dir: /x}\nssh: {host_key: /k}\nsigners: [{name: a, tunnel: {keys: []}}]\n".into(), "signers[0].tunnel.keys"),
            (format!("watermark: {{dir: /x}}\nssh: {{host_key: /k}}\nsigners: [{{name: a, tunnel: {{keys: ['{PI_KEY}']}}}}, {{name: b, tunnel: {{keys: ['{PI_KEY}']}}}}]\n"), "signers[1].tunnel.keys[0]"),
            (format!("watermark: {{dir: /x}}\nssh: {{host_key: /k, keepalive_max: 0}}\nsigners: [{{name: a, tunnel: {{keys: ['{PI_KEY}']}}}}]\n"), "ssh.keepalive_max"),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert!(e.contains(field), "error for {field} does not name it: {e}");
        }
    }

    #[test]
    fn key_policy_resolves() {
        let s = Config::parse(&format!(
            "{MINIMAL}policy:\n  keys:\n    tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx: {{kinds: [attestation], allow_generic: true}}\n"
        ))
        .unwrap();
        let pkh: Pkh = "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx".parse().unwrap();
        let k = &s.policy.keys[&pkh];
        assert_eq!(k.kinds, BTreeSet::from([Kind::Attestation]));
        assert!(k.allow_generic && !k.allow_packed);
    }
}
