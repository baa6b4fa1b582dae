//! `[[connection]]` and its `dpd` and `health_check` tables: one connection's peer, key, subnets
//! and start, and the rules across connections (unique names, one key per remote address,
//! disjoint subnets).
//! The `ike` and `ipsec` tables are in `ike_ipsec.rs`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use vpngw_crypto::SecretBytes;
use vpngw_ike::{DpdAction, DpdPolicy, Ipv4Subnet, PeerConfig, SubnetPair};

use super::walker::{NAME_CHARS, Problem, Walker, loose_secret_mode, valid_name};
use super::{Connection, HealthCheck, Start, UdpEncapsulation};

const CONNECTION_KEYS: &[&str] = &[
    "name",
    "remote_address",
    "pre_shared_key",
    "pre_shared_key_file",
    "local_subnets",
    "remote_subnets",
    "start",
    "encapsulation",
    "ike",
    "ipsec",
    "dpd",
    "health_check",
];

/// Local x remote subnet pairs one connection may negotiate.
const MAX_SUBNET_PAIRS: usize = 200;

impl Walker {
    /// The `[[connection]]` array of the root table; `public` is the gateway's address (None
    /// when `[gateway]` is invalid).
    pub(super) fn connections(&mut self, root: &Table, public: Option<Ipv4Addr>) -> Vec<Connection> {
        let mut connections = Vec::new();
        // The index in the file of each connection kept (an invalid one is not), for the keys
        // of the problems across connections.
        let mut at = Vec::new();
        match root.get("connection") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let key = format!("connection[{i}]");
                    match item {
                        Value::Table(t) => {
                            if let Some(c) = self.connection(&key, t, public) {
                                connections.push(c);
                                at.push(i);
                            }
                        }
                        v => self.problem(&key, Some(v), "must be a table ([[connection]])"),
                    }
                }
            }
            Some(v) => self.problem("connection", Some(v), "must be an array of tables ([[connection]])"),
        }
        self.check_names_unique(&connections, &at);
        self.check_one_key_per_address(&connections, &at);
        self.check_subnets_disjoint(&connections, &at);
        connections
    }

    /// Two connections whose subnets can match one packet would take each other's traffic:
    /// every such pair is a problem, under the later one's `remote_subnets`.
    fn check_subnets_disjoint(&mut self, connections: &[Connection], at: &[usize]) {
        for (i, c) in connections.iter().enumerate() {
            for d in &connections[..i] {
                if let Some(o) = overlap(c, d) {
                    let reason = o.reason(&format!("{:?}", d.peer.name));
                    self.problem(
                        &format!("connection[{}].remote_subnets", at[i]),
                        Some(&Value::String(o.ours.remote.to_string())),
                        reason,
                    );
                }
            }
        }
    }

    fn check_names_unique(&mut self, connections: &[Connection], at: &[usize]) {
        let mut names = BTreeSet::new();
        for (c, i) in connections.iter().zip(at) {
            if !names.insert(c.peer.name.clone()) {
                self.problem(
                    &format!("connection[{i}].name"),
                    Some(&Value::String(c.peer.name.clone())),
                    "duplicate connection name",
                );
            }
        }
    }

    /// Main mode picks the pre-shared key by the peer's address before the peer's identity is
    /// known: two connections to one address must share the key.
    fn check_one_key_per_address(&mut self, connections: &[Connection], at: &[usize]) {
        for (i, c) in connections.iter().enumerate() {
            for d in &connections[..i] {
                if c.peer.remote_address == d.peer.remote_address && c.peer.psk != d.peer.psk {
                    self.problem(
                        &format!("connection[{}].pre_shared_key", at[i]),
                        None,
                        format!("connection {:?} has the same remote_address but another key; main mode selects the key by address, so they must be equal", d.peer.name),
                    );
                }
            }
        }
    }

    /// One connection's table under `key`; `public` is the gateway's address.
    pub(super) fn connection(&mut self, key: &str, t: &Table, public: Option<Ipv4Addr>) -> Option<Connection> {
        self.unknown_keys(&format!("{key}."), t, CONNECTION_KEYS);
        let name = self.connection_name(key, t);
        let remote = self.ipv4(&format!("{key}.remote_address"), t, "remote_address", true);
        let (psk, psk_source) = self.psk(key, t);
        let psk_file = psk_source.strip_prefix("file ").map(PathBuf::from);
        let local_subnets = self.subnets(&format!("{key}.local_subnets"), t, "local_subnets");
        let remote_subnets = self.subnets(&format!("{key}.remote_subnets"), t, "remote_subnets");
        let pairs = self.subnet_pairs(key, &local_subnets, &remote_subnets);
        self.check_remote_subnets(key, &local_subnets, &remote_subnets, remote, public);
        let start = self.word(
            &format!("{key}.start"),
            t,
            "start",
            Start::Active,
            &[("active", Start::Active), ("passive", Start::Passive), ("on-traffic", Start::OnTraffic)],
        );
        let encapsulation = self.word(
            &format!("{key}.encapsulation"),
            t,
            "encapsulation",
            UdpEncapsulation::WhenNatDetected,
            &[("auto", UdpEncapsulation::WhenNatDetected), ("udp", UdpEncapsulation::Always)],
        );
        let negotiation = self.negotiation(key, t, public, remote);
        let empty = Table::new();
        let dpd_table = self.table(&format!("{key}.dpd"), t, "dpd").unwrap_or(&empty);
        let dpd = self.dpd(&format!("{key}.dpd"), dpd_table);
        let health_check = match self.table(&format!("{key}.health_check"), t, "health_check") {
            Some(h) => self.health_check(&format!("{key}.health_check"), &h.clone(), &local_subnets, &remote_subnets),
            None => None,
        };
        let peer = PeerConfig {
            name: name?,
            local_address: IpAddr::V4(public?),
            remote_address: IpAddr::V4(remote?),
            psk: psk?,
            local_id: negotiation.local_id?,
            remote_id: negotiation.remote_id?,
            mode: negotiation.mode,
            phase1: negotiation.phase1,
            phase2: negotiation.phase2,
            subnets: pairs,
            force_udp_encapsulation: encapsulation == UdpEncapsulation::Always,
            dpd,
        };
        Some(Connection { peer, start, health_check, psk_source, psk_file })
    }

    fn connection_name(&mut self, key: &str, t: &Table) -> Option<String> {
        let name = self.string(&format!("{key}.name"), t, "name");
        match &name {
            None => self.problem(&format!("{key}.name"), None, "required"),
            Some(n) if !valid_name(n) => {
                self.problem(&format!("{key}.name"), t.get("name"), format!("1-64 characters: {NAME_CHARS}"))
            }
            _ => {}
        }
        name
    }

    /// Every local subnet with every remote one, each pair its own quick mode.
    fn subnet_pairs(&mut self, key: &str, local: &[Ipv4Subnet], remote: &[Ipv4Subnet]) -> Vec<SubnetPair> {
        let pairs: Vec<SubnetPair> =
            local.iter().flat_map(|l| remote.iter().map(|r| SubnetPair { local: *l, remote: *r })).collect();
        if pairs.len() > MAX_SUBNET_PAIRS {
            self.problem(
                &format!("{key}.remote_subnets"),
                None,
                format!("{} local x remote pairs; at most {MAX_SUBNET_PAIRS}", pairs.len()),
            );
        }
        pairs
    }

    /// Routes to remote subnets point into the tunnel: one holding a gateway's own public
    /// address would swallow the IKE and ESP packets that carry the tunnel, and one overlapping
    /// a local subnet would take that subnet's traffic.
    fn check_remote_subnets(
        &mut self,
        key: &str,
        local_subnets: &[Ipv4Subnet],
        remote_subnets: &[Ipv4Subnet],
        remote: Option<Ipv4Addr>,
        public: Option<Ipv4Addr>,
    ) {
        for r in remote_subnets {
            for (what, a) in [("the peer's remote_address", remote), ("our public_address", public)] {
                if let Some(a) = a
                    && r.contains(a)
                {
                    self.problem(
                        &format!("{key}.remote_subnets"),
                        Some(&Value::String(r.to_string())),
                        format!("contains {what} {a}: the tunnel would carry its own packets"),
                    );
                }
            }
        }
        for l in local_subnets {
            for r in remote_subnets {
                if l.covers(r) || r.covers(l) {
                    self.problem(
                        &format!("{key}.remote_subnets"),
                        Some(&Value::String(r.to_string())),
                        format!("overlaps local subnet {l}"),
                    );
                }
            }
        }
    }

    fn subnets(&mut self, key: &str, t: &Table, name: &str) -> Vec<Ipv4Subnet> {
        let mut out = Vec::new();
        match t.get(name) {
            None => self.problem(key, None, "required: a list of IPv4 networks such as [\"10.1.0.0/24\"]"),
            Some(Value::Array(list)) if list.is_empty() => self.problem(key, t.get(name), "must not be empty"),
            Some(Value::Array(list)) => {
                for (i, v) in list.iter().enumerate() {
                    let k = format!("{key}[{i}]");
                    match v.as_str().and_then(parse_subnet) {
                        Some(Ok(s)) => out.push(s),
                        Some(Err(reason)) => self.problem(&k, Some(v), reason),
                        None => self.problem(&k, Some(v), "must be an IPv4 network such as \"10.1.0.0/24\""),
                    }
                }
            }
            Some(v) => self.problem(key, Some(v), "must be a list of IPv4 networks"),
        }
        out
    }

    /// Dead peer detection, the cloud gateway's way: on by default, timeout 30-60 s (30),
    /// action clear or restart (clear).
    fn dpd(&mut self, key: &str, t: &Table) -> Option<DpdPolicy> {
        self.unknown_keys(&format!("{key}."), t, &["enabled", "timeout_seconds", "action"]);
        let enabled = self.boolean(&format!("{key}.enabled"), t, "enabled", true);
        let d = DpdPolicy::default();
        let timeout = self
            .integer(&format!("{key}.timeout_seconds"), t, "timeout_seconds", 30, 60)
            .map_or(d.timeout, |s| Duration::from_secs(s as u64));
        let action = self.word(
            &format!("{key}.action"),
            t,
            "action",
            d.action,
            &[("clear", DpdAction::Clear), ("restart", DpdAction::Restart)],
        );
        enabled.then_some(DpdPolicy { timeout, action })
    }

    fn psk(&mut self, key: &str, t: &Table) -> (Option<SecretBytes>, String) {
        let redacted = Value::String("<redacted>".into());
        match (t.get("pre_shared_key"), t.get("pre_shared_key_file")) {
            (Some(_), Some(_)) => {
                self.problem(
                    &format!("{key}.pre_shared_key"),
                    None,
                    "give pre_shared_key or pre_shared_key_file, not both",
                );
                (None, String::new())
            }
            (None, None) => {
                self.problem(&format!("{key}.pre_shared_key"), None, "required (or pre_shared_key_file)");
                (None, String::new())
            }
            (Some(Value::String(s)), None) => {
                if s.is_empty() || s.len() > 512 {
                    self.problem(&format!("{key}.pre_shared_key"), Some(&redacted), "must be 1-512 bytes");
                    return (None, String::new());
                }
                if s.len() < 8 {
                    self.warnings.push(Problem {
                        key: format!("{key}.pre_shared_key"),
                        value: "<redacted>".into(),
                        reason: "shorter than 8 characters: easy to guess offline from one captured main mode".into(),
                        ..Problem::default()
                    });
                }
                (Some(SecretBytes::from_slice(s.as_bytes())), "inline".into())
            }
            (Some(_), None) => {
                self.problem(&format!("{key}.pre_shared_key"), Some(&redacted), "must be a string");
                (None, String::new())
            }
            (None, Some(Value::String(p))) => {
                let path = if Path::new(p).is_absolute() { PathBuf::from(p) } else { self.base.join(p) };
                let file = std::fs::File::open(&path);
                // The mode of the file read, not of whatever the path names a moment later.
                if let Ok(meta) = file.as_ref().map(std::fs::File::metadata)
                    && let Ok(meta) = meta
                    && let Some(reason) = loose_secret_mode(&path, &meta)
                {
                    self.problem(&format!("{key}.pre_shared_key_file"), t.get("pre_shared_key_file"), reason);
                    return (None, String::new());
                }
                let read = file.and_then(|mut f| {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
                });
                match read {
                    Ok(mut bytes) => {
                        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            bytes.pop();
                        }
                        if bytes.is_empty() {
                            self.problem(
                                &format!("{key}.pre_shared_key_file"),
                                t.get("pre_shared_key_file"),
                                "the file is empty",
                            );
                            return (None, String::new());
                        }
                        (Some(SecretBytes::new(bytes)), format!("file {}", path.display()))
                    }
                    Err(e) => {
                        self.problem(
                            &format!("{key}.pre_shared_key_file"),
                            t.get("pre_shared_key_file"),
                            format!("cannot read: {e}"),
                        );
                        (None, String::new())
                    }
                }
            }
            (None, Some(v)) => {
                self.problem(&format!("{key}.pre_shared_key_file"), Some(v), "must be a path");
                (None, String::new())
            }
        }
    }

    fn health_check(
        &mut self,
        key: &str,
        t: &Table,
        local: &[Ipv4Subnet],
        remote: &[Ipv4Subnet],
    ) -> Option<HealthCheck> {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &["enabled", "local_address", "remote_address", "interval_seconds", "unhealthy_after"],
        );
        let enabled = self.boolean(&format!("{key}.enabled"), t, "enabled", true);
        let l = self.ipv4(&format!("{key}.local_address"), t, "local_address", true);
        let r = self.ipv4(&format!("{key}.remote_address"), t, "remote_address", true);
        if let Some(a) = l
            && !local.is_empty()
            && !local.iter().any(|n| n.contains(a))
        {
            self.problem(
                &format!("{key}.local_address"),
                t.get("local_address"),
                "must be inside local_subnets (an address of this gateway there, e.g. its LAN address)",
            );
        }
        if let Some(a) = r
            && !remote.is_empty()
            && !remote.iter().any(|n| n.contains(a))
        {
            self.problem(&format!("{key}.remote_address"), t.get("remote_address"), "must be inside remote_subnets");
        }
        let interval = self.integer(&format!("{key}.interval_seconds"), t, "interval_seconds", 1, 5).unwrap_or(2);
        let after = self.integer(&format!("{key}.unhealthy_after"), t, "unhealthy_after", 3, 8).unwrap_or(3);
        Some(HealthCheck {
            local_address: l?,
            remote_address: r?,
            interval: Duration::from_secs(interval as u64),
            unhealthy_after: after as u32,
        })
        .filter(|_| enabled)
    }
}

/// Where two connections' policies meet: a subnet pair of each that can both match one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub ours: SubnetPair,
    pub theirs: SubnetPair,
}

impl Overlap {
    /// The problem's reason; `other` names the other connection.
    pub fn reason(&self, other: &str) -> String {
        format!(
            "{} -> {} overlaps connection {other}'s {} -> {}: one packet could match both connections, \
             and either one's SA would carry it; make the local or the remote subnets disjoint",
            self.ours.local, self.ours.remote, self.theirs.local, self.theirs.remote
        )
    }
}

/// The first pair of `a`'s and `b`'s subnet pairs that can both match one packet (the local
/// subnets overlap and the remote subnets overlap); None when the two are disjoint.
pub fn overlap(a: &Connection, b: &Connection) -> Option<Overlap> {
    let meet = |x: &Ipv4Subnet, y: &Ipv4Subnet| x.covers(y) || y.covers(x);
    a.peer.subnets.iter().find_map(|p| {
        b.peer
            .subnets
            .iter()
            .find(|q| meet(&p.local, &q.local) && meet(&p.remote, &q.remote))
            .map(|q| Overlap { ours: *p, theirs: *q })
    })
}

fn parse_subnet(s: &str) -> Option<Result<Ipv4Subnet, String>> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let net = Ipv4Subnet::new(addr, prefix)?;
    if net.addr() != addr {
        return Some(Err(format!("host bits set: did you mean {net}?")));
    }
    Some(Ok(net))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use vpngw_ike::{ExchangeMode, Identity};

    use super::super::tests::MINIMAL;
    use super::super::{Config, DEFAULT_METRICS_LISTEN, ParseError};

    #[test]
    fn psk_never_appears_in_problems() {
        let text = MINIMAL.replace(
            "pre_shared_key = \"lab-psk-0123456789abcdef\"",
            "pre_shared_key = 12345678\npre_shared_key_file = \"x\"",
        );
        let Err(ParseError::Invalid(problems)) = Config::parse(&text, Path::new(".")) else { panic!("accepted") };
        let all = format!("{problems:?}");
        assert!(!all.contains("12345678"), "{all}");
        let text = MINIMAL.replace("lab-psk-0123456789abcdef", "x".repeat(600).as_str());
        let Err(ParseError::Invalid(problems)) = Config::parse(&text, Path::new(".")) else { panic!("accepted") };
        assert!(!format!("{problems:?}").contains("xxxxxxxx"));
    }

    #[test]
    fn subnet_pairs_are_the_product() {
        let text = MINIMAL
            .replace("local_subnets = [\"10.1.0.0/24\"]", "local_subnets = [\"10.1.0.0/24\", \"10.1.1.0/24\"]")
            .replace(
                "remote_subnets = [\"10.2.0.0/24\"]",
                "remote_subnets = [\"10.2.0.0/24\", \"10.2.1.0/24\", \"10.2.2.0/24\"]",
            );
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(c.connections[0].peer.subnets.len(), 6);
    }

    #[test]
    fn health_check_addresses_must_lie_in_the_subnets_and_metrics_have_a_default() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.metrics.listen, DEFAULT_METRICS_LISTEN.parse().ok());
        assert_eq!(c.connections[0].health_check, None);
        let ok = format!(
            "{MINIMAL}[connection.health_check]\nlocal_address = \"10.1.0.1\"\nremote_address = \"10.2.0.10\"\n"
        );
        let h = Config::parse(&ok, Path::new(".")).unwrap().connections[0].health_check.clone().unwrap();
        assert_eq!((h.interval, h.unhealthy_after), (Duration::from_secs(2), 3), "defaults");
        let outside = ok.replace("10.1.0.1", "10.7.0.1").replace("10.2.0.10", "10.9.0.10");
        let Err(ParseError::Invalid(problems)) = Config::parse(&outside, Path::new(".")) else { panic!("accepted") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["connection[0].health_check.local_address", "connection[0].health_check.remote_address"]);
        let off = format!("{MINIMAL}[metrics]\nenabled = false\n");
        assert_eq!(Config::parse(&off, Path::new(".")).unwrap().metrics.listen, None);
    }

    /// MINIMAL plus a second connection to another peer with these subnets.
    fn with_second(local: &str, remote: &str) -> String {
        format!(
            "{MINIMAL}\n[[connection]]\nname = \"branch-2\"\nremote_address = \"198.51.100.3\"\n\
             pre_shared_key = \"lab-psk-0123456789abcdef\"\nlocal_subnets = [{local}]\nremote_subnets = [{remote}]\n"
        )
    }

    #[test]
    fn connections_whose_subnets_can_match_one_packet_are_refused() {
        // MINIMAL's branch-1: 10.1.0.0/24 -> 10.2.0.0/24.
        for (local, remote) in [
            ("\"10.1.0.0/24\"", "\"10.2.0.0/24\""),                   // the same
            ("\"10.1.0.0/16\"", "\"10.2.0.128/25\""),                 // one inside, one covering
            ("\"10.5.0.0/24\", \"10.1.0.64/26\"", "\"10.2.0.0/23\""), // one of several pairs
        ] {
            let text = with_second(local, remote);
            let Err(ParseError::Invalid(problems)) = Config::parse(&text, Path::new(".")) else {
                panic!("{local} -> {remote} accepted")
            };
            assert_eq!(problems.len(), 1, "{problems:?}");
            let p = problems[0].to_string();
            assert_eq!(problems[0].key, "connection[1].remote_subnets", "{p}");
            assert!(
                p.contains("overlaps connection \"branch-1\"'s") && p.contains("10.1.0.0/24 -> 10.2.0.0/24"),
                "{p}"
            );
        }
        // Disjoint on either side: a packet matches one of them at most.
        for (local, remote) in [
            ("\"10.1.0.0/24\"", "\"10.3.0.0/24\""),
            ("\"10.4.0.0/24\"", "\"10.2.0.0/24\""),
            ("\"10.1.1.0/24\"", "\"10.2.0.0/16\""),
        ] {
            let c = Config::parse(&with_second(local, remote), Path::new("."))
                .unwrap_or_else(|e| panic!("{local} -> {remote} refused: {e:?}"));
            assert_eq!(c.connections.len(), 2);
        }
    }

    #[test]
    fn problems_across_connections_name_them_by_their_place_in_the_file() {
        // connection[1] is invalid (no key): the overlap is between connection[0] and [2].
        let invalid = "\n[[connection]]\nname = \"broken\"\nremote_address = \"198.51.100.5\"\n\
                       local_subnets = [\"10.5.0.0/24\"]\nremote_subnets = [\"10.6.0.0/24\"]\n";
        let text = format!("{MINIMAL}{invalid}") + &with_second("\"10.1.0.0/24\"", "\"10.2.0.0/24\"")[MINIMAL.len()..];
        let Err(ParseError::Invalid(problems)) = Config::parse(&text, Path::new(".")) else { panic!("accepted") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["connection[1].pre_shared_key", "connection[2].remote_subnets"], "{problems:?}");
    }

    #[test]
    fn every_overlapping_pair_is_listed_with_both_names() {
        let third = "\n[[connection]]\nname = \"branch-3\"\nremote_address = \"198.51.100.4\"\n\
                     pre_shared_key = \"lab-psk-0123456789abcdef\"\nlocal_subnets = [\"10.1.0.0/16\"]\nremote_subnets = [\"10.2.0.0/16\"]\n";
        let text = with_second("\"10.1.0.0/24\"", "\"10.2.0.0/24\"") + third;
        let Err(ParseError::Invalid(problems)) = Config::parse(&text, Path::new(".")) else { panic!("accepted") };
        let shown: Vec<(String, String)> = problems
            .iter()
            .map(|p| (p.key.clone(), p.reason.split(':').next().unwrap_or_default().to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "connection[1].remote_subnets".into(),
                    "10.1.0.0/24 -> 10.2.0.0/24 overlaps connection \"branch-1\"'s 10.1.0.0/24 -> 10.2.0.0/24".into()
                ),
                (
                    "connection[2].remote_subnets".into(),
                    "10.1.0.0/16 -> 10.2.0.0/16 overlaps connection \"branch-1\"'s 10.1.0.0/24 -> 10.2.0.0/24".into()
                ),
                (
                    "connection[2].remote_subnets".into(),
                    "10.1.0.0/16 -> 10.2.0.0/16 overlaps connection \"branch-2\"'s 10.1.0.0/24 -> 10.2.0.0/24".into()
                ),
            ]
        );
    }

    #[test]
    fn psk_file_and_fqdn_ids() {
        let dir = std::env::temp_dir().join(format!("vpngw-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.psk"), "secret-from-file\n").unwrap();
        let private = |mode| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.join("k.psk"), std::fs::Permissions::from_mode(mode)).unwrap();
        };
        private(0o600);
        let text = MINIMAL.replace("pre_shared_key = \"lab-psk-0123456789abcdef\"", "pre_shared_key_file = \"k.psk\"")
            + "[connection.ike]\nmode = \"aggressive\"\nlocal_id = \"fqdn:left.lab.example\"\nremote_id = \"fqdn:right.lab.example\"\n";
        let c = Config::parse(&text, &dir).unwrap();
        let p = &c.connections[0].peer;
        assert_eq!(p.psk.expose(), b"secret-from-file");
        assert_eq!(p.local_id, Identity::Fqdn("left.lab.example".into()));
        assert_eq!(p.mode, ExchangeMode::Aggressive);
        assert!(c.connections[0].psk_source.starts_with("file "));
        // Group- or world-readable: refused, naming the file, its mode and the fix, not the key.
        for (mode, shown) in [(0o644, "0644"), (0o640, "0640"), (0o602, "0602")] {
            private(mode);
            let Err(ParseError::Invalid(problems)) = Config::parse(&text, &dir) else { panic!("{shown} accepted") };
            assert_eq!(problems.len(), 1, "{problems:?}");
            let p = problems[0].to_string();
            let path = dir.join("k.psk").display().to_string();
            assert!(p.starts_with("connection \"branch-1\".pre_shared_key_file = \"k.psk\""), "{p}");
            assert_eq!(problems[0].key, "connection[0].pre_shared_key_file");
            assert!(p.contains(&format!("{path} has mode {shown}")) && p.contains(&format!("chmod 600 {path}")), "{p}");
            assert!(!p.contains("secret-from-file"), "{p}");
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
