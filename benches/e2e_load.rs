//! End-to-end sign latency and throughput: HTTP clients → (gateway →) test signer, all in this
//! process, over loopback. See `BENCHMARKS.md` ("End-to-end sign latency and throughput") for
//! how to read the output.
//!
//! Scenarios: {direct to the test signer, gateway + memory store, gateway + file store} ×
//! {1 client, 16 clients over 16 distinct keys}. Each client task owns one keep-alive
//! connection and one key, and sends attestations at strictly increasing levels, one request
//! at a time. Per scenario: requests/s, p50, p99, errors (any error fails the run), and the
//! CPU time each group of threads used. The raw durable write (temp file, fsync, rename,
//! directory fsync: the gateway's own `durable_write`) is timed in the same directory tree just
//! before the file-store scenarios and again at the end, and the targets are checked:
//! added p50 (gateway with file store − direct) ≤ raw durable write p50 + 0.3 ms, and
//! ≥ 5,000 signs/s with the file store and 16 clients. For the gateway it also reports the mean
//! watermark wait and in-gateway time (from its own metrics) and the number of durable writes
//! the file store made (renames onto its state file, counted with inotify).
//!
//! Layout: three multi-thread runtimes in one process, the gateway's (`gw-rt`, 2 workers, as
//! `#[tokio::main]` would give it on 2 cores), the test signer's (`signer-rt`, 1 worker) and the
//! load generator's (`load-rt`, 1 worker), so that each one's CPU time can be read per thread
//! from /proc and a busy load generator does not steal the gateway's workers inside one
//! scheduler. They still share the machine's cores, as the OS schedules them.
//!
//! Run: `cargo bench --bench e2e_load` (the whole run takes about 30 s with the defaults).
//!
//! Options (flag or environment variable; flags win):
//! - `--secs <s>` / `E2E_LOAD_SECS`: measured seconds per scenario (default 3)
//! - `--warmup <n>` / `E2E_LOAD_WARMUP`: requests discarded per scenario before measuring,
//!   spread over its clients, at least 20 per client (default 100)
//! - `--clients <list>` / `E2E_LOAD_CLIENTS`: client counts, comma separated (default `1,16`)
//! - `--targets <list>` / `E2E_LOAD_TARGETS`: any of `direct,memory,file` (default all three)
//! - `--writes <n>` / `E2E_LOAD_WRITES`: raw durable writes timed, before and again after the
//!   file-store scenarios (default 200 each)
//! - `--dir <path>` / `E2E_LOAD_DIR`: where the temporary stores go; must be on the disk the
//!   gateway's store would use (default: the system temp dir)
//! - `--gateway-threads`, `--signer-threads`, `--load-threads` (`E2E_LOAD_GATEWAY_THREADS`, …):
//!   worker threads of the three runtimes (defaults 2, 1, 1)

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use signer_gateway::config::Config;
use signer_gateway::watermark::durable_write;
use signer_gateway::Gateway;
use testkit::test_signer::{seed, Mode, TestSigner, TestSignerOptions};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

mod common;
use common::{filesystem_of, RenameCounter};

/// Chain id in the payloads (mainnet's bytes; the gateway does not care which).
const CHAIN: [u8; 4] = [0x7a, 0x06, 0xa7, 0x70];
/// Bound on one request; a stuck request is an error, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Latency target: added p50 ≤ raw durable write p50 + this.
const ADDED_P50_SLACK: Duration = Duration::from_micros(300);
/// Throughput target with the file store and 16 clients over distinct keys.
const TARGET_RPS: f64 = 5000.0;
/// Client count the throughput target applies to.
const TARGET_CLIENTS: usize = 16;
/// Raw durable writes discarded before timing.
const WRITE_WARMUP: usize = 10;
/// Bytes per raw durable write, per key: about what the file store's state file holds for one
/// key with its last signature (16 keys gave 5,988 B).
const FLOOR_BYTES_PER_KEY: usize = 384;
/// The file store's state file: each durable write renames its temp file onto this name.
const STATE_FILE: &str = "watermarks.json";
/// Error messages kept per scenario.
const MAX_ERROR_SAMPLES: usize = 5;

#[derive(Debug, Clone)]
struct Opts {
    secs: f64,
    warmup: usize,
    clients: Vec<usize>,
    targets: Vec<Target>,
    writes: usize,
    dir: PathBuf,
    gateway_threads: usize,
    signer_threads: usize,
    load_threads: usize,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let mut vals: HashMap<&'static str, String> = HashMap::new();
        const KEYS: [(&str, &str); 9] = [
            ("secs", "E2E_LOAD_SECS"),
            ("warmup", "E2E_LOAD_WARMUP"),
            ("clients", "E2E_LOAD_CLIENTS"),
            ("targets", "E2E_LOAD_TARGETS"),
            ("writes", "E2E_LOAD_WRITES"),
            ("dir", "E2E_LOAD_DIR"),
            ("gateway-threads", "E2E_LOAD_GATEWAY_THREADS"),
            ("signer-threads", "E2E_LOAD_SIGNER_THREADS"),
            ("load-threads", "E2E_LOAD_LOAD_THREADS"),
        ];
        for (key, env) in KEYS {
            if let Ok(v) = std::env::var(env) {
                vals.insert(key, v);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to every harness-less target.
            if arg == "--bench" {
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let Some((key, _)) = KEYS.iter().find(|(k, _)| name.strip_prefix("--") == Some(*k)) else {
                return Err(format!(
                    "unknown argument {arg:?}; expected --secs, --warmup, --clients, --targets, --writes, --dir, \
                     --gateway-threads, --signer-threads or --load-threads"
                ));
            };
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
            };
            vals.insert(key, value);
        }
        fn num<T: std::str::FromStr>(vals: &HashMap<&str, String>, key: &str, default: T) -> Result<T, String> {
            match vals.get(key) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| format!("{key}: cannot parse {v:?}")),
            }
        }
        let clients = match vals.get("clients") {
            None => vec![1, 16],
            Some(v) => v
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("clients: cannot parse {c:?}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let targets = match vals.get("targets") {
            None => vec![Target::Direct, Target::Memory, Target::File],
            Some(v) => v
                .split(',')
                .map(|t| match t.trim() {
                    "direct" => Ok(Target::Direct),
                    "memory" => Ok(Target::Memory),
                    "file" => Ok(Target::File),
                    other => Err(format!("targets: {other:?} is not direct, memory or file")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let opts = Opts {
            secs: num(&vals, "secs", 3.0)?,
            warmup: num(&vals, "warmup", 100)?,
            clients,
            targets,
            writes: num(&vals, "writes", 200)?,
            dir: vals.get("dir").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
            gateway_threads: num(&vals, "gateway-threads", 2)?,
            signer_threads: num(&vals, "signer-threads", 1)?,
            load_threads: num(&vals, "load-threads", 1)?,
        };
        if !(opts.secs > 0.0 && opts.secs.is_finite()) {
            return Err(format!("secs must be positive, got {}", opts.secs));
        }
        if opts.clients.iter().any(|&c| c == 0 || c > 255) {
            return Err("clients must be between 1 and 255 (one test key each)".into());
        }
        if opts.gateway_threads == 0 || opts.signer_threads == 0 || opts.load_threads == 0 {
            return Err("thread counts must be at least 1".into());
        }
        Ok(opts)
    }
}

/// Who answers the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Memory,
    File,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct to test signer",
            Target::Memory => "gateway + memory store",
            Target::File => "gateway + file store",
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone)]
struct Outcome {
    target: Target,
    clients: usize,
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    errors: usize,
    error_samples: Vec<String>,
    cpu: CpuUse,
    /// Durable writes of the file store's state during the window (renames onto it, counted
    /// with inotify).
    store_writes: Option<u64>,
    /// Mean watermark check-and-record time inside the gateway during the window.
    watermark_mean: Option<Duration>,
    /// Mean in-gateway time of a successful sign during the window.
    gateway_sign_mean: Option<Duration>,
    /// Size of the file store's state file after the scenario.
    state_bytes: Option<u64>,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// CPU time used during a window, in cores (1.0 = one core busy for the whole window).
#[derive(Debug, Clone, Default)]
struct CpuUse {
    gateway: f64,
    writer: f64,
    signer: f64,
    load: f64,
    other: f64,
    /// Whole machine, every process (from /proc/stat).
    machine: f64,
}

impl CpuUse {
    fn ours(&self) -> f64 {
        self.gateway + self.writer + self.signer + self.load + self.other
    }
}

// ---------------------------------------------------------------------------------------------
// Per-thread accounting from /proc (Linux only; zeros elsewhere).

#[derive(Debug, Clone)]
struct ThreadSample {
    comm: String,
    cpu_ns: u64,
}

#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    threads: HashMap<u32, ThreadSample>,
    /// (busy, total) jiffies of the whole machine.
    machine: Option<(u64, u64)>,
}

fn snapshot() -> Snapshot {
    let mut threads = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = entry.path();
            let comm = fs::read_to_string(path.join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            // First field of schedstat: nanoseconds spent running.
            let cpu_ns = fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            threads.insert(tid, ThreadSample { comm, cpu_ns });
        }
    }
    let machine = fs::read_to_string("/proc/stat").ok().and_then(|s| {
        let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
        let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal …
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Some((total - idle, total))
    });
    Snapshot {
        at: Instant::now(),
        threads,
        machine,
    }
}

/// CPU use between two snapshots.
fn cpu_between(a: &Snapshot, b: &Snapshot) -> CpuUse {
    let wall_ns = b.at.duration_since(a.at).as_nanos().max(1) as f64;
    let mut cpu = CpuUse::default();
    for (tid, after) in &b.threads {
        let cpu0 = a.threads.get(tid).map_or(0, |s| s.cpu_ns);
        let cores = after.cpu_ns.saturating_sub(cpu0) as f64 / wall_ns;
        let comm = after.comm.as_str();
        if comm.starts_with("gw-") {
            cpu.gateway += cores;
        } else if comm.starts_with("watermark-writ") {
            cpu.writer += cores;
        } else if comm.starts_with("signer-") {
            cpu.signer += cores;
        } else if comm.starts_with("load-") {
            cpu.load += cores;
        } else {
            cpu.other += cores;
        }
    }
    if let (Some((busy0, total0)), Some((busy1, total1))) = (a.machine, b.machine) {
        let total = total1.saturating_sub(total0).max(1) as f64;
        cpu.machine = busy1.saturating_sub(busy0) as f64 / total * cores_available() as f64;
    }
    cpu
}

fn cores_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Load generation.

/// An 80-byte attestation: magic 0x13, chain, branch, tag 21, slot, level, round, payload hash.
fn attestation(level: i32) -> [u8; 80] {
    let mut b = [0u8; 80];
    b[0] = 0x13;
    b[1..5].copy_from_slice(&CHAIN);
    b[5..37].fill(0xbb); // branch
    b[37] = 21;
    b[38..40].copy_from_slice(&0u16.to_be_bytes()); // slot
    b[40..44].copy_from_slice(&level.to_be_bytes());
    b[44..48].copy_from_slice(&0i32.to_be_bytes()); // round
    b[48..80].fill(0xaa); // payload hash
    b
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client with its own pool: run sequentially, it keeps exactly one keep-alive connection.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// One sign request; `Ok` only for a 200 carrying an `edsig…` signature.
async fn sign(client: &HttpClient, uri: &http::Uri, level: i32) -> Result<(), String> {
    let body = format!("\"{}\"", hex::encode(attestation(level)));
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
        if status != http::StatusCode::OK {
            return Err(format!(
                "level {level}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("level {level}: body is not JSON: {e}"))?;
        match json.get("signature").and_then(|s| s.as_str()) {
            Some(s) if s.starts_with("edsig") => Ok(()),
            _ => Err(format!("level {level}: no edsig signature in {json}")),
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("level {level}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

struct ClientResult {
    latencies_ns: Vec<u64>,
    errors: usize,
    error_samples: Vec<String>,
    started: Instant,
    ended: Instant,
}

/// One client: `warmup` unmeasured requests, then the barrier, then requests until `secs`
/// have passed. Levels strictly increase (the watermark refuses anything else).
async fn client_task(uri: http::Uri, warmup: usize, secs: f64, barrier: Arc<Barrier>) -> ClientResult {
    let client = http_client();
    let mut level: i32 = 0;
    let mut errors = 0;
    let mut error_samples = Vec::new();
    let mut note = |e: String, errors: &mut usize| {
        *errors += 1;
        if error_samples.len() < MAX_ERROR_SAMPLES {
            error_samples.push(e);
        }
    };
    for _ in 0..warmup {
        level += 1;
        if let Err(e) = sign(&client, &uri, level).await {
            note(format!("warm-up: {e}"), &mut errors);
        }
    }
    barrier.wait().await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut latencies_ns = Vec::with_capacity(16 * 1024);
    loop {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        level += 1;
        match sign(&client, &uri, level).await {
            Ok(()) => latencies_ns.push(t0.elapsed().as_nanos() as u64),
            Err(e) => note(e, &mut errors),
        }
    }
    ClientResult {
        latencies_ns,
        errors,
        error_samples,
        started,
        ended: Instant::now(),
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Duration::from_nanos(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Gateway metrics read from the admin port: (watermark sum s, count, sign sum s, sign count).
async fn gateway_metrics(admin: SocketAddr) -> Option<(f64, f64, f64, f64)> {
    let client = http_client();
    let uri: http::Uri = format!("http://{admin}/metrics").parse().ok()?;
    let req = http::Request::get(uri).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let sum_of = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum_of("signer_gateway_watermark_duration_seconds_sum"),
        sum_of("signer_gateway_watermark_duration_seconds_count"),
        sum_of("signer_gateway_sign_duration_seconds_sum"),
        sum_of("signer_gateway_sign_duration_seconds_count"),
    ))
}

struct Window {
    latencies_ns: Vec<u64>,
    errors: usize,
    error_samples: Vec<String>,
    elapsed: Duration,
    cpu: CpuUse,
    store_writes: Option<u64>,
    metrics: Option<(f64, f64, f64, f64)>,
}

/// Drive `pkhs.len()` clients against `base` (one key each) and measure one window.
async fn drive(
    base: SocketAddr,
    admin: Option<SocketAddr>,
    renames: Option<&RenameCounter>,
    pkhs: &[String],
    opts: &Opts,
) -> Window {
    let n = pkhs.len();
    let warmup = opts.warmup.div_ceil(n).max(20);
    let barrier = Arc::new(Barrier::new(n + 1));
    let tasks: Vec<_> = pkhs
        .iter()
        .map(|pkh| {
            let uri: http::Uri = format!("http://{base}/keys/{pkh}").parse().expect("request URI");
            tokio::spawn(client_task(uri, warmup, opts.secs, barrier.clone()))
        })
        .collect();
    barrier.wait().await;
    // Taken just after the clients are released; a few hundred microseconds of /proc reads.
    let before = snapshot();
    let renames_before = renames.map(RenameCounter::count);
    let metrics_before = match admin {
        Some(a) => gateway_metrics(a).await,
        None => None,
    };
    let mut results = Vec::with_capacity(n);
    for t in tasks {
        results.push(t.await.expect("client task panicked"));
    }
    let metrics_after = match admin {
        Some(a) => gateway_metrics(a).await,
        None => None,
    };
    let renames_after = renames.map(RenameCounter::count);
    let after = snapshot();
    let cpu = cpu_between(&before, &after);
    let started = results.iter().map(|r| r.started).min().expect("at least one client");
    let ended = results.iter().map(|r| r.ended).max().expect("at least one client");
    let mut latencies_ns = Vec::new();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for r in results {
        latencies_ns.extend(r.latencies_ns);
        errors += r.errors;
        error_samples.extend(r.error_samples);
    }
    error_samples.truncate(MAX_ERROR_SAMPLES);
    let metrics = match (metrics_before, metrics_after) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1, b.2 - a.2, b.3 - a.3)),
        _ => None,
    };
    Window {
        latencies_ns,
        errors,
        error_samples,
        elapsed: ended - started,
        cpu,
        store_writes: renames_before.zip(renames_after).map(|(a, b)| b - a),
        metrics,
    }
}

fn runtime(name: &'static str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

fn gateway_yaml(signer: SocketAddr, target: Target, store_dir: &Path) -> String {
    let watermark = match target {
        Target::File => format!(
            "{{backend: file, dir: {}, create_if_missing: true}}",
            serde_json::to_string(&store_dir.to_string_lossy()).expect("a path as a JSON string")
        ),
        _ => "{backend: memory}".to_owned(),
    };
    format!(
        "api: {{listen: 127.0.0.1:0}}\n\
         admin: {{listen: 127.0.0.1:0}}\n\
         watermark: {watermark}\n\
         signers:\n  - {{name: primary, address: \"{signer}\"}}\n\
         request_timeout: 2s\n\
         health_check: {{interval: 1s}}\n\
         shutdown_grace: 1s\n"
    )
}

struct Env<'a> {
    opts: &'a Opts,
    load_rt: &'a Runtime,
    gateway_rt: &'a Runtime,
    signer_addr: SocketAddr,
    pkhs: &'a [String],
    work: &'a Path,
}

fn run_scenario(env: &Env<'_>, target: Target, clients: usize) -> Outcome {
    let pkhs = &env.pkhs[..clients];
    let store_dir = env.work.join(format!("wm-{clients}"));
    let (window, state_bytes) = if target == Target::Direct {
        (
            env.load_rt.block_on(drive(env.signer_addr, None, None, pkhs, env.opts)),
            None,
        )
    } else {
        // Watch the store directory before the gateway creates its state file in it.
        let renames = if target == Target::File {
            fs::create_dir_all(&store_dir).expect("creating the store directory");
            match RenameCounter::watch(&store_dir, STATE_FILE) {
                Ok(r) => Some(r),
                Err(e) => {
                    println!("  (cannot count durable writes with inotify: {e})");
                    None
                }
            }
        } else {
            None
        };
        let settings = Config::parse(&gateway_yaml(env.signer_addr, target, &store_dir)).expect("gateway config");
        let gateway = env
            .gateway_rt
            .block_on(Gateway::start(settings))
            .expect("starting the gateway");
        let api = gateway.api_addr().expect("api address");
        let admin = gateway.admin_addr().expect("admin address");
        let shutdown = CancellationToken::new();
        let running = env.gateway_rt.spawn(gateway.run(shutdown.clone()));
        let window = env
            .load_rt
            .block_on(drive(api, Some(admin), renames.as_ref(), pkhs, env.opts));
        shutdown.cancel();
        env.gateway_rt.block_on(running).expect("gateway task panicked");
        let state_bytes = (target == Target::File)
            .then(|| fs::metadata(store_dir.join(STATE_FILE)).map(|m| m.len()).ok())
            .flatten();
        (window, state_bytes)
    };
    let mut lat = window.latencies_ns;
    lat.sort_unstable();
    let (watermark_mean, gateway_sign_mean) = match window.metrics {
        Some((wsum, wcount, ssum, scount)) => (
            (wcount > 0.0).then(|| Duration::from_secs_f64(wsum / wcount)),
            (scount > 0.0).then(|| Duration::from_secs_f64(ssum / scount)),
        ),
        None => (None, None),
    };
    Outcome {
        target,
        clients,
        requests: lat.len(),
        elapsed: window.elapsed,
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        errors: window.errors,
        error_samples: window.error_samples,
        cpu: window.cpu,
        store_writes: window.store_writes,
        watermark_mean,
        gateway_sign_mean,
        state_bytes,
    }
}

/// Time `n` raw durable writes of `size` bytes in `dir` (the gateway's own routine, the one
/// its file store calls), after a short warm-up.
fn durable_write_floor(dir: &Path, n: usize, size: usize) -> std::io::Result<Vec<u64>> {
    fs::create_dir_all(dir)?;
    let mut payload = vec![b' '; size.max(2)];
    payload[0] = b'{';
    *payload.last_mut().expect("non-empty") = b'}';
    let mut times = Vec::with_capacity(n);
    for i in 0..n + WRITE_WARMUP {
        payload[1] = b'a' + (i % 26) as u8; // different bytes every time
        let t0 = Instant::now();
        durable_write(dir, "floor.json", &payload)?;
        if i >= WRITE_WARMUP {
            times.push(t0.elapsed().as_nanos() as u64);
        }
    }
    times.sort_unstable();
    Ok(times)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn signed_ms(nanos: i128) -> String {
    format!("{:+.3}", nanos as f64 / 1e6)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn main() -> ExitCode {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e_load: {e}");
            return ExitCode::from(2);
        }
    };
    let max_clients = opts.clients.iter().copied().max().unwrap_or(1);
    if let Err(e) = fs::create_dir_all(&opts.dir) {
        eprintln!("e2e_load: cannot create {}: {e}", opts.dir.display());
        return ExitCode::from(2);
    }
    let work = tempfile::Builder::new()
        .prefix("e2e_load-")
        .tempdir_in(&opts.dir)
        .expect("temp dir");
    println!("e2e_load: end-to-end sign latency and throughput");
    println!(
        "  {} cores; runtimes: gateway {} worker(s), test signer {}, load generator {}",
        cores_available(),
        opts.gateway_threads,
        opts.signer_threads,
        opts.load_threads
    );
    println!(
        "  {} s per scenario after {} warm-up requests; stores in {} ({})",
        opts.secs,
        opts.warmup,
        work.path().display(),
        filesystem_of(work.path())
    );
    let idle = {
        let a = snapshot();
        std::thread::sleep(Duration::from_millis(500));
        cpu_between(&a, &snapshot()).machine
    };
    println!("  machine busy before starting (other processes): {idle:.2} cores");

    let signer_rt = runtime("signer-rt", opts.signer_threads);
    let load_rt = runtime("load-rt", opts.load_threads);
    let gateway_rt = runtime("gw-rt", opts.gateway_threads);
    let signer = signer_rt
        .block_on(TestSigner::spawn(TestSignerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seeds: (1..=max_clients).map(|n| seed(n as u8)).collect(),
            mode: Mode::Ok,
            ..Default::default()
        }))
        .expect("starting the test signer");
    let pkhs: Vec<String> = signer.pkhs().iter().map(|p| p.to_string()).collect();

    // The floor is timed just before the file-store scenarios and again at the end, in the same
    // directory tree, with about the bytes the store writes (its state file for these keys).
    let floor_bytes = FLOOR_BYTES_PER_KEY * max_clients;
    let floor_dir = work.path().join("floor");
    let mut floors: Vec<(&str, Vec<u64>)> = Vec::new();
    let mut outcomes = Vec::new();
    for &target in &opts.targets {
        if target == Target::File {
            match durable_write_floor(&floor_dir, opts.writes, floor_bytes) {
                Ok(t) => floors.push(("before file-store runs", t)),
                Err(e) => {
                    eprintln!("e2e_load: raw durable write failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        for &clients in &opts.clients {
            let env = Env {
                opts: &opts,
                load_rt: &load_rt,
                gateway_rt: &gateway_rt,
                signer_addr: signer.addr(),
                pkhs: &pkhs,
                work: &work.path().join(format!("{target:?}").to_lowercase()),
            };
            let o = run_scenario(&env, target, clients);
            println!(
                "  done: {:<24} {:>2} client(s): {:>8.0} req/s, p50 {} ms, p99 {} ms, {} error(s)",
                o.target.label(),
                o.clients,
                o.rps(),
                ms(o.p50),
                ms(o.p99),
                o.errors
            );
            outcomes.push(o);
        }
    }
    signer_rt.block_on(signer.shutdown());
    drop(gateway_rt);
    drop(load_rt);
    drop(signer_rt);
    match durable_write_floor(&floor_dir, opts.writes, floor_bytes) {
        Ok(t) => floors.push(("after all runs", t)),
        Err(e) => {
            eprintln!("e2e_load: raw durable write failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut pooled: Vec<u64> = floors.iter().flat_map(|(_, t)| t.iter().copied()).collect();
    pooled.sort_unstable();
    let floor_p50 = percentile(&pooled, 50.0);
    if floors.len() > 1 {
        floors.push(("pooled", pooled.clone()));
    }

    println!();
    println!(
        "| {:<41} | {:>7} | {:>8} | {:>9} | {:>8} | {:>8} | {:>6} | {:>31} |",
        "scenario", "clients", "requests", "req/s", "p50 ms", "p99 ms", "errors", "CPU cores: gw/writer/signer/load"
    );
    println!(
        "|{:-<43}|{:->9}|{:->10}|{:->11}|{:->10}|{:->10}|{:->8}|{:->33}|",
        ":", ":", ":", ":", ":", ":", ":", ":"
    );
    for o in &outcomes {
        println!(
            "| {:<41} | {:>7} | {:>8} | {:>9.0} | {:>8} | {:>8} | {:>6} | {:>31} |",
            o.target.label(),
            o.clients,
            o.requests,
            o.rps(),
            ms(o.p50),
            ms(o.p99),
            o.errors,
            format!(
                "{:.2}/{:.2}/{:.2}/{:.2}",
                o.cpu.gateway, o.cpu.writer, o.cpu.signer, o.cpu.load
            )
        );
    }
    for (when, times) in &floors {
        let p50 = percentile(times, 50.0);
        println!(
            "| {:<41} | {:>7} | {:>8} | {:>9.0} | {:>8} | {:>8} | {:>6} | {:>31} |",
            format!("raw durable write, {when}"),
            "-",
            times.len(),
            1.0 / p50.as_secs_f64().max(1e-9),
            ms(p50),
            ms(percentile(times, 99.0)),
            0,
            "-"
        );
    }
    let state_bytes = outcomes.iter().filter_map(|o| o.state_bytes).max();
    println!(
        "  (raw durable write: {floor_bytes} B per write; the file store's state file was {} at the end)",
        state_bytes.map_or_else(|| "not written".to_owned(), |b| format!("{b} B"))
    );

    println!();
    println!("Ratios and targets:");
    let find = |t: Target, c: usize| outcomes.iter().find(|o| o.target == t && o.clients == c);
    for &clients in &opts.clients {
        let Some(direct) = find(Target::Direct, clients) else {
            continue;
        };
        for target in [Target::Memory, Target::File] {
            let Some(gw) = find(target, clients) else { continue };
            let added = gw.p50.as_nanos() as i128 - direct.p50.as_nanos() as i128;
            let ratio = gw.p50.as_secs_f64() / direct.p50.as_secs_f64().max(1e-12);
            let tput = gw.rps() / direct.rps().max(1e-12);
            print!(
                "  {clients:>2} client(s), {:<22}: p50 {ratio:>5.2}x direct (added {} ms), throughput {tput:.2}x direct",
                target.label(),
                signed_ms(added),
            );
            if target == Target::File {
                let limit = floor_p50 + ADDED_P50_SLACK;
                print!(
                    "; added p50 {} ms vs raw durable write p50 + 0.3 = {} ms: {}",
                    signed_ms(added),
                    ms(limit),
                    pass(added <= limit.as_nanos() as i128)
                );
                if let Some(writes) = gw.store_writes {
                    print!(
                        " ({:.2} durable writes per sign)",
                        writes as f64 / gw.requests.max(1) as f64
                    );
                }
            }
            println!();
        }
    }
    if let Some(file16) = find(Target::File, TARGET_CLIENTS) {
        println!(
            "  file store, {TARGET_CLIENTS} clients over distinct keys: {:.0} signs/s vs target {TARGET_RPS:.0}/s: {}",
            file16.rps(),
            pass(file16.rps() >= TARGET_RPS)
        );
    }

    println!();
    println!("Where the time goes (measured window only):");
    for o in outcomes.iter().filter(|o| o.target != Target::Direct) {
        let mut line = format!("  {:<22} {:>2} client(s):", o.target.label(), o.clients);
        if let Some(w) = o.watermark_mean {
            line += &format!(" watermark wait mean {} ms,", ms(w));
        }
        if let Some(s) = o.gateway_sign_mean {
            line += &format!(" in-gateway sign mean {} ms,", ms(s));
        }
        if let Some(writes) = o.store_writes {
            // The writer never overlaps two writes, so wall time / writes bounds one write's
            // mean cost from above (equal when the writer never idles).
            let secs = o.elapsed.as_secs_f64();
            line += &format!(
                " {writes} durable writes ({:.0}/s, {:.2} per sign, <= {} ms each),",
                writes as f64 / secs,
                writes as f64 / (o.requests.max(1)) as f64,
                ms(Duration::from_secs_f64(secs / writes.max(1) as f64))
            );
        }
        line += &format!(
            " CPU: this process {:.2} of {} cores, machine {:.2}",
            o.cpu.ours(),
            cores_available(),
            o.cpu.machine
        );
        println!("{line}");
    }
    for o in outcomes.iter().filter(|o| o.target == Target::Direct) {
        println!(
            "  {:<22} {:>2} client(s): CPU: this process {:.2} of {} cores, machine {:.2}",
            o.target.label(),
            o.clients,
            o.cpu.ours(),
            cores_available(),
            o.cpu.machine
        );
    }
    let busy = outcomes
        .iter()
        .map(|o| o.cpu.machine - o.cpu.ours())
        .fold(0.0_f64, f64::max);
    if busy > 0.25 || idle > 0.25 {
        println!(
            "  NOTE: other processes used up to {:.2} cores during the run: figures are not from a quiet machine",
            busy.max(idle)
        );
    }
    println!("  (Little's law: with one request in flight per client, signs/s <= clients / mean latency.)");

    let errors: usize = outcomes.iter().map(|o| o.errors).sum();
    if errors > 0 {
        eprintln!();
        eprintln!("e2e_load: FAILED: {errors} request(s) failed; every sign must succeed:");
        for o in outcomes.iter().filter(|o| o.errors > 0) {
            eprintln!(
                "  {} with {} client(s): {} error(s)",
                o.target.label(),
                o.clients,
                o.errors
            );
            for e in &o.error_samples {
                eprintln!("    {e}");
            }
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
