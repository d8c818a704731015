//! One rig for every tunnel scenario (`tests/tunnel.rs`, `tests/tunnel_client.rs`,
//! `benches/tunnel`): a real `signer-gateway` in a temp dir with `pi` behind its SSH tunnel
//! broker first and `backup`, a TCP test signer holding the same keys, second; a key made by
//! `ssh-keygen` listed for `pi` (as a Pi moving from autossh has); optionally the fault proxy
//! in front of the SSH port; and the client that opens the tunnel, `signer-tunnel`
//! ([`TunnelRig::start_tunnel`]) or stock OpenSSH ([`TunnelRig::openssh`]).
//!
//! [`RigOptions`] chooses where `pi`'s signer runs (in this process, or a `test-signer` process
//! a test can kill and a bench can measure), its keys, the watermark store, the proxy and the
//! gateway's timing ([`GatewayTiming`]). The SSH listener binds port 0 once and keeps that port
//! across [`TunnelRig::restart_gateway`], with the host key in the rig's dir, so a client's
//! address and pin stay valid.
//!
//! [`TunnelRig::sign`] sends a fresh attestation (the next level) and tells who signed it,
//! going by the signers' last payload ([`Served`]); it takes `&self`, so a test can watch
//! `/status` while requests flow.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use signer_gateway::tezos::Pkh;
use tempfile::TempDir;

use crate::fault_proxy::{FaultProxy, ProxyOptions};
use crate::harness::{attestation, eventually, Client, Gateway, TestSignerProcess, TEST_CHAIN};
use crate::ssh_client::{SshClient, SshKey, ALLOCATED};
use crate::test_signer::{seed, Mode, Protocol, Stats, TestKey, TestSigner, TestSignerHandle, TestSignerOptions};
use crate::traffic::{Served, Signed, Traffic};
use crate::tunnel_harness::{TunnelClient, TunnelConfig};

/// Time for a client to connect (ssh's forward accepted, the route shown in `/status`).
pub const CONNECT_SETTLE: Duration = Duration::from_secs(10);
/// Time for the gateway's pool to see a signer change state.
pub const HEALTH_SETTLE: Duration = Duration::from_secs(5);
/// Pause between two requests of a request stream ([`TunnelRig::until_pi_serves`], [`ticker`]).
pub const REQUEST_EVERY: Duration = Duration::from_millis(100);

/// An interval that fires now, then every `every`, delaying (not bursting) after a slow tick:
/// the pace of a request stream.
pub fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Where `pi`'s signer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiKind {
    /// A task of this process: cheapest.
    InProcess,
    /// A `test-signer` process: it can be killed and restarted for real, and measured apart.
    Process,
}

/// The watermark store of the rig's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `backend: file` in the rig's dir.
    File,
    /// `backend: memory`.
    Memory,
}

/// `health_check:` of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// `interval`.
    pub interval: Duration,
    /// `timeout`.
    pub timeout: Duration,
    /// `rise`.
    pub rise: u32,
    /// `fall`.
    pub fall: u32,
}

/// The gateway's timing settings; `None` leaves the gateway's default, so
/// `GatewayTiming::default()` is `deploy/examples/gateway.yaml`'s timing.
#[derive(Debug, Clone, Default)]
pub struct GatewayTiming {
    /// `request_timeout`.
    pub request_timeout: Option<Duration>,
    /// `ssh.keepalive_interval` and `ssh.keepalive_max`.
    pub keepalive: Option<(Duration, u32)>,
    /// `ssh.tcp_user_timeout`.
    pub tcp_user_timeout: Option<Duration>,
    /// `ssh.auth_timeout`.
    pub auth_timeout: Option<Duration>,
    /// `ssh.channel_open_timeout`.
    pub channel_open_timeout: Option<Duration>,
    /// `health_check`.
    pub health: Option<HealthCheck>,
}

impl GatewayTiming {
    /// Test-fast: request_timeout 2s, keepalive 1s × 3, tcp_user_timeout 5s, auth 10s,
    /// channel_open 1s, health every 200ms (timeout 300ms, rise 2, fall 1).
    pub fn fast() -> GatewayTiming {
        GatewayTiming {
            request_timeout: Some(Duration::from_secs(2)),
            auth_timeout: Some(Duration::from_secs(10)),
            health: Some(HealthCheck {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(300),
                rise: 2,
                fall: 1,
            }),
            ..GatewayTiming::production()
        }
    }

    /// What an operator would run: request_timeout 1s, keepalive 1s × 3, tcp_user_timeout 5s,
    /// channel_open 1s, health every 500ms (timeout 500ms, rise 2, fall 1).
    pub fn production() -> GatewayTiming {
        GatewayTiming {
            request_timeout: Some(Duration::from_secs(1)),
            keepalive: Some((Duration::from_secs(1), 3)),
            tcp_user_timeout: Some(Duration::from_secs(5)),
            auth_timeout: None,
            channel_open_timeout: Some(Duration::from_secs(1)),
            health: Some(HealthCheck {
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 1,
            }),
        }
    }
}

/// What a [`TunnelRig`] is made of.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// Prefix of the rig's temp dir.
    pub name: &'static str,
    /// Where `pi`'s signer runs.
    pub pi: PiKind,
    /// The keys of `pi` and of `backup`, as seeds.
    pub seeds: Vec<[u8; 32]>,
    /// The watermark store.
    pub store: Store,
    /// The fault proxy in front of the SSH port, connecting from each client's own address, so
    /// `/status` peers name a client's uplink.
    pub proxy: bool,
    /// The gateway's timing.
    pub timing: GatewayTiming,
    /// The protocol `pi`'s signer speaks (the gateway and `signer-tunnel` are configured to
    /// match); `backup` always speaks HTTP.
    pub pi_protocol: Protocol,
}

impl RigOptions {
    /// `pi` in process with key seed 11, file store, no proxy, [`GatewayTiming::fast`].
    pub fn new(name: &'static str) -> RigOptions {
        RigOptions {
            name,
            pi: PiKind::InProcess,
            seeds: vec![seed(11)],
            store: Store::File,
            proxy: false,
            timing: GatewayTiming::fast(),
            pi_protocol: Protocol::Http,
        }
    }

    /// The gateway's config: SSH on `ssh_port` (0: any) with its host key in the gateway's
    /// dir, `pi` behind a tunnel authenticated by `pi_key`, then `backup` over TCP.
    pub fn gateway_yaml(&self, ssh_port: u16, pi_key: &str, backup: SocketAddr) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let t = &self.timing;
        let store = match self.store {
            Store::File => r#"{backend: file, dir: "{dir}/watermarks", create_if_missing: true}"#,
            Store::Memory => "{backend: memory}",
        };
        let mut y = format!(
            "api: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nwatermark: {store}\n\
             ssh:\n  listen: 127.0.0.1:{ssh_port}\n  host_key: \"{{dir}}/ssh_host_ed25519_key\"\n"
        );
        // Writing to a String cannot fail.
        if let Some((interval, max)) = t.keepalive {
            let _ = write!(y, "  keepalive_interval: {}\n  keepalive_max: {max}\n", ms(interval));
        }
        for (name, value) in [
            ("tcp_user_timeout", t.tcp_user_timeout),
            ("auth_timeout", t.auth_timeout),
            ("channel_open_timeout", t.channel_open_timeout),
        ] {
            if let Some(v) = value {
                let _ = writeln!(y, "  {name}: {}", ms(v));
            }
        }
        let _ = write!(y, "signers:\n  - name: pi\n    tunnel: {{keys: [\"{pi_key}\"]}}\n");
        if self.pi_protocol == Protocol::Socket {
            y.push_str("    protocol: socket\n");
        }
        let _ = writeln!(y, "  - name: backup\n    address: {backup}");
        if let Some(d) = t.request_timeout {
            let _ = writeln!(y, "request_timeout: {}", ms(d));
        }
        if let Some(h) = t.health {
            let _ = writeln!(
                y,
                "health_check: {{interval: {}, timeout: {}, rise: {}, fall: {}}}",
                ms(h.interval),
                ms(h.timeout),
                h.rise,
                h.fall
            );
        }
        y.push_str("log_format: text\n");
        y
    }
}

/// `pi`'s signer, wherever it runs.
pub enum PiSigner {
    /// In this process.
    InProcess(TestSignerHandle),
    /// A `test-signer` process (boxed: it is the larger by far).
    Process(Box<TestSignerProcess>),
}

impl PiSigner {
    /// Address it listens on (kept across [`PiSigner::restart`]).
    pub fn addr(&self) -> SocketAddr {
        match self {
            PiSigner::InProcess(s) => s.addr(),
            PiSigner::Process(p) => p.addr(),
        }
    }

    /// Its counters (of the current run, for a process).
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        match self {
            PiSigner::InProcess(s) => Ok(s.stats()),
            PiSigner::Process(p) => p.stats().await,
        }
    }

    /// The process's id, if it is a running process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            PiSigner::InProcess(_) => None,
            PiSigner::Process(p) => p.pid(),
        }
    }

    fn process(&mut self) -> anyhow::Result<&mut TestSignerProcess> {
        match self {
            PiSigner::Process(p) => Ok(p),
            PiSigner::InProcess(_) => anyhow::bail!("pi's signer runs in process: use PiKind::Process to kill it"),
        }
    }

    /// SIGKILL the process: connections reset, port closed.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process()?.kill();
        Ok(())
    }

    /// Start the process again, on the same address with the same keys, in `mode`.
    pub async fn restart(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.process()?.restart(mode).await
    }
}

/// A gateway, `pi` behind a tunnel, `backup` over TCP and what connects them; see the module doc.
pub struct TunnelRig {
    // Fields drop in declaration order: the client, then the proxy and the gateway, then the
    // signers, and the dir last.
    /// The `signer-tunnel` client, once started.
    pub tunnel: Option<TunnelClient>,
    proxy: Option<FaultProxy>,
    /// The gateway; restart it with [`TunnelRig::restart_gateway`] to keep its SSH port.
    pub gw: Gateway,
    /// `pi`'s signer, behind the tunnel.
    pub pi: PiSigner,
    /// The TCP signer, second in priority, with the same keys.
    pub backup: TestSignerHandle,
    /// The gateway's SSH listener (kept across restarts) and host key fingerprint.
    pub ssh: SocketAddr,
    /// See `ssh`.
    pub host_key: String,
    /// The key listed for `pi` (made by ssh-keygen).
    pub key: SshKey,
    /// The first key's hash: what [`TunnelRig::sign`] signs with.
    pub pkh: Pkh,
    /// The client of the gateway's API.
    pub http: Client,
    level: AtomicI32,
    options: RigOptions,
    dir: TempDir,
}

impl TunnelRig {
    /// Signers, gateway (backup up) and proxy; no tunnel client yet.
    pub async fn start(options: RigOptions) -> anyhow::Result<TunnelRig> {
        let dir = tempfile::Builder::new().prefix(options.name).tempdir()?;
        let key = SshKey::generate(dir.path(), "pi_ed25519")?;
        let pi = match options.pi {
            PiKind::InProcess => PiSigner::InProcess(
                TestSigner::spawn(TestSignerOptions {
                    protocol: options.pi_protocol,
                    ..signer_options(&options)
                })
                .await?,
            ),
            PiKind::Process => {
                let keys: Vec<TestKey> = options.seeds.iter().map(|s| TestKey::from_seed(*s)).collect();
                let any = SocketAddr::from(([127, 0, 0, 1], 0));
                PiSigner::Process(Box::new(
                    TestSignerProcess::start_protocol(options.pi_protocol, any, &keys, Mode::Ok).await?,
                ))
            }
        };
        let backup = TestSigner::spawn(signer_options(&options))
            .await
            .context("starting the backup signer")?;
        let gw = Gateway::start_in(dir.path(), &options.gateway_yaml(0, &key.public, backup.addr())).await?;
        let (ssh, host_key) = gw.ssh_endpoint()?;
        gw.wait_signers_up(&["backup"], HEALTH_SETTLE).await?;
        let proxy = match options.proxy {
            true => Some(
                FaultProxy::start_with(ProxyOptions {
                    keep_client_ip: true,
                    ..ProxyOptions::new(ssh)
                })
                .await
                .context("starting the fault proxy")?,
            ),
            false => None,
        };
        let pkh = *backup.pkhs().first().context("the rig needs a key")?;
        Ok(TunnelRig {
            tunnel: None,
            proxy,
            gw,
            pi,
            backup,
            ssh,
            host_key,
            key,
            pkh,
            http: Client::new().with_timeout(Duration::from_secs(10)),
            level: AtomicI32::new(0),
            options,
            dir,
        })
    }

    /// The rig's dir (the gateway's and the client's files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the rig was made of.
    pub fn options(&self) -> &RigOptions {
        &self.options
    }

    /// The fault proxy in front of the SSH port.
    pub fn proxy(&self) -> anyhow::Result<&FaultProxy> {
        self.proxy.as_ref().context("the rig has no proxy (RigOptions::proxy)")
    }

    /// The gateway's config on its SSH port with `pi_key` listed for `pi`.
    pub fn gateway_yaml(&self, pi_key: &str) -> String {
        self.options.gateway_yaml(self.ssh.port(), pi_key, self.backup.addr())
    }

    /// Kill the gateway (if running) and start it again in its dir, on the same SSH port with
    /// the same host key.
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let yaml = self.gateway_yaml(&self.key.public);
        self.gw.restart_with(&yaml).await
    }

    /// Where clients connect: the proxy if any, else the SSH listener.
    pub fn client_target(&self) -> SocketAddr {
        self.proxy.as_ref().map_or(self.ssh, FaultProxy::addr)
    }

    /// A test-fast `signer-tunnel` config ([`TunnelConfig::new`]) to [`TunnelRig::client_target`],
    /// pinning the real host key, with the listed key.
    pub fn tunnel_config(&self) -> TunnelConfig {
        TunnelConfig {
            socket_signer: self.options.pi_protocol == Protocol::Socket,
            ..TunnelConfig::new(self.client_target(), &self.host_key, &self.key.private, self.pi.addr())
        }
    }

    /// As [`TunnelRig::tunnel_config`] with what a Pi runs ([`TunnelConfig::production`]).
    pub fn production_tunnel_config(&self) -> TunnelConfig {
        TunnelConfig {
            socket_signer: self.options.pi_protocol == Protocol::Socket,
            ..TunnelConfig::production(self.client_target(), &self.host_key, &self.key.private, self.pi.addr())
        }
    }

    /// Start `signer-tunnel run` with `config` in the rig's dir (the previous client, if any,
    /// is killed first).
    pub fn start_tunnel(&mut self, config: &TunnelConfig) -> anyhow::Result<()> {
        self.tunnel = None;
        self.tunnel = Some(TunnelClient::start(self.dir.path(), config)?);
        Ok(())
    }

    /// The `signer-tunnel` client.
    pub fn tunnel(&self) -> anyhow::Result<&TunnelClient> {
        self.tunnel.as_ref().context("no tunnel client started")
    }

    /// The `signer-tunnel` client, to stop it.
    pub fn tunnel_mut(&mut self) -> anyhow::Result<&mut TunnelClient> {
        self.tunnel.as_mut().context("no tunnel client started")
    }

    /// The last lines of the client's log, for error messages (empty without a client).
    pub fn tunnel_log_tail(&self, n: usize) -> String {
        self.tunnel.as_ref().map(|t| t.log_tail(n)).unwrap_or_default()
    }

    /// Start the client with `config`, wait for the tunnel (from a peer starting with
    /// `peer_prefix`) and a first signature by pi; returns the tunnel's `/status` entry.
    pub async fn tunnel_up(&mut self, config: &TunnelConfig, peer_prefix: &str) -> anyhow::Result<Value> {
        self.start_tunnel(config)?;
        let t = self.wait_tunnel(peer_prefix, CONNECT_SETTLE).await?;
        self.until_pi_serves(HEALTH_SETTLE).await?;
        Ok(t)
    }

    /// `ssh -N -R 0:<pi's signer> pi@<server>` with the listed key; `extra` as in
    /// [`SshClient::spawn`].
    pub fn openssh(&self, server: SocketAddr, extra: &[&str]) -> anyhow::Result<SshClient> {
        SshClient::reverse_tunnel(&self.key, server, "pi", self.pi.addr(), extra)
    }

    /// An OpenSSH tunnel straight to the gateway, up and serving: the client and the peer the
    /// gateway shows for it.
    pub async fn openssh_up(&self) -> anyhow::Result<(SshClient, String)> {
        let mut ssh = self.openssh(self.ssh, &[])?;
        ssh.wait_stderr(ALLOCATED, CONNECT_SETTLE).await?;
        let t = self.wait_tunnel("", CONNECT_SETTLE).await?;
        let peer = t["peer"].as_str().context("no peer")?.to_string();
        Ok((ssh, peer))
    }

    /// pi's entry in `/status` `ssh.tunnels`.
    pub async fn tunnel_status(&self) -> anyhow::Result<Value> {
        let status = self.gw.status().await?;
        status["ssh"]["tunnels"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["signer"] == "pi"))
            .cloned()
            .with_context(|| format!("no ssh.tunnels entry for pi in /status: {status}"))
    }

    /// Wait until pi's tunnel is connected from a peer starting with `peer_prefix` and the
    /// pool has pi up; returns the tunnel's status entry.
    pub async fn wait_tunnel(&self, peer_prefix: &str, within: Duration) -> anyhow::Result<Value> {
        let what = format!("pi's tunnel connected from {peer_prefix}*");
        let t = eventually(within, &what, || async {
            let t = self.tunnel_status().await?;
            anyhow::ensure!(t["connected"] == true, "not connected: {t}");
            let peer = t["peer"].as_str().context("no peer")?;
            anyhow::ensure!(peer.starts_with(peer_prefix), "peer {peer}: {t}");
            Ok(t)
        })
        .await?;
        self.gw.wait_signers_up(&["pi"], HEALTH_SETTLE).await?;
        Ok(t)
    }

    /// The value of one series in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, label: &str, value: &str) -> anyhow::Result<f64> {
        self.gw.metric(name, label, value).await
    }

    /// The last level signed.
    pub fn level(&self) -> i32 {
        self.level.load(Ordering::SeqCst)
    }

    /// Sign a fresh attestation (the next level) and tell who signed it.
    pub async fn sign(&self) -> anyhow::Result<Signed> {
        let level = self.level.fetch_add(1, Ordering::SeqCst) + 1;
        let payload = attestation(TEST_CHAIN, level, 0, 1);
        let started = Instant::now();
        let (status, body) = self.http.sign(self.gw.api, "", self.pkh, &payload).await?;
        let took = started.elapsed();
        let want = Some(hex::encode(&payload));
        // The backup first: in process, it always answers; pi's process may be down.
        let by = if self.backup.stats().last_sign_hex == want {
            Served::Backup
        } else if self.pi.stats().await.is_ok_and(|s| s.last_sign_hex == want) {
            Served::Pi
        } else {
            Served::Neither
        };
        Ok(Signed { status, body, took, by })
    }

    /// A sign answered 200 with a signature, by `by`.
    pub async fn sign_ok_by(&self, by: Served) -> anyhow::Result<Signed> {
        let s = self.sign().await?;
        anyhow::ensure!(s.ok(), "sign: {} {}", s.status, s.body);
        anyhow::ensure!(s.by == by, "served by {:?}, expected {by:?}: {s:?}", s.by);
        Ok(s)
    }

    /// [`TunnelRig::sign`], recorded in `traffic` at its time since `since`; who served it
    /// with a signature ([`Served::Neither`] for anything else).
    pub async fn sign_into(&self, traffic: &mut Traffic, since: Instant) -> Served {
        let r = self.sign().await;
        let by = match &r {
            Ok(s) if s.ok() => s.by,
            _ => Served::Neither,
        };
        traffic.record(since.elapsed(), r);
        by
    }

    /// A request every [`REQUEST_EVERY`] until one is served by pi; fails after `within`.
    /// Returns the time taken and the traffic.
    pub async fn until_pi_serves(&self, within: Duration) -> anyhow::Result<(Duration, Traffic)> {
        let start = Instant::now();
        let mut traffic = Traffic::default();
        let mut tick = ticker(REQUEST_EVERY);
        loop {
            tick.tick().await;
            if self.sign_into(&mut traffic, start).await == Served::Pi {
                return Ok((start.elapsed(), traffic));
            }
            anyhow::ensure!(
                start.elapsed() < within,
                "pi did not serve within {within:?} ({}); tunnel: {}{}",
                traffic.summary(),
                self.tunnel_status().await.unwrap_or_default(),
                self.tunnel_log_tail(30)
            );
        }
    }

    /// Panic with `result`'s error (the gateway's and the client's log tails are printed as
    /// the rig drops).
    pub fn check(self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            panic!("{e:#}\n(rig dir {})", self.dir.path().display());
        }
    }
}

fn signer_options(options: &RigOptions) -> TestSignerOptions {
    TestSignerOptions {
        seeds: options.seeds.clone(),
        ..TestSignerOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_yaml_sets_what_the_timing_sets() {
        let backup: SocketAddr = "127.0.0.1:6732".parse().unwrap();
        let fast = RigOptions::new("x").gateway_yaml(2222, "ssh-ed25519 AAAA pi", backup);
        for line in [
            "  listen: 127.0.0.1:2222\n",
            "  keepalive_interval: 1000ms\n  keepalive_max: 3\n",
            "  auth_timeout: 10000ms\n",
            "    tunnel: {keys: [\"ssh-ed25519 AAAA pi\"]}\n  - name: backup\n    address: 127.0.0.1:6732\n",
            "request_timeout: 2000ms\n",
            "health_check: {interval: 200ms, timeout: 300ms, rise: 2, fall: 1}\n",
            "dir: \"{dir}/watermarks\"",
        ] {
            assert!(fast.contains(line), "{line:?} not in\n{fast}");
        }
        let defaults = RigOptions {
            timing: GatewayTiming::default(),
            store: Store::Memory,
            ..RigOptions::new("x")
        }
        .gateway_yaml(0, "k", backup);
        for absent in ["keepalive", "timeout", "health_check", "dir:"] {
            assert!(!defaults.contains(absent), "{absent:?} in\n{defaults}");
        }
        assert!(defaults.contains("watermark: {backend: memory}\n"), "{defaults}");
    }
}
