//! `vpngw diagnose NAME`: one connection's configuration in the seed's words, its state, its
//! recent negotiation failures and, for each failure reason, what to check and do.
//!
//! The seed's FAQ asks users to compare every phase 1 and phase 2 parameter with the peer's by
//! hand; the engine already names each differing parameter with both values where the
//! protocol lets it know them (as responder it sees the peer's offer; as initiator only a
//! refusal). This report puts that next to our own side of the comparison and a hint, so the
//! operator can act in one look. No secret appears: the pre-shared key is shown by source.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use vpngw_ike::{ChildSaState, FailReason, PeerConfig};

use super::{Sources, unix};
use crate::config::Connection;
use crate::ops::status::{self, ConnectionStatus};
use crate::state::ConnectionState;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Diagnosis {
    pub connection: String,
    /// up / connecting / down, as in `vpngw status`.
    pub state: ConnectionState,
    /// One line: what is wrong (or that nothing is), and the first thing to do.
    pub verdict: String,
    pub configured: Configured,
    /// The SAs as they are now (the status view of this connection).
    pub status: ConnectionStatus,
    /// Most recent first, one entry per distinct failure (repeats are counted).
    pub failures: Vec<FailureReport>,
    /// What to change although nothing failed (e.g. a volume lifetime the traffic uses up in
    /// seconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<String>,
}

/// A child SA whose volume lifetime, at the rate it has carried so far, lasts less than this
/// is rekeyed so often that the quick modes themselves become the load (and each rekey is a
/// moment where both sides must agree). The seed's default, 1,843,200 KB, lasts ~9 s at
/// 1.6 Gbit/s.
const VOLUME_ADVICE_SECONDS: u64 = 60;
/// An SA must have lived this long before its average rate means anything.
const VOLUME_ADVICE_MIN_AGE: u64 = 5;

/// Advice from the SAs as they are now: each active child SA's volume lifetime against the
/// rate it has carried since it was established.
pub fn advice(status: &ConnectionStatus, now_unix: u64) -> Vec<String> {
    let mut out = Vec::new();
    for ch in status.child_sas.iter().filter(|c| c.state == ChildSaState::Active) {
        let Some(kb) = ch.lifetime_kilobytes.filter(|kb| *kb > 0) else { continue };
        let age = now_unix.saturating_sub(ch.established_at_unix);
        let used = ch.bytes_in.max(ch.bytes_out);
        if age < VOLUME_ADVICE_MIN_AGE || used == 0 {
            continue;
        }
        let rate = used / age; // bytes per second
        let lasts = kb.saturating_mul(1024) / rate.max(1);
        if lasts < VOLUME_ADVICE_SECONDS {
            out.push(format!(
                "child SA {} <=> {}: its volume lifetime ({kb} KB) lasts about {lasts} s at the rate it carries \
                 ({:.0} Mbit/s), so it is replaced every few seconds; raise [connection.ipsec] lifetime_kilobytes \
                 on both sides (0 = no volume limit; lifetime_seconds still applies)",
                ch.local_subnet,
                ch.remote_subnet,
                rate as f64 * 8.0 / 1e6,
            ));
        }
    }
    out
}

/// Our side of the comparison, parameter by parameter, named as in the configuration file
/// and the seed's tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Configured {
    pub remote_address: String,
    pub start: String,
    pub pre_shared_key: String,
    pub ike: IkeParams,
    pub ipsec: IpsecParams,
    pub dpd: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IkeParams {
    pub version: String,
    pub mode: String,
    pub local_id: String,
    pub remote_id: String,
    pub encryption: String,
    pub authentication: String,
    pub dh_group: String,
    pub lifetime_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IpsecParams {
    pub local_subnets: Vec<String>,
    pub remote_subnets: Vec<String>,
    pub encryption: String,
    pub authentication: String,
    pub pfs: String,
    pub lifetime_seconds: u32,
    pub lifetime_kilobytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailureReport {
    pub reason: String,
    pub detail: String,
    pub at_unix: u64,
    pub count: u64,
    pub hint: String,
}

impl Configured {
    pub fn of(c: &Connection) -> Self {
        let p: &PeerConfig = &c.peer;
        let mut local: Vec<String> = Vec::new();
        let mut remote: Vec<String> = Vec::new();
        for pair in &p.subnets {
            for (list, net) in [(&mut local, pair.local.to_string()), (&mut remote, pair.remote.to_string())] {
                if !list.contains(&net) {
                    list.push(net);
                }
            }
        }
        Self {
            remote_address: p.remote_address.to_string(),
            start: c.start.as_str().into(),
            pre_shared_key: c.psk_source.clone(),
            ike: IkeParams {
                version: "ikev1".into(),
                mode: p.mode.to_string(),
                local_id: p.local_id.to_string(),
                remote_id: p.remote_id.to_string(),
                encryption: p.phase1.encryption.name().into(),
                authentication: p.phase1.hash.name().into(),
                dh_group: p.phase1.dh_group.name().into(),
                lifetime_seconds: p.phase1.lifetime.as_secs(),
            },
            ipsec: IpsecParams {
                local_subnets: local,
                remote_subnets: remote,
                encryption: p.phase2.encryption.name().into(),
                authentication: p.phase2.integrity.name().into(),
                pfs: p.phase2.pfs.map_or("disable".into(), |g| g.name().into()),
                lifetime_seconds: p.phase2.lifetime_seconds,
                lifetime_kilobytes: p.phase2.lifetime_kilobytes,
            },
            dpd: match p.dpd {
                Some(d) => format!("on, timeout {} s, action {}", d.timeout.as_secs(), d.action),
                None => "off".into(),
            },
        }
    }
}

/// The diagnosis of the configured connection `name` (none if there is no such connection).
pub fn for_connection(s: &Sources, name: &str) -> Option<Diagnosis> {
    let connection = s.connection(name)?;
    let failures = s
        .history
        .failures(name)
        .map(|f| FailureReport {
            reason: f.reason.to_string(),
            detail: f.detail.clone(),
            at_unix: unix(f.at),
            count: f.count,
            hint: hint(f.reason).into(),
        })
        .collect();
    Some(Diagnosis::new(connection, status::connection(s, connection), failures, unix(s.wall)))
}

/// What to check and do for each reason (the troubleshooting guide, in one sentence each).
pub fn hint(reason: FailReason) -> &'static str {
    match reason {
        FailReason::Phase1ProposalMismatch => {
            "Make [connection.ike] encryption, authentication and dh_group equal to the peer's phase 1 (IKE) settings; the detail names each differing value. A peer with no connection for our address refuses the same way: check its configuration too."
        }
        FailReason::Phase2ProposalMismatch => {
            "Make [connection.ipsec] encryption and authentication equal to the peer's phase 2 (IPsec) settings; the detail names each differing value."
        }
        FailReason::PfsMismatch => {
            "Set [connection.ipsec] pfs to the peer's PFS setting (disable, or the same DH group on both sides)."
        }
        FailReason::AuthenticationFailed => {
            "The pre-shared keys most likely differ: set the same key on both sides (check for trailing spaces or newlines in key files); also check local_id/remote_id."
        }
        FailReason::IdMismatch => {
            "Make [connection.ike] remote_id equal to the identity the peer sends (its local identity), and local_id equal to what the peer expects; IP or FQDN type must match too."
        }
        FailReason::TrafficSelectorMismatch => {
            "Make local_subnets/remote_subnets the mirror image of the peer's (our local = its remote, exact same prefixes)."
        }
        FailReason::ModeMismatch => "Set [connection.ike] mode (main or aggressive) to the peer's negotiation mode.",
        FailReason::VersionMismatch => {
            "vpngw speaks IKEv1: configure the peer's connection for IKEv1 (e.g. strongSwan version = 1, keyexchange=ikev1)."
        }
        FailReason::PeerUnreachable => {
            "Check that remote_address is right and reachable, that UDP 500 and 4500 (and IP protocol 50 without NAT) pass every firewall and security group, and that the peer gateway is running and configured for us."
        }
        FailReason::MalformedMessage => {
            "The peer sent something vpngw could not read, or refused ours: compare both configurations, look at the peer's log for the same moment, and report it if it repeats."
        }
        FailReason::NatDetectionFailed => {
            "NAT detection payloads were inconsistent: check for devices rewriting IKE traffic between the gateways; forcing UDP encapsulation (encapsulation = \"udp\") may help."
        }
        FailReason::UnknownPeer => {
            "A gateway with no matching connection contacted us: add a connection with its address as remote_address, or ignore it."
        }
    }
}

impl Diagnosis {
    pub fn new(c: &Connection, status: ConnectionStatus, failures: Vec<FailureReport>, now_unix: u64) -> Self {
        let verdict = match (status.state, failures.first()) {
            (ConnectionState::Up, _) => {
                let n = status.child_sas.iter().filter(|c| c.state == ChildSaState::Active).count();
                format!("up: IKE SA established, {n} child SA(s) carrying traffic")
            }
            (state, Some(f)) => format!("{state}: {} ({}). {}", f.reason, f.detail, f.hint),
            (ConnectionState::Connecting, None) => "connecting: negotiation under way, no failure so far".into(),
            (_, None) if c.start == crate::config::Start::Passive => {
                "down: passive connection waiting for the peer to initiate; no failure so far".into()
            }
            (_, None) if c.start == crate::config::Start::OnTraffic => {
                "down: starts when traffic for the remote subnets arrives; no failure so far".into()
            }
            (state, None) => format!("{state}: no failure recorded; `vpngw up {}` starts it", c.peer.name),
        };
        Self {
            connection: c.peer.name.clone(),
            state: status.state,
            verdict,
            configured: Configured::of(c),
            advice: advice(&status, now_unix),
            status,
            failures,
        }
    }

    /// The human form.
    pub fn render(&self, now_unix: u64) -> String {
        let mut o = String::new();
        let c = &self.configured;
        let _ = writeln!(o, "connection {}: {}", self.connection, self.verdict);
        let _ = writeln!(o, "\nconfigured (compare each line with the peer's settings):");
        let _ = writeln!(o, "  remote_address     {}", c.remote_address);
        let _ = writeln!(o, "  start              {}", c.start);
        let _ = writeln!(o, "  pre_shared_key     {}", c.pre_shared_key);
        let _ = writeln!(o, "  phase 1 (ike)      version {}, mode {}", c.ike.version, c.ike.mode);
        let _ = writeln!(o, "    local_id         {}", c.ike.local_id);
        let _ = writeln!(o, "    remote_id        {}", c.ike.remote_id);
        let _ = writeln!(o, "    encryption       {}", c.ike.encryption);
        let _ = writeln!(o, "    authentication   {}", c.ike.authentication);
        let _ = writeln!(o, "    dh_group         {}", c.ike.dh_group);
        let _ = writeln!(o, "    lifetime         {} s", c.ike.lifetime_seconds);
        let _ = writeln!(o, "  phase 2 (ipsec)");
        let _ = writeln!(o, "    local_subnets    {}", c.ipsec.local_subnets.join(", "));
        let _ = writeln!(o, "    remote_subnets   {}", c.ipsec.remote_subnets.join(", "));
        let _ = writeln!(o, "    encryption       {}", c.ipsec.encryption);
        let _ = writeln!(o, "    authentication   {}", c.ipsec.authentication);
        let _ = writeln!(o, "    pfs              {}", c.ipsec.pfs);
        let _ = writeln!(o, "    lifetime         {} s, {} KB", c.ipsec.lifetime_seconds, c.ipsec.lifetime_kilobytes);
        let _ = writeln!(o, "  dpd                {}", c.dpd);
        let s = &self.status;
        let _ = writeln!(o, "\nnow:");
        match &s.ike_sa {
            Some(ike) => {
                let _ = writeln!(
                    o,
                    "  IKE SA {} as {} with {} ({} / {} / {})",
                    ike.state,
                    ike.role,
                    ike.remote,
                    ike.encryption.as_deref().unwrap_or("-"),
                    ike.authentication.as_deref().unwrap_or("-"),
                    ike.dh_group.as_deref().unwrap_or("-"),
                );
            }
            None => {
                let _ = writeln!(o, "  no IKE SA");
            }
        }
        for ch in &s.child_sas {
            let _ = writeln!(
                o,
                "  child SA {} <=> {} {} (spi in {} out {})",
                ch.local_subnet, ch.remote_subnet, ch.state, ch.spi_in, ch.spi_out
            );
        }
        if !self.advice.is_empty() {
            let _ = writeln!(o, "\nadvice:");
            for a in &self.advice {
                let _ = writeln!(o, "  {a}");
            }
        }
        if self.failures.is_empty() {
            let _ = writeln!(o, "\nno negotiation failure recorded");
        } else {
            let _ = writeln!(o, "\nfailures (most recent first):");
            for f in &self.failures {
                let ago = now_unix.saturating_sub(f.at_unix);
                let times = if f.count > 1 { format!(", {} times", f.count) } else { String::new() };
                let _ = writeln!(o, "  {} ({ago} s ago{times})", f.reason);
                let _ = writeln!(o, "    {}", f.detail);
                let _ = writeln!(o, "    what to do: {}", f.hint);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::ChildSaStatus;

    fn child(state: ChildSaState, established_at_unix: u64, kb: Option<u64>, bytes_out: u64) -> ChildSaStatus {
        ChildSaStatus {
            spi_in: "c0000001".into(),
            spi_out: "c0000002".into(),
            local_subnet: "10.1.0.0/24".into(),
            remote_subnet: "10.2.0.0/24".into(),
            encryption: "aes-128".into(),
            authentication: "sha1".into(),
            pfs: "disable".into(),
            encapsulation: "esp".into(),
            state,
            established_at_unix,
            expires_in_seconds: 3000,
            rekey_in_seconds: None,
            lifetime_kilobytes: kb,
            packets_in: 0,
            bytes_in: bytes_out / 50,
            packets_out: 0,
            bytes_out,
            last_inbound_at_unix: None,
            last_outbound_at_unix: None,
        }
    }

    #[test]
    fn a_volume_lifetime_used_up_in_seconds_is_advised_against() {
        let now = 1_000_000;
        let status = |children| ConnectionStatus {
            name: "c".into(),
            pre_shared_key: "inline".into(),
            remote_address: "198.51.100.2".into(),
            start: "active".into(),
            mode: "main".into(),
            local_id: "ip".into(),
            remote_id: "ip".into(),
            state: ConnectionState::Up,
            ike_sa: None,
            child_sas: children,
            last_failure: None,
            next_attempt_in_seconds: None,
            health: None,
        };
        // The seed's default volume at 200 MB/s (1.6 Gbit/s): 9 s. Advised, with the numbers.
        let fast = status(vec![child(ChildSaState::Active, now - 6, Some(1_843_200), 6 * 200_000_000)]);
        let a = advice(&fast, now);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].contains("1843200 KB") && a[0].contains("about 9 s") && a[0].contains("1600 Mbit/s"), "{a:?}");
        assert!(a[0].contains("lifetime_kilobytes"), "{a:?}");
        // Not: 10 MB/s (3 minutes), no volume limit, too young to tell, replaced SAs, idle.
        for quiet in [
            child(ChildSaState::Active, now - 6, Some(1_843_200), 6 * 10_000_000),
            child(ChildSaState::Active, now - 6, None, 6 * 200_000_000),
            child(ChildSaState::Active, now - 6, Some(0), 6 * 200_000_000),
            child(ChildSaState::Active, now - 2, Some(1_843_200), 2 * 200_000_000),
            child(ChildSaState::Replaced, now - 6, Some(1_843_200), 6 * 200_000_000),
            child(ChildSaState::Active, now - 600, Some(1_843_200), 0),
        ] {
            assert!(advice(&status(vec![quiet.clone()]), now).is_empty(), "{quiet:?}");
        }
    }

    #[test]
    fn every_reason_has_a_hint_that_says_what_to_change() {
        for r in FailReason::ALL {
            let h = hint(r);
            assert!(h.len() > 40, "{r}: {h}");
        }
        // The hints name the configuration keys to change.
        assert!(hint(FailReason::Phase1ProposalMismatch).contains("[connection.ike]"));
        assert!(hint(FailReason::PfsMismatch).contains("pfs"));
        assert!(hint(FailReason::TrafficSelectorMismatch).contains("remote_subnets"));
    }
}
