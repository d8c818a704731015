//! The bench's few knobs, from `TUNNEL_BENCH_*` environment variables (see the crate doc).

use std::time::Duration;

/// A part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Footprint,
    Latency,
    Failover,
    Uplinks,
}

#[derive(Debug, Clone)]
pub struct Opts {
    pub parts: Vec<Part>,
    /// Measured time per back-to-back latency window.
    pub window: Duration,
    /// Client counts of the latency part.
    pub clients: Vec<usize>,
    /// Failover/recovery runs and uplink runs with the production settings.
    pub runs: usize,
    /// How long the link stays blackholed in the ordinary failover runs.
    pub outage: Duration,
    /// The in-backoff run restores right after the client's n-th failed reconnect.
    pub backoff_failures: usize,
}

impl Opts {
    pub fn parse() -> Result<Opts, String> {
        // `cargo bench` passes `--bench` to every harness-less target.
        if let Some(arg) = std::env::args().skip(1).find(|a| a != "--bench") {
            return Err(format!(
                "unknown argument {arg:?}: this bench takes its options from TUNNEL_BENCH_* variables"
            ));
        }
        let parts = list(
            "TUNNEL_BENCH_PARTS",
            "footprint,latency,failover,uplinks",
            |p| match p {
                "footprint" => Some(Part::Footprint),
                "latency" => Some(Part::Latency),
                "failover" => Some(Part::Failover),
                "uplinks" => Some(Part::Uplinks),
                _ => None,
            },
        )?;
        let clients = list("TUNNEL_BENCH_CLIENTS", "1,16", |c| {
            c.parse().ok().filter(|c| (1..=64).contains(c))
        })?;
        let opts = Opts {
            parts,
            window: Duration::from_secs_f64(num("TUNNEL_BENCH_SECS", 2.0)?),
            clients,
            runs: num("TUNNEL_BENCH_RUNS", 3)?,
            outage: Duration::from_secs_f64(num("TUNNEL_BENCH_OUTAGE_SECS", 6.0)?),
            backoff_failures: num("TUNNEL_BENCH_BACKOFF_FAILURES", 1)?,
        };
        if opts.window.is_zero() || opts.runs == 0 || opts.backoff_failures == 0 {
            return Err("TUNNEL_BENCH_SECS, _RUNS and _BACKOFF_FAILURES must be > 0".into());
        }
        Ok(opts)
    }

    pub fn has(&self, part: Part) -> bool {
        self.parts.contains(&part)
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("{name}: cannot parse {v:?}")),
    }
}

fn list<T>(name: &str, default: &str, item: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    let text = var(name).unwrap_or_else(|| default.to_string());
    let items = text
        .split(',')
        .map(|i| item(i.trim()).ok_or_else(|| format!("{name}: {i:?} is not one of {default} (or out of range)")))
        .collect::<Result<Vec<T>, String>>()?;
    if items.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(items)
}
