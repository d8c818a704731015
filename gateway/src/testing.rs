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

/// The key a [`Fake`] signs with.
#[derive(Clone)]
enum Key {
    Ed25519(ed25519_dalek::SigningKey),
    Bls(blst::min_pk::SecretKey),
}

/// A signer in memory holding one key (ed25519, or BLS signing under the scheme the
/// request's `version` asks for); counts the requests it gets.
#[derive(Clone)]
pub(crate) struct Fake {
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
    signs: Arc<AtomicUsize>,
    key: Key,
}

impl Fake {
    pub(crate) fn new() -> Fake {
        Fake {
            behaviour: Arc::new(Mutex::new(Behaviour::Ok)),
            requests: Arc::new(AtomicUsize::new(0)),
            signs: Arc::new(AtomicUsize::new(0)),
            key: Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[7; 32])),
        }
    }

    /// A tz4 signer.
    pub(crate) fn bls() -> Fake {
        let sk = blst::min_pk::SecretKey::key_gen(&[9; 32], &[]).unwrap();
        Fake {
            key: Key::Bls(sk),
            ..Fake::new()
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
        match &self.key {
            Key::Ed25519(k) => PublicKey::Ed25519(k.verifying_key().to_bytes()),
            Key::Bls(sk) => PublicKey::Bls(crate::tezos::BlsPublicKey::from_bytes(&sk.sk_to_pk().compress()).unwrap()),
        }
    }

    fn sign(&self, bytes: &[u8], scheme: crate::tezos::BlsScheme) -> String {
        match &self.key {
            Key::Ed25519(k) => tezos::encode_ed25519_signature(&k.sign(&tezos::blake2b_256(bytes)).to_bytes()),
            Key::Bls(sk) => {
                let pk = sk.sk_to_pk().compress();
                let aug: &[u8] = match scheme {
                    crate::tezos::BlsScheme::Augmented => &pk,
                    crate::tezos::BlsScheme::ProofOfPossession => &[],
                };
                tezos::encode_bls_signature(&sk.sign(bytes, scheme.dst(), aug).compress())
            }
        }
    }

    async fn answer(&self, method: Method, query: Option<String>, body: Bytes) -> Response<Full<Bytes>> {
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
            let scheme = match query.as_deref() {
                Some(q) if q.contains("version=1") => crate::tezos::BlsScheme::Augmented,
                _ => crate::tezos::BlsScheme::ProofOfPossession,
            };
            serde_json::json!({ "signature": self.sign(&bytes, scheme) })
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
                    let query = req.uri().query().map(str::to_string);
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(fake.answer(method, query, body).await)
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
