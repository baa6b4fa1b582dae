//! What the engine tells its driver: SAs that came up or went away, and failures with a reason
//! from a fixed set.

use core::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm};
use vpngw_esp::{SaKeys, Spi};

use crate::config::{ExchangeMode, SubnetPair};
use crate::proposal::Encapsulation;

/// Engine-local handle of an IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    Initiator,
    Responder,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initiator => "initiator",
            Self::Responder => "responder",
        })
    }
}

/// Why a negotiation failed: a closed set (modelled on Huawei's negotiation-failure codes), used
/// as log field and metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    Phase1ProposalMismatch,
    Phase2ProposalMismatch,
    PfsMismatch,
    /// Wrong pre-shared key (recognised from its symptoms), or the peer said AUTHENTICATION-FAILED.
    AuthenticationFailed,
    IdMismatch,
    TrafficSelectorMismatch,
    /// Main vs aggressive mode, or tunnel vs transport.
    ModeMismatch,
    /// The peer speaks IKEv2 (or another version) to us.
    VersionMismatch,
    /// No answer after all retransmissions.
    PeerUnreachable,
    MalformedMessage,
    NatDetectionFailed,
    /// A datagram from an address no connection is configured for.
    UnknownPeer,
}

impl FailReason {
    pub const ALL: [Self; 12] = [
        Self::Phase1ProposalMismatch,
        Self::Phase2ProposalMismatch,
        Self::PfsMismatch,
        Self::AuthenticationFailed,
        Self::IdMismatch,
        Self::TrafficSelectorMismatch,
        Self::ModeMismatch,
        Self::VersionMismatch,
        Self::PeerUnreachable,
        Self::MalformedMessage,
        Self::NatDetectionFailed,
        Self::UnknownPeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phase1ProposalMismatch => "phase1-proposal-mismatch",
            Self::Phase2ProposalMismatch => "phase2-proposal-mismatch",
            Self::PfsMismatch => "pfs-mismatch",
            Self::AuthenticationFailed => "authentication-failed",
            Self::IdMismatch => "id-mismatch",
            Self::TrafficSelectorMismatch => "traffic-selector-mismatch",
            Self::ModeMismatch => "mode-mismatch",
            Self::VersionMismatch => "version-mismatch",
            Self::PeerUnreachable => "peer-unreachable",
            Self::MalformedMessage => "malformed-message",
            Self::NatDetectionFailed => "nat-detection-failed",
            Self::UnknownPeer => "unknown-peer",
        }
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an SA went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Our side ended it (`vpngw down`, shutdown, configuration removed).
    Local,
    /// The peer sent a Delete.
    PeerDeleted,
    /// Its lifetime ran out.
    Expired,
    /// Its IKE SA went away.
    IkeSaGone,
    /// Replaced by a newer SA pair for the same selectors (rekey).
    Rekeyed,
    /// The quick mode that was installing it never completed.
    Abandoned,
    /// Dead peer detection declared the peer dead.
    DeadPeer,
    /// Replaced by a new IKE SA with the same peer (re-authentication); its child SAs live on
    /// under the new one.
    Reauthenticated,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "deleted locally",
            Self::PeerDeleted => "deleted by peer",
            Self::Expired => "expired",
            Self::IkeSaGone => "IKE SA gone",
            Self::Rekeyed => "replaced by a rekeyed SA",
            Self::Abandoned => "quick mode not completed",
            Self::DeadPeer => "peer dead (DPD)",
            Self::Reauthenticated => "replaced by a re-authenticated IKE SA",
        })
    }
}

/// A negotiated pair of ESP SAs, ready for the dataplane.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ChildSa {
    /// Our inbound SPI (chosen by us, carried in our SA payload).
    pub spi_in: Spi,
    /// Our outbound SPI (chosen by the peer).
    pub spi_out: Spi,
    pub keys_in: SaKeys,
    pub keys_out: SaKeys,
    pub selectors: SubnetPair,
    pub encryption: EncryptionAlgorithm,
    pub integrity: IntegrityAlgorithm,
    pub pfs: Option<DhGroup>,
    pub lifetime_seconds: u64,
    pub lifetime_kilobytes: Option<u64>,
    pub encapsulation: Encapsulation,
    /// Outer addresses (and, for ESP-in-UDP, ports) of the tunnel.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Our role in the quick mode that made it.
    pub role: Role,
}

/// Where a child SA pair is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ChildSaState {
    /// Inbound installed, outbound not yet in use (responder before QM3; initiator waiting to
    /// switch from an older pair).
    Installing,
    /// Carries outbound traffic.
    Active,
    /// A newer pair took over; this one goes after a grace period.
    Replaced,
}

impl ChildSaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installing => "installing",
            Self::Active => "active",
            Self::Replaced => "replaced",
        }
    }
}

impl fmt::Display for ChildSaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, for the driver to act on. Child SAs come in two steps (make-before-break):
/// `ChildSaEstablished` means "install the inbound SA; keep the outbound one ready";
/// `ChildSaActive` means "send with it now", replacing any older outbound SA for the same
/// selectors.
#[derive(Clone, Debug)]
pub enum Event {
    IkeSaEstablished {
        peer: String,
        ike_sa: IkeSaId,
        role: Role,
        mode: ExchangeMode,
        local: SocketAddr,
        remote: SocketAddr,
        encryption: EncryptionAlgorithm,
        hash: HashAlgorithm,
        dh_group: DhGroup,
        lifetime_seconds: u64,
        nat_detected: bool,
    },
    ChildSaEstablished {
        peer: String,
        ike_sa: IkeSaId,
        child: ChildSa,
    },
    ChildSaActive {
        peer: String,
        spi_in: Spi,
        spi_out: Spi,
    },
    ChildSaDeleted {
        peer: String,
        spi_in: Spi,
        spi_out: Spi,
        reason: DeleteReason,
    },
    IkeSaDeleted {
        peer: String,
        ike_sa: IkeSaId,
        reason: DeleteReason,
    },
    NegotiationFailed {
        /// The connection, when the datagram could be tied to one.
        peer: Option<String>,
        remote: SocketAddr,
        reason: FailReason,
        /// What differed, in the configuration's words; never key material.
        detail: String,
        /// The engine logged this failure itself, at WARN (dead peer detection): the gateway
        /// records it without a second line.
        logged: bool,
    },
}

/// Where an IKE SA stands. Renders as the words status, JSON, metrics and the API show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IkeSaState {
    /// Main mode under way.
    NegotiatingMain,
    /// Aggressive mode under way.
    NegotiatingAggressive,
    Established,
    Deleted,
}

impl IkeSaState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NegotiatingMain => "negotiating (main mode)",
            Self::NegotiatingAggressive => "negotiating (aggressive mode)",
            Self::Established => "established",
            Self::Deleted => "deleted",
        }
    }
}

impl fmt::Display for IkeSaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one IKE SA, for status displays.
#[derive(Clone, Debug, PartialEq)]
pub struct IkeSaInfo {
    pub id: IkeSaId,
    pub peer: String,
    pub role: Role,
    pub state: IkeSaState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The ISAKMP cookies (public: they are in every message's header).
    pub initiator_cookie: [u8; 8],
    /// Zero until the responder answered.
    pub responder_cookie: [u8; 8],
    pub encryption: Option<EncryptionAlgorithm>,
    pub hash: Option<HashAlgorithm>,
    pub dh_group: Option<DhGroup>,
    pub nat_detected: bool,
    pub established_at: Option<Instant>,
    pub expires_at: Option<Instant>,
    pub children: Vec<ChildSaInfo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChildSaInfo {
    pub spi_in: Spi,
    pub spi_out: Spi,
    pub selectors: SubnetPair,
    pub encryption: EncryptionAlgorithm,
    pub integrity: IntegrityAlgorithm,
    pub pfs: Option<DhGroup>,
    pub encapsulation: Encapsulation,
    pub state: ChildSaState,
    pub established_at: Instant,
    pub expires_at: Instant,
    /// When a replacement starts (None once under way, or when the peer is expected to do it).
    pub rekey_at: Option<Instant>,
    pub lifetime_kilobytes: Option<u64>,
}
