//! Message IDs an IKE SA has seen from its peer, so that a replayed quick mode or
//! informational message (authentic: it is a copy of one the peer sent) is not acted on twice.
//! The peer picks message IDs at random (RFC 2409 s.5.5, s.5.7), so a repeat among the recent
//! ones is a replay, not a coincidence. Bounded: the oldest are forgotten first.

use std::collections::{HashSet, VecDeque};

#[derive(Debug, Default)]
pub(crate) struct SeenIds {
    order: VecDeque<u32>,
    set: HashSet<u32>,
}

/// How many IDs of each kind an IKE SA remembers: quick modes (one an hour at the seed's
/// defaults: more than an IKE SA lives) and informational exchanges (DPD every 30 s: the last
/// two hours). Nothing is allocated until the first; about 3.5 KB a kind when full (the ring
/// and the hash set), which a gateway with thousands of tunnels (issue 12) will feel.
pub(crate) const SEEN_KEPT: usize = 256;

impl SeenIds {
    pub fn contains(&self, id: u32) -> bool {
        self.set.contains(&id)
    }

    /// Records `id`; false if it was seen already.
    pub fn insert(&mut self, id: u32) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Oldest first (a snapshot's order).
    pub fn to_vec(&self) -> Vec<u32> {
        self.order.iter().copied().collect()
    }

    pub fn from_ids(ids: Vec<u32>) -> Self {
        let mut seen = Self::default();
        for id in ids {
            seen.insert(id);
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_refused_and_the_oldest_forgotten() {
        let mut s = SeenIds::default();
        assert!(s.insert(7));
        assert!(!s.insert(7));
        for id in 100..100 + SEEN_KEPT as u32 {
            assert!(s.insert(id));
        }
        assert!(!s.contains(7), "the oldest went");
        assert!(s.contains(100) && s.order.len() == SEEN_KEPT && s.set.len() == SEEN_KEPT);
        assert_eq!(SeenIds::from_ids(s.to_vec()).to_vec(), s.to_vec());
    }
}
