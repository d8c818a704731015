//! The tunnel client's YAML configuration: parsed strictly, validated before any connection.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};
use serde::Deserialize;

use signer_common::{check_host_port, invalid};
pub use signer_common::{ConfigError, LogFormat};

/// The configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SSH addresses (`host:port`) of one gateway, tried in order. Exactly one of `gateways`
    /// and `replicas`.
    #[serde(default)]
    pub gateways: Option<Vec<String>>,
    /// Several gateway replicas, each kept connected at once by its own session.
    #[serde(default)]
    pub replicas: Option<Vec<ReplicaConfig>>,
    /// The gateway's host key, pinned: an OpenSSH public key line (`ssh-ed25519 AAAA…`) or
    /// its SHA256 fingerprint (`SHA256:…`, as the gateway prints it at start). With
    /// `replicas`, the pin of every replica that does not set its own.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Trust on first use: only when set, and only if `host_key` is not. The first key seen
    /// is written to this file and pinned from then on.
    #[serde(default)]
    pub trust_on_first_use: Option<PathBuf>,
    /// This Pi's identity: an OpenSSH private key file (`signer-tunnel keygen` writes one).
    pub identity: PathBuf,
    /// SSH user name sent to the gateway (the gateway identifies signers by key, not name).
    #[serde(default = "default_user")]
    pub user: String,
    /// The local signer (octez-signer) that forwarded channels are connected to.
    #[serde(default = "default_signer")]
    pub signer: String,
    /// The protocol `signer` speaks. Only the health probe depends on it: forwarded channels
    /// carry bytes either way, so the gateway must speak the same protocol to this signer.
    #[serde(default)]
    pub signer_protocol: SignerProtocol,
    /// Address and port named in the remote-forward request (`ssh -R` semantics). The
    /// gateway binds nothing; an OpenSSH server binds this port on its side.
    #[serde(default = "default_remote_forward")]
    pub remote_forward: String,
    /// Uplinks in order of preference; empty means "whatever route the system picks".
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    /// Time to connect, finish the handshake, authenticate and get the forward (default 5s).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Client keepalive interval (default 1s).
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the session is dropped (default 3).
    #[serde(default = "default_keepalive_max")]
    pub keepalive_max: usize,
    /// TCP_USER_TIMEOUT on the SSH socket (default 5s).
    #[serde(default = "default_tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Reconnect backoff.
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// While on a less preferred uplink, how often to try the better ones (default 10s).
    #[serde(default = "default_uplink_retry", with = "humantime_serde")]
    pub uplink_retry: Duration,
    /// Retry interval after the gateway presented the wrong host key (default 60s).
    #[serde(default = "default_mismatch_retry", with = "humantime_serde")]
    pub host_key_mismatch_retry: Duration,
    /// Probing of the local signer.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// text or json.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// One gateway replica: a gateway process of its own, with its own SSH host key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// Name in logs and the status line (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// SSH addresses (`host:port`) of this replica, tried in order.
    pub addresses: Vec<String>,
    /// This replica's host key pin (default: the top-level `host_key`).
    #[serde(default)]
    pub host_key: Option<String>,
    /// Trust on first use for this replica, remembered in this file (instead of `host_key`).
    #[serde(default)]
    pub trust_on_first_use: Option<PathBuf>,
}

/// One uplink: an interface to bind to, or a source address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Name for logs and status (default: the interface or address).
    #[serde(default)]
    pub name: Option<String>,
    /// Bind to this interface (SO_BINDTODEVICE), e.g. `eth0`, `wwan0`.
    #[serde(default)]
    pub interface: Option<String>,
    /// Bind to this source address, e.g. `192.168.1.20`.
    #[serde(default)]
    pub source: Option<IpAddr>,
}

/// Reconnect backoff: jittered, exponential, capped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay (default 500ms; jitter keeps the first retry under 1s).
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub initial: Duration,
    /// Cap (default 10s).
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
    /// A session that stayed up this long resets the backoff (default 30s).
    #[serde(default = "default_backoff_reset", with = "humantime_serde")]
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
            reset_after: default_backoff_reset(),
        }
    }
}

/// The local signer's wire protocol, which decides how it is probed: HTTP is a `GET` of
/// `health_check.path`; socket the authorized-keys request octez's client sends before every
/// sign.
pub use signer_common::SignerProtocol;

/// Local signer probing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET (default `/authorized_keys`; Pi images also use
    /// `/statusz/<pkh>?ledger_url=…`). HTTP only: a socket signer has no paths, so setting
    /// another path with `signer_protocol: socket` is refused rather than silently ignored.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between probes (default 1s).
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time a probe may take (default 1s).
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures before the forward is cancelled (default 2).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive successes before it is requested again (default 1).
    #[serde(default = "default_rise")]
    pub rise: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            fall: default_fall(),
            rise: default_rise(),
        }
    }
}

fn default_user() -> String {
    "signer".into()
}
fn default_signer() -> String {
    "127.0.0.1:6732".into()
}
fn default_remote_forward() -> String {
    "127.0.0.1:6732".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_keepalive_max() -> usize {
    3
}
fn default_tcp_user_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_uplink_retry() -> Duration {
    Duration::from_secs(10)
}
fn default_mismatch_retry() -> Duration {
    Duration::from_secs(60)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_reset() -> Duration {
    Duration::from_secs(30)
}
fn default_health_path() -> String {
    "/authorized_keys".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_fall() -> u32 {
    2
}
fn default_rise() -> u32 {
    1
}

/// How the gateway's host key is checked.
#[derive(Debug, Clone)]
pub enum HostKeyPin {
    /// Exactly this key.
    Key(Box<PublicKey>),
    /// A key with this SHA256 fingerprint (`SHA256:…`).
    Fingerprint(String),
    /// Trust on first use, remembered in this file.
    FirstUse(PathBuf),
}

impl HostKeyPin {
    /// Does `key` match the pin? For `FirstUse`, the first key seen is written to the file.
    pub fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match self {
            HostKeyPin::Key(k) if k.key_data() == key.key_data() => Ok(()),
            HostKeyPin::Key(k) => Err(format!("expected {}, got {fp}", k.fingerprint(HashAlg::Sha256))),
            HostKeyPin::Fingerprint(f) if *f == fp => Ok(()),
            HostKeyPin::Fingerprint(f) => Err(format!("expected {f}, got {fp}")),
            HostKeyPin::FirstUse(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let pinned = PublicKey::from_openssh(text.trim())
                        .map_err(|e| format!("trust-on-first-use file {} is unreadable: {e}", path.display()))?;
                    HostKeyPin::Key(Box::new(pinned)).check(key)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let line = key.to_openssh().map_err(|e| e.to_string())?;
                    // Durably, and only if still absent: a power cut mid-write must not leave
                    // a truncated pin that fails every connection until someone logs in.
                    match signer_common::durable::durable_create_path(path, format!("{line}\n").as_bytes(), 0o644) {
                        Ok(()) => {}
                        // Written meanwhile (another check): that pin decides.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return self.check(key),
                        Err(e) => return Err(format!("cannot write trust-on-first-use file {}: {e}", path.display())),
                    }
                    tracing::warn!(fingerprint = %fp, file = %path.display(), "trusting the gateway's host key on first use");
                    Ok(())
                }
                Err(e) => Err(format!("cannot read trust-on-first-use file {}: {e}", path.display())),
            },
        }
    }
}

/// An uplink, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// For logs.
    pub name: String,
    /// Interface to bind to.
    pub interface: Option<String>,
    /// Source address to bind to.
    pub source: Option<IpAddr>,
}

/// A gateway replica, resolved: one supervisor keeps one session to it.
#[derive(Debug, Clone)]
pub struct Replica {
    /// For logs and the status line (`gateway` for a `gateways:` list).
    pub name: String,
    /// SSH addresses, tried in order.
    pub addresses: Vec<String>,
    /// Host key pin.
    pub pin: HostKeyPin,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The parsed file.
    pub config: Config,
    /// The replicas to keep a session to, each (one for a `gateways:` list).
    pub replicas: Vec<Replica>,
    /// Uplinks in preference order (one unbound uplink when none are configured).
    pub uplinks: Vec<Uplink>,
    /// Remote forward address and port.
    pub forward: (String, u32),
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

    fn validate(self) -> Result<Settings, ConfigError> {
        let top_pin = match (&self.host_key, &self.trust_on_first_use) {
            (Some(k), None) => Some(parse_pin("host_key", k)?),
            (None, Some(path)) => Some(HostKeyPin::FirstUse(path.clone())),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "trust_on_first_use",
                    "set either host_key or trust_on_first_use, not both",
                ))
            }
            (None, None) => None,
        };
        let replicas = match (&self.gateways, &self.replicas) {
            (Some(gateways), None) => vec![single_gateway(gateways, top_pin)?],
            (None, Some(replicas)) => resolve_replicas(replicas, top_pin.as_ref())?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "replicas",
                    "set either gateways (the addresses of one gateway) or replicas (several gateways), not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "gateways",
                    "required: the gateway's SSH address(es), or `replicas` for several gateways",
                ))
            }
        };
        check_host_port(&self.signer).map_err(|m| invalid("signer", m))?;
        let (fwd_host, fwd_port) = self
            .remote_forward
            .rsplit_once(':')
            .ok_or_else(|| invalid("remote_forward", "expected address:port"))?;
        let fwd_port: u32 = fwd_port
            .parse::<u16>()
            .map(u32::from)
            .map_err(|_| invalid("remote_forward", "port must be 0-65535"))?;
        let mut uplinks = Vec::new();
        for (i, u) in self.uplinks.iter().enumerate() {
            let (interface, source) = match (&u.interface, u.source) {
                (Some(ifname), None) if !ifname.is_empty() && ifname.len() < 16 => (Some(ifname.clone()), None),
                (Some(_), None) => return Err(invalid(format!("uplinks[{i}].interface"), "must be 1-15 characters")),
                (None, Some(ip)) => (None, Some(ip)),
                _ => {
                    return Err(invalid(
                        format!("uplinks[{i}]"),
                        "set exactly one of `interface` and `source`",
                    ))
                }
            };
            let name = u.name.clone().unwrap_or_else(|| match (&interface, source) {
                (Some(i), _) => i.clone(),
                (_, Some(ip)) => ip.to_string(),
                _ => format!("uplink{i}"),
            });
            uplinks.push(Uplink {
                name,
                interface,
                source,
            });
        }
        if uplinks.is_empty() {
            uplinks.push(Uplink {
                name: "default".into(),
                interface: None,
                source: None,
            });
        }
        let zero = [
            ("connect_timeout", self.connect_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("tcp_user_timeout", self.tcp_user_timeout),
            ("uplink_retry", self.uplink_retry),
            ("host_key_mismatch_retry", self.host_key_mismatch_retry),
            ("backoff.initial", self.backoff.initial),
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
        ];
        for (field, d) in zero {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.backoff.max < self.backoff.initial {
            return Err(invalid("backoff.max", "must be at least backoff.initial"));
        }
        if self.keepalive_max == 0 {
            return Err(invalid("keepalive_max", "must be at least 1"));
        }
        if !self.health_check.path.starts_with('/') {
            return Err(invalid("health_check.path", "must start with '/'"));
        }
        if self.signer_protocol == SignerProtocol::Socket && self.health_check.path != default_health_path() {
            return Err(invalid(
                "health_check.path",
                "not used with signer_protocol: socket (the probe asks for the signer's authorized keys); remove it",
            ));
        }
        if self.health_check.fall == 0 || self.health_check.rise == 0 {
            return Err(invalid("health_check", "fall and rise must be at least 1"));
        }
        let forward = (fwd_host.to_string(), fwd_port);
        Ok(Settings {
            config: self,
            replicas,
            uplinks,
            forward,
        })
    }
}

/// A `gateways:` list: the addresses of one gateway, as one replica named `gateway`.
fn single_gateway(gateways: &[String], pin: Option<HostKeyPin>) -> Result<Replica, ConfigError> {
    if gateways.is_empty() {
        return Err(invalid("gateways", "at least one gateway address is required"));
    }
    for (i, g) in gateways.iter().enumerate() {
        check_host_port(g).map_err(|m| invalid(format!("gateways[{i}]"), m))?;
    }
    let pin = pin.ok_or_else(|| {
        invalid(
            "host_key",
            "required: the gateway's host key or its SHA256 fingerprint (trust on first use only \
             with an explicit trust_on_first_use: <file>)",
        )
    })?;
    Ok(Replica {
        name: "gateway".into(),
        addresses: gateways.to_vec(),
        pin,
    })
}

/// A `replicas:` list: names unique, every address listed once, a pin for each.
fn resolve_replicas(replicas: &[ReplicaConfig], top_pin: Option<&HostKeyPin>) -> Result<Vec<Replica>, ConfigError> {
    if replicas.is_empty() {
        return Err(invalid("replicas", "at least one replica is required"));
    }
    let mut out: Vec<Replica> = Vec::with_capacity(replicas.len());
    for (i, r) in replicas.iter().enumerate() {
        let field = |name: &str| format!("replicas[{i}].{name}");
        let name_ok = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(invalid(field("name"), "1-64 letters, digits, '.', '_' or '-'"));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(invalid(field("name"), format!("{:?} names two replicas", r.name)));
        }
        if r.addresses.is_empty() {
            return Err(invalid(field("addresses"), "at least one address is required"));
        }
        for (j, a) in r.addresses.iter().enumerate() {
            let at = field(&format!("addresses[{j}]"));
            check_host_port(a).map_err(|m| invalid(at.clone(), m))?;
            // Two sessions to one gateway would take the route from each other.
            if let Some(other) = out.iter().find(|o| o.addresses.contains(a)) {
                return Err(invalid(
                    at,
                    format!("{a} is also an address of replica {:?}", other.name),
                ));
            }
        }
        let pin = match (&r.host_key, &r.trust_on_first_use) {
            (Some(k), None) => parse_pin(&field("host_key"), k)?,
            (None, Some(path)) => HostKeyPin::FirstUse(path.clone()),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    field("trust_on_first_use"),
                    "set either host_key or trust_on_first_use, not both",
                ))
            }
            (None, None) => top_pin.cloned().ok_or_else(|| {
                invalid(
                    field("host_key"),
                    "required: this replica's host key or SHA256 fingerprint, here or as the top-level host_key",
                )
            })?,
        };
        out.push(Replica {
            name: r.name.clone(),
            addresses: r.addresses.clone(),
            pin,
        });
    }
    Ok(out)
}

fn parse_pin(field: &str, s: &str) -> Result<HostKeyPin, ConfigError> {
    let s = s.trim();
    if let Some(b64) = s.strip_prefix("SHA256:") {
        if b64.is_empty()
            || !b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=')
        {
            return Err(invalid(field, "not a SHA256 fingerprint (SHA256:<base64>)"));
        }
        return Ok(HostKeyPin::Fingerprint(s.trim_end_matches('=').to_string()));
    }
    PublicKey::from_openssh(s)
        .map(|k| HostKeyPin::Key(Box::new(k)))
        .map_err(|e| invalid(field, format!("neither SHA256:… nor an OpenSSH public key line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsc55qcwJVsJ6HxKH/W8irwSnJYsYWu6cEhZf3VGw2U gw";

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_and_defaults() {
        let s = Config::parse(&format!("gateways: ['gw:2222']\nhost_key: '{KEY}'\nidentity: /k\n")).unwrap();
        assert_eq!(s.config.signer, "127.0.0.1:6732");
        assert_eq!(s.forward, ("127.0.0.1".to_string(), 6732));
        assert_eq!(s.uplinks.len(), 1);
        assert!(s.config.backoff.initial < Duration::from_secs(1));
        assert!(matches!(s.replicas[0].pin, HostKeyPin::Key(_)));
        assert_eq!(s.replicas.len(), 1, "a gateways list is one gateway");
        assert_eq!(s.replicas[0].addresses, ["gw:2222"]);
        let s = Config::parse("gateways: ['gw:2222']\nhost_key: 'SHA256:abc+/='\nidentity: /k\nuplinks: [{interface: eth0}, {source: 10.0.0.2, name: lte}]\n").unwrap();
        assert!(matches!(&s.replicas[0].pin, HostKeyPin::Fingerprint(f) if f == "SHA256:abc+/"));
        assert_eq!(s.uplinks[1].name, "lte");
    }

    #[test]
    fn errors_name_fields() {
        let cases = [
            ("gateways: []\nhost_key: 'SHA256:a'\nidentity: /k\n", "gateways"),
            ("gateways: ['gw']\nhost_key: 'SHA256:a'\nidentity: /k\n", "gateways[0]"),
            ("gateways: ['gw:1']\nidentity: /k\n", "host_key"),
            ("gateways: ['gw:1']\nhost_key: 'nope'\nidentity: /k\n", "host_key"),
            (
                "gateways: ['gw:1']\nhost_key: 'SHA256:a'\ntrust_on_first_use: /x\nidentity: /k\n",
                "trust_on_first_use",
            ),
            (
                "gateways: ['gw:1']\nhost_key: 'SHA256:a'\nidentity: /k\nuplinks: [{}]\n",
                "uplinks[0]",
            ),
            (
                "gateways: ['gw:1']\nhost_key: 'SHA256:a'\nidentity: /k\nbackoff: {initial: 2s, max: 1s}\n",
                "backoff.max",
            ),
            (
                "gateways: ['gw:1']\nhost_key: 'SHA256:a'\nidentity: /k\ncolour: red\n",
                "colour",
            ),
            (
                "gateways: ['gw:1']\nhost_key: 'SHA256:a'\nidentity: /k\nsigner: nope\n",
                "signer",
            ),
            ("host_key: 'SHA256:a'\nidentity: /k\n", "gateways"),
            (
                "gateways: ['gw:1']\nreplicas: [{name: a, addresses: ['gw:2']}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas",
            ),
            ("replicas: []\nhost_key: 'SHA256:a'\nidentity: /k\n", "replicas"),
            (
                "replicas: [{name: 'a b', addresses: ['gw:2']}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas[0].name",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1']}, {name: a, addresses: ['gw:2']}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas[1].name",
            ),
            (
                "replicas: [{name: a, addresses: []}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas[0].addresses",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1', 'gw']}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas[0].addresses[1]",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1']}, {name: b, addresses: ['gw:2', 'gw:1']}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "replicas[1].addresses[1]",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1'], host_key: 'SHA256:a'}, {name: b, addresses: ['gw:2']}]\nidentity: /k\n",
                "replicas[1].host_key",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1'], host_key: 'nope'}]\nidentity: /k\n",
                "replicas[0].host_key",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1'], host_key: 'SHA256:a', trust_on_first_use: /x}]\nidentity: /k\n",
                "replicas[0].trust_on_first_use",
            ),
            (
                "replicas: [{name: a, addresses: ['gw:1'], colour: red}]\nhost_key: 'SHA256:a'\nidentity: /k\n",
                "colour",
            ),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert!(e.contains(field), "{field} not named in: {e}");
        }
    }

    #[test]
    fn signer_protocol() {
        let base = "gateways: ['gw:1']\nhost_key: 'SHA256:a'\nidentity: /k\n";
        let s = Config::parse(base).unwrap();
        assert_eq!(s.config.signer_protocol, SignerProtocol::Http, "the default");
        let s = Config::parse(&format!("{base}signer: 169.254.1.1:7732\nsigner_protocol: socket\n")).unwrap();
        assert_eq!(s.config.signer_protocol, SignerProtocol::Socket);
        // The default path, even spelled out, is harmless with socket; any other is a mistake.
        let s = Config::parse(&format!(
            "{base}signer_protocol: socket\nhealth_check: {{path: /authorized_keys, interval: 2s}}\n"
        ))
        .unwrap();
        assert_eq!(s.config.health_check.interval, Duration::from_secs(2));
        let e = err(&format!(
            "{base}signer_protocol: socket\nhealth_check: {{path: /statusz/tz1x}}\n"
        ));
        assert!(e.contains("health_check.path") && e.contains("socket"), "{e}");
        let s = Config::parse(&format!(
            "{base}signer_protocol: http\nhealth_check: {{path: /statusz/tz1x}}\n"
        ))
        .unwrap();
        assert_eq!(s.config.health_check.path, "/statusz/tz1x");
        let e = err(&format!("{base}signer_protocol: tcp\n"));
        assert!(
            e.contains("signer_protocol: tcp") && e.contains("expected one of http, socket"),
            "{e}"
        );
    }

    #[test]
    fn replicas_each_with_their_addresses_and_pin() {
        let s = Config::parse(&format!(
            "replicas:\n  - {{name: gw-a, addresses: ['a1:2222', 'a2:2222']}}\n  - {{name: gw-b, addresses: ['b:2222'], host_key: 'SHA256:bbb'}}\n  \
             - {{name: gw-c, addresses: ['c:2222'], trust_on_first_use: /var/lib/signer-tunnel/gw-c}}\nhost_key: '{KEY}'\nidentity: /k\n"
        ))
        .unwrap();
        let names: Vec<&str> = s.replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["gw-a", "gw-b", "gw-c"]);
        assert_eq!(s.replicas[0].addresses, ["a1:2222", "a2:2222"], "tried in order");
        assert!(
            matches!(s.replicas[0].pin, HostKeyPin::Key(_)),
            "the top-level pin by default"
        );
        assert!(matches!(&s.replicas[1].pin, HostKeyPin::Fingerprint(f) if f == "SHA256:bbb"));
        assert!(matches!(&s.replicas[2].pin, HostKeyPin::FirstUse(p) if p.ends_with("gw-c")));
        // Without a top-level pin, every replica needs its own.
        let s = Config::parse(
            "replicas: [{name: a, addresses: ['a:1'], host_key: 'SHA256:a'}, {name: b, addresses: ['b:1'], host_key: 'SHA256:b'}]\nidentity: /k\n",
        )
        .unwrap();
        assert_eq!(s.replicas.len(), 2);
    }

    #[test]
    fn example_config_is_valid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/signer-tunnel.yaml"
        ))
        .unwrap()
        .replace(
            "SHA256:REPLACE_WITH_THE_GATEWAY_FINGERPRINT",
            "SHA256:Kwu6ZfMSPMaaXmY+vMHYeSb37lRVBsLMTWXTz+6dzBE",
        );
        let s = Config::parse(&text).unwrap();
        assert_eq!(s.uplinks.len(), 2);
        assert_eq!(s.uplinks[1].name, "lte");

        // The commented `replicas` example, in place of `gateways`, is valid too.
        let fingerprint = "SHA256:Kwu6ZfMSPMaaXmY+vMHYeSb37lRVBsLMTWXTz+6dzBE";
        let replicas: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# replicas:"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let gateways = "gateways:\n  - gateway.example.net:2222\n";
        assert!(text.contains(gateways) && !replicas.is_empty());
        let text = text
            .replace(gateways, &replicas)
            .replace("SHA256:REPLACE_WITH_GW_A_FINGERPRINT", fingerprint)
            .replace("SHA256:REPLACE_WITH_GW_B_FINGERPRINT", fingerprint);
        let s = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = s.replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["gw-a", "gw-b"]);
        assert_eq!(s.replicas[1].addresses.len(), 2);
    }

    #[test]
    fn pins() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        assert!(HostKeyPin::Key(Box::new(key.clone())).check(&key).is_ok());
        assert!(HostKeyPin::Fingerprint(fp.clone()).check(&key).is_ok());
        assert!(HostKeyPin::Fingerprint("SHA256:other".into()).check(&key).is_err());
        let dir = tempfile::tempdir().unwrap();
        let tofu = HostKeyPin::FirstUse(dir.path().join("known"));
        assert!(tofu.check(&key).is_ok(), "first use pins");
        assert!(tofu.check(&key).is_ok(), "same key again");
        let other = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEY1aY66wAlfn5GseHaGMz1qg0fAStpbPDb/sUS4zN99 other",
        )
        .unwrap();
        assert!(
            tofu.check(&other).is_err(),
            "a different key after first use is refused"
        );
    }

    /// A power cut while the pin was being written leaves at most a stray temp file, never a
    /// truncated pin: the next start pins again instead of failing every connection.
    #[test]
    fn a_pin_interrupted_mid_write_is_written_again_whole() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known");
        // What a crash before the pin was moved into place leaves: a partial temp file.
        std::fs::write(dir.path().join("known.tmp"), "ssh-ed25519 AAAAC3Nza").unwrap();
        let tofu = HostKeyPin::FirstUse(path.clone());
        assert!(tofu.check(&key).is_ok());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(PublicKey::from_openssh(written.trim()).unwrap(), key);
        assert!(
            !dir.path().join("known.tmp").exists(),
            "the temp file was used and moved"
        );
        assert!(tofu.check(&key).is_ok());
    }
}
