//! The load generator: one task per client, each with its own keep-alive connection and its
//! own key, sending attestations one at a time and checking that each answer is a 200 with an
//! `edsig…` signature. Clients warm up, wait for each other, then measure, back to back for a
//! while or one request per period (a baker's pace). Levels come from one process-wide
//! counter, so every key sees them strictly increase across windows and scenarios.
//!
//! Clients speak octez's HTTP signer protocol or its binary socket protocol ([`Wire`]). A
//! socket client keeps one TCP connection (`TCP_NODELAY`) and sends one `Sign` frame at a time
//! on it, with the gateway's own codec (`signer_gateway::socket`), checking each answer is a
//! 64-byte signature; a connection that fails or times out is dropped and the next request
//! opens a new one. (octez's own socket client opens a connection per operation and asks
//! `Authorized_keys` first; a kept connection is the counterpart of HTTP keep-alive.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use signer_gateway::socket::{
    decode_response, encode_request, read_frame, write_frame, Request, RequestKind, Response, SignRequest, Signature,
    MAX_FRAME,
};
use signer_gateway::tezos::Pkh;
use testkit::harness::{attestation, TEST_CHAIN};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use super::report::{ms, Table};
use super::stats::Latencies;

/// Bound on one request: a stuck request is an error, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept per window.
const MAX_ERROR_SAMPLES: usize = 5;
/// Warm-up requests per client at least.
const MIN_WARMUP: usize = 20;

/// The next level to sign, for every key.
static NEXT_LEVEL: AtomicI32 = AtomicI32::new(1);

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A client with its own pool: run sequentially, it keeps exactly one keep-alive connection.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// The protocol a load client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// octez's HTTP signer protocol: `POST /keys/<pkh>` on a keep-alive connection.
    Http,
    /// octez's binary socket protocol: one `Sign` frame at a time on a kept TCP connection.
    Socket,
}

/// One client's connection and key.
// One per client task, built once and never moved while measuring: its size costs nothing, and
// boxing the HTTP client would put an indirection on the path the earlier figures measured.
#[allow(clippy::large_enum_variant)]
enum Client {
    Http {
        client: HttpClient,
        uri: http::Uri,
    },
    Socket {
        addr: SocketAddr,
        pkh: Pkh,
        /// The kept connection; `None` until the first request and after a failed one.
        conn: Option<TcpStream>,
    },
}

impl Client {
    fn new(wire: Wire, api: SocketAddr, pkh: &str) -> anyhow::Result<Client> {
        Ok(match wire {
            Wire::Http => Client::Http {
                client: http_client(),
                uri: format!("http://{api}/keys/{pkh}").parse().context("sign URI")?,
            },
            Wire::Socket => Client::Socket {
                addr: api,
                pkh: pkh.parse().map_err(|e| anyhow::anyhow!("key {pkh}: {e}"))?,
                conn: None,
            },
        })
    }

    /// One sign request at the next level.
    async fn sign_once(&mut self) -> Result<(), String> {
        match self {
            Client::Http { client, uri } => sign_once(client, uri).await,
            Client::Socket { addr, pkh, conn } => socket_sign_once(*addr, *pkh, conn).await,
        }
    }
}

/// One socket `Sign` request at the next level on `conn` (opened first if `None`); `Ok` only
/// for a 64-byte signature. A failure drops the connection: a frame may be half read.
async fn socket_sign_once(addr: SocketAddr, pkh: Pkh, conn: &mut Option<TcpStream>) -> Result<(), String> {
    let level = NEXT_LEVEL.fetch_add(1, Ordering::Relaxed);
    let request = Request::Sign(SignRequest {
        pkh,
        version: None,
        data: attestation(TEST_CHAIN, level, 0, 0xaa),
        authentication: None,
    });
    let frame = encode_request(&request).map_err(|e| format!("encoding the request: {e}"))?;
    let exchange = async {
        let stream = match conn {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
                conn.insert(s)
            }
        };
        write_frame(stream, &frame)
            .await
            .map_err(|e| format!("level {level}: sending: {e}"))?;
        let answer = read_frame(stream, MAX_FRAME)
            .await
            .map_err(|e| format!("level {level}: reading the answer: {e}"))?
            .ok_or_else(|| format!("level {level}: connection closed without an answer"))?;
        match decode_response(RequestKind::Sign, &answer) {
            Ok(Response::Signature(Signature::Generic(_))) => Ok(()),
            Ok(other) => Err(format!("level {level}: {other:?}")),
            Err(e) => Err(format!("level {level}: undecodable answer: {e}")),
        }
    };
    let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("level {level}: no answer within {REQUEST_TIMEOUT:?}")));
    if result.is_err() {
        *conn = None;
    }
    result
}

/// One sign request at the next level; `Ok` only for a 200 carrying an `edsig…` signature.
async fn sign_once(client: &HttpClient, uri: &http::Uri) -> Result<(), String> {
    let level = NEXT_LEVEL.fetch_add(1, Ordering::Relaxed);
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
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match json["signature"].as_str() {
            Some(s) if status == http::StatusCode::OK && s.starts_with("edsig") => Ok(()),
            _ => Err(format!("level {level}: {status} {}", String::from_utf8_lossy(&body))),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("level {level}: no answer within {REQUEST_TIMEOUT:?}")))
}

/// How the clients send once warm.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Back to back, for this long.
    BackToBack(Duration),
    /// One request per `period`, `n` of them.
    Every {
        /// Time between two requests.
        period: Duration,
        /// Requests measured.
        n: usize,
    },
}

/// What one window measured.
#[derive(Default)]
pub struct Window {
    /// Latency of every successful request.
    pub latencies: Latencies,
    /// Failed requests, and a few of their messages.
    pub errors: usize,
    /// See `errors`.
    pub error_samples: Vec<String>,
    /// From the first client's start to the last one's end.
    pub elapsed: Duration,
}

impl Window {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.latencies.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The report's table of windows: scenario, clients, requests, req/s, p50, p99, errors,
    /// then `more` columns.
    pub fn table(more: &[&str]) -> Table {
        let columns = [
            "scenario",
            ">clients",
            ">requests",
            ">req/s",
            ">p50 ms",
            ">p99 ms",
            ">errors",
        ];
        Table::new(&[&columns[..], more].concat())
    }

    /// This window's first cells in [`Window::table`].
    pub fn cells(&self, scenario: &str, clients: &str) -> Vec<String> {
        let l = &self.latencies;
        let (count, rps) = (l.count().to_string(), format!("{:.0}", self.rps()));
        vec![
            scenario.into(),
            clients.into(),
            count,
            rps,
            ms(l.p50()),
            ms(l.p99()),
            self.errors.to_string(),
        ]
    }

    fn note(&mut self, error: String) {
        self.errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(error);
        }
    }
}

/// Clients that are measuring; [`Running::finish`] waits for them.
pub struct Running {
    clients: Vec<JoinHandle<(Window, Instant)>>,
}

/// Start one HTTP client per key of `pkhs` against `api` (`/keys/<pkh>`): `warmup` requests
/// spread over them (at least 20 each), then returns as they start measuring, so the caller
/// can take its own readings of the window.
pub async fn start(api: SocketAddr, pkhs: &[String], warmup: usize, pace: Pace) -> anyhow::Result<Running> {
    start_on(Wire::Http, api, pkhs, warmup, pace).await
}

/// [`start`], with clients speaking `wire`.
pub async fn start_on(
    wire: Wire,
    api: SocketAddr,
    pkhs: &[String],
    warmup: usize,
    pace: Pace,
) -> anyhow::Result<Running> {
    let warmup = warmup.div_ceil(pkhs.len().max(1)).max(MIN_WARMUP);
    let barrier = Arc::new(Barrier::new(pkhs.len() + 1));
    let mut clients = Vec::with_capacity(pkhs.len());
    for pkh in pkhs {
        let mut client = Client::new(wire, api, pkh)?;
        let barrier = Arc::clone(&barrier);
        clients.push(tokio::spawn(async move {
            let mut w = Window::default();
            for _ in 0..warmup {
                if let Err(e) = client.sign_once().await {
                    w.note(format!("warm-up: {e}"));
                }
            }
            barrier.wait().await;
            let started = Instant::now();
            let (mut tick, deadline, n) = match pace {
                Pace::BackToBack(d) => (None, Some(started + d), usize::MAX),
                Pace::Every { period, n } => (Some(testkit::tunnel_rig::ticker(period)), None, n),
            };
            for _ in 0..n {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t0 = Instant::now();
                if deadline.is_some_and(|d| t0 >= d) {
                    break;
                }
                match client.sign_once().await {
                    Ok(()) => w.latencies.record(t0.elapsed()),
                    Err(e) => w.note(e),
                }
            }
            w.elapsed = started.elapsed();
            (w, started)
        }));
    }
    barrier.wait().await;
    Ok(Running { clients })
}

impl Running {
    /// Wait for every client; their windows merged.
    pub async fn finish(self) -> anyhow::Result<Window> {
        let mut all = Window::default();
        let mut span: Option<(Instant, Instant)> = None;
        for c in self.clients {
            let (w, started) = c.await.context("a load client panicked")?;
            let ended = started + w.elapsed;
            span = Some(span.map_or((started, ended), |(a, b)| (a.min(started), b.max(ended))));
            all.latencies.merge(&w.latencies);
            all.errors += w.errors;
            let room = MAX_ERROR_SAMPLES.saturating_sub(all.error_samples.len());
            all.error_samples.extend(w.error_samples.into_iter().take(room));
        }
        all.elapsed = span.map_or(Duration::ZERO, |(a, b)| b - a);
        Ok(all)
    }
}

/// Sum and count of the gateway's own latency histograms, read from its `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayHistograms {
    watermark: (f64, f64),
    sign: (f64, f64),
}

impl GatewayHistograms {
    /// Read them now from the admin listener at `admin`.
    pub async fn read(admin: SocketAddr) -> anyhow::Result<GatewayHistograms> {
        let (status, body) = testkit::harness::Client::new()
            .with_timeout(REQUEST_TIMEOUT)
            .get(&format!("http://{admin}/metrics"))
            .await?;
        anyhow::ensure!(status.is_success(), "GET /metrics: {status}");
        let text = body.as_str().context("/metrics is not text")?;
        let sum = |series: &str| -> f64 {
            text.lines()
                .filter(|l| l.split(['{', ' ']).next() == Some(series))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let of = |name: &str| (sum(&format!("{name}_sum")), sum(&format!("{name}_count")));
        Ok(GatewayHistograms {
            watermark: of("signer_gateway_watermark_duration_seconds"),
            sign: of("signer_gateway_sign_duration_seconds"),
        })
    }

    /// Mean watermark check-and-record and mean in-gateway sign time between `self` and `later`.
    pub fn means_until(&self, later: &GatewayHistograms) -> (Option<Duration>, Option<Duration>) {
        let mean = |a: (f64, f64), b: (f64, f64)| {
            let n = b.1 - a.1;
            (n > 0.0).then(|| Duration::from_secs_f64(((b.0 - a.0) / n).max(0.0)))
        };
        (mean(self.watermark, later.watermark), mean(self.sign, later.sign))
    }
}
