//! Prometheus metrics: one registry, named `signer_gateway_*`, served on the admin port.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Sign requests by serving signer (`cache` for identical repeats, `none` when refused
    /// before a signer), kind and result (`ok`, `refused`, `error`).
    pub sign_requests: IntCounterVec,
    /// End-to-end latency of successful signs, by kind.
    pub sign_duration: HistogramVec,
    /// Watermark refusals by kind and reason (`below_watermark`, `different_data`, `store_error`).
    pub watermark_refusals: IntCounterVec,
    /// Time for the watermark check-and-record (includes the durable write).
    pub watermark_duration: Histogram,
    /// Policy refusals by kind.
    pub policy_refusals: IntCounterVec,
    /// 1 when a signer is considered healthy.
    pub signer_up: IntGaugeVec,
    /// Attempts on each signer by result (`ok`, `not_here` (404: not this signer's key),
    /// `connect_error`, `timeout`, `server_error`, `bad_signature`, `went_down`).
    pub signer_attempts: IntCounterVec,
    /// Requests moved on to the next signer after a failed attempt.
    pub failovers: IntCounterVec,
    /// Health-state transitions by signer and new state.
    pub signer_transitions: IntCounterVec,
    /// HTTP responses of the signing API by status code.
    pub http_responses: IntCounterVec,
    /// 1 while the watermark store can make marks durable.
    pub store_healthy: IntGauge,
    /// 1 while a tunnel signer's session carries its forward.
    pub tunnel_connected: IntGaugeVec,
    /// SSH connections by outcome, counted once per connection: `accepted`, or why it never
    /// authenticated (`rejected_unknown_key`, `rejected_auth_method`, `rejected_auth_timeout`,
    /// `rejected_too_many_unauthenticated`, `closed_before_auth`).
    pub ssh_sessions: IntCounterVec,
    /// Requests refused on authenticated sessions (`session`, `direct_tcpip`, `streamlocal`).
    pub ssh_refused_requests: IntCounterVec,
    /// A newer session of a signer replaced an older one.
    pub tunnel_replacements: IntCounterVec,
    /// Replacements beyond `ssh.max_replacements_per_minute`: two devices on one key?
    pub tunnel_replacement_storms: IntCounterVec,
    /// Tunnel sessions dropped because keepalives went unanswered.
    pub tunnel_keepalive_timeouts: IntCounterVec,
    /// Time to open a forwarded channel through a tunnel.
    pub tunnel_channel_open: Histogram,
    /// Connections or requests refused, by port (`api`, `admin`, `socket`) and reason
    /// (`per_source`, `first_byte_timeout`, `header_timeout`, `body_timeout`, `malformed`).
    pub http_refused: IntCounterVec,
    /// Requests waiting for a signer's concurrency permit, by signer.
    pub signer_queued: IntGaugeVec,
    /// Requests refused because a signer's queue was full, by signer.
    pub signer_queue_full: IntCounterVec,
    /// Requests on the socket-protocol listener by request kind (`sign`, `public_key`,
    /// `authorized_keys`…) and result (`ok`, or `error` for an error answer), plus kind `undecodable`
    /// for requests that do not decode (answered with an error, then the connection is closed).
    pub socket_requests: IntCounterVec,
    /// The watermark store's own operations.
    pub store: StoreMetrics,
}

/// Watermark store metrics, by backend (`memory`, `file`, `etcd`). Cheap to clone; usable
/// unregistered (the `watermark` CLI commands).
#[derive(Clone)]
pub struct StoreMetrics {
    /// Latency by operation: the store's (`check_and_record`, `record_signature`, `set`,
    /// `list`) and, for etcd, each round trip (`etcd_get`, `etcd_txn`, `etcd_put`, `etcd_range`).
    pub duration: HistogramVec,
    /// Failed operations by cause (`timeout`, `unavailable`, `contention`, `write_failed`…).
    pub errors: IntCounterVec,
    /// Conditional writes that lost to another writer of the same mark (etcd), and were
    /// re-judged on the fresh mark.
    pub lost_races: IntCounterVec,
}

impl StoreMetrics {
    /// Create the metrics, unregistered.
    pub fn new() -> prometheus::Result<StoreMetrics> {
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0,
            5.0,
        ];
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "signer_gateway_store_duration_seconds",
                "Watermark store operation latency, by backend and operation",
            )
            .buckets(buckets),
            &["backend", "op"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "signer_gateway_store_errors_total",
                "Failed watermark store operations, by backend and cause",
            ),
            &["backend", "reason"],
        )?;
        let lost_races = IntCounterVec::new(
            Opts::new(
                "signer_gateway_store_lost_races_total",
                "Conditional mark writes lost to another writer and re-judged, by backend",
            ),
            &["backend"],
        )?;
        Ok(StoreMetrics {
            duration,
            errors,
            lost_races,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.lost_races.clone()))
    }

    /// Time `op` of `backend` (seconds since `started`).
    pub fn observe(&self, backend: &str, op: &str, started: std::time::Instant) {
        self.duration
            .with_label_values(&[backend, op])
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let sign_requests = counter(
            "signer_gateway_sign_requests_total",
            "Sign requests by serving signer, kind and result",
            &["signer", "kind", "result"],
        )?;
        let watermark_refusals = counter(
            "signer_gateway_watermark_refusals_total",
            "Sign requests refused by the high watermark",
            &["kind", "reason"],
        )?;
        let policy_refusals = counter(
            "signer_gateway_policy_refusals_total",
            "Sign requests refused by policy",
            &["kind"],
        )?;
        let signer_attempts = counter(
            "signer_gateway_signer_attempts_total",
            "Requests sent to each signer, by result",
            &["signer", "result"],
        )?;
        let failovers = counter(
            "signer_gateway_failovers_total",
            "Requests passed on from a failing signer to the next one",
            &["from"],
        )?;
        let signer_transitions = counter(
            "signer_gateway_signer_transitions_total",
            "Signer health transitions, by new state",
            &["signer", "state"],
        )?;
        let http_responses = counter(
            "signer_gateway_http_responses_total",
            "Signing API responses by status code",
            &["code"],
        )?;
        let buckets = vec![
            0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
        ];
        let sign_duration = HistogramVec::new(
            HistogramOpts::new("signer_gateway_sign_duration_seconds", "Latency of successful signs")
                .buckets(buckets.clone()),
            &["kind"],
        )?;
        registry.register(Box::new(sign_duration.clone()))?;
        let watermark_duration = Histogram::with_opts(
            HistogramOpts::new(
                "signer_gateway_watermark_duration_seconds",
                "Watermark check-and-record latency",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(watermark_duration.clone()))?;
        let store = StoreMetrics::new()?;
        store.register(&registry)?;
        let signer_up = IntGaugeVec::new(
            Opts::new("signer_gateway_signer_up", "1 when the signer is healthy, by signer"),
            &["signer"],
        )?;
        registry.register(Box::new(signer_up.clone()))?;
        let store_healthy = IntGauge::new(
            "signer_gateway_watermark_store_healthy",
            "1 while the watermark store is usable",
        )?;
        registry.register(Box::new(store_healthy.clone()))?;
        let tunnel_connected = IntGaugeVec::new(
            Opts::new(
                "signer_gateway_tunnel_connected",
                "1 while the signer's SSH tunnel is connected",
            ),
            &["signer"],
        )?;
        registry.register(Box::new(tunnel_connected.clone()))?;
        let ssh_sessions = counter(
            "signer_gateway_ssh_sessions_total",
            "SSH connections by outcome",
            &["result"],
        )?;
        let ssh_refused_requests = counter(
            "signer_gateway_ssh_refused_requests_total",
            "Channel and forwarding requests refused on authenticated SSH sessions",
            &["kind"],
        )?;
        let tunnel_replacements = counter(
            "signer_gateway_tunnel_replacements_total",
            "Tunnel sessions replaced by a newer session of the same signer",
            &["signer"],
        )?;
        let tunnel_replacement_storms = counter(
            "signer_gateway_tunnel_replacement_storms_total",
            "Replacements beyond the per-minute limit (two devices sharing one key?)",
            &["signer"],
        )?;
        let tunnel_keepalive_timeouts = counter(
            "signer_gateway_tunnel_keepalive_timeouts_total",
            "Tunnel sessions dropped after unanswered keepalives",
            &["signer"],
        )?;
        let tunnel_channel_open = Histogram::with_opts(
            HistogramOpts::new(
                "signer_gateway_tunnel_channel_open_seconds",
                "Time to open a channel through a tunnel",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
        )?;
        registry.register(Box::new(tunnel_channel_open.clone()))?;
        let http_refused = counter(
            "signer_gateway_http_refused_total",
            "Connections or requests refused by the HTTP layer",
            &["port", "reason"],
        )?;
        let signer_queued = IntGaugeVec::new(
            Opts::new(
                "signer_gateway_signer_queued",
                "Requests waiting for a signer's concurrency permit",
            ),
            &["signer"],
        )?;
        registry.register(Box::new(signer_queued.clone()))?;
        let signer_queue_full = counter(
            "signer_gateway_signer_queue_full_total",
            "Requests refused because a signer's queue was full",
            &["signer"],
        )?;
        let socket_requests = counter(
            "signer_gateway_socket_requests_total",
            "Requests on the socket-protocol listener, by kind and result",
            &["kind", "result"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("signer_gateway_build_info", "Build information"),
            &["version"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Metrics {
            registry,
            sign_requests,
            sign_duration,
            watermark_refusals,
            watermark_duration,
            store,
            policy_refusals,
            signer_up,
            signer_attempts,
            failovers,
            signer_transitions,
            http_responses,
            store_healthy,
            tunnel_connected,
            ssh_sessions,
            ssh_refused_requests,
            tunnel_replacements,
            tunnel_replacement_storms,
            tunnel_keepalive_timeouts,
            tunnel_channel_open,
            http_refused,
            signer_queued,
            signer_queue_full,
            socket_requests,
        })
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        buf
    }
}
