//! Parts 2 and 3: failover and recovery. pi behind a fresh `signer-tunnel` whose SSH
//! connection goes through the fault proxy, a TCP backup second; one request every 100 ms; the
//! proxy blackholes pi's link, then restores it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testkit::fault_proxy::ProxyMode;
use testkit::harness::Client;
use testkit::traffic::{Served, Traffic};
use testkit::tunnel_rig::{ticker, GatewayTiming, PiKind, RigOptions, TunnelRig, REQUEST_EVERY};

use crate::common::report::{ms, secs, Targets};
use crate::common::stats::spread;
use crate::options::Opts;
use crate::report::{settings, RunsTable};
use crate::SETTLE;

/// Issue 3: blackhole → first answer by the backup.
const FAILOVER_TARGET: Duration = Duration::from_secs(2);
/// Issue 3: new session up → pi serving.
const AFTER_SESSION_TARGET: Duration = Duration::from_secs(1);
/// Issue 4: link restored → pi serving.
const AFTER_RESTORE_TARGET: Duration = Duration::from_secs(2);
/// Requests served by pi before a fault: their p50 is the "normal" latency.
const BASELINE_REQUESTS: usize = 10;

/// A rig for fault runs: pi a process behind the proxy, with the gateway's `timing`.
pub async fn rig(name: &'static str, timing: GatewayTiming) -> anyhow::Result<TunnelRig> {
    let options = RigOptions {
        pi: PiKind::Process,
        proxy: true,
        timing,
        ..RigOptions::new(name)
    };
    TunnelRig::start(options).await
}

/// [`BASELINE_REQUESTS`] requests that pi must serve, once pi's tunnel is up: their p50.
pub async fn baseline(rig: &TunnelRig) -> anyhow::Result<Duration> {
    rig.until_pi_serves(SETTLE).await?;
    let mut tick = ticker(REQUEST_EVERY);
    let mut took = Vec::with_capacity(BASELINE_REQUESTS);
    for _ in 0..BASELINE_REQUESTS {
        tick.tick().await;
        took.push(rig.sign_ok_by(Served::Pi).await.context("before the fault")?.took);
    }
    Ok(spread(&took).map_or(Duration::ZERO, |(_, p50, _)| p50))
}

/// When a run restores the link.
#[derive(Debug, Clone, Copy)]
enum Restore {
    /// After this long.
    After(Duration),
    /// Right after the client logged its n-th failed reconnect ("cannot reach the gateway"):
    /// it then sleeps its backoff, with no attempt pending. A blackhole alone never gets it
    /// there (it keeps overlapping attempts pending), so once it noticed the dead link, the
    /// link refuses connections (resets) until then.
    InBackoff(usize),
}

/// What one run measured: times from the blackhole (`t0`), then from the restore (`t1`).
struct Run {
    /// Blackhole → first answer by the backup, and how long that request took.
    failover: Option<(Duration, Duration)>,
    traffic: Traffic,
    client_noticed: Option<Duration>,
    gateway_dropped: Option<Duration>,
    restore_to_session: Option<Duration>,
    /// Restore → the gateway's pool has pi up (`/status` polled every 10 ms).
    restore_to_pool_up: Option<Duration>,
    restore_to_pi: Duration,
    session_to_pi: Option<Duration>,
}

async fn run_once(rig: &mut TunnelRig, restore: Restore) -> anyhow::Result<Run> {
    let config = rig.production_tunnel_config();
    rig.start_tunnel(&config)?;
    let rig = &*rig;
    rig.wait_tunnel("127.0.0.1:", SETTLE).await?;
    let normal_p50 = baseline(rig).await?;

    let (proxy, client) = (rig.proxy()?, rig.tunnel()?);
    let accepted_before = proxy.accepted();
    proxy.set_mode(ProxyMode::Blackhole);
    let t0 = Instant::now();
    let since_t0 = |needle: &str| client.log_lines(needle).into_iter().filter(move |(at, _)| *at >= t0);
    let mut traffic = Traffic::default();
    let mut tick = ticker(REQUEST_EVERY);
    let (mut failover, mut gateway_dropped, mut backoff) = (None, None, String::new());
    loop {
        match restore {
            Restore::After(d) if t0.elapsed() >= d => break,
            Restore::After(_) => {}
            Restore::InBackoff(n) => {
                if proxy.mode() == ProxyMode::Blackhole && since_t0("session ended").next().is_some() {
                    proxy.set_mode(ProxyMode::Reset);
                }
                if let Some((_, line)) = since_t0("cannot reach the gateway").nth(n - 1) {
                    let drawn = line.split_whitespace().find_map(|w| w.strip_prefix("retry_in="));
                    backoff = format!(" (restored in backoff: drawn {})", drawn.unwrap_or("?"));
                    break;
                }
                let bound = SETTLE + Duration::from_secs(15) * n as u32;
                let tail = client.log_tail(25);
                anyhow::ensure!(
                    t0.elapsed() < bound,
                    "no {n} failed reconnect(s) within {bound:?}{tail}"
                );
            }
        }
        tick.tick().await;
        let r = rig.sign().await;
        let at = t0.elapsed();
        if let Ok(s) = &r {
            if failover.is_none() && s.ok() && s.by == Served::Backup {
                failover = Some((at, s.took));
            }
        }
        traffic.record(at, r);
        if gateway_dropped.is_none() && rig.tunnel_status().await?["connected"] == false {
            gateway_dropped = Some(t0.elapsed());
        }
    }
    let client_noticed = since_t0("session ended").next().map(|(at, _)| at - t0);
    // Connections through the dead link, and whether one was pending (not failed) at the restore.
    let attempts = proxy.accepted() - accepted_before;
    let pending = attempts > since_t0("connection attempt failed").count() as u64;

    proxy.set_mode(ProxyMode::Pass);
    let t1 = Instant::now();
    let pool_up = watch_pi_up(rig.gw.admin);
    let pi_at = loop {
        tick.tick().await;
        if rig.sign_into(&mut traffic, t0).await == Served::Pi {
            break Instant::now();
        }
        let (t, tail) = (rig.tunnel_status().await.unwrap_or_default(), client.log_tail(25));
        anyhow::ensure!(
            t1.elapsed() < SETTLE,
            "pi not serving {SETTLE:?} after the restore; tunnel: {t}{tail}"
        );
    };
    let pool_up = pool_up.await.context("the /status poller panicked")?;
    let session_up = client
        .log_lines("session up")
        .into_iter()
        .map(|(at, _)| at)
        .find(|at| *at >= t1);
    let run = Run {
        failover,
        traffic,
        client_noticed,
        gateway_dropped,
        restore_to_session: session_up.map(|at| at - t1),
        restore_to_pool_up: pool_up.map(|at| at.saturating_duration_since(t1)),
        restore_to_pi: pi_at - t1,
        session_to_pi: session_up.map(|at| pi_at.saturating_duration_since(at)),
    };
    println!(
        "  outage {}{backoff}: normal p50 {} ms; {}; {attempts} connection attempt(s) through the dead link, {} \
         pending at the restore; restore -> pi serving {}",
        secs(t1 - t0),
        ms(normal_p50),
        run.traffic.summary(),
        if pending { "one" } else { "none" },
        secs(run.restore_to_pi)
    );
    Ok(run)
}

/// Poll `/status` every 10 ms until signer `pi` is `up`; when it was seen.
fn watch_pi_up(admin: SocketAddr) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let client = Client::new().with_timeout(Duration::from_secs(2));
        let url = format!("http://{admin}/status");
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if let Ok((_, v)) = client.get(&url).await {
                let signers = v["signers"].as_array().cloned().unwrap_or_default();
                if signers.iter().any(|s| s["name"] == "pi" && s["state"] == "up") {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    })
}

/// Run parts 2-3 with each setting and print them.
pub async fn run(opts: &Opts, targets: &mut Targets) -> anyhow::Result<()> {
    println!("\n## 2-3. Failover and recovery (one request every {REQUEST_EVERY:?})");
    let outage = Restore::After(opts.outage);
    let in_backoff = Restore::InBackoff(opts.backoff_failures);
    for (label, timing, restore, runs) in [
        ("production", GatewayTiming::production(), outage, opts.runs),
        (
            "production, restored in backoff",
            GatewayTiming::production(),
            in_backoff,
            1,
        ),
        ("example defaults", GatewayTiming::default(), outage, 1),
    ] {
        println!("\n### {label}: {runs} run(s), restore {restore:?}");
        let mut rig = rig("tunnel-bench-failover-", timing).await?;
        let mut results = Vec::new();
        for i in 1..=runs {
            let r = run_once(&mut rig, restore).await;
            results.push(r.with_context(|| format!("{label}, failover run {i}"))?);
        }
        println!("{}", settings(&rig, &rig.production_tunnel_config()));
        print(label, &results, targets);
    }
    Ok(())
}

fn print(label: &str, runs: &[Run], targets: &mut Targets) {
    let of = |f: fn(&Run) -> Option<Duration>| runs.iter().filter_map(f).collect::<Vec<_>>();
    let n = runs.len();
    let mut t = RunsTable::new(label);
    let what = "failover window: blackhole -> first answer by the backup";
    t.bounded(targets, what, &of(|r| r.failover.map(|f| f.0)), n, FAILOVER_TARGET);
    t.info("(the request that failed over took)", &of(|r| r.failover.map(|f| f.1)));
    let failed = runs.iter().map(|r| r.traffic.failures().len()).sum();
    t.zero(targets, "failed requests, outage and recovery", failed, n);
    t.info("slowest request", &of(|r| Some(r.traffic.slowest())));
    let what = "recovery: link restored -> pi serving";
    t.bounded(targets, what, &of(|r| Some(r.restore_to_pi)), n, AFTER_RESTORE_TARGET);
    let what = "recovery: session up -> pi serving";
    t.bounded(targets, what, &of(|r| r.session_to_pi), n, AFTER_SESSION_TARGET);
    t.info("(link restored -> session up)", &of(|r| r.restore_to_session));
    t.info(
        "(link restored -> gateway pool has pi up)",
        &of(|r| r.restore_to_pool_up),
    );
    t.info(
        "(client noticed the dead link: \"session ended\")",
        &of(|r| r.client_noticed),
    );
    t.info(
        "(gateway dropped the route: /status connected=false)",
        &of(|r| r.gateway_dropped),
    );
    t.print();
    for f in runs.iter().flat_map(|r| r.traffic.failures()).take(5) {
        println!("  failed: {f}");
    }
}
