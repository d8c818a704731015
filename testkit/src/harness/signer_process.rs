//! The `test-signer` binary as a real process (to kill it for real), and a control client
//! that works for in-process and process signers alike. A socket-protocol signer
//! ([`TestSignerProcess::start_socket`]) is controlled through its own control port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::{Method, StatusCode};
use signer_gateway::tezos::Pkh;

use super::client::Client;
use super::process::{verbose, Proc, Run};
use crate::test_signer::{Mode, Protocol, Stats, TestKey};

/// Prefix of the line `test-signer` prints once it listens.
pub const READY_PREFIX: &str = "test-signer listening on ";

/// Talks to a test signer's `/_control/` endpoints.
#[derive(Clone)]
pub struct SignerControl {
    addr: SocketAddr,
    // Fresh connections: the signer may be killed and restarted on the same port.
    client: Client,
}

impl SignerControl {
    /// Control client for the test signer at `addr`.
    pub fn new(addr: SocketAddr) -> SignerControl {
        SignerControl {
            addr,
            client: Client::fresh_connections().with_timeout(Duration::from_secs(5)),
        }
    }

    /// Switch the fault mode.
    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        let url = format!("http://{}/_control/mode", self.addr);
        let reply = self.client.raw(Method::PUT, &url, mode.to_string(), &[]).await?;
        anyhow::ensure!(
            reply.status.is_success(),
            "PUT {url}: {} {}",
            reply.status,
            reply.text()
        );
        Ok(())
    }

    /// Counters so far.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let url = format!("http://{}/_control/stats", self.addr);
        let (status, body) = self.client.get(&url).await?;
        anyhow::ensure!(status == StatusCode::OK, "GET {url}: {status} {body}");
        serde_json::from_value(body).context("decoding stats")
    }

    /// Zero the counters.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/_control/reset", self.addr);
        let reply = self.client.raw(Method::POST, &url, "", &[]).await?;
        anyhow::ensure!(reply.status.is_success(), "POST {url}: {}", reply.status);
        Ok(())
    }
}

/// A `test-signer` child process. Dropping it kills it.
pub struct TestSignerProcess {
    proc: Run,
    bin: PathBuf,
    addr: SocketAddr,
    protocol: Protocol,
    /// The separate control port (socket signers), kept across restarts like `addr`.
    control_addr: Option<SocketAddr>,
    keys: Vec<TestKey>,
    pkhs: Vec<Pkh>,
    control: SignerControl,
}

impl TestSignerProcess {
    /// Start the `test-signer` binary ([`super::test_signer_bin`]) on a free loopback port
    /// with one tz1 key per seed, in `mode`.
    pub async fn start(seeds: &[[u8; 32]], mode: Mode) -> anyhow::Result<TestSignerProcess> {
        TestSignerProcess::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), seeds, mode).await
    }

    /// As [`TestSignerProcess::start`] on a given address.
    pub async fn start_on(listen: SocketAddr, seeds: &[[u8; 32]], mode: Mode) -> anyhow::Result<TestSignerProcess> {
        let keys: Vec<TestKey> = seeds.iter().map(|s| TestKey::from_seed(*s)).collect();
        TestSignerProcess::start_keys(listen, &keys, mode).await
    }

    /// As [`TestSignerProcess::start_on`] with any keys (tz1 and tz4).
    pub async fn start_keys(listen: SocketAddr, keys: &[TestKey], mode: Mode) -> anyhow::Result<TestSignerProcess> {
        TestSignerProcess::start_protocol(Protocol::Http, listen, keys, mode).await
    }

    /// As [`TestSignerProcess::start_keys`], speaking octez's socket protocol on `listen`; its
    /// control endpoints get a free port of their own on the same IP
    /// ([`TestSignerProcess::control_addr`]), which [`TestSignerProcess::set_mode`] and
    /// [`TestSignerProcess::stats`] use.
    pub async fn start_socket(listen: SocketAddr, keys: &[TestKey], mode: Mode) -> anyhow::Result<TestSignerProcess> {
        TestSignerProcess::start_protocol(Protocol::Socket, listen, keys, mode).await
    }

    /// As [`TestSignerProcess::start_keys`] in either protocol.
    pub async fn start_protocol(
        protocol: Protocol,
        listen: SocketAddr,
        keys: &[TestKey],
        mode: Mode,
    ) -> anyhow::Result<TestSignerProcess> {
        let bin = super::bins::workspace_bin("test-signer", "TEST_SIGNER_BIN", &["testkit"])?;
        // HTTP signers are controlled on their own port, as they always were.
        let control_listen = match protocol {
            Protocol::Http => None,
            Protocol::Socket => Some(SocketAddr::new(listen.ip(), 0)),
        };
        let (proc, ready) = spawn(&bin, listen, keys, mode, protocol, control_listen).await?;
        let control_addr = match protocol {
            Protocol::Http => None,
            Protocol::Socket => Some(
                ready
                    .control
                    .context("a socket test-signer printed no control= address")?,
            ),
        };
        Ok(TestSignerProcess {
            proc: Run::started("test-signer", proc),
            bin,
            addr: ready.addr,
            protocol,
            control_addr,
            keys: keys.to_vec(),
            pkhs: ready.pkhs,
            control: SignerControl::new(control_addr.unwrap_or(ready.addr)),
        })
    }

    /// Address it listens on (kept across [`TestSignerProcess::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What [`TestSignerProcess::addr`] speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The control endpoints' own port (socket signers; kept across restarts); `None` for an
    /// HTTP signer, controlled on [`TestSignerProcess::addr`].
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Key hashes, in seed order.
    pub fn pkhs(&self) -> &[Pkh] {
        &self.pkhs
    }

    /// The keys, in the order given.
    pub fn keys(&self) -> Vec<TestKey> {
        self.keys.clone()
    }

    /// Control client.
    pub fn control(&self) -> &SignerControl {
        &self.control
    }

    /// Switch the fault mode.
    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        self.control.set_mode(mode).await
    }

    /// Counters of the current run (a restart starts from zero).
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.control.stats().await
    }

    /// Process id of the current run, if started and not killed.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Is the process running?
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL and reap: connections are reset, the port is closed.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM and wait up to `within`.
    pub async fn terminate(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        self.proc.terminate(within).await
    }

    /// Kill if running, then start again on the same address with the same keys, in `mode`.
    pub async fn restart(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.kill();
        // The port was just ours; retry briefly in case the kernel is slow to release it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match spawn(&self.bin, self.addr, &self.keys, mode, self.protocol, self.control_addr).await {
                Ok((proc, _)) => {
                    self.proc.set(proc);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "test-signer restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.context(format!("restarting test-signer on {}", self.addr))),
            }
        }
    }
}

async fn spawn(
    bin: &Path,
    listen: SocketAddr,
    keys: &[TestKey],
    mode: Mode,
    protocol: Protocol,
    control_listen: Option<SocketAddr>,
) -> anyhow::Result<(Proc, ReadyLine)> {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen").arg(listen.to_string());
    cmd.arg("--protocol").arg(protocol.to_string());
    if let Some(control) = control_listen {
        cmd.arg("--control-listen").arg(control.to_string());
    }
    for k in keys {
        match k.seed() {
            Some(seed) => cmd.arg("--seed").arg(hex::encode(seed)),
            None => cmd.arg("--bls-key").arg(k.secret_key()),
        };
    }
    cmd.arg("--mode").arg(mode.to_string());
    cmd.stderr(if verbose() { Stdio::inherit() } else { Stdio::null() });
    let (proc, line) = Proc::spawn("test-signer", cmd, READY_PREFIX, Duration::from_secs(10), None).await?;
    let ready = parse_ready_line(&line)?;
    Ok((proc, ready))
}

/// What `test-signer` prints once it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadyLine {
    /// The protocol address.
    pub addr: SocketAddr,
    /// Its keys, in order.
    pub pkhs: Vec<Pkh>,
    /// The separate control address (`--control-listen`), if any.
    pub control: Option<SocketAddr>,
}

/// Parse `test-signer listening on <addr> keys=<tz1…,…>[ control=<addr>]`.
fn parse_ready_line(line: &str) -> anyhow::Result<ReadyLine> {
    let rest = line
        .strip_prefix(READY_PREFIX)
        .with_context(|| format!("not a ready line: {line:?}"))?;
    let (addr, rest) = rest
        .split_once(" keys=")
        .with_context(|| format!("no keys= in {line:?}"))?;
    let addr = addr.parse().with_context(|| format!("address in {line:?}"))?;
    let (keys, control) = match rest.split_once(" control=") {
        Some((keys, control)) => (
            keys,
            Some(
                control
                    .trim()
                    .parse()
                    .with_context(|| format!("control address in {line:?}"))?,
            ),
        ),
        None => (rest, None),
    };
    let pkhs = keys
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<Pkh>().map_err(|e| anyhow::anyhow!("key {s:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(ReadyLine { addr, pkhs, control })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_signer::key_from_seed;

    #[test]
    fn ready_lines_parse_with_and_without_control() {
        let pkh = key_from_seed(1).pkh();
        let plain = format!("{READY_PREFIX}127.0.0.1:4000 keys={pkh}");
        assert_eq!(
            parse_ready_line(&plain).unwrap(),
            ReadyLine {
                addr: "127.0.0.1:4000".parse().unwrap(),
                pkhs: vec![pkh],
                control: None,
            }
        );
        let with = format!("{plain} control=127.0.0.1:4001");
        let ready = parse_ready_line(&with).unwrap();
        assert_eq!(ready.control, Some("127.0.0.1:4001".parse().unwrap()));
        assert_eq!(ready.pkhs, vec![pkh]);
        assert!(parse_ready_line(&format!("{plain} control=nowhere")).is_err());
        assert!(parse_ready_line("test-signer listening on 127.0.0.1:4000").is_err());
    }
}
