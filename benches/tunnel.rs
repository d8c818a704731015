//! Tunnel benchmarks: the real release binaries (`signer-gateway`, `signer-tunnel`,
//! `test-signer`, and stock OpenSSH `ssh` for comparison) as processes, driven over loopback.
//! See `BENCHMARKS.md` ("Tunnels: latency, failover, recovery, client footprint") for how to
//! read the output.
//!
//! 1. **Latency and throughput** ("latency"): 1 and 16 clients (16 distinct keys, one
//!    keep-alive connection and one request in flight each) straight to a test signer, and
//!    through the gateway to the same signer over TCP, over `signer-tunnel`, and over
//!    `ssh -N -R`; memory store, and file store over `signer-tunnel`. The raw durable write
//!    (the gateway's own `durable_write`) is timed in the same run, and the file store's
//!    durable writes are counted (inotify). Targets (issue 3), 1 client back to back: added p50
//!    over direct ≤ 0.3 ms (memory store), ≤ 0.3 ms + the raw durable write p50 (file store).
//!    A paced window (1 client, one request per 20 ms, as a baker sends them) is reported too.
//! 2. **Failover** ("failover"): `pi` behind `signer-tunnel` (through a fault proxy) first, a
//!    TCP `backup` holding the same key second; one request every 100 ms; the proxy
//!    blackholes pi's link. Time from the blackhole to the first answer by the backup, failed
//!    requests. Target (issue 3): ≤ 2 s, none failed.
//! 3. **Recovery** (same runs): after the outage (`TUNNEL_BENCH_OUTAGE_SECS`, by then both
//!    sides have dropped the session and the client is reconnecting) the link is restored; time
//!    from the restore, and from the client's new "session up", to pi serving again. One more
//!    run restores right after the client's first failed reconnect, while it sleeps its
//!    backoff (in the other runs a pending attempt resumes the moment the link returns).
//!    Targets: ≤ 2 s from the restore (issue 4), ≤ 1 s from the session (issue 3).
//! 4. **Uplink switch** ("uplinks"): two uplinks (source addresses 127.0.0.2, 127.0.0.3)
//!    through the per-source proxy; the preferred one is blackholed, then restored. Time to
//!    serve again over the other uplink and to move back; failed requests; slowest request
//!    against the normal p50. Target (issue 4): no failed request, ≤ 2 s extra latency.
//! 5. **Client footprint** ("footprint", and RSS during part 1): stripped `signer-tunnel`
//!    size (x86_64 and aarch64 when built); its VmRSS idle and under 16 concurrent signs,
//!    VmHWM. Targets (issue 4): ≤ 8 MiB binary, ≤ 10 MiB RSS.
//!
//! Parts 2-3 run with production-sensible gateway settings and again with the defaults of
//! `deploy/examples/gateway.yaml`; the client always runs with the defaults of
//! `deploy/examples/signer-tunnel.yaml` (only `uplink_retry` is shortened for part 4). Each
//! failover and uplink run starts a fresh `signer-tunnel` (so its backoff starts at its
//! initial value, as for an isolated outage).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench tunnel` (about 2 min).
//!
//! Environment knobs:
//! - `TUNNEL_BENCH_SECS` (2): measured seconds per latency scenario and client count
//! - `TUNNEL_BENCH_WARMUP` (100): warm-up requests per latency scenario (≥ 20 per client)
//! - `TUNNEL_BENCH_CLIENTS` (`1,16`): client counts for part 1
//! - `TUNNEL_BENCH_RUNS` (3): failover/recovery and uplink runs with the production settings
//! - `TUNNEL_BENCH_DEFAULT_RUNS` (1): failover/recovery runs with the example's defaults
//! - `TUNNEL_BENCH_BACKOFF_RUNS` (1): production runs restored right after a failed reconnect
//! - `TUNNEL_BENCH_BACKOFF_FAILURES` (1): … right after the N-th failed reconnect (a larger N
//!   means a longer outage and a longer backoff: 0.25 × 2^N to 0.5 × 2^N s, capped at 5-10 s;
//!   N = 4 is a 30 s outage)
//! - `TUNNEL_BENCH_PACED_MS` (20), `TUNNEL_BENCH_PACED_N` (100): the paced 1-client window of
//!   part 1 (one request per period, as a baker sends them; N = 0 skips it)
//! - `TUNNEL_BENCH_OUTAGE_SECS` (6): how long the link stays blackholed in parts 2-3
//! - `TUNNEL_BENCH_EVERY_MS` (100): request period in parts 2-4
//! - `TUNNEL_BENCH_UPLINK_RETRY_MS` (5000): the client's `uplink_retry` in part 4
//! - `TUNNEL_BENCH_WRITES` (200): raw durable writes timed, before and after the file store run
//! - `TUNNEL_BENCH_PARTS` (`footprint,latency,failover,uplinks`): which parts to run
//! - `TUNNEL_BENCH_OPENSSH` (1): 0 skips the `ssh -N -R` scenario
//! - `TUNNEL_BENCH_LOAD_THREADS` (1): worker threads of this process (load generator, proxy)
//!
//! Any unexpected error (a failed request in part 1, a signer that never serves again, a
//! process that does not start) fails the run with exit code 1. A missed target prints `MISS`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use signer_gateway::config::Config;
use signer_gateway::tezos::Pkh;
use signer_gateway::watermark::durable_write;
use testkit::fault_proxy::{FaultProxy, ProxyMode, ProxyOptions};
use testkit::harness::{attestation, Client, Gateway, TestSignerProcess, TEST_CHAIN};
use testkit::ssh_client::{ssh_bin, SshClient, SshKey, ALLOCATED};
use testkit::test_signer::{seed, Mode, TestSigner, TestSignerHandle, TestSignerOptions};
use testkit::tunnel_harness::{keygen, run_to_end, target_dir, tunnel_bin, tunnel_command, TunnelClient, TunnelConfig};
use tokio::sync::Barrier;

mod common;
use common::{filesystem_of, RenameCounter};

/// Bound on one sign request of the load generator.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a gateway, a tunnel or a signer to come up (generous: 2 shared cores).
const SETTLE: Duration = Duration::from_secs(20);
/// Requests at the normal pace before a fault, all to be served by pi (their p50 is "normal").
const BASELINE_REQUESTS: usize = 10;
/// The file store's state file: each durable write renames its temp file onto this name.
const STATE_FILE: &str = "watermarks.json";
/// Raw durable writes discarded before timing.
const WRITE_WARMUP: usize = 10;
/// Bytes per raw durable write: about the file store's state for 16 keys (384 B per key).
const FLOOR_BYTES: usize = 384 * 16;
/// Error messages kept per scenario.
const MAX_ERROR_SAMPLES: usize = 5;
/// Issue 3: added p50 over direct ≤ this (plus the raw durable write p50 with the file store).
const ADDED_P50: Duration = Duration::from_micros(300);
/// Issue 3: blackhole → first answer by the backup.
const FAILOVER_TARGET: Duration = Duration::from_secs(2);
/// Issue 3: new session up → primary serving.
const AFTER_SESSION_TARGET: Duration = Duration::from_secs(1);
/// Issue 4: link restored → primary serving.
const AFTER_RESTORE_TARGET: Duration = Duration::from_secs(2);
/// Issue 4: slowest request around an uplink switch − normal p50.
const EXTRA_LATENCY_TARGET: Duration = Duration::from_secs(2);
/// Issue 4: stripped client binary.
const BINARY_TARGET: u64 = 8 << 20;
/// Issue 4: client RSS, in KiB (as /proc reports it).
const RSS_TARGET_KB: u64 = 10 << 10;
/// The two uplinks of part 4: preferred, other.
const UPLINKS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Footprint,
    Latency,
    Failover,
    Uplinks,
}

#[derive(Debug, Clone)]
struct Opts {
    secs: f64,
    warmup: usize,
    clients: Vec<usize>,
    runs: usize,
    default_runs: usize,
    backoff_runs: usize,
    backoff_failures: usize,
    paced_every: Duration,
    paced_n: usize,
    outage: Duration,
    every: Duration,
    uplink_retry: Duration,
    writes: usize,
    parts: Vec<Part>,
    openssh: bool,
    load_threads: usize,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        for arg in std::env::args().skip(1) {
            // `cargo bench` passes `--bench` to every harness-less target.
            if arg != "--bench" {
                return Err(format!(
                    "unknown argument {arg:?}: this bench takes its options from TUNNEL_BENCH_* variables"
                ));
            }
        }
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        }
        fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match var(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| format!("{name}: cannot parse {v:?}")),
            }
        }
        let clients = match var("TUNNEL_BENCH_CLIENTS") {
            None => vec![1, 16],
            Some(v) => v
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("TUNNEL_BENCH_CLIENTS: cannot parse {c:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let parts = match var("TUNNEL_BENCH_PARTS") {
            None => vec![Part::Footprint, Part::Latency, Part::Failover, Part::Uplinks],
            Some(v) => v
                .split(',')
                .map(|p| match p.trim() {
                    "footprint" => Ok(Part::Footprint),
                    "latency" => Ok(Part::Latency),
                    "failover" => Ok(Part::Failover),
                    "uplinks" => Ok(Part::Uplinks),
                    other => Err(format!(
                        "TUNNEL_BENCH_PARTS: {other:?} is not footprint, latency, failover or uplinks"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let opts = Opts {
            secs: num("TUNNEL_BENCH_SECS", 2.0)?,
            warmup: num("TUNNEL_BENCH_WARMUP", 100)?,
            clients,
            runs: num("TUNNEL_BENCH_RUNS", 3)?,
            default_runs: num("TUNNEL_BENCH_DEFAULT_RUNS", 1)?,
            backoff_runs: num("TUNNEL_BENCH_BACKOFF_RUNS", 1)?,
            backoff_failures: num("TUNNEL_BENCH_BACKOFF_FAILURES", 1)?,
            paced_every: Duration::from_millis(num("TUNNEL_BENCH_PACED_MS", 20)?),
            paced_n: num("TUNNEL_BENCH_PACED_N", 100)?,
            outage: Duration::from_secs_f64(num("TUNNEL_BENCH_OUTAGE_SECS", 6.0)?),
            every: Duration::from_millis(num("TUNNEL_BENCH_EVERY_MS", 100)?),
            uplink_retry: Duration::from_millis(num("TUNNEL_BENCH_UPLINK_RETRY_MS", 5000)?),
            writes: num("TUNNEL_BENCH_WRITES", 200)?,
            parts,
            openssh: num::<u8>("TUNNEL_BENCH_OPENSSH", 1)? != 0,
            load_threads: num("TUNNEL_BENCH_LOAD_THREADS", 1)?,
        };
        if !(opts.secs > 0.0 && opts.secs.is_finite()) {
            return Err(format!("TUNNEL_BENCH_SECS must be positive, got {}", opts.secs));
        }
        if opts.clients.is_empty() || opts.clients.iter().any(|&c| c == 0 || c > 64) {
            return Err("TUNNEL_BENCH_CLIENTS: each count must be between 1 and 64".into());
        }
        if opts.runs == 0
            || opts.load_threads == 0
            || opts.every.is_zero()
            || opts.paced_every.is_zero()
            || opts.backoff_failures == 0
        {
            return Err(
                "TUNNEL_BENCH_RUNS, _LOAD_THREADS, _EVERY_MS, _PACED_MS and _BACKOFF_FAILURES must be > 0".into(),
            );
        }
        Ok(opts)
    }

    fn has(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers: formatting, percentiles, /proc.

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), secs)
}

fn signed_ms(nanos: i128) -> String {
    format!("{:+.3}", nanos as f64 / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn kib_as_mib(kb: u64) -> String {
    format!("{:.2} MiB", kb as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// Nearest-rank percentile of sorted nanoseconds.
fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Duration::from_nanos(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn median(d: &[Duration]) -> Duration {
    let mut v = d.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        Duration::ZERO
    } else {
        v[(v.len() - 1) / 2]
    }
}

/// min / median / max of some durations, as text.
fn spread(d: &[Duration]) -> (String, String, String) {
    match (d.iter().min(), d.iter().max()) {
        (Some(lo), Some(hi)) => (secs(*lo), secs(median(d)), secs(*hi)),
        _ => ("-".into(), "-".into(), "-".into()),
    }
}

fn count_spread(c: &[usize]) -> (String, String, String) {
    let mut v = c.to_vec();
    v.sort_unstable();
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => (lo.to_string(), v[(v.len() - 1) / 2].to_string(), hi.to_string()),
        _ => ("-".into(), "-".into(), "-".into()),
    }
}

/// CPU time of every thread of `pid`, in ns (`/proc/<pid>/task/*/schedstat`, first field).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// (busy, total) jiffies of the whole machine.
fn machine_jiffies() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Cores the whole machine used between two `machine_jiffies` readings.
fn machine_cores(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> f64 {
    match (a, b) {
        (Some((b0, t0)), Some((b1, t1))) => {
            b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64 * cores() as f64
        }
        _ => 0.0,
    }
}

/// A `Vm…:` line of `/proc/<pid>/status`, in KiB.
fn vm_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pid of our child process whose command name is `name` (first found).
fn child_pid_named(name: &str) -> Option<u32> {
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok());
        if comm == name && ppid == Some(me) {
            return Some(pid);
        }
    }
    None
}

/// Samples a process's VmRSS every 20 ms on a thread; `finish` returns the largest seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> anyhow::Result<RssSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(vm_kb(pid, "VmRSS:").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak.max(vm_kb(pid, "VmRSS:").unwrap_or(0))
            })
            .context("spawning the RSS sampler")?;
        Ok(RssSampler { stop, handle })
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// Sum and count of a Prometheus histogram over all its label sets, from `GET /metrics`.
async fn histogram(admin: SocketAddr, name: &str) -> anyhow::Result<(f64, f64)> {
    let (status, body) = Client::new()
        .with_timeout(Duration::from_secs(5))
        .get(&format!("http://{admin}/metrics"))
        .await?;
    ensure!(status == StatusCode::OK, "GET /metrics: {status}");
    let text = body.as_str().context("/metrics is not text")?;
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = series.split('{').next().unwrap_or(series);
        let v: f64 = value.parse().unwrap_or(0.0);
        if base == format!("{name}_sum") {
            sum += v;
        } else if base == format!("{name}_count") {
            count += v;
        }
    }
    Ok((sum, count))
}

/// Mean of a histogram between two readings.
fn mean_between(a: (f64, f64), b: (f64, f64)) -> Option<Duration> {
    let n = b.1 - a.1;
    (n > 0.0).then(|| Duration::from_secs_f64(((b.0 - a.0) / n).max(0.0)))
}

const WATERMARK_METRIC: &str = "signer_gateway_watermark_duration_seconds";
const SIGN_METRIC: &str = "signer_gateway_sign_duration_seconds";

fn describe_client(c: &TunnelConfig) -> String {
    format!(
        "connect_timeout {:?}, keepalive {:?} x {}, tcp_user_timeout {:?}, backoff {:?}..{:?} (reset after {:?}), \
         uplink_retry {:?}, local health check every {:?} (timeout {:?}, fall {}, rise {})",
        c.connect_timeout,
        c.keepalive_interval,
        c.keepalive_max,
        c.tcp_user_timeout,
        c.backoff_initial,
        c.backoff_max,
        c.backoff_reset_after,
        c.uplink_retry,
        c.health_interval,
        c.health_timeout,
        c.health_fall,
        c.health_rise
    )
}

/// The gateway's effective settings for the failover runs, read back with its own parser.
fn describe_gateway(yaml: &str, dir: &Path) -> anyhow::Result<String> {
    let text = yaml.replace("{dir}", dir.to_str().context("dir is not UTF-8")?);
    let settings = Config::parse(&text).map_err(|e| anyhow::anyhow!("parsing the gateway config: {e}"))?;
    let c = &settings.config;
    let hc = &c.health_check;
    let mut s = format!(
        "request_timeout {:?}; health_check interval {:?}, timeout {:?}, rise {}, fall {}",
        c.request_timeout, hc.interval, hc.timeout, hc.rise, hc.fall
    );
    if let Some(ssh) = &c.ssh {
        s += &format!(
            "; ssh keepalive {:?} x {}, inactivity_timeout {:?}, tcp_user_timeout {:?}, channel_open_timeout {:?}",
            ssh.keepalive_interval,
            ssh.keepalive_max,
            ssh.inactivity_timeout,
            ssh.tcp_user_timeout,
            ssh.channel_open_timeout
        );
    }
    Ok(s)
}

/// WARN and ERROR lines of a text log, grouped by message (fields and spans dropped), with
/// how often each appeared, most frequent first.
fn log_summary(text: &str) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Some((level, rest)) = [" WARN ", " ERROR "]
            .iter()
            .find_map(|l| line.find(l).map(|at| (l.trim(), &line[at + l.len()..])))
        else {
            continue;
        };
        // `[span{…}: ]target: message field=value …`
        let after_target = rest
            .find("signer_")
            .and_then(|at| rest[at..].find(": ").map(|c| &rest[at + c + 2..]))
            .unwrap_or(rest);
        let message: Vec<&str> = after_target
            .split_whitespace()
            .take_while(|w| !w.contains('='))
            .collect();
        let key = format!("{level} {}", message.join(" "));
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => counts.push((key, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
}

fn print_log_summary(who: &str, text: &str) {
    let summary = log_summary(text);
    if summary.is_empty() {
        println!("  {who} log: no WARN or ERROR line");
        return;
    }
    println!("  {who} log, WARN/ERROR lines by message:");
    for (msg, n) in summary {
        println!("    {n:>3} x {msg}");
    }
}

/// Collected PASS/MISS lines for the final summary.
#[derive(Default)]
struct Targets(Vec<(String, bool)>);

impl Targets {
    fn check(&mut self, what: String, ok: bool) -> &'static str {
        self.0.push((what, ok));
        verdict(ok)
    }
}

// ---------------------------------------------------------------------------------------------
// Part 5a: binary sizes.

/// Copy `bin` into `work`, strip the copy with `tool`: (size before, size after).
fn stripped_size(bin: &Path, tool: &str, work: &Path, name: &str) -> anyhow::Result<(u64, u64)> {
    let before = fs::metadata(bin)
        .with_context(|| format!("stat {}", bin.display()))?
        .len();
    let copy = work.join(name);
    fs::copy(bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    let out = std::process::Command::new(tool)
        .arg(&copy)
        .output()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    ensure!(
        out.status.success(),
        "{tool} {}: {}",
        copy.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((before, fs::metadata(&copy)?.len()))
}

/// How long ago `path` was modified, as text ("12 min ago").
fn age(path: &Path) -> String {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or_else(
            || "at an unknown time".into(),
            |d| format!("{} min ago", d.as_secs() / 60),
        )
}

fn in_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

fn binary_sizes(work: &Path, targets: &mut Targets) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let x86 = tunnel_bin()?;
    let (before, after) = stripped_size(&x86, "strip", work, "signer-tunnel.x86_64")?;
    rows.push(format!(
        "| signer-tunnel x86_64, stripped ({}, built {}; {} before strip) | {} | <= {} | {} |",
        x86.display(),
        age(&x86),
        mib(before),
        mib(after),
        mib(BINARY_TARGET),
        targets.check(format!("x86_64 binary {} <= 8 MiB", mib(after)), after <= BINARY_TARGET)
    ));
    let arm = match std::env::var_os("SIGNER_TUNNEL_AARCH64_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir()?.join("aarch64-unknown-linux-gnu/pi/signer-tunnel"),
    };
    if !arm.is_file() {
        rows.push(format!(
            "| signer-tunnel aarch64 ({}) | not built | <= {} | - |",
            arm.display(),
            mib(BINARY_TARGET)
        ));
    } else if !in_path("aarch64-linux-gnu-strip") {
        let size = fs::metadata(&arm)?.len();
        rows.push(format!(
            "| signer-tunnel aarch64 ({}), NOT stripped: aarch64-linux-gnu-strip not found | {} | <= {} | {} |",
            arm.display(),
            mib(size),
            mib(BINARY_TARGET),
            targets.check(
                format!("aarch64 binary (unstripped) {} <= 8 MiB", mib(size)),
                size <= BINARY_TARGET
            )
        ));
    } else {
        let (before, after) = stripped_size(&arm, "aarch64-linux-gnu-strip", work, "signer-tunnel.aarch64")?;
        rows.push(format!(
            "| signer-tunnel aarch64, stripped ({}, built {}; {} before strip) | {} | <= {} | {} |",
            arm.display(),
            age(&arm),
            mib(before),
            mib(after),
            mib(BINARY_TARGET),
            targets.check(
                format!("aarch64 binary {} <= 8 MiB", mib(after)),
                after <= BINARY_TARGET
            )
        ));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Part 1: latency and throughput.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path1 {
    Direct,
    Tcp,
    Tunnel,
    OpenSsh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scenario {
    path: Path1,
    store: Store,
}

impl Scenario {
    fn label(self) -> &'static str {
        match (self.path, self.store) {
            (Path1::Direct, _) => "direct to test signer",
            (Path1::Tcp, Store::Memory) => "gateway (memory) -> TCP",
            (Path1::Tcp, Store::File) => "gateway (file) -> TCP",
            (Path1::Tunnel, Store::Memory) => "gateway (memory) -> signer-tunnel",
            (Path1::Tunnel, Store::File) => "gateway (file) -> signer-tunnel",
            (Path1::OpenSsh, Store::Memory) => "gateway (memory) -> OpenSSH ssh -R",
            (Path1::OpenSsh, Store::File) => "gateway (file) -> OpenSSH ssh -R",
        }
    }
}

/// Processes whose CPU time a window reports.
#[derive(Debug, Clone, Copy, Default)]
struct Pids {
    gateway: Option<u32>,
    tunnel: Option<u32>,
    signer: Option<u32>,
}

/// CPU nanoseconds per process group over a window, and the whole machine's load.
#[derive(Debug, Clone, Default)]
struct CpuWindow {
    gateway_ns: u64,
    tunnel_ns: u64,
    signer_ns: u64,
    load_ns: u64,
    wall: Duration,
    machine_cores: f64,
}

impl CpuWindow {
    fn ours_cores(&self) -> f64 {
        (self.gateway_ns + self.tunnel_ns + self.signer_ns + self.load_ns) as f64 / self.wall.as_nanos().max(1) as f64
    }
}

struct CpuMark {
    at: Instant,
    pids: Pids,
    gateway: u64,
    tunnel: u64,
    signer: u64,
    load: u64,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    fn now(pids: Pids) -> CpuMark {
        let read = |p: Option<u32>| p.map_or(0, process_cpu_ns);
        CpuMark {
            at: Instant::now(),
            pids,
            gateway: read(pids.gateway),
            tunnel: read(pids.tunnel),
            signer: read(pids.signer),
            load: process_cpu_ns(std::process::id()),
            machine: machine_jiffies(),
        }
    }

    fn until_now(&self) -> CpuWindow {
        let end = CpuMark::now(self.pids);
        CpuWindow {
            gateway_ns: end.gateway.saturating_sub(self.gateway),
            tunnel_ns: end.tunnel.saturating_sub(self.tunnel),
            signer_ns: end.signer.saturating_sub(self.signer),
            load_ns: end.load.saturating_sub(self.load),
            wall: end.at.duration_since(self.at),
            machine_cores: machine_cores(self.machine, end.machine),
        }
    }
}

/// What one scenario with one client count measured.
#[derive(Debug, Clone)]
struct Outcome {
    scenario: Scenario,
    clients: usize,
    /// One client sending one request per this period (a baker's pace), not back to back.
    paced: Option<Duration>,
    latencies: Vec<u64>,
    elapsed: Duration,
    errors: usize,
    error_samples: Vec<String>,
    cpu: CpuWindow,
    /// Mean watermark check-and-record and mean in-gateway sign time, from the gateway's
    /// metrics over the window (warm-up included).
    watermark_mean: Option<Duration>,
    gateway_sign_mean: Option<Duration>,
    /// Durable writes the file store made during the window (renames onto its state file).
    store_writes: Option<u64>,
}

impl Outcome {
    fn label(&self) -> String {
        match self.paced {
            Some(every) => format!("{}, 1 client paced {every:?}", self.scenario.label()),
            None => format!("{}, {} client(s)", self.scenario.label(), self.clients),
        }
    }
    fn requests(&self) -> usize {
        self.latencies.len()
    }
    fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn p50(&self) -> Duration {
        percentile(&self.latencies, 50.0)
    }
    fn p99(&self) -> Duration {
        percentile(&self.latencies, 99.0)
    }
}

/// Memory of a tunnel client process over part 1 (KiB).
#[derive(Debug, Clone, Default)]
struct Footprint {
    idle_rss: u64,
    idle_anon: u64,
    idle_file: u64,
    idle_hwm: u64,
    load_peak_rss: u64,
    end_rss: u64,
    end_hwm: u64,
    load_clients: usize,
}

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A client with its own pool: run sequentially, it keeps exactly one keep-alive connection.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// One sign request; `Ok` only for a 200 carrying an `edsig…` signature.
async fn sign_once(client: &HttpClient, uri: &http::Uri, level: i32) -> Result<(), String> {
    let body = format!("\"{}\"", hex::encode(attestation(TEST_CHAIN, level, 0, 0xaa)));
    let req = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("transport: {e:?}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!(
                "level {level}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| format!("level {level}: body is not JSON: {e}"))?;
        match json.get("signature").and_then(|s| s.as_str()) {
            Some(s) if s.starts_with("edsig") => Ok(()),
            _ => Err(format!("level {level}: no edsig signature in {json}")),
        }
    };
    match tokio::time::timeout(SIGN_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("level {level}: no answer within {SIGN_TIMEOUT:?}")),
    }
}

struct ClientResult {
    latencies: Vec<u64>,
    errors: usize,
    samples: Vec<String>,
    started: Instant,
    ended: Instant,
}

/// `pkhs.len()` clients against `api`: warm-up, then `secs` measured; levels come from the
/// shared per-key counters, so they keep increasing across scenarios.
async fn drive(
    api: SocketAddr,
    keys: &[(usize, Pkh)],
    levels: &Arc<Vec<AtomicI32>>,
    warmup: usize,
    secs: f64,
    pids: Pids,
    renames: Option<&RenameCounter>,
) -> anyhow::Result<(Vec<ClientResult>, CpuWindow, Option<u64>)> {
    let n = keys.len();
    let warmup = (warmup / n).max(20);
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for &(idx, pkh) in keys {
        let uri: http::Uri = format!("http://{api}/keys/{pkh}").parse().context("sign URI")?;
        let (levels, barrier) = (Arc::clone(levels), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut r = ClientResult {
                latencies: Vec::new(),
                errors: 0,
                samples: Vec::new(),
                started: Instant::now(),
                ended: Instant::now(),
            };
            let note = |r: &mut ClientResult, e: String| {
                r.errors += 1;
                if r.samples.len() < MAX_ERROR_SAMPLES {
                    r.samples.push(e);
                }
            };
            for _ in 0..warmup {
                let level = levels[idx].fetch_add(1, Ordering::Relaxed) + 1;
                if let Err(e) = sign_once(&client, &uri, level).await {
                    note(&mut r, format!("warm-up: {e}"));
                }
            }
            barrier.wait().await;
            r.started = Instant::now();
            let deadline = r.started + Duration::from_secs_f64(secs);
            while Instant::now() < deadline {
                let level = levels[idx].fetch_add(1, Ordering::Relaxed) + 1;
                let t0 = Instant::now();
                match sign_once(&client, &uri, level).await {
                    Ok(()) => r.latencies.push(t0.elapsed().as_nanos() as u64),
                    Err(e) => note(&mut r, e),
                }
            }
            r.ended = Instant::now();
            r
        }));
    }
    barrier.wait().await;
    let mark = CpuMark::now(pids);
    let writes0 = renames.map(RenameCounter::count);
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.context("a load client panicked")?);
    }
    let writes = writes0.zip(renames.map(RenameCounter::count)).map(|(a, b)| b - a);
    Ok((results, mark.until_now(), writes))
}

/// One client sending one request every `every`, `n` times (plus 10 unmeasured first).
async fn paced(
    api: SocketAddr,
    (idx, pkh): (usize, Pkh),
    levels: &Arc<Vec<AtomicI32>>,
    every: Duration,
    n: usize,
    pids: Pids,
    renames: Option<&RenameCounter>,
) -> anyhow::Result<(Vec<ClientResult>, CpuWindow, Option<u64>)> {
    let uri: http::Uri = format!("http://{api}/keys/{pkh}").parse().context("sign URI")?;
    let client = http_client();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut r = ClientResult {
        latencies: Vec::with_capacity(n),
        errors: 0,
        samples: Vec::new(),
        started: Instant::now(),
        ended: Instant::now(),
    };
    let mut mark = None;
    let mut writes0 = None;
    for i in 0..n + 10 {
        tick.tick().await;
        if i == 10 {
            mark = Some(CpuMark::now(pids));
            writes0 = renames.map(RenameCounter::count);
            r.started = Instant::now();
        }
        let level = levels[idx].fetch_add(1, Ordering::Relaxed) + 1;
        let t0 = Instant::now();
        match sign_once(&client, &uri, level).await {
            Ok(()) if i >= 10 => r.latencies.push(t0.elapsed().as_nanos() as u64),
            Ok(()) => {}
            Err(e) => {
                r.errors += 1;
                if r.samples.len() < MAX_ERROR_SAMPLES {
                    r.samples.push(e);
                }
            }
        }
    }
    r.ended = Instant::now();
    let cpu = mark.map(|m| m.until_now()).unwrap_or_default();
    let writes = writes0.zip(renames.map(RenameCounter::count)).map(|(a, b)| b - a);
    Ok((vec![r], cpu, writes))
}

/// The gateway config of a latency scenario: one signer `pi`, over TCP or a tunnel.
fn latency_gateway_yaml(s: Scenario, signer: SocketAddr, public: &str) -> String {
    let watermark = match s.store {
        Store::File => "{backend: file, dir: \"{dir}/watermarks\", create_if_missing: true}",
        Store::Memory => "{backend: memory}",
    };
    let (ssh, pi) = match s.path {
        Path1::Tcp | Path1::Direct => (String::new(), format!("  - {{name: pi, address: \"{signer}\"}}\n")),
        Path1::Tunnel | Path1::OpenSsh => (
            "ssh: {listen: 127.0.0.1:0, host_key: \"{dir}/ssh_host_ed25519_key\"}\n".to_string(),
            format!("  - name: pi\n    tunnel: {{keys: [\"{public}\"]}}\n"),
        ),
    };
    format!(
        "api: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nwatermark: {watermark}\n{ssh}signers:\n{pi}\
         request_timeout: 2s\nhealth_check: {{interval: 1s}}\nshutdown_grace: 1s\nlog_format: text\n"
    )
}

/// A tunnel client process of part 1.
#[allow(clippy::large_enum_variant)] // one value per scenario
enum TunnelProc {
    Ours(TunnelClient),
    OpenSsh(SshClient),
}

impl TunnelProc {
    fn pid(&self) -> Option<u32> {
        match self {
            TunnelProc::Ours(c) => c.pid(),
            TunnelProc::OpenSsh(c) => c.id(),
        }
    }
}

struct LatencyEnv<'a> {
    opts: &'a Opts,
    signer: &'a TestSignerProcess,
    signer_pid: Option<u32>,
    keys: Vec<(usize, Pkh)>,
    levels: Arc<Vec<AtomicI32>>,
    identity: &'a Path,
    public: &'a str,
    work: &'a Path,
}

/// Run one scenario for every client count: returns the outcomes and, for a tunnel, the
/// client process's footprint.
async fn run_scenario(env: &LatencyEnv<'_>, s: Scenario) -> anyhow::Result<(Vec<Outcome>, Option<Footprint>)> {
    let mut gw = None;
    let mut tunnel = None;
    let api = match s.path {
        Path1::Direct => env.signer.addr(),
        _ => {
            let g = Gateway::start(&latency_gateway_yaml(s, env.signer.addr(), env.public))
                .await
                .with_context(|| format!("starting the gateway for {}", s.label()))?;
            match s.path {
                Path1::Tunnel => {
                    let (ssh, host_key) = g.ssh_endpoint()?;
                    let cfg = TunnelConfig::production(ssh, &host_key, env.identity, env.signer.addr());
                    let dir = env.work.join(format!("client-{:?}", s.store).to_lowercase());
                    fs::create_dir_all(&dir)?;
                    tunnel = Some(TunnelProc::Ours(TunnelClient::start(&dir, &cfg)?));
                }
                Path1::OpenSsh => {
                    let (ssh, _) = g.ssh_endpoint()?;
                    let key = SshKey {
                        private: env.identity.to_path_buf(),
                        public: env.public.to_string(),
                    };
                    let mut client = SshClient::reverse_tunnel(&key, ssh, "pi", env.signer.addr(), &[])?;
                    client.wait_stderr(ALLOCATED, SETTLE).await?;
                    tunnel = Some(TunnelProc::OpenSsh(client));
                }
                _ => {}
            }
            let waited = g.wait_signers_up(&["pi"], SETTLE).await;
            if let Err(e) = waited {
                let tail = match &tunnel {
                    Some(TunnelProc::Ours(c)) => c.log_tail(20),
                    Some(TunnelProc::OpenSsh(c)) => c.stderr(),
                    None => String::new(),
                };
                bail!("{}: pi never came up: {e:#}{tail}", s.label());
            }
            let api = g.api;
            gw = Some(g);
            api
        }
    };
    let pids = Pids {
        gateway: gw.as_ref().and_then(Gateway::pid),
        tunnel: tunnel.as_ref().and_then(TunnelProc::pid),
        signer: env.signer_pid,
    };
    let mut footprint = None;
    if let Some(pid) = pids.tunnel {
        // Idle: tunnel up, no traffic yet (the health checks still run).
        tokio::time::sleep(Duration::from_secs(1)).await;
        footprint = Some(Footprint {
            idle_rss: vm_kb(pid, "VmRSS:").unwrap_or(0),
            idle_anon: vm_kb(pid, "RssAnon:").unwrap_or(0),
            idle_file: vm_kb(pid, "RssFile:").unwrap_or(0),
            idle_hwm: vm_kb(pid, "VmHWM:").unwrap_or(0),
            ..Footprint::default()
        });
    }
    // Durable writes of the file store: renames onto its state file, counted outside the gateway.
    let renames = match (&gw, s.store) {
        (Some(g), Store::File) => Some(
            RenameCounter::watch(&g.dir().join("watermarks"), STATE_FILE)
                .context("watching the file store with inotify")?,
        ),
        _ => None,
    };
    let mut windows: Vec<Option<usize>> = env.opts.clients.iter().map(|&c| Some(c)).collect();
    if env.opts.paced_n > 0 && matches!(s.path, Path1::Direct | Path1::Tcp | Path1::Tunnel) {
        windows.push(None);
    }
    let mut outcomes = Vec::new();
    for window in windows {
        let admin = gw.as_ref().map(|g| g.admin);
        let before = match admin {
            Some(a) => Some((histogram(a, WATERMARK_METRIC).await?, histogram(a, SIGN_METRIC).await?)),
            None => None,
        };
        // Not in the paced window: its reads would be most of this process's CPU there.
        let sampler = pids
            .tunnel
            .filter(|_| window.is_some())
            .map(RssSampler::start)
            .transpose()?;
        let (results, cpu, store_writes) = match window {
            Some(clients) => {
                drive(
                    api,
                    &env.keys[..clients],
                    &env.levels,
                    env.opts.warmup,
                    env.opts.secs,
                    pids,
                    renames.as_ref(),
                )
                .await?
            }
            None => {
                paced(
                    api,
                    env.keys[0],
                    &env.levels,
                    env.opts.paced_every,
                    env.opts.paced_n,
                    pids,
                    renames.as_ref(),
                )
                .await?
            }
        };
        let peak = sampler.map(RssSampler::finish);
        let (watermark_mean, gateway_sign_mean) = match (admin, before) {
            (Some(a), Some((w0, s0))) => {
                let (w1, s1) = (histogram(a, WATERMARK_METRIC).await?, histogram(a, SIGN_METRIC).await?);
                (mean_between(w0, w1), mean_between(s0, s1))
            }
            _ => (None, None),
        };
        let clients = window.unwrap_or(1);
        if let (Some(f), Some(p)) = (footprint.as_mut(), peak) {
            if p >= f.load_peak_rss {
                f.load_peak_rss = p;
                f.load_clients = clients;
            }
        }
        let started = results.iter().map(|r| r.started).min().unwrap_or_else(Instant::now);
        let ended = results.iter().map(|r| r.ended).max().unwrap_or(started);
        let mut latencies: Vec<u64> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        latencies.sort_unstable();
        let o = Outcome {
            scenario: s,
            clients,
            paced: window.is_none().then_some(env.opts.paced_every),
            latencies,
            elapsed: ended.duration_since(started),
            errors: results.iter().map(|r| r.errors).sum(),
            error_samples: results
                .iter()
                .flat_map(|r| r.samples.iter().cloned())
                .take(MAX_ERROR_SAMPLES)
                .collect(),
            cpu,
            watermark_mean,
            gateway_sign_mean,
            store_writes,
        };
        println!(
            "  done: {:<48} {:>7.0} req/s, p50 {} ms, p99 {} ms, {} error(s)",
            o.label(),
            o.rps(),
            ms(o.p50()),
            ms(o.p99()),
            o.errors
        );
        outcomes.push(o);
    }
    if let (Some(f), Some(pid)) = (footprint.as_mut(), pids.tunnel) {
        f.end_rss = vm_kb(pid, "VmRSS:").unwrap_or(0);
        f.end_hwm = vm_kb(pid, "VmHWM:").unwrap_or(0);
    }
    if let Some(TunnelProc::OpenSsh(mut c)) = tunnel {
        c.kill().await;
    }
    drop(gw);
    Ok((outcomes, footprint))
}

/// Time `n` raw durable writes in `dir` with the gateway's own routine, after a warm-up, back
/// to back or one per `pace`. Blocking: run it on a blocking thread.
fn durable_write_floor(dir: &Path, n: usize, pace: Option<Duration>) -> std::io::Result<Vec<u64>> {
    fs::create_dir_all(dir)?;
    let mut payload = vec![b' '; FLOOR_BYTES];
    payload[0] = b'{';
    *payload.last_mut().expect("non-empty") = b'}';
    let mut times = Vec::with_capacity(n);
    let mut cpu = 0;
    for i in 0..n + WRITE_WARMUP {
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
        payload[1] = b'a' + (i % 26) as u8;
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        durable_write(dir, "floor.json", &payload)?;
        if i >= WRITE_WARMUP {
            times.push(t0.elapsed().as_nanos() as u64);
            cpu += thread_cpu_ns().saturating_sub(c0);
        }
    }
    times.sort_unstable();
    FLOOR_CPU_NS.fetch_add(cpu, Ordering::Relaxed);
    FLOOR_WRITES.fetch_add(n as u64, Ordering::Relaxed);
    Ok(times)
}

/// CPU time of the raw durable writes (this thread's, user + kernel) and their number.
static FLOOR_CPU_NS: AtomicU64 = AtomicU64::new(0);
static FLOOR_WRITES: AtomicU64 = AtomicU64::new(0);

/// CPU time of the calling thread (`/proc/thread-self/schedstat`), in ns.
fn thread_cpu_ns() -> u64 {
    fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

struct LatencyReport {
    outcomes: Vec<Outcome>,
    footprints: Vec<(&'static str, Footprint)>,
    floors: Vec<(&'static str, Vec<u64>)>,
    /// Raw durable writes one per paced period (as the paced window's writes happen).
    paced_floor: Option<Vec<u64>>,
    openssh_note: Option<String>,
}

async fn latency_part(opts: &Opts, work: &Path, identity: &Path, public: &str) -> anyhow::Result<LatencyReport> {
    let max_clients = opts.clients.iter().copied().max().unwrap_or(1);
    let seeds: Vec<[u8; 32]> = (1..=max_clients).map(|n| seed(n as u8)).collect();
    let signer = TestSignerProcess::start(&seeds, Mode::Ok)
        .await
        .context("starting the test signer")?;
    let signer_pid = child_pid_named("test-signer");
    let env = LatencyEnv {
        opts,
        signer: &signer,
        signer_pid,
        keys: signer.pkhs().iter().copied().enumerate().collect(),
        levels: Arc::new((0..max_clients).map(|_| AtomicI32::new(0)).collect()),
        identity,
        public,
        work,
    };
    let mut scenarios = vec![
        Scenario {
            path: Path1::Direct,
            store: Store::Memory,
        },
        Scenario {
            path: Path1::Tcp,
            store: Store::Memory,
        },
        Scenario {
            path: Path1::Tunnel,
            store: Store::Memory,
        },
        Scenario {
            path: Path1::Tunnel,
            store: Store::File,
        },
    ];
    let mut openssh_note = None;
    if !opts.openssh {
        openssh_note = Some("skipped (TUNNEL_BENCH_OPENSSH=0)".to_string());
    } else if let Err(e) = ssh_bin() {
        openssh_note = Some(format!("skipped: {e:#}"));
    } else {
        scenarios.push(Scenario {
            path: Path1::OpenSsh,
            store: Store::Memory,
        });
    }
    let floor_dir = work.join("floor");
    let floor = |n: usize, pace: Option<Duration>| {
        let dir = floor_dir.clone();
        async move {
            tokio::task::spawn_blocking(move || durable_write_floor(&dir, n, pace))
                .await
                .context("the durable-write thread panicked")?
                .context("raw durable write")
        }
    };
    let mut floors = Vec::new();
    let mut paced_floor = None;
    let mut outcomes = Vec::new();
    let mut footprints = Vec::new();
    for s in scenarios {
        if s.store == Store::File {
            floors.push(("before the file-store run", floor(opts.writes, None).await?));
        }
        let (o, f) = run_scenario(&env, s).await?;
        if s.store == Store::File && opts.paced_n > 0 {
            paced_floor = Some(floor(opts.paced_n, Some(opts.paced_every)).await?);
        }
        outcomes.extend(o);
        if let Some(f) = f {
            footprints.push((s.label(), f));
        }
    }
    if !floors.is_empty() {
        floors.push(("after all latency runs", floor(opts.writes, None).await?));
        let mut pooled: Vec<u64> = floors.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        pooled.sort_unstable();
        floors.push(("pooled", pooled));
    }
    Ok(LatencyReport {
        outcomes,
        footprints,
        floors,
        paced_floor,
        openssh_note,
    })
}

fn print_latency(opts: &Opts, r: &LatencyReport, targets: &mut Targets) -> anyhow::Result<()> {
    println!();
    println!("## 1. Sign latency and throughput (each window {} s)", opts.secs);
    println!();
    println!(
        "| {:<36} | {:>7} | {:>8} | {:>7} | {:>8} | {:>8} | {:>6} | {:>32} | {:>13} |",
        "scenario",
        "clients",
        "requests",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "CPU us/sign: gw/tunnel/signer/load",
        "machine cores"
    );
    println!(
        "|{:-<38}|{:->9}|{:->10}|{:->9}|{:->10}|{:->10}|{:->8}|{:->34}|{:->15}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    for o in &r.outcomes {
        let per = |ns: u64| ns as f64 / 1e3 / o.requests().max(1) as f64;
        println!(
            "| {:<36} | {:>7} | {:>8} | {:>7.0} | {:>8} | {:>8} | {:>6} | {:>32} | {:>13} |",
            o.scenario.label(),
            match o.paced {
                Some(every) => format!("1 @{every:?}"),
                None => o.clients.to_string(),
            },
            o.requests(),
            o.rps(),
            ms(o.p50()),
            ms(o.p99()),
            o.errors,
            format!(
                "{:.0}/{:.0}/{:.0}/{:.0}",
                per(o.cpu.gateway_ns),
                per(o.cpu.tunnel_ns),
                per(o.cpu.signer_ns),
                per(o.cpu.load_ns)
            ),
            format!("{:.2} (ours {:.2})", o.cpu.machine_cores, o.cpu.ours_cores())
        );
    }
    for (when, times) in &r.floors {
        println!(
            "| {:<36} | {:>7} | {:>8} | {:>7.0} | {:>8} | {:>8} | {:>6} | {:>32} | {:>13} |",
            format!("raw durable write, {when}"),
            "-",
            times.len(),
            1.0 / percentile(times, 50.0).as_secs_f64().max(1e-9),
            ms(percentile(times, 50.0)),
            ms(percentile(times, 99.0)),
            0,
            "-",
            "-"
        );
    }
    if let Some(times) = &r.paced_floor {
        println!(
            "| {:<36} | {:>7} | {:>8} | {:>7} | {:>8} | {:>8} | {:>6} | {:>32} | {:>13} |",
            format!("raw durable write, one per {:?}", opts.paced_every),
            "-",
            times.len(),
            "-",
            ms(percentile(times, 50.0)),
            ms(percentile(times, 99.0)),
            0,
            "-",
            "-"
        );
    }
    if let Some(note) = &r.openssh_note {
        println!("  (OpenSSH scenario {note})");
    }
    let floor_p50 = r.floors.last().map(|(_, t)| percentile(t, 50.0));
    let paced_floor_p50 = r.paced_floor.as_ref().map(|t| percentile(t, 50.0));
    // A window: a closed-loop client count, or the paced single client (None).
    let mut windows: Vec<Option<usize>> = opts.clients.iter().map(|&c| Some(c)).collect();
    if opts.paced_n > 0 {
        windows.push(None);
    }
    println!();
    println!("Added latency (p50 differences within the same kind of window) and targets:");
    for w in windows {
        let find = |path: Path1, store: Store| {
            r.outcomes.iter().find(|o| {
                o.scenario.path == path
                    && (path == Path1::Direct || o.scenario.store == store)
                    && match w {
                        Some(c) => o.paced.is_none() && o.clients == c,
                        None => o.paced.is_some(),
                    }
            })
        };
        let Some(direct) = find(Path1::Direct, Store::Memory) else {
            continue;
        };
        // The targets are read as e2e_load reads them: 1 client, back to back. The paced window
        // is reported, not counted (on this VM it mostly measures waking idle processes).
        let (name, counted) = match w {
            Some(c) => (format!("{c:>2} client(s)"), c == 1),
            None => (format!("paced {:?}", opts.paced_every), false),
        };
        let floor = if w.is_none() { paced_floor_p50 } else { floor_p50 };
        let added = |o: &Outcome| o.p50().as_nanos() as i128 - direct.p50().as_nanos() as i128;
        let tcp = find(Path1::Tcp, Store::Memory);
        let tun = find(Path1::Tunnel, Store::Memory);
        let tun_file = find(Path1::Tunnel, Store::File);
        let ossh = find(Path1::OpenSsh, Store::Memory);
        if let Some(t) = tcp {
            println!(
                "  {name}: gateway (memory) over TCP adds {} ms over direct",
                signed_ms(added(t))
            );
        }
        if let Some(t) = tun {
            let a = added(t);
            let line =
                format!(
                "  {name}: gateway (memory) over signer-tunnel adds {} ms over direct (the tunnel alone: {} ms over \
                 TCP); target <= +0.300 ms",
                signed_ms(a),
                tcp.map_or("-".into(), |tcp| signed_ms(t.p50().as_nanos() as i128 - tcp.p50().as_nanos() as i128)),
            );
            let ok = a <= ADDED_P50.as_nanos() as i128;
            if counted {
                let v = targets.check(
                    format!(
                        "{}, memory store + tunnel: added p50 {} ms <= 0.3 ms",
                        name.trim(),
                        signed_ms(a)
                    ),
                    ok,
                );
                println!("{line}: {v}");
            } else {
                println!("{line}: {} (informational)", verdict(ok));
            }
        }
        if let (Some(t), Some(floor)) = (tun_file, floor) {
            let a = added(t);
            let limit = floor + ADDED_P50;
            let writes = t.store_writes.map_or(String::new(), |n| {
                format!(
                    " ({:.2} durable writes per sign)",
                    n as f64 / t.requests().max(1) as f64
                )
            });
            let line = format!(
                "  {name}: gateway (file) over signer-tunnel adds {} ms over direct{writes}; target <= raw durable \
                 write p50 {} + 0.3 = {} ms",
                signed_ms(a),
                ms(floor),
                ms(limit)
            );
            let ok = a <= limit.as_nanos() as i128;
            if counted {
                let v = targets.check(
                    format!(
                        "{}, file store + tunnel: added p50 {} ms <= {} ms",
                        name.trim(),
                        signed_ms(a),
                        ms(limit)
                    ),
                    ok,
                );
                println!("{line}: {v}");
            } else {
                println!("{line}: {} (informational)", verdict(ok));
            }
        }
        if let (Some(o), Some(t)) = (ossh, tun) {
            println!(
                "  {name}: OpenSSH ssh -R adds {} ms over direct; signer-tunnel p50 is {:.2}x OpenSSH's, throughput \
                 {:.2}x",
                signed_ms(added(o)),
                t.p50().as_secs_f64() / o.p50().as_secs_f64().max(1e-12),
                t.rps() / o.rps().max(1e-12)
            );
        }
    }
    println!();
    println!("Where the time goes (gateway metrics over the window incl. warm-up; CPU per sign from /proc):");
    for o in r.outcomes.iter().filter(|o| o.scenario.path != Path1::Direct) {
        let writes = o.store_writes.map_or(String::new(), |n| {
            format!(
                ", {n} durable writes ({:.2} per sign)",
                n as f64 / o.requests().max(1) as f64
            )
        });
        println!(
            "  {:<58}: in-gateway sign mean {} ms, watermark check-and-record mean {} ms{writes}",
            o.label(),
            o.gateway_sign_mean.map_or("-".into(), ms),
            o.watermark_mean.map_or("-".into(), ms),
        );
    }
    if let Some(per_write) = FLOOR_CPU_NS
        .load(Ordering::Relaxed)
        .checked_div(FLOOR_WRITES.load(Ordering::Relaxed))
    {
        println!(
            "  raw durable write: {} us CPU per write (user + kernel, this thread)",
            per_write / 1000
        );
    }
    let busy = r
        .outcomes
        .iter()
        .map(|o| o.cpu.machine_cores - o.cpu.ours_cores())
        .fold(0.0_f64, f64::max);
    if busy > 0.25 {
        println!(
            "  NOTE: other processes used up to {busy:.2} cores during these windows: figures are not from a quiet machine"
        );
    }
    let errors: usize = r.outcomes.iter().map(|o| o.errors).sum();
    if errors > 0 {
        let mut msg = format!("{errors} sign request(s) failed in part 1 (no fault was injected):");
        for o in r.outcomes.iter().filter(|o| o.errors > 0) {
            msg += &format!("\n  {}: {}", o.label(), o.errors);
            for e in &o.error_samples {
                msg += &format!("\n    {e}");
            }
        }
        bail!(msg);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parts 2-4: failover, recovery, uplinks.

/// Gateway settings for the fault runs.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Extra lines under `ssh:` (indented two spaces).
    ssh: &'static str,
    /// Extra top-level lines.
    top: &'static str,
}

const PRODUCTION: Profile = Profile {
    ssh: "  keepalive_interval: 1s\n  keepalive_max: 3\n  tcp_user_timeout: 5s\n  channel_open_timeout: 1s\n",
    top: "request_timeout: 1s\nhealth_check: {interval: 500ms, timeout: 500ms, rise: 2, fall: 1}\n",
};

/// deploy/examples/gateway.yaml: every timing at its default (the example sets none but
/// request_timeout 3s and health_check 1s/500ms/2/1, which are the defaults; it has no `ssh:`).
const EXAMPLE_DEFAULTS: Profile = Profile { ssh: "", top: "" };

fn fault_gateway_yaml(p: Profile, pi_key: &str, backup: SocketAddr) -> String {
    format!(
        "api: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
         watermark: {{backend: file, dir: \"{{dir}}/watermarks\", create_if_missing: true}}\n\
         ssh:\n  listen: 127.0.0.1:0\n  host_key: \"{{dir}}/ssh_host_ed25519_key\"\n{}\
         signers:\n  - name: pi\n    tunnel: {{keys: [\"{pi_key}\"]}}\n  - name: backup\n    address: \"{backup}\"\n\
         {}log_format: text\n",
        p.ssh, p.top
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Pi,
    Backup,
}

/// One request of a request stream.
#[derive(Debug, Clone)]
struct Sample {
    done: Instant,
    took: Duration,
    /// Who served it, or why it failed.
    result: Result<By, String>,
}

impl Sample {
    fn by(&self, by: By) -> bool {
        self.result.as_ref().is_ok_and(|b| *b == by)
    }
}

/// Everything of the fault runs: pi behind signer-tunnel through the proxy, backup over TCP.
struct Rig {
    // Fields drop in declaration order: client first, then proxy and gateway, signers, dir.
    tunnel: Option<TunnelClient>,
    proxy: FaultProxy,
    gw: Gateway,
    pi: TestSignerProcess,
    backup: TestSignerHandle,
    http: Client,
    pkh: Pkh,
    level: i32,
    host_key: String,
    identity: PathBuf,
    tick: tokio::time::Interval,
    dir: PathBuf,
    settings: String,
}

impl Rig {
    /// A rig with gateway settings `p`; `label` names its dir (one per rig, so each rig's
    /// client log is its own).
    async fn start(
        p: Profile,
        label: &str,
        work: &Path,
        identity: &Path,
        public: &str,
        every: Duration,
    ) -> anyhow::Result<Rig> {
        let pi = TestSignerProcess::start(&[seed(11)], Mode::Ok)
            .await
            .context("starting pi's test signer")?;
        let backup = TestSigner::spawn(TestSignerOptions {
            seeds: vec![seed(11)],
            ..TestSignerOptions::default()
        })
        .await
        .context("starting the backup test signer")?;
        let yaml = fault_gateway_yaml(p, public, backup.addr());
        let gw = Gateway::start(&yaml).await.context("starting the gateway")?;
        let settings = describe_gateway(&yaml, gw.dir())?;
        let (ssh, host_key) = gw.ssh_endpoint()?;
        gw.wait_signers_up(&["backup"], SETTLE).await?;
        // Connect from each client's own address, so /status shows which uplink is in use.
        let proxy = FaultProxy::start_with(ProxyOptions {
            keep_client_ip: true,
            ..ProxyOptions::new(ssh)
        })
        .await
        .context("starting the fault proxy")?;
        let dir = work.join(format!(
            "rig-{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ));
        fs::create_dir_all(&dir)?;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pkh = pi.pkhs()[0];
        Ok(Rig {
            tunnel: None,
            proxy,
            gw,
            pi,
            backup,
            http: Client::new().with_timeout(SIGN_TIMEOUT),
            pkh,
            level: 0,
            host_key,
            identity: identity.to_path_buf(),
            tick,
            dir,
            settings,
        })
    }

    fn client_config(&self, uplinks: &[Ipv4Addr], uplink_retry: Duration) -> TunnelConfig {
        let mut c = TunnelConfig::production(self.proxy.addr(), &self.host_key, &self.identity, self.pi.addr());
        c.uplinks = uplinks.iter().map(|ip| IpAddr::V4(*ip)).collect();
        c.uplink_retry = uplink_retry;
        c
    }

    /// A fresh signer-tunnel (the old one, if any, is killed first).
    fn fresh_client(&mut self, config: &TunnelConfig) -> anyhow::Result<()> {
        self.tunnel = None;
        self.tunnel = Some(TunnelClient::start(&self.dir, config)?);
        Ok(())
    }

    fn client(&self) -> anyhow::Result<&TunnelClient> {
        self.tunnel.as_ref().context("no tunnel client running")
    }

    /// (gateway log, every signer-tunnel run's log) so far.
    fn logs(&self) -> (String, String) {
        (
            self.gw.log(),
            fs::read_to_string(self.dir.join("signer-tunnel.log")).unwrap_or_default(),
        )
    }

    fn client_log_tail(&self) -> String {
        self.tunnel.as_ref().map(|t| t.log_tail(25)).unwrap_or_default()
    }

    /// pi's entry in `/status` `ssh.tunnels`.
    async fn tunnel_status(&self) -> anyhow::Result<Value> {
        let status = self.gw.status().await?;
        status["ssh"]["tunnels"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["signer"] == "pi"))
            .cloned()
            .with_context(|| format!("no ssh.tunnels entry for pi in /status: {status}"))
    }

    /// Wait for the next tick, sign a fresh attestation, tell who served it. `Err` only for a
    /// failure of the bench itself (the request's own failure is in the sample).
    async fn step(&mut self) -> anyhow::Result<Sample> {
        self.tick.tick().await;
        self.level += 1;
        let payload = attestation(TEST_CHAIN, self.level, 0, 1);
        let sent = Instant::now();
        let reply = self.http.sign(self.gw.api, "", self.pkh, &payload).await;
        let done = Instant::now();
        let result = match reply {
            Err(e) => Err(format!("{e:#}")),
            Ok((status, body))
                if status != StatusCode::OK || !body["signature"].as_str().is_some_and(|s| s.starts_with("edsig")) =>
            {
                Err(format!("{status} {body}"))
            }
            Ok(_) => {
                let want = Some(hex::encode(&payload));
                if self.backup.stats().last_sign_hex == want {
                    Ok(By::Backup)
                } else if self.pi.stats().await.context("reading pi's stats")?.last_sign_hex == want {
                    Ok(By::Pi)
                } else {
                    Err("answered 200 with a signature, but neither signer saw the payload".to_string())
                }
            }
        };
        Ok(Sample {
            done,
            took: done.duration_since(sent),
            result,
        })
    }

    /// Requests until one is served by pi with pi's tunnel from `peer_prefix`; returns when.
    async fn until_pi_serves(&mut self, peer_prefix: &str, within: Duration, what: &str) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            let s = self.step().await?;
            if s.by(By::Pi) {
                let t = self.tunnel_status().await?;
                if t["peer"].as_str().is_some_and(|p| p.starts_with(peer_prefix)) {
                    return Ok(s.done);
                }
            }
            if start.elapsed() > within {
                bail!(
                    "{what}: pi did not serve (tunnel from {peer_prefix}*) within {within:?}; last request: {:?}; \
                     tunnel: {}{}",
                    s.result,
                    self.tunnel_status().await.unwrap_or_default(),
                    self.client_log_tail()
                );
            }
        }
    }

    /// `n` requests that must all be served by pi: their latencies.
    async fn baseline(&mut self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let s = self.step().await?;
            ensure!(
                s.by(By::Pi),
                "before the fault, a request was not served by pi: {:?}",
                s.result
            );
            took.push(s.took);
        }
        Ok(took)
    }
}

fn p50_of(d: &[Duration]) -> Duration {
    let mut ns: Vec<u64> = d.iter().map(|d| d.as_nanos() as u64).collect();
    ns.sort_unstable();
    percentile(&ns, 50.0)
}

/// When a failover run restores the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// After this long.
    After(Duration),
    /// Right after the client logged its n-th failed reconnect ("cannot reach the
    /// gateway"): it is then sleeping its backoff, with no attempt pending.
    InBackoff(usize),
}

/// Poll the gateway's `/status` every 10 ms until signer `pi` is `up`; when it was seen.
fn watch_pi_up(admin: SocketAddr) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let client = Client::new().with_timeout(Duration::from_secs(2));
        let url = format!("http://{admin}/status");
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if let Ok((_, v)) = client.get(&url).await {
                let pi = v["signers"]
                    .as_array()
                    .and_then(|all| all.iter().find(|s| s["name"] == "pi"));
                if pi.is_some_and(|s| s["state"] == "up") {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    })
}

/// What one failover + recovery run measured.
#[derive(Debug, Clone)]
struct FailoverRun {
    baseline_p50: Duration,
    /// Blackhole → first answer by the backup.
    failover: Option<Duration>,
    /// Latency of the request that failed over.
    first_backup_took: Option<Duration>,
    slowest: Duration,
    requests: usize,
    failed: Vec<String>,
    client_noticed: Option<Duration>,
    gateway_dropped: Option<Duration>,
    /// Connections the client opened through the dead link, and whether one was still
    /// pending (accepted by the proxy, not yet failed) at the restore.
    attempts: u64,
    pending_at_restore: bool,
    /// The outage's length, and the backoff the client had just drawn (`InBackoff` runs).
    outage: Duration,
    backoff: Option<String>,
    restore_to_session: Option<Duration>,
    /// Restore → the gateway's pool has pi up (polled every 10 ms).
    restore_to_pool_up: Option<Duration>,
    restore_to_pi: Duration,
    session_to_pi: Option<Duration>,
}

async fn failover_run(rig: &mut Rig, restore: Restore) -> anyhow::Result<FailoverRun> {
    let config = rig.client_config(&[], Duration::from_secs(10));
    rig.fresh_client(&config)?;
    rig.until_pi_serves("127.0.0.1:", SETTLE, "before the fault").await?;
    let baseline = rig.baseline(BASELINE_REQUESTS).await?;

    let accepted_before = rig.proxy.accepted();
    rig.proxy.set_mode(ProxyMode::Blackhole);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut failover = None;
    let mut first_backup_took = None;
    let mut gateway_dropped = None;
    let mut backoff = None;
    loop {
        match restore {
            Restore::After(d) if t0.elapsed() >= d => break,
            Restore::After(_) => {}
            Restore::InBackoff(n) => {
                let failed = rig
                    .client()?
                    .log_lines("connection attempt failed")
                    .into_iter()
                    .filter(|(at, _)| *at >= t0)
                    .nth(n - 1);
                if let Some((_, line)) = failed {
                    backoff = Some(
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix("retry_in="))
                            .unwrap_or("?")
                            .to_string(),
                    );
                    break;
                }
                let bound = SETTLE + Duration::from_secs(15) * n as u32;
                ensure!(
                    t0.elapsed() < bound,
                    "the client did not fail {n} reconnect(s) through the dead link within {bound:?}{}",
                    rig.client_log_tail()
                );
            }
        }
        let s = rig.step().await?;
        if failover.is_none() && s.by(By::Backup) {
            failover = Some(s.done.duration_since(t0));
            first_backup_took = Some(s.took);
        }
        if gateway_dropped.is_none() && rig.tunnel_status().await?["connected"] == false {
            gateway_dropped = Some(t0.elapsed());
        }
        samples.push(s);
    }
    let client = rig.client()?;
    let client_noticed = client
        .log_lines("session ended")
        .into_iter()
        .find(|(at, _)| *at >= t0)
        .map(|(at, _)| at.duration_since(t0));
    let attempts = rig.proxy.accepted() - accepted_before;
    let failed_attempts = client
        .log_lines("connection attempt failed")
        .iter()
        .filter(|(at, _)| *at >= t0)
        .count() as u64;

    rig.proxy.set_mode(ProxyMode::Pass);
    let t1 = Instant::now();
    let outage = t1.duration_since(t0);
    let pool_up = watch_pi_up(rig.gw.admin);
    let mut served_by_pi = None;
    while served_by_pi.is_none() {
        let s = rig.step().await?;
        if s.by(By::Pi) {
            served_by_pi = Some(s.done);
        }
        samples.push(s);
        if served_by_pi.is_none() && t1.elapsed() > SETTLE {
            bail!(
                "after the restore pi did not serve within {SETTLE:?}; tunnel: {}{}",
                rig.tunnel_status().await.unwrap_or_default(),
                rig.client_log_tail()
            );
        }
    }
    let pi_at = served_by_pi.context("unreachable")?;
    let pool_up = pool_up.await.context("the /status poller panicked")?;
    let session_up = rig
        .client()?
        .log_lines("session up")
        .into_iter()
        .find(|(at, _)| *at >= t1)
        .map(|(at, _)| at);
    let failed = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(|e| format!("{e} (after {:?})", s.took)))
        .collect();
    Ok(FailoverRun {
        baseline_p50: p50_of(&baseline),
        failover,
        first_backup_took,
        slowest: samples.iter().map(|s| s.took).max().unwrap_or_default(),
        requests: samples.len(),
        failed,
        client_noticed,
        gateway_dropped,
        attempts,
        pending_at_restore: attempts > failed_attempts,
        outage,
        backoff,
        restore_to_session: session_up.map(|at| at.duration_since(t1)),
        restore_to_pool_up: pool_up.map(|at| at.saturating_duration_since(t1)),
        restore_to_pi: pi_at.duration_since(t1),
        session_to_pi: session_up.map(|at| pi_at.saturating_duration_since(at)),
    })
}

/// What one uplink run measured.
#[derive(Debug, Clone)]
struct UplinkRun {
    baseline_p50: Duration,
    /// Preferred blackholed → first answer by pi over the other uplink.
    switch: Duration,
    switch_slowest: Duration,
    switch_requests: usize,
    switch_by_backup: usize,
    switch_failed: Vec<String>,
    /// Preferred restored → tunnel back on it (gateway /status).
    back: Duration,
    back_slowest: Duration,
    back_requests: usize,
    back_failed: Vec<String>,
    /// The route went down during the switch back (last_disconnect changed).
    back_route_went_down: bool,
}

fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(|e| format!("{e} (after {:?})", s.took)))
        .collect()
}

async fn uplink_run(rig: &mut Rig, opts: &Opts) -> anyhow::Result<UplinkRun> {
    let (preferred, other) = (IpAddr::V4(UPLINKS[0]), IpAddr::V4(UPLINKS[1]));
    let config = rig.client_config(&UPLINKS, opts.uplink_retry);
    rig.fresh_client(&config)?;
    rig.until_pi_serves("127.0.0.2:", SETTLE, "before the uplink fault")
        .await?;
    let baseline = rig.baseline(BASELINE_REQUESTS).await?;

    rig.proxy.set_mode_for_source(preferred, ProxyMode::Blackhole);
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let switched = loop {
        let s = rig.step().await?;
        let pi = s.by(By::Pi);
        let done = s.done;
        samples.push(s);
        if pi {
            let t = rig.tunnel_status().await?;
            if t["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.3:")) {
                break done.duration_since(t0);
            }
        }
        if t0.elapsed() > SETTLE {
            bail!(
                "pi did not serve over the other uplink within {SETTLE:?} of blackholing the preferred one; tunnel: \
                 {}{}",
                rig.tunnel_status().await.unwrap_or_default(),
                rig.client_log_tail()
            );
        }
    };
    // A few more requests on the new uplink belong to the switch.
    for _ in 0..5 {
        samples.push(rig.step().await?);
    }
    ensure!(rig.proxy.accepted_from(other) > 0, "no connection came from {other}");
    let disconnect_before = rig.tunnel_status().await?["last_disconnect"].clone();

    rig.proxy.set_mode_for_source(preferred, ProxyMode::Pass);
    let t1 = Instant::now();
    let bound = opts.uplink_retry + config.connect_timeout + SETTLE;
    let mut back_samples = Vec::new();
    let mut back = None;
    let mut after_back = 0;
    while after_back < 10 {
        let s = rig.step().await?;
        back_samples.push(s);
        if back.is_some() {
            after_back += 1;
            continue;
        }
        let t = rig.tunnel_status().await?;
        if t["connected"] == true && t["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.2:")) {
            back = Some(t1.elapsed());
        } else if t1.elapsed() > bound {
            bail!(
                "the client did not move back to the preferred uplink within {bound:?}: {t}{}",
                rig.client_log_tail()
            );
        }
    }
    let after = rig.tunnel_status().await?;
    Ok(UplinkRun {
        baseline_p50: p50_of(&baseline),
        switch: switched,
        switch_slowest: samples.iter().map(|s| s.took).max().unwrap_or_default(),
        switch_requests: samples.len(),
        switch_by_backup: samples.iter().filter(|s| s.by(By::Backup)).count(),
        switch_failed: failures(&samples),
        back: back.context("unreachable")?,
        back_slowest: back_samples.iter().map(|s| s.took).max().unwrap_or_default(),
        back_requests: back_samples.len(),
        back_failed: failures(&back_samples),
        back_route_went_down: after["last_disconnect"] != disconnect_before,
    })
}

fn row(what: &str, settings: &str, runs: usize, v: (String, String, String), target: &str, result: &str) {
    println!(
        "| {what} | {settings} | {runs} | {} | {} | {} | {target} | {result} |",
        v.0, v.1, v.2
    );
}

fn print_failover(profile: &str, settings: &str, runs: &[FailoverRun], targets: &mut Targets) {
    let n = runs.len();
    println!();
    println!("### {profile}: {settings}");
    println!();
    println!("| measure | settings | runs | min | median | max | target | result |");
    println!("|:--|:--|--:|--:|--:|--:|:--|:--|");
    let all_failed_over = runs.iter().all(|r| r.failover.is_some());
    let fo: Vec<Duration> = runs.iter().filter_map(|r| r.failover).collect();
    let worst = fo.iter().max().copied();
    let ok = all_failed_over && worst.is_some_and(|w| w <= FAILOVER_TARGET);
    let fo_text = if all_failed_over {
        spread(&fo)
    } else {
        let (a, b, _) = spread(&fo);
        (a, b, "never (within the outage)".into())
    };
    row(
        "failover window: blackhole -> first answer by the backup",
        profile,
        n,
        fo_text,
        "<= 2 s",
        targets.check(
            format!("{profile}: failover window (worst {}) <= 2 s", opt_secs(worst)),
            ok,
        ),
    );
    let failed: Vec<usize> = runs.iter().map(|r| r.failed.len()).collect();
    let total_failed: usize = failed.iter().sum();
    row(
        "failed requests (outage + recovery)",
        profile,
        n,
        count_spread(&failed),
        "0",
        targets.check(
            format!("{profile}: {total_failed} failed request(s) during failover/recovery"),
            total_failed == 0,
        ),
    );
    let slowest: Vec<Duration> = runs.iter().map(|r| r.slowest).collect();
    row(
        "slowest request (outage + recovery)",
        profile,
        n,
        spread(&slowest),
        "-",
        "-",
    );
    let to_pi: Vec<Duration> = runs.iter().map(|r| r.restore_to_pi).collect();
    row(
        "recovery: link restored -> pi serving",
        profile,
        n,
        spread(&to_pi),
        "<= 2 s",
        targets.check(
            format!(
                "{profile}: link restored -> pi serving (worst {}) <= 2 s",
                opt_secs(to_pi.iter().max().copied())
            ),
            to_pi.iter().all(|d| *d <= AFTER_RESTORE_TARGET),
        ),
    );
    let s2p: Vec<Duration> = runs.iter().filter_map(|r| r.session_to_pi).collect();
    let all_s2p = s2p.len() == n;
    row(
        "recovery: session up -> pi serving",
        profile,
        n,
        spread(&s2p),
        "<= 1 s",
        targets.check(
            format!(
                "{profile}: session up -> pi serving (worst {}) <= 1 s",
                opt_secs(s2p.iter().max().copied())
            ),
            all_s2p && s2p.iter().all(|d| *d <= AFTER_SESSION_TARGET),
        ),
    );
    let r2s: Vec<Duration> = runs.iter().filter_map(|r| r.restore_to_session).collect();
    row("(link restored -> session up)", profile, n, spread(&r2s), "-", "-");
    let r2u: Vec<Duration> = runs.iter().filter_map(|r| r.restore_to_pool_up).collect();
    row(
        "(link restored -> gateway pool has pi up, /status polled every 10 ms)",
        profile,
        r2u.len(),
        spread(&r2u),
        "-",
        "-",
    );
    let noticed: Vec<Duration> = runs.iter().filter_map(|r| r.client_noticed).collect();
    row(
        "(client noticed the dead link: \"session ended\")",
        profile,
        noticed.len(),
        spread(&noticed),
        "-",
        "-",
    );
    let dropped: Vec<Duration> = runs.iter().filter_map(|r| r.gateway_dropped).collect();
    row(
        "(gateway dropped the route: /status connected=false)",
        profile,
        dropped.len(),
        spread(&dropped),
        "-",
        "-",
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "  run {}: outage {}{}; normal p50 {} ms; failover {} (that request took {}); {} requests, {} failed; \
             client noticed after {}, gateway dropped the route after {}; {} connection attempt(s) through the dead \
             link, {} at the restore; restore -> session up {}, -> pool has pi up {}, -> pi serving {}; session up \
             -> pi serving {}",
            i + 1,
            secs(r.outage),
            r.backoff.as_ref().map_or(String::new(), |b| format!(
                " (restored right after a failed reconnect; backoff drawn: {b})"
            )),
            ms(r.baseline_p50),
            opt_secs(r.failover),
            opt_secs(r.first_backup_took),
            r.requests,
            r.failed.len(),
            opt_secs(r.client_noticed),
            opt_secs(r.gateway_dropped),
            r.attempts,
            if r.pending_at_restore {
                "one pending"
            } else {
                "none pending (client in backoff)"
            },
            opt_secs(r.restore_to_session),
            opt_secs(r.restore_to_pool_up),
            secs(r.restore_to_pi),
            opt_secs(r.session_to_pi)
        );
        for f in r.failed.iter().take(MAX_ERROR_SAMPLES) {
            println!("    failed: {f}");
        }
    }
}

fn print_uplinks(settings: &str, client: &str, runs: &[UplinkRun], targets: &mut Targets) {
    let n = runs.len();
    println!();
    println!("### Uplink switch: gateway {settings}; client {client}");
    println!();
    println!("| measure | settings | runs | min | median | max | target | result |");
    println!("|:--|:--|--:|--:|--:|--:|:--|:--|");
    let p = "production";
    let sw: Vec<Duration> = runs.iter().map(|r| r.switch).collect();
    row(
        "preferred uplink blackholed -> pi serving over the other",
        p,
        n,
        spread(&sw),
        "-",
        "-",
    );
    let sf: Vec<usize> = runs.iter().map(|r| r.switch_failed.len()).collect();
    let total: usize = sf.iter().sum();
    row(
        "failed requests during the switch",
        p,
        n,
        count_spread(&sf),
        "0",
        targets.check(format!("uplink switch: {total} failed request(s)"), total == 0),
    );
    let extra: Vec<Duration> = runs
        .iter()
        .map(|r| r.switch_slowest.saturating_sub(r.baseline_p50))
        .collect();
    row(
        "extra latency during the switch (slowest - normal p50)",
        p,
        n,
        spread(&extra),
        "<= 2 s",
        targets.check(
            format!(
                "uplink switch: extra latency (worst {}) <= 2 s",
                opt_secs(extra.iter().max().copied())
            ),
            extra.iter().all(|d| *d <= EXTRA_LATENCY_TARGET),
        ),
    );
    let back: Vec<Duration> = runs.iter().map(|r| r.back).collect();
    row("preferred restored -> tunnel back on it", p, n, spread(&back), "-", "-");
    let bf: Vec<usize> = runs.iter().map(|r| r.back_failed.len()).collect();
    let total: usize = bf.iter().sum();
    row(
        "failed requests during the switch back",
        p,
        n,
        count_spread(&bf),
        "0",
        targets.check(format!("uplink switch back: {total} failed request(s)"), total == 0),
    );
    let extra: Vec<Duration> = runs
        .iter()
        .map(|r| r.back_slowest.saturating_sub(r.baseline_p50))
        .collect();
    row(
        "extra latency during the switch back (slowest - normal p50)",
        p,
        n,
        spread(&extra),
        "<= 2 s",
        targets.check(
            format!(
                "uplink switch back: extra latency (worst {}) <= 2 s",
                opt_secs(extra.iter().max().copied())
            ),
            extra.iter().all(|d| *d <= EXTRA_LATENCY_TARGET),
        ),
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "  run {}: normal p50 {} ms; switch {} ({} requests, {} by the backup, {} failed, slowest {} ms); back {} \
             ({} requests, {} failed, slowest {} ms, route went down: {})",
            i + 1,
            ms(r.baseline_p50),
            secs(r.switch),
            r.switch_requests,
            r.switch_by_backup,
            r.switch_failed.len(),
            ms(r.switch_slowest),
            secs(r.back),
            r.back_requests,
            r.back_failed.len(),
            ms(r.back_slowest),
            r.back_route_went_down
        );
        for f in r.switch_failed.iter().chain(&r.back_failed).take(MAX_ERROR_SAMPLES) {
            println!("    failed: {f}");
        }
    }
}

fn print_footprint(rows: &[String], prints: &[(&'static str, Footprint)], targets: &mut Targets) {
    println!();
    println!("## 5. Client footprint");
    println!();
    println!("| measure | value | target | result |");
    println!("|:--|--:|:--|:--|");
    for r in rows {
        println!("{r}");
    }
    for (label, f) in prints {
        let ours = label.contains("signer-tunnel");
        let who = if ours { "signer-tunnel" } else { "OpenSSH ssh" };
        let check = |targets: &mut Targets, what: &str, kb: u64| -> String {
            if ours {
                targets
                    .check(
                        format!("{who} {what} {} <= 10 MiB ({label})", kib_as_mib(kb)),
                        kb <= RSS_TARGET_KB,
                    )
                    .to_string()
            } else {
                "(comparison)".to_string()
            }
        };
        let target = if ours { "<= 10.00 MiB" } else { "-" };
        let v = check(targets, "idle VmRSS", f.idle_rss);
        println!(
            "| {who} VmRSS idle, tunnel up, no traffic ({label}; RssAnon {}, RssFile {}) | {} | {target} | {v} |",
            kib_as_mib(f.idle_anon),
            kib_as_mib(f.idle_file),
            kib_as_mib(f.idle_rss)
        );
        let v = check(targets, "VmRSS under load", f.load_peak_rss);
        println!(
            "| {who} VmRSS under {} concurrent signs, largest sample ({label}) | {} | {target} | {v} |",
            f.load_clients,
            kib_as_mib(f.load_peak_rss)
        );
        let v = check(targets, "VmHWM", f.end_hwm);
        println!(
            "| {who} VmHWM, peak over its whole life ({label}) | {} | {target} | {v} |",
            kib_as_mib(f.end_hwm)
        );
        println!(
            "| {who} VmRSS after the load ({label}) | {} | - | - |",
            kib_as_mib(f.end_rss)
        );
        let _ = f.idle_hwm;
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(opts: &Opts) -> anyhow::Result<Targets> {
    let mut targets = Targets::default();
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
        "  {} cores; this process: {} worker thread(s); temp dir {} ({})",
        cores(),
        opts.load_threads,
        work.path().display(),
        filesystem_of(work.path())
    );
    let idle = {
        let a = machine_jiffies();
        tokio::time::sleep(Duration::from_millis(500)).await;
        machine_cores(a, machine_jiffies())
    };
    println!("  machine busy before starting (other processes): {idle:.2} cores");
    let (identity, public) = keygen(work.path(), "tunnel-bench").await?;

    let mut size_rows = Vec::new();
    if opts.has(Part::Footprint) {
        size_rows = binary_sizes(work.path(), &mut targets)?;
    }

    let mut latency = None;
    if opts.has(Part::Latency) {
        println!();
        println!("Part 1: latency and throughput ...");
        latency = Some(latency_part(opts, work.path(), &identity, &public).await?);
    }

    let mut failover_reports = Vec::new();
    if opts.has(Part::Failover) {
        let outage = Restore::After(opts.outage);
        for (profile, label, restore, runs) in [
            (PRODUCTION, "production", outage, opts.runs),
            (
                PRODUCTION,
                "production, restored in backoff",
                Restore::InBackoff(opts.backoff_failures),
                opts.backoff_runs,
            ),
            (EXAMPLE_DEFAULTS, "example defaults", outage, opts.default_runs),
        ] {
            if runs == 0 {
                continue;
            }
            println!();
            println!("Parts 2-3: failover and recovery, {label}: {runs} run(s), restore {restore:?} ...");
            let mut rig = Rig::start(profile, label, work.path(), &identity, &public, opts.every).await?;
            let mut results = Vec::new();
            for i in 0..runs {
                let r = failover_run(&mut rig, restore)
                    .await
                    .with_context(|| format!("{label}, failover run {}", i + 1))?;
                println!(
                    "  run {}: failover {}, {} failed, restore -> pi {}, session up -> pi {}",
                    i + 1,
                    opt_secs(r.failover),
                    r.failed.len(),
                    secs(r.restore_to_pi),
                    opt_secs(r.session_to_pi)
                );
                results.push(r);
            }
            let client = describe_client(&rig.client_config(&[], Duration::from_secs(10)));
            failover_reports.push((label, rig.settings.clone(), client, results, rig.logs()));
        }
    }

    let mut uplink_report = None;
    if opts.has(Part::Uplinks) {
        println!();
        println!(
            "Part 4: uplink switch, {} run(s), uplink_retry {:?} ...",
            opts.runs, opts.uplink_retry
        );
        let mut rig = Rig::start(PRODUCTION, "uplinks", work.path(), &identity, &public, opts.every).await?;
        let mut results = Vec::new();
        for i in 0..opts.runs {
            let r = uplink_run(&mut rig, opts)
                .await
                .with_context(|| format!("uplink run {}", i + 1))?;
            println!(
                "  run {}: switch {}, {} failed; back {}, {} failed",
                i + 1,
                secs(r.switch),
                r.switch_failed.len(),
                secs(r.back),
                r.back_failed.len()
            );
            results.push(r);
        }
        let client = describe_client(&rig.client_config(&UPLINKS, opts.uplink_retry));
        uplink_report = Some((rig.settings.clone(), client, results, rig.logs()));
    }

    // Report.
    if let Some(l) = &latency {
        print_latency(opts, l, &mut targets)?;
    }
    if !failover_reports.is_empty() {
        println!();
        println!(
            "## 2-3. Failover and recovery (one request every {:?}; link blackholed for {:?}, or until the client's \
             first failed reconnect, then restored)",
            opts.every, opts.outage
        );
        if let Some((_, _, client, _, _)) = failover_reports.first() {
            println!();
            println!("Client (deploy/examples/signer-tunnel.yaml defaults): {client}");
        }
        for (name, settings, _, runs, (gw_log, client_log)) in &failover_reports {
            print_failover(name, settings, runs, &mut targets);
            print_log_summary("gateway", gw_log);
            print_log_summary("signer-tunnel (all runs)", client_log);
        }
    }
    if let Some((settings, client, runs, (gw_log, client_log))) = &uplink_report {
        println!();
        println!(
            "## 4. Uplink switch (127.0.0.2 preferred, 127.0.0.3; one request every {:?})",
            opts.every
        );
        print_uplinks(settings, client, runs, &mut targets);
        print_log_summary("gateway", gw_log);
        print_log_summary("signer-tunnel (all runs)", client_log);
    }
    if opts.has(Part::Footprint) {
        let prints = latency.as_ref().map(|l| l.footprints.clone()).unwrap_or_default();
        print_footprint(&size_rows, &prints, &mut targets);
        if prints.is_empty() {
            println!("  (RSS is measured during part 1: add latency to TUNNEL_BENCH_PARTS)");
        }
    }
    Ok(targets)
}

fn main() -> ExitCode {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tunnel bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.load_threads)
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
    let result = runtime.block_on(run(&opts));
    drop(runtime);
    match result {
        Ok(targets) => {
            println!();
            println!("Targets ({} s in all):", started.elapsed().as_secs());
            let mut missed = 0;
            for (what, ok) in &targets.0 {
                println!("  {}  {what}", verdict(*ok));
                missed += usize::from(!ok);
            }
            println!(
                "  {} PASS, {missed} MISS (a MISS does not fail the run)",
                targets.0.len() - missed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!();
            eprintln!("tunnel bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
