//! The file store on disk: which filesystem it is on, an exact outside count of its durable
//! writes, and the floor under them: the raw durable write timed in the same run.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_gateway::watermark::durable_write;

use super::procfs::thread_cpu_ns;
use super::report::ms;
use super::stats::Latencies;

/// The file store's state file: each durable write renames its temp file onto this name.
pub const STATE_FILE: &str = "watermarks.json";
/// Raw durable writes discarded before timing.
const WRITE_WARMUP: usize = 10;

/// `n` raw durable writes, timed.
pub struct Floor {
    /// Each write's time.
    pub latencies: Latencies,
    /// CPU time they took (this thread's, user + kernel).
    pub cpu: Duration,
}

/// The cells of raw durable writes in the windows' table ([`super::load::Window::table`]),
/// their rate being one write after another at the median.
pub fn floor_cells(when: &str, l: &Latencies) -> Vec<String> {
    raw_cells(format!("raw durable write, {when}"), l)
}

/// A row of back-to-back raw operations (`what`) in the scenario table: one at a time, so the
/// rate is 1 / p50.
pub fn raw_cells(what: String, l: &Latencies) -> Vec<String> {
    let rate = format!("{:.0}", 1.0 / l.p50().as_secs_f64().max(1e-9));
    vec![
        what,
        "-".into(),
        l.count().to_string(),
        rate,
        ms(l.p50()),
        ms(l.p99()),
        "0".into(),
    ]
}

/// Time `n` raw durable writes of `bytes` bytes in `dir` with the gateway's own routine (the
/// one its file store calls: temp file, fsync, rename, directory fsync), after a short
/// warm-up, back to back or one per `pace`. Blocking.
pub fn raw_writes(dir: &Path, n: usize, bytes: usize, pace: Option<Duration>) -> std::io::Result<Floor> {
    fs::create_dir_all(dir)?;
    let mut payload = vec![b' '; bytes.max(2)];
    payload[0] = b'{';
    let last = payload.len() - 1;
    payload[last] = b'}';
    let mut floor = Floor {
        latencies: Latencies::default(),
        cpu: Duration::ZERO,
    };
    for i in 0..n + WRITE_WARMUP {
        if let Some(p) = pace {
            std::thread::sleep(p);
        }
        payload[1] = b'a' + (i % 26) as u8; // different bytes every time
        let (t0, cpu0) = (Instant::now(), thread_cpu_ns());
        durable_write(dir, "floor.json", &payload)?;
        if i >= WRITE_WARMUP {
            floor.latencies.record(t0.elapsed());
            floor.cpu += Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu0));
        }
    }
    Ok(floor)
}

/// Filesystem type of the mount holding `path` (longest mount-point prefix in /proc/mounts).
pub fn filesystem_of(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fstype} on {dev}, mounted at {mnt}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, s)| s)
}

/// Counts renames onto `dir/name` with inotify (`IN_MOVED_TO`): one per durable write of the
/// file store, counted exactly and outside the gateway. A thread blocks on the inotify fd and
/// stops when the watch goes (`IN_IGNORED`: on drop, or when the directory is deleted).
///
/// The kernel merges an event into the previous unread one when they are identical (cookies
/// are not compared), so watching `IN_MOVED_TO` alone undercounts as soon as the reader falls
/// behind. Watching `IN_MOVED_FROM` too makes every rename queue FROM(temp) then TO(state):
/// consecutive events always differ and nothing merges.
pub struct RenameCounter {
    count: Arc<AtomicU64>,
    fd: OwnedFd,
    wd: i32,
}

impl RenameCounter {
    /// Start counting renames onto `dir/name`.
    pub fn watch(dir: &Path, name: &'static str) -> std::io::Result<RenameCounter> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        let wd = inotify::add_watch(&fd, dir, inotify::WatchFlags::MOVE)?;
        let count = Arc::new(AtomicU64::new(0));
        let (reader, thread_count) = (fd.try_clone()?, Arc::clone(&count));
        std::thread::Builder::new().name("inotify".into()).spawn(move || {
            let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
            let mut events = inotify::Reader::new(&reader, &mut buf);
            loop {
                let Ok(event) = events.next() else { return };
                if event.events().contains(inotify::ReadFlags::IGNORED) {
                    return;
                }
                let ours = event.file_name().is_some_and(|n| n.to_bytes() == name.as_bytes());
                if event.events().contains(inotify::ReadFlags::MOVED_TO) && ours {
                    thread_count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
        Ok(RenameCounter { count, fd, wd })
    }

    /// Renames counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for RenameCounter {
    fn drop(&mut self) {
        // Queues IN_IGNORED, which ends the reader thread; a stale `wd` only makes it fail.
        let _ = rustix::fs::inotify::remove_watch(&self.fd, self.wd);
    }
}
