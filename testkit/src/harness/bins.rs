//! Finding the workspace's own binaries for the end-to-end tests, and refusing stale ones.
//!
//! An end-to-end test runs the binary it finds next to the test executable; a binary built
//! before its sources changed would test old code and pass or fail for the wrong reason. So a
//! binary older than any source file of the packages it is built from is refused, with the
//! command that rebuilds it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> &'static Path {
    let testkit = Path::new(env!("CARGO_MANIFEST_DIR"));
    testkit.parent().unwrap_or(testkit)
}

/// The `test-signer` binary ([`workspace_bin`]); panics with the fix when it is missing or
/// stale (test support: a test cannot go on without it).
pub fn test_signer_bin() -> PathBuf {
    workspace_bin("test-signer", "TEST_SIGNER_BIN", &["testkit"]).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Newest modification time of the files under `dir` (recursively), with the file's path.
fn newest_under(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(m) = meta.modified() {
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    newest = Some((m, path));
                }
            }
        }
    }
    newest
}

/// The binary `name` of this workspace: `$env_var` if set (taken as is), else next to the
/// running test executable (`target/<profile>/deps/<test>` → `target/<profile>/<name>`),
/// refused when older than a source of `packages` (directories under the workspace root:
/// their `src/` and `Cargo.toml`).
pub fn workspace_bin(name: &str, env_var: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "{env_var}={} is not a file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut tried = Vec::new();
    let found = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
        .find(|candidate| {
            tried.push(candidate.display().to_string());
            candidate.is_file()
        })
        .with_context(|| {
            format!(
                "{name} binary not found (tried {}): run `cargo build --workspace --bins` first, or set {env_var}",
                tried.join(", ")
            )
        })?;
    // Cargo rewrites the binary's dep-info (`<bin>.d`) whenever it checks the binary against
    // its sources, but leaves the binary itself alone when a rebuilt library came out the same
    // (a touched or reformatted file): the later of the two says when it was last up to date.
    let built = std::fs::metadata(&found)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", found.display()))?;
    let checked = std::fs::metadata(found.with_extension("d"))
        .and_then(|m| m.modified())
        .ok();
    let built = checked.map_or(built, |c| c.max(built));
    for package in packages {
        let dir = workspace_root().join(package);
        let newest = [
            newest_under(&dir.join("src")),
            newest_under_file(&dir.join("Cargo.toml")),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|(t, _)| *t);
        if let Some((_, file)) = newest.filter(|(changed, _)| *changed > built) {
            anyhow::bail!(
                "{} is older than {}: it would test old code. Run `cargo build --workspace --bins` \
                 (scripts/test.sh does), or set {env_var}",
                found.display(),
                file.display()
            );
        }
    }
    Ok(found)
}

fn newest_under_file(file: &Path) -> Option<(SystemTime, PathBuf)> {
    let m = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
    Some((m, file.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/old"), "x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("a/new"), "y").unwrap();
        let (_, path) = newest_under(dir.path()).unwrap();
        assert!(path.ends_with("a/new"), "{}", path.display());
        assert!(newest_under(&dir.path().join("missing")).is_none());
    }
}
