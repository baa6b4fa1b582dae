//! What first messages may cost before anyone has authenticated: anyone can send one from a
//! configured peer's address, so the state they create and the Diffie-Hellman work they cause
//! are bounded, per peer and in total. The endpoint asks here before it creates a responder
//! IKE SA or lets a message cause a Diffie-Hellman computation; nothing here sends or parses.
//!
//! - Half-open responder SAs (not yet authenticated): at most `half_open_per_peer` per
//!   connection (a new one evicts that connection's oldest: a real peer completes within a round
//!   trip, a spoofed one never does) and `half_open_total` in all (new ones are refused).
//! - Diffie-Hellman on the responder side (aggressive mode's first message, main mode's third):
//!   token buckets per connection and in total, refilled at `dh_per_peer_per_second` and
//!   `dh_total_per_second`. A refused message is dropped; the peer retransmits.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::config::EngineConfig;
use crate::event::IkeSaId;

/// A token bucket in thousandths of a token, so that slow rates refill smoothly.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(per_second: u32, now: Instant) -> Self {
        Self { milli: u64::from(per_second) * 1000, at: now }
    }

    /// Takes one token if there is one; the bucket holds at most a second's worth.
    fn take(&mut self, per_second: u32, now: Instant) -> bool {
        let cap = u64::from(per_second) * 1000;
        let elapsed = now.saturating_duration_since(self.at);
        let refill = elapsed.as_millis().saturating_mul(u128::from(per_second));
        self.milli = u64::try_from(refill).unwrap_or(u64::MAX).saturating_add(self.milli).min(cap);
        self.at = now.max(self.at);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// What admitting a new responder SA for a connection requires.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HalfOpen {
    /// Room for it.
    Admit,
    /// Room once this older half-open SA of the same connection goes.
    Evict(IkeSaId),
    /// The total is reached.
    Full,
}

#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// Responder SAs not yet authenticated, with their connection, oldest first (ids grow).
    half_open: BTreeMap<IkeSaId, String>,
    dh_total: Option<Bucket>,
    dh_per_peer: HashMap<String, Bucket>,
}

impl Admission {
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// Whether a new responder SA for `peer` may be created.
    pub fn half_open(&self, config: &EngineConfig, peer: &str) -> HalfOpen {
        let mut of_peer = self.half_open.iter().filter(|(_, p)| *p == peer);
        let oldest = of_peer.next().map(|(id, _)| *id);
        if oldest.is_some() && 1 + of_peer.count() >= config.half_open_per_peer {
            return oldest.map_or(HalfOpen::Full, HalfOpen::Evict);
        }
        if self.half_open.len() >= config.half_open_total { HalfOpen::Full } else { HalfOpen::Admit }
    }

    pub fn opened(&mut self, id: IkeSaId, peer: &str) {
        self.half_open.insert(id, peer.to_string());
    }

    /// The SA authenticated or went: no longer half-open.
    pub fn closed(&mut self, id: IkeSaId) {
        self.half_open.remove(&id);
    }

    /// Whether a Diffie-Hellman computation caused by `peer`'s unauthenticated message may
    /// run now (takes a token from both buckets when it may).
    pub fn dh(&mut self, config: &EngineConfig, peer: &str, now: Instant) -> bool {
        let (per_peer, total) = (config.dh_per_peer_per_second, config.dh_total_per_second);
        let mut peer_bucket = self.dh_per_peer.get(peer).copied().unwrap_or_else(|| Bucket::full(per_peer, now));
        let mut total_bucket = self.dh_total.unwrap_or_else(|| Bucket::full(total, now));
        // Check both before taking from either: a refused message costs no token.
        let (mut p, mut t) = (peer_bucket, total_bucket);
        let allowed = p.take(per_peer, now) && t.take(total, now);
        if allowed {
            (peer_bucket, total_bucket) = (p, t);
        }
        self.dh_per_peer.insert(peer.to_string(), peer_bucket);
        self.dh_total = Some(total_bucket);
        allowed
    }

    /// A connection was removed: its bucket goes (the map holds configured connections only).
    pub fn forget_peer(&mut self, peer: &str) {
        self.dh_per_peer.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> EngineConfig {
        EngineConfig {
            half_open_per_peer: 3,
            half_open_total: 5,
            dh_per_peer_per_second: 4,
            dh_total_per_second: 6,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn half_open_sas_are_capped_per_peer_by_evicting_the_oldest_and_in_total_by_refusing() {
        let c = config();
        let mut a = Admission::default();
        for i in 1..=3 {
            assert_eq!(a.half_open(&c, "p"), HalfOpen::Admit);
            a.opened(IkeSaId(i), "p");
        }
        assert_eq!(a.half_open(&c, "p"), HalfOpen::Evict(IkeSaId(1)));
        a.closed(IkeSaId(1));
        a.opened(IkeSaId(4), "p");
        assert_eq!(a.half_open(&c, "p"), HalfOpen::Evict(IkeSaId(2)));
        a.opened(IkeSaId(5), "q");
        a.opened(IkeSaId(6), "q");
        assert_eq!(a.half_open_count(), 5);
        assert_eq!(a.half_open(&c, "r"), HalfOpen::Full);
        // A peer at its own cap still evicts its own oldest, whatever the total.
        assert_eq!(a.half_open(&c, "p"), HalfOpen::Evict(IkeSaId(2)));
        a.closed(IkeSaId(5));
        assert_eq!(a.half_open(&c, "r"), HalfOpen::Admit);
    }

    #[test]
    fn diffie_hellman_is_rate_limited_per_peer_and_in_total() {
        let c = config();
        let mut a = Admission::default();
        let t0 = Instant::now();
        // A second's worth at once for one peer, then nothing.
        assert_eq!((0..10).filter(|_| a.dh(&c, "p", t0)).count(), 4);
        // The total (6) leaves 2 for another peer.
        assert_eq!((0..10).filter(|_| a.dh(&c, "q", t0)).count(), 2);
        // Refills at the rate: a quarter of a second gives p one more.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!((0..10).filter(|_| a.dh(&c, "p", t1)).count(), 1);
        // After a long quiet, at most a second's worth (the burst), not more.
        let t2 = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| a.dh(&c, "p", t2)).count(), 4);
    }
}
