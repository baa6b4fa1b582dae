//! One quick mode exchange: what it has agreed so far, how its messages are opened, and the
//! child SA pair it installs at the end.

use std::time::Duration;

use vpngw_crypto::{DhPrivateKey, SecretBytes};
use vpngw_esp::{SaKeys, Spi};

use crate::child::{ACTIVATE_DELAY, ChildRecord, ChildSet, FIRST_ACTIVATE_DELAY};
use crate::config::SubnetPair;
use crate::event::{ChildSa, ChildSaState, Event, FailReason, Role};
use crate::exchange::{Ctx, ProtocolError, Received, Retransmit, hash_matches};
use crate::lifetime::{collision_rank, rekey_time};
use crate::message::{MessageCrypto, Secured};
use crate::proposal::Phase2Choice;
use crate::snapshot::{AnsweredRequest, QuickModeSnapshot};
use crate::wire::{Payload, PayloadChain, ProtocolId, parse_payloads};

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
    /// The IV chain of this exchange: the last CBC block of its latest message.
    pub iv: Vec<u8>,
    pub spi_in: Spi,
    pub n_i: Vec<u8>,
    pub n_r: Vec<u8>,
    pub dh: Option<DhPrivateKey>,
    pub choice: Option<Phase2Choice>,
    pub spi_out: Spi,
    pub gxy: Option<SecretBytes>,
    pub lifetime: (Option<u64>, Option<u64>),
    pub retransmit: Option<Retransmit>,
    /// Hash of the last request and our answer (QM2 for a responder, QM3 for an initiator).
    pub last_answer: Option<AnsweredRequest>,
    /// Initiator of a rekey: the pair (our inbound SPI) it replaces.
    pub replaces: Option<Spi>,
}

impl QuickMode {
    /// Still under way (not kept only for duplicates).
    pub fn is_open(&self) -> bool {
        self.state != QmState::Done
    }

    /// As plain data: finished, or the peer's waiting for QM3 (not ours waiting for QM2:
    /// their DH and offer do not travel).
    pub fn snapshot(&self) -> QuickModeSnapshot {
        QuickModeSnapshot {
            message_id: self.message_id,
            role: self.role,
            selectors: self.pair,
            awaiting_qm3: self.state == QmState::R2,
            spi_in: self.spi_in,
            iv: self.iv.clone(),
            n_i: self.n_i.clone(),
            n_r: self.n_r.clone(),
            last_answer: self.last_answer.clone(),
        }
    }

    /// From plain data; a restored exchange waiting for QM3 resends QM2 once resumed.
    pub fn restore(s: QuickModeSnapshot) -> Self {
        Self {
            message_id: s.message_id,
            role: s.role,
            state: if s.awaiting_qm3 { QmState::R2 } else { QmState::Done },
            pair: s.selectors,
            iv: s.iv,
            spi_in: s.spi_in,
            n_i: s.n_i,
            n_r: s.n_r,
            dh: None,
            choice: None,
            spi_out: Spi::new(0),
            gxy: None,
            lifetime: (None, None),
            retransmit: None,
            last_answer: s.last_answer,
            replaces: None,
        }
    }
}

/// A decrypted quick mode message: its payloads (HASH first), the bytes after the HASH payload
/// up to the end of the chain (what the HASH covers), and the last ciphertext block.
pub(crate) struct Opened {
    pub chain: PayloadChain,
    hash: Vec<u8>,
    pub rest: Vec<u8>,
    pub last: Vec<u8>,
}

impl Opened {
    /// Checks the HASH against the `expected` one; `which` names it.
    pub fn check_hash(&self, expected: &[u8], which: &str) -> Result<(), ProtocolError> {
        if hash_matches(&self.hash, expected) {
            Ok(())
        } else {
            Err(ProtocolError::BadHash(format!("{which} does not verify")))
        }
    }
}

/// Decrypts a quick mode message with `iv` and checks that HASH comes first.
pub(crate) fn open(crypto: &MessageCrypto, rx: &Received<'_>, iv: &[u8]) -> Result<Opened, ProtocolError> {
    let bad = |what: &str| ProtocolError::Unreadable(format!("quick mode message: {what}"));
    let (plain, last) = crypto.open(rx, iv).map_err(|e| bad(&e.to_string()))?;
    let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|e| bad(&e.to_string()))?;
    let first = chain.payloads.first().ok_or_else(|| bad("empty"))?;
    let Payload::Hash(hash) = &first.payload else { return Err(bad("HASH is not the first payload")) };
    let hash = hash.clone();
    let rest = plain[first.range.end..chain.end].to_vec();
    Ok(Opened { chain, hash, rest, last })
}

/// The peer's PFS key exchange value does not agree with ours.
pub(crate) fn pfs_refused(e: &impl std::fmt::Display) -> ProtocolError {
    ProtocolError::BadKeyExchange {
        reason: FailReason::MalformedMessage,
        detail: format!("PFS key exchange refused: {e}"),
    }
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
/// An initiator sends with it [`FIRST_ACTIVATE_DELAY`] when it is the only SA pair for its
/// selectors, else after [`ACTIVATE_DELAY`]; a responder when QM3 arrives.
pub(crate) fn install(ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet, qm: &mut QuickMode) {
    let Some(choice) = qm.choice.clone() else { return };
    let keys = &channel.crypto.keys;
    let link = channel.link;
    let len = choice.encryption.spec().key_len + choice.integrity.spec().key_len;
    let gxy = qm.gxy.as_ref().map(SecretBytes::expose);
    let keys_in = split_keys(&keys.keymat(gxy, ProtocolId::ESP.0, qm.spi_in, &qm.n_i, &qm.n_r, len), &choice);
    let keys_out = split_keys(&keys.keymat(gxy, ProtocolId::ESP.0, qm.spi_out, &qm.n_i, &qm.n_r, len), &choice);
    let seconds = qm.lifetime.0.unwrap_or(28_800).max(1);
    let lifetime = Duration::from_secs(seconds);
    let role = qm.role;
    let another_active = children.has_active(&qm.pair);
    // What this pair replaces: for our rekey, the pair we set out to replace; for the peer's
    // quick mode, the newest pair not yet replaced, which is the one the peer sends with or
    // (our own rekey, still in its activation delay) the one it has just switched to: the peer
    // replaces that one. Two pairs replacing the same one are a rekey collision
    // (ChildSet::activate settles it).
    let predecessor = qm.replaces.or_else(|| children.newest_unreplaced(&qm.pair));
    let record = ChildRecord {
        spi_in: qm.spi_in,
        spi_out: qm.spi_out,
        pair: qm.pair,
        choice: choice.clone(),
        state: ChildSaState::Installing,
        established_at: ctx.now,
        expires_at: ctx.now + lifetime,
        rekey_at: Some(rekey_time(ctx.now, lifetime, role, ctx.rng)),
        activate_at: (role == Role::Initiator)
            .then(|| ctx.now + if another_active { ACTIVATE_DELAY } else { FIRST_ACTIVATE_DELAY }),
        retire_at: None,
        predecessor,
        rank: collision_rank(&qm.n_i, &qm.n_r),
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
        local: link.local,
        remote: link.remote,
        role,
    };
    qm.dh = None;
    qm.gxy = None;
    children.insert(record);
    ctx.events.push_back(Event::ChildSaEstablished { peer: link.peer.name.clone(), ike_sa: link.id, child });
}
