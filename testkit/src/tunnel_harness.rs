//! The real `signer-tunnel` binary (the Pi-side client) under test: its YAML config
//! ([`TunnelConfig`]), the `run` process ([`TunnelClient`]) with its log kept line by line,
//! and one-shot commands (`check`, `keygen`, `--version`, also under an emulator) via
//! [`run_to_end`].
//!
//! `signer-tunnel run` prints no ready line: tests learn that it is up from the gateway
//! (`/status` `ssh.tunnels`) or by waiting for a log line ([`TunnelClient::wait_log`]). Its
//! stderr is always read by a thread, kept in memory with arrival times, appended to
//! `<dir>/signer-tunnel.log`, and echoed when `E2E_VERBOSE=1`; the log's tail is printed
//! when a test panics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::harness::{verbose, Lines, Proc, Run, Stderr};

/// Name of the config file [`TunnelClient::start`] writes in its dir.
pub const CONFIG_FILE: &str = "signer-tunnel.yaml";
/// Name of the log file [`TunnelClient`] appends stderr to.
pub const LOG_FILE: &str = "signer-tunnel.log";

/// The `signer-tunnel` binary: `$SIGNER_TUNNEL_BIN`, else the one next to the running test
/// executable, refused when older than its sources ([`crate::harness::workspace_bin`]).
pub fn tunnel_bin() -> anyhow::Result<PathBuf> {
    crate::harness::workspace_bin("signer-tunnel", "SIGNER_TUNNEL_BIN", &["tunnel-client", "common"])
}

/// The `target` dir the running test executable lives in (`target/<profile>/deps/<test>`),
/// to find binaries built for other targets (`target/<triple>/release/…`).
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| format!("no target dir above {}", exe.display()))
}

/// `humantime` text for a duration, as the config wants it (`1500ms`).
fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One entry of `replicas`: a gateway process of its own.
#[derive(Debug, Clone)]
pub struct TunnelReplica {
    /// `name`.
    pub name: String,
    /// `addresses`: SSH addresses of this replica, tried in order.
    pub addresses: Vec<SocketAddr>,
    /// `host_key`: this replica's pin (`None`: the top-level one).
    pub host_key: Option<String>,
}

impl TunnelReplica {
    /// Replica `name` at `address`, pinning `host_key`.
    pub fn new(name: &str, address: SocketAddr, host_key: &str) -> TunnelReplica {
        TunnelReplica {
            name: name.to_string(),
            addresses: vec![address],
            host_key: Some(host_key.to_string()),
        }
    }
}

/// Builder for `signer-tunnel`'s YAML config, with test-friendly defaults: short keepalives,
/// timeouts and backoff so faults are noticed and recovered from within seconds.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// `gateways`: SSH addresses of one gateway, tried in order (written only while
    /// `replicas` is empty).
    pub gateways: Vec<SocketAddr>,
    /// `replicas`: several gateways, a session to each; when not empty, written instead of
    /// `gateways`.
    pub replicas: Vec<TunnelReplica>,
    /// `host_key`: the pinned fingerprint (`SHA256:…`) or public key line.
    pub host_key: String,
    /// `identity`: the private key file.
    pub identity: PathBuf,
    /// `signer`: the local signer.
    pub signer: SocketAddr,
    /// `uplinks`, as source addresses in preference order (empty: none configured).
    pub uplinks: Vec<IpAddr>,
    /// `connect_timeout`.
    pub connect_timeout: Duration,
    /// `keepalive_interval`.
    pub keepalive_interval: Duration,
    /// `keepalive_max`.
    pub keepalive_max: u32,
    /// `tcp_user_timeout`.
    pub tcp_user_timeout: Duration,
    /// `uplink_retry`.
    pub uplink_retry: Duration,
    /// `host_key_mismatch_retry`.
    pub host_key_mismatch_retry: Duration,
    /// `backoff.initial`.
    pub backoff_initial: Duration,
    /// `backoff.max`.
    pub backoff_max: Duration,
    /// `backoff.reset_after`.
    pub backoff_reset_after: Duration,
    /// `health_check.path`.
    pub health_path: String,
    /// `health_check.interval`.
    pub health_interval: Duration,
    /// `health_check.timeout`.
    pub health_timeout: Duration,
    /// `health_check.fall`.
    pub health_fall: u32,
    /// `health_check.rise`.
    pub health_rise: u32,
    /// `signer_protocol: socket`: the local signer speaks octez's socket protocol.
    pub socket_signer: bool,
}

impl TunnelConfig {
    /// Test defaults for a client of `gateway` pinning `host_key`, authenticating with
    /// `identity`, forwarding to `signer`.
    pub fn new(gateway: SocketAddr, host_key: &str, identity: &Path, signer: SocketAddr) -> TunnelConfig {
        TunnelConfig {
            gateways: vec![gateway],
            replicas: Vec::new(),
            host_key: host_key.to_string(),
            identity: identity.to_path_buf(),
            signer,
            uplinks: Vec::new(),
            connect_timeout: Duration::from_secs(3),
            keepalive_interval: Duration::from_millis(500),
            keepalive_max: 3,
            tcp_user_timeout: Duration::from_secs(5),
            uplink_retry: Duration::from_secs(10),
            host_key_mismatch_retry: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            backoff_reset_after: Duration::from_secs(5),
            health_path: "/authorized_keys".to_string(),
            health_interval: Duration::from_millis(200),
            health_timeout: Duration::from_millis(500),
            health_fall: 2,
            health_rise: 1,
            socket_signer: false,
        }
    }

    /// The settings of `deploy/examples/signer-tunnel.yaml`, what a Pi runs (the [`new`]
    /// defaults are test-fast ones), for a client of `gateway` pinning `host_key`,
    /// authenticating with `identity`, forwarding to `signer`.
    ///
    /// [`new`]: TunnelConfig::new
    pub fn production(gateway: SocketAddr, host_key: &str, identity: &Path, signer: SocketAddr) -> TunnelConfig {
        TunnelConfig {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            keepalive_max: 3,
            tcp_user_timeout: Duration::from_secs(5),
            uplink_retry: Duration::from_secs(10),
            host_key_mismatch_retry: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            backoff_reset_after: Duration::from_secs(30),
            health_path: "/authorized_keys".to_string(),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            health_fall: 2,
            health_rise: 1,
            ..TunnelConfig::new(gateway, host_key, identity, signer)
        }
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        let list = |items: Vec<String>| items.join(", ");
        let addresses = |a: &[SocketAddr]| list(a.iter().map(|g| format!("'{g}'")).collect());
        // Writing to a String cannot fail.
        if self.replicas.is_empty() {
            let _ = writeln!(y, "gateways: [{}]", addresses(&self.gateways));
        } else {
            let _ = writeln!(y, "replicas:");
            for r in &self.replicas {
                let _ = write!(y, "  - {{name: '{}', addresses: [{}]", r.name, addresses(&r.addresses));
                if let Some(pin) = &r.host_key {
                    let _ = write!(y, ", host_key: '{pin}'");
                }
                let _ = writeln!(y, "}}");
            }
        }
        let _ = write!(
            y,
            "host_key: '{}'\nidentity: '{}'\nsigner: '{}'\n",
            self.host_key,
            self.identity.display(),
            self.signer,
        );
        if self.socket_signer {
            y.push_str("signer_protocol: socket\n");
        }
        if !self.uplinks.is_empty() {
            let _ = writeln!(
                y,
                "uplinks: [{}]",
                list(self.uplinks.iter().map(|ip| format!("{{source: '{ip}'}}")).collect())
            );
        }
        let _ = write!(
            y,
            "connect_timeout: {}\nkeepalive_interval: {}\nkeepalive_max: {}\ntcp_user_timeout: {}\n\
             uplink_retry: {}\nhost_key_mismatch_retry: {}\n\
             backoff: {{initial: {}, max: {}, reset_after: {}}}\n\
             health_check: {{path: '{}', interval: {}, timeout: {}, fall: {}, rise: {}}}\n\
             log_format: text\n",
            ms(self.connect_timeout),
            ms(self.keepalive_interval),
            self.keepalive_max,
            ms(self.tcp_user_timeout),
            ms(self.uplink_retry),
            ms(self.host_key_mismatch_retry),
            ms(self.backoff_initial),
            ms(self.backoff_max),
            ms(self.backoff_reset_after),
            self.health_path,
            ms(self.health_interval),
            ms(self.health_timeout),
            self.health_fall,
            self.health_rise,
        );
        y
    }

    /// Write the YAML to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.to_yaml()).with_context(|| format!("writing {}", path.display()))
    }
}

/// A `signer-tunnel run` process. Dropping it kills it (SIGKILL); the dir stays (the caller
/// owns it).
pub struct TunnelClient {
    child: Run,
    bin: PathBuf,
    dir: PathBuf,
    config: TunnelConfig,
    env: Vec<(String, String)>,
    lines: Lines,
    runs: u32,
}

impl TunnelClient {
    /// Write `config` to `<dir>/signer-tunnel.yaml` and start `signer-tunnel --config … run`
    /// (with `RUST_LOG=info` unless the environment sets it).
    pub fn start(dir: &Path, config: &TunnelConfig) -> anyhow::Result<TunnelClient> {
        TunnelClient::start_with_env(dir, config, &[])
    }

    /// As [`TunnelClient::start`] with extra environment variables for the process.
    pub fn start_with_env(dir: &Path, config: &TunnelConfig, env: &[(&str, &str)]) -> anyhow::Result<TunnelClient> {
        let mut client = TunnelClient {
            child: Run::new("signer-tunnel"),
            bin: tunnel_bin()?,
            dir: dir.to_path_buf(),
            config: config.clone(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            lines: Lines::default(),
            runs: 0,
        };
        client.spawn()?;
        Ok(client)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let config_path = self.config_path();
        self.config.write(&config_path)?;
        self.runs += 1;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&config_path).arg("run").current_dir(&self.dir);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log_path = self.log_path();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "=== gateway-e2e: run {} of {} ===", self.runs, self.bin.display())?;
        let proc = Proc::start("signer-tunnel", cmd, Stderr::Capture(self.lines.clone(), Some(log)))?;
        self.child.set(proc);
        Ok(())
    }

    /// The dir the config and log are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/signer-tunnel.yaml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `<dir>/signer-tunnel.log` (every run's stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Every stderr line so far, across restarts.
    pub fn log(&self) -> String {
        self.lines.text()
    }

    /// Stderr lines containing `needle`, with the time each arrived.
    pub fn log_lines(&self, needle: &str) -> Vec<(Instant, String)> {
        self.lines.matching(needle)
    }

    /// Wait up to `within` for a stderr line containing `needle` that arrived at or after
    /// `since` (any time when `None`); returns when it arrived.
    pub async fn wait_log(&self, needle: &str, since: Option<Instant>, within: Duration) -> anyhow::Result<Instant> {
        match self.lines.wait(since, within, |l| l.contains(needle)).await {
            Some((at, _)) => Ok(at),
            None => anyhow::bail!(
                "signer-tunnel did not log {needle:?} within {within:?}{}",
                self.log_tail(30)
            ),
        }
    }

    /// The last `n` stderr lines, formatted for an error message.
    pub fn log_tail(&self, n: usize) -> String {
        format!(
            "\n--- last lines of signer-tunnel's log ---\n{}\n---",
            self.lines.tail(n).join("\n")
        )
    }

    /// Process id of the current run, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Still running? (Its exit status once it exited.)
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child.try_status()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// SIGTERM and wait up to `within` for the exit (SIGKILL and an error past it).
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.child.terminate(within).await
    }

    /// Kill the current run if any and start again with `config` (written anew).
    pub fn restart_with(&mut self, config: &TunnelConfig) -> anyhow::Result<()> {
        self.kill();
        self.config = config.clone();
        self.spawn()
    }
}

impl Drop for TunnelClient {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && !verbose() {
            eprintln!("{}", self.log_tail(40));
        }
    }
}

/// What a one-shot command did.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Whole stdout (lossy UTF-8).
    pub stdout: String,
    /// Whole stderr (lossy UTF-8).
    pub stderr: String,
    /// Time from spawn to exit.
    pub took: Duration,
}

impl Finished {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exited {} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}---",
            self.status, self.took, self.stdout, self.stderr
        )
    }
}

/// Run `cmd` to its end (stdin closed, output captured), killing it after `within`. Runs on
/// a blocking thread so the runtime keeps serving the gateway and signers meanwhile.
pub async fn run_to_end(mut cmd: tokio::process::Command, within: Duration) -> anyhow::Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let what = format!("{:?}", cmd.as_std());
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let out: Output = match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(r) => r.with_context(|| format!("waiting for {what}"))?,
        // The child is killed as the future (which owns it) drops.
        Err(_) => anyhow::bail!("{what} still running after {within:?}: killed"),
    };
    let finished = Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    };
    if verbose() {
        eprintln!("[{what}] {finished}");
    }
    Ok(finished)
}

/// `signer-tunnel <args…>` as a command for [`run_to_end`].
pub fn tunnel_command(args: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(tunnel_bin()?);
    cmd.args(args);
    Ok(cmd)
}

/// `signer-tunnel keygen` into `dir/id_ed25519` with `comment`: (private key path, public key
/// line for the gateway's `tunnel.keys`).
pub async fn keygen(dir: &Path, comment: &str) -> anyhow::Result<(PathBuf, String)> {
    let path = dir.join("id_ed25519");
    let path_text = path.to_str().context("temp path is not UTF-8")?;
    let out = run_to_end(
        tunnel_command(&["keygen", "--out", path_text, "--comment", comment])?,
        Duration::from_secs(20),
    )
    .await?;
    anyhow::ensure!(out.status.success(), "signer-tunnel keygen failed: {out}");
    Ok((path, out.stdout.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_yaml_has_the_schema_shape() {
        let mut cfg = TunnelConfig::new(
            "127.0.0.1:2222".parse().unwrap(),
            "SHA256:abc",
            Path::new("/k/id"),
            "127.0.0.1:6732".parse().unwrap(),
        );
        cfg.uplinks = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
        let y = cfg.to_yaml();
        assert!(
            y.starts_with("gateways: ['127.0.0.1:2222']\nhost_key: 'SHA256:abc'\n"),
            "{y}"
        );
        assert!(
            y.contains("uplinks: [{source: '127.0.0.2'}, {source: '127.0.0.3'}]\n"),
            "{y}"
        );
        assert!(
            y.contains("backoff: {initial: 200ms, max: 2000ms, reset_after: 5000ms}\n"),
            "{y}"
        );
        assert!(
            y.contains("health_check: {path: '/authorized_keys', interval: 200ms"),
            "{y}"
        );
        assert!(y.ends_with("log_format: text\n"));

        cfg.replicas = vec![
            TunnelReplica::new("gw-a", "127.0.0.1:2201".parse().unwrap(), "SHA256:a"),
            TunnelReplica {
                name: "gw-b".into(),
                addresses: vec!["127.0.0.1:2202".parse().unwrap(), "127.0.0.1:2203".parse().unwrap()],
                host_key: None,
            },
        ];
        let y = cfg.to_yaml();
        assert!(
            y.starts_with(
                "replicas:\n  - {name: 'gw-a', addresses: ['127.0.0.1:2201'], host_key: 'SHA256:a'}\n  \
                 - {name: 'gw-b', addresses: ['127.0.0.1:2202', '127.0.0.1:2203']}\nhost_key: 'SHA256:abc'\n"
            ),
            "{y}"
        );
        assert!(!y.contains("gateways"), "{y}");
    }
}
