//! Tunnel measurements: the real release binaries (`signer-gateway`, `signer-tunnel`,
//! `test-signer`, and stock OpenSSH `ssh` for comparison) as processes over loopback, on the
//! tunnel rig the end-to-end tests use (`testkit::tunnel_rig`). `BENCHMARKS.md` ("Tunnels")
//! says how to read the output.
//!
//! 1. **Latency and throughput** ([`latency`]): 1 and 16 clients (distinct keys, one request
//!    in flight each) straight to pi's test signer, and through the gateway to it over TCP,
//!    over `signer-tunnel` and over `ssh -N -R` (memory store), and over `signer-tunnel` with
//!    the file store, whose durable writes are counted (inotify) against the raw durable write
//!    timed in the same run. Targets (issue 3), 1 client back to back: added p50 over direct
//!    ≤ 0.3 ms (memory store), ≤ 0.3 ms + the raw durable write p50 (file store). A paced
//!    window (one request per 20 ms, as a baker sends them) is reported, not counted.
//! 2. **Failover** ([`faults`]): pi behind `signer-tunnel` through the fault proxy, a TCP
//!    backup with the same key; one request every 100 ms; the proxy blackholes pi's link.
//!    Blackhole → first answer by the backup ≤ 2 s, no failed request (issue 3).
//! 3. **Recovery** (same runs): the link is restored after the outage, or, once the client
//!    noticed it dead, made to refuse connections until the client's n-th failed reconnect and
//!    restored while it sleeps its backoff. Restore → pi serving ≤ 2 s (issue 4); the client's
//!    new session → pi serving ≤ 1 s (issue 3).
//! 4. **Uplink switch** ([`uplinks`]): two uplinks (127.0.0.2, 127.0.0.3) through the
//!    per-source proxy; the preferred one is blackholed, then restored. No failed request,
//!    ≤ 2 s extra latency, both ways (issue 4).
//! 5. **Client footprint** ([`footprint`]): stripped `signer-tunnel` ≤ 8 MiB (x86_64, and
//!    aarch64 when built); its RSS idle and under 16 concurrent signs ≤ 10 MiB (issue 4),
//!    OpenSSH's `ssh` beside it.
//!
//! Parts 2-3 run with production gateway settings and once with the defaults of
//! `deploy/examples/gateway.yaml`; the client runs with `deploy/examples/signer-tunnel.yaml`'s
//! settings (`uplink_retry` 5s in part 4). Every fault run starts a fresh `signer-tunnel`, so
//! its backoff starts at its initial value, as for an isolated outage.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench tunnel` (about 2 min).
//! Knobs: `TUNNEL_BENCH_PARTS` (`footprint,latency,failover,uplinks`), `TUNNEL_BENCH_SECS`
//! (2, per latency window), `TUNNEL_BENCH_CLIENTS` (`1,16`), `TUNNEL_BENCH_RUNS` (3 fault runs
//! per setting), `TUNNEL_BENCH_OUTAGE_SECS` (6), `TUNNEL_BENCH_BACKOFF_FAILURES` (1; 4 is a
//! 30 s outage). An unexpected error (a failed request without a fault, a signer that never
//! serves again, a process that does not start) fails the run with exit code 1; a missed
//! target prints `MISS`.

mod faults;
mod footprint;
mod latency;
mod options;
mod report;
mod sampling;
mod uplinks;

#[path = "../common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testkit::tunnel_harness::{run_to_end, tunnel_bin, tunnel_command};

use common::procfs::{busy_before_start, cores};
use common::report::Targets;
use common::store::filesystem_of;
use options::{Opts, Part};

/// Time for a gateway, a tunnel or a signer to come up, or to serve again (2 shared cores).
const SETTLE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tunnel bench: {e}");
            return ExitCode::from(2);
        }
    };
    let busy = busy_before_start();
    // One worker: the load generator and the fault proxy, off the measured processes' cores.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load-rt")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tunnel bench: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut targets = Targets::default();
    let result = runtime.block_on(run(&opts, busy, &mut targets));
    drop(runtime);
    println!();
    println!("Targets ({} s in all):", started.elapsed().as_secs());
    targets.print();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ntunnel bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: &Opts, busy: f64, targets: &mut Targets) -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("tunnel-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let version = run_to_end(tunnel_command(&["--version"])?, Duration::from_secs(10)).await?;
    println!("tunnel bench: gateway + SSH tunnel latency, failover, recovery, client footprint");
    println!(
        "  binaries: {} ({}), {}, {}",
        tunnel_bin()?.display(),
        version.stdout.trim(),
        testkit::harness::gateway_bin()?.display(),
        testkit::harness::test_signer_bin().display()
    );
    println!(
        "  {} cores; rigs in {} ({}); machine busy before starting (other processes): {busy:.2} cores",
        cores(),
        std::env::temp_dir().display(),
        filesystem_of(&std::env::temp_dir())
    );
    let mut rss = Vec::new();
    if opts.has(Part::Latency) {
        println!("\nPart 1: latency and throughput ...");
        rss = latency::run(opts, work.path(), targets).await?;
    }
    if opts.has(Part::Failover) {
        faults::run(opts, targets).await?;
    }
    if opts.has(Part::Uplinks) {
        uplinks::run(opts, targets).await?;
    }
    if opts.has(Part::Footprint) {
        footprint::run(work.path(), &rss, targets)?;
    }
    Ok(())
}
