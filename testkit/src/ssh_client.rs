//! Stock OpenSSH (`ssh`, `ssh-keygen`) as a test client of the gateway's SSH server.
//!
//! - [`SshKey::generate`]: an ed25519 key pair in a dir, as a Pi would have.
//! - [`SshClient::spawn`]: an `ssh` process with test-friendly options (no known-hosts
//!   file, no user config, no agent, batch mode, 1 s server-alive checks) whose stderr lines
//!   are kept with the time they arrived, so a test can wait for `Allocated port …` (the
//!   gateway accepted the reverse forward) and time what follows.
//!
//! A machine without OpenSSH fails with a message naming the package to install; `SSH_BIN`
//! and `SSH_KEYGEN_BIN` override the lookup in `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::harness::{Lines, Proc, Stderr};

/// Find an executable: `$env_var` if set, else `name` in `PATH`.
fn find_bin(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "{env_var}={} is not a file", p.display());
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "the OpenSSH client `{name}` is not installed (not in PATH={}); these tests run stock \
         OpenSSH against the gateway: install it (Debian/Ubuntu: `apt-get install -y \
         openssh-client`) or set {env_var} to its path",
        path.to_string_lossy()
    )
}

/// The `ssh` binary, or an error saying how to install it.
pub fn ssh_bin() -> anyhow::Result<PathBuf> {
    find_bin("ssh", "SSH_BIN")
}

/// The `ssh-keygen` binary, or an error saying how to install it.
pub fn ssh_keygen_bin() -> anyhow::Result<PathBuf> {
    find_bin("ssh-keygen", "SSH_KEYGEN_BIN")
}

/// An ed25519 key pair made by `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// Private key file (OpenSSH format, no passphrase, mode 0600).
    pub private: PathBuf,
    /// The public key line: `ssh-ed25519 AAAA… comment`.
    pub public: String,
}

impl SshKey {
    /// `ssh-keygen -t ed25519 -N '' -C <name> -f <dir>/<name>`.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<SshKey> {
        let keygen = ssh_keygen_bin()?;
        let private = dir.join(name);
        let out = std::process::Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", keygen.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "ssh-keygen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pub_path = dir.join(format!("{name}.pub"));
        let public = std::fs::read_to_string(&pub_path)
            .with_context(|| format!("reading {}", pub_path.display()))?
            .trim()
            .to_string();
        Ok(SshKey { private, public })
    }
}

/// Options every test client gets: no user config, no host key checking or known-hosts file,
/// only the given key, no agent, no prompts, server-alive checks every second (3 missed end
/// the client), 5 s to connect.
pub fn base_args(key: &SshKey, server: SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into(), "-i".into()];
    args.push(key.private.display().to_string());
    args.extend(["-p".into(), server.port().to_string()]);
    for opt in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "GlobalKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "ServerAliveInterval=1",
        "ServerAliveCountMax=3",
        "ConnectTimeout=5",
        "LogLevel=INFO",
    ] {
        args.extend(["-o".to_string(), opt.to_string()]);
    }
    args
}

/// What ssh prints on stderr once the server accepted a `-R 0:…` forward.
pub const ALLOCATED: &str = "Allocated port ";

/// A running `ssh` process ([`Proc`]); killed (SIGKILL) on drop.
pub struct SshClient {
    proc: Proc,
    command: String,
}

impl SshClient {
    /// `ssh <options…> <base_args> <user>@<server ip> [command…]`, with stdin closed: `extra`
    /// holds options, then optionally `"--"` and a remote command. ssh keeps the first value
    /// it reads for an option, so `-o Name=value` in `extra` overrides [`base_args`].
    pub fn spawn(key: &SshKey, server: SocketAddr, user: &str, extra: &[&str]) -> anyhow::Result<SshClient> {
        let (opts, command) = match extra.iter().position(|a| *a == "--") {
            Some(i) => (&extra[..i], &extra[i + 1..]),
            None => (extra, &[][..]),
        };
        let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        args.extend(base_args(key, server));
        args.push(format!("{user}@{}", server.ip()));
        args.extend(command.iter().map(|s| s.to_string()));
        SshClient::spawn_args(&args)
    }

    /// `ssh -N -R 0:<target> …`: a reverse tunnel to `target` (the signer behind the Pi), with
    /// `ExitOnForwardFailure`; `extra` options as in [`SshClient::spawn`]. Once the gateway
    /// accepted the forward, ssh prints `Allocated port …` ([`ALLOCATED`]).
    pub fn reverse_tunnel(
        key: &SshKey,
        server: SocketAddr,
        user: &str,
        target: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<SshClient> {
        let forward = format!("0:{}:{}", target.ip(), target.port());
        let mut args = extra.to_vec();
        args.extend(["-N", "-R", &forward, "-o", "ExitOnForwardFailure=yes"]);
        SshClient::spawn(key, server, user, &args)
    }

    /// `ssh <args…>` exactly as given (no base options added), stdin closed.
    pub fn spawn_args(args: &[String]) -> anyhow::Result<SshClient> {
        let bin = ssh_bin()?;
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        let command = format!("{} {}", bin.display(), args.join(" "));
        let proc = Proc::start("ssh", cmd, Stderr::Capture(Lines::default(), None))?;
        Ok(SshClient { proc, command })
    }

    /// Process id (None once reaped).
    pub fn id(&self) -> Option<u32> {
        self.proc.live_id()
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr.text()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout.text()
    }

    /// Wait up to `within` for a stderr line containing `needle`; returns when it arrived.
    /// Fails early if ssh exits without printing it.
    pub async fn wait_stderr(&mut self, needle: &str, within: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let tick = left.min(Duration::from_millis(50));
            if let Some((at, _)) = self.proc.stderr.wait(None, tick, |l| l.contains(needle)).await {
                return Ok(at);
            }
            if let Some(status) = self.proc.try_status()? {
                // Let the reader drain what is left before giving up.
                if let Some((at, _)) = self
                    .proc
                    .stderr
                    .wait(None, Duration::from_millis(100), |l| l.contains(needle))
                    .await
                {
                    return Ok(at);
                }
                anyhow::bail!(
                    "ssh exited ({status}) without printing {needle:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            if left.is_zero() {
                anyhow::bail!(
                    "ssh did not print {needle:?} within {within:?}; stderr so far:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// The exit status if it has exited (reaps it).
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.proc.try_status()
    }

    /// Wait up to `within` for the exit; the status, or an error (the process keeps running).
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let status = self.proc.wait_exit(within).await.ok_or_else(|| {
            anyhow::anyhow!(
                "ssh still running after {within:?}: {}\nstderr:\n{}",
                self.command,
                self.stderr()
            )
        })?;
        // Let the readers catch the last lines.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(status)
    }

    /// Send `sig` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        self.proc.signal(sig)
    }

    /// SIGTERM and wait up to `within` for the exit.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_exit(within).await
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        self.proc.kill();
    }
}
