//! The configuration file (TOML): the gateway's public interface. Defaults are the seed's tables.
//!
//! Parsing walks the document by hand instead of deriving, so that an invalid file yields every
//! problem at once, each with its key (`connection[1].ike.encryption`), the value and the
//! reason. Secrets never appear in problems: a bad `pre_shared_key` is shown as `<redacted>`.
//!
//! This file holds the model, the entry points and the root walk; the walker's primitives and
//! the [`Problem`] they record are in `walker.rs` and the sections' parsers follow
//! docs/configuration.md: `gateway.rs` (`[gateway]`, `[metrics]`, `[api]`, `[tuning]`), `ha.rs` (`[ha]`),
//! `connection.rs` (`[[connection]]` with its `dpd` and `health_check`) and `ike_ipsec.rs`
//! (`[connection.ike]`, `[connection.ipsec]`).

mod connection;
mod gateway;
mod ha;
mod ike_ipsec;
mod spans;
mod walker;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Table;
use vpngw_ike::PeerConfig;

pub use connection::overlap;
pub use ha::{Ha, SequenceJump};
use walker::Walker;
pub use walker::{Position, Problem, loose_secret_mode};

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vpngw/vpngw.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid TOML: {}", error.text)]
    Syntax { path: PathBuf, error: SyntaxError },
    #[error("{path}: {} problem(s)", problems.len())]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// When ESP travels in UDP 4500 (a connection's `encapsulation`). Not the negotiated
/// encapsulation mode of a child SA, which is `vpngw_ike::Encapsulation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpEncapsulation {
    /// `auto`: when a NAT is detected (RFC 3947), raw ESP otherwise.
    WhenNatDetected,
    /// `udp`: always (for paths that drop IP protocol 50).
    Always,
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
    /// `tcp_mss_clamp`: how the MSS of TCP SYNs crossing the tunnel is clamped.
    pub tcp_mss_clamp: TcpMssClamp,
}

/// `[gateway] tcp_mss_clamp`: `"auto"` (derived from the TUN MTU, the path MTU and each SA's
/// ESP overhead), a fixed MSS (536-9176), or `"off"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpMssClamp {
    Off,
    #[default]
    Auto,
    Fixed(u16),
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
    /// HTTPS with this certificate and key; None: plain HTTP (loopback, or `insecure_plaintext`).
    pub tls: Option<ApiTls>,
    /// `insecure_plaintext = true`: plain HTTP on a non-loopback address, by the user's choice
    /// (warned about at start).
    pub insecure_plaintext: bool,
}

impl Api {
    /// `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// The API's certificate chain and private key (PEM files, read at start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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
    /// Diffie-Hellman computations unauthenticated messages may cause per second, in total
    /// (the engine's admission bound, issue 8): a gateway with thousands of peers that
    /// connect at once raises it as far as its cores allow.
    pub dh_per_second: u32,
    /// Responder IKE SAs not yet authenticated, in total.
    pub half_open: usize,
    /// Threads that compute main mode's Diffie-Hellman (`dh_pool.rs`); 0 computes on the
    /// loop thread. Default: one per CPU the daemon may run on.
    pub dh_threads: usize,
}

/// One Diffie-Hellman thread per CPU this process may run on (its affinity mask, as the
/// container or systemd set it).
pub fn default_dh_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DH_THREADS))
}

pub const MAX_DH_THREADS: usize = 64;

impl Default for Tuning {
    fn default() -> Self {
        let engine = vpngw_ike::EngineConfig::default();
        let dh_threads = default_dh_threads();
        Self {
            retransmit_initial: engine.retransmit_initial,
            retransmit_tries: engine.retransmit_tries,
            dh_per_second: default_dh_per_second(dh_threads),
            half_open: engine.half_open_total,
            dh_threads,
        }
    }
}

/// Diffie-Hellman per second by default: the engine's 200 (about a quarter of one core with
/// dh14) for each thread that computes, the loop counting as one when there is no pool. A
/// flood then costs at most a quarter of the cores that compute, and a gateway on more cores
/// brings thousands of peers up sooner after a restart.
pub fn default_dh_per_second(dh_threads: usize) -> u32 {
    let per_thread = vpngw_ike::EngineConfig::default().dh_total_per_second;
    per_thread.saturating_mul(u32::try_from(dh_threads.max(1)).unwrap_or(u32::MAX))
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
    /// `pre_shared_key_file`, as read (None: the key is inline). `vpngw check --host` looks at it.
    pub psk_file: Option<PathBuf>,
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
    /// None: no hot backup (this server is always active).
    pub ha: Option<Ha>,
    pub connections: Vec<Connection>,
    /// Weak but accepted choices (the seed's defaults include some): printed by `vpngw check`
    /// and logged at start.
    pub warnings: Vec<Problem>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let mut file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read)?;
        let mut config = Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
            ParseError::Syntax(error) => ConfigError::Syntax { path: path.to_path_buf(), error },
            ParseError::Invalid(problems) => ConfigError::Invalid { path: path.to_path_buf(), problems },
        })?;
        config.warn_inline_keys(path, &meta, &text);
        Ok(config)
    }

    /// A warning when the file holds keys (`pre_shared_key = "..."`) and others may read it.
    fn warn_inline_keys(&mut self, path: &Path, meta: &std::fs::Metadata, text: &str) {
        let inline: Vec<(usize, &Connection)> =
            self.connections.iter().enumerate().filter(|(_, c)| c.psk_source == "inline").collect();
        if let (Some((first, _)), Some(reason)) = (inline.first(), walker::loose_secret_mode(path, meta)) {
            let names: Vec<String> = inline.iter().map(|(_, c)| format!("{:?}", c.peer.name)).collect();
            let mut warning = [Problem {
                key: format!("connection[{first}].pre_shared_key"),
                value: "<redacted>".into(),
                reason: format!(
                    "the file holds the keys of connection(s) {} inline, and {reason} (or move the keys to pre_shared_key_file)",
                    names.join(", ")
                ),
                ..Problem::default()
            }];
            locate(text, &mut warning);
            self.warnings.extend(warning);
        }
    }

    /// Parses a configuration; relative `pre_shared_key_file` paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ParseError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            ParseError::Syntax(SyntaxError {
                text: e.to_string(),
                message: e.message().trim_end().to_string(),
                at: e.span().map(|s| spans::position(text, s.start)),
            })
        })?;
        let mut w = Walker::new(base);
        let config = w.config(&table);
        if w.problems.is_empty()
            && let Some(mut c) = config
        {
            c.warnings = w.warnings;
            spans::locate(text, &table, &mut c.warnings);
            Ok(c)
        } else {
            spans::locate(text, &table, &mut w.problems);
            Err(ParseError::Invalid(w.problems))
        }
    }
}

/// One connection from its table (the API's body, a state-file entry): the same keys, checks
/// and problem keys as in the configuration file, under `prefix`.
pub fn parse_connection(t: &Table, public: Ipv4Addr, base: &Path, prefix: &str) -> Result<Connection, Vec<Problem>> {
    let mut w = Walker::new(base);
    let c = w.connection(prefix, t, Some(public));
    match c {
        Some(c) if w.problems.is_empty() => Ok(c),
        _ => Err(w.problems),
    }
}

/// Gives problems found outside the walk (`vpngw check --host`), keyed like the walker's, their
/// connection's name and their place in `text`, the configuration file they are about.
pub fn locate(text: &str, problems: &mut [Problem]) {
    if let Ok(root) = text.parse::<Table>() {
        spans::locate(text, &root, problems);
    }
}

#[derive(Debug)]
pub enum ParseError {
    Syntax(SyntaxError),
    Invalid(Vec<Problem>),
}

/// Why a file is not TOML, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The parser's whole text: the position, the line with a caret under the place, the message.
    pub text: String,
    /// The message alone.
    pub message: String,
    pub at: Option<Position>,
}

impl Walker {
    /// The whole document: the sections, then the rules across connections.
    fn config(&mut self, root: &Table) -> Option<Config> {
        self.unknown_keys("", root, &["gateway", "connection", "tuning", "metrics", "api", "ha"]);
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
            None => Tuning::default(),
        };
        let empty = Table::new();
        let metrics_table = self.table("metrics", root, "metrics").unwrap_or(&empty).clone();
        let metrics = self.metrics(metrics_table);
        let api = match self.table("api", root, "api") {
            Some(t) => self.api(&t.clone()),
            None => None,
        };
        let ha = match self.table("ha", root, "ha") {
            Some(t) => self.ha(&t.clone()),
            None => None,
        };
        let connections = self.connections(root, gateway.as_ref().map(|g| g.public_address));
        Some(Config { gateway: gateway?, tuning, metrics, api, ha, connections, warnings: Vec::new() })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm};
    use vpngw_ike::{DpdAction, DpdPolicy, ExchangeMode, Identity, Phase1Policy, Phase2Policy};

    use super::*;

    /// The smallest valid file: the seed's defaults for everything optional.
    pub(crate) const MINIMAL: &str = r#"
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
    fn a_file_with_inline_keys_that_others_may_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vpngw-inline-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vpngw.toml");
        let inline_warning = |mode: u32, text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = Config::load(&path).unwrap();
            c.warnings.iter().find(|w| w.reason.contains("inline")).map(ToString::to_string)
        };
        let w = inline_warning(0o644, MINIMAL).expect("no warning at 0644");
        let shown = path.display().to_string();
        assert!(w.starts_with("connection \"branch-1\".pre_shared_key = <redacted>"), "{w}");
        assert!(w.contains("the keys of connection(s) \"branch-1\" inline"), "{w}");
        assert!(w.contains(&format!("{shown} has mode 0644")) && w.contains(&format!("chmod 600 {shown}")), "{w}");
        assert!(!w.contains("lab-psk"), "{w}");
        assert!(inline_warning(0o640, MINIMAL).is_some(), "group-readable not warned about");
        assert_eq!(inline_warning(0o600, MINIMAL), None);
        // Keys in files only: the configuration file holds no secret.
        std::fs::write(dir.join("k.psk"), "secret-from-file\n").unwrap();
        std::fs::set_permissions(dir.join("k.psk"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let from_file =
            MINIMAL.replace("pre_shared_key = \"lab-psk-0123456789abcdef\"", "pre_shared_key_file = \"k.psk\"");
        assert_eq!(inline_warning(0o644, &from_file), None);
        std::fs::remove_dir_all(dir).ok();
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
}
