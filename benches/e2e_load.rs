//! End-to-end sign latency and throughput: HTTP clients → (gateway →) test signer, all in this
//! process, over loopback. See `BENCHMARKS.md` ("End-to-end sign latency and throughput") for
//! how to read the output.
//!
//! Scenarios: {direct to the test signer, gateway + memory store, gateway + file store, gateway +
//! etcd store on one member, on three members} × {1 client, 16 clients over 16 distinct keys}. Each client task owns one keep-alive
//! connection and one key, and sends attestations at strictly increasing levels, one request
//! at a time.
//!
//! octez's socket protocol (issue 14), against the HTTP figures of the same run: a second test
//! signer, the same keys, speaking the socket protocol (`direct-socket`: the load generator
//! speaks it to that signer directly, one kept connection per client; `socket`: the gateway with
//! the memory store in front of it, `protocol: socket`, otherwise the `memory` scenario), and
//! the gateway's socket front end (`socket-api`: clients speak the socket protocol to the
//! gateway's `socket_api`, memory store, in front of the HTTP test signer). The report compares
//! each with its HTTP counterpart (`direct`, `memory`). Per scenario: requests/s, p50, p99, errors (any error fails the run), and the
//! CPU time each group of threads used. The raw durable write (temp file, fsync, rename,
//! directory fsync: the gateway's own `durable_write`) is timed in the same directory tree just
//! before the file-store scenarios and again at the end, and the targets are checked:
//! added p50 (gateway with file store − direct) ≤ raw durable write p50 + 0.3 ms, and
//! ≥ 5,000 signs/s with the file store and 16 clients. For the gateway it also reports the mean
//! watermark wait and in-gateway time (from its own metrics) and the number of durable writes
//! the file store made (renames onto its state file, counted with inotify).
//!
//! The etcd store (issue 9): real etcd (Debian `etcd-server`, `testkit::etcd`) started by the
//! run, one cluster of one member and one of three (their peer traffic through in-process
//! relays, as in the tests). The raw compare-and-swap transaction (one key, `if mod_revision ==
//! last then put`, etcd-client) is timed on each cluster before its scenarios; targets: added
//! p50 over the memory store ≤ raw CAS p50 + 0.3 ms, and ≥ 5,000 signs/s with 16 clients on
//! three members. Then the partition figures on the three-member cluster: a gateway whose links
//! to every member freeze (`--partition-runs` times, 4 s each, one request every 100 ms): time from
//! the cut to the first refusal, and from the heal to the first signature; any signature while
//! cut fails the run. Without `etcd` on PATH the etcd targets are skipped, saying so.
//!
//! Layout: three multi-thread runtimes in one process, the gateway's (`gw-rt`, 2 workers, as
//! `#[tokio::main]` would give it on 2 cores), the test signer's (`signer-rt`, 1 worker) and the
//! load generator's (`load-rt`, 1 worker), so that each one's CPU time can be read per thread
//! from /proc and a busy load generator does not steal the gateway's workers inside one
//! scheduler. They still share the machine's cores, as the OS schedules them.
//!
//! Run: `cargo bench --bench e2e_load` (the whole run took 69 s with the defaults on a quiet
//! 2-core machine, etcd included).
//!
//! Options (flag or environment variable; flags win):
//! - `--secs <s>` / `E2E_LOAD_SECS`: measured seconds per scenario (default 3)
//! - `--warmup <n>` / `E2E_LOAD_WARMUP`: requests discarded per scenario before measuring,
//!   spread over its clients, at least 20 per client (default 100)
//! - `--clients <list>` / `E2E_LOAD_CLIENTS`: client counts, comma separated (default `1,16`)
//! - `--targets <list>` / `E2E_LOAD_TARGETS`: any of
//!   `direct,direct-socket,memory,socket,socket-api,file,etcd1,etcd3` (default all eight)
//! - `--partition-runs <n>` / `E2E_LOAD_PARTITION_RUNS`: partition runs on etcd3 (default 3)
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
use std::time::{Duration, Instant};

use signer_gateway::config::Config;
use signer_gateway::Gateway;
use testkit::etcd::EtcdCluster;
use testkit::fault_proxy::FaultProxy;
use testkit::test_signer::{seed, Mode, Protocol, TestSigner, TestSignerOptions};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

mod common;
use common::etcd;
use common::load::{self, GatewayHistograms, Pace, Window, Wire};
use common::procfs::{busy_before_start, cores, schedstat_ns, MachineCpu};
use common::report::{diff_ns, ms, secs, signed_ms, verdict};
use common::stats::Latencies;
use common::store::{filesystem_of, floor_cells, raw_cells, raw_writes, RenameCounter, STATE_FILE};

/// Latency target: added p50 ≤ raw durable write p50 + this.
const ADDED_P50_SLACK: Duration = Duration::from_micros(300);
/// Throughput target with the file store and 16 clients over distinct keys.
const TARGET_RPS: f64 = 5000.0;
/// Client count the throughput target applies to.
const TARGET_CLIENTS: usize = 16;
/// Bytes per raw durable write, per key: about what the file store's state file holds for one
/// key with its last signature (16 keys gave 5,988 B).
const FLOOR_BYTES_PER_KEY: usize = 384;

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
    partition_runs: usize,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let mut vals: HashMap<&'static str, String> = HashMap::new();
        const KEYS: [(&str, &str); 10] = [
            ("partition-runs", "E2E_LOAD_PARTITION_RUNS"),
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
                     --gateway-threads, --signer-threads, --load-threads or --partition-runs"
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
            None => Target::ALL.to_vec(),
            Some(v) => v
                .split(',')
                .map(|t| {
                    let t = t.trim();
                    Target::ALL.into_iter().find(|c| c.name() == t).ok_or_else(|| {
                        let names: Vec<&str> = Target::ALL.iter().map(|c| c.name()).collect();
                        format!("targets: {t:?} is not one of {}", names.join(", "))
                    })
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
            partition_runs: num(&vals, "partition-runs", 3)?,
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
    /// Clients → the HTTP test signer.
    Direct,
    /// Socket clients → the socket test signer.
    DirectSocket,
    /// Clients → gateway (memory store) → the HTTP test signer.
    Memory,
    /// Clients → gateway (memory store) → the socket test signer: `Memory` but for the signer's
    /// protocol.
    Socket,
    /// Socket clients → the gateway's socket front end (memory store) → the HTTP test signer.
    SocketApi,
    File,
    Etcd1,
    Etcd3,
}

impl Target {
    /// Every target, in the order the default run takes them.
    const ALL: [Target; 8] = [
        Target::Direct,
        Target::DirectSocket,
        Target::Memory,
        Target::Socket,
        Target::SocketApi,
        Target::File,
        Target::Etcd1,
        Target::Etcd3,
    ];

    /// Its name in `--targets`.
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::DirectSocket => "direct-socket",
            Target::Memory => "memory",
            Target::Socket => "socket",
            Target::SocketApi => "socket-api",
            Target::File => "file",
            Target::Etcd1 => "etcd1",
            Target::Etcd3 => "etcd3",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct to test signer",
            Target::DirectSocket => "direct to socket signer",
            Target::Memory => "gateway + memory store",
            Target::Socket => "gateway + socket signer",
            Target::SocketApi => "gateway via socket API",
            Target::File => "gateway + file store",
            Target::Etcd1 => "gateway + etcd, 1 member",
            Target::Etcd3 => "gateway + etcd, 3 members",
        }
    }

    /// What the load generator speaks to it.
    fn wire(self) -> Wire {
        match self {
            Target::DirectSocket | Target::SocketApi => Wire::Socket,
            _ => Wire::Http,
        }
    }

    /// Whether it needs the socket test signer.
    fn socket_signer(self) -> bool {
        matches!(self, Target::DirectSocket | Target::Socket)
    }

    /// Members of its etcd cluster (0: not on etcd).
    fn etcd_members(self) -> usize {
        match self {
            Target::Etcd1 => 1,
            Target::Etcd3 => 3,
            _ => 0,
        }
    }
}

/// What one scenario measured.
struct Outcome {
    target: Target,
    clients: usize,
    window: Window,
    cpu: CpuUse,
    /// Durable writes of the file store's state during the window (renames onto it, counted
    /// with inotify).
    store_writes: Option<u64>,
    /// Mean watermark check-and-record time and mean in-gateway time of a successful sign
    /// during the window.
    means: (Option<Duration>, Option<Duration>),
    /// Size of the file store's state file after the scenario.
    state_bytes: Option<u64>,
}

impl Outcome {
    fn requests(&self) -> u64 {
        self.window.latencies.count()
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

struct Snapshot {
    at: Instant,
    /// CPU ns per thread id, with the thread's name.
    threads: HashMap<u32, (String, u64)>,
    machine: MachineCpu,
}

fn snapshot() -> Snapshot {
    let mut threads = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = entry.path();
            let comm = fs::read_to_string(path.join("comm")).unwrap_or_default();
            threads.insert(tid, (comm.trim().to_owned(), schedstat_ns(&path.join("schedstat"))));
        }
    }
    Snapshot {
        at: Instant::now(),
        threads,
        machine: MachineCpu::now(),
    }
}

/// CPU use between two snapshots, by thread name.
fn cpu_between(a: &Snapshot, b: &Snapshot) -> CpuUse {
    let wall_ns = b.at.duration_since(a.at).as_nanos().max(1) as f64;
    let mut cpu = CpuUse::default();
    for (tid, (comm, ns)) in &b.threads {
        let ns0 = a.threads.get(tid).map_or(0, |t| t.1);
        let cores = ns.saturating_sub(ns0) as f64 / wall_ns;
        let group = if comm.starts_with("gw-") {
            &mut cpu.gateway
        } else if comm.starts_with("watermark-writ") {
            &mut cpu.writer
        } else if comm.starts_with("signer-") {
            &mut cpu.signer
        } else if comm.starts_with("load-") {
            &mut cpu.load
        } else {
            &mut cpu.other
        };
        *group += cores;
    }
    cpu.machine = a.machine.cores_until(&b.machine);
    cpu
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

/// What a window measured, with the readings taken around it.
struct Measured {
    window: Window,
    cpu: CpuUse,
    store_writes: Option<u64>,
    means: (Option<Duration>, Option<Duration>),
}

/// Drive one client per key of `pkhs`, speaking `wire`, against `api` and measure one window.
async fn drive(
    wire: Wire,
    api: SocketAddr,
    admin: Option<SocketAddr>,
    renames: Option<&RenameCounter>,
    pkhs: &[String],
    opts: &Opts,
) -> anyhow::Result<Measured> {
    let running = load::start_on(
        wire,
        api,
        pkhs,
        opts.warmup,
        Pace::BackToBack(Duration::from_secs_f64(opts.secs)),
    )
    .await?;
    // Taken just after the clients are released; a few hundred microseconds of /proc reads.
    let before = snapshot();
    let renames_before = renames.map(RenameCounter::count);
    let metrics_before = match admin {
        Some(a) => Some(GatewayHistograms::read(a).await?),
        None => None,
    };
    let window = running.finish().await?;
    let means = match (admin, metrics_before) {
        (Some(a), Some(m)) => m.means_until(&GatewayHistograms::read(a).await?),
        _ => (None, None),
    };
    let store_writes = renames_before
        .zip(renames.map(RenameCounter::count))
        .map(|(a, b)| b - a);
    Ok(Measured {
        window,
        cpu: cpu_between(&before, &snapshot()),
        store_writes,
        means,
    })
}

fn runtime(name: &'static str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

fn gateway_yaml(signer: SocketAddr, target: Target, store_dir: &Path, etcd: &[String]) -> String {
    let watermark = match target {
        Target::File => format!(
            "{{backend: file, dir: {}, create_if_missing: true}}",
            serde_json::to_string(&store_dir.to_string_lossy()).expect("a path as a JSON string")
        ),
        // Each scenario its own prefix: its keys start with no marks, as with the other stores.
        Target::Etcd1 | Target::Etcd3 => etcd::watermark_yaml(etcd, &format!("/{}/", store_dir.display())),
        _ => "{backend: memory}".to_owned(),
    };
    let protocol = if target == Target::Socket { "socket" } else { "http" };
    let socket_api = if target == Target::SocketApi {
        "socket_api: {listen: 127.0.0.1:0}\n"
    } else {
        ""
    };
    format!(
        "api: {{listen: 127.0.0.1:0}}\n\
         admin: {{listen: 127.0.0.1:0}}\n\
         {socket_api}\
         watermark: {watermark}\n\
         signers:\n  - {{name: primary, address: \"{signer}\", protocol: {protocol}}}\n\
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
    /// The socket test signer, when a target needs it.
    socket_signer_addr: Option<SocketAddr>,
    pkhs: &'a [String],
    work: &'a Path,
    /// Client URLs of the etcd cluster, for the etcd targets.
    etcd: &'a [String],
}

fn run_scenario(env: &Env<'_>, target: Target, clients: usize) -> anyhow::Result<Outcome> {
    let pkhs = &env.pkhs[..clients];
    let store_dir = env.work.join(format!("wm-{clients}"));
    let signer = if target.socket_signer() {
        env.socket_signer_addr
            .ok_or_else(|| anyhow::anyhow!("{}: no socket test signer", target.label()))?
    } else {
        env.signer_addr
    };
    let (measured, state_bytes) = if matches!(target, Target::Direct | Target::DirectSocket) {
        (
            env.load_rt
                .block_on(drive(target.wire(), signer, None, None, pkhs, env.opts))?,
            None,
        )
    } else {
        // Watch the store directory before the gateway creates its state file in it.
        let renames = if target == Target::File {
            fs::create_dir_all(&store_dir)?;
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
        let settings = Config::parse(&gateway_yaml(signer, target, &store_dir, env.etcd))?;
        let gateway = env.gateway_rt.block_on(Gateway::start(settings))?;
        let admin = gateway.admin_addr()?;
        let api = match target.wire() {
            Wire::Http => gateway.api_addr()?,
            Wire::Socket => gateway
                .socket_addr()
                .ok_or_else(|| anyhow::anyhow!("the gateway has no socket front end"))?,
        };
        let shutdown = CancellationToken::new();
        let running = env.gateway_rt.spawn(gateway.run(shutdown.clone()));
        let measured = env
            .load_rt
            .block_on(drive(target.wire(), api, Some(admin), renames.as_ref(), pkhs, env.opts));
        shutdown.cancel();
        env.gateway_rt.block_on(running)?;
        let state_bytes = (target == Target::File)
            .then(|| fs::metadata(store_dir.join(STATE_FILE)).map(|m| m.len()).ok())
            .flatten();
        (measured?, state_bytes)
    };
    Ok(Outcome {
        target,
        clients,
        window: measured.window,
        cpu: measured.cpu,
        store_writes: measured.store_writes,
        means: measured.means,
        state_bytes,
    })
}

/// One partition run: a gateway on the three-member cluster through links of its own, frozen
/// and restored.
fn partition(
    etcd_rt: &Runtime,
    gateway_rt: &Runtime,
    load_rt: &Runtime,
    cluster: &EtcdCluster,
    signer: SocketAddr,
    pkh: &str,
    run: usize,
) -> anyhow::Result<etcd::Partition> {
    let links = etcd_rt.block_on(async {
        let mut links = Vec::new();
        for m in &cluster.members {
            links.push(FaultProxy::start(m.client_proxy.addr()).await?);
        }
        anyhow::Ok(links)
    })?;
    let endpoints: Vec<String> = links.iter().map(|l| format!("http://{}", l.addr())).collect();
    let dir = PathBuf::from(format!("partition-{run}"));
    let settings = Config::parse(&gateway_yaml(signer, Target::Etcd3, &dir, &endpoints))?;
    let gateway = gateway_rt.block_on(Gateway::start(settings))?;
    let api = gateway.api_addr()?;
    let shutdown = CancellationToken::new();
    let running = gateway_rt.spawn(gateway.run(shutdown.clone()));
    let mut level = 0;
    let result = load_rt.block_on(etcd::partition_run(
        api,
        pkh,
        &links,
        Duration::from_secs(4),
        // At most ~20 requests in flight while each waits out the bound: under the gateway's
        // per-source connection cap, as a baker's few requests are.
        Duration::from_millis(100),
        &mut level,
    ));
    shutdown.cancel();
    gateway_rt.block_on(running)?;
    drop(links);
    result
}

fn main() -> ExitCode {
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e_load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("e2e_load: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every scenario, then the report; `false` when a request failed.
fn run(opts: &Opts) -> anyhow::Result<bool> {
    let max_clients = opts.clients.iter().copied().max().unwrap_or(1);
    fs::create_dir_all(&opts.dir)?;
    let work = tempfile::Builder::new().prefix("e2e_load-").tempdir_in(&opts.dir)?;
    println!("e2e_load: end-to-end sign latency and throughput");
    println!(
        "  {} cores; runtimes: gateway {} worker(s), test signer {}, load generator {}",
        cores(),
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
    let idle = busy_before_start();
    println!("  machine busy before starting (other processes): {idle:.2} cores");

    let signer_rt = runtime("signer-rt", opts.signer_threads);
    let load_rt = runtime("load-rt", opts.load_threads);
    let gateway_rt = runtime("gw-rt", opts.gateway_threads);
    let signer = signer_rt.block_on(TestSigner::spawn(TestSignerOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: (1..=max_clients).map(|n| seed(n as u8)).collect(),
        mode: Mode::Ok,
        ..Default::default()
    }))?;
    let pkhs: Vec<String> = signer.pkhs().iter().map(|p| p.to_string()).collect();
    // The same keys behind octez's socket protocol, on the same runtime.
    let socket_signer = if opts.targets.iter().any(|t| t.socket_signer()) {
        Some(signer_rt.block_on(TestSigner::spawn(TestSignerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            protocol: Protocol::Socket,
            seeds: (1..=max_clients).map(|n| seed(n as u8)).collect(),
            mode: Mode::Ok,
            ..Default::default()
        }))?)
    } else {
        None
    };

    // The floor is timed just before the file-store scenarios and again at the end, in the same
    // directory tree, with about the bytes the store writes (its state file for these keys).
    let floor_bytes = FLOOR_BYTES_PER_KEY * max_clients;
    let floor_dir = work.path().join("floor");
    let mut floors: Vec<(&str, Latencies)> = Vec::new();
    let mut outcomes = Vec::new();
    // The etcd clusters' peer relays (and the partition's links) run here, off the others.
    let etcd_rt = runtime("etcd-relay-rt", 1);
    let mut cas: Vec<(usize, Latencies)> = Vec::new();
    let mut cas_concurrent: Vec<(usize, usize, f64, Latencies)> = Vec::new();
    let mut partitions: Vec<etcd::Partition> = Vec::new();
    for &target in &opts.targets {
        if target == Target::File {
            let floor = raw_writes(&floor_dir, opts.writes, floor_bytes, None)?;
            floors.push(("before file-store runs", floor.latencies));
        }
        let members = target.etcd_members();
        let cluster = match (members, testkit::etcd::etcd_bin()) {
            (0, _) => None,
            (_, Err(e)) => {
                println!("  SKIPPED {}: {e}", target.label());
                continue;
            }
            (_, Ok(_)) => {
                let c = etcd_rt.block_on(etcd::cluster(&work.path().join(format!("etcd{members}")), members))?;
                let raw = load_rt.block_on(etcd::raw_cas(&c.endpoints(), opts.writes))?;
                println!(
                    "  raw etcd CAS txn, {members} member(s): p50 {} ms, p99 {} ms",
                    ms(raw.p50()),
                    ms(raw.p99())
                );
                cas.push((members, raw));
                let max = opts.clients.iter().copied().max().unwrap_or(1);
                let (rate, l) = load_rt.block_on(etcd::raw_cas_concurrent(&c.endpoints(), max, opts.secs))?;
                println!(
                    "  raw etcd CAS txns, {members} member(s), {max} clients: {rate:.0}/s, p50 {} ms",
                    ms(l.p50())
                );
                cas_concurrent.push((members, max, rate, l));
                Some(c)
            }
        };
        let endpoints = cluster.as_ref().map(EtcdCluster::endpoints).unwrap_or_default();
        for &clients in &opts.clients {
            let env = Env {
                opts,
                load_rt: &load_rt,
                gateway_rt: &gateway_rt,
                signer_addr: signer.addr(),
                socket_signer_addr: socket_signer.as_ref().map(|s| s.addr()),
                pkhs: &pkhs,
                work: &work.path().join(format!("{target:?}").to_lowercase()),
                etcd: &endpoints,
            };
            let o = run_scenario(&env, target, clients)?;
            println!(
                "  done: {:<24} {:>2} client(s): {:>8.0} req/s, p50 {} ms, p99 {} ms, {} error(s)",
                o.target.label(),
                o.clients,
                o.window.rps(),
                ms(o.window.latencies.p50()),
                ms(o.window.latencies.p99()),
                o.window.errors
            );
            outcomes.push(o);
        }
        if let (Some(c), 3) = (&cluster, members) {
            for run in 0..opts.partition_runs {
                let p = partition(&etcd_rt, &gateway_rt, &load_rt, c, signer.addr(), &pkhs[0], run)?;
                println!(
                    "  partition run {}: cut -> first refusal {}, heal -> first signature {}, {} signed while cut",
                    run + 1,
                    secs(p.to_refusal),
                    secs(p.to_signature),
                    p.signed_while_cut
                );
                partitions.push(p);
            }
        }
        drop(cluster);
    }
    drop(etcd_rt);
    signer_rt.block_on(signer.shutdown());
    if let Some(s) = socket_signer {
        signer_rt.block_on(s.shutdown());
    }
    drop(gateway_rt);
    drop(load_rt);
    drop(signer_rt);
    floors.push((
        "after all runs",
        raw_writes(&floor_dir, opts.writes, floor_bytes, None)?.latencies,
    ));
    let mut pooled = Latencies::default();
    for (_, l) in &floors {
        pooled.merge(l);
    }
    let floor_p50 = pooled.p50();
    if floors.len() > 1 {
        floors.push(("pooled", pooled));
    }

    let mut table = Window::table(&[">CPU cores: gw/writer/signer/load"]);
    for o in &outcomes {
        let c = &o.cpu;
        let mut cells = o.window.cells(o.target.label(), &o.clients.to_string());
        cells.push(format!(
            "{:.2}/{:.2}/{:.2}/{:.2}",
            c.gateway, c.writer, c.signer, c.load
        ));
        table.row(cells);
    }
    for (when, l) in &floors {
        table.row(floor_cells(when, l));
    }
    for (members, l) in &cas {
        table.row(raw_cells(format!("raw etcd CAS txn, {members} member(s)"), l));
    }
    for (members, clients, rate, l) in &cas_concurrent {
        table.row([
            format!("raw etcd CAS txns, {members} member(s)"),
            clients.to_string(),
            l.count().to_string(),
            format!("{rate:.0}"),
            ms(l.p50()),
            ms(l.p99()),
            "0".into(),
        ]);
    }
    table.print();
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
            let (gw_p50, direct_p50) = (gw.window.latencies.p50(), direct.window.latencies.p50());
            let added = diff_ns(direct_p50, gw_p50);
            let ratio = gw_p50.as_secs_f64() / direct_p50.as_secs_f64().max(1e-12);
            let tput = gw.window.rps() / direct.window.rps().max(1e-12);
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
                    verdict(added <= limit.as_nanos() as i128)
                );
                if let Some(writes) = gw.store_writes {
                    print!(
                        " ({:.2} durable writes per sign)",
                        writes as f64 / gw.requests().max(1) as f64
                    );
                }
            }
            println!();
        }
    }
    // octez's socket protocol against HTTP, pair by pair: the same keys, the same store (memory),
    // the same run; only the protocol on one hop differs.
    for &clients in &opts.clients {
        for (http, socket, hop) in [
            (Target::Direct, Target::DirectSocket, "the signer alone"),
            (Target::Memory, Target::Socket, "gateway -> signer hop"),
            (Target::Memory, Target::SocketApi, "client -> gateway hop"),
        ] {
            let (Some(h), Some(s)) = (find(http, clients), find(socket, clients)) else {
                continue;
            };
            let (hl, sl) = (&h.window.latencies, &s.window.latencies);
            println!(
                "  {clients:>2} client(s), socket vs HTTP, {hop:<21}: p50 {} vs {} ms ({} ms), p99 {} vs {} ms, throughput {:.0} vs {:.0}/s ({:.2}x)",
                ms(sl.p50()),
                ms(hl.p50()),
                signed_ms(diff_ns(hl.p50(), sl.p50())),
                ms(sl.p99()),
                ms(hl.p99()),
                s.window.rps(),
                h.window.rps(),
                s.window.rps() / h.window.rps().max(1e-12)
            );
        }
        let pairs = [(Target::Direct, Target::Memory), (Target::DirectSocket, Target::Socket)];
        let added: Vec<Option<i128>> = pairs
            .iter()
            .map(|&(d, g)| {
                let (d, g) = (find(d, clients)?, find(g, clients)?);
                Some(diff_ns(d.window.latencies.p50(), g.window.latencies.p50()))
            })
            .collect();
        if let [Some(http), Some(socket)] = added[..] {
            println!(
                "  {clients:>2} client(s), added p50 by the gateway (memory store): {} ms in front of the HTTP signer, {} ms in front of the socket signer",
                signed_ms(http),
                signed_ms(socket)
            );
        }
    }
    for &clients in &opts.clients {
        let Some(memory) = find(Target::Memory, clients) else {
            continue;
        };
        for (target, members) in [(Target::Etcd1, 1), (Target::Etcd3, 3)] {
            let (Some(gw), Some((_, raw))) = (find(target, clients), cas.iter().find(|(m, _)| *m == members)) else {
                continue;
            };
            let added = diff_ns(memory.window.latencies.p50(), gw.window.latencies.p50());
            let limit = raw.p50() + ADDED_P50_SLACK;
            println!(
                "  {clients:>2} client(s), {:<22}: added p50 over the memory store {} ms vs raw CAS txn p50 + 0.3 = {} ms: {}; throughput {:.2}x memory",
                target.label(),
                signed_ms(added),
                ms(limit),
                verdict(added <= limit.as_nanos() as i128),
                gw.window.rps() / memory.window.rps().max(1e-12)
            );
        }
    }
    if let Some(etcd16) = find(Target::Etcd3, TARGET_CLIENTS) {
        println!(
            "  etcd, 3 members, {TARGET_CLIENTS} clients over distinct keys: {:.0} signs/s vs target {TARGET_RPS:.0}/s: {}",
            etcd16.window.rps(),
            verdict(etcd16.window.rps() >= TARGET_RPS)
        );
    }
    for (members, clients, rate, _) in &cas_concurrent {
        let target = if *members == 1 { Target::Etcd1 } else { Target::Etcd3 };
        if let Some(gw) = find(target, *clients) {
            println!(
                "  etcd, {members} member(s), {clients} clients: the gateway signs {:.0}/s, {:.2}x the raw CAS transactions etcd itself commits here ({rate:.0}/s)",
                gw.window.rps(),
                gw.window.rps() / rate.max(1e-12)
            );
        }
    }
    if !partitions.is_empty() {
        let worst = |f: fn(&etcd::Partition) -> Duration| partitions.iter().map(f).max().unwrap_or_default();
        let while_cut: usize = partitions.iter().map(|p| p.signed_while_cut).sum();
        println!(
            "  partition (etcd, 3 members, {} runs, bound {}): cut -> first refusal worst {}, heal -> first signature worst {}; signed while cut: {while_cut} ({})",
            partitions.len(),
            secs(etcd::REQUEST_TIMEOUT),
            secs(worst(|p| p.to_refusal)),
            secs(worst(|p| p.to_signature)),
            verdict(while_cut == 0)
        );
    }
    if let Some(file16) = find(Target::File, TARGET_CLIENTS) {
        println!(
            "  file store, {TARGET_CLIENTS} clients over distinct keys: {:.0} signs/s vs target {TARGET_RPS:.0}/s: {}",
            file16.window.rps(),
            verdict(file16.window.rps() >= TARGET_RPS)
        );
    }

    println!();
    println!("Where the time goes (measured window only):");
    for o in &outcomes {
        let mut line = format!("  {:<22} {:>2} client(s):", o.target.label(), o.clients);
        if let Some(w) = o.means.0 {
            line += &format!(" watermark wait mean {} ms,", ms(w));
        }
        if let Some(s) = o.means.1 {
            line += &format!(" in-gateway sign mean {} ms,", ms(s));
        }
        if let Some(writes) = o.store_writes {
            // The writer never overlaps two writes, so wall time / writes bounds one write's
            // mean cost from above (equal when the writer never idles).
            let secs = o.window.elapsed.as_secs_f64();
            line += &format!(
                " {writes} durable writes ({:.0}/s, {:.2} per sign, <= {} ms each),",
                writes as f64 / secs,
                writes as f64 / o.requests().max(1) as f64,
                ms(Duration::from_secs_f64(secs / writes.max(1) as f64))
            );
        }
        line += &format!(
            " CPU: this process {:.2} of {} cores, machine {:.2}",
            o.cpu.ours(),
            cores(),
            o.cpu.machine
        );
        println!("{line}");
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

    let errors: usize = outcomes.iter().map(|o| o.window.errors).sum::<usize>()
        + partitions.iter().map(|p| p.signed_while_cut).sum::<usize>();
    if errors > 0 {
        eprintln!();
        eprintln!("e2e_load: FAILED: {errors} request(s) failed; every sign must succeed:");
        for o in outcomes.iter().filter(|o| o.window.errors > 0) {
            eprintln!(
                "  {} with {} client(s): {} error(s)",
                o.target.label(),
                o.clients,
                o.window.errors
            );
            for e in &o.window.error_samples {
                eprintln!("    {e}");
            }
        }
    }
    Ok(errors == 0)
}
