//! A small HTTP/1.1 client for tests (hyper-util's legacy client, keep-alive pool).

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type ReqBody = BoxBody<Bytes, Infallible>;

/// Default bound on one request, so a hung server fails the test instead of hanging it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or as a JSON string holding its text when it is not JSON.
    pub fn value(&self) -> Value {
        self.json().unwrap_or_else(|| Value::String(self.text()))
    }
}

/// HTTP client with a keep-alive connection pool and a per-request timeout.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, ReqBody>,
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A pooling (keep-alive) client with [`DEFAULT_TIMEOUT`].
    pub fn new() -> Client {
        Client::build(true)
    }

    /// A client that opens a fresh connection per request: for servers that are killed and
    /// restarted on the same port, where a pooled connection would be stale.
    pub fn fresh_connections() -> Client {
        Client::build(false)
    }

    fn build(pool: bool) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        if !pool {
            builder.pool_max_idle_per_host(0);
        }
        Client {
            inner: builder.build(connector),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `POST http://<api><prefix>/keys/<pkh>` with `bytes` as a JSON hex string (plus the
    /// trailing newline octez-client sends). Returns the status and the body as JSON (or a
    /// JSON string holding the text when the body is not JSON).
    pub async fn sign(
        &self,
        api: SocketAddr,
        prefix: &str,
        pkh: impl Display,
        bytes: &[u8],
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.sign_query(api, prefix, pkh, None, bytes).await
    }

    /// [`Client::sign`] with a query string (without `?`), e.g. `version=2`.
    pub async fn sign_query(
        &self,
        api: SocketAddr,
        prefix: &str,
        pkh: impl Display,
        query: Option<&str>,
        bytes: &[u8],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut url = format!("http://{api}{prefix}/keys/{pkh}");
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let body = format!("\"{}\"\n", hex::encode(bytes));
        let reply = self
            .raw(Method::POST, &url, body, &[("content-type", "application/json")])
            .await?;
        Ok((reply.status, reply.value()))
    }

    /// `GET url`: status and body (JSON, or a JSON string holding the text).
    pub async fn get(&self, url: &str) -> anyhow::Result<(StatusCode, Value)> {
        let reply = self.raw(Method::GET, url, Bytes::new(), &[]).await?;
        Ok((reply.status, reply.value()))
    }

    /// Any request with a `Content-Length` body.
    pub async fn raw(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let body = Full::new(body.into()).boxed();
        self.send(method, url, body, headers).await
    }

    /// Any request with a body sent as these chunks (`Transfer-Encoding: chunked`).
    pub async fn raw_chunked(
        &self,
        method: Method,
        url: &str,
        chunks: Vec<Bytes>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        let body = Chunked(chunks.into_iter().rev().collect()).boxed();
        self.send(method, url, body, headers).await
    }

    async fn send(&self, method: Method, url: &str, body: ReqBody, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(body)
            .with_context(|| format!("building {method} {url}"))?;
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("header name {name:?}"))?,
                HeaderValue::from_str(value).with_context(|| format!("header value {value:?}"))?,
            );
        }
        let fut = async {
            let resp = self.inner.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow::anyhow!("{method} {url}: no answer within {:?}", self.timeout))?
            .with_context(|| format!("{method} {url}"))
    }
}

/// A body of several frames and no declared length, so hyper sends it chunked.
struct Chunked(Vec<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: forces `Transfer-Encoding: chunked`.
        SizeHint::default()
    }
}
