//! The service manager's side of `run` (systemd, `Type=notify`; sd_notify(3)): `READY=1` once
//! the configuration is loaded and the spools are checked, `RELOADING=1` … `READY=1` around a
//! SIGHUP reload, `STOPPING=1` on SIGTERM, and `WATCHDOG=1` pings at half of `WatchdogSec=`.
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    // a lost notification is not a reason to stop serving: systemd times the start out itself
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// `READY=1` with a status line (`systemctl status` shows it).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1`: a SIGHUP reload began (`ready` follows).
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// `STOPPING=1`: SIGTERM received, finishing the transactions in flight.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing transactions in flight"),
    ]);
}

/// `WATCHDOG=1` pings when the unit sets `WatchdogSec=` (`WATCHDOG_USEC` in the environment).
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC`/`WATCHDOG_PID`; pings at half the interval, as sd_watchdog_enabled(3)
    /// advises.
    pub fn from_env() -> Watchdog {
        Watchdog {
            every: sd_notify::watchdog_enabled().map(|d| d / 2),
            last: Instant::now(),
        }
    }

    /// Pings when due; call it often (at least every few hundred milliseconds).
    pub fn tick(&mut self) {
        if let Some(every) = self.every
            && self.last.elapsed() >= every
        {
            send(&[NotifyState::Watchdog]);
            self.last = Instant::now();
        }
    }
}
