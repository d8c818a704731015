//! The answers hyper makes by itself are JSON error traces too.
//!
//! hyper answers a request it cannot parse (400), whose head is too large (431) or whose
//! target is too long (414) before any service sees it, with an empty body; the octez client
//! shows a message only for a JSON error trace. [`JsonErrors`] wraps a connection's socket,
//! recognises such an automatic answer as hyper writes it (one of those statuses with
//! `content-length: 0` and nothing after the head, which the gateway's own answers never
//! are: they always carry a JSON body) and writes a JSON trace in its place.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

/// A socket whose automatic hyper answers are rewritten as JSON error traces.
pub struct JsonErrors<T> {
    inner: T,
    /// A replacement answer being written: bytes and how many are out.
    pending: Option<(Vec<u8>, usize)>,
    metrics: Option<(Arc<Metrics>, &'static str)>,
}

impl<T> JsonErrors<T> {
    /// Wrap `inner`; rewritten answers are counted under `port` when `metrics` is given.
    pub fn new(inner: T, metrics: Option<(Arc<Metrics>, &'static str)>) -> JsonErrors<T> {
        JsonErrors {
            inner,
            pending: None,
            metrics,
        }
    }
}

/// The JSON answer that replaces hyper's automatic answer in `buf`, if `buf` is one.
pub fn replacement(buf: &[u8]) -> Option<(u16, Vec<u8>)> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let (code, msg) = match rest.get(..4)? {
        b"400 " => (400, "malformed HTTP request"),
        b"414 " => (414, "request target too long"),
        b"431 " => (431, "request header fields too large"),
        _ => return None,
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") || head.contains("\r\ncontent-type:") {
        return None;
    }
    let reason = match code {
        400 => "Bad Request",
        414 => "URI Too Long",
        _ => "Request Header Fields Too Large",
    };
    let body = serde_json::json!([{ "kind": "permanent", "id": "signer_gateway.bad_http", "msg": msg }]).to_string();
    let answer = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Some((code, answer.into_bytes()))
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Write out the replacement answer, if any.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some((code, answer)) = replacement(buf) {
            if let Some((m, port)) = &this.metrics {
                m.http_refused.with_label_values(&[port, "malformed"]).inc();
                m.http_responses.with_label_values(&[&code.to_string()]).inc();
            }
            this.pending = Some((answer, 0));
            // hyper's bytes are taken whole; the replacement goes out now or on flush.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each answer over as one buffer, which is what
    // `replacement` inspects.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hyper_automatic_answers_only() {
        let auto = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let (code, answer) = replacement(auto).expect("rewritten");
        assert_eq!(code, 431);
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v[0]["id"], "signer_gateway.bad_http");
        for code in ["400 Bad Request", "414 URI Too Long"] {
            let a = format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n");
            assert!(replacement(a.as_bytes()).is_some(), "{code}");
        }
        // The gateway's own answers: a JSON body, a content type, another status.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        assert!(replacement(own).is_none());
        let own_head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(own_head).is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 431 X\r\ncontent-length: 0\r\n").is_none());
        assert!(replacement(b"[{\"kind\":").is_none());
    }
}
