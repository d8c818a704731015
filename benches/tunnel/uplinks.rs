//! Part 4: the uplink switch. The client has two uplinks (source addresses 127.0.0.2,
//! preferred, and 127.0.0.3), each its own link through the proxy's per-source mode; the
//! preferred one is blackholed, then restored.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testkit::fault_proxy::ProxyMode;
use testkit::traffic::{Served, Traffic};
use testkit::tunnel_rig::{ticker, GatewayTiming, TunnelRig, REQUEST_EVERY};

use crate::common::report::{ms, secs, Targets};
use crate::faults::{baseline, rig};
use crate::options::Opts;
use crate::report::{settings, RunsTable};
use crate::SETTLE;

/// Issue 4: slowest request around a switch − normal p50.
const EXTRA_LATENCY_TARGET: Duration = Duration::from_secs(2);
/// The client's `uplink_retry` (the example's is 10s): how soon it tries the preferred again.
const UPLINK_RETRY: Duration = Duration::from_secs(5);
const PREFERRED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// One switch: how long it took, the requests across it, and their slowest minus the
/// normal p50.
struct Switch {
    took: Duration,
    traffic: Traffic,
    extra: Duration,
}

fn on(t: &serde_json::Value, uplink: &str) -> bool {
    t["connected"] == true && t["peer"].as_str().is_some_and(|p| p.starts_with(uplink))
}

/// Away from the preferred uplink and back: the two switches, and whether the route went
/// down during the switch back (`last_disconnect` changed).
async fn run_once(rig: &mut TunnelRig) -> anyhow::Result<(Switch, Switch, bool)> {
    let mut config = rig.production_tunnel_config();
    (config.uplinks, config.uplink_retry) = (vec![PREFERRED, OTHER], UPLINK_RETRY);
    rig.start_tunnel(&config)?;
    let rig = &*rig;
    rig.wait_tunnel("127.0.0.2:", SETTLE).await?;
    let normal_p50 = baseline(rig).await?;
    let proxy = rig.proxy()?;
    let mut tick = ticker(REQUEST_EVERY);

    // Blackholed → pi serving over the other uplink, and five more requests there.
    proxy.set_mode_for_source(PREFERRED, ProxyMode::Blackhole);
    let (t0, mut traffic) = (Instant::now(), Traffic::default());
    let took = loop {
        tick.tick().await;
        if rig.sign_into(&mut traffic, t0).await == Served::Pi && on(&rig.tunnel_status().await?, "127.0.0.3:") {
            break t0.elapsed();
        }
        let tail = rig.tunnel_log_tail(25);
        anyhow::ensure!(
            t0.elapsed() < SETTLE,
            "pi not serving over the other uplink within {SETTLE:?}{tail}"
        );
    };
    for _ in 0..5 {
        tick.tick().await;
        rig.sign_into(&mut traffic, t0).await;
    }
    anyhow::ensure!(proxy.accepted_from(OTHER) > 0, "no connection came from {OTHER}");
    let extra = traffic.slowest().saturating_sub(normal_p50);
    let away = Switch { took, traffic, extra };
    let disconnect_before = rig.tunnel_status().await?["last_disconnect"].clone();

    // Restored → the tunnel back on it, and ten more requests.
    proxy.set_mode_for_source(PREFERRED, ProxyMode::Pass);
    let (t1, mut traffic) = (Instant::now(), Traffic::default());
    let bound = UPLINK_RETRY + config.connect_timeout + SETTLE;
    let (mut took, mut after) = (None, 0);
    while after < 10 {
        tick.tick().await;
        rig.sign_into(&mut traffic, t1).await;
        if took.is_some() {
            after += 1;
        } else if on(&rig.tunnel_status().await?, "127.0.0.2:") {
            took = Some(t1.elapsed());
        } else {
            let tail = rig.tunnel_log_tail(25);
            anyhow::ensure!(
                t1.elapsed() < bound,
                "not back on the preferred uplink within {bound:?}{tail}"
            );
        }
    }
    let extra = traffic.slowest().saturating_sub(normal_p50);
    let back = Switch {
        took: took.context("never moved back")?,
        traffic,
        extra,
    };
    let went_down = rig.tunnel_status().await?["last_disconnect"] != disconnect_before;
    println!(
        "  normal p50 {} ms; switch {} ({}); back {} ({}); the route went down on the way back: {went_down}",
        ms(normal_p50),
        secs(away.took),
        away.traffic.summary(),
        secs(back.took),
        back.traffic.summary()
    );
    Ok((away, back, went_down))
}

/// Run part 4 and print it.
pub async fn run(opts: &Opts, targets: &mut Targets) -> anyhow::Result<()> {
    println!("\n## 4. Uplink switch (127.0.0.2 preferred, 127.0.0.3; one request every {REQUEST_EVERY:?})");
    let mut rig = rig("tunnel-bench-uplinks-", GatewayTiming::production()).await?;
    let mut runs = Vec::new();
    for i in 1..=opts.runs {
        runs.push(run_once(&mut rig).await.with_context(|| format!("uplink run {i}"))?);
    }
    let mut client = rig.production_tunnel_config();
    client.uplink_retry = UPLINK_RETRY;
    println!("{}", settings(&rig, &client));
    let mut t = RunsTable::new("uplinks");
    let n = runs.len();
    for (name, what, pick) in [
        ("switch", "preferred uplink blackholed -> pi serving over the other", 0),
        ("switch back", "preferred restored -> tunnel back on it", 1),
    ] {
        let switches: Vec<&Switch> = runs.iter().map(|r| if pick == 0 { &r.0 } else { &r.1 }).collect();
        t.info(what, &switches.iter().map(|s| s.took).collect::<Vec<_>>());
        let failed = switches.iter().map(|s| s.traffic.failures().len()).sum();
        t.zero(targets, &format!("failed requests during the {name}"), failed, n);
        let extra: Vec<Duration> = switches.iter().map(|s| s.extra).collect();
        let what = format!("extra latency during the {name} (slowest - normal p50)");
        t.bounded(targets, &what, &extra, n, EXTRA_LATENCY_TARGET);
    }
    t.print();
    for f in runs
        .iter()
        .flat_map(|r| [&r.0, &r.1])
        .flat_map(|s| s.traffic.failures())
        .take(5)
    {
        println!("  failed: {f}");
    }
    Ok(())
}
