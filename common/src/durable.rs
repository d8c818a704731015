//! Files that survive a power cut mid-write: the gateway's watermark state and the Pi's files
//! (its identity key, the host key pinned on first use). A crash at any moment leaves the old
//! file or the new one, whole; never a truncated one.
//!
//! The steps: write `<name>.tmp` and fsync it, move it into place (rename to replace, or hard
//! link to create only if absent), fsync the directory. A leftover `<name>.tmp` from a crash
//! is harmless: the next write truncates it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The temp file a write of `name` goes through.
pub fn temp_name(name: &str) -> String {
    format!("{name}.tmp")
}

/// Replace `dir/name` with `bytes` durably (mode 0644 for a new file).
pub fn durable_write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_steps(dir, name, bytes, 0o644, Place::Replace, None)
}

/// Create `dir/name` with `bytes` and `mode` durably, failing with `AlreadyExists` (and
/// changing nothing) if it exists: for a key that must never be overwritten.
pub fn durable_create(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_steps(dir, name, bytes, mode, Place::CreateNew, None)
}

/// [`durable_create`] for a path (its parent directory, `.` for a bare name).
pub fn durable_create_path(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    durable_create(dir, name, bytes, mode)
}

fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Replace,
    CreateNew,
}

/// The steps, with an optional simulated crash after step `crash_after` (tests): 1 temp file
/// written, 2 temp file synced, 3 moved into place, 4 directory synced.
fn write_steps(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    place: Place,
    crash_after: Option<u8>,
) -> io::Result<()> {
    let crash = |step: u8| {
        if crash_after == Some(step) {
            Err(io::Error::other(format!("simulated crash after step {step}")))
        } else {
            Ok(())
        }
    };
    let tmp = dir.join(temp_name(name));
    let target = dir.join(name);
    if place == Place::CreateNew && target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists: not overwritten", target.display()),
        ));
    }
    // A stray temp file from a crash goes first, so the new one gets `mode` whatever it had.
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    file.write_all(bytes)?;
    crash(1)?;
    file.sync_all()?;
    drop(file);
    crash(2)?;
    let placed = match place {
        Place::Replace => fs::rename(&tmp, &target),
        // A hard link fails if the target exists: create-only, atomically.
        Place::CreateNew => fs::hard_link(&tmp, &target).and_then(|()| fs::remove_file(&tmp)),
    };
    if let Err(e) = placed {
        // Best effort: a leftover temp file is harmless.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    crash(3)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_and_create() {
        let dir = std::env::temp_dir().join(format!("signer-common-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        durable_write(&dir, "x.json", b"one").unwrap();
        durable_write(&dir, "x.json", b"two").unwrap();
        assert_eq!(fs::read(dir.join("x.json")).unwrap(), b"two");
        assert!(!dir.join("x.json.tmp").exists());
        durable_create(&dir, "key", b"secret", 0o600).unwrap();
        let e = durable_create(&dir, "key", b"other", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.join("key")).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(dir.join("key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(durable_write(&dir.join("missing"), "x", b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A crash after any step leaves no file or the whole file, and the next write succeeds.
    #[test]
    fn a_crash_between_any_two_steps_leaves_nothing_partial() {
        for place in [Place::Replace, Place::CreateNew] {
            for step in 1..=3 {
                let dir = std::env::temp_dir().join(format!("signer-common-crash-{}-{step}", std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir).unwrap();
                let bytes = b"ssh-ed25519 AAAA... gateway\n";
                let e = write_steps(&dir, "pin", bytes, 0o644, place, Some(step)).unwrap_err();
                assert!(e.to_string().contains("simulated"), "{e}");
                match fs::read(dir.join("pin")) {
                    Ok(found) => assert_eq!(found, bytes, "step {step}: a partial file"),
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "step {step}"),
                }
                // After the "reboot": written again, whole (the stray temp file is truncated).
                if !dir.join("pin").exists() {
                    write_steps(&dir, "pin", bytes, 0o644, place, None).unwrap();
                }
                assert_eq!(fs::read(dir.join("pin")).unwrap(), bytes);
                fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}
