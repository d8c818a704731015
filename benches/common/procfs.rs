//! What `/proc` says about CPU time and memory (Linux; zeros and `None` elsewhere).

use std::fs;
use std::path::Path;

/// Cores this machine has.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Nanoseconds a task ran: the first field of a `schedstat` file.
pub fn schedstat_ns(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of every thread of process `pid`, in ns.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten().map(|t| schedstat_ns(&t.path().join("schedstat"))).sum()
}

/// CPU time of the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    schedstat_ns(Path::new("/proc/thread-self/schedstat"))
}

/// A `Vm…:`/`Rss…:` line of `/proc/<pid>/status`, in KiB.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The whole machine's busy and total jiffies at one moment (`/proc/stat`), to tell how many
/// cores every process together used since.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu(Option<(u64, u64)>);

impl MachineCpu {
    /// Now.
    pub fn now() -> MachineCpu {
        let read = || {
            let s = fs::read_to_string("/proc/stat").ok()?;
            let v: Vec<u64> = s
                .lines()
                .next()?
                .strip_prefix("cpu ")?
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            Some((total.saturating_sub(idle), total))
        };
        MachineCpu(read())
    }

    /// Cores busy on the whole machine between `self` and `later`.
    pub fn cores_until(&self, later: &MachineCpu) -> f64 {
        match (self.0, later.0) {
            (Some((b0, t0)), Some((b1, t1))) => {
                b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64 * cores() as f64
            }
            _ => 0.0,
        }
    }
}

/// Cores the other processes keep busy over half a second (blocking): printed before a run, so
/// a noisy machine shows.
pub fn busy_before_start() -> f64 {
    let before = MachineCpu::now();
    std::thread::sleep(std::time::Duration::from_millis(500));
    before.cores_until(&MachineCpu::now())
}
