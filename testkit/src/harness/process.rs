//! The one wrapper for the tests' child processes ([`Proc`]): stdout, and stderr unless the
//! caller sends it elsewhere, drained line by line by threads (a child never blocks on a full
//! pipe, even while a test blocks a runtime thread) into [`Lines`] with arrival times, echoed
//! with `E2E_VERBOSE=1`, optionally appended to a log file; SIGTERM with a bound, SIGKILL on
//! drop. The gateway, the test signer, `signer-tunnel` and `ssh` all run in one.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

/// True when `E2E_VERBOSE=1`: children's output is echoed on the test's stderr.
pub fn verbose() -> bool {
    std::env::var("E2E_VERBOSE").is_ok_and(|v| v == "1")
}

/// Lines a child wrote to one stream, with the time each arrived; cheap to clone (shared), and
/// kept across restarts when the caller hands the same `Lines` to the next run.
#[derive(Clone)]
pub struct Lines {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    // Bumped at every line and when the stream closes.
    seen: watch::Sender<u64>,
}

impl Default for Lines {
    fn default() -> Self {
        Lines {
            lines: Arc::default(),
            seen: watch::Sender::new(0),
        }
    }
}

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        self.lock().push((Instant::now(), line));
        self.seen.send_modify(|n| *n += 1);
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.lock().iter().map(|(_, l)| l.clone()).collect()
    }

    /// Every line so far, one per line of text.
    pub fn text(&self) -> String {
        self.lock().iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// Lines containing `needle`, with the time each arrived.
    pub fn matching(&self, needle: &str) -> Vec<(Instant, String)> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lock();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The first line (at or after `since`) for which `found` holds.
    pub fn find(&self, since: Option<Instant>, found: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        self.lock()
            .iter()
            .find(|(at, l)| since.is_none_or(|s| *at >= s) && found(l))
            .cloned()
    }

    /// Wait up to `within` for a line (at or after `since`) for which `found` holds; `None`
    /// past the deadline.
    pub async fn wait(
        &self,
        since: Option<Instant>,
        within: Duration,
        found: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + within;
        let mut seen = self.seen.subscribe();
        loop {
            if let Some(hit) = self.find(since, &found) {
                return Some(hit);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // A new line, or a short tick (the stream may have closed meanwhile).
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), seen.changed()).await;
        }
    }

    /// Drain `pipe` into these lines on a thread, echoing them with `tag` when verbose and
    /// appending them to `log`.
    fn drain(&self, pipe: impl Read + Send + 'static, tag: String, mut log: Option<File>) -> anyhow::Result<()> {
        let lines = self.clone();
        let echo = verbose();
        std::thread::Builder::new()
            .name(format!("{tag}-reader"))
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if echo {
                        eprintln!("[{tag}] {line}");
                    }
                    if let Some(log) = log.as_mut() {
                        let _ = writeln!(log, "{line}");
                    }
                    lines.push(line);
                }
                lines.seen.send_modify(|n| *n += 1);
            })
            .context("spawning an output reader thread")?;
        Ok(())
    }
}

/// Where a child's stderr goes.
pub enum Stderr {
    /// Wherever the caller set it on the `Command` (a log file, inherited).
    AsSet,
    /// Into these lines, and appended to this log file when given.
    Capture(Lines, Option<File>),
}

/// A running child of a test; SIGKILLed and reaped on drop.
pub struct Proc {
    child: Child,
    name: String,
    status: Option<ExitStatus>,
    /// Every stdout line.
    pub stdout: Lines,
    /// Every stderr line, when captured.
    pub stderr: Lines,
}

impl Proc {
    /// Start `cmd` with stdin closed and stdout drained into [`Proc::stdout`]; stderr as
    /// `stderr` says.
    pub fn start(name: &str, mut cmd: Command, stderr: Stderr) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let (err_lines, err_log) = match stderr {
            Stderr::AsSet => (Lines::default(), None),
            Stderr::Capture(lines, log) => {
                cmd.stderr(Stdio::piped());
                (lines, Some(log))
            }
        };
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stdout = Lines::default();
        let out_pipe = child.stdout.take().context("child stdout was not piped")?;
        stdout.drain(out_pipe, format!("{name} stdout"), None)?;
        if let Some(log) = err_log {
            let err_pipe = child.stderr.take().context("child stderr was not piped")?;
            err_lines.drain(err_pipe, name.to_string(), log)?;
        }
        Ok(Proc {
            child,
            name: name.to_string(),
            status: None,
            stdout,
            stderr: err_lines,
        })
    }

    /// Start `cmd` as [`Proc::start`] and wait up to `within` for a stdout line starting with
    /// `ready_prefix`; returns the process and that line. `log` is read into the error if the
    /// child exits or stays silent.
    pub async fn spawn(
        name: &str,
        cmd: Command,
        ready_prefix: &str,
        within: Duration,
        log: Option<&Path>,
    ) -> anyhow::Result<(Proc, String)> {
        let mut proc = Proc::start(name, cmd, Stderr::AsSet)?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let tick = left.min(Duration::from_millis(50));
            if let Some((_, line)) = proc.stdout.wait(None, tick, |l| l.starts_with(ready_prefix)).await {
                return Ok((proc, line));
            }
            if let Some(status) = proc.try_status()? {
                anyhow::bail!(
                    "{name} exited before printing {ready_prefix:?} (status: {status}){}",
                    log_excerpt(log)
                );
            }
            if left.is_zero() {
                proc.kill();
                anyhow::bail!(
                    "{name} did not print {ready_prefix:?} within {within:?}{}",
                    log_excerpt(log)
                );
            }
        }
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Process id, `None` once it was seen to exit (and was reaped).
    pub fn live_id(&self) -> Option<u32> {
        self.status.is_none().then(|| self.child.id())
    }

    /// The exit status once it has exited (reaps it); `None` while it runs.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Send `sig` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        anyhow::ensure!(self.status.is_none(), "{} already exited", self.name);
        signal(self.child.id(), sig)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Err means it already exited: reaping below still applies.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.status = Some(status),
            Err(e) => eprintln!("reaping {}: {e}", self.name),
        }
    }

    /// Wait up to `within` for the exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait up to `within` for the exit; SIGKILL and fail after that.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        match self.wait_exit(within).await {
            Some(status) => Ok(status),
            None => {
                self.kill();
                anyhow::bail!("{} still running {within:?} after SIGTERM: killed", self.name)
            }
        }
    }
}

/// The current run of a process a test stops and starts again (a gateway, a signer, an etcd
/// member, `signer-tunnel`): empty between runs. What every harness does to its process, once.
pub struct Run {
    what: &'static str,
    proc: Option<Proc>,
}

impl Run {
    /// No run yet of the process named `what` (for errors: "`what` is not running").
    pub fn new(what: &'static str) -> Run {
        Run { what, proc: None }
    }

    /// `proc` is the first run of the process named `what`.
    pub fn started(what: &'static str, proc: Proc) -> Run {
        Run { what, proc: Some(proc) }
    }

    /// `proc` is the current run now.
    pub fn set(&mut self, proc: Proc) {
        self.proc = Some(proc);
    }

    /// The current run, if any.
    pub fn get(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// The current run, or an error saying there is none.
    pub fn running(&mut self) -> anyhow::Result<&mut Proc> {
        self.proc
            .as_mut()
            .with_context(|| format!("{} is not running", self.what))
    }

    fn take(&mut self) -> anyhow::Result<Proc> {
        self.proc
            .take()
            .with_context(|| format!("{} is not running", self.what))
    }

    /// Process id of the current run.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::id)
    }

    /// Is the current run still running?
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// The current run's exit status once it exited; `None` while it runs.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.running()?.try_status()
    }

    /// Send `sig` to the current run without waiting.
    pub fn signal(&self, sig: libc::c_int) -> anyhow::Result<()> {
        self.proc
            .as_ref()
            .with_context(|| format!("{} is not running", self.what))?
            .signal(sig)
    }

    /// SIGKILL and reap the current run, if any.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait up to `within` for the exit (SIGKILL and an error past it).
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.take()?.terminate(within).await
    }

    /// Wait up to `within` for the current run to exit by itself (SIGKILL and an error past it).
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let mut p = self.take()?;
        match p.wait_exit(within).await {
            Some(status) => Ok(status),
            None => {
                p.kill();
                anyhow::bail!("{} still running {within:?} later: killed", self.what)
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
