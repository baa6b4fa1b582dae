//! Retries of active connections after a failure: when each is due, with a backoff that
//! doubles from RETRY_FIRST up to RETRY_MAX. Whether a connection is active, and whether it
//! is up again, is the daemon's to say; this only keeps the clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The first retry of an active connection after a failure.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest the backoff grows to.
const RETRY_MAX: Duration = Duration::from_secs(60);

struct Retry {
    at: Instant,
    backoff: Duration,
    /// Its attempt was made: the next failure schedules the next one (with a doubled backoff).
    parked: bool,
}

/// The retries scheduled per connection.
#[derive(Default)]
pub struct Retries {
    by_connection: HashMap<String, Retry>,
    /// Taken down by the operator (`vpngw down`): no retries until `up`.
    held: HashSet<String>,
}

impl Retries {
    /// When the next retry is due.
    pub fn next(&self) -> Option<Instant> {
        self.by_connection.values().filter(|r| !r.parked).map(|r| r.at).min()
    }

    /// When the connection's next retry is due, if one is scheduled.
    pub fn due(&self, name: &str) -> Option<Instant> {
        self.by_connection.get(name).filter(|r| !r.parked).map(|r| r.at)
    }

    /// Schedules the connection's next retry, unless one is scheduled already: a failure
    /// never pushes a scheduled attempt later (failures can be provoked by anyone who sends
    /// a first message from the peer's address). After an attempt (see [`Retries::take_due`]),
    /// the next failure schedules the next attempt with the backoff doubled.
    pub fn schedule(&mut self, name: &str, now: Instant) {
        match self.by_connection.get_mut(name) {
            Some(r) if !r.parked => {}
            Some(r) => {
                r.backoff = (r.backoff * 2).min(RETRY_MAX);
                r.at = now + r.backoff;
                r.parked = false;
            }
            None => {
                let r = Retry { at: now + RETRY_FIRST, backoff: RETRY_FIRST, parked: false };
                self.by_connection.insert(name.to_string(), r);
            }
        }
    }

    /// An active connection that is down and has no attempt scheduled gets one (whatever
    /// made it go down silently), unless the operator took it down.
    pub fn ensure(&mut self, name: &str, now: Instant) -> bool {
        if self.held.contains(name) || self.by_connection.get(name).is_some_and(|r| !r.parked) {
            return false;
        }
        self.schedule(name, now);
        true
    }

    /// The connection is up, or was started by hand: no retry, and the backoff starts over.
    pub fn cancel(&mut self, name: &str) {
        self.by_connection.remove(name);
        self.held.remove(name);
    }

    /// The operator took the connection down: no retry until it is started again.
    pub fn hold(&mut self, name: &str) {
        self.by_connection.remove(name);
        self.held.insert(name.to_string());
    }

    /// The connections whose retry is due. Each is parked until the next failure reschedules
    /// it (keeping its backoff).
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (name, r) in &mut self.by_connection {
            if !r.parked && r.at <= now {
                r.parked = true;
                due.push(name.clone());
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_per_attempt_up_to_its_maximum() {
        let now = Instant::now();
        let mut retries = Retries::default();
        assert_eq!(retries.next(), None);
        retries.schedule("a", now);
        assert_eq!(retries.next(), Some(now + RETRY_FIRST));
        let mut at = now;
        for expected in [10, 20, 40, 60, 60] {
            at = retries.next().unwrap();
            assert_eq!(retries.take_due(at), vec!["a".to_string()]);
            assert!(retries.take_due(at).is_empty(), "parked until rescheduled");
            assert_eq!(retries.next(), None);
            retries.schedule("a", at);
            assert_eq!(retries.due("a"), Some(at + Duration::from_secs(expected)));
        }
        retries.cancel("a");
        assert_eq!(retries.next(), None);
        retries.schedule("a", at);
        assert_eq!(retries.next(), Some(at + RETRY_FIRST), "a cancel starts the backoff over");
    }

    #[test]
    fn failures_never_push_a_scheduled_attempt_later() {
        let now = Instant::now();
        let mut retries = Retries::default();
        retries.schedule("a", now);
        // A stream of failures (e.g. provoked by spoofed first messages) before it is due.
        for s in 1..5 {
            retries.schedule("a", now + Duration::from_secs(s));
        }
        assert_eq!(retries.due("a"), Some(now + RETRY_FIRST));
        assert_eq!(retries.take_due(now + RETRY_FIRST), vec!["a".to_string()]);
    }

    #[test]
    fn a_connection_down_without_an_attempt_gets_one_unless_the_operator_holds_it() {
        let now = Instant::now();
        let mut retries = Retries::default();
        assert!(retries.ensure("a", now));
        assert!(!retries.ensure("a", now + Duration::from_secs(1)), "one is scheduled");
        assert_eq!(retries.due("a"), Some(now + RETRY_FIRST));
        retries.hold("a");
        assert!(!retries.ensure("a", now));
        assert_eq!(retries.next(), None);
        retries.cancel("a");
        assert!(retries.ensure("a", now));
    }
}
