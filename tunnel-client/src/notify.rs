//! systemd integration (`Type=notify`): READY once the supervisor runs (a Pi that boots with a
//! locked signer or no uplink yet is started, not restarted by the start timeout), STATUS
//! lines saying whether each tunnel forwards, over which uplink ([`crate::status`]), and
//! WATCHDOG pings fed only while every supervisor's loop runs ([`Watchdog`]). Silent no-ops
//! outside systemd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd the service is ready: the supervisor runs.
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// A one-line status shown by `systemctl status`.
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

/// Tell systemd we are stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The interval to ping the watchdog at (half of `WatchdogSec`), if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// One watchdog ping.
pub fn watchdog() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// The systemd watchdog across every supervisor: pinged only while each one still beats
/// ([`Heartbeat::beat`], polled beside the supervisor's other branches). One wedged supervisor
/// (a deadlock, a blocking call) stops the pings although the others run, which is what the
/// watchdog is for: systemd restarts the process.
pub struct Watchdog {
    every: Option<Duration>,
    beats: Arc<[AtomicBool]>,
}

/// One supervisor's share of the [`Watchdog`].
pub struct Heartbeat {
    tick: Option<tokio::time::Interval>,
    beats: Arc<[AtomicBool]>,
    index: usize,
}

impl Watchdog {
    /// From `WatchdogSec` (via `WATCHDOG_USEC`), for `supervisors` supervisors; inert without it.
    pub fn from_env(supervisors: usize) -> (Watchdog, Vec<Heartbeat>) {
        Watchdog::every(watchdog_interval(), supervisors)
    }

    /// Ping every `every` (or never), once every supervisor beat since the last ping.
    pub fn every(every: Option<Duration>, supervisors: usize) -> (Watchdog, Vec<Heartbeat>) {
        let beats: Arc<[AtomicBool]> = (0..supervisors).map(|_| AtomicBool::new(false)).collect();
        let hearts = (0..supervisors)
            .map(|index| Heartbeat {
                // Twice per ping period: each supervisor beats at least once between two checks.
                tick: every.map(|d| {
                    let mut t = tokio::time::interval(d / 2);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                }),
                beats: Arc::clone(&beats),
                index,
            })
            .collect();
        (Watchdog { every, beats }, hearts)
    }

    /// Ping systemd every period in which every supervisor beat; never returns without a
    /// watchdog. Run it beside the supervisors.
    pub async fn run(self) {
        let Some(every) = self.every else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.all_beat() {
                watchdog();
            }
        }
    }

    /// Did every supervisor beat since the last call? Every flag is read and cleared.
    fn all_beat(&self) -> bool {
        let mut all = true;
        for beat in self.beats.iter() {
            all &= beat.swap(false, Ordering::Relaxed);
        }
        all
    }
}

impl Heartbeat {
    /// Wait for the next beat time and beat; never resolves without a watchdog. Cancel-safe.
    pub async fn beat(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
                if let Some(b) = self.beats.get(self.index) {
                    b.store(true, Ordering::Relaxed);
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Count the supervisors' beats the watchdog would ping on, over `periods` periods.
    async fn pings(hearts: &mut [Heartbeat], wd: &Watchdog, periods: u32, every: Duration) -> u32 {
        let mut pinged = 0;
        for _ in 0..periods {
            let period = tokio::time::sleep(every);
            tokio::pin!(period);
            loop {
                let beats = futures_util::future::select_all(hearts.iter_mut().map(|h| Box::pin(h.beat())));
                tokio::select! {
                    _ = &mut period => break,
                    _ = beats => {}
                }
            }
            if wd.all_beat() {
                pinged += 1;
            }
        }
        pinged
    }

    #[tokio::test(start_paused = true)]
    async fn pinged_only_while_every_supervisor_beats() {
        let every = Duration::from_millis(200);
        let (wd, mut hearts) = Watchdog::every(Some(every), 2);
        assert_eq!(
            pings(&mut hearts, &wd, 5, every).await,
            5,
            "both beat: a ping each period"
        );
        // The second supervisor is no longer polled (wedged): no more pings.
        let (first, _) = hearts.split_at_mut(1);
        assert_eq!(pings(first, &wd, 5, every).await, 0, "one wedged: never pinged");
    }
}
