//! A tz4 key as a baker sees it: what a BLS signature costs through the gateway, and how many
//! round trips over the Pi's home link one signature costs when asked for as octez's baker
//! asks. See `BENCHMARKS.md` ("tz4: BLS verification and round trips over the Pi's link").
//!
//! 1. **tz4 vs tz1 through the gateway** ("gateway"), on loopback with no delay: the release
//!    `signer-gateway` (file store, as in production, then the memory store) in front of one
//!    `test-signer` holding a tz1 and a tz4 key, over TCP. One client, back to back, one
//!    keep-alive connection to the signer and one to the gateway, a fresh level every time.
//!    Each round signs with tz1 direct, tz1 through the gateway, tz4 direct, tz4 through the
//!    gateway, so disk and CPU noise fall on all four alike. Reported: p50/p99 of each, the
//!    gateway's added p50 for each key type and the difference. Target: tz4 adds at most
//!    1.5 ms p50 more than tz1 (the gateway verifies every signature before releasing it, and
//!    a BLS verification costs more than an ed25519 one).
//! 2. **Round trips over the Pi's link** ("link"): the Pi's `test-signer` (tz4 key) behind a
//!    link modelled by the fault proxy with a one-way delay (20 ms each way), release binaries.
//!    The baker asks as octez's baker does: for each signature `GET /authorized_keys` on a new
//!    TCP connection, then `POST /keys/<tz4>?version=3` on another new TCP connection, a fresh
//!    level each time, one signature every 200 ms. Scenarios:
//!    - `tunnel`: `signer-gateway` + `signer-tunnel` over the delayed link, the gateway with its
//!      default health checks, so `/authorized_keys` is answered from the last probe;
//!    - `passthrough`: the same with `health_check.path: /keys/<tz4>`, so `/authorized_keys`
//!      is passed on to the Pi;
//!    - `openssh`: the incumbent, stock OpenSSH: a real `sshd` (Debian's openssh-server, run as
//!      root on a loopback port with its own host key and config in a temp dir) and `ssh -N -R`
//!      connecting to it through the delayed link; the baker talks to the forwarded port
//!      directly, as HAProxy in front of it would (HAProxy's own cost is not counted). Skipped,
//!      and said so, without `/usr/sbin/sshd` or root.
//!
//!    The link's round trip time is measured with a plain TCP echo through a proxy with the
//!    same delay, in this process. Reported per scenario: time per signature p50/p90/max, each
//!    call's p50, round trips per signature (p50 per signature / link RTT p50), and the requests
//!    that reached the Pi's signer per signature. Target: one link round trip per signature
//!    through the gateway (below 1.5), where a pass-through costs two or more.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench baker_link` (about a
//! minute).
//!
//! Environment knobs:
//! - `BAKER_LINK_PARTS` (`gateway,link`): which parts to run
//! - `BAKER_LINK_N` (300): measured signs per key type and store in part 1
//! - `BAKER_LINK_WARMUP` (30): warm-up signs per key type and store in part 1
//! - `BAKER_LINK_STORES` (`file,memory`): the gateway's stores in part 1
//! - `BAKER_LINK_DELAY_MS` (20): one-way delay of the Pi's link in part 2
//! - `BAKER_LINK_SIGNATURES` (30): measured signatures per scenario in part 2
//! - `BAKER_LINK_LINK_WARMUP` (3): warm-up signatures per scenario in part 2 (the first one
//!   also fetches the public key over the link)
//! - `BAKER_LINK_EVERY_MS` (200): one signature per this period in part 2
//! - `BAKER_LINK_SCENARIOS` (`tunnel,passthrough,openssh`): the scenarios of part 2
//! - `BAKER_LINK_RTT_SAMPLES` (30): echo round trips timed to measure the link
//! - `BAKER_LINK_SSHD` (`/usr/sbin/sshd`): the incumbent's server binary
//!
//! Any unexpected error (a failed request, a process that does not start) fails the run with
//! exit code 1; a missed target prints `MISS` and does not. Every process started here is
//! killed at the end, by drop guards, also on errors.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use signer_gateway::config::Config;
use signer_gateway::tezos::Pkh;
use testkit::fault_proxy::{FaultProxy, ProxyOptions};
use testkit::harness::{attestation, bls_attestation, Gateway, TestSignerProcess, TEST_CHAIN};
use testkit::ssh_client::{SshClient, SshKey, ALLOCATED};
use testkit::test_signer::{bls_key_from_seed, key_from_seed, Mode};
use testkit::tunnel_harness::{keygen, TunnelClient, TunnelConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bound on one HTTP call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a gateway, a tunnel or sshd to come up (generous: 2 shared cores).
const SETTLE: Duration = Duration::from_secs(20);
/// Part 1 target: tz4's added p50 − tz1's added p50.
const TZ4_EXTRA_TARGET: Duration = Duration::from_micros(1500);
/// Part 2 target: round trips per signature through the gateway stay below this.
const ROUND_TRIPS_TARGET: f64 = 1.5;
/// The incumbent's server, unless `BAKER_LINK_SSHD` says otherwise.
const SSHD: &str = "/usr/sbin/sshd";
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    File,
    Memory,
}

impl FromStr for Store {
    type Err = String;
    fn from_str(s: &str) -> Result<Store, String> {
        match s {
            "file" => Ok(Store::File),
            "memory" => Ok(Store::Memory),
            _ => Err(format!("unknown store {s:?}: expected file or memory")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Tunnel,
    Passthrough,
    OpenSsh,
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        match s {
            "tunnel" => Ok(Scenario::Tunnel),
            "passthrough" => Ok(Scenario::Passthrough),
            "openssh" => Ok(Scenario::OpenSsh),
            _ => Err(format!(
                "unknown scenario {s:?}: expected tunnel, passthrough or openssh"
            )),
        }
    }
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Tunnel => "(a) gateway + signer-tunnel, /authorized_keys from the probe",
            Scenario::Passthrough => "(b) gateway + signer-tunnel, /authorized_keys passed through",
            Scenario::OpenSsh => "(c) incumbent: sshd + ssh -R, baker on the forwarded port",
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Scenario::Tunnel => "tunnel",
            Scenario::Passthrough => "passthrough",
            Scenario::OpenSsh => "openssh",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    gateway_part: bool,
    link_part: bool,
    n: usize,
    warmup: usize,
    stores: Vec<Store>,
    delay: Duration,
    signatures: usize,
    link_warmup: usize,
    every: Duration,
    scenarios: Vec<Scenario>,
    rtt_samples: usize,
    sshd: PathBuf,
}

fn env_or<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(default),
    }
}

fn env_list<T: FromStr>(name: &str, default: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    let text = env_or(name, default.to_string())?;
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| anyhow::anyhow!("{name}: {e}")))
        .collect()
}

impl Opts {
    fn from_env() -> anyhow::Result<Opts> {
        let parts: Vec<String> = env_list("BAKER_LINK_PARTS", "gateway,link")?;
        for p in &parts {
            ensure!(
                p == "gateway" || p == "link",
                "BAKER_LINK_PARTS: unknown part {p:?} (gateway, link)"
            );
        }
        let opts = Opts {
            gateway_part: parts.iter().any(|p| p == "gateway"),
            link_part: parts.iter().any(|p| p == "link"),
            n: env_or("BAKER_LINK_N", 300)?,
            warmup: env_or("BAKER_LINK_WARMUP", 30)?,
            stores: env_list("BAKER_LINK_STORES", "file,memory")?,
            delay: Duration::from_millis(env_or("BAKER_LINK_DELAY_MS", 20)?),
            signatures: env_or("BAKER_LINK_SIGNATURES", 30)?,
            link_warmup: env_or("BAKER_LINK_LINK_WARMUP", 3)?,
            every: Duration::from_millis(env_or("BAKER_LINK_EVERY_MS", 200)?),
            scenarios: env_list("BAKER_LINK_SCENARIOS", "tunnel,passthrough,openssh")?,
            rtt_samples: env_or("BAKER_LINK_RTT_SAMPLES", 30)?,
            sshd: PathBuf::from(env_or("BAKER_LINK_SSHD", SSHD.to_string())?),
        };
        ensure!(
            opts.n > 0 && opts.signatures > 0 && opts.rtt_samples > 0,
            "counts must be > 0"
        );
        Ok(opts)
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn ms1(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.3}", (a.as_secs_f64() - b.as_secs_f64()) * 1e3)
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// Targets met or missed, for the summary.
#[derive(Default)]
struct Targets(Vec<(String, bool)>);

impl Targets {
    fn check(&mut self, what: String, ok: bool) {
        println!("  {}: {what}", verdict(ok));
        self.0.push((what, ok));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: exactly one TCP connection per call when asked, nothing hidden.

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The server will close the connection after this answer.
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// One request and its whole answer on `stream`. Bodies are read by `content-length` (every
/// server here sends one), so the time ends with the last byte of the answer, not the close.
async fn exchange(
    stream: &mut TcpStream,
    host: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    close: bool,
) -> anyhow::Result<Answer> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    if let Some(b) = body {
        let _ = write!(req, "content-type: application/json\r\ncontent-length: {}\r\n", b.len());
    }
    if close {
        req.push_str("connection: close\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).await.context("sending the request")?;

    let mut buf = Vec::with_capacity(2048);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        ensure!(buf.len() < MAX_HEAD, "response head over {MAX_HEAD} bytes");
        if read_more(stream, &mut buf).await? == 0 {
            bail!("connection closed before the answer ({} bytes read)", buf.len());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let mut rest = buf.split_off(head_end);
    if let Some(len) = answer.header("content-length") {
        let len: usize = len.parse().with_context(|| format!("content-length {len:?}"))?;
        while rest.len() < len {
            if read_more(stream, &mut rest).await? == 0 {
                bail!("connection closed {} bytes into a {len}-byte body", rest.len());
            }
        }
        rest.truncate(len);
    } else if answer.header("transfer-encoding").is_some() {
        bail!("unexpected chunked answer (status {status})");
    } else {
        // No length: the body ends with the connection.
        while read_more(stream, &mut rest).await? > 0 {}
    }
    answer.body = rest;
    Ok(answer)
}

/// One call on a new TCP connection, closed after the answer: what octez's baker does.
async fn fresh_call(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Answer> {
    let call = async {
        let mut s = connect(addr).await?;
        exchange(&mut s, addr, method, path, body, true).await
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path} to {addr}: no answer within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {path} to {addr}"))
}

/// One keep-alive connection, reopened if the server closed it.
struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    reconnects: usize,
}

impl KeepAlive {
    fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            stream: None,
            reconnects: 0,
        }
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Answer> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if !reused {
                self.stream = Some(connect(self.addr).await?);
            }
            let stream = self.stream.as_mut().context("no connection")?;
            let got = tokio::time::timeout(CALL_TIMEOUT, exchange(stream, self.addr, method, path, body, false)).await;
            match got {
                Ok(Ok(a)) => {
                    if a.closes() {
                        self.stream = None;
                    }
                    return Ok(a);
                }
                // A kept-alive connection the server closed meanwhile: once more on a new one.
                Ok(Err(_)) if reused && attempt == 0 => {
                    self.stream = None;
                    self.reconnects += 1;
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    return Err(e.context(format!("{method} {path} to {}", self.addr)));
                }
                Err(_) => {
                    self.stream = None;
                    bail!("{method} {path} to {}: no answer within {CALL_TIMEOUT:?}", self.addr);
                }
            }
        }
        bail!("{method} {path} to {}: failed twice", self.addr)
    }
}

fn sign_path(pkh: &Pkh) -> String {
    format!("/keys/{pkh}?version=3")
}

fn sign_body(bytes: &[u8]) -> Vec<u8> {
    format!("\"{}\"", hex::encode(bytes)).into_bytes()
}

/// A 200 carrying a signature with this prefix.
fn check_signature(a: &Answer, prefix: &str) -> anyhow::Result<()> {
    ensure!(a.status == 200, "HTTP {}: {}", a.status, a.text());
    let json: serde_json::Value = serde_json::from_slice(&a.body).with_context(|| format!("not JSON: {}", a.text()))?;
    match json["signature"].as_str() {
        Some(s) if s.starts_with(prefix) => Ok(()),
        _ => bail!("no {prefix}… signature in {json}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: tz4 vs tz1 through the gateway

struct KeyCase {
    name: &'static str,
    pkh: Pkh,
    prefix: &'static str,
    payload: fn([u8; 4], i32, i32, u8) -> Vec<u8>,
}

struct Part1 {
    store: Store,
    /// [key][direct, gateway], sorted.
    times: Vec<[Vec<Duration>; 2]>,
    reconnects: usize,
}

fn part1_yaml(store: Store, signer: SocketAddr) -> String {
    let watermark = match store {
        Store::File => "{backend: file, dir: \"{dir}/watermarks\", create_if_missing: true}",
        Store::Memory => "{backend: memory}",
    };
    format!(
        "api: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\nwatermark: {watermark}\n\
         signers:\n  - {{name: pi, address: \"{signer}\"}}\nlog_format: text\n"
    )
}

async fn gateway_part(
    opts: &Opts,
    signer: &TestSignerProcess,
    keys: &[KeyCase],
    level: &mut i32,
) -> anyhow::Result<Vec<Part1>> {
    let mut out = Vec::new();
    for &store in &opts.stores {
        let gw = Gateway::start(&part1_yaml(store, signer.addr()))
            .await
            .with_context(|| format!("starting the gateway ({store:?} store)"))?;
        gw.wait_signers_up(&["pi"], SETTLE).await?;
        let mut paths = [KeepAlive::new(signer.addr()), KeepAlive::new(gw.api)];
        let mut times: Vec<[Vec<Duration>; 2]> = keys.iter().map(|_| [Vec::new(), Vec::new()]).collect();
        for round in 0..opts.warmup + opts.n {
            for (k, key) in keys.iter().enumerate() {
                for (p, conn) in paths.iter_mut().enumerate() {
                    *level += 1;
                    let body = sign_body(&(key.payload)(TEST_CHAIN, *level, 0, 0xaa));
                    let started = Instant::now();
                    let a = conn.call("POST", &sign_path(&key.pkh), Some(&body)).await?;
                    let took = started.elapsed();
                    check_signature(&a, key.prefix).with_context(|| {
                        format!(
                            "{} {} sign at level {level}",
                            key.name,
                            ["direct", "through the gateway"][p]
                        )
                    })?;
                    if round >= opts.warmup {
                        times[k][p].push(took);
                    }
                }
            }
        }
        let reconnects = paths.iter().map(|c| c.reconnects).sum();
        for t in &mut times {
            for v in t.iter_mut() {
                v.sort_unstable();
            }
        }
        println!("  done: {store:?} store, {} signs per key and path", opts.n);
        out.push(Part1 {
            store,
            times,
            reconnects,
        });
    }
    Ok(out)
}

fn print_part1(opts: &Opts, keys: &[KeyCase], results: &[Part1], targets: &mut Targets) {
    println!();
    println!(
        "### 1. tz4 vs tz1 through the gateway (loopback, 1 client back to back, {} signs per key and path, ms)",
        opts.n
    );
    println!();
    println!("| store | key | direct p50 | direct p99 | gateway p50 | gateway p99 | added p50 |");
    println!("|:--|:--|--:|--:|--:|--:|--:|");
    for r in results {
        for (k, key) in keys.iter().enumerate() {
            let [direct, via] = &r.times[k];
            println!(
                "| {:?} | {} | {} | {} | {} | {} | {} |",
                r.store,
                key.name,
                ms(percentile(direct, 0.5)),
                ms(percentile(direct, 0.99)),
                ms(percentile(via, 0.5)),
                ms(percentile(via, 0.99)),
                signed_ms(percentile(via, 0.5), percentile(direct, 0.5)),
            );
        }
    }
    println!();
    for r in results {
        let added = |k: usize| {
            let [direct, via] = &r.times[k];
            percentile(via, 0.5).as_secs_f64() - percentile(direct, 0.5).as_secs_f64()
        };
        let extra = added(1) - added(0);
        if r.reconnects > 0 {
            println!("  note: {} keep-alive connection(s) reopened", r.reconnects);
        }
        targets.check(
            format!(
                "{:?} store: tz4 added p50 {:+.3} ms − tz1 added p50 {:+.3} ms = {:+.3} ms; target ≤ {:.1} ms",
                r.store,
                added(1) * 1e3,
                added(0) * 1e3,
                extra * 1e3,
                TZ4_EXTRA_TARGET.as_secs_f64() * 1e3
            ),
            extra <= TZ4_EXTRA_TARGET.as_secs_f64(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Part 2: round trips over the Pi's link

/// An echo server for the link measurement; the task ends with the runtime.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn echo_once(s: &mut TcpStream, msg: &[u8]) -> anyhow::Result<()> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(CALL_TIMEOUT, s.read_exact(&mut got))
        .await
        .context("echo: no answer")??;
    ensure!(got == msg, "echo: wrong bytes");
    Ok(())
}

struct LinkRtt {
    /// Round trips on an established connection, sorted.
    rtt: Vec<Duration>,
    /// Connect + one exchange on a new connection, sorted.
    fresh: Vec<Duration>,
}

/// The link's round trip time: a plain TCP echo through a proxy with the same delay.
async fn measure_link(opts: &Opts) -> anyhow::Result<LinkRtt> {
    let echo = echo_server().await?;
    let proxy = FaultProxy::start_with(ProxyOptions {
        delay: opts.delay,
        ..ProxyOptions::new(echo)
    })
    .await?;
    let msg = [0x5au8; 64];
    let mut fresh = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut s = connect(proxy.addr()).await?;
        echo_once(&mut s, &msg).await?;
        fresh.push(started.elapsed());
    }
    let mut s = connect(proxy.addr()).await?;
    echo_once(&mut s, &msg).await?;
    let mut rtt = Vec::new();
    for _ in 0..opts.rtt_samples {
        let started = Instant::now();
        echo_once(&mut s, &msg).await?;
        rtt.push(started.elapsed());
        // Paced as the baker's calls are, not back to back.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(LinkRtt {
        rtt: sorted(rtt),
        fresh: sorted(fresh),
    })
}

/// `sshd -D -e` with a config, host key and authorized keys in a temp dir. Dropping it kills
/// its session processes and then itself.
struct Sshd {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Sshd {
    async fn start(bin: &Path, dir: &Path, client: &SshKey) -> anyhow::Result<Sshd> {
        let host_key = SshKey::generate(dir, "ssh_host_ed25519_key")?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", client.public))?;
        // Privilege separation needs its empty directory (made by the init scripts we don't run).
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        // A free port: taken from the kernel, then handed to sshd (a tiny race, loopback only).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding remote\n\
                 GatewayPorts no\nX11Forwarding no\nPrintMotd no\nLogLevel INFO\n",
                host_key.private.display(),
                dir.join("sshd.pid").display(),
                authorized.display(),
            ),
        )?;
        // An absolute path: sshd re-executes itself for every connection.
        let mut child = Command::new(bin)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().context("sshd stderr not piped")?;
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut sshd = Sshd { child, addr, log };
        let ready = format!("Server listening on 127.0.0.1 port {port}");
        let deadline = Instant::now() + SETTLE;
        loop {
            if sshd.log_text().contains(&ready) {
                return Ok(sshd);
            }
            if let Some(status) = sshd.child.try_wait()? {
                bail!("sshd exited ({status}) before listening:\n{}", sshd.log_text());
            }
            ensure!(
                Instant::now() < deadline,
                "sshd did not listen within {SETTLE:?}:\n{}",
                sshd.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}

/// Every descendant of `pid`, from /proc (children before their children).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces, so split after the last ')'.
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(ppid) = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    parents.push((p, ppid));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // sshd forks a process per connection, which starts its own session (setsid): killing
        // the listener alone would leave them. They are ours; kill them by pid first.
        for pid in descendants(self.child.id()) {
            let _ = testkit::harness::signal(pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything one scenario runs; dropped (killed) in field order.
struct Rig {
    /// Where the baker sends its calls.
    api: SocketAddr,
    settings: String,
    tunnel: Option<TunnelClient>,
    ssh: Option<SshClient>,
    gateway: Option<Gateway>,
    proxy: FaultProxy,
    sshd: Option<Sshd>,
}

impl Rig {
    fn logs(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.tunnel {
            s += &t.log_tail(20);
        }
        if let Some(c) = &self.ssh {
            s += &format!("\nssh stderr:\n{}", c.stderr());
        }
        if let Some(d) = &self.sshd {
            s += &format!("\nsshd log:\n{}", d.log_text());
        }
        s
    }
}

struct Pi<'a> {
    signer: &'a TestSignerProcess,
    pkh: Pkh,
    identity: &'a Path,
    public: &'a str,
}

async fn gateway_rig(opts: &Opts, scenario: Scenario, pi: &Pi<'_>, work: &Path) -> anyhow::Result<Rig> {
    let health = match scenario {
        Scenario::Passthrough => format!("health_check: {{path: /keys/{}}}\n", pi.pkh),
        _ => String::new(),
    };
    let yaml = format!(
        "api: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
         watermark: {{backend: file, dir: \"{{dir}}/watermarks\", create_if_missing: true}}\n\
         ssh: {{listen: 127.0.0.1:0, host_key: \"{{dir}}/ssh_host_ed25519_key\"}}\n\
         signers:\n  - name: pi\n    tunnel: {{keys: [\"{}\"]}}\n{health}log_format: text\n",
        pi.public
    );
    let gw = Gateway::start(&yaml).await.context("starting the gateway")?;
    let settings = {
        let text = yaml.replace("{dir}", gw.dir().to_str().context("dir is not UTF-8")?);
        let c = Config::parse(&text)
            .map_err(|e| anyhow::anyhow!("parsing the gateway config: {e}"))?
            .config;
        let hc = &c.health_check;
        format!(
            "gateway: file store, request_timeout {:?}, health_check path {} every {:?} (timeout {:?})",
            c.request_timeout, hc.path, hc.interval, hc.timeout
        )
    };
    let (ssh, host_key) = gw.ssh_endpoint()?;
    let proxy = FaultProxy::start_with(ProxyOptions {
        delay: opts.delay,
        ..ProxyOptions::new(ssh)
    })
    .await?;
    let dir = work.join(scenario.dir_name());
    std::fs::create_dir_all(&dir)?;
    let cfg = TunnelConfig::production(proxy.addr(), &host_key, pi.identity, pi.signer.addr());
    let tunnel = TunnelClient::start(&dir, &cfg)?;
    let rig = Rig {
        api: gw.api,
        settings: settings + "; signer-tunnel with the example's defaults",
        tunnel: Some(tunnel),
        ssh: None,
        gateway: Some(gw),
        proxy,
        sshd: None,
    };
    if let Err(e) = rig
        .gateway
        .as_ref()
        .context("no gateway")?
        .wait_signers_up(&["pi"], SETTLE)
        .await
    {
        bail!("pi never came up over the tunnel: {e:#}{}", rig.logs());
    }
    Ok(rig)
}

/// Why the incumbent cannot run here, if it cannot.
fn openssh_missing(sshd: &Path) -> Option<String> {
    if !sshd.is_file() {
        return Some(format!(
            "{} is not installed (Debian package openssh-server; `bash scripts/install-deps.sh` installs it)",
            sshd.display()
        ));
    }
    if !rustix::process::getuid().is_root() {
        return Some("sshd must run as root here (it changes user for the session)".into());
    }
    None
}

async fn openssh_rig(opts: &Opts, pi: &Pi<'_>, work: &Path) -> anyhow::Result<Rig> {
    let dir = work.join(Scenario::OpenSsh.dir_name());
    std::fs::create_dir_all(&dir)?;
    let key = SshKey::generate(&dir, "pi_ed25519")?;
    let sshd = Sshd::start(&opts.sshd, &dir, &key).await?;
    let proxy = FaultProxy::start_with(ProxyOptions {
        delay: opts.delay,
        ..ProxyOptions::new(sshd.addr)
    })
    .await?;
    let mut rig = Rig {
        api: SocketAddr::from(([127, 0, 0, 1], 0)),
        settings: String::new(),
        tunnel: None,
        ssh: None,
        gateway: None,
        proxy,
        sshd: Some(sshd),
    };
    // `-R 0:…`: sshd picks the port on its loopback (GatewayPorts no) and ssh prints it.
    let mut ssh = SshClient::reverse_tunnel(&key, rig.proxy.addr(), "root", pi.signer.addr(), &[])?;
    let waited = ssh.wait_stderr(ALLOCATED, SETTLE).await;
    let stderr = ssh.stderr();
    rig.ssh = Some(ssh);
    if let Err(e) = waited {
        bail!("ssh -R never got its forward: {e:#}{}", rig.logs());
    }
    let port: u16 = stderr
        .lines()
        .find_map(|l| l.split(ALLOCATED).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in ssh's {ALLOCATED:?} line:\n{stderr}"))?;
    rig.api = SocketAddr::from(([127, 0, 0, 1], port));
    rig.settings = format!(
        "sshd ({}) with stock settings but for the temp-dir paths, forwarded port {}; \
         ssh -N -R 0:{} with ServerAliveInterval 1",
        openssh_version(&opts.sshd),
        rig.api,
        pi.signer.addr()
    );
    // The forward answers once the session is fully up.
    let deadline = Instant::now() + SETTLE;
    loop {
        match fresh_call(rig.api, "GET", "/authorized_keys", None).await {
            Ok(a) if a.status == 200 => break,
            other => {
                if Instant::now() > deadline {
                    let what = other
                        .map(|a| format!("HTTP {}", a.status))
                        .unwrap_or_else(|e| format!("{e:#}"));
                    bail!("the forwarded port never answered: {what}{}", rig.logs());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(rig)
}

fn openssh_version(sshd: &Path) -> String {
    Command::new(sshd)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|s| s.split([',', ' ']).next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct Signature {
    keys: Duration,
    sign: Duration,
    total: Duration,
}

struct LinkResult {
    scenario: Scenario,
    settings: String,
    sigs: Vec<Signature>,
    /// Requests other than signing that reached the Pi's signer in the measured window.
    pi_reads: u64,
    pi_signs: u64,
    answered_by: Vec<String>,
}

/// The baker: one signature per period, each a `GET /authorized_keys` and a `POST
/// /keys/<tz4>?version=3`, each on a new TCP connection.
async fn baker(opts: &Opts, rig: &Rig, pi: &Pi<'_>, level: &mut i32) -> anyhow::Result<LinkResult> {
    let mut sigs = Vec::new();
    let mut answered_by = Vec::new();
    let mut before = None;
    let mut next = Instant::now();
    for i in 0..opts.link_warmup + opts.signatures {
        if i == opts.link_warmup {
            before = Some(pi.signer.control().stats().await?);
        }
        tokio::time::sleep_until(next).await;
        next += opts.every;
        *level += 1;
        let body = sign_body(&bls_attestation(TEST_CHAIN, *level, 0, 0xaa));
        let started = Instant::now();
        let keys = fresh_call(rig.api, "GET", "/authorized_keys", None).await?;
        ensure!(
            keys.status == 200,
            "GET /authorized_keys: HTTP {}: {}",
            keys.status,
            keys.text()
        );
        let got_keys = Instant::now();
        let signed = fresh_call(rig.api, "POST", &sign_path(&pi.pkh), Some(&body)).await?;
        let done = Instant::now();
        check_signature(&signed, "BLsig").with_context(|| format!("tz4 sign at level {level}"))?;
        if i >= opts.link_warmup {
            sigs.push(Signature {
                keys: got_keys - started,
                sign: done - got_keys,
                total: done - started,
            });
            let by = keys.header("x-signer").unwrap_or("-").to_string();
            if !answered_by.contains(&by) {
                answered_by.push(by);
            }
        }
    }
    let after = pi.signer.control().stats().await?;
    let before = before.context("no measured signature")?;
    let signs = after.sign_requests - before.sign_requests;
    Ok(LinkResult {
        scenario: Scenario::Tunnel,
        settings: rig.settings.clone(),
        sigs,
        pi_reads: (after.requests - before.requests) - signs,
        pi_signs: signs,
        answered_by,
    })
}

async fn link_part(
    opts: &Opts,
    pi: &Pi<'_>,
    work: &Path,
    level: &mut i32,
) -> anyhow::Result<(LinkRtt, Vec<LinkResult>, Vec<(Scenario, String)>)> {
    let link = measure_link(opts).await?;
    println!(
        "  link: one-way delay {} ms; echo RTT p50 {} ms (min {}, max {}); new connection + one exchange p50 {} ms",
        ms1(opts.delay),
        ms1(percentile(&link.rtt, 0.5)),
        ms1(link.rtt[0]),
        ms1(link.rtt[link.rtt.len() - 1]),
        ms1(percentile(&link.fresh, 0.5)),
    );
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for &scenario in &opts.scenarios {
        let rig = match scenario {
            Scenario::Tunnel | Scenario::Passthrough => gateway_rig(opts, scenario, pi, work).await?,
            Scenario::OpenSsh => match openssh_missing(&opts.sshd) {
                Some(why) => {
                    println!("  SKIPPED {}: {why}", scenario.label());
                    skipped.push((scenario, why));
                    continue;
                }
                None => openssh_rig(opts, pi, work).await?,
            },
        };
        let mut r = baker(opts, &rig, pi, level)
            .await
            .with_context(|| format!("{}{}", scenario.label(), rig.logs()))?;
        r.scenario = scenario;
        println!(
            "  done: {}: per signature p50 {} ms",
            scenario.label(),
            ms1(percentile(&sorted(r.sigs.iter().map(|s| s.total).collect()), 0.5))
        );
        results.push(r);
        drop(rig);
    }
    Ok((link, results, skipped))
}

fn print_part2(
    opts: &Opts,
    link: &LinkRtt,
    results: &[LinkResult],
    skipped: &[(Scenario, String)],
    targets: &mut Targets,
) {
    let rtt = percentile(&link.rtt, 0.5);
    println!();
    println!(
        "### 2. Round trips over the Pi's link ({} ms each way; link RTT p50 {} ms; {} signatures, one per {} ms; ms)",
        ms1(opts.delay),
        ms1(rtt),
        opts.signatures,
        opts.every.as_millis()
    );
    println!();
    println!(
        "| scenario | per signature p50 | p90 | max | GET /authorized_keys p50 | POST /keys p50 | round trips per signature | Pi signer reads / signs per signature |"
    );
    println!("|:--|--:|--:|--:|--:|--:|--:|--:|");
    for r in results {
        let total = sorted(r.sigs.iter().map(|s| s.total).collect());
        let keys = sorted(r.sigs.iter().map(|s| s.keys).collect());
        let sign = sorted(r.sigs.iter().map(|s| s.sign).collect());
        let n = r.sigs.len() as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} / {:.2} |",
            r.scenario.label(),
            ms1(percentile(&total, 0.5)),
            ms1(percentile(&total, 0.9)),
            ms1(total[total.len() - 1]),
            ms1(percentile(&keys, 0.5)),
            ms1(percentile(&sign, 0.5)),
            percentile(&total, 0.5).as_secs_f64() / rtt.as_secs_f64(),
            r.pi_reads as f64 / n,
            r.pi_signs as f64 / n,
        );
    }
    for (s, why) in skipped {
        println!("| {} | SKIPPED: {why} | | | | | | |", s.label());
    }
    println!();
    for r in results {
        println!(
            "  {}: {}; /authorized_keys answered by x-signer {:?}",
            r.scenario.dir_name(),
            r.settings,
            r.answered_by
        );
    }
    println!(
        "  (Pi signer reads include health probes: the gateway's over the link in (a) and (b), one per \
         health_check.interval, and signer-tunnel's local check on the Pi, one per second.)"
    );
    let p50 = |s: Scenario| {
        results
            .iter()
            .find(|r| r.scenario == s)
            .map(|r| percentile(&sorted(r.sigs.iter().map(|x| x.total).collect()), 0.5))
    };
    if let Some(a) = p50(Scenario::Tunnel) {
        let trips = a.as_secs_f64() / rtt.as_secs_f64();
        targets.check(
            format!(
                "gateway + signer-tunnel: {trips:.2} link round trips per signature (p50 {} ms = RTT {} ms + {} ms local); target < {ROUND_TRIPS_TARGET}",
                ms1(a),
                ms1(rtt),
                ms1(a.saturating_sub(rtt)),
            ),
            trips < ROUND_TRIPS_TARGET,
        );
        for (other, name) in [
            (Scenario::Passthrough, "/authorized_keys passed through"),
            (Scenario::OpenSsh, "the incumbent (sshd + ssh -R)"),
        ] {
            if let Some(b) = p50(other) {
                println!(
                    "  {name}: {:.2} round trips per signature, {} ms per signature: {:.2}x the gateway's",
                    b.as_secs_f64() / rtt.as_secs_f64(),
                    ms1(b),
                    b.as_secs_f64() / a.as_secs_f64()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

async fn run(opts: &Opts) -> anyhow::Result<Targets> {
    let mut targets = Targets::default();
    let work = tempfile::Builder::new().prefix("baker-link-").tempdir()?;
    let tz1 = key_from_seed(1);
    let tz4 = bls_key_from_seed(1);
    let signer = TestSignerProcess::start_keys(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &[tz1.clone(), tz4.clone()],
        Mode::Ok,
    )
    .await
    .context("starting the test signer")?;
    let keys = [
        KeyCase {
            name: "tz1 (ed25519)",
            pkh: tz1.pkh(),
            prefix: "edsig",
            payload: attestation,
        },
        KeyCase {
            name: "tz4 (BLS, version=3)",
            pkh: tz4.pkh(),
            prefix: "BLsig",
            payload: bls_attestation,
        },
    ];
    println!("baker_link: load average before: {}", loadavg());
    let mut level = 1_000;
    if opts.gateway_part {
        println!("part 1: tz4 vs tz1 through the gateway");
        let r = gateway_part(opts, &signer, &keys, &mut level).await?;
        print_part1(opts, &keys, &r, &mut targets);
    }
    if opts.link_part {
        println!();
        println!("part 2: round trips over the Pi's link");
        let (identity, public) = keygen(work.path(), "baker-link").await?;
        let pi = Pi {
            signer: &signer,
            pkh: tz4.pkh(),
            identity: &identity,
            public: &public,
        };
        let (link, results, skipped) = link_part(opts, &pi, work.path(), &mut level).await?;
        print_part2(opts, &link, &results, &skipped, &mut targets);
    }
    println!();
    println!("baker_link: load average after: {}", loadavg());
    Ok(targets)
}

fn main() -> ExitCode {
    let opts = match Opts::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("baker_link: {e:#}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baker_link: building the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&opts)) {
        Ok(targets) => {
            println!();
            println!("Targets:");
            for (what, ok) in &targets.0 {
                println!("  {}: {what}", verdict(*ok));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baker_link: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
