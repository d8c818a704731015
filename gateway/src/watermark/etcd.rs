//! The etcd store (`watermark.backend: etcd`): one etcd key per (chain, key, kind), shared by
//! every gateway replica. Safety comes from etcd's conditional writes alone (a quorum commit
//! in a Jepsen-tested store), never from a leader among gateways or from anything cached here.
//!
//! # Check and record
//!
//! 1. Judge the request on the last view of the key this gateway has (its mark and
//!    `mod_revision`), or on "no mark, revision 0" when it has none.
//! 2. If the rule says record: one transaction, `if mod_revision(key) == seen then put(new mark)
//!    else get(key)`. Committed means a quorum holds the new mark durably: only then is a signer
//!    asked. Not committed means someone else wrote the key since that view (another gateway, an
//!    operator, or a view from before a restart): the else branch carried the current mark in the
//!    same round trip; judge again on it, at most [`MAX_ROUNDS`] times.
//! 3. If the rule says refuse or repeat on a view that was not read in this call, read the key
//!    again (linearizable) and judge again. So every answer is decided by a committed compare or
//!    by a linearizable read, never by the local view: the view only saves round trips (one
//!    transaction per new level in the common case).
//!
//! The signature released for a mark is kept under a key of its own by a second conditional
//! write that lands only if the mark is unchanged: queued by [`EtcdStore::record_signature`]
//! and written in the background, every signature pending at that moment in one transaction
//! (as the file store group-commits), so the baker's answer never waits for it and the mark's
//! own revision, which the next check-and-record compares, does not move. An identical repeat
//! reads both keys and gets the signature only when it belongs to the mark's very bytes.
//!
//! # Failing closed
//!
//! Every operation is bounded by `watermark.etcd.request_timeout`. No quorum, no leader (the
//! client asks members to refuse when they have none), a frozen link or a refused connection is
//! a [`WatermarkError::Store`]: the request is refused as `temporary`. A commit that lands after
//! the bound only raises a mark nothing was signed for (a skipped level is safe). A probe reads
//! the prefix's key count every [`PROBE_EVERY`] so `/readyz` follows the cluster with or without
//! traffic, and the gateway serves again by itself when a quorum answers.
//!
//! # The store's marker
//!
//! `<prefix>created` says a watermark store lives under the prefix. Every mark is written by a
//! transaction that also requires the marker, so an empty prefix (a typo in the config, a
//! wiped or restored-too-old cluster) never takes a mark, exactly as the file store refuses to
//! start on a missing directory: the gateway stays up, refusing and not ready, until an
//! operator imports the marks (`watermark import`/`set` create the marker) or starts it once
//! with `watermark.create_if_missing: true`.
//!
//! # Layout in etcd
//!
//! `<prefix>created` → `{"v":1,"created_by":"signer-gateway <version>"}`;
//! `<prefix>marks/<chain>/<pkh>/<kind>` → `{"v":1,"level":…,"round":…,"digest":hex|null,
//! "signature":null}`; `<prefix>sigs/<chain>/<pkh>/<kind>` → the same with the signature, for
//! the mark of that (level, round, digest) only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use futures_util::future::BoxFuture;
use tracing::{info, warn};

use super::{
    decide, is_mark_of, lock, mark_for, raises, Decision, Mark, MarkKey, MarkRequest, Outcome, StoreCause, StoreHealth,
    WatermarkError, WatermarkStore,
};
use crate::config::EtcdSettings;
use crate::metrics::StoreMetrics;

/// Judgements per check-and-record before giving up as contention. Each lost round means
/// another writer raised the mark in between; with a handful of gateways this is never reached.
pub const MAX_ROUNDS: usize = 8;
/// How often the probe reads the cluster for `/readyz`.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Value format version.
const FORMAT: u32 = 1;
/// Local views kept; past this the map is cleared (views only save round trips).
const MAX_VIEWS: usize = 65_536;
/// How long the signature writer gathers after being woken: more signatures per transaction,
/// and none for a mark this gateway has already moved past (it could answer no repeat).
const SIGNATURE_GATHER: Duration = Duration::from_millis(2);
/// Signatures written per background transaction (etcd's default `--max-txn-ops` is 128).
const SIGNATURES_PER_TXN: usize = 64;
/// Backend name in metrics, logs and `/status`.
const BACKEND: &str = "etcd";

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EtcdOpenError {
    /// A file named in the config could not be read.
    #[error("watermark.etcd: cannot read {what} {}: {source}", .path.display())]
    Read {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The client refused the settings.
    #[error("watermark.etcd: {0}")]
    Client(String),
}

/// The etcd-backed store. Dropping it stops its probe and its signature writer.
pub struct EtcdStore {
    inner: Arc<Inner>,
    probe: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

struct Inner {
    settings: EtcdSettings,
    options: ConnectOptions,
    /// Set once connected; connecting again happens in the probe.
    client: Mutex<Option<Client>>,
    /// Last mark and `mod_revision` seen per key: a precondition, never a decision.
    views: Mutex<HashMap<MarkKey, View>>,
    health: Mutex<Health>,
    metrics: StoreMetrics,
    /// Signatures to keep, by mark, with the mark's revision they belong to.
    pending: Mutex<HashMap<MarkKey, (i64, Mark)>>,
    /// Wakes the signature writer.
    wake: tokio::sync::Notify,
}

#[derive(Debug, Clone)]
struct View {
    /// `mod_revision` of the key (0: absent).
    revision: i64,
    mark: Option<Mark>,
}

#[derive(Debug, Default)]
struct Health {
    healthy: bool,
    /// The marker was seen (or created): a store lives under the prefix.
    initialized: bool,
    last_error: Option<String>,
    marks: usize,
}

/// Stored form of a mark.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    v: u32,
    level: i32,
    round: i32,
    digest: Option<String>,
    signature: Option<String>,
}

impl EtcdStore {
    /// Read the TLS and auth files and make the client. Does not wait for the cluster: when it
    /// cannot be reached the store starts unhealthy (requests refused, `/readyz` false) and
    /// connects as soon as it can.
    pub async fn connect(settings: EtcdSettings, metrics: StoreMetrics) -> Result<EtcdStore, EtcdOpenError> {
        let options = connect_options(&settings)?;
        let inner = Arc::new(Inner {
            settings,
            options,
            client: Mutex::new(None),
            views: Mutex::new(HashMap::new()),
            health: Mutex::new(Health {
                last_error: Some("not connected yet".into()),
                ..Health::default()
            }),
            metrics,
            pending: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        });
        inner.probe_once().await;
        let probe = tokio::spawn(probe_loop(Arc::downgrade(&inner)));
        let writer = tokio::spawn(signature_writer(Arc::downgrade(&inner)));
        Ok(EtcdStore { inner, probe, writer })
    }

    /// The key of the store's marker under `prefix`.
    pub fn marker_of(prefix: &str) -> String {
        format!("{prefix}created")
    }

    /// The etcd key of a mark.
    pub fn key_of(prefix: &str, key: &MarkKey) -> String {
        format!("{prefix}marks/{}/{}/{}", key.chain, key.pkh, key.kind)
    }

    /// The etcd key of the signature kept for a mark.
    pub fn signature_key_of(prefix: &str, key: &MarkKey) -> String {
        format!("{prefix}sigs/{}/{}/{}", key.chain, key.pkh, key.kind)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.probe.abort();
        self.writer.abort();
    }
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdOpenError> {
    std::fs::read(path).map_err(|source| EtcdOpenError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn connect_options(s: &EtcdSettings) -> Result<ConnectOptions, EtcdOpenError> {
    let mut o = ConnectOptions::new()
        .with_timeout(s.request_timeout)
        .with_connect_timeout(s.request_timeout)
        // Frozen links are found by HTTP/2 pings even while idle, and their member left out.
        .with_keep_alive(
            Duration::from_secs(1),
            (s.request_timeout / 2).max(Duration::from_millis(500)),
        )
        .with_keep_alive_while_idle(true)
        // A member cut from its leader refuses at once instead of waiting.
        .with_require_leader(true);
    if let Some((user, path)) = &s.auth {
        let password = String::from_utf8(read_file("password_file", path)?)
            .map_err(|_| EtcdOpenError::Client(format!("{} is not UTF-8", path.display())))?;
        o = o.with_user(user.clone(), password.trim_end_matches(['\r', '\n']).to_string());
    }
    if let Some(tls) = &s.tls {
        let mut t = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read_file("tls.ca", &tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(etcd_client::Identity::from_pem(
                read_file("tls.cert", cert)?,
                read_file("tls.key", key)?,
            ));
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

/// Probe until the store is dropped.
async fn probe_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.probe_once().await;
    }
}

/// Write the queued signatures until the store is dropped: each time it is woken, after
/// [`SIGNATURE_GATHER`], everything pending then in one transaction of conditional writes (one
/// per mark: only if the mark's revision is still the one signed for), leaving out the marks
/// this gateway has recorded past since. A failure drops them: a repeat then asks a signer
/// for the same bytes again, which is safe.
///
/// Holds the store's state while it runs; [`EtcdStore`]'s drop aborts it.
async fn signature_writer(inner: Weak<Inner>) {
    let Some(inner) = inner.upgrade() else { return };
    loop {
        inner.wake.notified().await;
        tokio::time::sleep(SIGNATURE_GATHER).await;
        let batch: Vec<(MarkKey, (i64, Mark))> = {
            let pending: Vec<_> = lock(&inner.pending).drain().collect();
            let views = lock(&inner.views);
            pending
                .into_iter()
                .filter(|(key, (revision, _))| views.get(key).is_some_and(|v| v.revision == *revision))
                .collect()
        };
        for chunk in batch.chunks(SIGNATURES_PER_TXN) {
            if let Err(e) = inner.bounded(|| inner.write_signatures(chunk)).await {
                warn!(error = %e, signatures = chunk.len(), "could not keep signatures for identical repeats");
            }
        }
    }
}

/// What one round trip returned, or why not.
type EtcdResult<T> = Result<T, WatermarkError>;

/// gRPC's DEADLINE_EXCEEDED (numbered by the gRPC spec; tonic is etcd-client's, not ours).
const GRPC_DEADLINE_EXCEEDED: i32 = 4;

fn failure(e: etcd_client::Error) -> WatermarkError {
    let cause = match &e {
        etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == GRPC_DEADLINE_EXCEEDED => StoreCause::Timeout,
        _ => StoreCause::Unavailable,
    };
    WatermarkError::store(cause, format!("etcd: {e}"))
}

impl Inner {
    fn kv(&self) -> EtcdResult<KvClient> {
        match &*lock(&self.client) {
            Some(c) => Ok(c.kv_client()),
            None => Err(WatermarkError::store(
                StoreCause::Unavailable,
                "etcd: not connected (see the store's last error in /status)",
            )),
        }
    }

    /// Connect if needed, then read the mark count linearizably: the store is healthy when a
    /// quorum answers within the bound.
    async fn probe_once(&self) {
        let started = Instant::now();
        let result = tokio::time::timeout(self.settings.request_timeout, self.probe_inner()).await;
        self.metrics.observe(BACKEND, "probe", started);
        match result {
            Ok(Ok(count)) => {
                let mut h = lock(&self.health);
                if !h.healthy {
                    info!(endpoints = ?self.settings.endpoints, "etcd watermark store reachable");
                }
                h.healthy = true;
                h.marks = count;
            }
            Ok(Err(e)) => self.unhealthy(&e.to_string()),
            Err(_) => self.unhealthy(&format!("etcd: no answer within {:?}", self.settings.request_timeout)),
        }
    }

    async fn probe_inner(&self) -> EtcdResult<usize> {
        if lock(&self.client).is_none() {
            let client = Client::connect(&self.settings.endpoints, Some(self.options.clone()))
                .await
                .map_err(failure)?;
            *lock(&self.client) = Some(client);
        }
        let mut kv = self.kv()?;
        if !lock(&self.health).initialized {
            self.check_marker(&mut kv).await?;
        }
        let prefix = format!("{}marks/", self.settings.prefix);
        let resp = kv
            .get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .map_err(failure)?;
        Ok(usize::try_from(resp.count()).unwrap_or(usize::MAX))
    }

    /// Find the marker, or create it when allowed.
    async fn check_marker(&self, kv: &mut KvClient) -> EtcdResult<()> {
        let marker = self.marker();
        let found = kv
            .get(marker.clone(), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(failure)?
            .count()
            > 0;
        if !found {
            if !self.settings.create_if_missing {
                return Err(WatermarkError::store(StoreCause::NotInitialized, self.no_store_here()));
            }
            let value = format!(
                r#"{{"v":{FORMAT},"created_by":"signer-gateway {}"}}"#,
                env!("CARGO_PKG_VERSION")
            );
            let txn = Txn::new()
                .when([Compare::version(marker.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(marker.clone(), value, None)]);
            if kv.txn(txn).await.map_err(failure)?.succeeded() {
                warn!(prefix = %self.settings.prefix, "created an empty etcd watermark store (watermark.create_if_missing)");
            }
        }
        lock(&self.health).initialized = true;
        Ok(())
    }

    fn marker(&self) -> String {
        EtcdStore::marker_of(&self.settings.prefix)
    }

    /// Why nothing is recorded under an empty prefix, and what to do.
    fn no_store_here(&self) -> String {
        format!(
            "etcd: no watermark store under prefix {:?} (its marker {:?} is missing: never created, or the \
             cluster was wiped): import the marks (`signer-gateway watermark import`), or set \
             watermark.create_if_missing: true for a first start",
            self.settings.prefix,
            self.marker()
        )
    }

    fn unhealthy(&self, error: &str) {
        let mut h = lock(&self.health);
        if h.healthy {
            warn!(
                error,
                "etcd watermark store unreachable: refusing to sign until it answers"
            );
        }
        h.healthy = false;
        h.last_error = Some(error.to_string());
    }

    /// Run `op` within the request timeout, again after a short pause each time it could not
    /// reach etcd (a dead member behind a load balancer, a connection reset) or got no answer
    /// within an eighth of the bound (a frozen member: its connection stays open and silent
    /// until keepalives give up on it): the client then picks a member again. Retrying is safe:
    /// a write that did land makes the retry's compare fail, and it judges its own mark (a
    /// repeat of the same bytes). A failure marks the store unhealthy until the next success or
    /// probe.
    async fn bounded<T, F, Fut>(&self, mut op: F) -> EtcdResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = EtcdResult<T>>,
    {
        let bound = self.settings.request_timeout;
        let per_attempt = (bound / 8).max(Duration::from_millis(100));
        let attempts = async {
            let mut pause = Duration::from_millis(10);
            let mut last = None;
            loop {
                let attempt = match tokio::time::timeout(per_attempt, op()).await {
                    Ok(result) => result,
                    Err(_) => Err(WatermarkError::store(
                        StoreCause::Unavailable,
                        format!("etcd: a member did not answer within {per_attempt:?}"),
                    )),
                };
                match attempt {
                    Err(WatermarkError::Store(f)) if f.cause == StoreCause::Unavailable => {
                        last = Some(f);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    other => return (other, last),
                }
            }
        };
        let result = match tokio::time::timeout(bound, attempts).await {
            Ok((r, _)) => r,
            Err(_) => Err(WatermarkError::store(
                StoreCause::Timeout,
                format!("etcd: no answer within {bound:?} (no quorum, or the link is down)"),
            )),
        };
        match &result {
            Err(WatermarkError::Store(f)) if matches!(f.cause, StoreCause::Timeout | StoreCause::Unavailable) => {
                self.unhealthy(&f.message)
            }
            // A store with no marker answers reads but takes no mark: not ready.
            Ok(_) => {
                let mut h = lock(&self.health);
                h.healthy = h.initialized;
            }
            Err(_) => {}
        }
        result
    }

    fn etcd_key(&self, key: &MarkKey) -> String {
        EtcdStore::key_of(&self.settings.prefix, key)
    }

    fn remember(&self, key: MarkKey, view: View) {
        let mut views = lock(&self.views);
        if views.len() >= MAX_VIEWS && !views.contains_key(&key) {
            views.clear();
        }
        views.insert(key, view);
    }

    fn view(&self, key: &MarkKey) -> Option<View> {
        lock(&self.views).get(key).cloned()
    }

    /// The view reads of a mark and of its kept signature give (absent: revision 0), remembered
    /// without the signature (the next compare is on the mark alone).
    fn seen(&self, key: &MarkKey, mark: &etcd_client::GetResponse, sig: &etcd_client::GetResponse) -> EtcdResult<View> {
        let view = match mark.kvs().first() {
            None => View {
                revision: 0,
                mark: None,
            },
            Some(kv) => View {
                revision: kv.mod_revision(),
                mark: Some(decode(key, kv.value())?),
            },
        };
        self.remember(*key, view.clone());
        Ok(View {
            mark: view
                .mark
                .map(|m| with_signature(key, m, sig.kvs().first().map(|kv| kv.value()))),
            ..view
        })
    }

    /// Linearizable read of a mark and its kept signature.
    async fn read(&self, key: &MarkKey) -> EtcdResult<View> {
        let mut kv = self.kv()?;
        let txn = Txn::new().and_then([
            TxnOp::get(self.etcd_key(key), None),
            TxnOp::get(self.signature_key(key), None),
        ]);
        let started = Instant::now();
        let resp = kv.txn(txn).await.map_err(failure)?;
        self.metrics.observe(BACKEND, "etcd_get", started);
        let [mark, sig] = reads::<2>(&resp)?;
        self.seen(key, &mark, &sig)
    }

    /// One transaction of conditional signature writes (see [`signature_writer`]).
    async fn write_signatures(&self, batch: &[(MarkKey, (i64, Mark))]) -> EtcdResult<()> {
        let mut ops = Vec::with_capacity(batch.len());
        for (key, (revision, mark)) in batch {
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::mod_revision(self.etcd_key(key), CompareOp::Equal, *revision)])
                    .and_then([TxnOp::put(self.signature_key(key), encode(mark)?, None)]),
            ));
        }
        let mut kv = self.kv()?;
        let started = Instant::now();
        kv.txn(Txn::new().and_then(ops)).await.map_err(failure)?;
        self.metrics.observe(BACKEND, "etcd_txn_signatures", started);
        Ok(())
    }

    fn signature_key(&self, key: &MarkKey) -> String {
        EtcdStore::signature_key_of(&self.settings.prefix, key)
    }

    /// `if mod_revision == seen.revision then put(mark) else get`: `Ok(None)` when committed
    /// (the view is updated), `Ok(Some(current))` when someone wrote in between.
    async fn write_if_unchanged(&self, key: &MarkKey, seen: &View, mark: &Mark) -> EtcdResult<Option<View>> {
        let mut kv = self.kv()?;
        let k = self.etcd_key(key);
        let marker = self.marker();
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k.clone(), CompareOp::Equal, seen.revision),
                Compare::version(marker.clone(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(k.clone(), encode(mark)?, None)])
            .or_else([
                TxnOp::get(k, None),
                TxnOp::get(marker.clone(), Some(GetOptions::new().with_count_only())),
                TxnOp::get(self.signature_key(key), None),
            ]);
        let started = Instant::now();
        let resp = kv.txn(txn).await.map_err(failure)?;
        self.metrics.observe(BACKEND, "etcd_txn", started);
        if resp.succeeded() {
            lock(&self.health).initialized = true; // the marker compare held
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            self.remember(
                *key,
                View {
                    revision,
                    mark: Some(mark.clone()),
                },
            );
            return Ok(None);
        }
        let [current, marker_read, sig] = reads::<3>(&resp)?;
        if marker_read.count() == 0 {
            lock(&self.health).initialized = false;
            let why = self.no_store_here();
            self.unhealthy(&why);
            return Err(WatermarkError::store(StoreCause::NotInitialized, why));
        }
        self.seen(key, &current, &sig).map(Some)
    }

    async fn check_and_record(&self, req: &MarkRequest) -> EtcdResult<Outcome> {
        // No view yet: guess "no mark"; a wrong guess costs nothing but the else branch.
        let mut seen = self.view(&req.key).unwrap_or(View {
            revision: 0,
            mark: None,
        });
        let mut fresh = false;
        for round in 0..MAX_ROUNDS {
            match decide(seen.mark.as_ref(), req) {
                Ok(Decision::Record) => {
                    let mark = mark_for(req);
                    match self.write_if_unchanged(&req.key, &seen, &mark).await? {
                        None => return Ok(Outcome::Recorded),
                        Some(current) => {
                            // Only a view read in this call can have been beaten by a writer;
                            // an older one was merely stale.
                            if fresh || round > 0 {
                                self.metrics.lost_races.with_label_values(&[BACKEND]).inc();
                            }
                            seen = current;
                            fresh = true;
                        }
                    }
                }
                Ok(Decision::Repeat(sig)) if fresh => return Ok(Outcome::Repeat(sig)),
                Err(refusal) if fresh => return Err(refusal),
                // Decided on an older view: read the key before answering.
                Ok(Decision::Repeat(_)) | Err(_) => {
                    seen = self.read(&req.key).await?;
                    fresh = true;
                }
            }
        }
        Err(WatermarkError::store(
            StoreCause::Contention,
            format!("etcd: {} changed under every one of {MAX_ROUNDS} attempts", req.key),
        ))
    }

    /// Queue the signature of the mark `req` recorded, if this gateway's view still holds that
    /// mark (else it has moved on and the signature could answer nothing).
    fn queue_signature(&self, req: &MarkRequest, signature: &str) {
        let Some(view) = self.view(&req.key) else { return };
        let Some(mark) = view.mark.filter(|m| is_mark_of(m, req)) else {
            return;
        };
        let mark = Mark {
            signature: Some(signature.to_string()),
            ..mark
        };
        lock(&self.pending).insert(req.key, (view.revision, mark));
        self.wake.notify_one();
    }

    async fn set(&self, key: MarkKey, level: i32, round: i32) -> EtcdResult<Option<Mark>> {
        let mark = Mark {
            level,
            round,
            digest: None,
            signature: None,
        };
        let mut kv = self.kv()?;
        let started = Instant::now();
        let resp = kv
            .put(
                self.etcd_key(&key),
                encode(&mark)?,
                Some(PutOptions::new().with_prev_key()),
            )
            .await
            .map_err(failure)?;
        self.metrics.observe(BACKEND, "etcd_put", started);
        let old = resp.prev_key().map(|kv| decode(&key, kv.value())).transpose()?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.remember(
            key,
            View {
                revision,
                mark: Some(mark),
            },
        );
        Ok(old)
    }

    async fn raise(&self, key: MarkKey, mut mark: Mark) -> EtcdResult<bool> {
        let signature = mark.signature.take();
        let mut seen = self.read(&key).await?;
        for _ in 0..MAX_ROUNDS {
            if !raises(seen.mark.as_ref(), &mark) {
                return Ok(false);
            }
            match self.write_if_unchanged(&key, &seen, &mark).await? {
                None => {
                    // An imported signature is kept at once: the importing command exits soon.
                    if let (Some(signature), Some(view)) = (signature, self.view(&key)) {
                        let signed = Mark {
                            signature: Some(signature),
                            ..mark
                        };
                        self.write_signatures(&[(key, (view.revision, signed))]).await?;
                    }
                    return Ok(true);
                }
                Some(current) => seen = current,
            }
        }
        Err(WatermarkError::store(
            StoreCause::Contention,
            format!("etcd: {key} changed under every one of {MAX_ROUNDS} attempts"),
        ))
    }

    async fn list(&self) -> EtcdResult<Vec<(MarkKey, Mark)>> {
        let mut kv = self.kv()?;
        let (marks_prefix, sigs_prefix) = (
            format!("{}marks/", self.settings.prefix),
            format!("{}sigs/", self.settings.prefix),
        );
        let txn = Txn::new().and_then([
            TxnOp::get(marks_prefix.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(sigs_prefix.clone(), Some(GetOptions::new().with_prefix())),
        ]);
        let started = Instant::now();
        let resp = kv.txn(txn).await.map_err(failure)?;
        self.metrics.observe(BACKEND, "etcd_range", started);
        let [marks_read, sigs_read] = reads::<2>(&resp)?;
        let keyed = |kv: &etcd_client::KeyValue, prefix: &str| {
            let name = String::from_utf8_lossy(kv.key()).into_owned();
            parse_key(name.strip_prefix(prefix).unwrap_or(&name)).ok_or_else(|| {
                WatermarkError::store(
                    StoreCause::Corrupt,
                    format!("etcd: key {name:?} is not <chain>/<pkh>/<kind>"),
                )
            })
        };
        let mut sigs = HashMap::new();
        for kv in sigs_read.kvs() {
            sigs.insert(keyed(kv, &sigs_prefix)?, kv.value());
        }
        let mut marks = Vec::with_capacity(marks_read.kvs().len());
        for kv in marks_read.kvs() {
            let key = keyed(kv, &marks_prefix)?;
            let mark = decode(&key, kv.value())?;
            marks.push((key, with_signature(&key, mark, sigs.get(&key).copied())));
        }
        marks.sort_by_key(|(k, _)| *k);
        Ok(marks)
    }
}

/// The `N` reads of a transaction's executed branch, in order.
fn reads<const N: usize>(resp: &etcd_client::TxnResponse) -> EtcdResult<[etcd_client::GetResponse; N]> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| no_reads())
}

fn no_reads() -> WatermarkError {
    WatermarkError::store(StoreCause::Unavailable, "etcd: transaction answer without its reads")
}

/// `mark` with the kept signature `sig`, when that signature belongs to the mark's very bytes
/// (same level, round and digest); an unreadable or older one is ignored.
fn with_signature(key: &MarkKey, mark: Mark, sig: Option<&[u8]>) -> Mark {
    let signature = sig
        .and_then(|bytes| decode(key, bytes).ok())
        .filter(|s| s.digest.is_some() && (s.level, s.round, s.digest) == (mark.level, mark.round, mark.digest))
        .and_then(|s| s.signature);
    Mark { signature, ..mark }
}

fn parse_key(rest: &str) -> Option<MarkKey> {
    let mut parts = rest.split('/');
    let (chain, pkh, kind) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(MarkKey {
        chain: chain.parse().ok()?,
        pkh: pkh.parse().ok()?,
        kind: kind.parse().ok()?,
    })
}

fn encode(mark: &Mark) -> EtcdResult<Vec<u8>> {
    serde_json::to_vec(&Stored {
        v: FORMAT,
        level: mark.level,
        round: mark.round,
        digest: mark.digest.map(hex::encode),
        signature: mark.signature.clone(),
    })
    .map_err(|e| WatermarkError::store(StoreCause::Corrupt, format!("encoding a mark: {e}")))
}

fn decode(key: &MarkKey, bytes: &[u8]) -> EtcdResult<Mark> {
    let corrupt = |why: String| WatermarkError::store(StoreCause::Corrupt, format!("etcd: mark of {key}: {why}"));
    let s: Stored = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if s.v != FORMAT {
        return Err(corrupt(format!("format {} (this gateway reads {FORMAT})", s.v)));
    }
    if s.level < 0 || s.round < 0 {
        return Err(corrupt(format!("negative level {} or round {}", s.level, s.round)));
    }
    let digest = match s.digest {
        None => None,
        Some(text) => {
            let mut d = [0u8; 32];
            hex::decode_to_slice(&text, &mut d).map_err(|e| corrupt(format!("digest {text:?}: {e}")))?;
            Some(d)
        }
    };
    Ok(Mark {
        level: s.level,
        round: s.round,
        digest,
        signature: s.signature,
    })
}

impl WatermarkStore for EtcdStore {
    fn check_and_record<'a>(&'a self, req: &'a MarkRequest) -> BoxFuture<'a, Result<Outcome, WatermarkError>> {
        Box::pin(self.inner.bounded(|| self.inner.check_and_record(req)))
    }

    /// Queued and kept in the background: the answer to the baker never waits for this second
    /// write (a frozen link would hold it up to the bound). A repeat that arrives first finds
    /// no signature and asks the signer for the same bytes again, which is safe.
    fn record_signature<'a>(
        &'a self,
        req: &'a MarkRequest,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<(), WatermarkError>> {
        self.inner.queue_signature(req, signature);
        Box::pin(std::future::ready(Ok(())))
    }

    fn set<'a>(&'a self, key: MarkKey, level: i32, round: i32) -> BoxFuture<'a, Result<Option<Mark>, WatermarkError>> {
        Box::pin(async move {
            let old = self.inner.bounded(|| self.inner.set(key, level, round)).await?;
            warn!(%key, old = ?old.as_ref().map(|m| (m.level, m.round)), level, round, "watermark set by operator (etcd)");
            Ok(old)
        })
    }

    fn raise<'a>(&'a self, key: MarkKey, mark: Mark) -> BoxFuture<'a, Result<bool, WatermarkError>> {
        Box::pin(async move { self.inner.bounded(|| self.inner.raise(key, mark.clone())).await })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(MarkKey, Mark)>, WatermarkError>> {
        Box::pin(self.inner.bounded(|| self.inner.list()))
    }

    fn health(&self) -> StoreHealth {
        let h = lock(&self.inner.health);
        StoreHealth {
            backend: BACKEND,
            location: Some(format!(
                "{} {}",
                self.inner.settings.endpoints.join(","),
                self.inner.settings.prefix
            )),
            healthy: h.healthy,
            last_error: h.last_error.clone(),
            marks: h.marks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Kind;
    use crate::watermark::tests::key;

    #[test]
    fn keys_round_trip() {
        for kind in Kind::ALL {
            let k = key(kind);
            let full = EtcdStore::key_of("/p/", &k);
            let rest = full.strip_prefix("/p/marks/").expect("prefix");
            assert_eq!(parse_key(rest), Some(k), "{full}");
        }
        assert_eq!(parse_key("NetXdQprcVkpaWU/tz1x/block/extra"), None);
        assert_eq!(parse_key("garbage"), None);
    }

    #[test]
    fn a_kept_signature_answers_only_its_own_bytes() {
        let k = key(Kind::Block);
        let mark = Mark {
            level: 7,
            round: 1,
            digest: Some([3; 32]),
            signature: None,
        };
        let kept = |level, digest| {
            encode(&Mark {
                level,
                round: 1,
                digest,
                signature: Some("edsigX".into()),
            })
            .expect("encode")
        };
        let sig = |m: &Mark, bytes: Option<&[u8]>| with_signature(&k, m.clone(), bytes).signature;
        assert_eq!(sig(&mark, Some(&kept(7, Some([3; 32])))).as_deref(), Some("edsigX"));
        assert_eq!(sig(&mark, Some(&kept(6, Some([3; 32])))), None, "an older mark's");
        assert_eq!(sig(&mark, Some(&kept(7, Some([4; 32])))), None, "other bytes'");
        let set_by_operator = Mark {
            digest: None,
            ..mark.clone()
        };
        assert_eq!(
            sig(&set_by_operator, Some(&kept(7, None))),
            None,
            "no digest, no repeat"
        );
        assert_eq!(sig(&mark, Some(b"garbage")), None);
        assert_eq!(sig(&mark, None), None);
    }

    #[test]
    fn values_round_trip_and_refuse_garbage() {
        let k = key(Kind::Block);
        let m = Mark {
            level: 7,
            round: 1,
            digest: Some([3; 32]),
            signature: Some("edsig…".into()),
        };
        assert_eq!(decode(&k, &encode(&m).expect("encode")), Ok(m));
        for bad in [
            &b"{"[..],
            br#"{"v":2,"level":1,"round":0,"digest":null,"signature":null}"#,
            br#"{"v":1,"level":-1,"round":0,"digest":null,"signature":null}"#,
            br#"{"v":1,"level":1,"round":0,"digest":"zz","signature":null}"#,
            br#"{"v":1,"level":1,"round":0,"digest":null,"signature":null,"x":1}"#,
        ] {
            let e = decode(&k, bad).expect_err("must refuse");
            assert!(
                matches!(&e, WatermarkError::Store(f) if f.cause == StoreCause::Corrupt),
                "{e}"
            );
        }
    }
}
