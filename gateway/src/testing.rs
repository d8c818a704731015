//! Test support, in process: a signer at the other end of an in-memory pipe
//! ([`tokio::io::duplex`]) reached through the same [`Connect`] seam as TCP and tunnels, with
//! behaviours switched at will and a real ed25519 key. On paused time its delays cost nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::Signer as _;
use futures_util::future::BoxFuture;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::tezos::{self, PublicKey};
use crate::transport::{Connect, Io};

/// How a [`Fake`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// As a signer does.
    Ok,
    /// This status and `{}`.
    Status(u16),
    /// Correctly, after this long.
    Slow(Duration),
    /// Never.
    Hang,
}

/// A signer in memory holding one ed25519 key; counts the requests it gets.
#[derive(Clone)]
pub(crate) struct Fake {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
    signs: Arc<AtomicUsize>,
    key: ed25519_dalek::SigningKey,
}

impl Fake {
    pub(crate) fn new() -> Fake {
        Fake {
            behaviour: Arc::new(Mutex::new(Behaviour::Ok)),
            requests: Arc::new(AtomicUsize::new(0)),
            signs: Arc::new(AtomicUsize::new(0)),
            key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
        }
    }

    pub(crate) fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// `POST /keys/…` requests received.
    pub(crate) fn signs(&self) -> usize {
        self.signs.load(Ordering::SeqCst)
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        PublicKey::Ed25519(self.key.verifying_key().to_bytes())
    }

    async fn answer(&self, method: Method, body: Bytes) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let behaviour = *self.behaviour.lock().unwrap();
        let status = match behaviour {
            Behaviour::Ok => 200,
            Behaviour::Status(s) => s,
            Behaviour::Slow(d) => {
                tokio::time::sleep(d).await;
                200
            }
            Behaviour::Hang => std::future::pending().await,
        };
        let json = if method == Method::POST {
            self.signs.fetch_add(1, Ordering::SeqCst);
            let text: String = serde_json::from_slice(&body).unwrap_or_default();
            let bytes = hex::decode(text.trim()).unwrap_or_default();
            let sig = self.key.sign(&tezos::blake2b_256(&bytes));
            serde_json::json!({ "signature": tezos::encode_ed25519_signature(&sig.to_bytes()) })
        } else {
            serde_json::json!({ "public_key": self.public_key().to_string() })
        };
        let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        resp
    }
}

impl Connect for Fake {
    fn connect(&self) -> BoxFuture<'static, std::io::Result<Box<dyn Io>>> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let fake = self.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let fake = fake.clone();
                async move {
                    let method = req.method().clone();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(fake.answer(method, body).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        Box::pin(async move { Ok(Box::new(client) as Box<dyn Io>) })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}
