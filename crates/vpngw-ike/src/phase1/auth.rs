//! What main and aggressive mode share: the proposal, the key exchange, the key derivation,
//! the identity check and HASH_I/HASH_R (RFC 2409 s.5), and the outcome of a phase 1 step.

use vpngw_crypto::{CbcCipher, CryptoError, DhPrivateKey, SecretBytes};

use crate::config::Identity;
use crate::event::FailReason;
use crate::exchange::{Ctx, IKE_PORT, NAT_T_PORT, NONCE_LEN, ProtocolError, Received, hash_matches};
use crate::keys::{Phase1Inputs, Phase1Keys, phase1_iv};
use crate::message::{Link, MessageCrypto};
use crate::nat_t::{NatDInputs, read_vendor_ids};
use crate::proposal::{self, Phase1Choice};
use crate::wire::{HEADER_LEN, IdPayload, Payload, PayloadChain, PayloadType, SaPayload, WireError};

/// What a finished phase 1 hands over: the keys, the choice, and (main mode responder)
/// whether the peer's MM5 carried INITIAL-CONTACT.
pub(crate) struct Phase1Done {
    pub crypto: MessageCrypto,
    pub choice: Phase1Choice,
    pub initial_contact: Option<bool>,
}

/// A phase 1 step's outcome: the next waiting state, or phase 1 done.
pub(crate) enum Step<S> {
    Next(S),
    Done(Box<Phase1Done>),
}

impl<S> Step<S> {
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Step<T> {
        match self {
            Self::Next(s) => Step::Next(f(s)),
            Self::Done(d) => Step::Done(d),
        }
    }
}

/// A phase 1 step that failed: the error, and the keys when they existed already (the notify
/// to the peer is then encrypted).
pub(crate) struct Failed {
    pub error: ProtocolError,
    pub crypto: Option<Box<MessageCrypto>>,
}

impl From<ProtocolError> for Failed {
    fn from(error: ProtocolError) -> Self {
        Self { error, crypto: None }
    }
}

impl From<WireError> for Failed {
    fn from(e: WireError) -> Self {
        ProtocolError::from(e).into()
    }
}

impl Failed {
    pub fn keyed(error: ProtocolError, crypto: MessageCrypto) -> Self {
        Self { error, crypto: Some(Box::new(crypto)) }
    }
}

/// What HASH_I and HASH_R cover besides SKEYID and the identities: both DH values and the
/// body of the initiator's SA payload.
pub(crate) struct AuthInputs {
    pub sa_i_b: Vec<u8>,
    pub g_i: Vec<u8>,
    pub g_r: Vec<u8>,
}

impl AuthInputs {
    /// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).
    pub fn hash_i(&self, keys: &Phase1Keys, link: &Link, id_b: &[u8]) -> Vec<u8> {
        keys.auth_hash(&self.g_i, &self.g_r, &link.cky_i, &link.cky_r, &self.sa_i_b, id_b)
    }

    /// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).
    pub fn hash_r(&self, keys: &Phase1Keys, link: &Link, id_b: &[u8]) -> Vec<u8> {
        keys.auth_hash(&self.g_r, &self.g_i, &link.cky_r, &link.cky_i, &self.sa_i_b, id_b)
    }
}

/// Verifies the peer's HASH_I or HASH_R (`which`).
pub(crate) fn check_auth_hash(received: &[u8], expected: &[u8], which: &str) -> Result<(), ProtocolError> {
    if hash_matches(received, expected) {
        Ok(())
    } else {
        Err(ProtocolError::AuthenticationFailed(format!("{which} does not verify: pre-shared key mismatch")))
    }
}

/// The nonces and g^xy a key derivation takes.
pub(crate) struct Exchanged<'a> {
    pub n_i: &'a [u8],
    pub n_r: &'a [u8],
    pub g_i: &'a [u8],
    pub g_r: &'a [u8],
    pub gxy: &'a SecretBytes,
}

/// SKEYID*, the phase 1 cipher and its first IV.
pub(crate) fn derive_keys(
    link: &Link,
    choice: &Phase1Choice,
    x: &Exchanged<'_>,
) -> Result<MessageCrypto, ProtocolError> {
    let keys = Phase1Keys::derive(
        &Phase1Inputs {
            hash: choice.hash,
            psk: link.peer.psk.expose(),
            ni: x.n_i,
            nr: x.n_r,
            gxy: x.gxy.expose(),
            cky_i: &link.cky_i,
            cky_r: &link.cky_r,
        },
        choice.encryption,
    );
    let cipher = CbcCipher::new(choice.encryption, keys.encryption_key.expose())
        .map_err(|e| ProtocolError::unannounced(FailReason::MalformedMessage, format!("phase 1 key refused: {e}")))?;
    let iv = phase1_iv(choice.hash, x.g_i, x.g_r, cipher.block_len());
    Ok(MessageCrypto::new(keys, cipher, iv))
}

/// The peer's identity payload, checked against the configured `remote_id`.
pub(crate) fn check_peer_id<'c>(link: &Link, chain: &'c PayloadChain) -> Result<&'c IdPayload, ProtocolError> {
    let id = chain.id().map_err(|_| ProtocolError::MissingPayload("no ID payload".into()))?;
    match Identity::from_payload(id) {
        Some(got) if got.matches(&link.peer.remote_id) => Ok(id),
        got => Err(ProtocolError::BadId {
            reason: FailReason::IdMismatch,
            detail: format!(
                "remote_id: peer sent {}, configured {}",
                got.map_or_else(|| format!("{} (unsupported)", id.id_type), |g| g.to_string()),
                link.peer.remote_id
            ),
        }),
    }
}

/// The peer's KE, checked against the chosen group.
pub(crate) fn check_ke(choice: &Phase1Choice, ke: &[u8]) -> Result<(), ProtocolError> {
    let g = choice.dh_group;
    if ke.len() == g.modulus_len() {
        Ok(())
    } else {
        Err(ProtocolError::BadKeyExchange {
            reason: FailReason::Phase1ProposalMismatch,
            detail: format!(
                "dh_group: peer's key exchange has {} bytes, {} needs {}",
                ke.len(),
                g.name(),
                g.modulus_len()
            ),
        })
    }
}

/// The peer's KE and nonce, the KE checked against the chosen group.
pub(crate) fn take_ke_nonce<'c>(
    choice: &Phase1Choice,
    chain: &'c PayloadChain,
) -> Result<(&'c [u8], &'c [u8]), ProtocolError> {
    let ke = chain.ke()?;
    let nonce = chain.nonce()?;
    check_ke(choice, ke)?;
    Ok((ke, nonce))
}

/// g^xy.
pub(crate) fn agree(dh: &DhPrivateKey, peer_public: &[u8]) -> Result<SecretBytes, ProtocolError> {
    shared_secret(dh.agree(peer_public))
}

/// g^xy as computed, or why the peer's public value was refused.
pub(crate) fn shared_secret(agreed: Result<SecretBytes, CryptoError>) -> Result<SecretBytes, ProtocolError> {
    agreed.map_err(|e| ProtocolError::BadKeyExchange {
        reason: FailReason::MalformedMessage,
        detail: format!("peer's DH value refused: {e}"),
    })
}

/// Responder: our DH value, nonce and g^xy for the initiator's KE.
pub(crate) fn respond_ke(
    ctx: &mut Ctx<'_>,
    choice: &Phase1Choice,
    ke: &[u8],
) -> Result<(Vec<u8>, Vec<u8>, SecretBytes), ProtocolError> {
    let dh = DhPrivateKey::generate(choice.dh_group, ctx.rng);
    let g_r = dh.public_value().to_vec();
    let gxy = agree(&dh, ke)?;
    let n_r = ctx.random_bytes(NONCE_LEN);
    Ok((g_r, n_r, gxy))
}

/// Initiator: the responder's SA payload, our own proposal or a mismatch.
pub(crate) fn accept_reply(link: &Link, chain: &PayloadChain) -> Result<Phase1Choice, ProtocolError> {
    proposal::accept_phase1_reply(&link.peer.phase1, chain.sa()?).map_err(|m| ProtocolError::NoProposalChosen {
        reason: FailReason::Phase1ProposalMismatch,
        detail: format!("peer answered with another proposal: {m}"),
    })
}

/// What a responder takes from the first message: its reply SA, the choice and SAi_b.
pub(crate) struct Selected {
    pub reply: SaPayload,
    pub choice: Phase1Choice,
    pub sa_i_b: Vec<u8>,
}

/// Responder: picks a proposal from the first message and reads its vendor IDs.
pub(crate) fn select(link: &mut Link, rx: &Received<'_>, chain: &PayloadChain) -> Result<Selected, ProtocolError> {
    let raw = chain
        .payloads
        .iter()
        .find(|p| p.payload.kind() == PayloadType::SA)
        .ok_or(WireError::MissingPayload(PayloadType::SA))?;
    let Payload::Sa(offer) = &raw.payload else {
        return Err(WireError::MissingPayload(PayloadType::SA).into());
    };
    let (reply, choice) =
        proposal::select_phase1(&link.peer.phase1, offer).map_err(|m| ProtocolError::NoProposalChosen {
            reason: FailReason::Phase1ProposalMismatch,
            detail: format!("phase 1 proposal mismatch with {}: {m}", rx.remote.ip()),
        })?;
    let body = &rx.data[HEADER_LEN..rx.header.length as usize];
    let sa_i_b = body[raw.body_range()].to_vec();
    take_vendor_ids(link, chain);
    Ok(Selected { reply, choice, sa_i_b })
}

/// Reads the peer's vendor IDs into the link.
pub(crate) fn take_vendor_ids(link: &mut Link, chain: &PayloadChain) {
    let v = read_vendor_ids(chain, &link.peer.name);
    link.nat.variant = v.nat_t;
    if v.dpd {
        link.peer_supports_dpd = true;
    }
}

/// The inputs of our NAT-D payloads and of the check of the peer's.
pub(crate) fn nat_inputs<'a>(link: &'a Link, choice: &Phase1Choice) -> NatDInputs<'a> {
    NatDInputs {
        hash: choice.hash,
        cky_i: &link.cky_i,
        cky_r: &link.cky_r,
        local: link.local,
        remote: link.remote,
        forced: link.peer.force_udp_encapsulation,
    }
}

/// Our NAT-D payloads, when NAT-T was negotiated.
pub(crate) fn nat_d_payloads(link: &Link, choice: &Phase1Choice) -> Vec<Payload> {
    link.nat.nat_d_payloads(&nat_inputs(link, choice))
}

/// Checks the peer's NAT-D payloads.
pub(crate) fn detect_nat(link: &mut Link, choice: &Phase1Choice, chain: &PayloadChain) -> Result<(), ProtocolError> {
    let mut nat = link.nat;
    nat.detect(chain, &nat_inputs(link, choice), &link.peer.name)?;
    link.nat = nat;
    Ok(())
}

/// Moves IKE to port 4500 (both sides) once a NAT was detected (RFC 3947 s.4).
pub(crate) fn float(link: &mut Link) {
    if link.nat.detected && link.local.port() == IKE_PORT {
        link.local.set_port(NAT_T_PORT);
        link.remote.set_port(NAT_T_PORT);
    }
}
