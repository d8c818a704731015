//! Helpers shared by the benchmark harnesses (`e2e_load`, `tunnel`): where the store lives
//! and an exact, outside count of the file store's durable writes.
#![allow(dead_code)] // each harness uses its own subset

use std::fs;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
