//! What happened to each connection, for the read models: its recent distinct negotiation
//! failures (`vpngw diagnose`, the last one in `vpngw status`) and its event counts
//! (failures, rekeys, re-authentications, DPD timeouts: metrics).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::SystemTime;

use vpngw_ike::FailReason;

/// Distinct failures remembered per connection for `vpngw diagnose`.
const FAILURES_KEPT: usize = 10;

/// A negotiation failure as the daemon remembers it (repeats are counted, not kept).
pub struct LastFailure {
    pub reason: FailReason,
    pub detail: String,
    pub at: SystemTime,
    pub count: u64,
}

/// Counters and gauges per connection and worker, for the daemon to keep between scrapes.
#[derive(Debug, Clone, Default)]
pub struct ConnectionEvents {
    pub failures: [u64; FailReason::ALL.len()],
    pub rekeys: u64,
    pub reauthentications: u64,
    pub dpd_timeouts: u64,
}

impl ConnectionEvents {
    pub fn failed(&mut self, reason: FailReason) {
        if let Some(i) = FailReason::ALL.iter().position(|r| *r == reason) {
            self.failures[i] += 1;
        }
    }
}

#[derive(Default)]
pub struct ConnectionHistory {
    /// Recent distinct negotiation failures per connection, most recent first.
    failures: HashMap<String, VecDeque<LastFailure>>,
    /// Failures, rekeys, re-authentications, DPD timeouts per connection (for metrics).
    events: HashMap<String, ConnectionEvents>,
    unknown_peer_negotiations: u64,
}

impl ConnectionHistory {
    /// A negotiation failed. `known` is the configured connection it concerns, if any; `name`
    /// what the failure is filed under (the peer's name, or its address when unknown).
    pub fn negotiation_failed(
        &mut self,
        known: Option<&str>,
        name: &str,
        remote: SocketAddr,
        reason: FailReason,
        detail: String,
    ) {
        match known {
            Some(p) => self.events.entry(p.to_string()).or_default().failed(reason),
            None => self.unknown_peer_negotiations += 1,
        }
        let now = SystemTime::now();
        let history = self.failures.entry(name.to_string()).or_default();
        match history.iter().position(|f| f.reason == reason && f.detail == detail) {
            Some(i) => {
                // Seen recently: counted, moved to the front, logged at debug only.
                if let Some(mut f) = history.remove(i) {
                    f.count += 1;
                    f.at = now;
                    history.push_front(f);
                }
                tracing::debug!(connection = %name, %reason, %detail, "negotiation failed again");
            }
            None => {
                // Logged once per distinct failure, not once per retransmission or retry.
                tracing::warn!(connection = %name, %remote, %reason, %detail, "negotiation failed");
                history.push_front(LastFailure { reason, detail, at: now, count: 1 });
                history.truncate(FAILURES_KEPT);
            }
        }
    }

    pub fn rekeyed(&mut self, name: &str) {
        self.events.entry(name.to_string()).or_default().rekeys += 1;
    }

    pub fn dpd_timeout(&mut self, name: &str) {
        self.events.entry(name.to_string()).or_default().dpd_timeouts += 1;
    }

    pub fn reauthenticated(&mut self, name: &str) {
        self.events.entry(name.to_string()).or_default().reauthentications += 1;
    }

    /// A connection that no longer exists: its history goes.
    pub fn forget(&mut self, name: &str) {
        self.events.remove(name);
        self.failures.remove(name);
    }

    /// The connection's recent failures, most recent first.
    pub fn failures(&self, name: &str) -> impl Iterator<Item = &LastFailure> {
        self.failures.get(name).into_iter().flatten()
    }

    pub fn last_failure(&self, name: &str) -> Option<&LastFailure> {
        self.failures.get(name).and_then(VecDeque::front)
    }

    pub fn events(&self, name: &str) -> ConnectionEvents {
        self.events.get(name).cloned().unwrap_or_default()
    }

    /// Negotiations from addresses no connection is configured for.
    pub fn unknown_peer_negotiations(&self) -> u64 {
        self.unknown_peer_negotiations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_only_the_latest_distinct_failures_are_kept() {
        let remote: SocketAddr = "198.51.100.2:500".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut h = ConnectionHistory::default();
        for i in 0..12 {
            h.negotiation_failed(Some("a"), "a", remote, FailReason::PeerUnreachable, format!("try {i}"));
        }
        h.negotiation_failed(Some("a"), "a", remote, FailReason::PeerUnreachable, "try 5".into());
        let kept: Vec<(&str, u64)> = h.failures("a").map(|f| (f.detail.as_str(), f.count)).collect();
        assert_eq!(kept.len(), FAILURES_KEPT);
        assert_eq!(kept[0], ("try 5", 2));
        assert_eq!(h.events("a").failures.iter().sum::<u64>(), 13);
        h.negotiation_failed(None, "(unknown peer 192.0.2.9)", remote, FailReason::UnknownPeer, String::new());
        assert_eq!(h.unknown_peer_negotiations(), 1);
        h.forget("a");
        assert!(h.last_failure("a").is_none());
        assert_eq!(h.events("a").failures.iter().sum::<u64>(), 0);
    }
}
