//! Child processes that announce readiness with one stdout line.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// True when `E2E_VERBOSE=1`: children's stdout is echoed and their stderr inherited.
pub fn verbose() -> bool {
    std::env::var("E2E_VERBOSE").is_ok_and(|v| v == "1")
}

/// A running child whose stdout is drained by a thread (so it never blocks on a full pipe).
pub(crate) struct Proc {
    child: Child,
    name: String,
    /// Every stdout line so far.
    pub(crate) stdout: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawn `cmd` (stdout is piped here) and wait up to `within` for a stdout line starting
    /// with `ready_prefix`; returns the process and that line. `log` is read into the error
    /// if the child exits or stays silent.
    pub(crate) async fn spawn(
        name: &str,
        mut cmd: Command,
        ready_prefix: &str,
        within: Duration,
        log: Option<&Path>,
    ) -> anyhow::Result<(Proc, String)> {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout was not piped")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        {
            let lines = lines.clone();
            let name = name.to_string();
            let echo = verbose();
            std::thread::Builder::new()
                .name(format!("{name}-stdout"))
                .spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            eprintln!("[{name} stdout] {line}");
                        }
                        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
                        // The receiver goes away once the ready line was seen: keep draining.
                        let _ = tx.send(line);
                    }
                })
                .context("spawning the stdout reader thread")?;
        }
        let mut proc = Proc {
            child,
            name: name.to_string(),
            stdout: lines,
        };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(line)) if line.starts_with(ready_prefix) => return Ok((proc, line)),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    // stdout closed: the child is exiting; give it a moment to be reaped.
                    let status = proc.wait_exit(Duration::from_secs(2)).await;
                    anyhow::bail!(
                        "{name} exited before printing {ready_prefix:?} (status: {status:?}){}",
                        log_excerpt(log)
                    );
                }
                Err(_) => {
                    proc.kill();
                    anyhow::bail!(
                        "{name} did not print {ready_prefix:?} within {within:?}{}",
                        log_excerpt(log)
                    );
                }
            }
        }
    }

    /// Process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        // Err means it already exited: reaping below still applies.
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            eprintln!("reaping {}: {e}", self.name);
        }
    }

    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait up to `within` for the exit; SIGKILL and fail after that.
    pub(crate) async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        signal(self.child.id(), libc::SIGTERM)?;
        match self.wait_exit(within).await {
            Some(status) => Ok(status),
            None => {
                self.kill();
                anyhow::bail!("{} still running {within:?} after SIGTERM: killed", self.name)
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// Send `sig` (`libc::SIGTERM`, `libc::SIGKILL`, …) to process `pid`: the one signal helper
/// of the test support, without `unsafe` (rustix). The pid must be a child not yet reaped, so
/// it cannot have been reused.
pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("pid {pid} out of range"))?;
    let signal = rustix::process::Signal::from_named_raw(sig).with_context(|| format!("signal {sig}"))?;
    rustix::process::kill_process(pid, signal).with_context(|| format!("kill({pid:?}, {sig})"))
}

/// The last lines of a log file, for error messages.
pub(crate) fn log_excerpt(log: Option<&Path>) -> String {
    let Some(path) = log else {
        return String::new();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("\n--- last lines of {} ---\n{tail}\n---", path.display())
        }
        Err(e) => format!("\n(no log at {}: {e})", path.display()),
    }
}
