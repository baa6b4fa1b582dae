//! Quick mode as responder: QM1 in (checked step by step: HASH(1), selectors, proposal, PFS,
//! lifetimes), QM2 out, QM3 in.

use vpngw_crypto::{DhGroup, DhPrivateKey, SecretBytes};
use vpngw_esp::Spi;

use super::exchange::{Opened, QmState, QuickMode, open, pfs_refused};
use crate::child::ChildSet;
use crate::config::{Ipv4Subnet, Phase2Policy, SubnetPair};
use crate::event::{FailReason, Role};
use crate::exchange::{Ctx, NONCE_LEN, ProtocolError, Received, Retransmit};
use crate::lifetime::bound_phase2;
use crate::message::Secured;
use crate::proposal::{self, Phase2Choice, Phase2Selection};
use crate::snapshot::AnsweredRequest;
use crate::wire::{
    ExchangeType, NotifyPayload, NotifyType, Payload, PayloadChain, ProtocolId, SaPayload, encode_payloads,
};

/// QM1: picks the configured pair and transform, answers with QM2; returns the exchange (the
/// caller installs our inbound SA). `offered_spi` gets the initiator's SPI once read: a
/// refusal names it, so that the peer knows which of its quick modes failed.
pub(crate) fn on_qm1(
    ctx: &mut Ctx<'_>,
    channel: Secured<'_>,
    rx: &Received<'_>,
    offered_spi: &mut Option<Spi>,
) -> Result<QuickMode, ProtocolError> {
    let qm1 = check_hash1(channel, rx)?;
    let chain = &qm1.chain;
    let offer = chain.sa().ok();
    *offered_spi = offer
        .and_then(|o| o.proposals.first())
        .and_then(|p| <[u8; 4]>::try_from(p.spi.as_slice()).ok())
        .map(Spi::from_be_bytes);
    let (Some(offer), Ok(n_i)) = (offer, chain.nonce()) else {
        return Err(ProtocolError::MissingPayload("quick mode without SA or nonce".into()));
    };
    let pair = match_selectors(channel, chain)?;
    let spi_in = ctx.spis.allocate(ctx.rng);
    let negotiated = select_proposal(channel, offer, spi_in)
        .and_then(|selection| Ok((responder_pfs(ctx, selection.choice.pfs, chain.ke().ok())?, selection)));
    let ((dh, gxy), selection) = negotiated.inspect_err(|_| ctx.spis.release(spi_in))?;
    let mut choice = selection.choice;
    let shorter = apply_our_lifetimes(&channel.link.peer.phase2, &mut choice);
    let mut qm = QuickMode {
        message_id: rx.header.message_id,
        role: Role::Responder,
        state: QmState::R2,
        pair,
        iv: Vec::new(),
        spi_in,
        n_i: n_i.to_vec(),
        n_r: ctx.random_bytes(NONCE_LEN),
        dh,
        lifetime: (choice.lifetime_seconds, choice.lifetime_kilobytes),
        choice: Some(choice),
        spi_out: selection.peer_spi,
        gxy,
        retransmit: None,
        last_answer: None,
        replaces: None,
    };
    reply_qm2(ctx, channel, rx, &mut qm, selection.reply, shorter, &qm1);
    Ok(qm)
}

/// QM1's HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH).
fn check_hash1(channel: Secured<'_>, rx: &Received<'_>) -> Result<Opened, ProtocolError> {
    let crypto = channel.crypto;
    let mid = rx.header.message_id;
    let qm1 = open(crypto, rx, &crypto.exchange_iv(mid))?;
    qm1.check_hash(&crypto.hash_a(&[&mid.to_be_bytes(), &qm1.rest]), "HASH(1)")?;
    Ok(qm1)
}

/// The peer's IDci/IDcr against the configured pairs: the pair as we see it (local, remote).
/// Without IDs the selectors are the two gateways' addresses (RFC 2409 s.5.5); vpngw always
/// protects configured subnets, so a quick mode without IDs matches no pair.
fn match_selectors(channel: Secured<'_>, chain: &PayloadChain) -> Result<SubnetPair, ProtocolError> {
    let subnets = &channel.link.peer.subnets;
    let bad_id = |detail: String| ProtocolError::BadId { reason: FailReason::TrafficSelectorMismatch, detail };
    let (id_ci, id_cr) =
        chain.ids().ok_or_else(|| bad_id("the peer's quick mode carries no traffic selectors".into()))?;
    let (Some(their_net), Some(our_net)) = (Ipv4Subnet::from_payload(id_ci), Ipv4Subnet::from_payload(id_cr)) else {
        return Err(bad_id(format!("unsupported traffic selectors {} / {}", id_ci.id_type, id_cr.id_type)));
    };
    if !subnets.iter().any(|p| p.local.covers(&our_net) && p.remote.covers(&their_net)) {
        let configured: Vec<String> = subnets.iter().map(ToString::to_string).collect();
        return Err(bad_id(format!(
            "traffic selectors: peer offered {our_net} <=> {their_net} (local <=> remote, our view), configured {}",
            configured.join(", ")
        )));
    }
    Ok(SubnetPair { local: our_net, remote: their_net })
}

/// The first acceptable ESP transform of the offer, with our SPI in the reply.
fn select_proposal(channel: Secured<'_>, offer: &SaPayload, spi_in: Spi) -> Result<Phase2Selection, ProtocolError> {
    proposal::select_phase2(&channel.link.peer.phase2, offer, spi_in).map_err(|m| {
        let reason = if m.is_pfs_only() {
            FailReason::PfsMismatch
        } else if m.is_mode_only() {
            FailReason::ModeMismatch
        } else {
            FailReason::Phase2ProposalMismatch
        };
        ProtocolError::NoProposalChosen {
            reason,
            detail: format!("phase 2 proposal mismatch with {}: {m}", channel.link.remote.ip()),
        }
    })
}

/// Our DH value and g^xy when the chosen transform has a group and the peer sent a key exchange
/// of its size; neither without PFS; a mismatch otherwise.
#[allow(clippy::type_complexity)]
fn responder_pfs(
    ctx: &mut Ctx<'_>,
    pfs: Option<DhGroup>,
    ke: Option<&[u8]>,
) -> Result<(Option<DhPrivateKey>, Option<SecretBytes>), ProtocolError> {
    match (pfs, ke) {
        (Some(g), Some(ke)) if ke.len() == g.modulus_len() => {
            let dh = DhPrivateKey::generate(g, ctx.rng);
            let gxy = dh.agree(ke).map_err(|e| pfs_refused(&e))?;
            Ok((Some(dh), Some(gxy)))
        }
        (None, None) => Ok((None, None)),
        (pfs, ke) => Err(ProtocolError::NoProposalChosen {
            reason: FailReason::PfsMismatch,
            detail: format!(
                "pfs: peer {} a key exchange, configured {}",
                if ke.is_some() { "sent" } else { "did not send" },
                pfs.map_or("disable".into(), |g| g.name().to_string())
            ),
        }),
    }
}

/// Lifetimes: the offered ones unless ours are shorter (then we say so, RFC 2407 s.4.6.3.1),
/// and not below the floor ([`phase2_lifetimes`]). Returns whether ours are shorter than
/// offered, or the offer had none (a RESPONDER-LIFETIME goes into QM2).
fn apply_our_lifetimes(policy: &Phase2Policy, choice: &mut Phase2Choice) -> bool {
    let (offered_s, offered_kb) = (choice.lifetime_seconds, choice.lifetime_kilobytes);
    bound_phase2(policy, choice);
    let seconds_shorter = match (choice.lifetime_seconds, offered_s) {
        (Some(s), Some(t)) => s < t,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    let kilobytes_shorter = match (choice.lifetime_kilobytes, offered_kb) {
        (Some(k), Some(t)) => k < t,
        (Some(_), None) => true,
        (None, _) => false,
    };
    seconds_shorter || kilobytes_shorter
}

/// Sends QM2 (HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH)) for `qm`.
fn reply_qm2(
    ctx: &mut Ctx<'_>,
    channel: Secured<'_>,
    rx: &Received<'_>,
    qm: &mut QuickMode,
    reply: SaPayload,
    shorter: bool,
    qm1: &Opened,
) {
    let (link, crypto) = (channel.link, channel.crypto);
    let mut rest = vec![Payload::Sa(reply), Payload::Nonce(qm.n_r.clone())];
    if let Some(dh) = &qm.dh {
        rest.push(Payload::KeyExchange(dh.public_value().to_vec()));
    }
    if let Some((id_ci, id_cr)) = qm1.chain.ids() {
        rest.push(Payload::Id(id_ci.clone()));
        rest.push(Payload::Id(id_cr.clone()));
    }
    if shorter {
        let (seconds, kilobytes) = qm.lifetime;
        tracing::info!(connection = %link.peer.name, seconds = seconds.unwrap_or_default(), ?kilobytes, "our IPsec SA lifetime is shorter than offered: sending RESPONDER-LIFETIME");
        rest.push(Payload::Notify(NotifyPayload::new(
            ProtocolId::ESP,
            NotifyType::RESPONDER_LIFETIME,
            qm.spi_in.to_be_bytes().to_vec(),
            proposal::responder_lifetime_data(seconds, kilobytes),
        )));
    }
    let mid = qm.message_id;
    let hash = crypto.hash_a(&[&mid.to_be_bytes(), &qm.n_i, &encode_payloads(&rest)]);
    let mut all = vec![Payload::Hash(hash)];
    all.extend(rest);
    let (packet, last) = crypto.seal(link, ExchangeType::QUICK_MODE, mid, &all, &qm1.last);
    qm.iv = last;
    qm.retransmit = Some(Retransmit::new(packet.clone(), ctx));
    qm.last_answer = Some(AnsweredRequest::new(rx.data, packet.clone()));
    link.transmit(ctx, packet);
}

/// QM3 (HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)): the initiator has both SAs, so we
/// send with the new one.
pub(crate) fn on_qm3(
    ctx: &mut Ctx<'_>,
    channel: Secured<'_>,
    children: &mut ChildSet,
    qm: &mut QuickMode,
    rx: &Received<'_>,
) -> Result<(), ProtocolError> {
    let crypto = channel.crypto;
    let mid = rx.header.message_id;
    let qm3 = open(crypto, rx, &qm.iv)?;
    qm3.check_hash(&crypto.hash_a(&[&[0], &mid.to_be_bytes(), &qm.n_i, &qm.n_r]), "HASH(3)")?;
    qm.retransmit = None;
    qm.state = QmState::Done;
    qm.last_answer = None;
    children.activate(ctx, &channel.link.peer.name, qm.spi_in);
    Ok(())
}
