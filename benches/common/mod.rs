//! Helpers shared by the benchmark harnesses (`e2e_load`, `tunnel`): where the store lives
//! and an exact, outside count of the file store's durable writes.
#![allow(dead_code)] // each harness uses its own subset

use std::fs;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
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
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: plain syscall; the result is checked and, when valid, owned by `fd` alone.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is open and `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MOVE) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let count = Arc::new(AtomicU64::new(0));
        let (reader, thread_count) = (fd.try_clone()?, Arc::clone(&count));
        std::thread::Builder::new().name("inotify".into()).spawn(move || {
            let mut file = std::fs::File::from(reader);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // struct inotify_event { i32 wd; u32 mask; u32 cookie; u32 len; char name[len]; }
                let mut at = 0;
                while at + 16 <= n {
                    let field = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().expect("4 bytes"));
                    let (mask, len) = (field(4), field(12) as usize);
                    let raw_name = &buf[(at + 16).min(n)..(at + 16 + len).min(n)];
                    let end = raw_name.iter().position(|&b| b == 0).unwrap_or(raw_name.len());
                    if mask & libc::IN_IGNORED != 0 {
                        return;
                    }
                    if mask & libc::IN_MOVED_TO != 0 && &raw_name[..end] == name.as_bytes() {
                        thread_count.fetch_add(1, Ordering::Relaxed);
                    }
                    at += 16 + len;
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
        // Queues IN_IGNORED, which ends the reader thread.
        // SAFETY: `fd` is open until we return; a stale `wd` only makes the call fail (EINVAL).
        unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), self.wd) };
    }
}
