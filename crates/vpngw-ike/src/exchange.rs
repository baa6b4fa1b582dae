//! The plumbing every exchange shares, at the bottom of the crate: what a handler gets from the
//! endpoint ([`Ctx`]) and sees of a datagram ([`Received`]), what it sends ([`Transmit`]), how
//! requests are resent ([`Retransmit`]), and the one error type of protocol failures
//! ([`ProtocolError`]), which knows the notify it sends to the peer.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

use crate::config::EngineConfig;
use crate::dh_work::{DhResult, DhTask, DhWork};
use crate::event::{Event, FailReason, IkeSaId};
use crate::spi::SpiPool;
use crate::wire::{IsakmpHeader, NotifyType, WireError};

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;
/// Nonce length we send (RFC 2409 allows 8..256; strongSwan sends 32).
pub(crate) const NONCE_LEN: usize = 32;

/// A datagram for the driver to send. `payload` is the ISAKMP message; on port 4500 the driver
/// prepends the 4-byte non-ESP marker (RFC 3948 s.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
}

/// What an exchange handler gets from the endpoint.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub rng: &'a mut FastRng,
    pub config: &'a EngineConfig,
    pub out: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    pub spis: &'a mut SpiPool,
    pub messages: &'a mut crate::endpoint::MessageCounters,
    /// Diffie-Hellman work for the driver, when it is offloaded (`dh_work.rs`).
    pub dh_work: &'a mut VecDeque<DhWork>,
}

impl Ctx<'_> {
    /// Runs `task` for IKE SA `ike_sa` now and returns its result, or, when the configuration
    /// offloads Diffie-Hellman, queues it for the driver and returns nothing.
    pub fn diffie_hellman(&mut self, ike_sa: IkeSaId, task: DhTask) -> Option<DhResult> {
        if self.config.dh_offload {
            self.dh_work.push_back(DhWork::new(ike_sa, task));
            None
        } else {
            Some(task.run())
        }
    }

    /// `n` random bytes (nonces).
    pub fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill_bytes(&mut v);
        v
    }
}

/// The endpoint's view of a received datagram.
pub(crate) struct Received<'a> {
    pub header: IsakmpHeader,
    pub data: &'a [u8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A message waiting for its answer, resent with exponential backoff.
#[derive(Debug, Clone)]
pub(crate) struct Retransmit {
    pub packet: Vec<u8>,
    pub next_at: Instant,
    pub interval: Duration,
    pub tries_left: u32,
}

/// Outcome of a due retransmission timer.
pub(crate) enum RetransmitDue {
    Resend(Vec<u8>),
    GiveUp,
    NotYet,
}

impl Retransmit {
    pub fn new(packet: Vec<u8>, ctx: &Ctx<'_>) -> Self {
        Self {
            packet,
            next_at: ctx.now + ctx.config.retransmit_initial,
            interval: ctx.config.retransmit_initial,
            tries_left: ctx.config.retransmit_tries,
        }
    }

    /// Holds the request until `at`, then sends it again on a fresh schedule (a paused
    /// exchange resuming: it has all its retransmissions left).
    pub fn restart_at(&mut self, at: Instant, config: &EngineConfig) {
        self.next_at = at;
        self.interval = config.retransmit_initial;
        self.tries_left = config.retransmit_tries;
    }

    pub fn poll(&mut self, now: Instant, factor: u32) -> RetransmitDue {
        if now < self.next_at {
            return RetransmitDue::NotYet;
        }
        if self.tries_left == 0 {
            return RetransmitDue::GiveUp;
        }
        self.tries_left -= 1;
        self.interval *= factor.max(1);
        self.next_at = now + self.interval;
        RetransmitDue::Resend(self.packet.clone())
    }
}

/// The hash by which a retransmitted request is recognised.
pub(crate) fn packet_hash(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

/// Whether a received HASH equals the expected one, in constant time.
pub(crate) fn hash_matches(received: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    received.len() == expected.len() && bool::from(received.ct_eq(expected))
}

pub(crate) fn nonzero_cookie(rng: &mut FastRng) -> [u8; 8] {
    loop {
        let mut c = [0u8; 8];
        rng.fill_bytes(&mut c);
        if c != [0; 8] {
            return c;
        }
    }
}

/// A failure found while handling a message: the reason reported to the driver, a detail for
/// the operator, and by its kind the notify the peer gets ([`ProtocolError::notify`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// The peer is not told (it would not understand, or we cannot reach it).
    #[error("{detail}")]
    Unannounced { reason: FailReason, detail: String },
    /// PAYLOAD-MALFORMED: the message could not be read.
    #[error("{detail}")]
    Malformed { reason: FailReason, detail: String },
    /// INVALID-PAYLOAD-TYPE: a payload the exchange needs is missing.
    #[error("{0}")]
    MissingPayload(String),
    /// NO-PROPOSAL-CHOSEN.
    #[error("{detail}")]
    NoProposalChosen { reason: FailReason, detail: String },
    /// INVALID-KEY-INFORMATION: a key exchange value we cannot use.
    #[error("{detail}")]
    BadKeyExchange { reason: FailReason, detail: String },
    /// INVALID-HASH-INFORMATION: a quick mode HASH that does not verify.
    #[error("{0}")]
    BadHash(String),
    /// INVALID-ID-INFORMATION: the identity or the traffic selectors.
    #[error("{detail}")]
    BadId { reason: FailReason, detail: String },
    /// AUTHENTICATION-FAILED: HASH_I or HASH_R does not verify.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// INVALID-EXCHANGE-TYPE: the peer uses the other phase 1 mode.
    #[error("{0}")]
    WrongExchange(String),
    /// A protected message that did not decrypt to a readable message: nobody is told (it
    /// proves nothing about who sent it), and it changes nothing.
    #[error("{0}")]
    Unreadable(String),
}

impl ProtocolError {
    pub fn unannounced(reason: FailReason, detail: impl Into<String>) -> Self {
        Self::Unannounced { reason, detail: detail.into() }
    }

    /// Whether the message that caused it was not shown to come from the peer (it did not
    /// decrypt, or its HASH does not verify): such a message must change nothing.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Unreadable(_) | Self::BadHash(_))
    }

    /// What the peer is told, if anything.
    pub fn notify(&self) -> Option<NotifyType> {
        match self {
            Self::Unannounced { .. } | Self::Unreadable(_) => None,
            Self::Malformed { .. } => Some(NotifyType::PAYLOAD_MALFORMED),
            Self::MissingPayload(_) => Some(NotifyType::INVALID_PAYLOAD_TYPE),
            Self::NoProposalChosen { .. } => Some(NotifyType::NO_PROPOSAL_CHOSEN),
            Self::BadKeyExchange { .. } => Some(NotifyType::INVALID_KEY_INFORMATION),
            Self::BadHash(_) => Some(NotifyType::INVALID_HASH_INFORMATION),
            Self::BadId { .. } => Some(NotifyType::INVALID_ID_INFORMATION),
            Self::AuthenticationFailed(_) => Some(NotifyType::AUTHENTICATION_FAILED),
            Self::WrongExchange(_) => Some(NotifyType::INVALID_EXCHANGE_TYPE),
        }
    }

    /// What the driver is told.
    pub fn reason(&self) -> FailReason {
        match self {
            Self::Unannounced { reason, .. }
            | Self::Malformed { reason, .. }
            | Self::NoProposalChosen { reason, .. }
            | Self::BadKeyExchange { reason, .. }
            | Self::BadId { reason, .. } => *reason,
            Self::MissingPayload(_) | Self::BadHash(_) | Self::Unreadable(_) => FailReason::MalformedMessage,
            Self::AuthenticationFailed(_) => FailReason::AuthenticationFailed,
            Self::WrongExchange(_) => FailReason::ModeMismatch,
        }
    }

    /// The operator's detail.
    pub fn into_detail(self) -> String {
        match self {
            Self::Unannounced { detail, .. }
            | Self::Malformed { detail, .. }
            | Self::NoProposalChosen { detail, .. }
            | Self::BadKeyExchange { detail, .. }
            | Self::BadId { detail, .. } => detail,
            Self::MissingPayload(detail)
            | Self::BadHash(detail)
            | Self::AuthenticationFailed(detail)
            | Self::WrongExchange(detail)
            | Self::Unreadable(detail) => detail,
        }
    }
}

/// A message that does not parse: PAYLOAD-MALFORMED.
impl From<WireError> for ProtocolError {
    fn from(e: WireError) -> Self {
        Self::Malformed { reason: FailReason::MalformedMessage, detail: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_picks_its_notify_and_reason() {
        let e = ProtocolError::from(WireError::MissingPayload(crate::wire::PayloadType::KE));
        assert_eq!(e.notify(), Some(NotifyType::PAYLOAD_MALFORMED));
        assert_eq!(e.reason(), FailReason::MalformedMessage);
        let e = ProtocolError::AuthenticationFailed("HASH_I does not verify".into());
        assert_eq!(
            (e.notify(), e.reason()),
            (Some(NotifyType::AUTHENTICATION_FAILED), FailReason::AuthenticationFailed)
        );
        assert_eq!(e.into_detail(), "HASH_I does not verify");
        assert_eq!(ProtocolError::unannounced(FailReason::PeerUnreachable, "x").notify(), None);
    }

    #[test]
    fn hashes_compare_by_length_and_content() {
        assert!(hash_matches(b"abc", b"abc"));
        assert!(!hash_matches(b"abc", b"abd"));
        assert!(!hash_matches(b"ab", b"abc"));
    }
}
