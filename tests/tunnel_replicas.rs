//! `signer-tunnel` with several gateway replicas (`replicas:` in its config): one client keeps a
//! session to each of two gateway processes at once, each gateway listing the Pi's key for its
//! own `pi` tunnel signer. The link to one replica goes silently dead (the fault proxy's
//! blackhole: frozen, not reset); the other keeps serving through its own session without a
//! single failed request and without the session being touched; the link returns the way a NAT
//! recovers (flows begun during the outage stay frozen) and the first replica is served again.
//!
//!
//! With the gateways sharing their marks in etcd, a gateway is killed (SIGKILL): the baker's
//! requests go to the other replica and succeed at once, none failed, since the Pi's session to
//! it is already up; the marks the dead one recorded still hold.
//!
//! Needs the `signer-gateway` and `signer-tunnel` binaries (`cargo build --workspace --bins`),
//! and `etcd` (Debian `etcd-server`) for the last test.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use signer_gateway::tezos::Pkh;
use tempfile::TempDir;
use testkit::etcd::{etcd_bin, EtcdCluster};
use testkit::fault_proxy::{FaultProxy, ProxyMode};
use testkit::harness::{attestation, eventually, skip_unless_ci, Client, Gateway, TEST_CHAIN};
use testkit::test_signer::{seed, TestSigner, TestSignerHandle, TestSignerOptions};
use testkit::traffic::{Served, Signed, Traffic};
use testkit::tunnel_harness::{keygen, TunnelClient, TunnelConfig, TunnelReplica};

/// Gateway `request_timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for the client to connect and a gateway's pool to see pi up, from a standing start
/// or after a link returns (backoff max 2 s, connect_timeout 3 s, health checks, and slack
/// for a loaded 2-core machine).
const SETTLE: Duration = Duration::from_secs(20);
/// Pause between two requests of a request stream.
const REQUEST_EVERY: Duration = Duration::from_millis(100);
/// How long the blackhole lasts after the client saw the first replica's session end: the
/// client keeps retrying that replica meanwhile, and the other must not notice.
const OUTAGE_AFTER_END: Duration = Duration::from_secs(3);

/// Each gateway's own file store.
const FILE_STORE: &str = r#"{backend: file, dir: "{dir}/watermarks", create_if_missing: true}"#;

/// A gateway whose only signer is `pi`, behind the tunnel, with SSH on a port of its own, and
/// `watermark` as its store.
fn gateway_config(pi_key: &str, watermark: &str) -> String {
    format!(
        r#"api: {{listen: 127.0.0.1:0}}
admin: {{listen: 127.0.0.1:0}}
watermark: {watermark}
ssh:
  listen: 127.0.0.1:0
  host_key: "{{dir}}/ssh_host_ed25519_key"
  keepalive_interval: 1s
  keepalive_max: 3
  tcp_user_timeout: 5s
  auth_timeout: 10s
  channel_open_timeout: 1s
signers:
  - name: pi
    tunnel: {{keys: ["{pi_key}"]}}
request_timeout: {}ms
health_check: {{interval: 200ms, timeout: 300ms, rise: 2, fall: 1}}
log_format: text
"#,
        REQUEST_TIMEOUT.as_millis(),
    )
}

struct Rig {
    // Fields drop in declaration order: the client, then the proxy and the gateways, then the
    // signer, and the dir last.
    tunnel: Option<TunnelClient>,
    /// In front of gateway A's SSH port.
    proxy: FaultProxy,
    gw_a: Gateway,
    gw_b: Gateway,
    pi: TestSignerHandle,
    config: TunnelConfig,
    http: Client,
    pkh: Pkh,
    level: i32,
    /// The etcd both gateways share, when they do.
    etcd: Option<(EtcdCluster, TempDir)>,
    dir: TempDir,
}

impl Rig {
    /// The signer, two gateways listing one key, each with its own file store, a proxy in
    /// front of A; no client yet.
    async fn start() -> anyhow::Result<Rig> {
        Rig::start_with(FILE_STORE, None).await
    }

    /// The same, the gateways sharing their marks in a one-member etcd.
    async fn start_on_etcd() -> anyhow::Result<Rig> {
        let etcd_dir = tempfile::Builder::new().prefix("tunnel-replicas-etcd-").tempdir()?;
        let cluster = EtcdCluster::start(etcd_dir.path(), 1).await?;
        let store = format!(
            r#"{{backend: etcd, create_if_missing: true, etcd: {{endpoints: ["{}"], request_timeout: 2s}}}}"#,
            cluster.endpoints().join(r#"", ""#)
        );
        Rig::start_with(&store, Some((cluster, etcd_dir))).await
    }

    async fn start_with(watermark: &str, etcd: Option<(EtcdCluster, TempDir)>) -> anyhow::Result<Rig> {
        let dir = tempfile::Builder::new().prefix("tunnel-replicas-").tempdir()?;
        let (identity, public) = keygen(dir.path(), "pi@replicas").await?;
        let pi = TestSigner::spawn(TestSignerOptions {
            seeds: vec![seed(12)],
            ..TestSignerOptions::default()
        })
        .await?;
        let gw_a = Gateway::start(&gateway_config(&public, watermark)).await?;
        let gw_b = Gateway::start(&gateway_config(&public, watermark)).await?;
        let (ssh_a, key_a) = gw_a.ssh_endpoint()?;
        let (ssh_b, key_b) = gw_b.ssh_endpoint()?;
        let proxy = FaultProxy::start(ssh_a).await?;
        let mut config = TunnelConfig::new(proxy.addr(), &key_a, &identity, pi.addr());
        // Each replica its own address and its own host key.
        config.replicas = vec![
            TunnelReplica::new("gw-a", proxy.addr(), &key_a),
            TunnelReplica::new("gw-b", ssh_b, &key_b),
        ];
        let pkh = pi.pkhs()[0];
        Ok(Rig {
            tunnel: None,
            proxy,
            gw_a,
            gw_b,
            pi,
            config,
            http: Client::new().with_timeout(Duration::from_secs(10)),
            pkh,
            level: 0,
            etcd,
            dir,
        })
    }

    fn tunnel(&self) -> anyhow::Result<&TunnelClient> {
        self.tunnel.as_ref().context("no tunnel client started")
    }

    /// pi's entry in a gateway's `/status` `ssh.tunnels`.
    async fn tunnel_status(gw: &Gateway) -> anyhow::Result<Value> {
        let status = gw.status().await?;
        status["ssh"]["tunnels"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["signer"] == "pi"))
            .cloned()
            .with_context(|| format!("no ssh.tunnels entry for pi in /status: {status}"))
    }

    /// Wait until `gw` has pi's tunnel connected and pi up.
    async fn wait_served(gw: &Gateway, what: &str, within: Duration) -> anyhow::Result<()> {
        eventually(within, &format!("pi's tunnel connected to {what}"), || async {
            let t = Rig::tunnel_status(gw).await?;
            anyhow::ensure!(t["connected"] == true, "not connected: {t}");
            Ok(())
        })
        .await?;
        gw.wait_signers_up(&["pi"], within).await
    }

    /// Sign a fresh attestation through `gw` and tell who served it.
    async fn sign(&mut self, b: bool) -> anyhow::Result<Signed> {
        self.level += 1;
        let payload = attestation(TEST_CHAIN, self.level, 0, 1);
        let gw = if b { &self.gw_b } else { &self.gw_a };
        let started = Instant::now();
        let (status, body) = self.http.sign(gw.api, "", self.pkh, &payload).await?;
        let took = started.elapsed();
        let by = if self.pi.stats().last_sign_hex == Some(hex::encode(&payload)) {
            Served::Pi
        } else {
            Served::Neither
        };
        Ok(Signed { status, body, took, by })
    }

    /// Panic with `result`'s error and the processes' logs.
    fn check(&self, result: anyhow::Result<()>) {
        if let Err(e) = result {
            let tail = |log: String| {
                log.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{e:#}\n--- gateway A ---\n{}\n--- gateway B ---\n{}{}",
                tail(self.gw_a.log()),
                tail(self.gw_b.log()),
                self.tunnel.as_ref().map(|t| t.log_tail(40)).unwrap_or_default()
            );
        }
    }
}

testkit::rig_test!(Rig;
    /// Both tunnels up; A's link blackholed: B keeps serving (0 failed requests, its session
    /// untouched), A is served again after the link returns.
    one_replica_dying_leaves_the_other_serving,
    one_replica_dying_leaves_the_other_serving_body
);

async fn one_replica_dying_leaves_the_other_serving_body(rig: &mut Rig) -> anyhow::Result<()> {
    rig.tunnel = Some(TunnelClient::start(rig.dir.path(), &rig.config)?);
    Rig::wait_served(&rig.gw_a, "gateway A", SETTLE).await?;
    Rig::wait_served(&rig.gw_b, "gateway B", SETTLE).await?;
    for b in [false, true] {
        let s = rig.sign(b).await?;
        anyhow::ensure!(
            s.ok() && s.by == Served::Pi,
            "through {}: {s:?}",
            if b { "B" } else { "A" }
        );
    }
    let b_before = Rig::tunnel_status(&rig.gw_b).await?;

    // A's link goes silent. Requests keep going to B the whole time.
    let cut = Instant::now();
    rig.proxy.set_mode(ProxyMode::Blackhole);
    let mut traffic = Traffic::default();
    let mut a_ended: Option<Instant> = None;
    loop {
        let r = rig.sign(true).await;
        traffic.record(cut.elapsed(), r);
        if a_ended.is_none() {
            a_ended = rig
                .tunnel()?
                .log_lines("session ended")
                .into_iter()
                .find(|(at, line)| *at >= cut && line.contains("gw-a"))
                .map(|(at, _)| at);
            anyhow::ensure!(
                cut.elapsed() < SETTLE,
                "the client did not notice A's dead link within {SETTLE:?}"
            );
        } else if a_ended.is_some_and(|at| at.elapsed() >= OUTAGE_AFTER_END) {
            break;
        }
        tokio::time::sleep(REQUEST_EVERY).await;
    }
    let noticed = a_ended.map(|at| at - cut).unwrap_or_default();

    // The link returns as a NAT's does: new flows pass, those begun meanwhile stay frozen.
    rig.proxy.restore_leaving_frozen();
    let healed = Instant::now();
    let recovery = loop {
        let r = rig.sign(true).await;
        traffic.record(cut.elapsed(), r);
        let a = Rig::tunnel_status(&rig.gw_a).await?;
        if a["connected"] == true && rig.gw_a.signer_state("pi").await? == "up" {
            break healed.elapsed();
        }
        anyhow::ensure!(
            healed.elapsed() < SETTLE,
            "A not served within {SETTLE:?} of the link's return: {a}"
        );
        tokio::time::sleep(REQUEST_EVERY).await;
    };
    traffic.ensure_all_ok("B while A's link was dead and coming back")?;
    anyhow::ensure!(
        traffic.count(Served::Pi) == traffic.len(),
        "B's answers not all from pi: {}",
        traffic.summary()
    );
    let s = rig.sign(false).await?;
    anyhow::ensure!(s.ok() && s.by == Served::Pi, "through A after the return: {s:?}");

    // B's session was never touched: same peer, no replacement, one session accepted.
    let b_after = Rig::tunnel_status(&rig.gw_b).await?;
    anyhow::ensure!(
        b_after["connected"] == true
            && b_after["replacements"] == b_before["replacements"]
            && b_after["peer"] == b_before["peer"],
        "B's session changed: before {b_before}, after {b_after}"
    );
    let accepted = rig
        .gw_b
        .metric("signer_gateway_ssh_sessions_total", "result", "accepted")
        .await?;
    anyhow::ensure!(accepted == 1.0, "B accepted {accepted} sessions, expected 1");
    let b_ended: Vec<String> = rig
        .tunnel()?
        .log_lines("session ended")
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains("gw-b"))
        .collect();
    anyhow::ensure!(b_ended.is_empty(), "B's session ended: {b_ended:?}");
    eprintln!(
        "A's link dead: the client noticed in {noticed:?}; B: {} (slowest is the worst case); \
         A served again {recovery:?} after the link returned",
        traffic.summary()
    );
    Ok(())
}

/// Gateways sharing their marks in etcd; the Pi has a session to each. Gateway A is killed
/// (SIGKILL): the baker's requests, sent to A while it answers and to B once A refuses
/// connections (what a Service does once A's endpoint is gone), all succeed, the first one at
/// once through B's session that was already up; A's marks hold on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_costs_the_baker_nothing() {
    if let Err(e) = etcd_bin() {
        skip_unless_ci("killed_replica_costs_the_baker_nothing", &e.to_string());
        return;
    }
    let mut rig = Rig::start_on_etcd().await.expect("starting the rig");
    let result = killed_replica_costs_the_baker_nothing_body(&mut rig).await;
    rig.check(result);
}

async fn killed_replica_costs_the_baker_nothing_body(rig: &mut Rig) -> anyhow::Result<()> {
    anyhow::ensure!(rig.etcd.is_some(), "this test needs the etcd rig");
    rig.tunnel = Some(TunnelClient::start(rig.dir.path(), &rig.config)?);
    Rig::wait_served(&rig.gw_a, "gateway A", SETTLE).await?;
    Rig::wait_served(&rig.gw_b, "gateway B", SETTLE).await?;
    let b_before = Rig::tunnel_status(&rig.gw_b).await?;
    // The baker signs through A.
    let mut released = Vec::new();
    for _ in 0..10 {
        let s = rig.sign(false).await?;
        anyhow::ensure!(s.ok() && s.by == Served::Pi, "through A: {s:?}");
        released.push(rig.level);
        tokio::time::sleep(REQUEST_EVERY).await;
    }

    rig.gw_a.kill();
    let killed = Instant::now();
    let mut traffic = Traffic::default();
    let mut first = None;
    for _ in 0..20 {
        // A Service's view: A while it takes connections, B once it refuses them.
        rig.level += 1;
        let payload = attestation(TEST_CHAIN, rig.level, 0, 1);
        let started = Instant::now();
        let answer = match rig.http.sign(rig.gw_a.api, "", rig.pkh, &payload).await {
            Ok(answer) => Ok(answer),
            Err(_) => rig.http.sign(rig.gw_b.api, "", rig.pkh, &payload).await,
        };
        let r = answer.map(|(status, body)| Signed {
            status,
            body,
            took: started.elapsed(),
            by: if rig.pi.stats().last_sign_hex == Some(hex::encode(&payload)) {
                Served::Pi
            } else {
                Served::Neither
            },
        });
        if first.is_none() && r.as_ref().is_ok_and(Signed::ok) {
            first = Some(killed.elapsed());
        }
        traffic.record(killed.elapsed(), r);
        tokio::time::sleep(REQUEST_EVERY).await;
    }
    traffic.ensure_all_ok("the baker's requests after A was killed")?;
    let first = first.context("no request succeeded")?;
    anyhow::ensure!(
        first < Duration::from_secs(1),
        "the first request after the kill took {first:?}: B's session was not ready"
    );
    // B's session is the one that was up before the kill.
    let b_after = Rig::tunnel_status(&rig.gw_b).await?;
    anyhow::ensure!(
        b_after["peer"] == b_before["peer"] && b_after["replacements"] == b_before["replacements"],
        "B's session changed: before {b_before}, after {b_after}"
    );
    // What A released holds on B: other bytes at A's last level are refused.
    let last = *released.last().context("released")?;
    let (status, body) = rig
        .http
        .sign(rig.gw_b.api, "", rig.pkh, &attestation(TEST_CHAIN, last, 0, 9))
        .await?;
    anyhow::ensure!(
        status == http::StatusCode::CONFLICT,
        "A's mark not held on B: {status} {body}"
    );
    eprintln!(
        "A killed: first signature through B {first:?} after; {}",
        traffic.summary()
    );
    Ok(())
}
