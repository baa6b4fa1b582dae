//! Informational exchanges (RFC 2409 s.5.7): sending them (encrypted with a HASH once keys
//! exist, in the clear before), opening the peer's, the Delete payloads, and what an error
//! notify from the peer means.

use vpngw_crypto::rand_core::Rng;
use vpngw_esp::Spi;

use crate::config::{ExchangeMode, PeerConfig};
use crate::event::{Event, FailReason};
use crate::exchange::{Ctx, ProtocolError, Received, hash_matches};
use crate::message::{Link, MessageCrypto, Secured};
use crate::wire::{
    DOI_IPSEC, DeletePayload, ExchangeType, NotifyPayload, NotifyType, Payload, PayloadChain, ProtocolId,
    encode_payloads, parse_payloads,
};

/// Sends an informational exchange: protected by `crypto` when there is one (HASH(1) =
/// prf(SKEYID_a, M-ID | payloads), a fresh M-ID), in the clear before.
pub(crate) fn send(ctx: &mut Ctx<'_>, link: &Link, crypto: Option<&MessageCrypto>, payloads: Vec<Payload>) {
    let Some(crypto) = crypto else {
        let packet = link.build_clear(ExchangeType::INFORMATIONAL, 0, &payloads);
        link.transmit(ctx, packet);
        return;
    };
    let message_id = ctx.rng.next_u32().max(1);
    let rest = encode_payloads(&payloads);
    let hash = crypto.hash_a(&[&message_id.to_be_bytes(), &rest]);
    let iv = crypto.exchange_iv(message_id);
    let mut all = vec![Payload::Hash(hash)];
    all.extend(payloads);
    let (packet, _) = crypto.seal(link, ExchangeType::INFORMATIONAL, message_id, &all, &iv);
    link.transmit(ctx, packet);
}

/// Sends a protected informational exchange on an established IKE SA.
pub(crate) fn send_secured(ctx: &mut Ctx<'_>, channel: Secured<'_>, payloads: Vec<Payload>) {
    send(ctx, channel.link, Some(channel.crypto), payloads);
}

pub(crate) fn notify(protocol: ProtocolId, kind: NotifyType, spi: Vec<u8>, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload::new(protocol, kind, spi, data))
}

/// A Delete for one of our child SAs (our inbound SPI: the one the peer sends to).
pub(crate) fn delete_esp(spi_in: Spi) -> Payload {
    Payload::Delete(DeletePayload {
        doi: DOI_IPSEC,
        protocol: ProtocolId::ESP,
        spi_size: 4,
        spis: vec![spi_in.to_be_bytes().to_vec()],
    })
}

/// A Delete for the ISAKMP SA (its SPI is CKY-I | CKY-R).
pub(crate) fn delete_isakmp(cookies: Vec<u8>) -> Payload {
    Payload::Delete(DeletePayload { doi: DOI_IPSEC, protocol: ProtocolId::ISAKMP, spi_size: 16, spis: vec![cookies] })
}

/// Why a protected informational message was not taken.
pub(crate) enum Unopened {
    /// It does not decrypt (or decrypts to garbage).
    Undecryptable,
    /// No HASH first, or a HASH that does not verify: dropped (logged here).
    Dropped,
}

/// Decrypts a protected informational message and checks its HASH(1).
pub(crate) fn open(crypto: &MessageCrypto, rx: &Received<'_>, peer: &str) -> Result<PayloadChain, Unopened> {
    let iv = crypto.exchange_iv(rx.header.message_id);
    let (plain, chain) = crypto
        .open(rx, &iv)
        .and_then(|(plain, _)| parse_payloads(rx.header.next_payload, &plain, true).map(|c| (plain, c)))
        .map_err(|_| Unopened::Undecryptable)?;
    let Some(first) = chain.payloads.first() else { return Err(Unopened::Dropped) };
    let Payload::Hash(hash) = &first.payload else {
        tracing::debug!(connection = %peer, "informational without HASH first dropped");
        return Err(Unopened::Dropped);
    };
    let rest = &plain[first.range.end..chain.end];
    if !hash_matches(hash, &crypto.hash_a(&[&rx.header.message_id.to_be_bytes(), rest])) {
        tracing::debug!(connection = %peer, "informational with a bad HASH dropped");
        return Err(Unopened::Dropped);
    }
    Ok(chain)
}

/// Where the IKE SA stood when the peer's error notify came: it decides what the notify means.
pub(crate) struct RefusalContext<'a> {
    pub peer: &'a PeerConfig,
    pub mode: ExchangeMode,
    pub established: bool,
    /// Our main mode message 5 waits for its answer.
    pub awaiting_mm6: bool,
}

/// What an error notify from the peer means, for the driver.
pub(crate) fn describe_refusal(n: &NotifyPayload, at: &RefusalContext<'_>) -> (FailReason, String) {
    match n.notify_type {
        NotifyType::NO_PROPOSAL_CHOSEN if n.protocol == ProtocolId::ESP || at.established => (
            FailReason::Phase2ProposalMismatch,
            format!("the peer refused our quick mode proposal ({})", describe_phase2(at.peer)),
        ),
        NotifyType::NO_PROPOSAL_CHOSEN => (
            FailReason::Phase1ProposalMismatch,
            format!("the peer refused our phase 1 proposal ({})", describe_phase1(at.peer)),
        ),
        NotifyType::INVALID_ID_INFORMATION if at.established => (
            FailReason::TrafficSelectorMismatch,
            format!(
                "traffic selectors: the peer refused ours, offered {} (local <=> remote)",
                at.peer.subnets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        ),
        NotifyType::INVALID_ID_INFORMATION => (FailReason::IdMismatch, "the peer refused our identity".to_string()),
        NotifyType::AUTHENTICATION_FAILED => (
            FailReason::AuthenticationFailed,
            "the peer says AUTHENTICATION-FAILED: pre-shared key or identity mismatch".to_string(),
        ),
        NotifyType::INVALID_EXCHANGE_TYPE => (FailReason::ModeMismatch, format!("the peer refused {} mode", at.mode)),
        NotifyType::PAYLOAD_MALFORMED if at.awaiting_mm6 => (
            FailReason::AuthenticationFailed,
            "the peer could not read main mode message 5: likely pre-shared key mismatch".to_string(),
        ),
        NotifyType::INVALID_KEY_INFORMATION => {
            (FailReason::Phase1ProposalMismatch, "the peer refused our key exchange".to_string())
        }
        other => (FailReason::MalformedMessage, format!("the peer sent {other}")),
    }
}

fn describe_phase1(p: &PeerConfig) -> String {
    format!(
        "offered encryption {}, authentication {}, dh_group {}",
        p.phase1.encryption, p.phase1.hash, p.phase1.dh_group
    )
}

fn describe_phase2(p: &PeerConfig) -> String {
    format!(
        "offered encryption {}, authentication {}, pfs {}",
        p.phase2.encryption,
        p.phase2.integrity.name(),
        p.phase2.pfs.map_or("disable".to_string(), |g| g.name().to_string())
    )
}

/// Reports a failure to the driver and tells the peer when the failure says so (encrypted
/// once keys exist).
pub(crate) fn announce_failure(ctx: &mut Ctx<'_>, link: &Link, crypto: Option<&MessageCrypto>, failure: ProtocolError) {
    let reason = failure.reason();
    tracing::debug!(connection = %link.peer.name, %reason, detail = %failure, "negotiation failed");
    if let Some(n) = failure.notify() {
        send(ctx, link, crypto, vec![notify(ProtocolId::ISAKMP, n, link.cookies(), Vec::new())]);
    }
    ctx.events.push_back(Event::NegotiationFailed {
        peer: Some(link.peer.name.clone()),
        remote: link.remote,
        reason,
        detail: failure.into_detail(),
        logged: false,
    });
}
