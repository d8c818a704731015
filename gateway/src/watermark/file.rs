//! The default backend: every mark in one JSON file, made durable before any signature leaves.
//!
//! # Design
//!
//! - **One writer per directory.** `dir/LOCK` is held with an exclusive `flock` for the life of
//!   the store, so a second gateway or the `watermark set` command cannot write concurrently.
//! - **One file, replaced atomically.** `dir/watermarks.json` holds the whole state; each write
//!   goes to `watermarks.json.tmp`, which is fsynced, renamed over the state and then the
//!   directory is fsynced ([`durable_write`]). A crash leaves either the old or the new file;
//!   a stray temp file is removed at open (the renamed file is the truth).
//! - **Group commit.** The marks live in memory under a `std::sync::Mutex` held only for the
//!   compare-and-update, never across I/O or an `.await`. A change is tagged with the number
//!   of the batch being collected and wakes a dedicated writer thread (file I/O stays off the
//!   async workers). The writer takes a snapshot of the whole map, writes it durably and
//!   publishes the highest durable batch on a `tokio::sync::watch` channel. A request returns
//!   only once its batch (or a later one: every write holds the whole state) is durable, so
//!   many keys share one fsync. Throughput is about (concurrent requests) / (one durable
//!   write); [`gather`] keeps the batches from splitting when the released requests return.
//! - **Lost state is not a first start.** Creating a store (`create_if_missing`) leaves a
//!   birth marker beside its directory (`.<dir name>.created` in the parent), and the store is
//!   never created again while that marker exists: a store removed while the gateway runs, or
//!   between runs, is refused at the next start whatever `create_if_missing` says. While the
//!   directory is gone, each failed write also leaves the marks held in memory beside it
//!   (`<dir name>.rescued.json`, the state file's format) for the operator to restore. Only
//!   `watermark set` (an explicit operator action) creates a store despite the marker.
//! - **Failure.** If a write fails, the waiters of that batch are refused
//!   ([`WatermarkError::Store`]), the marks stay raised in memory (a skipped level is safe, a
//!   double signature is not), the store reports unhealthy, and the next change (or identical
//!   repeat of a mark whose write failed) triggers a write of the whole state. No retry loop.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::{decide, is_mark_of, lock, mark_for, Decision, Mark, MarkKey, MarkRequest, Outcome, StoreHealth};
use super::{WatermarkError, WatermarkStore};
use crate::payload::Kind;
use crate::tezos::{ChainId, Pkh};

/// Name of the state file inside the store directory.
const STATE_FILE: &str = "watermarks.json";
/// Name of the lock file inside the store directory.
const LOCK_FILE: &str = "LOCK";
/// Version of the state file format this code reads and writes.
const FORMAT_VERSION: u32 = 1;

pub use signer_common::durable::durable_write;
use signer_common::durable::temp_name;

/// Why a [`FileStore`] could not be opened. The gateway must not start without its marks.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds `dir/LOCK`.
    #[error(
        "watermark store {} is in use by another process (a running gateway or `watermark set`): {} is locked",
        .dir.display(), .dir.join(LOCK_FILE).display()
    )]
    InUse {
        /// The store directory.
        dir: PathBuf,
    },
    /// No state file, and creating one was not allowed.
    #[error(
        "watermark state {} does not exist; refusing to start without watermarks. If this gateway \
         has never signed with these keys, set watermark.create_if_missing: true to create an empty store",
        .path.display()
    )]
    Missing {
        /// The state file that was expected.
        path: PathBuf,
    },
    /// The store is gone but this gateway created it before: lost state, not a first start.
    #[error(
        "watermark store {} is gone, but a store was created there before ({} exists): this is lost \
         state, not a first start, so no empty store is created whatever watermark.create_if_missing \
         says. Restore the directory{}, or seed the marks with `signer-gateway watermark set` \
         (an operator decision)",
        .dir.display(), .marker.display(),
        .rescue.as_ref().map(|r| format!(", or copy {} (the marks the gateway held when the store \
         vanished) to {}", r.display(), .dir.join(STATE_FILE).display())).unwrap_or_default()
    )]
    Lost {
        /// The store directory.
        dir: PathBuf,
        /// The birth marker that proves a store existed.
        marker: PathBuf,
        /// The marks rescued from memory when the store vanished, if any were written.
        rescue: Option<PathBuf>,
    },
    /// The state file exists but cannot be understood. It is never reset automatically.
    #[error("watermark state {} is unreadable, refusing to start (it is never reset automatically): {reason}", .path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error while opening.
    #[error("watermark store: cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl From<OpenError> for WatermarkError {
    fn from(e: OpenError) -> Self {
        WatermarkError::store(super::StoreCause::Unavailable, e.to_string())
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |source| OpenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// On-disk form of the state.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[allow(dead_code)] // checked through `Header` first
    version: u32,
    marks: Vec<MarkRecord>,
}

/// Just the version, read before the rest so a newer format gets a clear error.
#[derive(serde::Deserialize)]
struct Header {
    version: u32,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkRecord {
    chain: ChainId,
    pkh: Pkh,
    kind: Kind,
    level: i32,
    round: i32,
    digest: Option<String>,
    signature: Option<String>,
}

/// Serialisation side of [`StateFile`], borrowing the snapshot.
#[derive(serde::Serialize)]
struct StateOut<'a> {
    version: u32,
    marks: Vec<MarkOut<'a>>,
}

#[derive(serde::Serialize)]
struct MarkOut<'a> {
    chain: ChainId,
    pkh: Pkh,
    kind: Kind,
    level: i32,
    round: i32,
    digest: Option<String>,
    signature: Option<&'a str>,
}

/// The store's JSON form of `marks` (also `watermark export`'s output).
pub fn encode_state(marks: &[(MarkKey, Mark)]) -> Result<Vec<u8>, serde_json::Error> {
    let out = StateOut {
        version: FORMAT_VERSION,
        marks: marks
            .iter()
            .map(|(k, m)| MarkOut {
                chain: k.chain,
                pkh: k.pkh,
                kind: k.kind,
                level: m.level,
                round: m.round,
                digest: m.digest.map(hex::encode),
                signature: m.signature.as_deref(),
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&out)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parse [`encode_state`]'s form, strictly (`watermark import` reads exports with it).
pub fn parse_state(bytes: &[u8]) -> Result<BTreeMap<MarkKey, Mark>, String> {
    let header: Header = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if header.version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (this gateway reads version {FORMAT_VERSION})",
            header.version
        ));
    }
    let file: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut marks = BTreeMap::new();
    for (i, r) in file.marks.into_iter().enumerate() {
        let key = MarkKey {
            chain: r.chain,
            pkh: r.pkh,
            kind: r.kind,
        };
        let digest = match r.digest {
            None => None,
            Some(text) => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(&text, &mut d)
                    .map_err(|e| format!("marks[{i}] ({key}): digest {text:?} is not 32 bytes of hex: {e}"))?;
                Some(d)
            }
        };
        let mark = Mark {
            level: r.level,
            round: r.round,
            digest,
            signature: r.signature,
        };
        if marks.insert(key, mark).is_some() {
            return Err(format!("marks[{i}] ({key}) appears twice"));
        }
    }
    Ok(marks)
}

/// A mark and the batch whose write made (or will make) it durable.
struct Entry {
    mark: Mark,
    /// 0 for marks loaded at open (already durable).
    batch: u64,
}

/// Everything behind the mutex.
struct State {
    marks: BTreeMap<MarkKey, Entry>,
    /// The batch changes made now belong to; the writer takes it and increments.
    next_batch: u64,
    /// A mark changed since the writer last took a snapshot (someone waits for it).
    dirty: bool,
    /// Only cached signatures changed: written with the next mark, or after
    /// [`SIGNATURE_FLUSH_DELAY`] of quiet, never in a write of their own that the next mark
    /// would have to queue behind.
    signatures_dirty: bool,
    /// Requests waiting on the batch being collected (see [`gather`]).
    waiters: usize,
    /// Highest batch known durable.
    durable: u64,
    /// Highest batch whose write failed.
    failed: u64,
    /// The latest write succeeded.
    healthy: bool,
    /// Most recent write error (kept after recovery, for diagnosis).
    last_error: Option<Arc<str>>,
    /// The store is being dropped: write what is pending, then stop.
    shutdown: bool,
}

impl State {
    /// Put a change a request will wait for into the batch being collected; returns the batch.
    fn stage(&mut self) -> u64 {
        self.dirty = true;
        self.waiters += 1;
        self.next_batch
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread when `dirty` or `shutdown` is set.
    wake: Condvar,
}

/// What the writer publishes after each batch.
#[derive(Debug, Clone)]
struct Progress {
    durable: u64,
    failed: u64,
    error: Option<Arc<str>>,
}

/// The durable file-backed store: `dir/watermarks.json`, guarded by an exclusive lock on
/// `dir/LOCK` for as long as the value lives.
///
/// Changes are group-committed by a dedicated writer thread (temp file, fsync, rename, directory
/// fsync; see [`durable_write`]); `check_and_record` and `set` return only once their change is
/// durable, and refuse with [`WatermarkError::Store`] if the write failed (the mark stays raised
/// in memory and the next change writes the whole state again). Dropping the store writes what
/// is pending, stops the writer and releases the lock; it blocks for that write.
pub struct FileStore {
    dir: PathBuf,
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    writer: Option<JoinHandle<()>>,
    /// Holds the exclusive lock on `dir/LOCK`; released when dropped, after the writer stopped.
    _lock: File,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What to do when the store does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Refuse (`watermark.create_if_missing: false`).
    Refuse,
    /// Create an empty store on a first start only: never where a store was created before
    /// (`watermark.create_if_missing: true`).
    CreateFirst,
    /// Create it anyway: the operator's explicit `watermark set`.
    Create,
}

/// The birth marker of the store in `dir`: `.<name>.created` in its parent directory.
fn birth_marker(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(parent_of(dir).join(format!(".{name}.created")))
}

/// Where the marks held in memory go when the store directory vanished.
fn rescue_path(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(parent_of(dir).join(format!("{name}.rescued.json")))
}

fn parent_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl FileStore {
    /// Every mark held, sorted by key (what the last durable write holds, or more).
    pub fn snapshot(&self) -> Vec<(MarkKey, Mark)> {
        lock(&self.shared.state)
            .marks
            .iter()
            .map(|(k, e)| (*k, e.mark.clone()))
            .collect()
    }

    /// Open the store in `dir` as the gateway does: [`FileStore::open_with`], creating it
    /// only on a first start when `create_if_missing`.
    pub fn open(dir: &Path, create_if_missing: bool) -> Result<FileStore, OpenError> {
        let if_missing = if create_if_missing {
            IfMissing::CreateFirst
        } else {
            IfMissing::Refuse
        };
        FileStore::open_with(dir, if_missing)
    }

    /// Open the store in `dir`: lock it, load `dir/watermarks.json` and start the writer thread.
    ///
    /// A missing state is refused, or created durably (with its birth marker) as `if_missing`
    /// says; a store that existed before (its marker is there) is lost state, and only
    /// [`IfMissing::Create`] creates it again. An unreadable state is always an error: it is
    /// never reset.
    pub fn open_with(dir: &Path, if_missing: IfMissing) -> Result<FileStore, OpenError> {
        let path = dir.join(STATE_FILE);
        let marker = birth_marker(dir);
        let may_create = || -> Result<(), OpenError> {
            match (if_missing, &marker) {
                (IfMissing::Refuse, _) => Err(OpenError::Missing { path: path.clone() }),
                (IfMissing::CreateFirst, Some(m)) if m.exists() => Err(OpenError::Lost {
                    dir: dir.to_path_buf(),
                    marker: m.clone(),
                    rescue: rescue_path(dir).filter(|r| r.exists()),
                }),
                _ => Ok(()),
            }
        };
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(io_err("use as a directory", dir)(io::Error::other("not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                may_create()?;
                fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
                sync_parent(dir)?;
            }
            Err(e) => return Err(io_err("read", dir)(e)),
        }
        let lock_file = lock_dir(dir)?;
        remove_stray_temp(dir)?;
        let marks = match fs::read(&path) {
            Ok(bytes) => parse_state(&bytes).map_err(|reason| OpenError::Corrupt {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                may_create()?;
                let empty = encode_state(&[]).map_err(|e| io_err("encode", &path)(io::Error::other(e)))?;
                durable_write(dir, STATE_FILE, &empty).map_err(io_err("create", &path))?;
                tracing::warn!(path = %path.display(), "created an empty watermark state");
                BTreeMap::new()
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        // From now on a missing store here is lost state (stores made before markers existed
        // get theirs at their next open).
        if let Some(m) = marker.as_ref().filter(|m| !m.exists()) {
            let note = format!("watermark store {} created or first opened here\n", dir.display());
            let name = m.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            durable_write(parent_of(dir), name, note.as_bytes()).map_err(io_err("write the birth marker", m))?;
        }
        tracing::info!(path = %path.display(), marks = marks.len(), "watermark state loaded");

        let state = State {
            marks: marks
                .into_iter()
                .map(|(k, mark)| (k, Entry { mark, batch: 0 }))
                .collect(),
            next_batch: 1,
            dirty: false,
            signatures_dirty: false,
            waiters: 0,
            durable: 0,
            failed: 0,
            healthy: true,
            last_error: None,
            shutdown: false,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
        });
        let (tx, progress) = watch::channel(Progress {
            durable: 0,
            failed: 0,
            error: None,
        });
        let writer = std::thread::Builder::new()
            .name("watermark-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let dir = dir.to_path_buf();
                move || writer_loop(&dir, &shared, &tx)
            })
            .map_err(io_err("start the writer thread for", dir))?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            shared,
            progress,
            writer: Some(writer),
            _lock: lock_file,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Check and stage under the lock. Returns the batch to wait for.
    fn stage_request(&self, req: &MarkRequest) -> Result<(u64, Outcome), WatermarkError> {
        let mut st = lock(&self.shared.state);
        match decide(st.marks.get(&req.key).map(|e| &e.mark), req)? {
            Decision::Record => {
                let batch = st.stage();
                st.marks.insert(
                    req.key,
                    Entry {
                        mark: mark_for(req),
                        batch,
                    },
                );
                drop(st);
                self.shared.wake.notify_one();
                Ok((batch, Outcome::Recorded))
            }
            Decision::Repeat(signature) => {
                let batch = st.marks.get(&req.key).map_or(0, |e| e.batch);
                if batch > st.durable && batch <= st.failed {
                    // The write that should have made this mark durable failed: never answer
                    // a repeat from a mark that is not on disk. Write the whole state again.
                    let retry = st.stage();
                    if let Some(e) = st.marks.get_mut(&req.key) {
                        e.batch = retry;
                    }
                    drop(st);
                    self.shared.wake.notify_one();
                    return Ok((retry, Outcome::Repeat(signature)));
                }
                // Pending or durable: wait for that batch (immediate if durable).
                Ok((batch, Outcome::Repeat(signature)))
            }
        }
    }

    /// Wait until batch `batch` is durable; refuse if its write failed.
    async fn wait_durable(&self, batch: u64) -> Result<(), WatermarkError> {
        let mut rx = self.progress.clone();
        // `wait_for` looks at the current value first, so a batch finished before we got
        // here is seen at once. A later successful batch also covers ours (whole-state writes).
        let failed = match rx.wait_for(|p| p.durable >= batch || p.failed >= batch).await {
            Ok(p) if p.durable >= batch => None,
            Ok(p) => Some((
                super::StoreCause::Write,
                p.error.as_deref().unwrap_or("write failed").to_owned(),
            )),
            Err(_) => Some((
                super::StoreCause::Closed,
                "the watermark writer thread has stopped".to_owned(),
            )),
        };
        match failed {
            None => Ok(()),
            Some((cause, e)) => Err(WatermarkError::store(cause, e)),
        }
    }

    fn writer_alive(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.is_finished())
    }
}

/// The writer thread: wait for a change, snapshot, write, publish. Exits on shutdown once
/// nothing is pending.
fn writer_loop(dir: &Path, shared: &Shared, progress: &watch::Sender<Progress>) {
    // Requests released by the previous write, and how long that write took.
    let mut released = 0;
    let mut last_write = Duration::ZERO;
    loop {
        let (batch, snapshot) = {
            let mut st = lock(&shared.state);
            while !st.dirty && !st.shutdown {
                if !st.signatures_dirty {
                    st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                // Only signatures to keep: give the next mark a chance to carry them.
                let (guard, timeout) = shared
                    .wake
                    .wait_timeout(st, SIGNATURE_FLUSH_DELAY)
                    .unwrap_or_else(PoisonError::into_inner);
                st = guard;
                if timeout.timed_out() && !st.dirty {
                    break;
                }
            }
            if !st.dirty && !st.signatures_dirty {
                return;
            }
            if st.dirty {
                st = gather(shared, st, released, last_write);
            }
            released = std::mem::take(&mut st.waiters);
            st.dirty = false;
            st.signatures_dirty = false;
            let batch = st.next_batch;
            st.next_batch += 1;
            // Clone under the lock (cheap), encode and write outside it.
            let snapshot: Vec<(MarkKey, Mark)> = st.marks.iter().map(|(k, e)| (*k, e.mark.clone())).collect();
            (batch, snapshot)
        };
        let started = Instant::now();
        let result = encode_state(&snapshot)
            .map_err(io::Error::other)
            .and_then(|bytes| durable_write(dir, STATE_FILE, &bytes));
        last_write = started.elapsed();
        let mut st = lock(&shared.state);
        match result {
            Ok(()) => {
                if !st.healthy {
                    tracing::warn!(batch, dir = %dir.display(), "watermark writes recovered");
                }
                st.durable = batch;
                st.healthy = true;
            }
            Err(e) => {
                let msg = format!("writing {}: {e}", dir.join(STATE_FILE).display());
                tracing::error!(batch, error = %msg, "watermark write failed: refusing the requests of this batch");
                rescue(dir, &snapshot);
                st.failed = batch;
                st.healthy = false;
                st.last_error = Some(Arc::from(msg));
            }
        }
        // Published under the lock so `State::durable/failed` and the channel never disagree
        // for a reader holding the lock.
        progress.send_replace(Progress {
            durable: st.durable,
            failed: st.failed,
            error: st.last_error.clone(),
        });
    }
}

/// The store directory vanished: leave the marks held in memory beside it, in the state
/// file's format, so the operator can put them back (best effort; logged either way).
fn rescue(dir: &Path, snapshot: &[(MarkKey, Mark)]) {
    if dir.exists() {
        return;
    }
    let Some(path) = rescue_path(dir) else { return };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let written = encode_state(snapshot)
        .map_err(io::Error::other)
        .and_then(|bytes| durable_write(parent_of(dir), &name, &bytes));
    match written {
        Ok(()) => tracing::error!(
            dir = %dir.display(),
            rescue = %path.display(),
            marks = snapshot.len(),
            "the watermark store directory is gone: the marks held in memory were written beside it"
        ),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "the watermark store directory is gone and the marks could not be rescued")
        }
    }
}

/// How long signatures alone wait for a mark write to ride on before being written by
/// themselves (a baker signs a block, a preattestation and an attestation per level within a
/// short burst, so they usually ride along).
const SIGNATURE_FLUSH_DELAY: Duration = Duration::from_millis(200);

/// Longest a batch is held open for stragglers (see [`gather`]).
const MAX_GATHER: Duration = Duration::from_micros(500);

/// Group-commit gathering. When a write completes, the requests it releases come back with
/// their next change a few microseconds apart; the first one wakes the writer, which would
/// otherwise start a write holding only that one and make the rest wait two writes. So while
/// fewer requests wait on this batch than the last write released, hold the batch open for a
/// moment: at most 1/8 of the last write's duration, at most [`MAX_GATHER`]. A lone
/// sequential client (released = 1) is never delayed; a shrinking load costs one short
/// wait before `released` follows it down.
fn gather<'a>(
    shared: &'a Shared,
    mut st: std::sync::MutexGuard<'a, State>,
    released: usize,
    last_write: Duration,
) -> std::sync::MutexGuard<'a, State> {
    let deadline = Instant::now() + (last_write / 8).min(MAX_GATHER);
    while st.waiters < released && !st.shutdown {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            break;
        };
        st = match shared.wake.wait_timeout(st, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    st
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse { dir: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
    }
}

fn remove_stray_temp(dir: &Path) -> Result<(), OpenError> {
    let tmp = dir.join(temp_name(STATE_FILE));
    match fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::warn!(path = %tmp.display(), "removed a temporary watermark file left by an interrupted write; {STATE_FILE} is authoritative");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove stale temporary file", &tmp)(e)),
    }
}

/// Make a newly created directory's own entry durable.
fn sync_parent(dir: &Path) -> Result<(), OpenError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", parent))
}

impl WatermarkStore for FileStore {
    fn check_and_record<'a>(&'a self, req: &'a MarkRequest) -> BoxFuture<'a, Result<Outcome, WatermarkError>> {
        Box::pin(async move {
            let (batch, outcome) = self.stage_request(req)?;
            self.wait_durable(batch).await?;
            Ok(outcome)
        })
    }

    fn record_signature<'a>(
        &'a self,
        req: &'a MarkRequest,
        signature: &'a str,
    ) -> BoxFuture<'a, Result<(), WatermarkError>> {
        Box::pin(async move {
            let mut guard = lock(&self.shared.state);
            let st = &mut *guard;
            if let Some(e) = st.marks.get_mut(&req.key) {
                if is_mark_of(&e.mark, req) && e.mark.signature.is_none() {
                    e.mark.signature = Some(signature.to_owned());
                    // Written with the next batch, not waited for: the mark is already durable,
                    // the signature only saves asking a signer again. Not written at once
                    // either (the next mark would queue behind that write): the writer is only
                    // told to flush after a quiet moment (see `writer_loop`).
                    if !st.signatures_dirty {
                        st.signatures_dirty = true;
                        self.shared.wake.notify_one();
                    }
                }
            }
            Ok(())
        })
    }

    fn set<'a>(&'a self, key: MarkKey, level: i32, round: i32) -> BoxFuture<'a, Result<Option<Mark>, WatermarkError>> {
        Box::pin(async move {
            let (batch, old) = {
                let mut st = lock(&self.shared.state);
                let batch = st.stage();
                let new = Mark {
                    level,
                    round,
                    digest: None,
                    signature: None,
                };
                let old = st.marks.insert(key, Entry { mark: new, batch }).map(|e| e.mark);
                (batch, old)
            };
            self.shared.wake.notify_one();
            tracing::warn!(
                %key,
                old_level = old.as_ref().map(|m| m.level),
                old_round = old.as_ref().map(|m| m.round),
                new_level = level,
                new_round = round,
                dir = %self.dir.display(),
                "watermark set by operator"
            );
            self.wait_durable(batch).await?;
            Ok(old)
        })
    }

    fn raise<'a>(&'a self, key: MarkKey, mark: Mark) -> BoxFuture<'a, Result<bool, WatermarkError>> {
        Box::pin(async move {
            let batch = {
                let mut st = lock(&self.shared.state);
                if !super::raises(st.marks.get(&key).map(|e| &e.mark), &mark) {
                    return Ok(false);
                }
                let batch = st.stage();
                st.marks.insert(key, Entry { mark, batch });
                batch
            };
            self.shared.wake.notify_one();
            self.wait_durable(batch).await?;
            Ok(true)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<(MarkKey, Mark)>, WatermarkError>> {
        Box::pin(std::future::ready(Ok(self.snapshot())))
    }

    /// While unhealthy, each call also schedules one more write of the whole state: a
    /// readiness probe that stopped traffic then still brings the store back once the disk
    /// recovers, at the probe's rate (never a retry loop of our own).
    fn health(&self) -> StoreHealth {
        let alive = self.writer_alive();
        let mut st = lock(&self.shared.state);
        if !st.healthy && !st.dirty && alive {
            st.dirty = true;
            self.shared.wake.notify_one();
        }
        let last_error = match (&st.last_error, alive) {
            (_, false) => Some("the watermark writer thread has stopped".to_owned()),
            (e, true) => e.as_deref().map(str::to_owned),
        };
        StoreHealth {
            backend: "file",
            location: Some(self.dir.display().to_string()),
            healthy: st.healthy && alive,
            last_error,
            marks: st.marks.len(),
        }
    }
}

impl Drop for FileStore {
    /// Stop the writer after it wrote what is pending (signatures, or a state whose last write
    /// failed: one more attempt). Blocks until that write is done (one or two durable writes).
    fn drop(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.shutdown = true;
            if !st.healthy {
                st.dirty = true;
            }
        }
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "watermark writer thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::watermark::tests::{chain, key, pkh, req, run_table};
    use crate::watermark::RefusalReason;

    const SIG: &str =
        "edsigtXomBKi5CTRf5cjATJWSyaRvhfYNHqSUGrn4SdbYRcGwQrUGjzEfQDTuqHhuA8b2d8NarZjz8TRf65WkpQmo423BtomS8Q";

    /// A store directory inside a temp dir, so the birth marker and rescue file beside it
    /// stay inside the temp dir too.
    pub(crate) struct TestDir {
        _root: tempfile::TempDir,
        path: PathBuf,
    }

    impl TestDir {
        pub(crate) fn path(&self) -> &Path {
            &self.path
        }
    }

    pub(crate) fn test_dir() -> TestDir {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("store");
        fs::create_dir(&path).expect("store dir");
        TestDir { _root: root, path }
    }

    fn open_new() -> (TestDir, FileStore) {
        let dir = test_dir();
        let store = FileStore::open(dir.path(), true).expect("open new store");
        (dir, store)
    }

    fn reopen(dir: &Path) -> FileStore {
        FileStore::open(dir, false).expect("reopen")
    }

    fn on_disk(dir: &Path) -> BTreeMap<MarkKey, Mark> {
        parse_state(&fs::read(dir.join(STATE_FILE)).expect("read state")).expect("parse state")
    }

    #[tokio::test]
    async fn table_on_file_store() {
        let mut current: Option<(Arc<FileStore>, TestDir)> = None;
        run_table(|new| {
            if new || current.is_none() {
                current = None; // drop the old store before its directory
                let (dir, store) = open_new();
                current = Some((Arc::new(store), dir));
            }
            std::future::ready(match &current {
                Some((s, _)) => s.clone() as Arc<dyn WatermarkStore>,
                None => unreachable!(),
            })
        })
        .await;
    }

    /// Same table, but the store is closed and reopened between the history and the request:
    /// every row must hold across a restart.
    #[tokio::test]
    async fn table_on_file_store_across_restart() {
        let mut dir: Option<TestDir> = None;
        run_table(|new| {
            if new {
                let (d, store) = open_new();
                dir = Some(d);
                return std::future::ready(Arc::new(store) as Arc<dyn WatermarkStore>);
            }
            let path = dir.as_ref().map(|d| d.path().to_path_buf()).expect("dir");
            std::future::ready(Arc::new(reopen(&path)) as Arc<dyn WatermarkStore>)
        })
        .await;
    }

    #[tokio::test]
    async fn signatures_ride_along_or_are_flushed_after_a_quiet_moment() {
        let (dir, store) = open_new();
        let key = |n: u8| MarkKey {
            chain: chain(0),
            pkh: pkh(n),
            kind: Kind::Attestation,
        };
        let first = req(key(1), 10, 0, 1);
        assert_eq!(store.check_and_record(&first).await, Ok(Outcome::Recorded));
        store.record_signature(&first, SIG).await.expect("signature");
        // The next mark carries the first signature in its own (waited-for) write.
        let second = req(key(2), 10, 0, 2);
        assert_eq!(store.check_and_record(&second).await, Ok(Outcome::Recorded));
        assert_eq!(on_disk(dir.path())[&key(1)].signature.as_deref(), Some(SIG));
        // A signature with no mark after it is written once things are quiet.
        store.record_signature(&second, SIG).await.expect("signature");
        let deadline = Instant::now() + Duration::from_secs(5);
        while on_disk(dir.path())[&key(2)].signature.is_none() {
            assert!(Instant::now() < deadline, "the signature was never flushed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    #[tokio::test]
    async fn reopen_preserves_marks_and_signatures() {
        let (dir, store) = open_new();
        let mut expected = Vec::new();
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            for n in 0..5u8 {
                let k = MarkKey {
                    chain: chain(n % 2),
                    pkh: pkh(n),
                    kind,
                };
                let r = req(k, 1000 + i as i32, i32::from(n), n.wrapping_mul(7));
                assert_eq!(store.check_and_record(&r).await, Ok(Outcome::Recorded));
                if n % 2 == 0 {
                    store.record_signature(&r, SIG).await.expect("signature");
                }
                expected.push((r, n % 2 == 0));
            }
        }
        let operator_key = MarkKey {
            chain: chain(5),
            pkh: pkh(9),
            kind: Kind::Block,
        };
        assert_eq!(store.set(operator_key, 77, 3).await, Ok(None));
        let before = store.snapshot();
        drop(store); // flushes the signatures, which were not waited for

        let store = reopen(dir.path());
        assert_eq!(store.snapshot(), before);
        assert_eq!(before.len(), 16);
        for (r, signed) in expected {
            let want = Outcome::Repeat(signed.then(|| SIG.to_owned()));
            assert_eq!(store.check_and_record(&r).await, Ok(want), "{r:?}");
        }
        let r = req(operator_key, 77, 3, 1);
        assert_eq!(
            store.check_and_record(&r).await.map_err(|e| e.reason()),
            Err(RefusalReason::DifferentData)
        );
    }

    #[tokio::test]
    async fn file_format_is_versioned_json() {
        let (dir, store) = open_new();
        let empty: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).expect("read")).expect("json");
        assert_eq!(empty, serde_json::json!({"version": 1, "marks": []}));
        let r = req(key(Kind::Block), 5, 1, 0xab);
        store.check_and_record(&r).await.expect("record");
        store.set(key(Kind::Attestation), 9, 0).await.expect("set");
        store.record_signature(&r, SIG).await.expect("sig");
        drop(store);
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).expect("read")).expect("json");
        let k = key(Kind::Block);
        assert_eq!(
            v,
            serde_json::json!({"version": 1, "marks": [
                {"chain": k.chain.to_string(), "pkh": "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx", "kind": "block",
                 "level": 5, "round": 1, "digest": "ab".repeat(32), "signature": SIG},
                {"chain": k.chain.to_string(), "pkh": "tz1KqTpEZ7Yob7QbPE4Hy4Wo8fHG8LhKxZSx", "kind": "attestation",
                 "level": 9, "round": 0, "digest": null, "signature": null},
            ]})
        );
    }

    #[test]
    fn missing_state_refuses_without_create_if_missing() {
        let dir = test_dir();
        // Directory missing entirely.
        let gone = dir.path().join("never-created");
        let e = FileStore::open(&gone, false).expect_err("must refuse");
        assert!(matches!(e, OpenError::Missing { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("watermark.create_if_missing"), "{msg}");
        assert!(msg.contains(&gone.join(STATE_FILE).display().to_string()), "{msg}");
        assert!(!gone.exists(), "nothing may be created");
        // Directory present, state file missing (e.g. deleted by mistake).
        let e = FileStore::open(dir.path(), false).expect_err("must refuse");
        assert!(matches!(e, OpenError::Missing { .. }), "{e:?}");
        assert!(!dir.path().join(STATE_FILE).exists());
    }

    /// A store removed while the gateway runs is lost state at the next start, with any
    /// setting: never an empty store that would sign again at released levels. The marks held
    /// in memory are left beside it and can be put back.
    #[tokio::test]
    async fn a_store_removed_while_running_is_never_recreated_empty() {
        let (dir, store) = open_new();
        let k = key(Kind::Attestation);
        assert_eq!(store.check_and_record(&req(k, 100, 0, 1)).await, Ok(Outcome::Recorded));
        fs::remove_dir_all(dir.path()).expect("remove the store");
        let e = store
            .check_and_record(&req(k, 101, 0, 2))
            .await
            .expect_err("not durable");
        assert_eq!(e.reason(), RefusalReason::Store);
        drop(store);
        let rescue = rescue_path(dir.path()).expect("rescue path");
        let rescued = parse_state(&fs::read(&rescue).expect("rescued marks")).expect("same format");
        assert_eq!(rescued.get(&k).map(|m| m.level), Some(101), "the marks held in memory");

        // Production settings refuse; so does create_if_missing, naming the rescue file.
        assert!(matches!(
            FileStore::open(dir.path(), false),
            Err(OpenError::Missing { .. })
        ));
        let e = FileStore::open(dir.path(), true).expect_err("lost state");
        assert!(matches!(e, OpenError::Lost { rescue: Some(_), .. }), "{e:?}");
        assert!(e.to_string().contains(&rescue.display().to_string()), "{e}");
        assert!(!dir.path().exists(), "nothing was created");

        // The operator puts the rescued marks back: the store opens with them.
        fs::create_dir(dir.path()).expect("dir");
        fs::copy(&rescue, dir.path().join(STATE_FILE)).expect("restore");
        let store = reopen(dir.path());
        let e = store
            .check_and_record(&req(k, 101, 0, 3))
            .await
            .expect_err("other bytes");
        assert_eq!(e.reason(), RefusalReason::DifferentData);
    }

    #[test]
    fn only_the_operator_recreates_a_lost_store() {
        let (dir, store) = open_new();
        drop(store);
        fs::remove_dir_all(dir.path()).expect("remove");
        let e = FileStore::open(dir.path(), true).expect_err("lost");
        assert!(matches!(e, OpenError::Lost { rescue: None, .. }), "{e:?}");
        // `watermark set`: the operator's explicit decision.
        let store = FileStore::open_with(dir.path(), IfMissing::Create).expect("created by the operator");
        assert!(store.snapshot().is_empty());
    }

    #[test]
    fn create_if_missing_creates_directory_and_state() {
        let dir = test_dir();
        let nested = dir.path().join("a/b");
        let store = FileStore::open(&nested, true).expect("create");
        assert!(store.snapshot().is_empty());
        drop(store);
        assert_eq!(on_disk(&nested).len(), 0);
        // Now it exists: opening without create works.
        reopen(&nested);
    }

    #[test]
    fn unreadable_state_refuses_and_is_left_alone() {
        let k = key(Kind::Block);
        let good_mark = format!(
            r#"{{"chain":"{}","pkh":"{}","kind":"block","level":1,"round":0,"digest":null,"signature":null}}"#,
            k.chain, k.pkh
        );
        let cases: Vec<(&str, String)> = vec![
            ("garbage", "\u{0}\u{1}not json at all".to_owned()),
            ("empty file", String::new()),
            ("truncated", r#"{"version":1,"marks":[{"chain":"#.to_owned()),
            ("no version", r#"{"marks":[]}"#.to_owned()),
            ("future version", r#"{"version":2,"marks":[]}"#.to_owned()),
            ("unknown field", r#"{"version":1,"marks":[],"extra":true}"#.to_owned()),
            ("marks not a list", r#"{"version":1,"marks":{}}"#.to_owned()),
            ("bad chain", good_mark.replace(&k.chain.to_string(), "NetXnope")),
            ("bad pkh", good_mark.replace(&k.pkh.to_string(), "tz1nope")),
            ("bad kind", good_mark.replace("\"block\"", "\"endorsement\"")),
            ("level not an int", good_mark.replace("\"level\":1", "\"level\":\"1\"")),
            (
                "level overflow",
                good_mark.replace("\"level\":1", "\"level\":2147483648"),
            ),
            (
                "short digest",
                good_mark.replace("\"digest\":null", "\"digest\":\"abcd\""),
            ),
            (
                "non-hex digest",
                good_mark.replace("\"digest\":null", &format!("\"digest\":\"{}\"", "zz".repeat(32))),
            ),
            (
                "duplicate key",
                format!(r#"{{"version":1,"marks":[{good_mark},{good_mark}]}}"#),
            ),
        ];
        for (name, text) in cases {
            let text = if text.starts_with("{\"chain\"") {
                format!(r#"{{"version":1,"marks":[{text}]}}"#)
            } else {
                text
            };
            let dir = test_dir();
            let path = dir.path().join(STATE_FILE);
            fs::write(&path, &text).expect("write");
            for create in [false, true] {
                let e = FileStore::open(dir.path(), create).expect_err(name);
                assert!(matches!(e, OpenError::Corrupt { .. }), "{name}: {e:?}");
                assert!(e.to_string().contains(&path.display().to_string()), "{name}: {e}");
            }
            assert_eq!(
                fs::read_to_string(&path).expect("read"),
                text,
                "{name}: state was modified"
            );
        }
        // The well-formed variant does open (the cases above fail for their stated reason).
        let dir = test_dir();
        fs::write(
            dir.path().join(STATE_FILE),
            format!(r#"{{"version":1,"marks":[{good_mark}]}}"#),
        )
        .expect("write");
        assert_eq!(reopen(dir.path()).snapshot().len(), 1);
    }

    #[tokio::test]
    async fn stray_temp_file_is_ignored_and_removed() {
        let (dir, store) = open_new();
        let r = req(key(Kind::Attestation), 10, 0, 1);
        store.check_and_record(&r).await.expect("record");
        drop(store);
        let tmp = dir.path().join(temp_name(STATE_FILE));
        fs::write(&tmp, b"{\"version\":1,\"marks\":[").expect("write tmp");
        let store = reopen(dir.path());
        assert!(!tmp.exists());
        assert_eq!(store.check_and_record(&r).await, Ok(Outcome::Repeat(None)));
    }

    #[test]
    fn second_open_of_a_locked_store_refuses() {
        let (dir, store) = open_new();
        let e = FileStore::open(dir.path(), false).expect_err("locked");
        assert!(matches!(e, OpenError::InUse { .. }), "{e:?}");
        assert!(e.to_string().contains("in use"), "{e}");
        let e = FileStore::open(dir.path(), true).expect_err("locked");
        assert!(matches!(e, OpenError::InUse { .. }), "{e:?}");
        drop(store);
        reopen(dir.path());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_different_data_at_one_mark_records_exactly_once() {
        let (dir, store) = open_new();
        let store = Arc::new(store);
        let k = key(Kind::Attestation);
        let tasks: Vec<_> = (0..64u8)
            .map(|d| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { (d, store.check_and_record(&req(k, 500, 2, d)).await) })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (d, got) = t.await.expect("task");
            match got {
                Ok(Outcome::Recorded) => winners.push(d),
                Err(e) => assert_eq!(e.reason(), RefusalReason::DifferentData, "{e}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        drop(store);
        let disk = on_disk(dir.path());
        assert_eq!(disk.get(&k).and_then(|m| m.digest), Some([winners[0]; 32]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_distinct_keys_share_writes_and_survive_restart() {
        let (dir, store) = open_new();
        let store = Arc::new(store);
        let n = 300u16;
        let keys: Vec<MarkKey> = (0..n)
            .map(|i| MarkKey {
                chain: chain(0),
                pkh: pkh((i % 100) as u8 + 1),
                kind: Kind::ALL[usize::from(i / 100)],
            })
            .collect();
        let tasks: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let r = req(k, 1000 + i as i32, 0, 1);
                    // Each mark is on disk as soon as its check_and_record returns.
                    let got = store.check_and_record(&r).await;
                    let disk = on_disk(store.dir());
                    (got, disk.get(&k).map(|m| m.level))
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (got, on_disk_level) = t.await.expect("task");
            assert_eq!(got, Ok(Outcome::Recorded));
            assert_eq!(on_disk_level, Some(1000 + i as i32));
        }
        let batches = lock(&store.shared.state).next_batch - 1;
        assert!(batches < u64::from(n), "group commit: {batches} writes for {n} records");
        drop(store);
        let store = reopen(dir.path());
        let marks = store.snapshot();
        assert_eq!(marks.len(), usize::from(n));
        for (i, k) in keys.iter().enumerate() {
            let r = req(*k, 1000 + i as i32, 0, 1);
            assert_eq!(store.check_and_record(&r).await, Ok(Outcome::Repeat(None)));
        }
    }

    #[tokio::test]
    async fn failed_write_refuses_keeps_mark_raised_and_recovers() {
        let (dir, store) = open_new();
        let k = key(Kind::Attestation);
        assert_eq!(store.check_and_record(&req(k, 10, 0, 1)).await, Ok(Outcome::Recorded));
        assert!(store.health().healthy);

        // Inject a failure: the directory disappears under the store.
        fs::remove_dir_all(dir.path()).expect("remove dir");
        let raised = req(k, 11, 0, 2);
        let e = store.check_and_record(&raised).await.expect_err("write fails");
        assert_eq!(e.reason(), RefusalReason::Store, "{e}");
        let health = store.health();
        assert!(!health.healthy);
        assert!(
            health.last_error.as_deref().is_some_and(|m| m.contains(STATE_FILE)),
            "{health:?}"
        );

        // An identical retry is not answered from a mark that is not durable: it retries the
        // write, which fails again.
        let e = store.check_and_record(&raised).await.expect_err("still failing");
        assert_eq!(e.reason(), RefusalReason::Store);
        // The mark stayed raised: the level below and other bytes at 11 are refused.
        let e = store.check_and_record(&req(k, 10, 5, 3)).await.expect_err("below");
        assert_eq!(e.reason(), RefusalReason::Below);
        let e = store.check_and_record(&req(k, 11, 0, 3)).await.expect_err("different");
        assert_eq!(e.reason(), RefusalReason::DifferentData);
        // An operator set is not durable either.
        let e = store.set(key(Kind::Block), 1, 0).await.expect_err("set not durable");
        assert_eq!(e.reason(), RefusalReason::Store);

        // The disk comes back: the next request writes the whole state again.
        fs::create_dir(dir.path()).expect("recreate dir");
        assert_eq!(store.check_and_record(&raised).await, Ok(Outcome::Repeat(None)));
        let health = store.health();
        assert!(health.healthy, "{health:?}");
        assert!(health.last_error.is_some(), "last error kept for diagnosis");
        let disk = on_disk(dir.path());
        assert_eq!(
            disk.get(&k),
            Some(&Mark {
                level: 11,
                round: 0,
                digest: Some([2; 32]),
                signature: None
            })
        );
        assert_eq!(disk.get(&key(Kind::Block)).map(|m| (m.level, m.round)), Some((1, 0)));
    }

    #[tokio::test]
    async fn unhealthy_store_retries_when_probed() {
        let (dir, store) = open_new();
        let k = key(Kind::Block);
        fs::remove_dir_all(dir.path()).expect("remove dir");
        let e = store.check_and_record(&req(k, 3, 0, 1)).await.expect_err("fails");
        assert_eq!(e.reason(), RefusalReason::Store);
        fs::create_dir(dir.path()).expect("recreate dir");
        // No request arrives (a load balancer took the gateway out): the probe drives the retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.health().healthy {
            assert!(Instant::now() < deadline, "store did not recover: {:?}", store.health());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(on_disk(dir.path()).get(&k).map(|m| m.level), Some(3));
        assert_eq!(
            store.check_and_record(&req(k, 3, 0, 1)).await,
            Ok(Outcome::Repeat(None))
        );
    }

    #[tokio::test]
    async fn failed_write_is_retried_at_drop() {
        let (dir, store) = open_new();
        let k = key(Kind::Block);
        let held = dir.path().to_path_buf();
        fs::remove_dir_all(&held).expect("remove dir");
        let e = store.check_and_record(&req(k, 3, 0, 1)).await.expect_err("fails");
        assert_eq!(e.reason(), RefusalReason::Store);
        fs::create_dir(&held).expect("recreate dir");
        drop(store);
        assert_eq!(on_disk(&held).get(&k).map(|m| m.level), Some(3));
    }

    #[tokio::test]
    async fn set_returns_old_mark_and_is_durable() {
        let (dir, store) = open_new();
        let k = key(Kind::Preattestation);
        assert_eq!(store.set(k, 5, 0).await, Ok(None));
        assert_eq!(on_disk(dir.path()).get(&k).map(|m| m.level), Some(5));
        let r = req(k, 6, 0, 4);
        store.check_and_record(&r).await.expect("record");
        store.record_signature(&r, SIG).await.expect("sig");
        let old = store.set(k, 2, 1).await.expect("lower");
        assert_eq!(
            old,
            Some(Mark {
                level: 6,
                round: 0,
                digest: Some([4; 32]),
                signature: Some(SIG.into())
            })
        );
        assert_eq!(
            on_disk(dir.path()).get(&k),
            Some(&Mark {
                level: 2,
                round: 1,
                digest: None,
                signature: None
            })
        );
        assert_eq!(store.check_and_record(&req(k, 2, 2, 4)).await, Ok(Outcome::Recorded));
    }

    #[test]
    fn durable_write_replaces_atomically() {
        let dir = test_dir();
        durable_write(dir.path(), "x.json", b"one").expect("write");
        durable_write(dir.path(), "x.json", b"two").expect("write");
        assert_eq!(fs::read(dir.path().join("x.json")).expect("read"), b"two");
        assert!(!dir.path().join("x.json.tmp").exists());
        let e = durable_write(&dir.path().join("missing"), "x.json", b"x").expect_err("no dir");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn health_reports_file_backend() {
        let (dir, store) = open_new();
        let h = store.health();
        assert_eq!(h.backend, "file");
        assert_eq!(h.location, Some(dir.path().display().to_string()));
        assert!(h.healthy);
        assert_eq!(h.last_error, None);
        assert_eq!(h.marks, 0);
        let json = serde_json::to_value(&h).expect("serialize");
        assert_eq!(json["backend"], "file");
    }
}
