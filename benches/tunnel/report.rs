//! What the fault parts print: their figures over runs, and the settings in force, read back
//! through the gateway's own config parser.

use std::time::Duration;

use signer_gateway::config::Config;
use testkit::tunnel_harness::TunnelConfig;
use testkit::tunnel_rig::TunnelRig;

use crate::common::report::{secs, Table, Targets};
use crate::common::stats::spread;

/// A table of figures over runs: measure, runs, min, median, max, target, result.
pub struct RunsTable {
    table: Table,
    label: String,
}

impl RunsTable {
    /// A table for the runs of setting `label` (which names its targets).
    pub fn new(label: &str) -> RunsTable {
        RunsTable {
            table: Table::new(&["measure", ">runs", ">min", ">median", ">max", "target", "result"]),
            label: label.to_string(),
        }
    }

    fn row(&mut self, what: &str, figures: &[Duration], target: &str, result: &str) {
        let [lo, mid, hi] =
            spread(figures).map_or_else(|| ["-".into(), "-".into(), "-".into()], |s| [s.0, s.1, s.2].map(secs));
        let runs = figures.len().to_string();
        self.table.row([what, &runs, &lo, &mid, &hi, target, result]);
    }

    /// A figure, for information.
    pub fn info(&mut self, what: &str, figures: &[Duration]) {
        self.row(what, figures, "-", "-");
    }

    /// A figure each of `runs` runs must have, at most `target`.
    pub fn bounded(&mut self, targets: &mut Targets, what: &str, figures: &[Duration], runs: usize, target: Duration) {
        let ok = figures.len() == runs && figures.iter().all(|d| *d <= target);
        let worst = spread(figures).map_or("none".into(), |s| secs(s.2));
        let v = targets.check(
            format!("{}: {what} (worst {worst} in {runs} runs) <= {target:?}", self.label),
            ok,
        );
        self.row(what, figures, &format!("<= {target:?}"), v);
    }

    /// A count over all `runs` runs that must be 0.
    pub fn zero(&mut self, targets: &mut Targets, what: &str, count: usize, runs: usize) {
        let v = targets.check(format!("{}: {what}: {count}", self.label), count == 0);
        let (runs, count) = (runs.to_string(), count.to_string());
        self.table.row([what, &runs, "", &count, "", "0", v]);
    }

    pub fn print(&self) {
        self.table.print();
    }
}

/// The gateway's timing as its parser reads the rig's config, and the client's.
pub fn settings(rig: &TunnelRig, client: &TunnelConfig) -> String {
    let gateway = std::fs::read_to_string(rig.gw.dir().join("gateway.yaml"))
        .map_err(|e| e.to_string())
        .and_then(|text| Config::parse(&text).map_err(|e| e.to_string()));
    let gateway = match gateway {
        Ok(settings) => {
            let c = &settings.config;
            let h = &c.health_check;
            let mut s = format!(
                "request_timeout {:?}; health_check {:?} / {:?} / rise {} / fall {}",
                c.request_timeout, h.interval, h.timeout, h.rise, h.fall
            );
            if let Some(ssh) = &c.ssh {
                s += &format!(
                    "; ssh keepalive {:?} x {}, tcp_user_timeout {:?}, channel_open_timeout {:?}",
                    ssh.keepalive_interval, ssh.keepalive_max, ssh.tcp_user_timeout, ssh.channel_open_timeout
                );
            }
            s
        }
        Err(e) => format!("(cannot read the gateway's config: {e})"),
    };
    format!(
        "gateway: {gateway}\nclient: connect_timeout {:?}, keepalive {:?} x {}, backoff {:?}..{:?} (reset after {:?}), \
         uplink_retry {:?}, local health check every {:?} (timeout {:?}, fall {}, rise {})",
        client.connect_timeout,
        client.keepalive_interval,
        client.keepalive_max,
        client.backoff_initial,
        client.backoff_max,
        client.backoff_reset_after,
        client.uplink_retry,
        client.health_interval,
        client.health_timeout,
        client.health_fall,
        client.health_rise
    )
}
