//! Part 5: the client's footprint. Stripped binary sizes here; memory from part 1's windows.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use testkit::tunnel_harness::{target_dir, tunnel_bin};

use crate::common::report::{Table, Targets};
use crate::sampling::Footprint;

/// Issue 4: stripped client binary.
const BINARY_TARGET: u64 = 8 << 20;
/// Issue 4: client RSS, in KiB (as /proc reports it).
const RSS_TARGET_KB: u64 = 10 << 10;

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Copy `bin` into `work` and strip the copy with `tool`: (size before, size after).
fn stripped_size(bin: &Path, tool: &str, work: &Path) -> anyhow::Result<(u64, u64)> {
    let before = fs::metadata(bin)
        .with_context(|| format!("stat {}", bin.display()))?
        .len();
    let copy = work.join(format!("stripped-{tool}"));
    fs::copy(bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    let out = std::process::Command::new(tool)
        .arg(&copy)
        .output()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    anyhow::ensure!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    Ok((before, fs::metadata(&copy)?.len()))
}

/// When `path` was built, as text ("12 min ago").
fn age(path: &Path) -> String {
    let ago = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    ago.map_or_else(
        || "at an unknown time".into(),
        |d| format!("{} min ago", d.as_secs() / 60),
    )
}

/// Print part 5: binary sizes, and the memory `rss` of each tunnel client in part 1.
pub fn run(work: &Path, rss: &[(&'static str, Footprint)], targets: &mut Targets) -> anyhow::Result<()> {
    println!("\n## 5. Client footprint");
    let mut t = Table::new(&["measure", ">value", "target", "result"]);
    let arm = match std::env::var_os("SIGNER_TUNNEL_AARCH64_BIN") {
        Some(p) => PathBuf::from(p),
        None => target_dir()?.join("aarch64-unknown-linux-gnu/pi/signer-tunnel"),
    };
    for (arch, bin, strip) in [
        ("x86_64", tunnel_bin()?, "strip"),
        ("aarch64", arm, "aarch64-linux-gnu-strip"),
    ] {
        if !bin.is_file() {
            t.row([format!("signer-tunnel {arch} ({}): not built", bin.display())]);
            continue;
        }
        let (size, how) = match stripped_size(&bin, strip, work) {
            Ok((before, after)) => (after, format!("stripped; {} before", mib(before))),
            Err(e) => (fs::metadata(&bin)?.len(), format!("NOT stripped: {e:#}")),
        };
        let v = targets.check(format!("{arch} binary {} <= 8 MiB", mib(size)), size <= BINARY_TARGET);
        t.row([
            format!("signer-tunnel {arch} ({}, built {}; {how})", bin.display(), age(&bin)),
            mib(size),
            format!("<= {}", mib(BINARY_TARGET)),
            v.into(),
        ]);
    }
    // Per client: VmRSS idle (tunnel up, no traffic), the largest VmRSS sample under load,
    // VmHWM (its peak over its life); the target holds for all three.
    for (label, f) in rss {
        let ours = label.contains("signer-tunnel");
        let who = if ours { "signer-tunnel" } else { "OpenSSH ssh" };
        let peak = f.idle_rss.max(f.load_peak_rss).max(f.hwm);
        let (target, v) = match ours {
            true => {
                let what = format!("{who} memory ({label}) {} <= 10 MiB", mib(peak << 10));
                ("<= 10.00 MiB", targets.check(what, peak <= RSS_TARGET_KB))
            }
            false => ("-", "(comparison)"),
        };
        let [idle, load, hwm] = [f.idle_rss, f.load_peak_rss, f.hwm].map(|kb| mib(kb << 10));
        let (anon, file) = (mib(f.idle_anon << 10), mib(f.idle_file << 10));
        t.row([
            format!(
                "{who} VmRSS idle / under {} concurrent signs / VmHWM ({label}; idle RssAnon {anon}, RssFile {file})",
                f.load_clients
            ),
            format!("{idle} / {load} / {hwm}"),
            target.into(),
            v.into(),
        ]);
    }
    t.print();
    if rss.is_empty() {
        println!("  (RSS is measured during part 1: add latency to TUNNEL_BENCH_PARTS)");
    }
    Ok(())
}
