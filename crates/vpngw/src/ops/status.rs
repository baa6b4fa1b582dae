//! What `vpngw status` shows: built ([`build`]) from the engine's snapshot and the SA table's
//! counters; rendered as a table for people or JSON for programs. No key material, ever.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use vpngw_dataplane::counters::DropReason;
use vpngw_ike::{ChildSaInfo, ChildSaState, IkeSaInfo};

use super::select::{Page, Selection, select};
use super::{Sources, unix};
use crate::config::Connection;
use crate::link_paths::MacAddr;
use crate::state::{ConnectionState, child_sa_state_serde, current_ike_sa};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub gateway: String,
    pub version: String,
    /// The git revision the daemon was built from (build.rs: 12 hex digits, `-dirty` for a
    /// changed work tree, "unknown" without git).
    #[serde(default)]
    pub revision: String,
    pub public_address: String,
    pub uptime_seconds: u64,
    /// Datagrams not acted on, by reason (malformed, unknown SA or peer, ESP before the
    /// dataplane exists, ...).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Per dataplane worker: packets each way and time spent busy.
    pub workers: Vec<WorkerStatus>,
    /// Peers whose raw ESP leaves through the link path (`gateway.esp_output = "link"`); raw
    /// ESP to any other peer leaves through the raw IP socket.
    #[serde(default)]
    pub link_paths: Vec<LinkPathStatus>,
    /// Hot backup: role, partner, sync state and lag, the last takeover (absent without `[ha]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::HaView>,
    pub connections: Vec<ConnectionStatus>,
    /// How many connections matched the request's filters, by state, and the next page's
    /// cursor (`ops/select.rs`). Absent only from a daemon that predates paging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkPathStatus {
    pub peer: String,
    pub device: String,
    pub next_hop_mac: String,
    pub mtu: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// The core the worker is pinned to (none: not pinned).
    #[serde(default)]
    pub core: Option<usize>,
    pub packets_out: u64,
    /// Of `packets_out`, raw ESP sent through the link path.
    #[serde(default)]
    pub packets_out_link: u64,
    pub packets_in: u64,
    pub busy_seconds: f64,
    /// TCP SYNs whose MSS this worker lowered to the clamp (`[gateway] tcp_mss_clamp`).
    #[serde(default)]
    pub mss_clamped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStatus {
    pub name: String,
    /// Where the key comes from ("inline" or "file PATH"); never the key.
    pub pre_shared_key: String,
    pub remote_address: String,
    pub start: String,
    pub mode: String,
    pub local_id: String,
    pub remote_id: String,
    /// "up" when an IKE SA and every subnet pair's child SA are established.
    pub state: ConnectionState,
    pub ike_sa: Option<IkeSaStatus>,
    pub child_sas: Vec<ChildSaStatus>,
    pub last_failure: Option<FailureStatus>,
    /// When an active connection that is down tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_in_seconds: Option<u64>,
    /// The tunnel quality probe, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IkeSaStatus {
    pub state: String,
    pub role: String,
    pub local: String,
    pub remote: String,
    /// The ISAKMP cookies in hex, as tcpdump and strongSwan print them (they travel in clear
    /// in every IKE message's header).
    #[serde(default)]
    pub initiator_cookie: String,
    #[serde(default)]
    pub responder_cookie: String,
    pub encryption: Option<String>,
    pub authentication: Option<String>,
    pub dh_group: Option<String>,
    pub nat_detected: bool,
    pub established_at_unix: Option<u64>,
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildSaStatus {
    /// Hex, as strongSwan and tcpdump print them.
    pub spi_in: String,
    pub spi_out: String,
    pub local_subnet: String,
    pub remote_subnet: String,
    pub encryption: String,
    pub authentication: String,
    pub pfs: String,
    pub encapsulation: String,
    /// installing (inbound only), active (carries outbound traffic), replaced (going).
    #[serde(with = "child_sa_state_serde")]
    pub state: ChildSaState,
    pub established_at_unix: u64,
    pub expires_in_seconds: u64,
    /// When this side starts replacing it (absent once under way, or when replaced).
    #[serde(default)]
    pub rekey_in_seconds: Option<u64>,
    pub lifetime_kilobytes: Option<u64>,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// When the last packet came in (opened) on this SA: the daemon looks at the counters
    /// every second, so this is at most a second late. Absent: none since it was installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inbound_at_unix: Option<u64>,
    /// When the last packet went out (sealed) on this SA, as `last_inbound_at_unix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outbound_at_unix: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailureStatus {
    pub reason: String,
    pub detail: String,
    pub at_unix: u64,
    pub count: u64,
}

/// The status of the gateway and of the connections `selection` picks, in name order. Only
/// those get a view built; the others cost their state (for the counts), and that only when
/// their name matches.
pub fn build(s: &Sources, selection: &Selection) -> Status {
    let (picked, page) = select(&s.config.connections, |c| c.peer.name.as_str(), |c| state(s, c), selection);
    Status {
        gateway: s.config.gateway.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        revision: env!("VPNGW_REVISION").into(),
        public_address: s.config.gateway.public_address.to_string(),
        uptime_seconds: s.uptime.as_secs(),
        dropped: dropped(s),
        workers: s
            .workers
            .iter()
            .map(|c| WorkerStatus {
                core: c.core(),
                packets_out: c.out_packets.load(Ordering::Relaxed),
                packets_out_link: c.out_link_packets.load(Ordering::Relaxed),
                packets_in: c.in_packets.load(Ordering::Relaxed),
                busy_seconds: c.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                mss_clamped: c.mss_clamped.load(Ordering::Relaxed),
            })
            .collect(),
        link_paths: s
            .link_paths
            .iter()
            .map(|(peer, hop)| LinkPathStatus {
                peer: peer.to_string(),
                device: hop.device.clone(),
                next_hop_mac: MacAddr(&hop.destination_mac).to_string(),
                mtu: hop.mtu,
            })
            .collect(),
        ha: s.ha.cloned(),
        connections: picked.into_iter().map(|c| connection(s, c)).collect(),
        page: Some(page),
    }
}

/// A connection's state alone (what the filters and counts need), without building its view.
pub fn state(s: &Sources, c: &Connection) -> ConnectionState {
    ConnectionState::of(s.by_connection.of(&c.peer.name), &c.peer.name, c.peer.subnets.len())
}

/// Datagrams not acted on: the engine's by reason (`ike_`), the workers' (`esp_`) where not 0.
fn dropped(s: &Sources) -> std::collections::BTreeMap<String, u64> {
    let mut d: std::collections::BTreeMap<String, u64> =
        s.ike_drops.by_reason.iter().map(|(k, v)| (format!("ike_{k}"), *v)).collect();
    for r in DropReason::all() {
        let n: u64 = s.workers.iter().map(|c| c.dropped(r)).sum();
        if n > 0 {
            d.insert(format!("esp_{}", r.as_str()), n);
        }
    }
    d
}

/// One connection's status.
pub fn connection(s: &Sources, c: &Connection) -> ConnectionStatus {
    let p = &c.peer;
    let sas = s.by_connection.of(&p.name);
    let ike = current_ike_sa(sas, &p.name);
    let child_sas = sas.iter().flat_map(|sa| sa.children.iter()).map(|ch| child_sa(s, ch)).collect();
    ConnectionStatus {
        name: p.name.clone(),
        pre_shared_key: c.psk_source.clone(),
        remote_address: p.remote_address.to_string(),
        start: c.start.as_str().into(),
        mode: p.mode.to_string(),
        local_id: p.local_id.to_string(),
        remote_id: p.remote_id.to_string(),
        state: state(s, c),
        ike_sa: ike.map(|sa| ike_sa(s, sa)),
        child_sas,
        last_failure: s.history.last_failure(&p.name).map(|f| FailureStatus {
            reason: f.reason.to_string(),
            detail: f.detail.clone(),
            at_unix: unix(f.at),
            count: f.count,
        }),
        next_attempt_in_seconds: s.retries.due(&p.name).map(|at| at.saturating_duration_since(s.now).as_secs()),
        health: s.probes.status(&p.name),
    }
}

fn ike_sa(s: &Sources, sa: &IkeSaInfo) -> IkeSaStatus {
    IkeSaStatus {
        state: sa.state.as_str().into(),
        role: sa.role.to_string(),
        local: sa.local.to_string(),
        remote: sa.remote.to_string(),
        initiator_cookie: cookie_hex(sa.initiator_cookie),
        responder_cookie: cookie_hex(sa.responder_cookie),
        encryption: sa.encryption.map(|a| a.name().into()),
        authentication: sa.hash.map(|h| h.name().into()),
        dh_group: sa.dh_group.map(|g| g.name().into()),
        nat_detected: sa.nat_detected,
        established_at_unix: sa.established_at.map(|t| s.unix_at(t)),
        expires_in_seconds: sa.expires_at.map(|t| t.saturating_duration_since(s.now).as_secs()),
    }
}

fn cookie_hex(cookie: [u8; 8]) -> String {
    cookie.iter().fold(String::with_capacity(16), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn child_sa(s: &Sources, ch: &ChildSaInfo) -> ChildSaStatus {
    let inb = s.table.inbound(ch.spi_in);
    let out = s.table.outbound_by_spi(ch.spi_out);
    let last = s.activity.of(ch.spi_in);
    let packets_in = inb.as_ref().map_or(0, |e| e.counters.packets());
    let packets_out = out.as_ref().map_or(0, |e| e.counters.packets());
    ChildSaStatus {
        spi_in: ch.spi_in.to_string(),
        spi_out: ch.spi_out.to_string(),
        local_subnet: ch.selectors.local.to_string(),
        remote_subnet: ch.selectors.remote.to_string(),
        encryption: ch.encryption.name().into(),
        authentication: ch.integrity.name().into(),
        pfs: ch.pfs.map_or("disable".into(), |g| g.name().into()),
        encapsulation: ch.encapsulation.to_string(),
        state: ch.state,
        established_at_unix: s.unix_at(ch.established_at),
        expires_in_seconds: ch.expires_at.saturating_duration_since(s.now).as_secs(),
        rekey_in_seconds: ch.rekey_at.map(|t| t.saturating_duration_since(s.now).as_secs()),
        lifetime_kilobytes: ch.lifetime_kilobytes,
        packets_in,
        bytes_in: inb.as_ref().map_or(0, |e| e.counters.bytes()),
        packets_out,
        bytes_out: out.as_ref().map_or(0, |e| e.counters.bytes()),
        // Packets counted that no tick has seen yet came within the last second: now.
        last_inbound_at_unix: last.inbound.or((packets_in > 0).then_some(s.now)).map(|t| s.unix_at(t)),
        last_outbound_at_unix: last.outbound.or((packets_out > 0).then_some(s.now)).map(|t| s.unix_at(t)),
    }
}

fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h ago", s / 3600)
    }
}

impl Status {
    /// One line: how many workers, where they run, and what they carried.
    fn render_workers(&self) -> String {
        let cores: Vec<String> = self.workers.iter().filter_map(|w| w.core).map(|c| c.to_string()).collect();
        let placement = match cores.len() {
            0 => "not pinned".to_string(),
            n if n == self.workers.len() => format!("on cores {}", cores.join(", ")),
            _ => format!("{} of them pinned, on cores {}", cores.len(), cores.join(", ")),
        };
        let sum = |f: fn(&WorkerStatus) -> u64| self.workers.iter().map(f).sum::<u64>();
        let (out, link, inbound) = (sum(|w| w.packets_out), sum(|w| w.packets_out_link), sum(|w| w.packets_in));
        let link = if link > 0 { format!(" ({link} through the link path)") } else { String::new() };
        let clamped = sum(|w| w.mss_clamped);
        let clamped = if clamped > 0 { format!("; TCP MSS clamped in {clamped} SYNs") } else { String::new() };
        let workers = if self.workers.len() == 1 { "worker" } else { "workers" };
        format!(
            "dataplane: {} {workers} {placement}; packets out {out}{link}, in {inbound}{clamped}",
            self.workers.len()
        )
    }

    /// The human form of `vpngw status`, with the counts of every connection.
    pub fn render(&self, now_unix: u64) -> String {
        self.render_counting(now_unix, Counts::All)
    }

    /// The human form of `vpngw status`, its counts line as `counts` says.
    pub fn render_counting(&self, now_unix: u64, counts: Counts) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "gateway {} ({}), vpngw {} (revision {}), up {}s",
            self.gateway, self.public_address, self.version, self.revision, self.uptime_seconds
        );
        if let Some(ha) = &self.ha {
            o.push_str(&ha.render());
        }
        if !self.workers.is_empty() {
            let _ = writeln!(o, "{}", self.render_workers());
        }
        let dropped: Vec<String> = self.dropped.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        let _ = writeln!(
            o,
            "dropped datagrams: {}",
            if dropped.is_empty() { "none".to_string() } else { dropped.join(", ") }
        );
        for l in &self.link_paths {
            let _ = writeln!(
                o,
                "raw ESP to {}: link path on {} (next hop {}, mtu {})",
                l.peer, l.device, l.next_hop_mac, l.mtu
            );
        }
        match (&self.page, counts) {
            (Some(page), Counts::All) => {
                let _ = writeln!(o, "connections: {}", page.counts_text());
            }
            (Some(page), Counts::Matching(filters)) => {
                let _ = writeln!(o, "connections matching {filters}: {}", page.counts_text());
            }
            (_, Counts::Hide) | (None, _) => {}
        }
        if let (Some(page), Counts::All | Counts::Matching(_)) = (&self.page, counts)
            && !self.connections.is_empty()
            && self.connections.len() < page.matched
        {
            // A page (with --limit 0, a summary, there is nothing to say more).
            let first_last = match (self.connections.first(), self.connections.last()) {
                (Some(first), Some(last)) if first.name != last.name => format!(": {} .. {}", first.name, last.name),
                (Some(only), _) => format!(": {}", only.name),
                _ => String::new(),
            };
            let _ = writeln!(o, "showing {} of {}{first_last}", self.connections.len(), page.matched);
        }
        let matched = self.page.as_ref().map_or(self.connections.len(), |p| p.matched);
        if matched == 0 {
            let none = if matches!(counts, Counts::Matching(_)) {
                "no connection matches"
            } else {
                "no connections configured"
            };
            let _ = writeln!(o, "{none}");
        }
        for c in &self.connections {
            render_connection(&mut o, c, now_unix);
        }
        o
    }
}

/// What `vpngw status` says about how many connections there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts<'a> {
    /// `connections: N (U up, C connecting, D down)`: every connection (no filter).
    All,
    /// The same for the connections the filters (as the operator typed them) matched.
    Matching(&'a str),
    /// No line (`status NAME`: the connection's own line says its state).
    Hide,
}

impl Page {
    /// `N (U up, C connecting, D down)`.
    pub fn counts_text(&self) -> String {
        let c = &self.by_state;
        format!("{} ({} up, {} connecting, {} down)", self.matched, c.up, c.connecting, c.down)
    }
}

/// How long without a packet one way, while the other way carries traffic, before the status
/// points it out (one-way traffic is the classic symptom of a policy or route missing on one
/// side).
const ONE_WAY_AFTER_SECONDS: u64 = 10;

/// A child SA in the human form: what it is, when it goes, and its traffic each way.
fn render_child_sa(o: &mut String, ch: &ChildSaStatus, now_unix: u64) {
    let _ = writeln!(
        o,
        "  child SA {} <=> {} ({}): SPIs in {} out {}, {}/{} pfs {}, {}",
        ch.local_subnet,
        ch.remote_subnet,
        ch.state,
        ch.spi_in,
        ch.spi_out,
        ch.encryption,
        ch.authentication,
        ch.pfs,
        ch.encapsulation
    );
    let _ = writeln!(
        o,
        "    established {}, {}expires in {}s",
        ago(now_unix, ch.established_at_unix),
        ch.rekey_in_seconds.map(|s| format!("rekey in {s}s, ")).unwrap_or_default(),
        ch.expires_in_seconds
    );
    let last = |t: Option<u64>| t.map_or_else(|| "none yet".to_string(), |t| format!("last {}", ago(now_unix, t)));
    let _ = writeln!(
        o,
        "    in  {} ({} pkts, {})\n    out {} ({} pkts, {})",
        human_bytes(ch.bytes_in),
        ch.packets_in,
        last(ch.last_inbound_at_unix),
        human_bytes(ch.bytes_out),
        ch.packets_out,
        last(ch.last_outbound_at_unix)
    );
    if let Some(note) = one_way(ch, now_unix) {
        let _ = writeln!(o, "    ! {note}");
    }
}

/// Traffic that goes one way only: out for a while with nothing in (the peer does not send
/// back: its policy, routes or firewall), or the reverse (our side's routes into the tunnel).
fn one_way(ch: &ChildSaStatus, now_unix: u64) -> Option<String> {
    let idle = |t: Option<u64>| t.map_or(u64::MAX, |t| now_unix.saturating_sub(t));
    let (idle_in, idle_out) = (idle(ch.last_inbound_at_unix), idle(ch.last_outbound_at_unix));
    let since_established = now_unix.saturating_sub(ch.established_at_unix);
    let quiet = |idle: u64| idle >= ONE_WAY_AFTER_SECONDS && since_established >= ONE_WAY_AFTER_SECONDS;
    let silent_for =
        |idle: u64| if idle == u64::MAX { "since it was set up".to_string() } else { format!("for {idle}s") };
    if idle_out < ONE_WAY_AFTER_SECONDS && quiet(idle_in) {
        Some(format!(
            "one-way: packets go out but none came in {} (the peer's side: its policy, routes or firewall toward {})",
            silent_for(idle_in),
            ch.local_subnet
        ))
    } else if idle_in < ONE_WAY_AFTER_SECONDS && quiet(idle_out) {
        Some(format!(
            "one-way: packets come in but none went out {} (this side: do the hosts in {} answer, and route back through this gateway?)",
            silent_for(idle_out),
            ch.local_subnet
        ))
    } else {
        None
    }
}

/// A byte count for people: IEC units from KiB on, one decimal (exact counts are in `--json`).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One connection in the human form: its line, its SAs, its health check and last failure.
fn render_connection(o: &mut String, c: &ConnectionStatus, now_unix: u64) {
    let _ = writeln!(
        o,
        "\n{}: {} (peer {}, {} mode, start {}, ids {} <-> {})",
        c.name, c.state, c.remote_address, c.mode, c.start, c.local_id, c.remote_id
    );
    match &c.ike_sa {
        Some(ike) => {
            let algs = format!(
                "{}/{}/{}",
                ike.encryption.as_deref().unwrap_or("?"),
                ike.authentication.as_deref().unwrap_or("?"),
                ike.dh_group.as_deref().unwrap_or("?")
            );
            let since =
                ike.established_at_unix.map(|t| format!(", established {}", ago(now_unix, t))).unwrap_or_default();
            let expires = ike.expires_in_seconds.map(|s| format!(", expires in {s}s")).unwrap_or_default();
            let nat = if ike.nat_detected { ", NAT detected (ESP in UDP 4500)" } else { "" };
            let _ = writeln!(
                o,
                "  IKE SA: {} as {}, {} <-> {}, {}{}{}{}",
                ike.state, ike.role, ike.local, ike.remote, algs, since, expires, nat
            );
            // As strongSwan prints them: ours marked with `*`.
            let (mine_i, mine_r) = if ike.role == "initiator" { ("*", "") } else { ("", "*") };
            let _ = writeln!(o, "    cookies {}_i{mine_i} {}_r{mine_r}", ike.initiator_cookie, ike.responder_cookie);
        }
        None => {
            let _ = writeln!(o, "  IKE SA: none");
        }
    }
    for ch in &c.child_sas {
        render_child_sa(o, ch, now_unix);
    }
    if let Some(h) = &c.health {
        let verdict = match (h.healthy, &h.error) {
            (_, Some(e)) => format!("not probing: {e}"),
            (Some(true), _) => "healthy".into(),
            (Some(false), _) => "UNHEALTHY".into(),
            (None, _) => "no answer yet".into(),
        };
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            o,
            "  health check {} -> {}: {verdict}, rtt {}, jitter {}, loss {:.0}% of the last probes ({} sent)",
            h.local_address,
            h.remote_address,
            ms(h.rtt_ms),
            ms(h.jitter_ms),
            h.loss_ratio * 100.0,
            h.probes_sent
        );
    }
    if let Some(f) = &c.last_failure {
        let _ = writeln!(o, "  last failure ({}, {}x): {}: {}", ago(now_unix, f.at_unix), f.count, f.reason, f.detail);
    }
    if let Some(s) = c.next_attempt_in_seconds {
        let _ = writeln!(o, "  next attempt in {s}s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(workers: Vec<WorkerStatus>, dropped: &[(&str, u64)]) -> Status {
        Status {
            gateway: "gw".into(),
            version: "0.1.0".into(),
            revision: "0123456789ab".into(),
            public_address: "198.51.100.1".into(),
            uptime_seconds: 5,
            dropped: dropped.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            workers,
            link_paths: vec![],
            ha: None,
            page: None,
            connections: vec![],
        }
    }

    fn worker(core: Option<usize>, out: u64, link: u64, inbound: u64) -> WorkerStatus {
        WorkerStatus {
            core,
            packets_out: out,
            packets_out_link: link,
            packets_in: inbound,
            busy_seconds: 0.0,
            mss_clamped: 0,
        }
    }

    fn child(established: u64, last_in: Option<u64>, last_out: Option<u64>) -> ChildSaStatus {
        ChildSaStatus {
            spi_in: "c1a5e0d2".into(),
            spi_out: "c7f3b2a9".into(),
            local_subnet: "10.1.0.0/24".into(),
            remote_subnet: "10.2.0.0/24".into(),
            encryption: "aes-128".into(),
            authentication: "sha1".into(),
            pfs: "disable".into(),
            encapsulation: "esp".into(),
            state: ChildSaState::Active,
            established_at_unix: established,
            expires_in_seconds: 3000,
            rekey_in_seconds: Some(2700),
            lifetime_kilobytes: None,
            packets_in: 830,
            bytes_in: 1_258_291,
            packets_out: 3,
            bytes_out: 252,
            last_inbound_at_unix: last_in,
            last_outbound_at_unix: last_out,
        }
    }

    #[test]
    fn bytes_are_scaled_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn a_child_sa_shows_its_traffic_each_way_and_when_it_last_moved() {
        let mut o = String::new();
        render_child_sa(&mut o, &child(1000, Some(1098), Some(1097)), 1100);
        assert_eq!(
            o,
            "  child SA 10.1.0.0/24 <=> 10.2.0.0/24 (active): SPIs in c1a5e0d2 out c7f3b2a9, aes-128/sha1 pfs disable, esp\n\
             \x20   established 100s ago, rekey in 2700s, expires in 3000s\n\
             \x20   in  1.2 MiB (830 pkts, last 2s ago)\n\
             \x20   out 252 B (3 pkts, last 3s ago)\n"
        );
        // Nothing out since it was set up, while packets come in: pointed out.
        let mut o = String::new();
        let mut quiet_out = child(1000, Some(1098), None);
        (quiet_out.packets_out, quiet_out.bytes_out) = (0, 0);
        render_child_sa(&mut o, &quiet_out, 1100);
        assert!(o.contains("    out 0 B (0 pkts, none yet)\n    ! one-way: packets come in but none went out"), "{o}");
    }

    #[test]
    fn one_way_traffic_is_pointed_out_only_when_it_lasts() {
        // Out now, nothing in since it was set up 60 s ago: the peer does not send back.
        let note = one_way(&child(1000, None, Some(1059)), 1060).expect("one-way out");
        assert!(note.contains("go out but none came in since it was set up"), "{note}");
        // In now, nothing out for 30 s.
        let note = one_way(&child(1000, Some(1060), Some(1030)), 1060).expect("one-way in");
        assert!(note.contains("come in but none went out for 30s"), "{note}");
        // Both ways recently, both idle, or a fresh SA (the answer may still come): nothing.
        assert_eq!(one_way(&child(1000, Some(1055), Some(1059)), 1060), None);
        assert_eq!(one_way(&child(1000, Some(1010), Some(1020)), 1060), None);
        assert_eq!(one_way(&child(1055, None, Some(1059)), 1060), None);
    }

    fn named(name: &str, state: ConnectionState) -> ConnectionStatus {
        ConnectionStatus {
            name: name.into(),
            pre_shared_key: "inline".into(),
            remote_address: "198.51.100.2".into(),
            start: "active".into(),
            mode: "main".into(),
            local_id: "ip:198.51.100.1".into(),
            remote_id: "ip:198.51.100.2".into(),
            state,
            ike_sa: None,
            child_sas: vec![],
            last_failure: None,
            next_attempt_in_seconds: None,
            health: None,
        }
    }

    #[test]
    fn the_counts_line_says_what_matched_and_which_page_is_shown() {
        use crate::ops::select::StateCounts;
        let mut s = status(vec![], &[]);
        s.connections = vec![named("b-1", ConnectionState::Up), named("b-2", ConnectionState::Down)];
        let by_state = StateCounts { up: 3000, connecting: 0, down: 2000 };
        s.page = Some(Page { matched: 5000, by_state, next_after: Some("b-2".into()) });
        let text = s.render(0);
        assert!(
            text.contains("\nconnections: 5000 (3000 up, 0 connecting, 2000 down)\nshowing 2 of 5000: b-1 .. b-2\n"),
            "{text}"
        );
        let text = s.render_counting(0, Counts::Matching("--name 'b-*'"));
        assert!(text.contains("\nconnections matching --name 'b-*': 5000 (3000 up,"), "{text}");
        assert!(!s.render_counting(0, Counts::Hide).contains("connections"), "status NAME: no counts");
        // A summary (limit 0): the counts alone, no "showing", no "no connections".
        s.connections.clear();
        let text = s.render(0);
        assert!(text.ends_with("down)\n") && !text.contains("showing") && !text.contains("no conn"), "{text}");
        // Nothing matched: said as such; nothing configured: as before.
        s.page = Some(Page::default());
        assert!(
            s.render_counting(0, Counts::Matching("--state up"))
                .ends_with(": 0 (0 up, 0 connecting, 0 down)\nno connection matches\n")
        );
        assert!(s.render(0).ends_with("\nno connections configured\n"), "{}", s.render(0));
        // An older daemon's answer (no page): no counts line.
        s.page = None;
        assert!(s.render(0).ends_with("dropped datagrams: none\nno connections configured\n"), "{}", s.render(0));
    }

    #[test]
    fn the_summary_names_worker_placement_traffic_and_drops() {
        let s = status(
            vec![worker(Some(0), 10, 8, 3), worker(Some(1), 5, 0, 4)],
            &[("esp_no_sa", 9), ("ike_unknown_sa", 2)],
        );
        let text = s.render(0);
        assert!(
            text.contains("dataplane: 2 workers on cores 0, 1; packets out 15 (8 through the link path), in 7\n"),
            "{text}"
        );
        assert!(text.contains("dropped datagrams: esp_no_sa 9, ike_unknown_sa 2\n"), "{text}");
        let s = status(vec![worker(None, 1, 0, 2)], &[]);
        let text = s.render(0);
        assert!(text.contains("dataplane: 1 worker not pinned; packets out 1, in 2\n"), "{text}");
        assert!(text.contains("dropped datagrams: none\n"), "{text}");
        let s = status(vec![worker(Some(3), 0, 0, 0), worker(None, 0, 0, 0)], &[]);
        assert!(s.render(0).contains("2 workers 1 of them pinned, on cores 3;"), "{}", s.render(0));
        // SYNs whose MSS was clamped, summed over the workers, once there are any.
        let mut clamping = vec![worker(Some(0), 10, 0, 3), worker(Some(1), 5, 0, 4)];
        clamping[0].mss_clamped = 2;
        clamping[1].mss_clamped = 3;
        let text = status(clamping, &[]).render(0);
        assert!(text.contains("packets out 15, in 7; TCP MSS clamped in 5 SYNs\n"), "{text}");
    }
}
