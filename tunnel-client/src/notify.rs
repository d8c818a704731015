//! systemd integration (`Type=notify`): READY once the supervisor runs (a Pi that boots with a
//! locked signer or no uplink yet is started, not restarted by the start timeout), STATUS
//! lines saying whether the tunnel forwards, over which uplink, and WATCHDOG pings fed from
//! the supervisor's own loop ([`Watchdog`]). Silent no-ops outside systemd.

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

/// The watchdog, fed only where the supervisor waits: each of its loops polls
/// [`Watchdog::ping`] beside its other branches, so pings stop when the supervisor stops
/// being polled (a deadlock, a blocking call), which is what the watchdog is for.
pub struct Watchdog {
    tick: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// From `WatchdogSec` (via `WATCHDOG_USEC`); inert without it.
    pub fn from_env() -> Watchdog {
        Watchdog::every(watchdog_interval())
    }

    /// Ping every `every`, or never.
    pub fn every(every: Option<Duration>) -> Watchdog {
        Watchdog {
            tick: every.map(|d| {
                let mut t = tokio::time::interval(d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            }),
        }
    }

    /// Wait for the next ping time and ping; never resolves without a watchdog. Cancel-safe.
    pub async fn ping(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
                watchdog();
            }
            None => std::future::pending().await,
        }
    }
}
