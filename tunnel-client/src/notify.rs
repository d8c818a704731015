//! systemd integration (`Type=notify`): READY once the first forward is accepted, STATUS
//! lines with the uplink and state, WATCHDOG pings. Silent no-ops outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tell systemd the service is ready (first forward accepted).
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
