//! What the engine is told about each peer. The daemon builds these from its TOML; the engine
//! never reads files.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;

use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm, SecretBytes};

use crate::wire::{IdPayload, IdType};

/// A phase 1 identity (RFC 2407 s.4.6.2.1): the two kinds the seed offers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Ipv4(Ipv4Addr),
    Fqdn(String),
}

impl Identity {
    /// As sent in phase 1: protocol and port 0 (strongSwan sends 0/0 and accepts anything).
    pub fn to_payload(&self) -> IdPayload {
        match self {
            Self::Ipv4(a) => IdPayload { id_type: IdType::IPV4_ADDR, protocol: 0, port: 0, data: a.octets().to_vec() },
            Self::Fqdn(n) => IdPayload { id_type: IdType::FQDN, protocol: 0, port: 0, data: n.as_bytes().to_vec() },
        }
    }

    /// From a received phase 1 ID payload; `None` for kinds vpngw does not use.
    pub fn from_payload(id: &IdPayload) -> Option<Self> {
        match id.id_type {
            IdType::IPV4_ADDR => <[u8; 4]>::try_from(&id.data[..]).ok().map(|o| Self::Ipv4(Ipv4Addr::from(o))),
            IdType::FQDN => core::str::from_utf8(&id.data).ok().map(|s| Self::Fqdn(s.to_string())),
            _ => None,
        }
    }

    /// FQDNs compare case-insensitively (DNS names; strongSwan does the same).
    pub fn matches(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Ipv4(a), Self::Ipv4(b)) => a == b,
            (Self::Fqdn(a), Self::Fqdn(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4(a) => write!(f, "ip:{a}"),
            Self::Fqdn(n) => write!(f, "fqdn:{n}"),
        }
    }
}

/// An IPv4 subnet (a protected network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(try_from = "String", into = "String")
)]
pub struct Ipv4Subnet(Ipv4Net);

impl Ipv4Subnet {
    /// The network address is masked: 10.1.0.7/24 becomes 10.1.0.0/24. `None` if prefix > 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        Ipv4Net::new(addr, prefix).ok().map(|n| Self(n.trunc()))
    }

    /// As the workspace's network type (the dataplane's selectors, routes).
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn mask(&self) -> Ipv4Addr {
        self.0.netmask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    /// Whether `other` lies wholly inside this subnet.
    pub fn covers(&self, other: &Self) -> bool {
        self.0.contains(&other.0)
    }

    /// As a quick mode identity: ID_IPV4_ADDR_SUBNET (address and mask), any protocol and port.
    pub fn to_payload(&self) -> IdPayload {
        let mut data = self.addr().octets().to_vec();
        data.extend_from_slice(&self.mask().octets());
        IdPayload { id_type: IdType::IPV4_ADDR_SUBNET, protocol: 0, port: 0, data }
    }

    /// From a quick mode identity: ID_IPV4_ADDR_SUBNET with a contiguous mask, or ID_IPV4_ADDR
    /// (a /32, as strongSwan sends host selectors). Protocol and port must be "any".
    pub fn from_payload(id: &IdPayload) -> Option<Self> {
        if id.protocol != 0 || id.port != 0 {
            return None;
        }
        match id.id_type {
            IdType::IPV4_ADDR => {
                let o = <[u8; 4]>::try_from(&id.data[..]).ok()?;
                Self::new(Ipv4Addr::from(o), 32)
            }
            IdType::IPV4_ADDR_SUBNET => {
                let a = <[u8; 4]>::try_from(id.data.get(..4)?).ok()?;
                let m = <[u8; 4]>::try_from(id.data.get(4..8)?).ok()?;
                if id.data.len() != 8 {
                    return None;
                }
                // A mask that is not contiguous has no prefix length: refused.
                Self::new(Ipv4Addr::from(a), ipnet::ipv4_mask_to_prefix(Ipv4Addr::from(m)).ok()?)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `a.b.c.d/len`, as [`Ipv4Subnet`]'s `Display` writes it.
impl std::str::FromStr for Ipv4Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: Ipv4Net = s.parse().map_err(|_| format!("{s:?} is not an IPv4 subnet (a.b.c.d/len)"))?;
        Ok(Self(net.trunc()))
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Subnet> for String {
    fn from(s: Ipv4Subnet) -> Self {
        s.to_string()
    }
}

/// One local/remote protected-network pair: one quick mode, one pair of ESP SAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SubnetPair {
    pub local: Ipv4Subnet,
    pub remote: Ipv4Subnet,
}

impl fmt::Display for SubnetPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <=> {}", self.local, self.remote)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ExchangeMode {
    Main,
    Aggressive,
}

impl fmt::Display for ExchangeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Main => "main",
            Self::Aggressive => "aggressive",
        })
    }
}

/// Phase 1 parameters (the seed's first table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase1Policy {
    pub encryption: EncryptionAlgorithm,
    pub hash: HashAlgorithm,
    pub dh_group: DhGroup,
    pub lifetime: Duration,
}

impl Default for Phase1Policy {
    /// The seed's defaults: 3DES, MD5, DH1, 86400 s.
    fn default() -> Self {
        Self {
            encryption: EncryptionAlgorithm::TripleDes,
            hash: HashAlgorithm::Md5,
            dh_group: DhGroup::Modp768,
            lifetime: Duration::from_secs(86_400),
        }
    }
}

/// Phase 2 parameters (the seed's second table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase2Policy {
    pub encryption: EncryptionAlgorithm,
    pub integrity: IntegrityAlgorithm,
    pub pfs: Option<DhGroup>,
    pub lifetime_seconds: u32,
    pub lifetime_kilobytes: u64,
}

impl Phase2Policy {
    /// The volume lifetime, if any (0 configured: none).
    pub fn volume_limit(&self) -> Option<u64> {
        (self.lifetime_kilobytes > 0).then_some(self.lifetime_kilobytes)
    }
}

impl Default for Phase2Policy {
    /// The seed's defaults: 3DES, MD5, no PFS, 3600 s; Tencent's 1,843,200 KB.
    fn default() -> Self {
        Self {
            encryption: EncryptionAlgorithm::TripleDes,
            integrity: IntegrityAlgorithm::HmacMd5_96,
            pfs: None,
            lifetime_seconds: 3600,
            lifetime_kilobytes: 1_843_200,
        }
    }
}

/// What dead peer detection does when the peer stays silent for `timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpdAction {
    /// Delete the SAs (an active connection then reconnects with backoff).
    Clear,
    /// Delete the SAs and negotiate again at once.
    Restart,
}

impl fmt::Display for DpdAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Clear => "clear",
            Self::Restart => "restart",
        })
    }
}

/// Dead peer detection (RFC 3706), in the cloud gateway's terms: on or off, a timeout of
/// 30-60 s, an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpdPolicy {
    pub timeout: Duration,
    pub action: DpdAction,
}

impl DpdPolicy {
    /// Probe after this much silence (and again as long as it lasts).
    pub fn delay(&self) -> Duration {
        (self.timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

impl Default for DpdPolicy {
    /// The cloud gateway's defaults: enabled, 30 s, clear.
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), action: DpdAction::Clear }
    }
}

/// Everything the engine needs to negotiate with one peer gateway.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The connection's name (unique): in events, status and logs.
    pub name: String,
    pub local_address: IpAddr,
    pub remote_address: IpAddr,
    pub psk: SecretBytes,
    pub local_id: Identity,
    pub remote_id: Identity,
    pub mode: ExchangeMode,
    pub phase1: Phase1Policy,
    pub phase2: Phase2Policy,
    pub subnets: Vec<SubnetPair>,
    /// Always carry ESP in UDP port 4500, NAT or not (like strongSwan's `encap = yes`): our
    /// NAT-D hash for ourselves is made random, so that the peer sees a NAT too. For paths that
    /// drop IP protocol 50.
    pub force_udp_encapsulation: bool,
    /// Dead peer detection; None = off (we still answer the peer's probes).
    pub dpd: Option<DpdPolicy>,
}

/// Engine-wide behaviour.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// First retransmission after this long; each later one waits `retransmit_factor` times
    /// longer; after `retransmit_tries` retransmissions the exchange has failed.
    pub retransmit_initial: Duration,
    pub retransmit_factor: u32,
    pub retransmit_tries: u32,
    /// A responder's IKE SA that is not established after this long is dropped.
    pub half_open_timeout: Duration,
    /// How long our first message waits, unsent, while the peer's crossing exchange (which won
    /// the crossed-initiation rule) gets the chance to authenticate; then ours goes on.
    pub crossed_pause: Duration,
    /// Responder IKE SAs not yet authenticated, per connection (a new one evicts the oldest)
    /// and in total (new ones are refused): anyone can send first messages from a peer's
    /// address.
    pub half_open_per_peer: usize,
    pub half_open_total: usize,
    /// Diffie-Hellman computations that unauthenticated messages may cause (aggressive mode's
    /// first message, main mode's third), per connection and in total, per second.
    pub dh_per_peer_per_second: u32,
    pub dh_total_per_second: u32,
    /// Main mode's Diffie-Hellman is handed to the driver as work ([`crate::dh_work`]) instead
    /// of computed where the message is handled.
    pub dh_offload: bool,
}

impl Default for EngineConfig {
    /// 2 s doubling, 5 retransmissions: a dead peer is declared after 62 s (strongSwan: 4 s x 1.8,
    /// 5 tries, 165 s).
    fn default() -> Self {
        Self {
            retransmit_initial: Duration::from_secs(2),
            retransmit_factor: 2,
            retransmit_tries: 5,
            half_open_timeout: Duration::from_secs(30),
            crossed_pause: Duration::from_secs(10),
            half_open_per_peer: 8,
            half_open_total: 1024,
            // A responder's DH costs two exponentiations: about 1.2 ms with dh14 here
            // (docs/performance.md), so the total is about a quarter of a core at most.
            dh_per_peer_per_second: 20,
            dh_total_per_second: 200,
            dh_offload: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_mask_and_round_trip() {
        let s = Ipv4Subnet::new(Ipv4Addr::new(10, 1, 0, 7), 24).unwrap();
        assert_eq!(s.to_string(), "10.1.0.0/24");
        assert!(s.contains(Ipv4Addr::new(10, 1, 0, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 1, 1, 0)));
        assert_eq!(Ipv4Subnet::from_payload(&s.to_payload()), Some(s));
        let host = IdPayload { id_type: IdType::IPV4_ADDR, protocol: 0, port: 0, data: vec![10, 1, 0, 9] };
        assert_eq!(Ipv4Subnet::from_payload(&host).unwrap().to_string(), "10.1.0.9/32");
        assert!(s.covers(&Ipv4Subnet::from_payload(&host).unwrap()));
        let holey = IdPayload {
            id_type: IdType::IPV4_ADDR_SUBNET,
            protocol: 0,
            port: 0,
            data: vec![10, 0, 0, 0, 255, 0, 255, 0],
        };
        assert_eq!(Ipv4Subnet::from_payload(&holey), None);
        assert_eq!(Ipv4Subnet::new(Ipv4Addr::new(0, 0, 0, 0), 0).unwrap().mask(), Ipv4Addr::new(0, 0, 0, 0));
        assert!(Ipv4Subnet::new(Ipv4Addr::new(1, 2, 3, 4), 33).is_none());
        assert_eq!("10.1.0.7/24".parse::<Ipv4Subnet>(), Ok(s));
        for bad in ["10.1.0.0/33", "10.1.0.0", "10.1.0/24", "x/8"] {
            assert!(bad.parse::<Ipv4Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identities() {
        let f = Identity::Fqdn("Left.Lab.Example".into());
        assert!(f.matches(&Identity::Fqdn("left.lab.example".into())));
        assert_eq!(Identity::from_payload(&f.to_payload()), Some(f.clone()));
        let ip = Identity::Ipv4(Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(Identity::from_payload(&ip.to_payload()), Some(ip.clone()));
        assert!(!ip.matches(&f));
        assert_eq!(ip.to_string(), "ip:198.51.100.1");
    }
}
