//! What happened to each connection, for the read models: its recent distinct negotiation
//! failures (`vpngw diagnose`, the last one in `vpngw status`) and its event counts
//! (failures, rekeys, re-authentications, DPD timeouts: metrics).
//!
//! Failures from addresses no connection is configured for are anyone's to send (a spoofed
//! first message is enough): they are kept apart, in a least-recently-used set of at most
//! [`UNKNOWN_PEERS_KEPT`] addresses (the oldest evicted, counted), and their WARN lines are
//! rate-limited ([`UnknownPeerLog`]: at most one a second, the rest counted and summed up in
//! one line). Configured connections keep their history as before.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use vpngw_ike::FailReason;

/// Distinct failures remembered per connection for `vpngw diagnose`.
const FAILURES_KEPT: usize = 10;
/// Unknown peers (by the name their failures are filed under) whose failures are remembered.
pub const UNKNOWN_PEERS_KEPT: usize = 256;
/// At most one WARN line about unknown peers per this long.
const UNKNOWN_PEER_LOG_EVERY: Duration = Duration::from_secs(1);

/// A negotiation failure as the daemon remembers it (repeats are counted, not kept).
#[derive(Clone, Debug)]
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

#[derive(Clone, Default)]
pub struct ConnectionHistory {
    /// Recent distinct negotiation failures per configured connection, most recent first.
    failures: HashMap<String, VecDeque<LastFailure>>,
    /// The same for unknown peers, bounded.
    unknown: UnknownPeers,
    /// Failures, rekeys, re-authentications, DPD timeouts per connection (for metrics).
    events: HashMap<String, ConnectionEvents>,
    unknown_peer_negotiations: u64,
    unknown_log: UnknownPeerLog,
}

impl ConnectionHistory {
    /// A negotiation failed. `known` is the configured connection it concerns, if any; `name`
    /// what the failure is filed under (the peer's name, or its address when unknown).
    /// `logged`: the engine logged this failure itself (dead peer detection); it is recorded
    /// without a line of its own.
    pub fn negotiation_failed(
        &mut self,
        logged: bool,
        known: Option<&str>,
        name: &str,
        remote: SocketAddr,
        reason: FailReason,
        detail: String,
    ) {
        self.negotiation_failed_at(Instant::now(), logged, known, name, remote, reason, detail);
    }

    // The failure as the engine reported it, plus the clock and whether it was logged already:
    // a struct for one private call would only rename the arguments.
    #[allow(clippy::too_many_arguments)]
    fn negotiation_failed_at(
        &mut self,
        now: Instant,
        logged: bool,
        known: Option<&str>,
        name: &str,
        remote: SocketAddr,
        reason: FailReason,
        detail: String,
    ) {
        let history = match known {
            Some(p) => {
                self.events.entry(p.to_string()).or_default().failed(reason);
                self.failures.entry(name.to_string()).or_default()
            }
            None => {
                self.unknown_peer_negotiations += 1;
                self.unknown.entry(name)
            }
        };
        let wall = SystemTime::now();
        match history.iter().position(|f| f.reason == reason && f.detail == detail) {
            Some(i) => {
                // Seen recently: counted, moved to the front, logged at debug only.
                if let Some(mut f) = history.remove(i) {
                    f.count += 1;
                    f.at = wall;
                    history.push_front(f);
                }
                tracing::debug!(connection = %name, %reason, %detail, "negotiation failed again");
            }
            None => {
                history.push_front(LastFailure { reason, detail: detail.clone(), at: wall, count: 1 });
                history.truncate(FAILURES_KEPT);
                // Logged once per distinct failure, not once per retransmission or retry; for
                // unknown peers (anyone can make one up) at most once a second as well.
                if logged {
                    tracing::debug!(connection = %name, %remote, %reason, %detail, "negotiation failed");
                } else if known.is_some() || self.unknown_log.may_log(now) {
                    tracing::warn!(event = "negotiation_failed", connection = %name, %remote, %reason, %detail, "negotiation failed");
                }
            }
        }
    }

    /// Once in a while (the daemon's lifecycle tick): the summary of the unknown peers' WARN
    /// lines held back, if any.
    pub fn tick(&mut self, now: Instant) {
        self.unknown_log.summarize(now);
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
        self.failures.get(name).or_else(|| self.unknown.get(name)).into_iter().flatten()
    }

    pub fn last_failure(&self, name: &str) -> Option<&LastFailure> {
        self.failures(name).next()
    }

    pub fn events(&self, name: &str) -> ConnectionEvents {
        self.events.get(name).cloned().unwrap_or_default()
    }

    /// Negotiations from addresses no connection is configured for.
    pub fn unknown_peer_negotiations(&self) -> u64 {
        self.unknown_peer_negotiations
    }

    /// Unknown peers whose failures were forgotten to make room for newer ones.
    pub fn unknown_peer_evictions(&self) -> u64 {
        self.unknown.evictions
    }

    /// WARN lines about unknown peers held back by the rate limit.
    pub fn unknown_peer_logs_suppressed(&self) -> u64 {
        self.unknown_log.suppressed_total
    }
}

/// The unknown peers' failures, least recently used evicted first. A map plus an index by
/// last use (a `BTreeMap` keyed by a use counter): O(log n) per failure at a cap of a few
/// hundred, in a few lines, where a linked-list LRU crate would be a new dependency for one
/// small map.
#[derive(Clone, Default)]
struct UnknownPeers {
    by_name: HashMap<String, (u64, VecDeque<LastFailure>)>,
    by_use: BTreeMap<u64, String>,
    uses: u64,
    evictions: u64,
}

impl UnknownPeers {
    /// `name`'s failures, marked as just used (a new entry evicts the least recently used
    /// one when full).
    fn entry(&mut self, name: &str) -> &mut VecDeque<LastFailure> {
        self.uses += 1;
        let stamp = self.uses;
        if let Some((used, _)) = self.by_name.get(name) {
            self.by_use.remove(used);
        } else {
            while self.by_name.len() >= UNKNOWN_PEERS_KEPT {
                let Some((_, oldest)) = self.by_use.pop_first() else { break };
                self.by_name.remove(&oldest);
                self.evictions += 1;
            }
        }
        self.by_use.insert(stamp, name.to_string());
        let entry = self.by_name.entry(name.to_string()).or_insert_with(|| (stamp, VecDeque::new()));
        entry.0 = stamp;
        &mut entry.1
    }

    fn get(&self, name: &str) -> Option<&VecDeque<LastFailure>> {
        self.by_name.get(name).map(|(_, f)| f)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// The rate limit of WARN lines about unknown peers: at most one per
/// [`UNKNOWN_PEER_LOG_EVERY`]; the others are counted and reported in one summary line.
#[derive(Clone, Default)]
struct UnknownPeerLog {
    last: Option<Instant>,
    /// Held back since the last summary.
    suppressed: u64,
    suppressed_total: u64,
    /// Lines written (failures and summaries).
    logged: u64,
}

impl UnknownPeerLog {
    fn may_log(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|t| now.saturating_duration_since(t) >= UNKNOWN_PEER_LOG_EVERY);
        if !due {
            self.suppressed += 1;
            self.suppressed_total += 1;
            return false;
        }
        self.summarize_now();
        self.last = Some(now);
        self.logged += 1;
        true
    }

    /// The summary line, once the last line is old enough.
    fn summarize(&mut self, now: Instant) {
        if self.last.is_none_or(|t| now.saturating_duration_since(t) >= UNKNOWN_PEER_LOG_EVERY) {
            self.summarize_now();
        }
    }

    fn summarize_now(&mut self) {
        if self.suppressed > 0 {
            tracing::warn!(
                suppressed = self.suppressed,
                "negotiations from unknown peers failed: {} more line(s) suppressed (rate limit: one a second)",
                self.suppressed
            );
            self.suppressed = 0;
            self.logged += 1;
        }
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
            h.negotiation_failed(false, Some("a"), "a", remote, FailReason::PeerUnreachable, format!("try {i}"));
        }
        h.negotiation_failed(false, Some("a"), "a", remote, FailReason::PeerUnreachable, "try 5".into());
        let kept: Vec<(&str, u64)> = h.failures("a").map(|f| (f.detail.as_str(), f.count)).collect();
        assert_eq!(kept.len(), FAILURES_KEPT);
        assert_eq!(kept[0], ("try 5", 2));
        assert_eq!(h.events("a").failures.iter().sum::<u64>(), 13);
        h.negotiation_failed(false, None, "(unknown peer 192.0.2.9)", remote, FailReason::UnknownPeer, String::new());
        assert_eq!(h.unknown_peer_negotiations(), 1);
        assert!(h.last_failure("(unknown peer 192.0.2.9)").is_some());
        h.forget("a");
        assert!(h.last_failure("a").is_none());
        assert_eq!(h.events("a").failures.iter().sum::<u64>(), 0);
    }

    fn unknown(i: u32) -> (String, SocketAddr) {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        (format!("(unknown peer {addr})"), SocketAddr::from((addr, 500)))
    }

    #[test]
    fn unknown_peers_are_a_bounded_lru_and_their_warnings_are_rate_limited() {
        let mut h = ConnectionHistory::default();
        let start = Instant::now();
        // 10,000 distinct addresses within one second.
        for i in 0..10_000 {
            let (name, remote) = unknown(i);
            let now = start + Duration::from_micros(u64::from(i) * 50);
            h.negotiation_failed_at(now, false, None, &name, remote, FailReason::UnknownPeer, String::new());
            assert!(h.unknown.len() <= UNKNOWN_PEERS_KEPT);
            assert_eq!(h.unknown.by_use.len(), h.unknown.len());
        }
        assert_eq!(h.unknown.len(), UNKNOWN_PEERS_KEPT);
        assert_eq!(h.unknown_peer_evictions(), 10_000 - UNKNOWN_PEERS_KEPT as u64);
        assert_eq!(h.unknown_peer_negotiations(), 10_000);
        // One line for 10,000 failures; the rest counted.
        assert_eq!(h.unknown_log.logged, 1);
        assert_eq!(h.unknown_peer_logs_suppressed(), 9_999);
        // The most recent are kept, the oldest gone.
        assert!(h.last_failure(&unknown(9_999).0).is_some());
        assert!(h.last_failure(&unknown(0).0).is_none());
        // A second later: one summary line, then the next failure is logged again.
        h.tick(start + Duration::from_secs(2));
        assert_eq!(h.unknown_log.logged, 2);
        h.tick(start + Duration::from_secs(3));
        assert_eq!(h.unknown_log.logged, 2, "nothing held back: no summary");
        let (name, remote) = unknown(20_000);
        h.negotiation_failed_at(
            start + Duration::from_secs(4),
            false,
            None,
            &name,
            remote,
            FailReason::UnknownPeer,
            "x".into(),
        );
        assert_eq!(h.unknown_log.logged, 3);
    }

    #[test]
    fn a_recently_used_unknown_peer_is_not_evicted() {
        let mut h = ConnectionHistory::default();
        let now = Instant::now();
        let (first, remote) = unknown(0);
        h.negotiation_failed_at(now, false, None, &first, remote, FailReason::UnknownPeer, String::new());
        for i in 1..1_000 {
            let (name, remote) = unknown(i);
            h.negotiation_failed_at(now, false, None, &name, remote, FailReason::UnknownPeer, String::new());
            // The first peer keeps failing: it stays.
            h.negotiation_failed_at(now, false, None, &first, remote, FailReason::UnknownPeer, String::new());
        }
        assert_eq!(h.last_failure(&first).map(|f| f.count), Some(1_000));
        assert_eq!(h.unknown.len(), UNKNOWN_PEERS_KEPT);
    }

    #[test]
    fn configured_connections_are_never_evicted_nor_rate_limited() {
        let mut h = ConnectionHistory::default();
        let now = Instant::now();
        let remote: SocketAddr = "198.51.100.2:500".parse().unwrap_or_else(|e| panic!("{e}"));
        h.negotiation_failed_at(now, false, Some("a"), "a", remote, FailReason::PeerUnreachable, String::new());
        for i in 0..1_000 {
            let (name, remote) = unknown(i);
            h.negotiation_failed_at(now, false, None, &name, remote, FailReason::UnknownPeer, String::new());
        }
        assert!(h.last_failure("a").is_some());
        assert_eq!(h.events("a").failures.iter().sum::<u64>(), 1);
    }
}
