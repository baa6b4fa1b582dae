//! What the service manager is told, through sd_notify (`Type=notify` units,
//! `deploy/systemd/vpngw.service`): ready once the sockets, the TUN, the routes and the
//! surfaces are up; reloading and ready again around a reload; stopping; the watchdog's
//! keep-alive from the loop, so a hung loop is restarted. Without `NOTIFY_SOCKET` (not started
//! by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn tell(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

pub fn ready(status: &str) {
    tell(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    // MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match this to the reload it asked for.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => tell(&[NotifyState::Reloading, now]),
        Err(_) => tell(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    tell(&[NotifyState::Stopping, NotifyState::Status("stopping: deleting SAs")]);
}

/// How often the loop must say it is alive (half the unit's `WatchdogSec`), if it must.
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn watchdog() {
    tell(&[NotifyState::Watchdog]);
}
