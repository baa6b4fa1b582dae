//! Quick mode (RFC 2409 s.5.5): one exchange per subnet pair, ESP in tunnel mode (or UDP-
//! encapsulated tunnel mode behind NAT), optional PFS, lifetimes with RESPONDER-LIFETIME.
//!
//! HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH)
//! HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH)
//! HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)

use std::time::Duration;

use vpngw_crypto::rand_core::Rng;
use vpngw_crypto::{DhGroup, DhPrivateKey, SecretBytes};
use vpngw_esp::SaKeys;

use crate::child::{self, ChildRecord};
use crate::config::{Ipv4Subnet, Phase2Policy, SubnetPair};
use crate::event::{ChildSa, ChildSaState, DeleteReason, Event, FailReason, Role};
use crate::exchange::{Ctx, NONCE_LEN, ProtocolError, Received, Retransmit, RetransmitDue, hash_matches, packet_hash};
use crate::ikesa::IkeSa;
use crate::keys::phase2_iv;
use crate::proposal::{self, Encapsulation, Phase2Choice};
use crate::wire::{
    ExchangeType, NotifyPayload, NotifyType, Payload, PayloadChain, ProtocolId, SaPayload, encode_payloads,
    parse_payloads,
};

/// Finished exchanges kept to answer retransmissions of their last message.
const DONE_KEPT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QmState {
    /// Initiator: QM1 sent.
    I1,
    /// Responder: QM2 sent.
    R2,
    /// Finished; kept only to answer duplicates.
    Done,
}

pub(crate) struct QuickMode {
    pub message_id: u32,
    pub role: Role,
    pub state: QmState,
    pub pair: SubnetPair,
    iv: Vec<u8>,
    spi_in: u32,
    n_i: Vec<u8>,
    n_r: Vec<u8>,
    dh: Option<DhPrivateKey>,
    choice: Option<Phase2Choice>,
    spi_out: u32,
    gxy: Option<SecretBytes>,
    lifetime: (Option<u64>, Option<u64>),
    pub retransmit: Option<Retransmit>,
    /// Hash of the last request and our answer (QM2 for a responder, QM3 for an initiator).
    last_answer: Option<(u64, Vec<u8>)>,
    /// Initiator of a rekey: the pair (our inbound SPI) it replaces.
    replaces: Option<u32>,
}

fn encapsulation(sa: &IkeSa) -> Encapsulation {
    match (sa.nat_detected, sa.nat_t) {
        (true, Some(draft)) => Encapsulation::UdpTunnel { draft },
        _ => Encapsulation::Tunnel,
    }
}

/// Starts a quick mode for every configured pair that has neither an SA nor an exchange.
/// They run [`MAX_IN_FLIGHT`] at a time, the rest queued.
pub(crate) fn start_all(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let pairs = sa.peer.subnets.clone();
    for pair in pairs {
        let busy = sa.children.iter().any(|c| c.pair == pair)
            || sa.quick_modes.iter().any(|q| q.pair == pair && q.state != QmState::Done)
            || sa.qm_queue.iter().any(|q| q.pair == pair);
        if !busy {
            sa.qm_queue.push_back(Queued { pair, replaces: None });
        }
    }
    pump(sa, ctx);
}

/// A quick mode waiting for its turn: a pair's first SA, or the replacement of the child SA
/// with this inbound SPI (a rekey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    pub pair: SubnetPair,
    pub replaces: Option<u32>,
}

/// Quick modes of ours under way at once on one IKE SA. strongSwan keeps the CBC IV of only
/// its last three exchanges (keymat_v1.c, MAX_IV): a fourth concurrent one makes it forget
/// the oldest's IV and fail to decrypt its last message. Two leave room for an informational
/// exchange (DPD, Delete) and a quick mode the peer starts.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Starts queued quick modes while fewer than [`MAX_IN_FLIGHT`] of ours are under way.
pub(crate) fn pump(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    loop {
        let in_flight = sa.quick_modes.iter().filter(|q| q.role == Role::Initiator && q.state != QmState::Done).count();
        if in_flight >= MAX_IN_FLIGHT {
            return;
        }
        let Some(q) = sa.qm_queue.pop_front() else { return };
        let pair = q.pair;
        let exchanging = sa.quick_modes.iter().any(|m| m.pair == pair && m.state != QmState::Done);
        let wanted = match q.replaces {
            // A first SA: unless one came meanwhile (the peer's quick mode).
            None => !sa.children.iter().any(|c| c.pair == pair),
            // A rekey: while the SA to replace is still the one carrying the traffic.
            Some(old) => sa.children.iter().any(|c| c.spi_in == old && c.state == ChildSaState::Active),
        };
        if wanted && !exchanging {
            start(sa, ctx, pair, q.replaces);
        }
    }
}

fn new_message_id(sa: &IkeSa, ctx: &mut Ctx<'_>) -> u32 {
    loop {
        let id = ctx.rng.next_u32();
        if id != 0 && !sa.quick_modes.iter().any(|q| q.message_id == id) {
            return id;
        }
    }
}

/// Sends QM1 for `pair`, a rekey of the pair with inbound SPI `replaces` or a first SA.
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>, pair: SubnetPair, replaces: Option<u32>) {
    let (Some(keys), Some(cipher)) = (sa.keys.as_ref(), sa.cipher.as_ref()) else { return };
    let message_id = new_message_id(sa, ctx);
    let iv = phase2_iv(keys.hash, &sa.iv, message_id, cipher.block_len());
    let policy = sa.peer.phase2.clone();
    let spi_in = ctx.spis.allocate(ctx.rng);
    let n_i = ctx.random_bytes(NONCE_LEN);
    let dh = policy.pfs.map(|g| DhPrivateKey::generate(g, ctx.rng));
    let id_ci = pair.local.to_payload();
    let id_cr = pair.remote.to_payload();
    let mut rest =
        vec![Payload::Sa(proposal::phase2_offer(&policy, spi_in, encapsulation(sa))), Payload::Nonce(n_i.clone())];
    if let Some(dh) = &dh {
        rest.push(Payload::KeyExchange(dh.public_value().to_vec()));
    }
    rest.push(Payload::Id(id_ci.clone()));
    rest.push(Payload::Id(id_cr.clone()));
    let hash = keys.hash_a(&[&message_id.to_be_bytes(), &encode_payloads(&rest)]);
    let mut payloads = vec![Payload::Hash(hash)];
    payloads.extend(rest);
    let (packet, last) = sa.build(ExchangeType::QUICK_MODE, message_id, &payloads, Some(&iv));
    sa.quick_modes.push(QuickMode {
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
        spi_out: 0,
        gxy: None,
        lifetime: (None, None),
        retransmit: Some(Retransmit::new(packet.clone(), ctx)),
        last_answer: None,
        replaces,
    });
    sa.transmit(ctx, packet);
}

/// A quick mode message for an established IKE SA.
pub(crate) fn handle(sa: &mut IkeSa, ctx: &mut Ctx<'_>, rx: &Received<'_>) {
    if !sa.is_established() || !rx.header.is_encrypted() {
        tracing::debug!(peer = %sa.peer.name, "quick mode message before phase 1 or unencrypted: dropped");
        return;
    }
    let mid = rx.header.message_id;
    if sa.aborted_exchanges.contains(&mid) {
        // The peer answering a quick mode we gave up on (its refusal of another one did not
        // say which): not a new exchange, nothing to decrypt with.
        tracing::debug!(peer = %sa.peer.name, message_id = mid, "answer to an aborted quick mode: dropped");
        return;
    }
    if let Some(i) = sa.quick_modes.iter().position(|q| q.message_id == mid) {
        // Duplicate of a request we answered: resend the answer.
        if let Some((h, answer)) = &sa.quick_modes[i].last_answer
            && *h == packet_hash(rx.data)
        {
            let answer = answer.clone();
            sa.transmit(ctx, answer);
            return;
        }
        let result = match (sa.quick_modes[i].role, sa.quick_modes[i].state) {
            (Role::Initiator, QmState::I1) => on_qm2(sa, ctx, rx, i),
            (Role::Responder, QmState::R2) => on_qm3(sa, ctx, rx, i),
            // Neither a duplicate we answered nor a step we expect: not read, so not a sign
            // that the peer is alive either (anyone on the path could replay it).
            _ => {
                tracing::debug!(peer = %sa.peer.name, message_id = mid, "unexpected quick mode message: dropped");
                return;
            }
        };
        match result {
            Ok(()) => crate::liveness::heard(sa, ctx.now),
            Err(f) => fail(sa, ctx, i, f),
        }
    } else {
        let mut offered = None;
        let Err(f) = on_qm1(sa, ctx, rx, &mut offered).inspect(|()| crate::liveness::heard(sa, ctx.now)) else {
            return;
        };
        tracing::debug!(peer = %sa.peer.name, reason = %f.reason(), "quick mode refused");
        report(sa, ctx, f, offered.unwrap_or(0));
    }
}

/// Tells the peer (a notify naming `spi`, when the failure sends one) and the driver.
fn report(sa: &mut IkeSa, ctx: &mut Ctx<'_>, f: ProtocolError, spi: u32) {
    if let Some(n) = f.notify() {
        sa.send_notify(ctx, ProtocolId::ESP, n, spi.to_be_bytes().to_vec(), Vec::new());
    }
    ctx.events.push_back(Event::NegotiationFailed {
        peer: Some(sa.peer.name.clone()),
        remote: sa.remote,
        reason: f.reason(),
        detail: f.into_detail(),
    });
}

fn fail(sa: &mut IkeSa, ctx: &mut Ctx<'_>, index: usize, f: ProtocolError) {
    let qm = sa.quick_modes.remove(index);
    if sa.children.iter().any(|c| c.spi_in == qm.spi_in && c.state == ChildSaState::Installing) {
        // A responder's inbound SA, installed at QM2: QM3 never came right. The initiator may
        // be sending with it already: the Delete sends it back to an older pair.
        child::send_delete(sa, ctx, qm.spi_in);
        child::remove(sa, ctx, qm.spi_in, DeleteReason::Abandoned);
    } else {
        ctx.spis.release(qm.spi_in);
    }
    report(sa, ctx, f, qm.spi_in);
    pump(sa, ctx);
}

/// A decrypted quick mode message: its payloads (HASH first), the bytes after the HASH payload
/// up to the end of the chain (what the HASH covers), and the last ciphertext block.
struct Opened {
    chain: PayloadChain,
    hash: Vec<u8>,
    rest: Vec<u8>,
    last: Vec<u8>,
}

impl Opened {
    /// Checks the HASH against prf(SKEYID_a, `covered` | the payloads after it); `which` names it.
    fn check_hash(&self, expected: &[u8], which: &str) -> Result<(), ProtocolError> {
        if hash_matches(&self.hash, expected) {
            Ok(())
        } else {
            Err(ProtocolError::BadHash(format!("{which} does not verify")))
        }
    }
}

/// Decrypts a quick mode message with `iv` and checks that HASH comes first.
fn open(sa: &IkeSa, rx: &Received<'_>, iv: &[u8]) -> Result<Opened, ProtocolError> {
    let bad =
        |what: &str| ProtocolError::unannounced(FailReason::MalformedMessage, format!("quick mode message: {what}"));
    let (plain, last) = sa.decrypt(rx, iv).map_err(|e| bad(&e.to_string()))?;
    let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|e| bad(&e.to_string()))?;
    let first = chain.payloads.first().ok_or_else(|| bad("empty"))?;
    let Payload::Hash(hash) = &first.payload else { return Err(bad("HASH is not the first payload")) };
    let hash = hash.clone();
    let rest = plain[first.range.end..chain.end].to_vec();
    Ok(Opened { chain, hash, rest, last })
}

/// Responder: QM1. Picks the configured pair and transform, answers with QM2.
/// `offered_spi` gets the initiator's SPI once read: a refusal names it, so that the peer
/// knows which of its quick modes failed.
fn on_qm1(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    rx: &Received<'_>,
    offered_spi: &mut Option<u32>,
) -> Result<(), ProtocolError> {
    let Some(qm1) = check_hash1(sa, rx)? else { return Ok(()) };
    let chain = &qm1.chain;
    let offer = chain.sa().ok();
    *offered_spi = offer
        .and_then(|o| o.proposals.first())
        .and_then(|p| <[u8; 4]>::try_from(p.spi.as_slice()).ok())
        .map(u32::from_be_bytes);
    let (Some(offer), Ok(n_i)) = (offer, chain.nonce()) else {
        return Err(ProtocolError::MissingPayload("quick mode without SA or nonce".into()));
    };
    let pair = match_selectors(sa, chain)?;
    let spi_in = ctx.spis.allocate(ctx.rng);
    let negotiated = select_proposal(sa, offer, spi_in)
        .and_then(|selection| Ok((responder_pfs(ctx, selection.choice.pfs, chain.ke().ok())?, selection)));
    let ((dh, gxy), selection) = negotiated.inspect_err(|_| ctx.spis.release(spi_in))?;
    let mut choice = selection.choice;
    let shorter = apply_our_lifetimes(&sa.peer.phase2, &mut choice);
    let exchange = QuickMode {
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
    reply_qm2(sa, ctx, rx, exchange, selection.reply, shorter, &qm1);
    Ok(())
}

/// QM1's HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH). None before phase 1 is done.
fn check_hash1(sa: &IkeSa, rx: &Received<'_>) -> Result<Option<Opened>, ProtocolError> {
    let (Some(keys), Some(cipher)) = (sa.keys.as_ref(), sa.cipher.as_ref()) else { return Ok(None) };
    let mid = rx.header.message_id;
    let iv = phase2_iv(keys.hash, &sa.iv, mid, cipher.block_len());
    let qm1 = open(sa, rx, &iv)?;
    qm1.check_hash(&keys.hash_a(&[&mid.to_be_bytes(), &qm1.rest]), "HASH(1)")?;
    Ok(Some(qm1))
}

/// The peer's IDci/IDcr against the configured pairs: the pair as we see it (local, remote).
/// Without IDs the selectors are the two gateways' addresses (RFC 2409 s.5.5); vpngw always
/// protects configured subnets, so a quick mode without IDs matches no pair.
fn match_selectors(sa: &IkeSa, chain: &PayloadChain) -> Result<SubnetPair, ProtocolError> {
    let bad_id = |detail: String| ProtocolError::BadId { reason: FailReason::TrafficSelectorMismatch, detail };
    let (id_ci, id_cr) =
        chain.ids().ok_or_else(|| bad_id("the peer's quick mode carries no traffic selectors".into()))?;
    let (Some(their_net), Some(our_net)) = (Ipv4Subnet::from_payload(id_ci), Ipv4Subnet::from_payload(id_cr)) else {
        return Err(bad_id(format!("unsupported traffic selectors {} / {}", id_ci.id_type, id_cr.id_type)));
    };
    if !sa.peer.subnets.iter().any(|p| p.local.covers(&our_net) && p.remote.covers(&their_net)) {
        let configured: Vec<String> = sa.peer.subnets.iter().map(ToString::to_string).collect();
        return Err(bad_id(format!(
            "traffic selectors: peer offered {our_net} <=> {their_net} (local <=> remote, our view), configured {}",
            configured.join(", ")
        )));
    }
    Ok(SubnetPair { local: our_net, remote: their_net })
}

/// The first acceptable ESP transform of the offer, with our SPI in the reply.
fn select_proposal(sa: &IkeSa, offer: &SaPayload, spi_in: u32) -> Result<proposal::Phase2Selection, ProtocolError> {
    proposal::select_phase2(&sa.peer.phase2, offer, spi_in).map_err(|m| {
        let reason = if m.is_pfs_only() {
            FailReason::PfsMismatch
        } else if m.is_mode_only() {
            FailReason::ModeMismatch
        } else {
            FailReason::Phase2ProposalMismatch
        };
        ProtocolError::NoProposalChosen {
            reason,
            detail: format!("phase 2 proposal mismatch with {}: {m}", sa.remote.ip()),
        }
    })
}

/// Responder PFS: our DH value and g^xy when the chosen transform has a group and the peer
/// sent a key exchange of its size; neither without PFS; a mismatch otherwise.
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

fn pfs_refused(e: &impl std::fmt::Display) -> ProtocolError {
    ProtocolError::BadKeyExchange {
        reason: FailReason::MalformedMessage,
        detail: format!("PFS key exchange refused: {e}"),
    }
}

/// Lifetimes: the offered ones unless ours are shorter; then we say so (RFC 2407 s.4.6.3.1).
/// Returns whether ours are shorter (a RESPONDER-LIFETIME goes into QM2).
fn apply_our_lifetimes(policy: &Phase2Policy, choice: &mut Phase2Choice) -> bool {
    let ours =
        (u64::from(policy.lifetime_seconds), (policy.lifetime_kilobytes > 0).then_some(policy.lifetime_kilobytes));
    let seconds = choice.lifetime_seconds.map_or(ours.0, |t| t.min(ours.0));
    let kilobytes = match (choice.lifetime_kilobytes, ours.1) {
        (Some(t), Some(o)) => Some(t.min(o)),
        (t, o) => t.or(o),
    };
    let shorter = Some(seconds) != choice.lifetime_seconds || kilobytes != choice.lifetime_kilobytes;
    choice.lifetime_seconds = Some(seconds);
    choice.lifetime_kilobytes = kilobytes;
    shorter
}

/// Sends QM2 (HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH)) for the responder
/// exchange `qm` and installs our inbound SA.
fn reply_qm2(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    rx: &Received<'_>,
    mut qm: QuickMode,
    reply: SaPayload,
    shorter: bool,
    qm1: &Opened,
) {
    let Some(keys) = sa.keys.as_ref() else { return };
    let (id_ci, id_cr) = qm1.chain.ids().map(|(ci, cr)| (ci.clone(), cr.clone())).unzip();
    let mut rest = vec![Payload::Sa(reply), Payload::Nonce(qm.n_r.clone())];
    if let Some(dh) = &qm.dh {
        rest.push(Payload::KeyExchange(dh.public_value().to_vec()));
    }
    rest.extend(id_ci.map(Payload::Id));
    rest.extend(id_cr.map(Payload::Id));
    if shorter {
        let (seconds, kilobytes) = qm.lifetime;
        tracing::info!(peer = %sa.peer.name, seconds = seconds.unwrap_or_default(), ?kilobytes, "our IPsec SA lifetime is shorter than offered: sending RESPONDER-LIFETIME");
        rest.push(Payload::Notify(NotifyPayload::new(
            ProtocolId::ESP,
            NotifyType::RESPONDER_LIFETIME,
            qm.spi_in.to_be_bytes().to_vec(),
            proposal::responder_lifetime_data(seconds, kilobytes),
        )));
    }
    let mid = qm.message_id;
    let hash = keys.hash_a(&[&mid.to_be_bytes(), &qm.n_i, &encode_payloads(&rest)]);
    let mut all = vec![Payload::Hash(hash)];
    all.extend(rest);
    let (packet, last) = sa.build(ExchangeType::QUICK_MODE, mid, &all, Some(&qm1.last));
    qm.iv = last;
    qm.retransmit = Some(Retransmit::new(packet.clone(), ctx));
    qm.last_answer = Some((packet_hash(rx.data), packet.clone()));
    sa.quick_modes.push(qm);
    sa.transmit(ctx, packet);
    // Make-before-break: our inbound SA exists before the initiator, which switches when it
    // sends QM3, can use it.
    install(sa, ctx, sa.quick_modes.len() - 1);
}

/// Initiator: QM2. Verifies, derives keys, sends QM3, installs.
fn on_qm2(sa: &mut IkeSa, ctx: &mut Ctx<'_>, rx: &Received<'_>, index: usize) -> Result<(), ProtocolError> {
    let Some(keys) = sa.keys.clone() else { return Ok(()) };
    let mid = rx.header.message_id;
    let iv = sa.quick_modes[index].iv.clone();
    let qm2 = open(sa, rx, &iv)?;
    let qm = &mut sa.quick_modes[index];
    qm2.check_hash(&keys.hash_a(&[&mid.to_be_bytes(), &qm.n_i, &qm2.rest]), "HASH(2)")?;
    let chain = &qm2.chain;
    let (Ok(reply), Ok(n_r)) = (chain.sa(), chain.nonce()) else {
        return Err(ProtocolError::MissingPayload("quick mode answer without SA or nonce".into()));
    };
    let (mut choice, spi_out) =
        proposal::accept_phase2_reply(&sa.peer.phase2, reply).map_err(|m| ProtocolError::NoProposalChosen {
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
        tracing::info!(peer = %sa.peer.name, seconds = ?s, kilobytes = ?kb, "peer sent RESPONDER-LIFETIME");
        if let Some(s) = s {
            choice.lifetime_seconds = Some(choice.lifetime_seconds.map_or(s, |c| c.min(s)));
        }
        if let Some(kb) = kb {
            choice.lifetime_kilobytes = Some(choice.lifetime_kilobytes.map_or(kb, |c| c.min(kb)));
        }
    }
    qm.n_r = n_r.to_vec();
    qm.spi_out = spi_out;
    qm.gxy = gxy;
    qm.lifetime = (choice.lifetime_seconds, choice.lifetime_kilobytes);
    qm.choice = Some(choice);
    let hash3 = keys.hash_a(&[&[0], &mid.to_be_bytes(), &qm.n_i, &qm.n_r]);
    let (packet, _) = sa.build(ExchangeType::QUICK_MODE, mid, &[Payload::Hash(hash3)], Some(&qm2.last));
    let qm = &mut sa.quick_modes[index];
    qm.retransmit = None;
    qm.state = QmState::Done;
    qm.last_answer = Some((packet_hash(rx.data), packet.clone()));
    sa.transmit(ctx, packet);
    install(sa, ctx, index);
    pump(sa, ctx);
    Ok(())
}

/// Responder: QM3. Installs.
fn on_qm3(sa: &mut IkeSa, ctx: &mut Ctx<'_>, rx: &Received<'_>, index: usize) -> Result<(), ProtocolError> {
    let Some(keys) = sa.keys.clone() else { return Ok(()) };
    let mid = rx.header.message_id;
    let iv = sa.quick_modes[index].iv.clone();
    let qm3 = open(sa, rx, &iv)?;
    let qm = &mut sa.quick_modes[index];
    qm3.check_hash(&keys.hash_a(&[&[0], &mid.to_be_bytes(), &qm.n_i, &qm.n_r]), "HASH(3)")?;
    qm.retransmit = None;
    qm.state = QmState::Done;
    qm.last_answer = None;
    // The initiator has both SAs: send with the new one.
    let spi_in = qm.spi_in;
    child::activate(sa, ctx, spi_in);
    Ok(())
}

fn split_keys(keymat: &SecretBytes, choice: &Phase2Choice) -> SaKeys {
    let enc_len = choice.encryption.spec().key_len;
    let bytes = keymat.expose();
    SaKeys {
        encryption: choice.encryption,
        encryption_key: SecretBytes::from_slice(&bytes[..enc_len]),
        integrity: choice.integrity,
        integrity_key: SecretBytes::from_slice(&bytes[enc_len..]),
    }
}

/// Derives both directions' keys and reports the child SA. Each direction is keyed with the
/// SPI its receiver chose (RFC 2409 s.5.5): ours for inbound, the peer's for outbound.
/// An initiator sends with it [`child::FIRST_ACTIVATE_DELAY`] when it is the only SA pair for its selectors, else
/// after [`child::ACTIVATE_DELAY`]; a responder when QM3 arrives.
fn install(sa: &mut IkeSa, ctx: &mut Ctx<'_>, index: usize) {
    let Some(keys) = sa.keys.clone() else { return };
    let qm = &sa.quick_modes[index];
    let Some(choice) = qm.choice.clone() else { return };
    let len = choice.encryption.spec().key_len + choice.integrity.spec().key_len;
    let gxy = qm.gxy.as_ref().map(SecretBytes::expose);
    let keys_in = split_keys(&keys.keymat(gxy, ProtocolId::ESP.0, qm.spi_in, &qm.n_i, &qm.n_r, len), &choice);
    let keys_out = split_keys(&keys.keymat(gxy, ProtocolId::ESP.0, qm.spi_out, &qm.n_i, &qm.n_r, len), &choice);
    let seconds = qm.lifetime.0.unwrap_or(28_800).max(1);
    let lifetime = Duration::from_secs(seconds);
    let role = qm.role;
    let another_active = child::has_active(sa, &qm.pair);
    // What this pair replaces: for our rekey, the pair we set out to replace; for the peer's
    // quick mode, the newest pair not yet replaced, which is the one the peer sends with or
    // (our own rekey, still in its activation delay) the one it has just switched to: the peer
    // replaces that one. Two pairs replacing the same one are a rekey collision
    // (child::activate settles it).
    let predecessor = qm.replaces.or_else(|| {
        sa.children
            .iter()
            .filter(|c| c.pair == qm.pair && c.state != ChildSaState::Replaced)
            .max_by_key(|c| c.established_at)
            .map(|c| c.spi_in)
    });
    let record = ChildRecord {
        spi_in: qm.spi_in,
        spi_out: qm.spi_out,
        pair: qm.pair,
        choice: choice.clone(),
        state: ChildSaState::Installing,
        established_at: ctx.now,
        expires_at: ctx.now + lifetime,
        rekey_at: Some(child::rekey_time(ctx.now, lifetime, role, ctx.rng)),
        activate_at: (role == Role::Initiator)
            .then(|| ctx.now + if another_active { child::ACTIVATE_DELAY } else { child::FIRST_ACTIVATE_DELAY }),
        retire_at: None,
        predecessor,
        rank: child::collision_rank(&qm.n_i, &qm.n_r),
    };
    let child = ChildSa {
        spi_in: qm.spi_in,
        spi_out: qm.spi_out,
        keys_in,
        keys_out,
        selectors: qm.pair,
        encryption: choice.encryption,
        integrity: choice.integrity,
        pfs: choice.pfs,
        lifetime_seconds: seconds,
        lifetime_kilobytes: qm.lifetime.1,
        encapsulation: choice.encapsulation,
        local: sa.local,
        remote: sa.remote,
        role,
    };
    let qm = &mut sa.quick_modes[index];
    qm.dh = None;
    qm.gxy = None;
    sa.children.push(record);
    ctx.events.push_back(Event::ChildSaEstablished { peer: sa.peer.name.clone(), ike_sa: sa.id, child });
    prune_done(sa);
}

fn prune_done(sa: &mut IkeSa) {
    while sa.quick_modes.iter().filter(|q| q.state == QmState::Done).count() > DONE_KEPT {
        if let Some(i) = sa.quick_modes.iter().position(|q| q.state == QmState::Done) {
            sa.quick_modes.remove(i);
        }
    }
}

/// Retransmissions of our quick mode messages.
pub(crate) fn handle_timeouts(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let mut i = 0;
    while i < sa.quick_modes.len() {
        let due = match sa.quick_modes[i].retransmit.as_mut() {
            Some(r) => r.poll(ctx.now, ctx.config.retransmit_factor),
            None => RetransmitDue::NotYet,
        };
        match due {
            RetransmitDue::Resend(p) => sa.transmit(ctx, p),
            RetransmitDue::NotYet => {}
            RetransmitDue::GiveUp => {
                let qm = &sa.quick_modes[i];
                let detail = format!(
                    "no answer to quick mode for {} after {} retransmissions",
                    qm.pair, ctx.config.retransmit_tries
                );
                fail(sa, ctx, i, ProtocolError::unannounced(FailReason::PeerUnreachable, detail));
                continue;
            }
        }
        i += 1;
    }
}

/// The peer refused a quick mode of ours with an error notify: drops that exchange when the
/// notify's SPI names it, else every pending one of ours (IKEv1 notifies need not say which);
/// the queued ones still start.
pub(crate) fn abort_pending(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: Option<u32>, reason: FailReason, detail: &str) {
    let pending = |q: &QuickMode| q.role == Role::Initiator && q.state == QmState::I1;
    let named = spi.filter(|s| sa.quick_modes.iter().any(|q| pending(q) && q.spi_in == *s));
    let dropped: Vec<u32> =
        sa.quick_modes.iter().filter(|q| pending(q) && named.is_none_or(|s| q.spi_in == s)).map(|q| q.spi_in).collect();
    for q in sa.quick_modes.iter().filter(|q| dropped.contains(&q.spi_in)) {
        sa.aborted_exchanges.push_back(q.message_id);
    }
    while sa.aborted_exchanges.len() > 16 {
        sa.aborted_exchanges.pop_front();
    }
    sa.quick_modes.retain(|q| !dropped.contains(&q.spi_in));
    for s in &dropped {
        ctx.spis.release(*s);
    }
    tracing::debug!(peer = %sa.peer.name, %reason, detail, aborted = dropped.len(), "pending quick modes aborted");
    pump(sa, ctx);
}

/// Removes the child SA with this SPI (ours or the peer's).
pub(crate) fn remove_child(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: u32, reason: DeleteReason) {
    child::remove(sa, ctx, spi, reason);
}
