//! The security policy database: which traffic must be protected, from the configuration.
//!
//! The SA table answers "which SA seals this packet"; the SPD answers the question behind it,
//! "must this packet be protected at all": a packet a policy covers but no SA does yet is
//! dropped as `no_sa` (and, for on-traffic connections, starts a negotiation); a packet no
//! policy covers is dropped as `no_policy`. Nothing is ever forwarded in clear.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use crate::sa_table::{NetIndex, Selectors};

#[derive(Clone, Debug)]
pub struct Policy {
    pub selectors: Selectors,
    pub connection: Arc<str>,
    /// For connections started by traffic: packets held while the SA is negotiated.
    pub pending: Option<Arc<PendingQueue>>,
}

/// Packets that arrived for a policy without an SA, waiting for it (on-traffic start).
///
/// Bounded in count and age: a burst while negotiating (the first ping, a TCP SYN, a DNS
/// query) is delivered once the SA is there instead of lost, but a peer that never answers
/// cannot make the gateway hoard packets, and nothing minutes old is sent late. Lock-free:
/// any worker pushes, whichever worker is told the SA arrived drains.
#[derive(Debug)]
pub struct PendingQueue {
    packets: ArrayQueue<(Instant, Vec<u8>)>,
    max_age: Duration,
    /// When the control plane was last asked to negotiate, ms after `born`: at most once a
    /// second, whatever the packet rate.
    born: Instant,
    acquired_ms: AtomicU64,
}

/// What became of a packet offered to a [`PendingQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// An older packet made room for it (the queue keeps the newest).
    pub displaced: bool,
    pub displaced_expired: bool,
}

impl PendingQueue {
    /// Packets held per policy by default, and for how long.
    pub const DEFAULT_PACKETS: usize = 64;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(10);

    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            packets: ArrayQueue::new(capacity.max(1)),
            max_age,
            born: Instant::now(),
            acquired_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Holds a copy of `packet`. When full, the oldest packet goes: a queue full of packets
    /// from a negotiation that failed long ago must not keep new traffic out.
    pub fn push(&self, since: Instant, packet: &[u8]) -> Held {
        match self.packets.force_push((since, packet.to_vec())) {
            None => Held { displaced: false, displaced_expired: false },
            Some((at, _)) => {
                Held { displaced: true, displaced_expired: since.saturating_duration_since(at) > self.max_age }
            }
        }
    }

    /// Whether to ask the control plane to negotiate now: true at most once a second.
    pub fn acquire_due(&self, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.born).as_millis() as u64;
        let last = self.acquired_ms.load(Ordering::Relaxed);
        if last != u64::MAX && ms.saturating_sub(last) < 1000 {
            return false;
        }
        self.acquired_ms.compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The oldest packet still young enough, with the time it arrived; `expired` counts the
    /// ones thrown away on the way.
    pub fn pop(&self, now: Instant, expired: &mut u64) -> Option<(Instant, Vec<u8>)> {
        while let Some((at, p)) = self.packets.pop() {
            if now.saturating_duration_since(at) <= self.max_age {
                return Some((at, p));
            }
            *expired += 1;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Spd {
    index: NetIndex<Policy>,
}

impl Spd {
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut index = NetIndex::default();
        for p in policies {
            index.insert(p.selectors.remote, p);
        }
        Self { index }
    }

    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&Policy> {
        self.index.lookup(dst, |p| p.selectors.local.contains(&src))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.index.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa_table::Ipv4Net;

    fn p(local: &str, remote: &str, conn: &str) -> Policy {
        let net = |s: &str| {
            let (a, l) = s.split_once('/').unwrap_or((s, "32"));
            Ipv4Net::new_assert(a.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), l.parse().unwrap_or(32))
        };
        Policy {
            selectors: Selectors { local: net(local), remote: net(remote) },
            connection: conn.into(),
            pending: None,
        }
    }

    #[test]
    fn longest_prefix_wins_and_source_must_match() {
        let spd = Spd::new([
            p("10.1.0.0/24", "10.2.0.0/16", "wide"),
            p("10.1.0.0/24", "10.2.5.0/24", "narrow"),
            p("10.9.0.0/24", "10.2.0.0/16", "other-src"),
        ]);
        let hit =
            |s: [u8; 4], d: [u8; 4]| spd.lookup(Ipv4Addr::from(s), Ipv4Addr::from(d)).map(|p| p.connection.to_string());
        assert_eq!(hit([10, 1, 0, 5], [10, 2, 5, 9]).as_deref(), Some("narrow"));
        assert_eq!(hit([10, 1, 0, 5], [10, 2, 6, 9]).as_deref(), Some("wide"));
        assert_eq!(hit([10, 9, 0, 5], [10, 2, 6, 9]).as_deref(), Some("other-src"));
        assert_eq!(hit([10, 7, 0, 5], [10, 2, 6, 9]), None, "source in no local network");
        assert_eq!(hit([10, 1, 0, 5], [10, 3, 0, 1]), None);
        assert_eq!(spd.len(), 3);
    }

    #[test]
    fn pending_queue_is_bounded_in_count_and_age() {
        let q = PendingQueue::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!q.push(t0, b"one").displaced);
        assert!(!q.push(t0 + Duration::from_secs(5), b"two").displaced);
        // Full: the oldest makes room, and says whether it was stale anyway.
        assert_eq!(q.push(t0 + Duration::from_secs(11), b"three"), Held { displaced: true, displaced_expired: true });
        assert_eq!(q.len(), 2);
        let mut expired = 0;
        // At t0 + 16 s "two" is too old, "three" still good.
        let (at, p) = q.pop(t0 + Duration::from_secs(16), &mut expired).unwrap();
        assert_eq!((p.as_slice(), at, expired), (&b"three"[..], t0 + Duration::from_secs(11), 1));
        assert!(q.pop(t0, &mut expired).is_none() && q.is_empty());
    }

    #[test]
    fn acquire_is_asked_at_most_once_a_second() {
        let q = PendingQueue::new(4, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(q.acquire_due(t0));
        assert!(!q.acquire_due(t0 + Duration::from_millis(500)));
        assert!(q.acquire_due(t0 + Duration::from_millis(1200)));
        assert!(!q.acquire_due(t0 + Duration::from_millis(1300)));
    }
}
