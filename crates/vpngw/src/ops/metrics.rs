//! Prometheus metrics: `GET /metrics` in the classic text exposition format.
//!
//! A scrape asks for a [`Snapshot`] (plain numbers: the engine's state as the daemon loop last
//! published it, the traffic ledger, the workers' counters read with relaxed loads; workers
//! are never stopped or locked; see `published.rs`), then encodes it into a fresh registry. Every configured
//! connection appears, up or not. Labels are bounded: connection names (from the
//! configuration), direction, reason, IKE exchange (fixed sets), worker index, a connection's
//! `start` and exchange `mode` (from the configuration); never SPIs, cookies, addresses, ports
//! or times. Hot backup's series (`vpngw_ha_*`) exist only with `[ha]`; their labels are the
//! roles and the two configured node names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::sync::{mpsc, oneshot};
use vpngw_dataplane::counters::DropReason;
use vpngw_esp::OpenError;
use vpngw_ike::{ChildSaState, FailReason, IkeSaState, MessageCounters};

use super::Sources;
use crate::ha::HaView;
use crate::ledger::Traffic;
use crate::state::{IkeProgress, connection_up, current_ike_sa};

/// What one scrape reports, from the state the daemon loop published.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub gateway: String,
    pub connections: Vec<ConnectionMetrics>,
    /// Dataplane drops by reason (every reason, zeros included).
    pub dataplane_drops: Vec<(&'static str, u64)>,
    /// IKE datagrams not acted on, by reason.
    pub ike_drops: Vec<(String, u64)>,
    /// IKE messages by exchange type: received, sent, retransmitted (of the sent).
    pub ike_messages: MessageCounters,
    /// Negotiations from addresses no connection is configured for.
    pub unknown_peer_negotiations: u64,
    /// Unknown peers whose failure history was evicted (bounded LRU).
    pub unknown_peer_history_evictions: u64,
    /// WARN lines about unknown peers held back by the rate limit.
    pub unknown_peer_log_lines_suppressed: u64,
    pub workers: Vec<WorkerMetrics>,
    /// Hot backup (None without `[ha]`).
    pub ha: Option<HaView>,
    /// Configuration reloads (SIGHUP, `vpngw reload`).
    pub reloads: ReloadStats,
    /// The Diffie-Hellman pool.
    pub dh: DhStats,
}

/// The Diffie-Hellman pool (`dh_pool.rs`), as the loop last published it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhStats {
    /// Threads in the pool; 0 when the loop thread computes.
    pub threads: usize,
    /// Work waiting for a thread.
    pub queued: usize,
    /// Computations the pool's threads ran.
    pub pooled: u64,
    /// Computations the loop ran itself because the pool's queue was full.
    pub inline: u64,
}

/// Configuration reloads since start, counted by `Daemon::reload` and published with the
/// loop's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadStats {
    pub applied: u64,
    pub refused: u64,
    /// Whether the last load of the file was applied: the one at start until a reload (the
    /// daemon does not run on a file it refused), as `prometheus_config_last_reload_successful`.
    pub last_success: bool,
    /// When that load happened (Unix time, seconds).
    pub last_unix: f64,
}

impl Default for ReloadStats {
    fn default() -> Self {
        Self { applied: 0, refused: 0, last_success: true, last_unix: 0.0 }
    }
}

impl ReloadStats {
    /// The file as loaded at start (`at`: then).
    pub fn started(at: SystemTime) -> Self {
        Self { last_unix: unix_seconds(at), ..Self::default() }
    }

    /// One reload, applied or refused, at `at`.
    pub fn count(&mut self, applied: bool, at: SystemTime) {
        if applied {
            self.applied += 1;
        } else {
            self.refused += 1;
        }
        self.last_success = applied;
        self.last_unix = unix_seconds(at);
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    pub name: String,
    /// The configured `start` ("active", "passive", "on-traffic") and IKEv1 exchange mode
    /// ("main", "aggressive"): `vpngw_connection_info`, which alerts join on.
    pub start: &'static str,
    pub mode: String,
    pub up: bool,
    /// "none", "negotiating" or "established".
    pub ike_state: IkeProgress,
    pub ike_established_unix: Option<u64>,
    /// Child SAs by state: installing, active, replaced.
    pub child_sas: [u64; 3],
    /// When the soonest of the connection's installing or active child SAs reaches its time
    /// lifetime (Unix time); None without one.
    pub child_sa_expiry_unix: Option<u64>,
    pub traffic: Traffic,
    /// Negotiation failures by reason, in [`FailReason::ALL`] order.
    pub failures: Vec<u64>,
    pub rekeys: u64,
    pub reauthentications: u64,
    pub dpd_timeouts: u64,
    /// The tunnel quality probe, when configured.
    pub health: Option<crate::health::HealthStatus>,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub busy_seconds: f64,
    /// TCP SYNs whose MSS the worker lowered (`[gateway] tcp_mss_clamp`).
    pub mss_clamped: u64,
}

/// The order of [`ConnectionMetrics::child_sas`].
const CHILD_STATES: [ChildSaState; 3] = [ChildSaState::Installing, ChildSaState::Active, ChildSaState::Replaced];

/// When the first of a connection's child SA pairs (state, expiry) runs out. A replaced pair is
/// on its way out (the retire grace): its expiry says nothing about the SA the traffic uses.
fn soonest_expiry(children: impl Iterator<Item = (ChildSaState, Instant)>) -> Option<Instant> {
    children.filter(|(state, _)| *state != ChildSaState::Replaced).map(|(_, at)| at).min()
}

/// What a scrape reports now. `traffic` is the ledger's, settled just before; `reloads` and
/// `ike_messages` the loop's counts.
pub fn snapshot(
    s: &Sources,
    traffic: &HashMap<String, Traffic>,
    reloads: ReloadStats,
    ike_messages: &MessageCounters,
) -> Snapshot {
    let connections = s
        .config
        .connections
        .iter()
        .map(|c| {
            let name = &c.peer.name;
            let events = s.history.events(name);
            let mut child_sas = [0u64; 3];
            let sas = s.by_connection.of(name);
            let children = || sas.iter().flat_map(|sa| sa.children.iter());
            for ch in children() {
                if let Some(i) = CHILD_STATES.iter().position(|st| *st == ch.state) {
                    child_sas[i] += 1;
                }
            }
            let soonest = soonest_expiry(children().map(|ch| (ch.state, ch.expires_at)));
            let current = current_ike_sa(sas, name);
            let established = current.filter(|sa| sa.state == IkeSaState::Established);
            ConnectionMetrics {
                name: name.clone(),
                start: c.start.as_str(),
                mode: c.peer.mode.to_string(),
                up: connection_up(sas, name, c.peer.subnets.len()),
                ike_state: IkeProgress::of(current),
                ike_established_unix: established.and_then(|sa| sa.established_at).map(|t| s.unix_at(t)),
                child_sas,
                child_sa_expiry_unix: soonest.map(|t| crate::ops::unix(s.wall + t.saturating_duration_since(s.now))),
                traffic: traffic.get(name).cloned().unwrap_or_default(),
                failures: events.failures.to_vec(),
                rekeys: events.rekeys,
                reauthentications: events.reauthentications,
                dpd_timeouts: events.dpd_timeouts,
                health: s.probes.status(name),
            }
        })
        .collect();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Snapshot {
        gateway: s.config.gateway.name.clone(),
        connections,
        dataplane_drops: DropReason::all()
            .into_iter()
            .map(|r| (r.as_str(), s.workers.iter().map(|c| c.dropped(r)).sum()))
            .collect(),
        ike_drops: s.ike_drops.by_reason.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ike_messages: ike_messages.clone(),
        unknown_peer_negotiations: s.history.unknown_peer_negotiations(),
        unknown_peer_history_evictions: s.history.unknown_peer_evictions(),
        unknown_peer_log_lines_suppressed: s.history.unknown_peer_logs_suppressed(),
        workers: s
            .workers
            .iter()
            .map(|c| WorkerMetrics {
                packets_in: load(&c.in_packets),
                packets_out: load(&c.out_packets),
                bytes_in: load(&c.in_bytes),
                bytes_out: load(&c.out_bytes),
                busy_seconds: load(&c.busy_ns) as f64 / 1e9,
                mss_clamped: load(&c.mss_clamped),
            })
            .collect(),
        ha: s.ha.cloned(),
        reloads,
        dh: DhStats::default(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics: the daemon did not answer")]
    Daemon,
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

struct Families {
    registry: Registry,
}

impl Families {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> Result<C, MetricsError> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn float_gauge(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
        self.register(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn float_counter(&self, name: &str, help: &str, labels: &[&str]) -> Result<CounterVec, MetricsError> {
        self.register(CounterVec::new(Opts::new(name, help), labels)?)
    }
}

/// The text exposition of a snapshot (plus the process's own metrics).
pub fn encode(s: &Snapshot) -> Result<String, MetricsError> {
    let f = Families { registry: Registry::new() };
    f.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let build =
        f.gauge("vpngw_build_info", "vpngw's version and git revision; always 1", &["version", "revision", "gateway"])?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("VPNGW_REVISION"), s.gateway.as_str()]).set(1);

    encode_connections(&f, &s.connections)?;
    encode_health(&f, &s.connections)?;
    encode_reloads(&f, &s.reloads)?;
    encode_dh(&f, &s.dh)?;
    if let Some(ha) = &s.ha {
        encode_ha(&f, ha)?;
    }
    let drops = f.counter(
        "vpngw_dropped_packets_total",
        "Packets the dataplane dropped, by reason (gateway-wide; includes the per-connection ESP drops)",
        &["reason"],
    )?;
    for (r, n) in &s.dataplane_drops {
        drops.with_label_values(&[r]).inc_by(*n);
    }
    let ike_drops = f.counter(
        "vpngw_ike_dropped_datagrams_total",
        "IKE datagrams not acted on, by reason (malformed, unknown SA, ...)",
        &["reason"],
    )?;
    for (r, n) in &s.ike_drops {
        ike_drops.with_label_values(&[r.as_str()]).inc_by(*n);
    }
    // Gateway-wide, not per connection: datagrams from unknown peers count too, and a
    // retransmission rate is a property of the paths the gateway's peers share.
    let messages = f.counter(
        "vpngw_ike_messages_total",
        "IKE messages by exchange type (main, aggressive, quick, informational, other); in: every datagram \
         whose header parsed, out: every message sent, retransmissions included",
        &["exchange", "direction"],
    )?;
    let retransmitted = f.counter(
        "vpngw_ike_retransmissions_total",
        "IKE messages sent again: a request unanswered, or an answer to a repeated request",
        &["exchange"],
    )?;
    let m = &s.ike_messages;
    for (i, exchange) in MessageCounters::EXCHANGES.iter().enumerate() {
        messages.with_label_values(&[exchange, "in"]).inc_by(m.received[i]);
        messages.with_label_values(&[exchange, "out"]).inc_by(m.sent[i]);
        retransmitted.with_label_values(&[exchange]).inc_by(m.retransmitted[i]);
    }
    let unknown = f.counter(
        "vpngw_unknown_peer_negotiations_total",
        "IKE negotiations from addresses no connection is configured for",
        &[],
    )?;
    unknown.with_label_values(&[] as &[&str]).inc_by(s.unknown_peer_negotiations);
    let evicted = f.counter(
        "vpngw_unknown_peer_history_evictions_total",
        "Unknown peers whose failure history was forgotten to make room (at most 256 are kept)",
        &[],
    )?;
    evicted.with_label_values(&[] as &[&str]).inc_by(s.unknown_peer_history_evictions);
    let suppressed = f.counter(
        "vpngw_unknown_peer_log_lines_suppressed_total",
        "WARN lines about unknown peers' failed negotiations held back (at most one a second is written)",
        &[],
    )?;
    suppressed.with_label_values(&[] as &[&str]).inc_by(s.unknown_peer_log_lines_suppressed);

    let wp = f.counter("vpngw_worker_packets_total", "Packets a dataplane worker handled", &["worker", "direction"])?;
    let wb =
        f.counter("vpngw_worker_bytes_total", "Inner bytes a dataplane worker handled", &["worker", "direction"])?;
    let busy = f.float_counter(
        "vpngw_worker_busy_seconds_total",
        "Time a dataplane worker spent working, not waiting (rate() = busy ratio)",
        &["worker"],
    )?;
    let clamped = f.counter(
        "vpngw_tcp_mss_clamped_total",
        "TCP SYNs whose MSS option a dataplane worker lowered to fit the tunnel",
        &["worker"],
    )?;
    for (i, w) in s.workers.iter().enumerate() {
        let id = i.to_string();
        clamped.with_label_values(&[id.as_str()]).inc_by(w.mss_clamped);
        wp.with_label_values(&[id.as_str(), "in"]).inc_by(w.packets_in);
        wp.with_label_values(&[id.as_str(), "out"]).inc_by(w.packets_out);
        wb.with_label_values(&[id.as_str(), "in"]).inc_by(w.bytes_in);
        wb.with_label_values(&[id.as_str(), "out"]).inc_by(w.bytes_out);
        busy.with_label_values(&[id.as_str()]).inc_by(w.busy_seconds);
    }

    let mut out = Vec::new();
    TextEncoder::new().encode(&f.registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The per-connection series: state, traffic, failures and events.
fn encode_connections(f: &Families, connections: &[ConnectionMetrics]) -> Result<(), MetricsError> {
    // Configuration, not state: alerts join on it (an idle passive connection is down by
    // design). Only labels with a fixed set of values; the remote address is left out (status
    // and diagnose show it; a label would churn the series when it is changed).
    let info = f.gauge(
        "vpngw_connection_info",
        "A configured connection; always 1. start: active, passive or on-traffic; mode: the IKEv1 exchange mode",
        &["connection", "start", "mode"],
    )?;
    let up = f.gauge(
        "vpngw_tunnel_up",
        "1 when the connection's IKE SA and a child SA for every subnet pair are established",
        &["connection"],
    )?;
    let ike = f.gauge("vpngw_ike_sa_state", "1 for the connection's IKE SA state now", &["connection", "state"])?;
    let established = f.float_gauge(
        "vpngw_ike_sa_established_timestamp_seconds",
        "When the connection's current IKE SA was established (Unix time)",
        &["connection"],
    )?;
    let children = f.gauge("vpngw_child_sas", "Child SA pairs installed, by state", &["connection", "state"])?;
    // One series per connection, not per SA: SPIs are unbounded, and the soonest expiry is what
    // an alert on a rekey that does not happen needs.
    let expiry = f.float_gauge(
        "vpngw_child_sa_expiry_timestamp_seconds",
        "When the soonest-expiring installing or active child SA pair of the connection reaches its time lifetime \
         (Unix time; absent without one)",
        &["connection"],
    )?;
    let packets = f.counter(
        "vpngw_esp_packets_total",
        "ESP packets of the connection, all its SAs since start (in: opened, out: sealed and sent)",
        &["connection", "direction"],
    )?;
    let bytes = f.counter(
        "vpngw_esp_bytes_total",
        "Inner (plaintext) bytes of the connection's ESP packets, all its SAs since start",
        &["connection", "direction"],
    )?;
    let conn_drops = f.counter(
        "vpngw_connection_dropped_packets_total",
        "Inbound ESP packets the connection's SAs refused, by reason",
        &["connection", "reason"],
    )?;
    let failures = f.counter(
        "vpngw_negotiation_failures_total",
        "IKE negotiation failures, by diagnosis reason (see docs/troubleshooting.md)",
        &["connection", "reason"],
    )?;
    let rekeys = f.counter("vpngw_child_sa_rekeys_total", "Child SA pairs replaced by a rekey", &["connection"])?;
    let reauths = f.counter(
        "vpngw_ike_sa_reauthentications_total",
        "IKE SAs replaced by a re-authentication of ours",
        &["connection"],
    )?;
    let dpd = f.counter("vpngw_dpd_timeouts_total", "Peers declared dead by dead peer detection", &["connection"])?;
    for c in connections {
        let n = c.name.as_str();
        info.with_label_values(&[n, c.start, c.mode.as_str()]).set(1);
        up.with_label_values(&[n]).set(i64::from(c.up));
        for state in IkeProgress::ALL {
            ike.with_label_values(&[n, state.as_str()]).set(i64::from(state == c.ike_state));
        }
        if let Some(t) = c.ike_established_unix {
            established.with_label_values(&[n]).set(t as f64);
        }
        for (state, count) in CHILD_STATES.iter().zip(c.child_sas) {
            children.with_label_values(&[n, state.as_str()]).set(count as i64);
        }
        if let Some(t) = c.child_sa_expiry_unix {
            expiry.with_label_values(&[n]).set(t as f64);
        }
        let t = &c.traffic;
        packets.with_label_values(&[n, "in"]).inc_by(t.packets_in);
        packets.with_label_values(&[n, "out"]).inc_by(t.packets_out);
        bytes.with_label_values(&[n, "in"]).inc_by(t.bytes_in);
        bytes.with_label_values(&[n, "out"]).inc_by(t.bytes_out);
        // Per connection, only the reasons that happened: with thousands of tunnels a zero
        // series per reason would be most of the scrape (docs/operations.md, "Series at
        // scale"); the gateway-wide families keep every reason from zero.
        for (r, count) in OpenError::ALL.iter().zip(t.drops).filter(|(_, n)| *n > 0) {
            conn_drops.with_label_values(&[n, r.as_str()]).inc_by(count);
        }
        for (r, count) in FailReason::ALL.iter().zip(&c.failures).filter(|(_, n)| **n > 0) {
            if *r != FailReason::UnknownPeer {
                failures.with_label_values(&[n, &label_value(r.as_str())]).inc_by(*count);
            }
        }
        rekeys.with_label_values(&[n]).inc_by(c.rekeys);
        reauths.with_label_values(&[n]).inc_by(c.reauthentications);
        dpd.with_label_values(&[n]).inc_by(c.dpd_timeouts);
    }
    Ok(())
}

/// A reason as a label value: snake_case, as every enumerated label value vpngw exports
/// (`vpngw status` and the diagnosis spell failure reasons in kebab-case; `-` becomes `_`).
fn label_value(reason: &str) -> String {
    reason.replace('-', "_")
}

/// The Diffie-Hellman pool: its size, backlog and where the work ran.
fn encode_dh(f: &Families, dh: &DhStats) -> Result<(), MetricsError> {
    let threads = f.gauge(
        "vpngw_dh_threads",
        "Threads computing main mode's Diffie-Hellman ([tuning] dh_threads; 0: the loop thread computes)",
        &[],
    )?;
    threads.with_label_values(&[] as &[&str]).set(i64::try_from(dh.threads).unwrap_or(i64::MAX));
    let queued = f.gauge("vpngw_dh_queued", "Diffie-Hellman work waiting for a pool thread (at most 1024)", &[])?;
    queued.with_label_values(&[] as &[&str]).set(i64::try_from(dh.queued).unwrap_or(i64::MAX));
    let total = f.counter(
        "vpngw_dh_computations_total",
        "Main mode Diffie-Hellman work run by the pool (ran_on=pool) or by the loop because the pool's queue was full (ran_on=loop)",
        &["ran_on"],
    )?;
    total.with_label_values(&["pool"]).inc_by(dh.pooled);
    total.with_label_values(&["loop"]).inc_by(dh.inline);
    Ok(())
}

/// Configuration reloads, as Prometheus reports its own (`prometheus_config_*`).
fn encode_reloads(f: &Families, r: &ReloadStats) -> Result<(), MetricsError> {
    let total = f.counter(
        "vpngw_config_reloads_total",
        "Configuration reloads (SIGHUP, vpngw reload), by result: applied, or refused (nothing changed)",
        &["result"],
    )?;
    total.with_label_values(&["applied"]).inc_by(r.applied);
    total.with_label_values(&["refused"]).inc_by(r.refused);
    let success = f.gauge(
        "vpngw_config_last_reload_success",
        "1 when the last load of the configuration file (at start or a reload) was applied, 0 when refused",
        &[],
    )?;
    success.with_label_values(&[] as &[&str]).set(i64::from(r.last_success));
    let at = f.float_gauge(
        "vpngw_config_last_reload_timestamp_seconds",
        "When the configuration file was last loaded, at start or by a reload, applied or not (Unix time)",
        &[],
    )?;
    at.with_label_values(&[] as &[&str]).set(r.last_unix);
    Ok(())
}

/// The health-check series of the connections that have one.
fn encode_health(f: &Families, connections: &[ConnectionMetrics]) -> Result<(), MetricsError> {
    let healthy = f.gauge(
        "vpngw_health_check_healthy",
        "1 while the tunnel's health probes are answered (0 after the configured consecutive losses)",
        &["connection"],
    )?;
    let rtt =
        f.float_gauge("vpngw_health_check_rtt_seconds", "Round trip of the last answered probe", &["connection"])?;
    let jitter = f.float_gauge(
        "vpngw_health_check_jitter_seconds",
        "Smoothed round-trip variation of the probes (RFC 3550 style)",
        &["connection"],
    )?;
    let loss = f.float_gauge("vpngw_health_check_loss_ratio", "Lost probes among the last 20", &["connection"])?;
    let probes = f.counter("vpngw_health_check_probes_total", "Health probes by result", &["connection", "result"])?;
    for c in connections {
        let n = c.name.as_str();
        if let Some(h) = &c.health {
            healthy.with_label_values(&[n]).set(i64::from(h.healthy == Some(true)));
            if let Some(ms) = h.rtt_ms {
                rtt.with_label_values(&[n]).set(ms / 1000.0);
            }
            if let Some(ms) = h.jitter_ms {
                jitter.with_label_values(&[n]).set(ms / 1000.0);
            }
            loss.with_label_values(&[n]).set(h.loss_ratio);
            probes.with_label_values(&[n, "answered"]).inc_by(h.probes_answered);
            probes.with_label_values(&[n, "lost"]).inc_by(h.probes_lost);
        }
    }
    Ok(())
}

/// The roles `vpngw_ha_role` and `vpngw_ha_partner_role` list (every one, 0 or 1).
const HA_ROLES: [&str; 3] = ["active", "standby", "fault"];

/// Hot backup's series (only with `[ha]`).
fn encode_ha(f: &Families, ha: &HaView) -> Result<(), MetricsError> {
    let info = f.gauge(
        "vpngw_ha_info",
        "Hot backup: this server's and its partner's node names; pair is both, sorted, the same on the two servers",
        &["node", "partner", "pair"],
    )?;
    // The pair label lets alerts group the two servers' series without knowing the instances.
    let pair = if ha.node <= ha.partner {
        format!("{}/{}", ha.node, ha.partner)
    } else {
        format!("{}/{}", ha.partner, ha.node)
    };
    info.with_label_values(&[ha.node.as_str(), ha.partner.as_str(), pair.as_str()]).set(1);
    let role = f.gauge("vpngw_ha_role", "1 for this server's hot-backup role now", &["role"])?;
    let partner_role = f.gauge(
        "vpngw_ha_partner_role",
        "1 for the role the connected partner announces (all 0 while it is not connected)",
        &["role"],
    )?;
    let partner = ha.partner_role.as_deref().filter(|_| ha.partner_connected);
    for r in HA_ROLES {
        role.with_label_values(&[r]).set(i64::from(ha.role == r));
        partner_role.with_label_values(&[r]).set(i64::from(partner == Some(r)));
    }
    let connected =
        f.gauge("vpngw_ha_partner_connected", "1 while the sync channel has a session with the partner", &[])?;
    connected.with_label_values(&[] as &[&str]).set(i64::from(ha.partner_connected));
    let in_sync = f.gauge(
        "vpngw_ha_in_sync",
        "1 while the standby's replica is complete and current (see docs/high-availability.md)",
        &[],
    )?;
    in_sync.with_label_values(&[] as &[&str]).set(i64::from(ha.in_sync));
    let lag = f.float_gauge(
        "vpngw_ha_sync_lag_seconds",
        "Active: age of the oldest update the standby has not acknowledged; standby: time since the last update \
         or heartbeat (absent when not syncing)",
        &[],
    )?;
    if let Some(ms) = ha.lag_ms {
        lag.with_label_values(&[] as &[&str]).set(ms as f64 / 1000.0);
    }
    let records = f.gauge("vpngw_ha_records", "Sync records held: the store (active) or the replica (standby)", &[])?;
    records.with_label_values(&[] as &[&str]).set(i64::try_from(ha.records).unwrap_or(i64::MAX));
    let messages = f.counter("vpngw_ha_sync_messages_total", "Sync channel messages", &["direction"])?;
    messages.with_label_values(&["sent"]).inc_by(ha.messages_sent);
    messages.with_label_values(&["received"]).inc_by(ha.messages_received);
    let bytes = f.counter("vpngw_ha_sync_bytes_total", "Sync channel bytes", &["direction"])?;
    bytes.with_label_values(&["sent"]).inc_by(ha.bytes_sent);
    bytes.with_label_values(&["received"]).inc_by(ha.bytes_received);
    for (name, help, value) in [
        ("vpngw_ha_takeovers_total", "Times this server took the active role", ha.takeovers),
        (
            "vpngw_ha_auth_failures_total",
            "Sync connections refused: failed handshake (wrong key), wrong partner name or protocol version",
            ha.auth_failures,
        ),
        (
            "vpngw_ha_rejected_frames_total",
            "Sync frames that failed decryption or did not decode (tampered, replayed, reordered)",
            ha.rejected_frames,
        ),
        (
            "vpngw_ha_stale_refused_total",
            "Sync updates refused because the partner announced an older epoch (an old active came back)",
            ha.stale_refused,
        ),
        ("vpngw_ha_records_refused_total", "Sync records refused over the bound (100,000)", ha.records_refused),
        ("vpngw_ha_bulk_syncs_total", "Full copies of the state sent (active) or applied (standby)", ha.bulk_syncs),
    ] {
        f.counter(name, help, &[])?.with_label_values(&[] as &[&str]).inc_by(value);
    }
    if let Some(t) = &ha.last_takeover {
        let took = f.float_gauge(
            "vpngw_ha_last_takeover_seconds",
            "How long the last takeover took, from the public address's arrival to the imported state answering",
            &[],
        )?;
        took.with_label_values(&[] as &[&str]).set(t.took_ms as f64 / 1000.0);
        let at = f.float_gauge(
            "vpngw_ha_last_takeover_timestamp_seconds",
            "When the last takeover happened (Unix time)",
            &[],
        )?;
        at.with_label_values(&[] as &[&str]).set(t.at_unix_ms as f64 / 1000.0);
    }
    Ok(())
}

pub type SnapshotRequests = mpsc::Sender<oneshot::Sender<Snapshot>>;

/// Binds `listen` and serves `/metrics`, and the probes `/healthz` and `/readyz` (answered
/// through `commands`: `probes.rs`), until the task is aborted.
pub async fn serve(
    listen: SocketAddr,
    requests: SnapshotRequests,
    commands: mpsc::Sender<super::control::Command>,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| MetricsError::Bind { addr: listen, source })?;
    let app = Router::new().route("/metrics", get(scrape)).with_state(requests).merge(super::probes::routes(commands));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    }))
}

async fn scrape(State(requests): State<SnapshotRequests>) -> Response {
    let answer = async {
        let (tx, rx) = oneshot::channel();
        requests.send(tx).await.map_err(|_| MetricsError::Daemon)?;
        let snapshot = rx.await.map_err(|_| MetricsError::Daemon)?;
        encode(&snapshot)
    };
    match answer.await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Snapshot {
        let mut failures = vec![0; FailReason::ALL.len()];
        failures[0] = 3;
        Snapshot {
            gateway: "gw-a".into(),
            connections: vec![
                ConnectionMetrics {
                    name: "to-b".into(),
                    start: "active",
                    mode: "main".into(),
                    up: true,
                    ike_state: IkeProgress::Established,
                    ike_established_unix: Some(1_790_000_000),
                    child_sas: [0, 1, 1],
                    child_sa_expiry_unix: Some(1_790_003_600),
                    traffic: Traffic {
                        packets_in: 5,
                        bytes_in: 500,
                        packets_out: 7,
                        bytes_out: 700,
                        drops: [0; OpenError::COUNT],
                    },
                    failures,
                    rekeys: 2,
                    reauthentications: 1,
                    dpd_timeouts: 0,
                    health: Some(crate::health::HealthStatus {
                        healthy: Some(true),
                        rtt_ms: Some(12.5),
                        jitter_ms: Some(0.5),
                        loss_ratio: 0.1,
                        probes_answered: 9,
                        probes_lost: 1,
                        ..Default::default()
                    }),
                },
                ConnectionMetrics {
                    name: "to-c".into(),
                    start: "on-traffic",
                    mode: "aggressive".into(),
                    ike_state: IkeProgress::None,
                    failures: vec![0; FailReason::ALL.len()],
                    ..Default::default()
                },
            ],
            dataplane_drops: vec![("no_sa", 4), ("replayed", 0)],
            ike_drops: vec![("malformed".into(), 1)],
            ike_messages: MessageCounters {
                received: [3, 0, 1, 2, 0],
                sent: [4, 0, 2, 2, 0],
                retransmitted: [1, 0, 0, 0, 0],
            },
            unknown_peer_negotiations: 0,
            unknown_peer_history_evictions: 5,
            unknown_peer_log_lines_suppressed: 6,
            ha: None,
            reloads: ReloadStats { applied: 2, refused: 1, last_success: false, last_unix: 1_790_000_100.5 },
            dh: DhStats { threads: 2, queued: 3, pooled: 40, inline: 1 },
            workers: vec![WorkerMetrics {
                packets_in: 5,
                packets_out: 7,
                bytes_in: 500,
                bytes_out: 700,
                busy_seconds: 0.25,
                mss_clamped: 3,
            }],
        }
    }

    #[test]
    fn every_connection_appears_and_counters_carry_their_values() {
        let text = encode(&sample()).unwrap();
        for line in [
            "vpngw_tunnel_up{connection=\"to-b\"} 1",
            "vpngw_tunnel_up{connection=\"to-c\"} 0",
            "vpngw_ike_sa_state{connection=\"to-c\",state=\"none\"} 1",
            "vpngw_ike_sa_state{connection=\"to-b\",state=\"established\"} 1",
            "vpngw_child_sas{connection=\"to-b\",state=\"active\"} 1",
            "vpngw_esp_bytes_total{connection=\"to-b\",direction=\"out\"} 700",
            "vpngw_negotiation_failures_total{connection=\"to-b\",reason=\"phase1_proposal_mismatch\"} 3",
            "vpngw_child_sa_rekeys_total{connection=\"to-b\"} 2",
            "vpngw_dropped_packets_total{reason=\"no_sa\"} 4",
            "vpngw_worker_busy_seconds_total{worker=\"0\"} 0.25",
            "vpngw_tcp_mss_clamped_total{worker=\"0\"} 3",
            "vpngw_ike_sa_established_timestamp_seconds{connection=\"to-b\"} 1790000000",
            "vpngw_health_check_healthy{connection=\"to-b\"} 1",
            "vpngw_health_check_rtt_seconds{connection=\"to-b\"} 0.0125",
            "vpngw_health_check_probes_total{connection=\"to-b\",result=\"lost\"} 1",
            "vpngw_unknown_peer_history_evictions_total 5",
            "vpngw_unknown_peer_log_lines_suppressed_total 6",
            "vpngw_connection_info{connection=\"to-b\",mode=\"main\",start=\"active\"} 1",
            "vpngw_connection_info{connection=\"to-c\",mode=\"aggressive\",start=\"on-traffic\"} 1",
            "vpngw_child_sa_expiry_timestamp_seconds{connection=\"to-b\"} 1790003600",
            "vpngw_config_reloads_total{result=\"applied\"} 2",
            "vpngw_config_reloads_total{result=\"refused\"} 1",
            "vpngw_config_last_reload_success 0",
            "vpngw_config_last_reload_timestamp_seconds 1790000100.5",
            "vpngw_ike_messages_total{direction=\"out\",exchange=\"main\"} 4",
            "vpngw_ike_messages_total{direction=\"in\",exchange=\"quick\"} 1",
            "vpngw_ike_messages_total{direction=\"in\",exchange=\"other\"} 0",
            "vpngw_ike_retransmissions_total{exchange=\"main\"} 1",
            "vpngw_ike_retransmissions_total{exchange=\"informational\"} 0",
            "vpngw_dh_threads 2",
            "vpngw_dh_queued 3",
            "vpngw_dh_computations_total{ran_on=\"pool\"} 40",
            "vpngw_dh_computations_total{ran_on=\"loop\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Per connection, reasons that never happened are no series (thousands of tunnels);
        // gateway-wide, every reason is one from zero.
        assert!(!text.contains("vpngw_negotiation_failures_total{connection=\"to-c\""), "{text}");
        assert!(!text.contains("vpngw_connection_dropped_packets_total{connection=\"to-c\""), "{text}");
        assert!(text.contains("vpngw_dropped_packets_total{reason=\"replayed\"} 0"), "{text}");
        assert!(text.contains("# TYPE vpngw_config_reloads_total counter"), "{text}");
        assert!(text.contains("# TYPE vpngw_child_sa_expiry_timestamp_seconds gauge"), "{text}");
        assert!(!text.contains("vpngw_child_sa_expiry_timestamp_seconds{connection=\"to-c\"}"), "no SA, no expiry");
        assert!(text.contains("# TYPE vpngw_esp_packets_total counter"));
        assert!(text.contains("vpngw_build_info{gateway=\"gw-a\",revision=\""));
        assert!(!text.contains("to-c\",state=\"established\"} 1"));
        assert!(!text.contains("vpngw_health_check_healthy{connection=\"to-c\"}"), "no series without a health check");
    }

    /// What the daemon publishes, with hot backup's view when given.
    fn published(ha: Option<HaView>) -> crate::ops::published::ReadState {
        use std::sync::Arc;
        crate::ops::published::ReadState {
            config: Arc::new(
                crate::config::Config::parse(crate::config::tests::MINIMAL, std::path::Path::new(".")).unwrap(),
            ),
            ike_sas: Vec::new(),
            ike_drops: Default::default(),
            ike_messages: Default::default(),
            table: Arc::new(vpngw_dataplane::sa_table::SaTable::new()),
            ledger: Arc::default(),
            activity: Arc::default(),
            history: Default::default(),
            retries: Default::default(),
            probes: Default::default(),
            workers: Vec::new().into(),
            link_paths: Arc::new([]),
            started: std::time::Instant::now(),
            runtime_connections: Default::default(),
            ha,
            reloads: Default::default(),
            dh: DhStats::default(),
            from_loop: true,
        }
    }

    /// An active server streaming to its standby, after one takeover.
    fn active_view() -> HaView {
        HaView {
            node: "vpn-b".into(),
            partner: "vpn-a".into(),
            partner_address: "192.0.2.1:9722".into(),
            role: "active".into(),
            epoch: 1_790_000_000_000,
            keepalived: Some(crate::ha::KeepalivedState::Master),
            partner_connected: true,
            partner_role: Some("standby".into()),
            in_sync: true,
            lag_ms: Some(25),
            records: 12,
            messages_sent: 300,
            messages_received: 280,
            bytes_sent: 45_000,
            bytes_received: 9_000,
            auth_failures: 2,
            rejected_frames: 1,
            stale_refused: 3,
            records_refused: 0,
            bulk_syncs: 1,
            last_bulk_ms: None,
            takeovers: 1,
            last_takeover: Some(crate::ha::Takeover {
                at_unix_ms: 1_790_000_000_500,
                took_ms: 90,
                ike_sas: 10,
                child_sas: 10,
                refused: vec![],
                replica_complete: true,
                replica_epoch: 1_789_999_000_000,
                replica_stale: false,
            }),
        }
    }

    #[test]
    fn hot_backup_series_follow_the_published_view() {
        let text = encode(&published(Some(active_view())).metrics()).unwrap();
        for line in [
            "vpngw_ha_info{node=\"vpn-b\",pair=\"vpn-a/vpn-b\",partner=\"vpn-a\"} 1",
            "vpngw_ha_role{role=\"active\"} 1",
            "vpngw_ha_role{role=\"standby\"} 0",
            "vpngw_ha_role{role=\"fault\"} 0",
            "vpngw_ha_partner_role{role=\"standby\"} 1",
            "vpngw_ha_partner_role{role=\"active\"} 0",
            "vpngw_ha_partner_connected 1",
            "vpngw_ha_in_sync 1",
            "vpngw_ha_sync_lag_seconds 0.025",
            "vpngw_ha_records 12",
            "vpngw_ha_sync_messages_total{direction=\"sent\"} 300",
            "vpngw_ha_sync_messages_total{direction=\"received\"} 280",
            "vpngw_ha_sync_bytes_total{direction=\"sent\"} 45000",
            "vpngw_ha_sync_bytes_total{direction=\"received\"} 9000",
            "vpngw_ha_takeovers_total 1",
            "vpngw_ha_auth_failures_total 2",
            "vpngw_ha_rejected_frames_total 1",
            "vpngw_ha_stale_refused_total 3",
            "vpngw_ha_records_refused_total 0",
            "vpngw_ha_bulk_syncs_total 1",
            "vpngw_ha_last_takeover_seconds 0.09",
            "vpngw_ha_last_takeover_timestamp_seconds 1790000000.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE vpngw_ha_sync_bytes_total counter"), "{text}");
        assert!(text.contains("# TYPE vpngw_ha_sync_lag_seconds gauge"), "{text}");
        // The pair label is the same whichever server is asked.
        let other = HaView { node: "vpn-a".into(), partner: "vpn-b".into(), ..active_view() };
        let text = encode(&published(Some(other)).metrics()).unwrap();
        assert!(text.contains("vpngw_ha_info{node=\"vpn-a\",pair=\"vpn-a/vpn-b\",partner=\"vpn-b\"} 1"), "{text}");
    }

    #[test]
    fn a_lone_standby_shows_no_partner_role_lag_or_takeover() {
        let view = HaView {
            role: "standby".into(),
            partner_connected: false,
            // A role left over from the last session does not count once it is gone.
            partner_role: Some("active".into()),
            in_sync: false,
            lag_ms: None,
            takeovers: 0,
            last_takeover: None,
            ..active_view()
        };
        let text = encode(&published(Some(view)).metrics()).unwrap();
        for line in [
            "vpngw_ha_role{role=\"standby\"} 1",
            "vpngw_ha_role{role=\"active\"} 0",
            "vpngw_ha_partner_role{role=\"active\"} 0",
            "vpngw_ha_partner_role{role=\"standby\"} 0",
            "vpngw_ha_partner_connected 0",
            "vpngw_ha_in_sync 0",
            "vpngw_ha_takeovers_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        for absent in ["vpngw_ha_sync_lag_seconds", "vpngw_ha_last_takeover"] {
            assert!(!text.contains(absent), "{absent} without a value:\n{text}");
        }
    }

    /// Reloads: the load at start counts as successful (the daemon does not run on a refused
    /// file); each reload moves its counter and sets the last result and time.
    #[test]
    fn reloads_are_counted_by_result_and_the_last_one_is_remembered() {
        use std::time::Duration;
        let start = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let mut r = ReloadStats::started(start);
        let line = |r: ReloadStats, series: &str| {
            let mut s = published(None);
            s.reloads = r;
            let text = encode(&s.metrics()).unwrap();
            text.lines().find(|l| l.starts_with(series)).map(str::to_string).unwrap_or_else(|| panic!("{text}"))
        };
        assert_eq!(line(r, "vpngw_config_last_reload_success"), "vpngw_config_last_reload_success 1");
        assert_eq!(
            line(r, "vpngw_config_last_reload_timestamp_seconds"),
            "vpngw_config_last_reload_timestamp_seconds 1790000000"
        );
        assert_eq!(
            line(r, "vpngw_config_reloads_total{result=\"refused\"}"),
            "vpngw_config_reloads_total{result=\"refused\"} 0"
        );
        r.count(false, start + Duration::from_secs(60));
        assert_eq!(line(r, "vpngw_config_last_reload_success"), "vpngw_config_last_reload_success 0");
        assert_eq!(
            line(r, "vpngw_config_reloads_total{result=\"refused\"}"),
            "vpngw_config_reloads_total{result=\"refused\"} 1"
        );
        r.count(true, start + Duration::from_secs(120));
        assert_eq!(r, ReloadStats { applied: 1, refused: 1, last_success: true, last_unix: 1_790_000_120.0 });
        assert_eq!(line(r, "vpngw_config_last_reload_success"), "vpngw_config_last_reload_success 1");
        assert_eq!(
            line(r, "vpngw_config_reloads_total{result=\"applied\"}"),
            "vpngw_config_reloads_total{result=\"applied\"} 1"
        );
    }

    /// The soonest expiry among a connection's installing and active child SAs (a replaced
    /// pair is retiring and does not count).
    #[test]
    fn child_sa_expiry_is_the_soonest_of_the_connection_s_live_pairs() {
        use std::time::Duration;
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        let pairs = [
            (ChildSaState::Replaced, at(5)),
            (ChildSaState::Active, at(3000)),
            (ChildSaState::Installing, at(3600)),
            (ChildSaState::Active, at(1200)),
        ];
        assert_eq!(soonest_expiry(pairs.into_iter()), Some(at(1200)));
        assert_eq!(soonest_expiry(pairs[..1].iter().copied()), None, "only a retiring pair");
        assert_eq!(soonest_expiry(std::iter::empty()), None);
    }

    #[test]
    fn without_ha_no_hot_backup_series() {
        let text = encode(&published(None).metrics()).unwrap();
        assert!(text.contains("vpngw_tunnel_up{connection=\"branch-1\"} 0"), "{text}");
        assert!(!text.contains("vpngw_ha_"), "{text}");
    }
}
