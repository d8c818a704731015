//! The real `signer-gateway` binary under test, in a temp dir, with its config.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tempfile::TempDir;

use super::client::Client;
use super::poll::eventually;
use super::process::{log_excerpt, verbose, Proc, Run};

/// How long [`Gateway::start`] waits for the ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Prefix of the line the gateway prints on stdout once both listeners are bound.
pub const READY_PREFIX: &str = "signer-gateway ready ";

/// The `signer-gateway` binary: `$SIGNER_GATEWAY_BIN`, else the one next to the running test
/// executable, refused when older than its sources ([`super::workspace_bin`]).
pub fn gateway_bin() -> anyhow::Result<PathBuf> {
    super::workspace_bin("signer-gateway", "SIGNER_GATEWAY_BIN", &["gateway", "common"])
}

/// A gateway process. Dropping it kills it (SIGKILL); the temp dir, if it owns one, goes too.
pub struct Gateway {
    proc: Run,
    /// API listener address, from the ready line of the current run.
    pub api: SocketAddr,
    /// Admin listener address, from the ready line of the current run.
    pub admin: SocketAddr,
    /// Socket-protocol front end address (`socket=` on the ready line), if it serves one.
    pub socket: Option<SocketAddr>,
    dir: PathBuf,
    config: String,
    runs: u32,
    client: Client,
    // Last: removed after the process is killed (fields drop in declaration order).
    _tempdir: Option<TempDir>,
}

impl Gateway {
    /// Start a gateway on `config_yaml` in a fresh temp dir (`{dir}` in the text is replaced by
    /// that dir's path).
    pub async fn start(config_yaml: &str) -> anyhow::Result<Gateway> {
        let tempdir = tempfile::Builder::new()
            .prefix("gateway-e2e-")
            .tempdir()
            .context("creating a temp dir")?;
        let mut gw = Gateway::start_in(tempdir.path(), config_yaml).await?;
        gw._tempdir = Some(tempdir);
        Ok(gw)
    }

    /// Start a gateway in `dir`, which the caller keeps (e.g. to start another gateway on the
    /// same watermark files later). `{dir}` in the text is replaced by `dir`.
    pub async fn start_in(dir: &Path, config_yaml: &str) -> anyhow::Result<Gateway> {
        let mut gw = Gateway {
            proc: Run::new("signer-gateway"),
            api: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            socket: None,
            dir: dir.to_path_buf(),
            config: config_yaml.to_string(),
            runs: 0,
            client: Client::new().with_timeout(Duration::from_secs(10)),
            _tempdir: None,
        };
        gw.spawn().await?;
        Ok(gw)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = gateway_bin()?;
        let dir_text = self.dir.to_str().context("temp dir path is not UTF-8")?;
        let config_path = self.dir.join("gateway.yaml");
        std::fs::write(&config_path, self.config.replace("{dir}", dir_text))
            .with_context(|| format!("writing {}", config_path.display()))?;
        self.runs += 1;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&config_path).current_dir(&self.dir);
        let log_path = self.log_path();
        if verbose() {
            cmd.stderr(Stdio::inherit());
        } else {
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            // A marker between runs, so a restarted gateway's log reads in order.
            use std::io::Write as _;
            writeln!(log, "=== gateway-e2e: run {} of {} ===", self.runs, bin.display())?;
            cmd.stderr(Stdio::from(log));
        }
        let (proc, line) = Proc::spawn("signer-gateway", cmd, READY_PREFIX, READY_TIMEOUT, Some(&log_path)).await?;
        let (api, admin) = parse_ready_line(&line)?;
        self.proc.set(proc);
        self.api = api;
        self.admin = admin;
        self.socket = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("socket="))
            .map(|a| a.parse().with_context(|| format!("socket address in {line:?}")))
            .transpose()?;
        Ok(())
    }

    /// The working dir (temp dir or the one given to [`Gateway::start_in`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the gateway's stderr goes (unless `E2E_VERBOSE=1`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    /// Everything the gateway wrote to stderr, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Everything the current run wrote to stdout.
    pub fn stdout(&self) -> Vec<String> {
        self.proc.get().map(|p| p.stdout.all()).unwrap_or_default()
    }

    /// Process id of the current run, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL (kill -9) and reap. The dir and its files stay.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM and wait up to `within` for the exit; returns the exit status (SIGKILL and an
    /// error past the deadline).
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.proc.terminate(within).await
    }

    /// Send `sig` (e.g. `libc::SIGTERM`) to the current run without waiting.
    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        self.proc.signal(sig)
    }

    /// Wait up to `within` for the current run to exit; SIGKILL and an error past that.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.proc.wait_exit(within).await
    }

    /// Kill the current run if any, then start again in the same dir with the same config.
    /// Listen addresses may change (port 0): read [`Gateway::api`] again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// As [`Gateway::restart`] with a new config text.
    pub async fn restart_with(&mut self, config_yaml: &str) -> anyhow::Result<()> {
        self.kill();
        self.config = config_yaml.to_string();
        self.spawn().await
    }

    /// `http://<api><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// `GET /status` on the admin listener, as JSON.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let (code, body) = self.client.get(&self.admin_url("/status")).await?;
        anyhow::ensure!(code.is_success(), "GET /status: {code} {body}");
        Ok(body)
    }

    /// The SSH broker's address and host key fingerprint, from the ready line
    /// (`… ssh=<addr> host_key=SHA256:…`).
    pub fn ssh_endpoint(&self) -> anyhow::Result<(SocketAddr, String)> {
        let stdout = self.stdout();
        let line = stdout
            .iter()
            .find(|l| l.starts_with(READY_PREFIX))
            .context("no ready line on the gateway's stdout")?;
        let word = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .with_context(|| format!("no {key} in {line:?}"))
        };
        let ssh = word("ssh=")?
            .parse()
            .with_context(|| format!("ssh address in {line:?}"))?;
        Ok((ssh, word("host_key=")?.to_string()))
    }

    /// The value in `/metrics` of the series of `name` with `label="value"`, summed over their
    /// other labels (0 when absent), e.g.
    /// `metric("signer_gateway_ssh_sessions_total", "result", "accepted")`.
    pub async fn metric(&self, name: &str, label: &str, value: &str) -> anyhow::Result<f64> {
        let (code, body) = self.client.get(&self.admin_url("/metrics")).await?;
        anyhow::ensure!(code.is_success(), "GET /metrics: {code}");
        let text = body.as_str().unwrap_or_default();
        // Every series of `name` with that label value, whatever its other labels: summed.
        let wanted = format!("{label}=\"{value}\"");
        let mut sum = 0.0;
        for line in text.lines() {
            let Some((series, v)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some(labels) = series.strip_prefix(name).and_then(|l| l.strip_prefix('{')) else {
                continue;
            };
            if labels.trim_end_matches('}').split(',').any(|l| l == wanted) {
                sum += v.parse::<f64>().with_context(|| format!("value of {line:?}"))?;
            }
        }
        Ok(sum)
    }

    /// The `state` (`up`, `down`, `unknown`) of signer `name` in `/status`.
    pub async fn signer_state(&self, name: &str) -> anyhow::Result<String> {
        let status = self.status().await?;
        let signer = status["signers"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == name))
            .with_context(|| format!("no signer {name:?} in /status: {status}"))?;
        signer["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("signer {name:?} has no state in /status: {status}"))
    }

    /// Wait until every signer in `names` is `up` in `/status`.
    pub async fn wait_signers_up(&self, names: &[&str], within: Duration) -> anyhow::Result<()> {
        self.wait_signer_states(names, "up", within).await
    }

    /// Wait until every signer in `names` is in `state` in `/status`.
    pub async fn wait_signer_states(&self, names: &[&str], state: &str, within: Duration) -> anyhow::Result<()> {
        eventually(within, &format!("signers {names:?} {state}"), || async {
            for name in names {
                let got = self.signer_state(name).await?;
                anyhow::ensure!(got == state, "{name} is {got}");
            }
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", log_excerpt(Some(&self.log_path()))))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && !verbose() {
            // A failing test: show what the gateway said.
            eprintln!("{}", log_excerpt(Some(&self.log_path())));
        }
    }
}

/// Parse `signer-gateway ready api=<addr> admin=<addr>`.
pub fn parse_ready_line(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let mut api = None;
    let mut admin = None;
    for word in line.split_whitespace() {
        if let Some(v) = word.strip_prefix("api=") {
            api = Some(v.parse().with_context(|| format!("api address in {line:?}"))?);
        } else if let Some(v) = word.strip_prefix("admin=") {
            admin = Some(v.parse().with_context(|| format!("admin address in {line:?}"))?);
        }
    }
    match (api, admin) {
        (Some(api), Some(admin)) => Ok((api, admin)),
        _ => anyhow::bail!("ready line without api= and admin=: {line:?}"),
    }
}

/// Builder for the gateway's YAML config (schema in the project brief), with test-friendly
/// defaults: loopback port 0 listeners, file watermarks under `{dir}/watermarks`, fast health
/// checks.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `api.path_prefix`, e.g. `/signer` (empty for none).
    pub path_prefix: String,
    /// `api.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `watermark.backend`: `file` (with `dir: {dir}/watermarks`, `create_if_missing: true`),
    /// `memory`, or `etcd` (with [`GatewayConfig::etcd`]).
    pub watermark_backend: String,
    /// `watermark.etcd` for the `etcd` backend.
    pub etcd: Option<EtcdWatermark>,
    /// `policy.default_kinds`.
    pub default_kinds: Vec<String>,
    /// `policy.keys` as a YAML flow mapping, e.g. `{ tz1…: { allow_generic: true } }`.
    pub policy_keys: String,
    /// `signers`, in priority order: (name, address).
    pub signers: Vec<(String, SocketAddr)>,
    /// `request_timeout` (humantime).
    pub request_timeout: String,
    /// `health_check.path`.
    pub health_path: String,
    /// `health_check.interval`.
    pub health_interval: String,
    /// `health_check.timeout`.
    pub health_timeout: String,
    /// `health_check.rise`.
    pub health_rise: u32,
    /// `health_check.fall`.
    pub health_fall: u32,
    /// `shutdown_grace`.
    pub shutdown_grace: String,
    /// Names of the signers declared with `protocol: socket`.
    pub socket_signers: Vec<String>,
    /// Serve the socket-protocol front end (`socket_api`) on a loopback port of its own
    /// ([`Gateway::socket_addr`]).
    pub socket_api: bool,
    /// `socket_api.frame_timeout`, when not the default.
    pub socket_frame_timeout: Option<String>,
}

/// `watermark.etcd` of a [`GatewayConfig`].
#[derive(Debug, Clone)]
pub struct EtcdWatermark {
    /// `endpoints`: client URLs.
    pub endpoints: Vec<String>,
    /// `prefix`.
    pub prefix: String,
    /// `request_timeout` (humantime).
    pub request_timeout: String,
}

impl GatewayConfig {
    /// The etcd backend at `endpoints` under `prefix`, refusing after `request_timeout`.
    pub fn with_etcd(mut self, endpoints: Vec<String>, prefix: &str, request_timeout: &str) -> GatewayConfig {
        self.watermark_backend = "etcd".to_string();
        self.etcd = Some(EtcdWatermark {
            endpoints,
            prefix: prefix.to_string(),
            request_timeout: request_timeout.to_string(),
        });
        self
    }

    /// Defaults with these signers (name, address), in priority order.
    pub fn new(signers: &[(&str, SocketAddr)]) -> GatewayConfig {
        GatewayConfig {
            path_prefix: String::new(),
            max_body_bytes: 65536,
            watermark_backend: "file".to_string(),
            etcd: None,
            default_kinds: vec!["block".into(), "preattestation".into(), "attestation".into()],
            policy_keys: "{}".to_string(),
            signers: signers.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            request_timeout: "2s".to_string(),
            health_path: "/authorized_keys".to_string(),
            health_interval: "200ms".to_string(),
            health_timeout: "500ms".to_string(),
            health_rise: 2,
            health_fall: 1,
            shutdown_grace: "5s".to_string(),
            socket_signers: Vec::new(),
            socket_api: false,
            socket_frame_timeout: None,
        }
    }

    /// The YAML text (with the `{dir}` placeholder that [`Gateway`] fills in).
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            y,
            "api:\n  listen: 127.0.0.1:0\n  path_prefix: \"{}\"\n  max_body_bytes: {}\n\
             admin:\n  listen: 127.0.0.1:0\n\
             watermark:\n  backend: {}\n{}\
             policy:\n  default_kinds: [{}]\n  keys: {}\n\
             signers:\n",
            self.path_prefix,
            self.max_body_bytes,
            self.watermark_backend,
            // The gateway refuses `dir` for the other backends (strict config).
            match (self.watermark_backend.as_str(), &self.etcd) {
                ("file", _) => "  dir: \"{dir}/watermarks\"\n  create_if_missing: true\n".to_string(),
                ("etcd", Some(e)) => format!(
                    "  create_if_missing: true\n  etcd:\n    endpoints: [{}]\n    prefix: \"{}\"\n    request_timeout: {}\n",
                    e.endpoints
                        .iter()
                        .map(|u| format!("\"{u}\""))
                        .collect::<Vec<_>>()
                        .join(", "),
                    e.prefix,
                    e.request_timeout
                ),
                _ => String::new(),
            },
            self.default_kinds.join(", "),
            self.policy_keys,
        );
        for (name, addr) in &self.signers {
            let _ = write!(y, "  - name: {name}\n    address: {addr}\n");
            if self.socket_signers.contains(name) {
                y.push_str("    protocol: socket\n");
            }
        }
        if self.socket_api {
            y.push_str("socket_api:\n  listen: 127.0.0.1:0\n");
            if let Some(t) = &self.socket_frame_timeout {
                let _ = writeln!(y, "  frame_timeout: {t}");
            }
        }
        let _ = write!(
            y,
            "request_timeout: {}\n\
             health_check:\n  path: {}\n  interval: {}\n  timeout: {}\n  rise: {}\n  fall: {}\n\
             shutdown_grace: {}\nlog_format: text\n",
            self.request_timeout,
            self.health_path,
            self.health_interval,
            self.health_timeout,
            self.health_rise,
            self.health_fall,
            self.shutdown_grace,
        );
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let (api, admin) = parse_ready_line("signer-gateway ready api=127.0.0.1:4000 admin=127.0.0.1:4001").unwrap();
        assert_eq!(api.port(), 4000);
        assert_eq!(admin.port(), 4001);
        assert!(parse_ready_line("signer-gateway ready api=127.0.0.1:4000").is_err());
    }

    #[test]
    fn config_yaml_has_the_schema_shape() {
        let cfg = GatewayConfig::new(&[
            ("primary", "127.0.0.1:6733".parse().unwrap()),
            ("backup", "127.0.0.1:6734".parse().unwrap()),
        ]);
        let y = cfg.to_yaml();
        assert!(y.contains("  dir: \"{dir}/watermarks\"\n"), "{y}");
        assert!(y.contains("signers:\n  - name: primary\n    address: 127.0.0.1:6733\n  - name: backup\n"));
        assert!(y.contains("  default_kinds: [block, preattestation, attestation]\n"));
        assert!(y.ends_with("shutdown_grace: 5s\nlog_format: text\n"));
        let mut mem = cfg.clone();
        mem.watermark_backend = "memory".into();
        let y = mem.to_yaml();
        assert!(y.contains("watermark:\n  backend: memory\npolicy:\n"), "{y}");
    }
}
