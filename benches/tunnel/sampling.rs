//! Sampling the processes of a window from `/proc`: CPU time per process (gateway, tunnel
//! client, pi's signer, this bench) and the whole machine's, and the tunnel client's memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::common::procfs::{process_cpu_ns, status_kb, MachineCpu};

/// The processes whose CPU time a window reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pids {
    pub gateway: Option<u32>,
    pub tunnel: Option<u32>,
    pub signer: Option<u32>,
}

/// CPU nanoseconds per process over a window (gateway, tunnel client, signer, this bench),
/// and the cores the whole machine used.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub ns: [u64; 4],
    pub wall: Duration,
    pub machine_cores: f64,
}

impl CpuUse {
    /// Cores our processes used.
    pub fn ours_cores(&self) -> f64 {
        self.ns.iter().sum::<u64>() as f64 / self.wall.as_nanos().max(1) as f64
    }
}

/// CPU readings at the start of a window.
pub struct CpuMark {
    at: Instant,
    pids: Pids,
    ns: [u64; 4],
    machine: MachineCpu,
}

impl CpuMark {
    pub fn now(pids: Pids) -> CpuMark {
        let read = |p: Option<u32>| p.map_or(0, process_cpu_ns);
        CpuMark {
            at: Instant::now(),
            pids,
            ns: [
                read(pids.gateway),
                read(pids.tunnel),
                read(pids.signer),
                process_cpu_ns(std::process::id()),
            ],
            machine: MachineCpu::now(),
        }
    }

    pub fn until_now(&self) -> CpuUse {
        let end = CpuMark::now(self.pids);
        CpuUse {
            ns: std::array::from_fn(|i| end.ns[i].saturating_sub(self.ns[i])),
            wall: end.at.duration_since(self.at),
            machine_cores: self.machine.cores_until(&end.machine),
        }
    }
}

/// Memory of a tunnel client process, in KiB.
#[derive(Debug, Clone, Default)]
pub struct Footprint {
    pub idle_rss: u64,
    pub idle_anon: u64,
    pub idle_file: u64,
    pub load_peak_rss: u64,
    pub load_clients: usize,
    pub hwm: u64,
}

impl Footprint {
    /// Readings of an idle client (tunnel up, no traffic).
    pub fn idle(pid: u32) -> Footprint {
        let kb = |field| status_kb(pid, field).unwrap_or(0);
        Footprint {
            idle_rss: kb("VmRSS:"),
            idle_anon: kb("RssAnon:"),
            idle_file: kb("RssFile:"),
            ..Footprint::default()
        }
    }

    /// Its peak over its life, once every window is over.
    pub fn end(&mut self, pid: u32) {
        self.hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
    }
}

/// Samples a process's VmRSS every 20 ms on a thread; `finish` returns the largest seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> anyhow::Result<RssSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let rss = move || status_kb(pid, "VmRSS:").unwrap_or(0);
        let handle = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut peak = 0;
                while !flag.load(Ordering::Relaxed) {
                    peak = peak.max(rss());
                    std::thread::sleep(Duration::from_millis(20));
                }
                peak.max(rss())
            })
            .context("spawning the RSS sampler")?;
        Ok(RssSampler { stop, handle })
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}
