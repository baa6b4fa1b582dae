//! Retries of active connections after a failure: when each is due, with a backoff that
//! doubles from RETRY_FIRST up to RETRY_MAX. Whether a connection is active, and whether it
//! is up again, is the daemon's to say; this only keeps the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first retry of an active connection after a failure.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest the backoff grows to.
const RETRY_MAX: Duration = Duration::from_secs(60);

struct Retry {
    at: Instant,
    backoff: Duration,
}

/// The retries scheduled per connection.
#[derive(Default)]
pub struct Retries {
    by_connection: HashMap<String, Retry>,
}

impl Retries {
    /// When the next retry is due.
    pub fn next(&self) -> Option<Instant> {
        self.by_connection.values().map(|r| r.at).min()
    }

    /// Schedules (or pushes back, doubling the backoff) the connection's next retry.
    pub fn schedule(&mut self, name: &str, now: Instant) {
        let r = self.by_connection.entry(name.to_string()).or_insert(Retry { at: now, backoff: RETRY_FIRST / 2 });
        r.backoff = (r.backoff * 2).min(RETRY_MAX);
        r.at = now + r.backoff;
    }

    /// The connection is up, or was started or stopped by hand: no retry, and the backoff
    /// starts over.
    pub fn cancel(&mut self, name: &str) {
        self.by_connection.remove(name);
    }

    /// The connections whose retry is due. Each is parked until the next failure reschedules
    /// it (keeping its backoff).
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self.by_connection.iter().filter(|(_, r)| r.at <= now).map(|(n, _)| n.clone()).collect();
        for name in &due {
            if let Some(r) = self.by_connection.get_mut(name) {
                r.at = now + RETRY_MAX * 1000;
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_and_a_due_retry_waits_for_the_next_failure() {
        let now = Instant::now();
        let mut retries = Retries::default();
        assert_eq!(retries.next(), None);
        retries.schedule("a", now);
        assert_eq!(retries.next(), Some(now + RETRY_FIRST));
        for expected in [10, 20, 40, 60, 60] {
            retries.schedule("a", now);
            assert_eq!(retries.next(), Some(now + Duration::from_secs(expected)));
        }
        assert!(retries.take_due(now).is_empty());
        let later = now + RETRY_MAX;
        assert_eq!(retries.take_due(later), vec!["a".to_string()]);
        assert!(retries.take_due(later).is_empty(), "parked until rescheduled");
        retries.schedule("a", later);
        assert_eq!(retries.next(), Some(later + RETRY_MAX), "the backoff is kept");
        retries.cancel("a");
        assert_eq!(retries.next(), None);
        retries.schedule("a", later);
        assert_eq!(retries.next(), Some(later + RETRY_FIRST), "a cancel starts the backoff over");
    }
}
