//! A load generator for vpngw, built on vpngw's own sans-IO IKE engine (strongSwan's
//! load-tester plugin is not in Debian): thousands of initiators, each an [`Endpoint`] with one
//! connection, each from its own address (an AnyIP route, `ip route add local ADDRS dev lo`,
//! makes a whole range local without one `ip addr` per address), each on a UDP socket of its
//! own, completing main mode and quick mode against a real vpngw daemon. Then one ICMP echo
//! through each tunnel, sealed here with the tunnel's keys (`vpngw-esp`) and sent as raw ESP;
//! the answer is opened and checked. The initiators keep running until the hold time ends
//! (answering dead peer detection and rekeys), so a benchmark can watch an idle gateway or a
//! rekey storm.
//!
//! The report: tunnels established, failures by reason, setup latency percentiles (first
//! message to child SA established), the establishment rate, and the ESP echoes answered.
//!
//! Cost on this side: each initiator computes its own Diffie-Hellman (a key pair and the shared
//! secret: two exponentiations per tunnel), as vpngw does; on a shared machine the generator
//! takes about as much CPU as the daemon for DH.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, FastRng, HashAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_esp::{InboundSa, NextHeader, OutboundSa, SaKeys, Spi};
use vpngw_ike::{
    DeleteReason, DpdAction, DpdPolicy, Endpoint, EngineConfig, Event, ExchangeMode, Identity, Ipv4Subnet, PeerConfig,
    Phase1Policy, Phase2Policy, Role, SubnetPair,
};

use crate::packet::{PROTO_ESP, checksum, ipv4};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// vpngw's public address.
    pub gateway: Ipv4Addr,
    /// The first initiator's address; initiator i uses `first + i`.
    pub first_address: Ipv4Addr,
    pub tunnels: u32,
    pub psk: String,
    pub ike_encryption: EncryptionAlgorithm,
    pub ike_hash: HashAlgorithm,
    pub dh_group: DhGroup,
    pub esp_encryption: EncryptionAlgorithm,
    pub esp_integrity: IntegrityAlgorithm,
    /// Initiator i protects `inner_base + i` (a /32).
    pub inner_base: Ipv4Addr,
    /// The subnet behind vpngw each tunnel reaches.
    pub gateway_subnet: Ipv4Subnet,
    /// A host in `gateway_subnet` that answers pings.
    pub echo_target: Ipv4Addr,
    /// Initiations in flight at once (as strongSwan load-tester's `initiators`).
    pub concurrency: usize,
    /// Give up on the establishment phase after this long.
    pub timeout: Duration,
    /// Keep the tunnels (DPD and rekeys answered) this long after the ESP check.
    pub hold: Duration,
    /// Dead peer detection on the initiators (a 30 s timeout: probes after 10 s of silence), as
    /// a customer's gateway would run it.
    pub dpd: bool,
    /// Child SA lifetime the initiators propose, and [`Plan::gateway_connections`] configures
    /// (the shorter of the two sides' is used by both).
    pub child_lifetime_seconds: u32,
    /// vpngw initiates every tunnel (its connections `start = "active"`) and the generator only
    /// answers: then vpngw is each child SA's quick-mode initiator, so it is the side that
    /// rekeys first ([`rekey_window`]).
    pub gateway_initiates: bool,
    /// A rekey storm is expected during the hold: every tunnel's first child SA must be
    /// replaced (new SPIs both ways, the old pair deleted); what is missing counts as a failure.
    pub storm: bool,
    /// Tunnels that carry pings through ESP throughout the hold (spread evenly over the range),
    /// each one echo per `ping_interval`.
    pub ping_sample: u32,
    pub ping_interval: Duration,
}

impl Plan {
    /// The seed-like default for `tunnels` initiators: aes-128/sha1/dh14, no PFS.
    pub fn new(gateway: Ipv4Addr, tunnels: u32) -> Self {
        Self {
            gateway,
            first_address: Ipv4Addr::new(198, 18, 0, 1),
            tunnels,
            psk: "loadgen-psk-0123456789abcdef".into(),
            ike_encryption: EncryptionAlgorithm::Aes128,
            ike_hash: HashAlgorithm::Sha1,
            dh_group: DhGroup::Modp2048,
            esp_encryption: EncryptionAlgorithm::Aes128,
            esp_integrity: IntegrityAlgorithm::HmacSha1_96,
            inner_base: Ipv4Addr::new(10, 200, 0, 0),
            gateway_subnet: "10.1.0.0/24".parse().unwrap_or_else(|_| unreachable!()),
            echo_target: Ipv4Addr::new(10, 1, 0, 10),
            concurrency: 256,
            timeout: Duration::from_secs(120),
            hold: Duration::ZERO,
            dpd: true,
            child_lifetime_seconds: 3600,
            gateway_initiates: false,
            storm: false,
            ping_sample: 0,
            ping_interval: Duration::from_millis(200),
        }
    }

    pub fn address(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first_address) + i)
    }

    pub fn inner(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.inner_base) + i)
    }

    /// The range `ip route add local ... dev lo` must make local for the initiators (a /16
    /// holds 65,534).
    pub fn address_range(&self) -> String {
        let o = self.first_address.octets();
        format!("{}.{}.0.0/16", o[0], o[1])
    }

    /// The range of inner addresses, for vpngw's side to route (it routes each /32 itself).
    pub fn inner_range(&self) -> String {
        let o = self.inner_base.octets();
        format!("{}.{}.0.0/16", o[0], o[1])
    }

    pub fn name(i: u32) -> String {
        format!("lg-{i}")
    }

    /// vpngw's `[[connection]]` tables for these initiators (passive: they initiate), with
    /// `extra` appended to each (e.g. `[connection.dpd]` settings).
    pub fn gateway_connections(&self, extra: &str) -> String {
        let mut out = String::new();
        for i in 0..self.tunnels {
            out.push_str(&format!(
                "[[connection]]\nname = \"{}\"\nremote_address = \"{}\"\npre_shared_key = \"{}\"\n\
                 local_subnets = [\"{}\"]\nremote_subnets = [\"{}/32\"]\nstart = \"{}\"\n\
                 [connection.ike]\nencryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\n\
                 [connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\nlifetime_seconds = {}\n{extra}",
                Self::name(i),
                self.address(i),
                self.psk,
                self.gateway_subnet,
                self.inner(i),
                if self.gateway_initiates { "active" } else { "passive" },
                self.ike_encryption.name(),
                self.ike_hash.name(),
                self.dh_group.name(),
                self.esp_encryption.name(),
                self.esp_integrity.name(),
                self.child_lifetime_seconds,
            ));
        }
        out
    }

    /// The gateway's side of tunnel i as an engine configuration (what
    /// [`Plan::gateway_connections`] configures vpngw with), for an in-memory ceiling.
    pub fn gateway_peer(&self, i: u32) -> PeerConfig {
        let mut p = self.peer(i);
        std::mem::swap(&mut p.local_address, &mut p.remote_address);
        std::mem::swap(&mut p.local_id, &mut p.remote_id);
        for pair in &mut p.subnets {
            std::mem::swap(&mut pair.local, &mut pair.remote);
        }
        p.phase2.lifetime_seconds = 3600;
        p
    }

    /// Initiator i's engine configuration.
    pub fn peer(&self, i: u32) -> PeerConfig {
        let local = self.address(i);
        PeerConfig {
            name: Self::name(i),
            local_address: IpAddr::V4(local),
            remote_address: IpAddr::V4(self.gateway),
            psk: SecretBytes::from_slice(self.psk.as_bytes()),
            local_id: Identity::Ipv4(local),
            remote_id: Identity::Ipv4(self.gateway),
            mode: ExchangeMode::Main,
            phase1: Phase1Policy {
                encryption: self.ike_encryption,
                hash: self.ike_hash,
                dh_group: self.dh_group,
                lifetime: Duration::from_secs(86_400),
            },
            phase2: Phase2Policy {
                encryption: self.esp_encryption,
                integrity: self.esp_integrity,
                pfs: None,
                lifetime_seconds: self.child_lifetime_seconds,
                lifetime_kilobytes: 0,
            },
            subnets: vec![SubnetPair {
                local: Ipv4Subnet::new(self.inner(i), 32).unwrap_or_else(|| unreachable!()),
                remote: self.gateway_subnet,
            }],
            force_udp_encapsulation: false,
            dpd: self.dpd.then_some(DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Restart }),
        }
    }
}

/// A tunnel's child SA as the generator uses it for the echo.
struct Tunnel {
    index: u32,
    spi_out: Spi,
    keys_out: SaKeys,
    spi_in: Spi,
    keys_in: SaKeys,
}

#[derive(Default)]
struct Tally {
    established: u32,
    latencies: Vec<Duration>,
    failures: BTreeMap<String, u64>,
    tunnels: Vec<Tunnel>,
    first_established: Option<Instant>,
    last_established: Option<Instant>,
    /// Child SAs established after the first one of each tunnel (rekeys), and deleted.
    rekeys: u64,
    deleted: u64,
    /// Each established tunnel's first rekey (the storm), when there was one.
    first_rekeys: Vec<FirstRekey>,
    later_rekeys: u64,
    /// What went wrong after establishment, by reason.
    storm_failures: BTreeMap<String, u64>,
}

impl Tally {
    fn storm_fail(&mut self, reason: String) {
        *self.storm_failures.entry(reason).or_insert(0) += 1;
    }
}

/// The quick-mode initiator's rekey window for a child SA of this lifetime, as times after its
/// establishment: lifetime - margin - up to a third of the margin (vpngw-ike's
/// `lifetime::rekey_time`, copied here because it is crate-private; the responder's deadline is
/// later, at lifetime - margin/2 - up to a sixth, and only matters when the initiator did not
/// rekey).
pub fn rekey_window(lifetime_seconds: u32) -> (Duration, Duration) {
    let lifetime = Duration::from_secs(u64::from(lifetime_seconds));
    let margin = (lifetime / 10).max(Duration::from_secs(10).min(lifetime / 3)).min(Duration::from_secs(540));
    (lifetime.saturating_sub(margin + margin / 3), lifetime.saturating_sub(margin))
}

/// How far outside [`rekey_window`] a measured rekey may fall and still count as in it: the
/// generator sees both child SAs at the same step of their quick modes, so only the daemon's
/// and the generator's processing delays differ (early: clock reading noise; late: a busy
/// loop).
pub const WINDOW_EARLY_SLACK: Duration = Duration::from_millis(250);
pub const WINDOW_LATE_SLACK: Duration = Duration::from_secs(1);

/// A tunnel's first child SA replaced: when, by whom, and whether the old pair went.
#[derive(Clone, Debug)]
struct FirstRekey {
    /// The new child SA's establishment after the old one's.
    delay: Duration,
    at: Instant,
    /// vpngw ran the replacing quick mode (this side answered it).
    by_gateway: bool,
    /// Both SPIs differ from the old pair's.
    new_spis: bool,
    /// The old pair's deletion, after the new one's establishment.
    old_deleted_after: Option<Duration>,
}

/// One child SA pair of a tunnel, as the storm tracking sees it.
struct Generation {
    spi_in: Spi,
    spi_out: Spi,
    established: Instant,
    replaced: bool,
}

/// ESP state of the tunnels that carry pings, kept as a real peer keeps it: every inbound SA
/// until it is deleted, the outbound SA switched on `ChildSaActive`.
#[derive(Default)]
struct PingSas {
    /// Sample tunnel index -> the SA it sends with now.
    outbound: HashMap<u32, OutboundSa>,
    /// Our inbound SPI -> the outbound SA of the same pair, until it becomes active.
    pending: HashMap<u32, OutboundSa>,
    /// Inbound SPI -> (tunnel index, SA).
    inbound: HashMap<u32, (u32, InboundSa)>,
}

impl PingSas {
    fn established(&mut self, index: u32, child: &vpngw_ike::ChildSa) {
        if let (Ok(out), Ok(inb)) =
            (OutboundSa::new(child.spi_out, &child.keys_out), InboundSa::new(child.spi_in, &child.keys_in, 1024))
        {
            self.inbound.insert(child.spi_in.get(), (index, inb));
            self.pending.insert(child.spi_in.get(), out);
        }
    }

    fn active(&mut self, index: u32, spi_in: Spi) {
        if let Some(out) = self.pending.remove(&spi_in.get()) {
            self.outbound.insert(index, out);
        }
    }

    fn deleted(&mut self, index: u32, spi_in: Spi, spi_out: Spi) {
        self.inbound.remove(&spi_in.get());
        self.pending.remove(&spi_in.get());
        if self.outbound.get(&index).is_some_and(|o| o.spi() == spi_out) {
            self.outbound.remove(&index);
        }
    }
}

/// The pings' outcome.
#[derive(Debug, Default)]
pub struct PingReport {
    pub tunnels: u32,
    pub sent: u64,
    pub answered: u64,
    /// Echoes not sent because the tunnel had no outbound SA at that moment (counted as sent
    /// and lost).
    pub no_sa: u64,
    /// Tunnel index -> echoes lost, for tunnels that lost any.
    pub lost_by_tunnel: BTreeMap<u32, u64>,
}

/// What happened, for the report.
#[derive(Debug)]
pub struct Report {
    pub tunnels: u32,
    pub established: u32,
    pub failures: BTreeMap<String, u64>,
    /// First initiation to the last tunnel established.
    pub setup: Duration,
    pub latency_p50: Duration,
    pub latency_p90: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    pub echo_sent: u32,
    pub echo_answered: u32,
    /// During the hold: child SAs replaced, and deleted.
    pub rekeys: u64,
    pub deleted: u64,
    /// The rekey storm (with [`Plan::storm`]).
    pub storm: Option<Value>,
    pub pings: Option<PingReport>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        f64::from(self.established) / self.setup.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        json!({
            "tunnels": self.tunnels,
            "established": self.established,
            "failures": self.failures,
            "setup_seconds": (self.setup.as_secs_f64() * 1000.0).round() / 1000.0,
            "setups_per_second": (self.rate() * 10.0).round() / 10.0,
            "latency_ms": {"p50": ms(self.latency_p50), "p90": ms(self.latency_p90), "p99": ms(self.latency_p99), "max": ms(self.latency_max)},
            "echo": {"sent": self.echo_sent, "answered": self.echo_answered},
            "hold": {"child_sa_rekeys": self.rekeys, "child_sas_deleted": self.deleted},
            "storm": self.storm,
            "pings": self.pings.as_ref().map(|p| json!({
                "tunnels": p.tunnels,
                "sent": p.sent,
                "answered": p.answered,
                "lost": p.sent.saturating_sub(p.answered),
                "no_sa": p.no_sa,
                "lost_by_tunnel": p.lost_by_tunnel.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })),
        })
    }
}

/// Full handshakes (main mode and quick mode, both sides' crypto) per second between two
/// engines in memory, on this thread: no sockets, no daemon, the plan's algorithms. The
/// gateway does half of each handshake's work, so its ceiling per core is about twice this.
pub fn in_memory_handshakes_per_second(plan: &Plan, handshakes: u32) -> std::io::Result<f64> {
    let started = Instant::now();
    let now = Instant::now();
    for i in 0..handshakes {
        let rng = || FastRng::from_os().map_err(std::io::Error::other);
        let mut a = Endpoint::new(EngineConfig::default(), rng()?);
        let mut b = Endpoint::new(EngineConfig::default(), rng()?);
        a.add_peer(plan.peer(i)).map_err(std::io::Error::other)?;
        b.add_peer(plan.gateway_peer(i)).map_err(std::io::Error::other)?;
        a.initiate(now, &Plan::name(i)).map_err(std::io::Error::other)?;
        let (a_addr, b_addr) = (
            SocketAddr::V4(SocketAddrV4::new(plan.address(i), 500)),
            SocketAddr::V4(SocketAddrV4::new(plan.gateway, 500)),
        );
        let mut done = false;
        for _ in 0..32 {
            while let Some(t) = a.poll_transmit() {
                b.handle(now, b_addr, a_addr, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                a.handle(now, a_addr, b_addr, &t.payload);
            }
            while let Some(e) = a.poll_event() {
                done |= matches!(e, Event::ChildSaEstablished { .. });
            }
            while b.poll_event().is_some() {}
            if done {
                break;
            }
        }
        if !done {
            return Err(std::io::Error::other(format!("in-memory handshake {i} did not complete")));
        }
    }
    Ok(f64::from(handshakes) / started.elapsed().as_secs_f64())
}

/// The `p` quantile (0-1) of sorted durations, nearest rank; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the plan: establishment, the ESP echo through each tunnel, the hold. Needs the
/// initiators' addresses local (see [`Plan::address_range`]) and enough file descriptors (one
/// socket per tunnel; the limit is raised to fit).
/// Fails when the runtime or the raw ESP socket cannot be had (failures of single initiators are
/// in the report).
pub fn run(plan: &Plan) -> std::io::Result<Report> {
    raise_fd_limit(u64::from(plan.tunnels) + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let (setup_done_tx, setup_done_rx) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(tokio::sync::Notify::new());
    let plan_arc = Arc::new(plan.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let outstanding = Arc::new(std::sync::atomic::AtomicU32::new(plan.tunnels));
    let ping_sas = Arc::new(Mutex::new(PingSas::default()));
    let handles: Vec<_> = (0..plan.tunnels)
        .map(|i| {
            let (plan, tally, permits, stop, outstanding, done) = (
                plan_arc.clone(),
                tally.clone(),
                permits.clone(),
                stop.clone(),
                outstanding.clone(),
                setup_done_tx.clone(),
            );
            let pings = plan.is_ping_sample(i).then(|| ping_sas.clone());
            runtime.spawn(async move {
                let shared =
                    Shared { tally: &tally, permits: &permits, stop: &stop, outstanding: &outstanding, done: &done };
                initiator(&plan, i, shared, pings.as_deref()).await;
            })
        })
        .collect();
    drop(setup_done_tx);
    // The establishment phase ends when every initiator is up or failed, or at the timeout.
    let _ = setup_done_rx.recv_timeout(plan.timeout);
    let setup_end = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last_established;
    let setup = setup_end.map_or(start.elapsed(), |t| t.duration_since(start));
    let tunnels = std::mem::take(&mut tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tunnels);
    let (echo_sent, echo_answered) = echo_through(plan, &tunnels)?;
    let pings_stop = AtomicBool::new(false);
    let pings = std::thread::scope(|scope| {
        let pinger = (plan.ping_sample > 0).then(|| scope.spawn(|| ping_through(plan, &ping_sas, &pings_stop)));
        std::thread::sleep(plan.hold);
        pings_stop.store(true, Ordering::SeqCst);
        pinger.map(|p| p.join().unwrap_or_else(|_| Err(std::io::Error::other("the pinger panicked"))))
    });
    let pings = pings.transpose()?;
    stop.notify_waiters();
    runtime.block_on(async {
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    t.latencies.sort_unstable();
    let storm = plan.storm.then(|| storm_report(plan, &t, start));
    Ok(Report {
        tunnels: plan.tunnels,
        established: t.established,
        failures: t.failures,
        setup,
        latency_p50: percentile(&t.latencies, 0.5),
        latency_p90: percentile(&t.latencies, 0.9),
        latency_p99: percentile(&t.latencies, 0.99),
        latency_max: t.latencies.last().copied().unwrap_or_default(),
        echo_sent,
        echo_answered,
        rekeys: t.rekeys,
        deleted: t.deleted,
        storm,
        pings,
    })
}

impl Plan {
    /// Whether tunnel i is one of the `ping_sample` tunnels (every n-th, spread over the range).
    pub fn is_ping_sample(&self, i: u32) -> bool {
        self.ping_sample > 0
            && i % (self.tunnels / self.ping_sample).max(1) == 0
            && i / (self.tunnels / self.ping_sample).max(1) < self.ping_sample
    }
}

/// The storm's figures: every tunnel's first rekey against the quick-mode initiator's window.
fn storm_report(plan: &Plan, t: &Tally, start: Instant) -> Value {
    let (lo, hi) = rekey_window(plan.child_lifetime_seconds);
    let epoch_ms = |at: Instant| {
        let since_start = at.saturating_duration_since(start);
        let wall = SystemTime::now() - Instant::now().saturating_duration_since(start) + since_start;
        wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    };
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let mut delays: Vec<Duration> = t.first_rekeys.iter().map(|r| r.delay).collect();
    delays.sort_unstable();
    let early = delays.iter().filter(|d| **d + WINDOW_EARLY_SLACK < lo).count();
    let late = delays.iter().filter(|d| **d > hi + WINDOW_LATE_SLACK).count();
    let first = t.first_rekeys.iter().map(|r| r.at).min();
    let last = t.first_rekeys.iter().map(|r| r.at).max();
    let mut deleted_after: Vec<Duration> = t.first_rekeys.iter().filter_map(|r| r.old_deleted_after).collect();
    deleted_after.sort_unstable();
    json!({
        "lifetime_s": plan.child_lifetime_seconds,
        "window_s": [secs(lo), secs(hi)],
        "rekeyed": t.first_rekeys.len(),
        "by_gateway": t.first_rekeys.iter().filter(|r| r.by_gateway).count(),
        "by_peer": t.first_rekeys.iter().filter(|r| !r.by_gateway).count(),
        "new_spis_both_ways": t.first_rekeys.iter().filter(|r| r.new_spis).count(),
        "old_deleted": deleted_after.len(),
        "old_deleted_after_s": {"p50": secs(percentile(&deleted_after, 0.5)), "max": secs(deleted_after.last().copied().unwrap_or_default())},
        "delay_s": {"min": secs(delays.first().copied().unwrap_or_default()), "p50": secs(percentile(&delays, 0.5)), "max": secs(delays.last().copied().unwrap_or_default())},
        "in_window": delays.len() - early - late,
        "early": early,
        "late": late,
        "max_late_s": secs(delays.last().map_or(Duration::ZERO, |d| d.saturating_sub(hi))),
        "spread_s": secs(match (first, last) { (Some(f), Some(l)) => l - f, _ => Duration::ZERO }),
        "first_epoch_ms": first.map(epoch_ms),
        "last_epoch_ms": last.map(epoch_ms),
        "establishment_spread_s": secs(match (t.first_established, t.last_established) { (Some(f), Some(l)) => l - f, _ => Duration::ZERO }),
        "later_rekeys": t.later_rekeys,
        "failures": t.storm_failures,
    })
}

/// What every initiator task shares.
struct Shared<'a> {
    tally: &'a Mutex<Tally>,
    permits: &'a tokio::sync::Semaphore,
    stop: &'a tokio::sync::Notify,
    outstanding: &'a std::sync::atomic::AtomicU32,
    done: &'a std::sync::mpsc::Sender<()>,
}

/// One initiator: waits for a permit, negotiates, reports, then keeps its endpoint running
/// (DPD, rekeys) until `stop`, tracking its child SAs for the storm (and, for a ping sample
/// tunnel, keeping `pings` up to date). With [`Plan::gateway_initiates`] it only answers.
async fn initiator(plan: &Plan, i: u32, shared: Shared<'_>, pings: Option<&Mutex<PingSas>>) {
    let Shared { tally, permits, stop, outstanding, done } = shared;
    let lock = || tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let finish_setup = || {
        if outstanding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = done.send(());
        }
    };
    let fail = |reason: String| {
        lock().failures.entry(reason).and_modify(|n| *n += 1).or_insert(1);
    };
    let local = SocketAddr::V4(SocketAddrV4::new(plan.address(i), 500));
    let socket = match tokio::net::UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            fail(format!("bind {local}: {}", e.kind()));
            finish_setup();
            return;
        }
    };
    let engine = EngineConfig { retransmit_initial: Duration::from_secs(2), ..EngineConfig::default() };
    let Ok(rng) = FastRng::from_os() else {
        fail("no randomness from the OS".into());
        finish_setup();
        return;
    };
    let mut endpoint = Endpoint::new(engine, rng);
    if let Err(e) = endpoint.add_peer(plan.peer(i)) {
        fail(format!("configuration: {e}"));
        finish_setup();
        return;
    }
    // Answering: the setup latency runs from vpngw's first message.
    let mut permit = None;
    let mut began = None;
    if !plan.gateway_initiates {
        permit = permits.acquire().await.ok();
        let now = Instant::now();
        began = Some(now);
        let _ = endpoint.initiate(now, &Plan::name(i));
    }
    let mut set_up = false;
    let mut generations: Vec<Generation> = Vec::new();
    let mut first_rekey: Option<(FirstRekey, Spi)> = None;
    let mut buf = vec![0u8; 65_535];
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        while let Some(t) = endpoint.poll_transmit() {
            let _ = socket.send_to(&t.payload, t.remote).await;
        }
        while let Some(event) = endpoint.poll_event() {
            let now = Instant::now();
            match event {
                Event::ChildSaEstablished { child, .. } => {
                    if let Some(p) = pings {
                        p.lock().unwrap_or_else(std::sync::PoisonError::into_inner).established(i, &child);
                    }
                    let mut t = lock();
                    if set_up {
                        t.rekeys += 1;
                        // The pair this one replaces: the newest not yet replaced.
                        let old = generations.iter_mut().filter(|g| !g.replaced).max_by_key(|g| g.established);
                        match old {
                            Some(old) if first_rekey.is_none() => {
                                old.replaced = true;
                                let rekey = FirstRekey {
                                    delay: now.duration_since(old.established),
                                    at: now,
                                    // Our role in the replacing quick mode: answering means vpngw ran it.
                                    by_gateway: child.role == Role::Responder,
                                    new_spis: child.spi_in != old.spi_in && child.spi_out != old.spi_out,
                                    old_deleted_after: None,
                                };
                                first_rekey = Some((rekey, old.spi_in));
                            }
                            Some(old) => {
                                old.replaced = true;
                                t.later_rekeys += 1;
                            }
                            None => t.storm_fail("a child SA established again after its tunnel had none".into()),
                        }
                        generations.push(Generation {
                            spi_in: child.spi_in,
                            spi_out: child.spi_out,
                            established: now,
                            replaced: false,
                        });
                        continue;
                    }
                    set_up = true;
                    generations.push(Generation {
                        spi_in: child.spi_in,
                        spi_out: child.spi_out,
                        established: now,
                        replaced: false,
                    });
                    t.established += 1;
                    t.latencies.push(now.duration_since(began.unwrap_or(now)));
                    t.first_established = Some(t.first_established.map_or(now, |f| f.min(now)));
                    t.last_established = Some(t.last_established.map_or(now, |l| l.max(now)));
                    t.tunnels.push(Tunnel {
                        index: i,
                        spi_out: child.spi_out,
                        keys_out: child.keys_out.clone(),
                        spi_in: child.spi_in,
                        keys_in: child.keys_in.clone(),
                    });
                    drop(t);
                    permit.take();
                    finish_setup();
                }
                Event::ChildSaActive { spi_in, .. } => {
                    if let Some(p) = pings {
                        p.lock().unwrap_or_else(std::sync::PoisonError::into_inner).active(i, spi_in);
                    }
                }
                Event::ChildSaDeleted { spi_in, spi_out, reason, .. } => {
                    if let Some(p) = pings {
                        p.lock().unwrap_or_else(std::sync::PoisonError::into_inner).deleted(i, spi_in, spi_out);
                    }
                    let mut t = lock();
                    t.deleted += 1;
                    if let Some(k) = generations.iter().position(|g| g.spi_in == spi_in) {
                        let g = generations.remove(k);
                        if !g.replaced {
                            t.storm_fail(format!("child SA deleted before it was replaced ({})", reason));
                        }
                    }
                    if let Some((rekey, old)) = &mut first_rekey
                        && *old == spi_in
                        && rekey.old_deleted_after.is_none()
                    {
                        rekey.old_deleted_after = Some(now.duration_since(rekey.at));
                    }
                }
                Event::NegotiationFailed { reason, .. } if !set_up => {
                    fail(reason.to_string());
                    // Answering, vpngw tries again; initiating, one attempt per tunnel: a
                    // failure is reported, not retried.
                    if !plan.gateway_initiates {
                        permit.take();
                        finish_setup();
                        set_up = true;
                    }
                }
                Event::NegotiationFailed { reason, .. } => lock().storm_fail(format!("negotiation failed: {reason}")),
                Event::IkeSaDeleted { reason, .. } if set_up && reason != DeleteReason::Reauthenticated => {
                    lock().storm_fail(format!("IKE SA deleted ({})", reason));
                }
                _ => {}
            }
        }
        let deadline = endpoint.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = received {
                    let now = Instant::now();
                    began.get_or_insert(now);
                    endpoint.handle(now, local, from, &buf[..n]);
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => endpoint.handle_timeout(Instant::now()),
            () = &mut stopped => break,
        }
    }
    // The hold is over: what this tunnel's storm came to.
    let mut t = lock();
    match first_rekey {
        Some((rekey, _)) => {
            if plan.storm && rekey.old_deleted_after.is_none() {
                t.storm_fail("old child SA not deleted by the end of the hold".into());
            }
            t.first_rekeys.push(rekey);
        }
        None if plan.storm && generations.iter().any(|g| !g.replaced) && set_up => {
            t.storm_fail("not rekeyed by the end of the hold".into());
        }
        None => {}
    }
}

/// Sends one ICMP echo through each tunnel as raw ESP and counts the answers that open with the
/// tunnel's inbound SA and carry the echo's identifier back from the target.
fn echo_through(plan: &Plan, tunnels: &[Tunnel]) -> std::io::Result<(u32, u32)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if tunnels.is_empty() {
        return Ok((0, 0));
    }
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(PROTO_ESP))))?;
    socket.set_header_included_v4(true)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let mut rng = FastRng::from_os().map_err(std::io::Error::other)?;
    let mut inbound: BTreeMap<u32, (u32, InboundSa)> = BTreeMap::new();
    let mut answered = std::collections::BTreeSet::new();
    let mut sent = 0;
    let gateway = SocketAddr::V4(SocketAddrV4::new(plan.gateway, 0));
    let receive =
        |socket: &Socket, inbound: &BTreeMap<u32, (u32, InboundSa)>, answered: &mut std::collections::BTreeSet<u32>| {
            use std::io::Read as _;
            let mut data = [0u8; 2048];
            let mut reader = socket;
            while let Ok(n) = reader.read(&mut data) {
                // A raw IPv4 socket hands over the IP header too (20 bytes: no options here).
                let Some(esp) = data[..n].get(20..) else { continue };
                let Some(spi) = esp.get(..4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])) else { continue };
                let Some((index, sa)) = inbound.get(&spi) else { continue };
                let mut room = vec![0u8; esp.len()];
                let Ok(opened) = sa.open(esp, &mut room) else { continue };
                let inner = &room[opened.payload];
                // An echo reply (type 0) from the target to this tunnel's inner address, id = index.
                if inner.len() >= 28
                    && inner[9] == 1
                    && inner[20] == 0
                    && u16::from_be_bytes([inner[24], inner[25]]) == (*index & 0xffff) as u16
                {
                    answered.insert(*index);
                }
            }
        };
    for t in tunnels {
        let (Ok(out), Ok(inb)) = (OutboundSa::new(t.spi_out, &t.keys_out), InboundSa::new(t.spi_in, &t.keys_in, 64))
        else {
            continue;
        };
        inbound.insert(t.spi_in.get(), (t.index, inb));
        let inner = icmp_echo(plan.inner(t.index), plan.echo_target, (t.index & 0xffff) as u16, 1);
        let mut room = vec![0u8; out.sealed_len(inner.len()) + 64];
        let Ok(sealed) = out.seal(&mut rng, &inner, NextHeader::IPV4, &mut room) else { continue };
        let packet = ipv4(plan.address(t.index), plan.gateway, PROTO_ESP, 0, &room[sealed.range]);
        if socket.send_to(&packet, &gateway.into()).is_ok() {
            sent += 1;
        }
        // Drain answers as they come: the socket's buffer holds only so many.
        if sent % 64 == 0 {
            let _ = socket.set_read_timeout(Some(Duration::from_millis(1)));
            receive(&socket, &inbound, &mut answered);
            let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && answered.len() < sent as usize {
        receive(&socket, &inbound, &mut answered);
    }
    Ok((sent, answered.len() as u32))
}

/// Pings through the sample tunnels until `stop`: one echo per tunnel every `ping_interval`,
/// sealed with the tunnel's current outbound SA, answers opened with any of its inbound SAs
/// not yet deleted. After `stop`, a second for the last answers.
fn ping_through(plan: &Plan, sas: &Mutex<PingSas>, stop: &AtomicBool) -> std::io::Result<PingReport> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read as _;
    let samples: Vec<u32> = (0..plan.tunnels).filter(|i| plan.is_ping_sample(*i)).collect();
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(PROTO_ESP))))?;
    socket.set_header_included_v4(true)?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let mut rng = FastRng::from_os().map_err(std::io::Error::other)?;
    let gateway = SocketAddr::V4(SocketAddrV4::new(plan.gateway, 0));
    let lock = || sas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut report = PingReport { tunnels: samples.len() as u32, ..PingReport::default() };
    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    let mut answered: BTreeSet<(u32, u16)> = BTreeSet::new();
    let mut data = [0u8; 2048];
    let receive = |until: Instant, answered: &mut BTreeSet<(u32, u16)>, data: &mut [u8; 2048]| {
        let mut reader = &socket;
        while Instant::now() < until {
            let Ok(n) = reader.read(data) else { continue };
            // The IPv4 header (20 bytes: no options here), then ESP.
            let Some(esp) = data[..n].get(20..) else { continue };
            let Some(spi) = esp.get(..4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])) else { continue };
            let sas = lock();
            let Some((index, sa)) = sas.inbound.get(&spi) else { continue };
            let index = *index;
            let mut room = vec![0u8; esp.len()];
            let Ok(opened) = sa.open(esp, &mut room) else { continue };
            drop(sas);
            let inner = &room[opened.payload];
            // An echo reply (type 0) with this tunnel's identifier.
            if inner.len() >= 28
                && inner[9] == 1
                && inner[20] == 0
                && u16::from_be_bytes([inner[24], inner[25]]) == (index & 0xffff) as u16
            {
                answered.insert((index, u16::from_be_bytes([inner[26], inner[27]])));
            }
        }
    };
    // The echo check before sent sequence number 1 with its own copy of each first SA: skip it
    // here, or the gateway's replay window drops the first ping.
    for out in lock().outbound.values() {
        let mut room = vec![0u8; out.sealed_len(0) + 64];
        let _ = out.seal(&mut rng, &[], NextHeader::IPV4, &mut room);
    }
    let mut round: u16 = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        round = round.wrapping_add(1);
        for &index in &samples {
            *sent.entry(index).or_insert(0) += 1;
            report.sent += 1;
            let inner = icmp_echo(plan.inner(index), plan.echo_target, (index & 0xffff) as u16, round);
            let sealed = {
                let sas = lock();
                let Some(out) = sas.outbound.get(&index) else {
                    report.no_sa += 1;
                    continue;
                };
                let mut room = vec![0u8; out.sealed_len(inner.len()) + 64];
                out.seal(&mut rng, &inner, NextHeader::IPV4, &mut room).ok().map(|s| room[s.range].to_vec())
            };
            let Some(esp) = sealed else { continue };
            let packet = ipv4(plan.address(index), plan.gateway, PROTO_ESP, round, &esp);
            let _ = socket.send_to(&packet, &gateway.into());
        }
        next += plan.ping_interval;
        receive(next, &mut answered, &mut data);
    }
    receive(Instant::now() + Duration::from_secs(1), &mut answered, &mut data);
    report.answered = answered.len() as u64;
    for (index, n) in sent {
        let got = answered.iter().filter(|(i, _)| *i == index).count() as u64;
        if got < n {
            report.lost_by_tunnel.insert(index, n - got);
        }
    }
    Ok(report)
}

/// An ICMP echo request from `src` to `dst` with identifier `id` and sequence number `seq`, in
/// an IPv4 header.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"vpngw-loadgen echo");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, 1, id, &icmp)
}

/// A process's resident memory (VmRSS), in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the open-file limit to at least `wanted` (root may raise the hard limit too).
fn raise_fd_limit(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < wanted
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted));
    }
}
