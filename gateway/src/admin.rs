//! The admin endpoint (own port): `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::api::{error_trace, json, Body};
use crate::metrics::Metrics;
use crate::signing::Signing;
use crate::tunnel::Broker;

/// Shared state of the admin endpoint.
pub struct Admin {
    signing: Arc<Signing>,
    metrics: Arc<Metrics>,
    broker: Option<Arc<Broker>>,
    started: SystemTime,
}

impl Admin {
    /// Admin endpoint over the gateway's state.
    pub fn new(signing: Arc<Signing>, metrics: Arc<Metrics>, broker: Option<Arc<Broker>>) -> Admin {
        Admin {
            signing,
            metrics,
            broker,
            started: SystemTime::now(),
        }
    }

    /// Handle one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        if req.method() != Method::GET {
            return Ok(error_trace(
                StatusCode::METHOD_NOT_ALLOWED,
                "permanent",
                "admin.method",
                "only GET",
            ));
        }
        Ok(match req.uri().path() {
            "/metrics" => {
                // Refreshed here too, so a recovered store clears its alert without traffic.
                self.metrics
                    .store_healthy
                    .set(i64::from(self.signing.store().health().healthy));
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            "/healthz" => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            "/readyz" => self.readyz(),
            "/status" => json(StatusCode::OK, &self.status()),
            other => error_trace(
                StatusCode::NOT_FOUND,
                "permanent",
                "admin.not_found",
                &format!("no such path: {other}"),
            ),
        })
    }

    /// Ready when a signer is up and the watermark store can make marks durable.
    fn readyz(&self) -> Response<Body> {
        let store = self.signing.store().health();
        let signer_up = self.signing.pool().any_up();
        let ready = signer_up && store.healthy;
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(
            status,
            &serde_json::json!({ "ready": ready, "signer_up": signer_up, "store_healthy": store.healthy }),
        )
    }

    /// Everything an operator wants at a glance: which signer is live, and the store.
    pub fn status(&self) -> serde_json::Value {
        let signers = self.signing.pool().status();
        let active = signers
            .iter()
            .find(|s| s.state == crate::pool::State::Up)
            .map(|s| s.name.clone());
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": humantime::format_rfc3339_seconds(self.started).to_string(),
            "active_signer": active,
            "signers": signers,
            "watermark": self.signing.store().health(),
            "ssh": self.broker.as_ref().map(|b| serde_json::json!({
                "host_key_fingerprint": b.fingerprint(),
                "tunnels": b.status(),
            })),
        })
    }
}
