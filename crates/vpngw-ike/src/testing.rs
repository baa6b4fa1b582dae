//! Two engines on a virtual network and clock (quinn-proto's `Pair`), for tests and benchmarks
//! (feature `testing`, off by default): datagrams move between them in memory, time jumps to the
//! next timer, and a NAT or packet loss can be put between.
// A harness: a bad configuration or a failed step is a failed test, so it panics.
#![allow(clippy::expect_used)]

pub mod hostile;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use vpngw_crypto::{FastRng, SecretBytes};

use crate::{
    ChildSa, DhWork, Endpoint, EngineConfig, Event, ExchangeMode, FailReason, Identity, Ipv4Subnet, PeerConfig,
    Phase1Policy, Phase2Policy, SubnetPair,
};

/// With NAT, A sits behind it with this private address; B sees [`NAT_PUBLIC`].
pub const A_PRIVATE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
pub const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

/// The standard pair's public addresses and pre-shared key.
pub const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const PSK: &[u8] = b"lab-psk-0123456789abcdef";

/// # Panics
/// If `s` is not `a.b.c.d/len`.
pub fn subnet(s: &str) -> Ipv4Subnet {
    s.parse().expect("a subnet")
}

/// A connection from `local` to `remote` with the seed's defaults.
pub fn peer(name: &str, local: Ipv4Addr, remote: Ipv4Addr, local_net: &str, remote_net: &str) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_address: IpAddr::V4(local),
        remote_address: IpAddr::V4(remote),
        psk: SecretBytes::from_slice(PSK),
        local_id: Identity::Ipv4(local),
        remote_id: Identity::Ipv4(remote),
        mode: ExchangeMode::Main,
        phase1: Phase1Policy::default(),
        phase2: Phase2Policy::default(),
        subnets: vec![SubnetPair { local: subnet(local_net), remote: subnet(remote_net) }],
        force_udp_encapsulation: false,
        dpd: None,
    }
}

/// The standard pair: A (10.1.0.0/24) and B (10.2.0.0/24), seed defaults on both sides.
pub fn configs() -> (PeerConfig, PeerConfig) {
    (
        peer("to-b", A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"),
        peer("to-a", B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"),
    )
}

/// The engine configuration of [`Pair::new`]: defaults, retransmitting after one second.
pub fn engine_config() -> EngineConfig {
    EngineConfig { retransmit_initial: Duration::from_secs(1), ..EngineConfig::default() }
}

#[derive(Debug)]
pub struct Pair {
    pub a: Endpoint,
    pub b: Endpoint,
    pub now: Instant,
    pub start: Instant,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
    /// Put A behind a NAT (ports 500/4500 map to 10500/14500 on NAT_PUBLIC).
    pub nat: bool,
    /// Drop the next n datagrams sent by A / by B.
    pub drop_from_a: usize,
    pub drop_from_b: usize,
    /// Drop everything A / B sends (a dead or unreachable peer).
    pub blackhole_a: bool,
    pub blackhole_b: bool,
    /// Drop the first messages of A's phase 1 exchanges (B sits behind a NAT that lets only
    /// its own initiations through; answers to them pass).
    pub b_unreachable_first: bool,
    /// Keep a copy of every datagram delivered in `wire` (on unless a benchmark turns it off).
    pub record_wire: bool,
    /// Every datagram delivered, with its direction (true = A to B).
    pub wire: Vec<(bool, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Diffie-Hellman work (endpoints with `dh_offload`) is run when nothing else is in flight,
    /// as a pool that answers after the current burst would; with `hold_dh` it waits in
    /// `held_dh` (A's, B's) until [`Pair::release_dh`].
    pub hold_dh: bool,
    pub held_dh: (Vec<DhWork>, Vec<DhWork>),
}

impl Pair {
    /// A and B with one peer each, on [`engine_config`], their RNGs seeded from `seed`.
    ///
    /// # Panics
    /// If either configuration is refused.
    pub fn new(a_cfg: PeerConfig, b_cfg: PeerConfig, seed: u64) -> Self {
        let mut a = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(seed));
        let mut b = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(seed + 1000));
        a.add_peer(a_cfg).expect("A's peer configuration");
        b.add_peer(b_cfg).expect("B's peer configuration");
        Self::with_endpoints(a, b, Instant::now())
    }

    /// Two endpoints as the caller built them, on a clock that starts at `now`; nothing between
    /// them, every datagram recorded.
    pub fn with_endpoints(a: Endpoint, b: Endpoint, now: Instant) -> Self {
        Self {
            a,
            b,
            now,
            start: now,
            a_events: vec![],
            b_events: vec![],
            nat: false,
            drop_from_a: 0,
            drop_from_b: 0,
            blackhole_a: false,
            blackhole_b: false,
            b_unreachable_first: false,
            record_wire: true,
            wire: vec![],
            hold_dh: false,
            held_dh: (vec![], vec![]),
        }
    }

    /// Gives the two endpoints back (a benchmark keeps one across pairs).
    pub fn into_endpoints(self) -> (Endpoint, Endpoint) {
        (self.a, self.b)
    }

    fn nat_out(&self, addr: SocketAddr) -> SocketAddr {
        if self.nat && addr.ip() == IpAddr::V4(A_PRIVATE) {
            SocketAddr::new(IpAddr::V4(NAT_PUBLIC), addr.port() + 10000)
        } else {
            addr
        }
    }

    fn nat_in(&self, addr: SocketAddr) -> SocketAddr {
        if self.nat && addr.ip() == IpAddr::V4(NAT_PUBLIC) {
            SocketAddr::new(IpAddr::V4(A_PRIVATE), addr.port() - 10000)
        } else {
            addr
        }
    }

    /// Moves datagrams and events until nothing is in flight; then jumps to the next timer,
    /// until `limit` of virtual time has passed since the pair was made.
    pub fn drive(&mut self, limit: Duration) {
        self.drive_with(limit, |_| {});
    }

    /// [`Pair::drive`], then the clock stands at `limit` after the start (for tests that act
    /// at given times).
    pub fn drive_until(&mut self, limit: Duration) {
        self.drive(limit);
        self.now = self.now.max(self.start + limit);
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive(limit);
    }

    fn take_events(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// [`Pair::drive`], calling `check` after every datagram and timer, once both sides'
    /// events so far are in `a_events` / `b_events` (a driver acts on events before it sends).
    pub fn drive_with(&mut self, limit: Duration, mut check: impl FnMut(&Pair)) {
        loop {
            self.settle_with(&mut check);
            let next = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten().min();
            match next {
                Some(t) if t <= self.start + limit => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => {
                    self.take_events();
                    check(self);
                    return;
                }
            }
        }
    }

    /// Moves datagrams and events until nothing is in flight, without moving the clock.
    pub fn settle(&mut self) {
        self.settle_with(&mut |_| {});
    }

    fn settle_with(&mut self, check: &mut impl FnMut(&Pair)) {
        loop {
            let mut moved = false;
            self.take_events();
            check(self);
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                if self.drop_from_a > 0 || self.blackhole_a {
                    self.drop_from_a = self.drop_from_a.saturating_sub(1);
                    continue;
                }
                // A first message of phase 1: no responder cookie yet, message ID 0.
                if self.b_unreachable_first && t.payload.len() > 28 && t.payload[8..16] == [0; 8] {
                    continue;
                }
                let src = self.nat_out(t.local);
                if self.record_wire {
                    self.wire.push((true, src, t.remote, t.payload.clone()));
                }
                self.b.handle(self.now, t.remote, src, &t.payload);
                self.take_events();
                check(self);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                if self.drop_from_b > 0 || self.blackhole_b {
                    self.drop_from_b = self.drop_from_b.saturating_sub(1);
                    continue;
                }
                let dst = self.nat_in(t.remote);
                if self.record_wire {
                    self.wire.push((false, t.local, t.remote, t.payload.clone()));
                }
                self.a.handle(self.now, dst, t.local, &t.payload);
                self.take_events();
                check(self);
            }
            moved |= self.run_dh_work();
            if !moved {
                return;
            }
        }
    }

    /// Runs (or, with `hold_dh`, holds) the Diffie-Hellman work both endpoints handed out;
    /// returns whether any result went back.
    fn run_dh_work(&mut self) -> bool {
        while let Some(w) = self.a.poll_dh_work() {
            self.held_dh.0.push(w);
        }
        while let Some(w) = self.b.poll_dh_work() {
            self.held_dh.1.push(w);
        }
        if self.hold_dh {
            return false;
        }
        self.release_dh()
    }

    /// Gives the held Diffie-Hellman work's results back; returns whether there was any.
    pub fn release_dh(&mut self) -> bool {
        let (a, b) = std::mem::take(&mut self.held_dh);
        let any = !(a.is_empty() && b.is_empty());
        for w in a {
            self.a.complete_dh_work(self.now, w.run());
        }
        for w in b {
            self.b.complete_dh_work(self.now, w.run());
        }
        any
    }

    pub fn children(events: &[Event]) -> Vec<ChildSa> {
        events
            .iter()
            .filter_map(|e| if let Event::ChildSaEstablished { child, .. } = e { Some(child.clone()) } else { None })
            .collect()
    }

    /// How many child SAs `events` report established (without copying their keys).
    pub fn children_established(events: &[Event]) -> usize {
        events.iter().filter(|e| matches!(e, Event::ChildSaEstablished { .. })).count()
    }

    pub fn failures(events: &[Event]) -> Vec<(FailReason, String)> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::NegotiationFailed { reason, detail, .. } = e {
                    Some((*reason, detail.clone()))
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn established(events: &[Event]) -> usize {
        events.iter().filter(|e| matches!(e, Event::IkeSaEstablished { .. })).count()
    }
}
