//! Probing the local signer: is it answering HTTP on the configured path?

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// GET `path` on the signer at `addr`; Ok when it answers 2xx within `timeout`.
pub async fn probe(addr: &str, path: &str, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, probe_once(addr, path))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn probe_once(addr: &str, path: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Drain the body so the signer sees a complete exchange.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
