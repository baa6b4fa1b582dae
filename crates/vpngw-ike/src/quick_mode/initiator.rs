//! Quick mode as initiator: QM1 out, QM2 in, QM3 out.
//!
//! HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH)
//! HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH)
//! HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)

use vpngw_crypto::DhPrivateKey;
use vpngw_esp::Spi;

use super::exchange::{QmState, QuickMode, open, pfs_refused};
use crate::config::{Ipv4Subnet, SubnetPair};
use crate::event::{FailReason, Role};
use crate::exchange::{Ctx, NONCE_LEN, ProtocolError, Received, Retransmit};
use crate::lifetime::bound_phase2;
use crate::message::Secured;
use crate::proposal;
use crate::snapshot::AnsweredRequest;
use crate::wire::{ExchangeType, NotifyType, Payload, encode_payloads};

/// Sends QM1 for `pair`, a rekey of the pair with inbound SPI `replaces` or a first SA, as
/// exchange `message_id`.
pub(crate) fn start(
    ctx: &mut Ctx<'_>,
    channel: Secured<'_>,
    message_id: u32,
    pair: SubnetPair,
    replaces: Option<Spi>,
) -> QuickMode {
    let (link, crypto) = (channel.link, channel.crypto);
    let iv = crypto.exchange_iv(message_id);
    let policy = &link.peer.phase2;
    let spi_in = ctx.spis.allocate(ctx.rng);
    let n_i = ctx.random_bytes(NONCE_LEN);
    let dh = policy.pfs.map(|g| DhPrivateKey::generate(g, ctx.rng));
    let mut rest = vec![
        Payload::Sa(proposal::phase2_offer(policy, spi_in, link.nat.encapsulation())),
        Payload::Nonce(n_i.clone()),
    ];
    if let Some(dh) = &dh {
        rest.push(Payload::KeyExchange(dh.public_value().to_vec()));
    }
    rest.push(Payload::Id(pair.local.to_payload()));
    rest.push(Payload::Id(pair.remote.to_payload()));
    let hash = crypto.hash_a(&[&message_id.to_be_bytes(), &encode_payloads(&rest)]);
    let mut payloads = vec![Payload::Hash(hash)];
    payloads.extend(rest);
    let (packet, last) = crypto.seal(link, ExchangeType::QUICK_MODE, message_id, &payloads, &iv);
    let qm = QuickMode {
        message_id,
        role: Role::Initiator,
        state: QmState::I1,
        pair,
        iv: last,
        spi_in,
        n_i,
        n_r: Vec::new(),
        dh,
        choice: None,
        spi_out: Spi::new(0),
        gxy: None,
        lifetime: (None, None),
        retransmit: Some(Retransmit::new(packet.clone(), ctx)),
        last_answer: None,
        replaces,
    };
    link.transmit(ctx, packet);
    qm
}

/// QM2: verifies, takes the answer and sends QM3. The caller installs.
pub(crate) fn on_qm2(
    ctx: &mut Ctx<'_>,
    channel: Secured<'_>,
    qm: &mut QuickMode,
    rx: &Received<'_>,
) -> Result<(), ProtocolError> {
    let (link, crypto) = (channel.link, channel.crypto);
    let mid = rx.header.message_id;
    let qm2 = open(crypto, rx, &qm.iv)?;
    qm2.check_hash(&crypto.hash_a(&[&mid.to_be_bytes(), &qm.n_i, &qm2.rest]), "HASH(2)")?;
    let chain = &qm2.chain;
    let (Ok(reply), Ok(n_r)) = (chain.sa(), chain.nonce()) else {
        return Err(ProtocolError::MissingPayload("quick mode answer without SA or nonce".into()));
    };
    let (mut choice, spi_out) =
        proposal::accept_phase2_reply(&link.peer.phase2, reply).map_err(|m| ProtocolError::NoProposalChosen {
            reason: FailReason::Phase2ProposalMismatch,
            detail: format!("peer answered with another proposal: {m}"),
        })?;
    if let Some((ci, cr)) = chain.ids() {
        let got = (Ipv4Subnet::from_payload(ci), Ipv4Subnet::from_payload(cr));
        let ok = matches!(got, (Some(l), Some(r)) if qm.pair.local.covers(&l) && qm.pair.remote.covers(&r));
        if !ok {
            return Err(ProtocolError::BadId {
                reason: FailReason::TrafficSelectorMismatch,
                detail: format!("the peer narrowed {} to selectors outside it", qm.pair),
            });
        }
    }
    let pfs_mismatch =
        |detail: &str| ProtocolError::NoProposalChosen { reason: FailReason::PfsMismatch, detail: detail.into() };
    let gxy = match (&qm.dh, chain.ke().ok()) {
        (Some(dh), Some(ke)) => Some(dh.agree(ke).map_err(|e| pfs_refused(&e))?),
        (None, None) => None,
        (Some(_), None) => return Err(pfs_mismatch("pfs: the peer answered without a key exchange")),
        (None, Some(_)) => return Err(pfs_mismatch("pfs: the peer answered with a key exchange, configured disable")),
    };
    // RESPONDER-LIFETIME: the smaller value wins.
    for n in chain.notifies().filter(|n| n.notify_type == NotifyType::RESPONDER_LIFETIME) {
        let (s, kb) = proposal::parse_responder_lifetime(&n.data);
        tracing::info!(connection = %link.peer.name, seconds = ?s, kilobytes = ?kb, "peer sent RESPONDER-LIFETIME");
        if let Some(s) = s {
            choice.lifetime_seconds = Some(choice.lifetime_seconds.map_or(s, |c| c.min(s)));
        }
        if let Some(kb) = kb {
            choice.lifetime_kilobytes = Some(choice.lifetime_kilobytes.map_or(kb, |c| c.min(kb)));
        }
    }
    // The answer's lifetimes are the peer's word: at most what we offered, at least the floor.
    bound_phase2(&link.peer.phase2, &mut choice);
    qm.n_r = n_r.to_vec();
    qm.spi_out = spi_out;
    qm.gxy = gxy;
    qm.lifetime = (choice.lifetime_seconds, choice.lifetime_kilobytes);
    qm.choice = Some(choice);
    let hash3 = crypto.hash_a(&[&[0], &mid.to_be_bytes(), &qm.n_i, &qm.n_r]);
    let (packet, _) = crypto.seal(link, ExchangeType::QUICK_MODE, mid, &[Payload::Hash(hash3)], &qm2.last);
    qm.retransmit = None;
    qm.state = QmState::Done;
    qm.last_answer = Some(AnsweredRequest::new(rx.data, packet.clone()));
    link.transmit(ctx, packet);
    Ok(())
}
