//! The configuration file (TOML): the gateway's public interface. Defaults are the seed's tables.
//!
//! Parsing walks the document by hand instead of deriving, so that an invalid file yields every
//! problem at once, each with its key (`connection[1].ike.encryption`), the value and the
//! reason. Secrets never appear in problems: a bad `pre_shared_key` is shown as `<redacted>`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_ike::{
    DpdAction, DpdPolicy, ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy, Phase2Policy, SubnetPair,
};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vpngw/vpngw.sock";

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.reason)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.reason)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {} problem(s)", problems.len())]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// How ESP travels: `auto` = in UDP 4500 when a NAT is detected, raw otherwise; `udp` =
/// always in UDP (for paths that drop IP protocol 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulation {
    Auto,
    Udp,
}

/// How raw ESP (protocol 50, no UDP) leaves: `link` = through an AF_PACKET socket on the
/// uplink with headers written by vpngw, to the next hop the kernel's route and neighbour
/// tables name (the raw IP socket while they name none); `ip` = always through the raw IP
/// socket and the kernel's IP output (its netfilter output hooks apply, it may fragment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EspOutput {
    Link,
    Ip,
}

/// When a connection is brought up (the seed's negotiation types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Initiate at start and after failures.
    Active,
    /// Only answer the peer.
    Passive,
    /// Initiate when the first packet for a remote subnet arrives (needs the dataplane; until
    /// then it behaves as passive).
    OnTraffic,
}

impl Start {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
            Self::OnTraffic => "on-traffic",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gateway {
    pub name: String,
    pub public_address: Ipv4Addr,
    pub tun: String,
    /// MTU of the TUN device: the largest inner packet that still fits the outer path after
    /// ESP (and UDP) overhead.
    pub tun_mtu: u16,
    /// MTU of the outer path (the public interface).
    pub path_mtu: u16,
    pub workers: usize,
    /// Cores to pin the workers to, in order (empty: the cores this process may use).
    pub worker_cores: Vec<usize>,
    pub esp_output: EspOutput,
    pub control_socket: PathBuf,
}

/// The Prometheus endpoint (`GET /metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// None: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

/// The management API (`docs/api/openapi.yaml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    pub listen: SocketAddr,
    /// Holds the bearer token clients must present.
    pub token_file: PathBuf,
    /// Connections created through the API, kept here across restarts.
    pub state_file: PathBuf,
}

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9721";
pub const DEFAULT_API_STATE: &str = "/var/lib/vpngw/connections.toml";

/// Where `/metrics` listens unless configured: this host only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9720";

/// Engine timing, rarely changed (tests shorten it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    pub retransmit_initial: Duration,
    pub retransmit_tries: u32,
}

/// A tunnel quality probe (like the cloud gateway's NQA health check): ICMP echo through the
/// tunnel from an address of this gateway inside the local subnets to a host inside the
/// remote subnets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub local_address: Ipv4Addr,
    pub remote_address: Ipv4Addr,
    pub interval: Duration,
    /// Consecutive losses that make the tunnel unhealthy.
    pub unhealthy_after: u32,
}

#[derive(Clone, Debug)]
pub struct Connection {
    pub peer: PeerConfig,
    pub start: Start,
    pub health_check: Option<HealthCheck>,
    /// Where the key came from (for status, never the key).
    pub psk_source: String,
}

impl Connection {
    /// Whether two versions of a connection negotiate the same way (a reload keeps its SAs).
    pub fn same_as(&self, other: &Self) -> bool {
        let (a, b) = (&self.peer, &other.peer);
        a.name == b.name
            && a.local_address == b.local_address
            && a.remote_address == b.remote_address
            && a.psk == b.psk
            && a.local_id == b.local_id
            && a.remote_id == b.remote_id
            && a.mode == b.mode
            && a.phase1 == b.phase1
            && a.phase2 == b.phase2
            && a.subnets == b.subnets
            && a.force_udp_encapsulation == b.force_udp_encapsulation
            // The engine holds the peer's settings; a DPD change takes a fresh start too.
            && a.dpd == b.dpd
            && self.start == other.start
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub gateway: Gateway,
    pub tuning: Tuning,
    pub metrics: Metrics,
    /// None: no management API.
    pub api: Option<Api>,
    pub connections: Vec<Connection>,
    /// Weak but accepted choices (the seed's defaults include some): printed by `vpngw check`
    /// and logged at start.
    pub warnings: Vec<Problem>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
            ParseError::Syntax(message) => ConfigError::Syntax { path: path.to_path_buf(), message },
            ParseError::Invalid(problems) => ConfigError::Invalid { path: path.to_path_buf(), problems },
        })
    }

    /// Parses a configuration; relative `pre_shared_key_file` paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ParseError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| ParseError::Syntax(e.to_string()))?;
        let mut w = Walker { problems: Vec::new(), warnings: Vec::new(), base: base.to_path_buf() };
        let config = w.config(&table);
        if w.problems.is_empty()
            && let Some(mut c) = config
        {
            c.warnings = w.warnings;
            Ok(c)
        } else {
            Err(ParseError::Invalid(w.problems))
        }
    }
}

/// One connection from its table (the API's body, a state-file entry): the same keys, checks
/// and problem keys as in the configuration file, under `prefix`.
pub fn parse_connection(t: &Table, public: Ipv4Addr, base: &Path, prefix: &str) -> Result<Connection, Vec<Problem>> {
    let mut w = Walker { problems: Vec::new(), warnings: Vec::new(), base: base.to_path_buf() };
    let c = w.connection(prefix, t, Some(public));
    match c {
        Some(c) if w.problems.is_empty() => Ok(c),
        _ => Err(w.problems),
    }
}

#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Invalid(Vec<Problem>),
}

struct Walker {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    base: PathBuf,
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

const NAME_CHARS: &str = "letters, digits, '-', '_' and '.'";

impl Walker {
    fn problem(&mut self, key: &str, value: Option<&Value>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            value: value.map(show).unwrap_or_default(),
            reason: reason.into(),
        });
    }

    fn warn(&mut self, key: &str, value: &str, reason: &str) {
        self.warnings.push(Problem { key: key.into(), value: format!("{value:?}"), reason: reason.into() });
    }

    fn unknown_keys(&mut self, prefix: &str, table: &Table, known: &[&str]) {
        for k in table.keys() {
            if !known.contains(&k.as_str()) {
                self.problem(&format!("{prefix}{k}"), None, format!("unknown key (known here: {})", known.join(", ")));
            }
        }
    }

    fn table<'t>(&mut self, key: &str, parent: &'t Table, name: &str) -> Option<&'t Table> {
        match parent.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => {
                self.problem(key, Some(v), "must be a table");
                None
            }
        }
    }

    fn string(&mut self, key: &str, t: &Table, name: &str) -> Option<String> {
        match t.get(name) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.problem(key, Some(v), "must be a string");
                None
            }
        }
    }

    fn integer(&mut self, key: &str, t: &Table, name: &str, min: i64, max: i64) -> Option<i64> {
        match t.get(name) {
            None => None,
            Some(Value::Integer(i)) if (min..=max).contains(i) => Some(*i),
            Some(v @ Value::Integer(_)) => {
                self.problem(key, Some(v), format!("must be between {min} and {max}"));
                None
            }
            Some(v) => {
                self.problem(key, Some(v), "must be an integer");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, t: &Table, name: &str, default: bool) -> bool {
        match t.get(name) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.problem(key, Some(v), "must be true or false");
                default
            }
        }
    }

    /// A string from a closed set of words, with a default.
    fn word<T: Copy>(&mut self, key: &str, t: &Table, name: &str, default: T, words: &[(&str, T)]) -> T {
        let Some(s) = self.string(key, t, name) else { return default };
        match words.iter().find(|(w, _)| w.eq_ignore_ascii_case(&s)) {
            Some((_, v)) => *v,
            None => {
                let allowed: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                self.problem(key, t.get(name), format!("must be one of: {}", allowed.join(", ")));
                default
            }
        }
    }

    fn ipv4(&mut self, key: &str, t: &Table, name: &str, required: bool) -> Option<Ipv4Addr> {
        let s = self.string(key, t, name);
        match s {
            None if required => {
                self.problem(key, None, "required (an IPv4 address)");
                None
            }
            None => None,
            Some(s) => match s.parse::<Ipv4Addr>() {
                Ok(a) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => Some(a),
                Ok(_) => {
                    self.problem(key, t.get(name), "must be a unicast address");
                    None
                }
                Err(_) => {
                    self.problem(key, t.get(name), "must be an IPv4 address");
                    None
                }
            },
        }
    }

    fn config(&mut self, root: &Table) -> Option<Config> {
        self.unknown_keys("", root, &["gateway", "connection", "tuning", "metrics", "api"]);
        let gateway = match self.table("gateway", root, "gateway") {
            Some(g) => self.gateway(g),
            None => {
                if !root.contains_key("gateway") {
                    self.problem("gateway", None, "required section missing");
                }
                None
            }
        };
        let tuning = match self.table("tuning", root, "tuning") {
            Some(t) => self.tuning(t),
            None => Tuning { retransmit_initial: Duration::from_secs(2), retransmit_tries: 5 },
        };
        let empty = Table::new();
        let metrics_table = self.table("metrics", root, "metrics").unwrap_or(&empty).clone();
        let metrics = self.metrics(metrics_table);
        let api = match self.table("api", root, "api") {
            Some(t) => self.api(&t.clone()),
            None => None,
        };
        let mut connections = Vec::new();
        match root.get("connection") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let key = format!("connection[{i}]");
                    match item {
                        Value::Table(t) => {
                            if let Some(c) = self.connection(&key, t, gateway.as_ref().map(|g| g.public_address)) {
                                connections.push(c);
                            }
                        }
                        v => self.problem(&key, Some(v), "must be a table ([[connection]])"),
                    }
                }
            }
            Some(v) => self.problem("connection", Some(v), "must be an array of tables ([[connection]])"),
        }
        let mut names = BTreeSet::new();
        for (i, c) in connections.iter().enumerate() {
            if !names.insert(c.peer.name.clone()) {
                self.problem(
                    &format!("connection[{i}].name"),
                    Some(&Value::String(c.peer.name.clone())),
                    "duplicate connection name",
                );
            }
        }
        // Main mode picks the pre-shared key by the peer's address before the peer's identity
        // is known: two connections to one address must share the key.
        for (i, c) in connections.iter().enumerate() {
            for d in &connections[..i] {
                if c.peer.remote_address == d.peer.remote_address && c.peer.psk != d.peer.psk {
                    self.problem(
                        &format!("connection[{i}].pre_shared_key"),
                        None,
                        format!("connection {:?} has the same remote_address but another key; main mode selects the key by address, so they must be equal", d.peer.name),
                    );
                }
            }
        }
        Some(Config { gateway: gateway?, tuning, metrics, api, connections, warnings: Vec::new() })
    }

    fn gateway(&mut self, g: &Table) -> Option<Gateway> {
        self.unknown_keys(
            "gateway.",
            g,
            &[
                "name",
                "public_address",
                "tun",
                "tun_mtu",
                "path_mtu",
                "workers",
                "worker_cores",
                "esp_output",
                "control_socket",
            ],
        );
        let name = self.string("gateway.name", g, "name").unwrap_or_else(|| "vpngw".into());
        if !valid_name(&name) {
            self.problem("gateway.name", g.get("name"), format!("1-64 characters: {NAME_CHARS}"));
        }
        let public_address = self.ipv4("gateway.public_address", g, "public_address", true);
        let tun = self.string("gateway.tun", g, "tun").unwrap_or_else(|| "vpngw0".into());
        if tun.is_empty() || tun.len() > 15 || !tun.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            self.problem("gateway.tun", g.get("tun"), "interface name: 1-15 characters, letters, digits, '-', '_'");
        }
        let workers = self.integer("gateway.workers", g, "workers", 0, 1024).unwrap_or(0) as usize;
        let worker_cores = self.worker_cores(g);
        let esp_output = self.word(
            "gateway.esp_output",
            g,
            "esp_output",
            EspOutput::Link,
            &[("link", EspOutput::Link), ("ip", EspOutput::Ip)],
        );
        let path_mtu = self.integer("gateway.path_mtu", g, "path_mtu", 576, 9216).unwrap_or(1500) as u16;
        // ESP worst case: outer IPv4 20 + UDP 8 + SPI/seq 8 + IV 16 + padding 15 + trailer 2 +
        // ICV 12 = 81 bytes; rounded to 100 for headroom.
        let tun_mtu =
            self.integer("gateway.tun_mtu", g, "tun_mtu", 576, 9216).unwrap_or(i64::from(path_mtu) - 100) as u16;
        if u32::from(tun_mtu) + 81 > u32::from(path_mtu) {
            self.problem(
                "gateway.tun_mtu",
                g.get("tun_mtu"),
                format!("must leave 81 bytes of ESP overhead below path_mtu {path_mtu}"),
            );
        }
        let control_socket = self
            .string("gateway.control_socket", g, "control_socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into());
        if !control_socket.is_absolute() {
            self.problem("gateway.control_socket", g.get("control_socket"), "must be an absolute path");
        }
        Some(Gateway {
            name,
            public_address: public_address?,
            tun,
            tun_mtu,
            path_mtu,
            workers,
            worker_cores,
            esp_output,
            control_socket,
        })
    }

    /// `gateway.worker_cores`: CPU numbers, each once. Whether this process may use them is
    /// known only where it runs: the dataplane checks that at start.
    fn worker_cores(&mut self, g: &Table) -> Vec<usize> {
        const KEY: &str = "gateway.worker_cores";
        let Some(v) = g.get("worker_cores") else { return Vec::new() };
        let Value::Array(items) = v else {
            self.problem(KEY, Some(v), "must be a list of CPU numbers, e.g. [0, 1]");
            return Vec::new();
        };
        let mut cores = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(c) if (0..=4095).contains(c) => {
                    let c = *c as usize;
                    if cores.contains(&c) {
                        self.problem(KEY, Some(item), "listed twice");
                    } else {
                        cores.push(c);
                    }
                }
                other => self.problem(KEY, Some(other), "a CPU number: an integer between 0 and 4095"),
            }
        }
        cores
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

    fn api(&mut self, t: &Table) -> Option<Api> {
        self.unknown_keys("api.", t, &["enabled", "listen", "token_file", "state_file"]);
        let enabled = self.boolean("api.enabled", t, "enabled", true);
        let listen = match self.string("api.listen", t, "listen") {
            None => DEFAULT_API_LISTEN.parse().ok(),
            Some(s) => s.parse::<SocketAddr>().ok().or_else(|| {
                self.problem("api.listen", t.get("listen"), "must be ADDRESS:PORT, e.g. \"127.0.0.1:9721\"");
                None
            }),
        };
        let token_file = match self.string("api.token_file", t, "token_file") {
            Some(p) => Some(self.base.join(p)),
            None => {
                self.problem("api.token_file", None, "required: a file holding the bearer token");
                None
            }
        };
        let state = self.string("api.state_file", t, "state_file").unwrap_or(DEFAULT_API_STATE.into());
        let state_file = self.base.join(state);
        let api = Api { listen: listen?, token_file: token_file?, state_file };
        enabled.then_some(api)
    }

    fn metrics(&mut self, t: Table) -> Metrics {
        self.unknown_keys("metrics.", &t, &["enabled", "listen"]);
        let enabled = self.boolean("metrics.enabled", &t, "enabled", true);
        let listen = match self.string("metrics.listen", &t, "listen") {
            None => DEFAULT_METRICS_LISTEN.parse().ok(),
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem("metrics.listen", t.get("listen"), "must be ADDRESS:PORT, e.g. \"127.0.0.1:9720\"");
                    None
                }
            },
        };
        Metrics { listen: listen.filter(|_| enabled) }
    }

    fn tuning(&mut self, t: &Table) -> Tuning {
        self.unknown_keys("tuning.", t, &["retransmit_initial_ms", "retransmit_tries"]);
        let ms = self.integer("tuning.retransmit_initial_ms", t, "retransmit_initial_ms", 100, 60_000).unwrap_or(2000);
        let tries = self.integer("tuning.retransmit_tries", t, "retransmit_tries", 0, 20).unwrap_or(5);
        Tuning { retransmit_initial: Duration::from_millis(ms as u64), retransmit_tries: tries as u32 }
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

    fn identity(&mut self, key: &str, t: &Table, name: &str, default_ip: Option<Ipv4Addr>) -> Option<Identity> {
        let s = self.string(key, t, name).unwrap_or_else(|| "ip".into());
        if s == "ip" {
            return default_ip.map(Identity::Ipv4);
        }
        if let Some(a) = s.strip_prefix("ip:") {
            return match a.parse() {
                Ok(a) => Some(Identity::Ipv4(a)),
                Err(_) => {
                    self.problem(key, t.get(name), "\"ip:ADDRESS\" needs an IPv4 address");
                    None
                }
            };
        }
        if let Some(n) = s.strip_prefix("fqdn:") {
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if ok {
                return Some(Identity::Fqdn(n.to_string()));
            }
            self.problem(key, t.get(name), "\"fqdn:NAME\" needs a DNS name (letters, digits, '-', dots)");
            return None;
        }
        self.problem(key, t.get(name), "must be \"ip\", \"ip:ADDRESS\" or \"fqdn:NAME\"");
        None
    }

    fn connection(&mut self, key: &str, t: &Table, public: Option<Ipv4Addr>) -> Option<Connection> {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &[
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
            ],
        );
        let name = self.string(&format!("{key}.name"), t, "name");
        match &name {
            None => self.problem(&format!("{key}.name"), None, "required"),
            Some(n) if !valid_name(n) => {
                self.problem(&format!("{key}.name"), t.get("name"), format!("1-64 characters: {NAME_CHARS}"))
            }
            _ => {}
        }
        let remote = self.ipv4(&format!("{key}.remote_address"), t, "remote_address", true);
        let (psk, psk_source) = self.psk(key, t);
        let local_subnets = self.subnets(&format!("{key}.local_subnets"), t, "local_subnets");
        let remote_subnets = self.subnets(&format!("{key}.remote_subnets"), t, "remote_subnets");
        let pairs: Vec<SubnetPair> = local_subnets
            .iter()
            .flat_map(|l| remote_subnets.iter().map(|r| SubnetPair { local: *l, remote: *r }))
            .collect();
        if pairs.len() > 200 {
            self.problem(
                &format!("{key}.remote_subnets"),
                None,
                format!("{} local x remote pairs; at most 200", pairs.len()),
            );
        }
        // Routes to remote subnets point into the tunnel: one holding a gateway's own public
        // address would swallow the IKE and ESP packets that carry the tunnel.
        for r in &remote_subnets {
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
        for l in &local_subnets {
            for r in &remote_subnets {
                if l.covers(r) || r.covers(l) {
                    self.problem(
                        &format!("{key}.remote_subnets"),
                        Some(&Value::String(r.to_string())),
                        format!("overlaps local subnet {l}"),
                    );
                }
            }
        }
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
            Encapsulation::Auto,
            &[("auto", Encapsulation::Auto), ("udp", Encapsulation::Udp)],
        );
        let empty = Table::new();
        let ike = self.table(&format!("{key}.ike"), t, "ike").unwrap_or(&empty);
        let ipsec = self.table(&format!("{key}.ipsec"), t, "ipsec").unwrap_or(&empty);
        let (phase1, mode, local_id, remote_id) = self.ike(&format!("{key}.ike"), ike, public, remote);
        let phase2 = self.ipsec(&format!("{key}.ipsec"), ipsec);
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
            local_id: local_id?,
            remote_id: remote_id?,
            mode,
            phase1,
            phase2,
            subnets: pairs,
            force_udp_encapsulation: encapsulation == Encapsulation::Udp,
            dpd,
        };
        Some(Connection { peer, start, health_check, psk_source })
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
                match std::fs::read(&path) {
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

    fn ike(
        &mut self,
        key: &str,
        t: &Table,
        public: Option<Ipv4Addr>,
        remote: Option<Ipv4Addr>,
    ) -> (Phase1Policy, ExchangeMode, Option<Identity>, Option<Identity>) {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &[
                "version",
                "authentication_method",
                "encryption",
                "authentication",
                "mode",
                "local_id",
                "remote_id",
                "dh_group",
                "lifetime_seconds",
            ],
        );
        self.word(&format!("{key}.version"), t, "version", (), &[("v1", ())]);
        self.word(&format!("{key}.authentication_method"), t, "authentication_method", (), &[("pre-shared-key", ())]);
        let d = Phase1Policy::default();
        let encryption = self.word(&format!("{key}.encryption"), t, "encryption", d.encryption, &cipher_words());
        let hash = self.word(
            &format!("{key}.authentication"),
            t,
            "authentication",
            d.hash,
            &[("md5", HashAlgorithm::Md5), ("sha1", HashAlgorithm::Sha1)],
        );
        let mode = self.word(
            &format!("{key}.mode"),
            t,
            "mode",
            ExchangeMode::Main,
            &[("main", ExchangeMode::Main), ("aggressive", ExchangeMode::Aggressive)],
        );
        let dh_group = self.word(&format!("{key}.dh_group"), t, "dh_group", d.dh_group, &group_words());
        let lifetime = self
            .integer(&format!("{key}.lifetime_seconds"), t, "lifetime_seconds", 60, 604_800)
            .map_or(d.lifetime, |s| Duration::from_secs(s as u64));
        let local_id = self.identity(&format!("{key}.local_id"), t, "local_id", public);
        let remote_id = self.identity(&format!("{key}.remote_id"), t, "remote_id", remote);
        if encryption.spec().weak {
            self.warn(
                &format!("{key}.encryption"),
                encryption.name(),
                "DES is weak (56-bit key); prefer aes-128 or better where the peer allows",
            );
        }
        if hash.spec().weak {
            self.warn(
                &format!("{key}.authentication"),
                hash.name(),
                "MD5 is weak; prefer sha1 or better where the peer allows",
            );
        }
        if dh_group.spec().weak {
            self.warn(
                &format!("{key}.dh_group"),
                dh_group.name(),
                "groups 1 and 2 are weak (768/1024-bit); prefer dh14 or dh24",
            );
        }
        if mode == ExchangeMode::Aggressive {
            self.warn(
                &format!("{key}.mode"),
                "aggressive",
                "aggressive mode with a pre-shared key exposes a hash of the key to offline guessing",
            );
        }
        (Phase1Policy { encryption, hash, dh_group, lifetime }, mode, local_id, remote_id)
    }

    fn ipsec(&mut self, key: &str, t: &Table) -> Phase2Policy {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &["encryption", "authentication", "pfs", "lifetime_seconds", "lifetime_kilobytes"],
        );
        let d = Phase2Policy::default();
        let encryption = self.word(&format!("{key}.encryption"), t, "encryption", d.encryption, &cipher_words());
        let integrity = self.word(
            &format!("{key}.authentication"),
            t,
            "authentication",
            d.integrity,
            &[("md5", IntegrityAlgorithm::HmacMd5_96), ("sha1", IntegrityAlgorithm::HmacSha1_96)],
        );
        let mut pfs_words: Vec<(&str, Option<DhGroup>)> = vec![("disable", None)];
        pfs_words.extend(group_words().into_iter().map(|(w, g)| (w, Some(g))));
        let pfs = self.word(&format!("{key}.pfs"), t, "pfs", None, &pfs_words);
        let lifetime_seconds = self
            .integer(&format!("{key}.lifetime_seconds"), t, "lifetime_seconds", 30, 604_800)
            .map_or(d.lifetime_seconds, |s| s as u32);
        let lifetime_kilobytes = self
            .integer(&format!("{key}.lifetime_kilobytes"), t, "lifetime_kilobytes", 0, 1 << 40)
            .map_or(d.lifetime_kilobytes, |k| k as u64);
        if encryption.spec().weak {
            self.warn(&format!("{key}.encryption"), encryption.name(), "DES is weak (56-bit key)");
        }
        if integrity.spec().weak {
            self.warn(&format!("{key}.authentication"), integrity.name(), "HMAC-MD5 is weak; prefer sha1");
        }
        if let Some(g) = pfs.filter(|g| g.spec().weak) {
            self.warn(&format!("{key}.pfs"), g.name(), "groups 1 and 2 are weak");
        }
        Phase2Policy { encryption, integrity, pfs, lifetime_seconds, lifetime_kilobytes }
    }
}

fn cipher_words() -> Vec<(&'static str, EncryptionAlgorithm)> {
    EncryptionAlgorithm::ALL.iter().map(|a| (a.name(), *a)).collect()
}

fn group_words() -> Vec<(&'static str, DhGroup)> {
    DhGroup::ALL.iter().map(|g| (g.name(), *g)).collect()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
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
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
public_address = "198.51.100.1"

[[connection]]
name = "branch-1"
remote_address = "198.51.100.2"
pre_shared_key = "lab-psk-0123456789abcdef"
local_subnets = ["10.1.0.0/24"]
remote_subnets = ["10.2.0.0/24"]
"#;

    #[test]
    fn defaults_are_the_seed_tables() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        let p = &c.connections[0].peer;
        assert_eq!(p.phase1, Phase1Policy::default());
        assert_eq!(p.phase1.encryption, EncryptionAlgorithm::TripleDes);
        assert_eq!(p.phase1.hash, HashAlgorithm::Md5);
        assert_eq!(p.phase1.dh_group, DhGroup::Modp768);
        assert_eq!(p.phase1.lifetime, Duration::from_secs(86_400));
        assert_eq!(p.mode, ExchangeMode::Main);
        assert_eq!(p.phase2, Phase2Policy::default());
        assert_eq!(p.phase2.pfs, None);
        assert_eq!(p.phase2.lifetime_seconds, 3600);
        assert_eq!(p.local_id, Identity::Ipv4(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(p.remote_id, Identity::Ipv4(Ipv4Addr::new(198, 51, 100, 2)));
        assert_eq!(c.connections[0].start, Start::Active);
        // The cloud gateway's DPD defaults: on, 30 s, clear.
        assert_eq!(p.dpd, Some(DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Clear }));
        assert_eq!(c.gateway.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        // The seed's defaults are weak: warned about, accepted.
        let warned: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            warned,
            ["connection[0].ike.authentication", "connection[0].ike.dh_group", "connection[0].ipsec.authentication"]
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_key_and_no_secret() {
        let text = r#"
[gateway]
public_address = "300.1.1.1"
colour = "blue"

[[connection]]
name = "bad name!"
remote_address = "198.51.100.2"
pre_shared_key = ""
local_subnets = ["10.1.0.1/24"]
remote_subnets = []
start = "sometimes"
[connection.ike]
encryption = "blowfish"
dh_group = "dh15"
local_id = "fqdn:"
lifetime_seconds = 5
[connection.ipsec]
pfs = "yes"
[connection.dpd]
enabled = "yes"
timeout_seconds = 10
action = "reboot"
[connection.health_check]
local_address = "0.0.0.0"
remote_address = "not-an-address"
interval_seconds = 9
unhealthy_after = 2
[metrics]
listen = "everywhere"
"#;
        let Err(ParseError::Invalid(problems)) = Config::parse(text, Path::new(".")) else { panic!("accepted") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "gateway.public_address",
            "gateway.colour",
            "connection[0].name",
            "connection[0].pre_shared_key",
            "connection[0].local_subnets[0]",
            "connection[0].remote_subnets",
            "connection[0].start",
            "connection[0].ike.encryption",
            "connection[0].ike.dh_group",
            "connection[0].ike.local_id",
            "connection[0].ike.lifetime_seconds",
            "connection[0].ipsec.pfs",
            "connection[0].dpd.enabled",
            "connection[0].dpd.timeout_seconds",
            "connection[0].dpd.action",
            "connection[0].health_check.local_address",
            "connection[0].health_check.remote_address",
            "connection[0].health_check.interval_seconds",
            "connection[0].health_check.unhealthy_after",
            "metrics.listen",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|t| t.contains("must be one of: des, 3des, aes-128, aes-192, aes-256")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("did you mean 10.1.0.0/24")), "{text:?}");
    }

    #[test]
    fn esp_output_is_link_unless_set_to_ip() {
        let with = |line: &str| MINIMAL.replace("[[connection]]", &format!("{line}\n\n[[connection]]"));
        assert_eq!(Config::parse(MINIMAL, Path::new(".")).unwrap().gateway.esp_output, EspOutput::Link);
        let c = Config::parse(&with("esp_output = \"ip\""), Path::new(".")).unwrap();
        assert_eq!(c.gateway.esp_output, EspOutput::Ip);
        let Err(ParseError::Invalid(problems)) = Config::parse(&with("esp_output = \"xdp\""), Path::new(".")) else {
            panic!("esp_output = xdp accepted")
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "gateway.esp_output");
        assert!(problems[0].to_string().contains("must be one of: link, ip"), "{}", problems[0]);
    }

    #[test]
    fn worker_cores_are_a_list_of_distinct_cpu_numbers() {
        let with = |line: &str| MINIMAL.replace("[[connection]]", &format!("{line}\n\n[[connection]]"));
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!((c.gateway.workers, c.gateway.worker_cores.clone()), (0, vec![]), "default: the allowed cores");
        let c = Config::parse(&with("worker_cores = [2, 0, 3]"), Path::new(".")).unwrap();
        assert_eq!(c.gateway.worker_cores, [2, 0, 3], "in the order given");
        for (line, shown) in [
            ("worker_cores = [1, 1]", "1"),
            ("worker_cores = [0, -1]", "-1"),
            ("worker_cores = [4096]", "4096"),
            ("worker_cores = [\"0\"]", "\"0\""),
            ("worker_cores = 3", "3"),
        ] {
            let Err(ParseError::Invalid(problems)) = Config::parse(&with(line), Path::new(".")) else {
                panic!("{line} accepted")
            };
            let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["gateway.worker_cores"], "{line}");
            assert_eq!(problems[0].value, shown, "{line}: the offending value is shown");
        }
    }

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

    #[test]
    fn psk_file_and_fqdn_ids() {
        let dir = std::env::temp_dir().join(format!("vpngw-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.psk"), "secret-from-file\n").unwrap();
        let text = MINIMAL.replace("pre_shared_key = \"lab-psk-0123456789abcdef\"", "pre_shared_key_file = \"k.psk\"")
            + "[connection.ike]\nmode = \"aggressive\"\nlocal_id = \"fqdn:left.lab.example\"\nremote_id = \"fqdn:right.lab.example\"\n";
        let c = Config::parse(&text, &dir).unwrap();
        let p = &c.connections[0].peer;
        assert_eq!(p.psk.expose(), b"secret-from-file");
        assert_eq!(p.local_id, Identity::Fqdn("left.lab.example".into()));
        assert_eq!(p.mode, ExchangeMode::Aggressive);
        assert!(c.connections[0].psk_source.starts_with("file "));
        std::fs::remove_dir_all(dir).ok();
    }
}
