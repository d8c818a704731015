//! A real octez-compatible remote signer for tests: HTTP/1.1 (hyper, keep-alive on) or octez's
//! binary socket protocol ([`Protocol`]), real ed25519 (tz1) and BLS12-381 (tz4) keys from
//! fixed seeds, and fault modes switchable at runtime. Both protocols share the keys, the
//! modes and the [`Stats`].
//!
//! # HTTP protocol (as octez-signer, `protocol.md` sections 1 and 5)
//! - `GET /authorized_keys` → `{}`
//! - `GET /keys/<pkh>` → `{"public_key":"edpk…"}` (or `BLpk…`), 404 for an unknown key
//! - `POST /keys/<pkh>[?version=..&authentication=..]`, body a JSON string of hex (magic byte
//!   included, trailing newline accepted, `Content-Length` or chunked) →
//!   `{"signature":"edsig…"}`: ed25519 over blake2b-256 of the bytes; for tz4 `BLsig…` over
//!   the bytes themselves, augmented for `version=1`, proof of possession for 2, 3 or none.
//!   400 on a bad body or version.
//! - `GET /bls_prove_possession/<pkh>[?bls_pk=BLpk…]` → `{"bls_prove_possession":"BLsig…"}`.
//!
//! Errors are octez error traces: `[{"kind":"temporary","id":"…","msg":"…"}]`.
//!
//! # Socket protocol (as `octez-signer launch socket signer`)
//! Every request kind of `signer_gateway::socket`, one connection serving requests until the
//! peer closes: see `test_signer/socket_server.rs` for the answers and what each mode does.
//!
//! # Fault modes ([`Mode`])
//! `ok`, `slow:<ms>`, `fail`, `fail-sign`, `hang`, `wrong-sig`, `wrong-scheme`,
//! `malformed-sig`, `bad-key`, `refuse`, and for the socket protocol `close-mid-answer` and
//! `garbage`: see the variants.
//! Modes apply to protocol paths only, never to the control endpoints.
//!
//! # Control endpoints (outside the protocol)
//! - `PUT /_control/mode` (body: the mode string, optionally JSON-quoted) → 204; `GET` → the mode
//! - `GET /_control/stats` → [`Stats`] as JSON, so a test can tell which signer served
//! - `POST /_control/reset` → zero the counters
//!
//! An HTTP signer serves them on its own port; a socket signer's port speaks only the socket
//! protocol, so it serves them on [`TestSignerOptions::control_listen`] (which an HTTP signer
//! may use too).
//!
//! Use [`TestSigner::spawn`] in-process, or the `test-signer` binary (see
//! `harness::TestSignerProcess`) when a test needs to kill a signer for real.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use signer_gateway::socket;
use signer_gateway::tezos::{self, BlsPublicKey, BlsScheme, Pkh, PublicKey};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod socket_server;

/// Largest request body the test signer reads (octez payloads are far smaller).
const MAX_BODY: usize = 1 << 20;

/// The 32-byte seed that [`key_from_seed`] derives key number `n` from: `[n; 32]`.
///
/// Deliberately trivial so other tools (octez-client, Taquito) can rebuild the same keys.
pub fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

/// The deterministic test key number `n` (seed `[n; 32]`).
pub fn key_from_seed(n: u8) -> TestKey {
    TestKey::from_seed(seed(n))
}

/// Parse a seed given on a command line: 64 hex digits, an `edsk…` seed, or a small integer
/// `n` meaning [`seed`]`(n)`.
pub fn parse_seed(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() == 64 {
        let bytes = hex::decode(s).map_err(|e| format!("seed {s:?}: {e}"))?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes);
        return Ok(out);
    }
    if s.starts_with("edsk") {
        return tezos::decode_ed25519_seed(s).map_err(|e| format!("seed {s:?}: {e}"));
    }
    s.parse::<u8>()
        .map(seed)
        .map_err(|_| format!("seed {s:?}: expected 64 hex digits, an edsk… seed or an integer 0..=255"))
}

/// The deterministic tz4 test key number `n`: octez's key generation (`blst` KeyGen) from
/// the seed `[n; 32]`.
pub fn bls_key_from_seed(n: u8) -> TestKey {
    TestKey::bls_from_ikm(seed(n))
}

/// Parse a tz4 key given on a command line: a `BLsk…` secret key (octez's little-endian
/// scalar), 64 hex digits of key-generation input, or a small integer `n` for
/// [`bls_key_from_seed`]`(n)`.
pub fn parse_bls_key(s: &str) -> Result<TestKey, String> {
    let s = s.trim();
    if s.starts_with("BLsk") {
        return TestKey::from_blsk(s);
    }
    let ikm = parse_seed(s)
        .map_err(|_| format!("tz4 key {s:?}: expected a BLsk… secret key, 64 hex digits or an integer 0..=255"))?;
    Ok(TestKey::bls_from_ikm(ikm))
}

/// The secret half of a [`TestKey`].
#[derive(Clone)]
enum Secret {
    Ed25519(Box<SigningKey>),
    Bls(blst::min_pk::SecretKey),
}

/// A signing key (ed25519 or BLS12-381) with its Tezos names.
#[derive(Clone)]
pub struct TestKey {
    secret: Secret,
    public_key: PublicKey,
    pkh: Pkh,
}

impl TestKey {
    /// The tz1 key whose 32-byte ed25519 seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> TestKey {
        let key = SigningKey::from_bytes(&seed);
        let public_key = PublicKey::Ed25519(key.verifying_key().to_bytes());
        TestKey::new(Secret::Ed25519(Box::new(key)), public_key)
    }

    /// The tz4 key octez generates from the key-generation input `ikm` (`Bls.generate_key
    /// ~seed`, which is blst's KeyGen with an empty key info).
    pub fn bls_from_ikm(ikm: [u8; 32]) -> TestKey {
        // KeyGen fails only for input shorter than 32 bytes.
        let sk = blst::min_pk::SecretKey::key_gen(&ikm, &[]).expect("32 bytes of key-generation input");
        TestKey::bls(sk)
    }

    /// The tz4 key of an octez `BLsk…` secret key (a little-endian scalar).
    pub fn from_blsk(s: &str) -> Result<TestKey, String> {
        let mut scalar = tezos::decode_bls_secret_key(s).map_err(|e| format!("secret key {s:?}: {e}"))?;
        // blst reads scalars big-endian.
        scalar.reverse();
        let sk = blst::min_pk::SecretKey::from_bytes(&scalar)
            .map_err(|e| format!("secret key {s:?}: not a valid scalar ({e:?})"))?;
        Ok(TestKey::bls(sk))
    }

    fn bls(sk: blst::min_pk::SecretKey) -> TestKey {
        let pk = BlsPublicKey::from_bytes(&sk.sk_to_pk().compress()).expect("a public key made by blst is valid");
        TestKey::new(Secret::Bls(sk), PublicKey::Bls(pk))
    }

    fn new(secret: Secret, public_key: PublicKey) -> TestKey {
        let pkh = public_key.hash();
        TestKey {
            secret,
            public_key,
            pkh,
        }
    }

    /// The ed25519 seed (`None` for a tz4 key).
    pub fn seed(&self) -> Option<[u8; 32]> {
        match &self.secret {
            Secret::Ed25519(key) => Some(key.to_bytes()),
            Secret::Bls(_) => None,
        }
    }

    /// The secret key as octez writes it: `edsk…` (the 32-byte seed form that
    /// `octez-client import secret key` takes as `unencrypted:`) or `BLsk…`.
    pub fn secret_key(&self) -> String {
        match &self.secret {
            Secret::Ed25519(key) => tezos::encode_ed25519_seed(&key.to_bytes()),
            Secret::Bls(sk) => {
                let mut scalar = sk.to_bytes();
                scalar.reverse();
                tezos::encode_bls_secret_key(&scalar)
            }
        }
    }

    /// The key hash (`tz1…`).
    pub fn pkh(&self) -> Pkh {
        self.pkh
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Sign as octez does today: ed25519 over blake2b-256 of `bytes` (`edsig…`), BLS over
    /// the bytes under the proof-of-possession scheme (`BLsig…`).
    pub fn sign(&self, bytes: &[u8]) -> String {
        self.sign_as(bytes, BlsScheme::ProofOfPossession)
    }

    /// [`TestKey::sign`] under a given BLS scheme (ignored by ed25519 keys).
    pub fn sign_as(&self, bytes: &[u8], scheme: BlsScheme) -> String {
        self.raw_sign(bytes, scheme).text()
    }

    /// [`TestKey::sign_as`] as raw bytes, the way the socket protocol carries signatures
    /// (64 bytes for tz1, 96 for tz4).
    pub fn sign_raw(&self, bytes: &[u8], scheme: BlsScheme) -> socket::Signature {
        self.raw_sign(bytes, scheme).socket()
    }

    fn raw_sign(&self, bytes: &[u8], scheme: BlsScheme) -> RawSignature {
        match &self.secret {
            Secret::Ed25519(key) => RawSignature::Ed25519(key.sign(&tezos::blake2b_256(bytes)).to_bytes()),
            Secret::Bls(sk) => {
                let aug: &[u8] = match &self.public_key {
                    PublicKey::Bls(pk) if scheme == BlsScheme::Augmented => pk.bytes(),
                    _ => &[],
                };
                RawSignature::Bls(sk.sign(bytes, scheme.dst(), aug).compress())
            }
        }
    }

    /// A BLS proof of possession: over this key's compressed public key, or over `over`.
    /// `None` for an ed25519 key.
    pub fn prove_possession(&self, over: Option<&BlsPublicKey>) -> Option<String> {
        self.prove_possession_raw(over)
            .map(|proof| tezos::encode_bls_signature(&proof))
    }

    /// [`TestKey::prove_possession`] as the 96 raw bytes of the socket protocol.
    pub fn prove_possession_raw(&self, over: Option<&BlsPublicKey>) -> Option<[u8; 96]> {
        let PublicKey::Bls(own) = &self.public_key else {
            return None;
        };
        self.bls_sign(over.unwrap_or(own).bytes(), tezos::bls::DST_POP_PROVE)
    }

    /// A plain BLS signature of `msg` under `dst`; `None` for an ed25519 key.
    fn bls_sign(&self, msg: &[u8], dst: &[u8]) -> Option<[u8; 96]> {
        let Secret::Bls(sk) = &self.secret else {
            return None;
        };
        Some(sk.sign(msg, dst, &[]).compress())
    }
}

/// A signature a [`TestKey`] made, before either protocol encodes it.
enum RawSignature {
    Ed25519([u8; 64]),
    Bls([u8; 96]),
}

impl RawSignature {
    /// As the HTTP protocol sends it: `edsig…` or `BLsig…`.
    fn text(&self) -> String {
        match self {
            RawSignature::Ed25519(b) => tezos::encode_ed25519_signature(b),
            RawSignature::Bls(b) => tezos::encode_bls_signature(b),
        }
    }

    /// As the socket protocol sends it: the raw bytes.
    fn socket(&self) -> socket::Signature {
        match self {
            RawSignature::Ed25519(b) => socket::Signature::Generic(*b),
            RawSignature::Bls(b) => socket::Signature::Bls(*b),
        }
    }
}

/// The signature a sign request gets in `mode`, for both protocols: in `wrong-sig` a valid
/// signature of this key over other bytes, in `wrong-scheme` one under the other BLS scheme
/// (tz1 keys ignore the scheme), otherwise the right one. Other faults are the protocols'.
fn signature_in_mode(mode: Mode, key: &TestKey, bytes: &[u8], scheme: BlsScheme) -> RawSignature {
    match mode {
        Mode::WrongSig => {
            let mut other = bytes.to_vec();
            other.extend_from_slice(b"\x00wrong");
            key.raw_sign(&other, scheme)
        }
        Mode::WrongScheme => key.raw_sign(bytes, scheme.other()),
        _ => key.raw_sign(bytes, scheme),
    }
}

/// The proof of possession a request gets in `mode`, for both protocols (`None` for a tz1
/// key): in `wrong-sig` a signature of the key's own bytes under the signing DST, which is no
/// proof.
fn proof_in_mode(mode: Mode, key: &TestKey, over: Option<&BlsPublicKey>) -> Option<[u8; 96]> {
    match (&key.public_key, mode) {
        (PublicKey::Bls(own), Mode::WrongSig) => key.bls_sign(own.bytes(), BlsScheme::ProofOfPossession.dst()),
        _ => key.prove_possession_raw(over),
    }
}

/// What `bad-key` answers for any key: 48 bytes with the compression bit set and x = 5,
/// which is no point of G1 (both protocols send these bytes as a tz4 public key).
fn off_curve_bls_key() -> [u8; 48] {
    let mut off_curve = [0u8; 48];
    off_curve[0] = 0x80;
    off_curve[47] = 5;
    off_curve
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The seed stays out of debug output, as a real key would.
        f.debug_struct("TestKey")
            .field("pkh", &self.pkh)
            .finish_non_exhaustive()
    }
}

/// How the test signer behaves; switch with [`TestSignerHandle::set_mode`] or
/// `PUT /_control/mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answer correctly.
    #[default]
    Ok,
    /// Answer correctly after this delay, on every protocol path.
    Slow(Duration),
    /// 500 with an error trace on every protocol call, health path included.
    Fail,
    /// 500 on `POST /keys/…` only; reads stay healthy.
    FailSign,
    /// Accept the connection, read the request, never answer (every protocol path).
    Hang,
    /// Answer signing requests with a well-formed signature of this key over other bytes.
    WrongSig,
    /// tz4 keys sign with the other BLS scheme than the request asked for (a signer with
    /// the wrong `version` handling); tz1 keys sign correctly.
    WrongScheme,
    /// Answer signing requests with a malformed signature (a `BLsig…`/`edsig…` whose
    /// base58check checksum is broken).
    MalformedSig,
    /// Answer `GET /keys/<pkh>` with a `BLpk…` of the right length that is not a point of
    /// the curve.
    BadKey,
    /// 403 on `POST /keys/…`, like a Ledger whose user refused.
    Refuse,
    /// Socket protocol: answer a sign request with the start of its frame (the length and a
    /// few bytes), then close the connection. HTTP: as [`Mode::Fail`].
    CloseMidAnswer,
    /// Socket protocol: answer a sign request with a well-framed message whose result tag is
    /// unknown (`0x07`). HTTP: as [`Mode::Fail`].
    Garbage,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        let s = s.trim().trim_matches('"');
        Ok(match s {
            "ok" => Mode::Ok,
            "fail" => Mode::Fail,
            "fail-sign" => Mode::FailSign,
            "hang" => Mode::Hang,
            "wrong-sig" => Mode::WrongSig,
            "wrong-scheme" => Mode::WrongScheme,
            "malformed-sig" => Mode::MalformedSig,
            "bad-key" => Mode::BadKey,
            "refuse" => Mode::Refuse,
            "close-mid-answer" => Mode::CloseMidAnswer,
            "garbage" => Mode::Garbage,
            _ => match s.strip_prefix("slow:").map(str::parse::<u64>) {
                Some(Ok(ms)) => Mode::Slow(Duration::from_millis(ms)),
                _ => {
                    return Err(format!(
                        "unknown mode {s:?}: expected ok, slow:<ms>, fail, fail-sign, hang, wrong-sig, wrong-scheme, malformed-sig, bad-key, refuse, close-mid-answer or garbage"
                    ))
                }
            },
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Ok => f.write_str("ok"),
            Mode::Slow(d) => write!(f, "slow:{}", d.as_millis()),
            Mode::Fail => f.write_str("fail"),
            Mode::FailSign => f.write_str("fail-sign"),
            Mode::Hang => f.write_str("hang"),
            Mode::WrongSig => f.write_str("wrong-sig"),
            Mode::WrongScheme => f.write_str("wrong-scheme"),
            Mode::MalformedSig => f.write_str("malformed-sig"),
            Mode::BadKey => f.write_str("bad-key"),
            Mode::Refuse => f.write_str("refuse"),
            Mode::CloseMidAnswer => f.write_str("close-mid-answer"),
            Mode::Garbage => f.write_str("garbage"),
        }
    }
}

/// Counters served at `GET /_control/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Signatures returned (200 answers to `POST /keys/…`, `wrong-sig` included).
    pub signs: u64,
    /// `POST /keys/…` requests received, whatever the answer.
    pub sign_requests: u64,
    /// Protocol requests received (all paths except `/_control/`).
    pub requests: u64,
    /// Protocol requests being handled right now, and the most there ever were at once.
    pub in_flight: u64,
    /// See `in_flight`.
    pub max_in_flight: u64,
    /// Hex of the last payload signed (as received, magic byte included).
    pub last_sign_hex: Option<String>,
    /// Query string of the last `POST /keys/…` (to check `version=` is passed on); for the
    /// socket protocol `version=N` when the last sign request carried a version, else `None`.
    pub last_query: Option<String>,
    /// Current mode, as its string.
    pub mode: String,
}

/// The wire protocol a test signer speaks on [`TestSignerOptions::listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// octez-signer's HTTP protocol, control endpoints on the same port.
    #[default]
    Http,
    /// octez-signer's binary socket protocol (`tcp://`); control endpoints only on
    /// [`TestSignerOptions::control_listen`].
    Socket,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.trim() {
            "http" => Ok(Protocol::Http),
            "socket" => Ok(Protocol::Socket),
            other => Err(format!("unknown protocol {other:?}: expected http or socket")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Socket => "socket",
        })
    }
}

/// Settings for [`TestSigner::spawn`].
#[derive(Debug, Clone)]
pub struct TestSignerOptions {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// What `listen` speaks.
    pub protocol: Protocol,
    /// Where to serve the control endpoints on their own port (HTTP), if anywhere: the only
    /// way to reach them on a [`Protocol::Socket`] signer from another process.
    pub control_listen: Option<SocketAddr>,
    /// One tz1 key per seed.
    pub seeds: Vec<[u8; 32]>,
    /// More keys (tz4 keys), after those of `seeds`.
    pub keys: Vec<TestKey>,
    /// Initial mode.
    pub mode: Mode,
}

impl Default for TestSignerOptions {
    fn default() -> Self {
        TestSignerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            protocol: Protocol::Http,
            control_listen: None,
            seeds: vec![seed(1)],
            keys: Vec::new(),
            mode: Mode::Ok,
        }
    }
}

/// Shared state of one test signer.
struct State {
    keys: Vec<TestKey>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    mode: Mode,
    stats: Stats,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, pkh: &str) -> Option<&TestKey> {
        self.keys.iter().find(|k| k.pkh.to_string() == pkh)
    }

    fn key_of(&self, pkh: &Pkh) -> Option<&TestKey> {
        self.keys.iter().find(|k| k.pkh == *pkh)
    }

    /// Count a protocol request in; it stays in flight until the guard drops, however the
    /// request ends (answered, or dropped mid-way). Returns the mode it is handled in.
    fn begin_request(&self) -> (Mode, InFlight<'_>) {
        let mut g = self.lock();
        g.stats.requests += 1;
        g.stats.in_flight += 1;
        g.stats.max_in_flight = g.stats.max_in_flight.max(g.stats.in_flight);
        (g.mode, InFlight(self))
    }

    /// A sign request arrived, whatever its answer will be.
    fn count_sign_request(&self, query: Option<String>) {
        let mut g = self.lock();
        g.stats.sign_requests += 1;
        g.stats.last_query = query;
    }

    /// A signature (right or deliberately wrong) is being returned for `bytes`.
    fn count_sign(&self, bytes: &[u8]) {
        let mut g = self.lock();
        g.stats.signs += 1;
        g.stats.last_sign_hex = Some(hex::encode(bytes));
    }

    fn stats(&self) -> Stats {
        let g = self.lock();
        Stats {
            mode: g.mode.to_string(),
            ..g.stats.clone()
        }
    }
}

/// See [`State::begin_request`].
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.stats.in_flight = g.stats.in_flight.saturating_sub(1);
    }
}

/// Entry point for the in-process test signer.
pub struct TestSigner;

impl TestSigner {
    /// Bind `options.listen` (and `options.control_listen`) and serve `options.protocol` on
    /// tasks of the current runtime until [`TestSignerHandle::shutdown`] or drop.
    pub async fn spawn(options: TestSignerOptions) -> std::io::Result<TestSignerHandle> {
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let control = match options.control_listen {
            Some(listen) => Some(TcpListener::bind(listen).await?),
            None => None,
        };
        let control_addr = control.as_ref().map(TcpListener::local_addr).transpose()?;
        let state = Arc::new(State {
            keys: options
                .seeds
                .iter()
                .map(|s| TestKey::from_seed(*s))
                .chain(options.keys.iter().cloned())
                .collect(),
            inner: Mutex::new(Inner {
                mode: options.mode,
                stats: Stats::default(),
            }),
        });
        let cancel = CancellationToken::new();
        let mut tasks = vec![match options.protocol {
            Protocol::Http => tokio::spawn(serve(listener, state.clone(), cancel.clone(), Paths::All)),
            Protocol::Socket => tokio::spawn(socket_server::serve(listener, state.clone(), cancel.clone())),
        }];
        if let Some(control) = control {
            tasks.push(tokio::spawn(serve(
                control,
                state.clone(),
                cancel.clone(),
                Paths::Control,
            )));
        }
        Ok(TestSignerHandle {
            addr,
            control_addr,
            protocol: options.protocol,
            state,
            cancel,
            tasks,
        })
    }
}

/// A running in-process test signer. Dropping it stops it (abruptly, like a crash).
pub struct TestSignerHandle {
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    protocol: Protocol,
    state: Arc<State>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl TestSignerHandle {
    /// Address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What [`TestSignerHandle::addr`] speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Where the control endpoints are served on their own port, if they are
    /// ([`TestSignerOptions::control_listen`]).
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Its keys, in seed order.
    pub fn keys(&self) -> &[TestKey] {
        &self.state.keys
    }

    /// Key hashes, in seed order.
    pub fn pkhs(&self) -> Vec<Pkh> {
        self.state.keys.iter().map(|k| k.pkh).collect()
    }

    /// Public keys, in seed order.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.state.keys.iter().map(|k| k.public_key.clone()).collect()
    }

    /// Switch the fault mode; applies to requests that arrive from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().mode = mode;
    }

    /// Current fault mode.
    pub fn mode(&self) -> Mode {
        self.state.lock().mode
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Zero the counters.
    pub fn reset_stats(&self) {
        self.state.lock().stats = Stats::default();
    }

    /// Stop accepting, drop every connection (answers in progress are lost, as in a crash),
    /// and wait until the port is released.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for TestSignerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Which paths an HTTP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paths {
    /// The protocol and the control endpoints (an HTTP signer's port).
    All,
    /// The control endpoints only (`control_listen`).
    Control,
}

/// Accept one connection, or `None` once `cancel` fires.
async fn accept(listener: &TcpListener, cancel: &CancellationToken) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some(stream);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "test-signer accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// HTTP accept loop: one task per connection, all dropped on `cancel`.
async fn serve(listener: TcpListener, state: Arc<State>, cancel: CancellationToken, paths: Paths) {
    while let Some(stream) = accept(&listener, &cancel).await {
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, paths).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            // Cancellation drops the connection mid-request on purpose: shutdown means crash.
            tokio::select! {
                _ = cancel.cancelled() => {}
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "test-signer connection ended");
                    }
                }
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, value: serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn trace(status: StatusCode, id: &str, msg: impl fmt::Display) -> Resp {
    json(
        status,
        serde_json::json!([{ "kind": "temporary", "id": id, "msg": msg.to_string() }]),
    )
}

fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(trace(StatusCode::PAYLOAD_TOO_LARGE, "test_signer.body", e)),
    }
}

/// Decode a signing body: a JSON string of hex (whitespace around it allowed).
fn decode_sign_body(body: &[u8]) -> Result<Vec<u8>, String> {
    let text: String = serde_json::from_slice(body).map_err(|e| format!("body is not a JSON string: {e}"))?;
    let bytes = hex::decode(text.trim()).map_err(|e| format!("body is not hex: {e}"))?;
    if bytes.is_empty() {
        return Err("nothing to sign".to_string());
    }
    Ok(bytes)
}

async fn handle(state: &State, req: Request<Incoming>, paths: Paths) -> Resp {
    let path = req.uri().path().to_string();
    if let Some(what) = path.strip_prefix("/_control/") {
        return control(state, what, req).await;
    }
    if paths == Paths::Control {
        return trace(
            StatusCode::NOT_FOUND,
            "test_signer.not_found",
            "this port serves /_control/ only",
        );
    }
    let (mode, _in_flight) = state.begin_request();
    let is_sign = req.method() == Method::POST && path.starts_with("/keys/");
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    // Read the body first in every mode: "hang" means the request arrived and was read.
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if is_sign {
        state.count_sign_request(query.clone());
    }
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        // The two socket-framing faults have no HTTP counterpart: fail plainly.
        Mode::Fail | Mode::CloseMidAnswer | Mode::Garbage => {
            return trace(
                StatusCode::INTERNAL_SERVER_ERROR,
                "test_signer.fail",
                "injected failure",
            )
        }
        _ => {}
    }
    if path == "/authorized_keys" {
        return match method {
            Method::GET => json(StatusCode::OK, serde_json::json!({})),
            _ => empty(StatusCode::METHOD_NOT_ALLOWED),
        };
    }
    if let Some(pkh) = path.strip_prefix("/bls_prove_possession/") {
        let Some(key) = state.key(pkh) else {
            return trace(
                StatusCode::NOT_FOUND,
                "test_signer.unknown_key",
                format!("unknown key {pkh}"),
            );
        };
        let over = match query_value(query.as_deref(), "bls_pk").map(|v| v.parse::<PublicKey>()) {
            None => None,
            Some(Ok(PublicKey::Bls(k))) => Some(k),
            Some(_) => return trace(StatusCode::BAD_REQUEST, "test_signer.bls_pk", "bls_pk is not a BLpk"),
        };
        return match proof_in_mode(mode, key, over.as_ref()) {
            Some(proof) => json(
                StatusCode::OK,
                serde_json::json!({ "bls_prove_possession": tezos::encode_bls_signature(&proof) }),
            ),
            None => trace(
                StatusCode::BAD_REQUEST,
                "test_signer.not_bls",
                "Proof of possession can only be requested for BLS keys.",
            ),
        };
    }
    let Some(pkh) = path.strip_prefix("/keys/") else {
        return trace(
            StatusCode::NOT_FOUND,
            "test_signer.not_found",
            format!("no route for {path}"),
        );
    };
    let Some(key) = state.key(pkh) else {
        return trace(
            StatusCode::NOT_FOUND,
            "test_signer.unknown_key",
            format!("unknown key {pkh}"),
        );
    };
    match method {
        Method::GET if mode == Mode::BadKey => {
            let text = tezos::encode_public_key(tezos::Curve::Bls, &off_curve_bls_key());
            json(StatusCode::OK, serde_json::json!({ "public_key": text }))
        }
        Method::GET => json(
            StatusCode::OK,
            serde_json::json!({ "public_key": key.public_key.to_string() }),
        ),
        Method::POST => {
            let bytes = match decode_sign_body(&body) {
                Ok(b) => b,
                Err(msg) => return trace(StatusCode::BAD_REQUEST, "test_signer.bad_body", msg),
            };
            let scheme = match signer_gateway::signing::scheme_of(query.as_deref(), key.pkh.curve) {
                Ok(s) => s,
                Err(e) => return trace(StatusCode::BAD_REQUEST, "test_signer.version", e),
            };
            let signature = match mode {
                Mode::FailSign => {
                    return trace(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "test_signer.fail_sign",
                        "injected failure",
                    )
                }
                Mode::Refuse => return trace(StatusCode::FORBIDDEN, "test_signer.refused", "signing refused"),
                Mode::MalformedSig => {
                    // Drop two characters: the base58check checksum no longer matches.
                    let mut sig = key.sign_as(&bytes, scheme);
                    sig.truncate(sig.len().saturating_sub(2));
                    sig
                }
                _ => signature_in_mode(mode, key, &bytes, scheme).text(),
            };
            state.count_sign(&bytes);
            json(StatusCode::OK, serde_json::json!({ "signature": signature }))
        }
        _ => empty(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// The value of `name` in a query string.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(n, _)| *n == name).map(|(_, v)| v))
}

async fn control(state: &State, what: &str, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    match (what, method) {
        ("mode", Method::GET) => json(StatusCode::OK, serde_json::json!(state.lock().mode.to_string())),
        ("mode", Method::PUT | Method::POST) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let text = String::from_utf8_lossy(&body);
            match text.parse::<Mode>() {
                Ok(mode) => {
                    state.lock().mode = mode;
                    empty(StatusCode::NO_CONTENT)
                }
                Err(msg) => trace(StatusCode::BAD_REQUEST, "test_signer.mode", msg),
            }
        }
        ("stats", Method::GET) => match serde_json::to_value(state.stats()) {
            Ok(v) => json(StatusCode::OK, v),
            Err(e) => trace(StatusCode::INTERNAL_SERVER_ERROR, "test_signer.stats", e),
        },
        ("reset", Method::POST | Method::PUT) => {
            state.lock().stats = Stats::default();
            empty(StatusCode::NO_CONTENT)
        }
        ("mode" | "stats" | "reset", _) => empty(StatusCode::METHOD_NOT_ALLOWED),
        _ => trace(StatusCode::NOT_FOUND, "test_signer.not_found", "unknown control path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for s in [
            "ok",
            "slow:250",
            "fail",
            "fail-sign",
            "hang",
            "wrong-sig",
            "wrong-scheme",
            "malformed-sig",
            "bad-key",
            "refuse",
            "close-mid-answer",
            "garbage",
        ] {
            assert_eq!(s.parse::<Mode>().unwrap().to_string(), s);
        }
        assert_eq!("\"hang\"\n".parse::<Mode>().unwrap(), Mode::Hang);
        assert!("slow".parse::<Mode>().is_err());
        assert!("slow:x".parse::<Mode>().is_err());
        assert!("nope".parse::<Mode>().is_err());
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seed("7").unwrap(), [7u8; 32]);
        assert_eq!(parse_seed(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        let k = key_from_seed(3);
        assert_eq!(parse_seed(&k.secret_key()).unwrap(), [3u8; 32]);
        assert!(parse_seed("256").is_err());
        assert!(parse_seed("zz").is_err());
    }

    #[test]
    fn keys_sign_verifiably() {
        let k = key_from_seed(1);
        assert!(k.pkh().to_string().starts_with("tz1"));
        let sig = k.sign(b"\x13abc");
        k.public_key().verify(b"\x13abc", &sig).unwrap();
        assert!(k.public_key().verify(b"\x13abd", &sig).is_err());
        assert_ne!(key_from_seed(1).pkh(), key_from_seed(2).pkh());
    }

    #[test]
    fn bls_keys_sign_under_the_scheme_asked_for() {
        let k = bls_key_from_seed(1);
        assert!(k.pkh().to_string().starts_with("tz4"));
        let msg = b"\x13abc";
        for scheme in [BlsScheme::ProofOfPossession, BlsScheme::Augmented] {
            let sig = k.sign_as(msg, scheme);
            assert!(sig.starts_with("BLsig"), "{sig}");
            k.public_key().verify_as(msg, &sig, scheme).unwrap();
            assert!(k.public_key().verify_as(msg, &sig, scheme.other()).is_err());
        }
        // The BLsk round trip: the same key back from octez's secret key encoding.
        let again = parse_bls_key(&k.secret_key()).unwrap();
        assert_eq!(again.pkh(), k.pkh());
        assert_eq!(parse_bls_key("1").unwrap().pkh(), k.pkh());
        let proof = k.prove_possession(None).unwrap();
        k.public_key().verify_possession(&proof, None).unwrap();
        assert!(key_from_seed(1).prove_possession(None).is_none());
    }

    #[test]
    fn sign_bodies() {
        assert_eq!(decode_sign_body(b"\"13ab\"\n").unwrap(), vec![0x13, 0xab]);
        assert_eq!(decode_sign_body(b" \"13AB\" ").unwrap(), vec![0x13, 0xab]);
        assert!(decode_sign_body(b"13ab").is_err());
        assert!(decode_sign_body(b"\"\"").is_err());
        assert!(decode_sign_body(b"\"131\"").is_err());
        assert!(decode_sign_body(b"\"zz\"").is_err());
        assert!(decode_sign_body(b"").is_err());
    }
}
