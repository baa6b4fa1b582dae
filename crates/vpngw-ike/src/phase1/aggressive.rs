//! Aggressive mode (RFC 2409 s.5) with pre-shared keys: three messages, identities in the
//! clear. Initiator: AM1 -> [`ExpectAmReply`] -> AM3, done. Responder: AM1 -> AM2 ->
//! [`ExpectAm3`] -> done.

use vpngw_crypto::DhPrivateKey;

use super::auth::{
    self, AuthInputs, Exchanged, Failed, Phase1Done, Step, accept_reply, check_auth_hash, check_peer_id, derive_keys,
    detect_nat, float, nat_d_payloads, take_ke_nonce, take_vendor_ids,
};
use crate::event::FailReason;
use crate::exchange::{Ctx, NONCE_LEN, ProtocolError, Received};
use crate::message::{Link, MessageCrypto, plain_payloads};
use crate::nat_t::initiator_vendor_ids;
use crate::proposal::{self, Phase1Choice};
use crate::snapshot::AnsweredRequest;
use crate::wire::{ExchangeType, Payload, PayloadChain, parse_payloads};

/// How often a responder resends AM2 without hearing from the initiator.
const AM2_RESENDS: u32 = 2;

const EXCHANGE: ExchangeType = ExchangeType::AGGRESSIVE;

/// Initiator: AM1 sent, waiting for everything from the responder at once.
pub(crate) struct ExpectAmReply {
    sa_i_b: Vec<u8>,
    dh: DhPrivateKey,
    g_i: Vec<u8>,
    n_i: Vec<u8>,
}

/// Responder: AM2 sent, waiting for HASH_I.
pub(crate) struct ExpectAm3 {
    auth: AuthInputs,
    choice: Phase1Choice,
    crypto: MessageCrypto,
    /// The body of the initiator's ID payload (covered by HASH_I).
    peer_id_b: Vec<u8>,
}

/// Aggressive mode, in one of its waiting states.
pub(crate) enum Aggressive {
    Reply(ExpectAmReply),
    Am3(ExpectAm3),
}

impl Aggressive {
    /// Sends AM1 (SA, KE, Ni, ID, vendor IDs).
    pub fn initiate(ctx: &mut Ctx<'_>, link: &mut Link) -> Self {
        let offer = proposal::phase1_offer(&link.peer.phase1);
        let mut sa_i_b = Vec::new();
        offer.encode(&mut sa_i_b);
        let dh = DhPrivateKey::generate(link.peer.phase1.dh_group, ctx.rng);
        let g_i = dh.public_value().to_vec();
        let n_i = ctx.random_bytes(NONCE_LEN);
        let mut payloads = vec![
            Payload::Sa(offer),
            Payload::KeyExchange(g_i.clone()),
            Payload::Nonce(n_i.clone()),
            Payload::Id(link.peer.local_id.to_payload()),
        ];
        payloads.extend(initiator_vendor_ids());
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.send_request(ctx, packet);
        Self::Reply(ExpectAmReply { sa_i_b, dh, g_i, n_i })
    }

    /// Answers AM1 with AM2 (SA, KE, Nr, ID, vendor IDs, NAT-D, HASH_R).
    pub fn respond(ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Self, Failed> {
        let chain = plain_payloads(rx)?;
        let selected = auth::select(link, rx, &chain)?;
        let choice = selected.choice;
        let ke = chain.ke()?;
        let n_i = chain.nonce()?;
        let peer_id_b = check_peer_id(link, &chain)?.body();
        auth::check_ke(&choice, ke)?;
        let (g_r, n_r, gxy) = auth::respond_ke(ctx, &choice, ke)?;
        let x = Exchanged { n_i, n_r: &n_r, g_i: ke, g_r: &g_r, gxy: &gxy };
        let crypto = derive_keys(link, &choice, &x)?;
        let auth = AuthInputs { sa_i_b: selected.sa_i_b, g_i: ke.to_vec(), g_r: g_r.clone() };
        let our_id = link.peer.local_id.to_payload();
        let mut payloads = vec![
            Payload::Sa(selected.reply),
            Payload::KeyExchange(g_r),
            Payload::Nonce(n_r),
            Payload::Id(our_id.clone()),
        ];
        payloads.extend(link.nat.responder_vendor_ids());
        payloads.extend(nat_d_payloads(link, &choice));
        payloads.push(Payload::Hash(auth.hash_r(&crypto.keys, link, &our_id.body())));
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.last_answer = Some(AnsweredRequest::new(rx.data, packet.clone()));
        // AM2 is the middle of a three-message exchange: resent until AM3 arrives, but only
        // twice: the first message is unauthenticated, and each resend goes to whoever's
        // address it carried (a lost AM2 is recovered anyway: the initiator resends AM1).
        link.send_request(ctx, packet);
        if let Some(r) = link.retransmit.as_mut() {
            r.tries_left = r.tries_left.min(AM2_RESENDS);
        }
        Ok(Self::Am3(ExpectAm3 { auth, choice, crypto, peer_id_b }))
    }

    pub fn handle(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Step<Self>, Failed> {
        match self {
            Self::Reply(s) => s.on_am2(ctx, link, rx).map(|done| Step::Done(Box::new(done))),
            Self::Am3(s) => s.on_am3(link, rx).map(|done| Step::Done(Box::new(done))),
        }
    }

    pub fn crypto(&self) -> Option<&MessageCrypto> {
        match self {
            Self::Reply(_) => None,
            Self::Am3(s) => Some(&s.crypto),
        }
    }

    pub fn choice(&self) -> Option<&Phase1Choice> {
        match self {
            Self::Reply(_) => None,
            Self::Am3(s) => Some(&s.choice),
        }
    }

    /// Our first message waits for its answer.
    pub fn awaits_first_reply(&self) -> bool {
        matches!(self, Self::Reply(_))
    }
}

impl ExpectAmReply {
    /// AM2: everything from the responder at once. Verifies HASH_R, sends AM3 (HASH_I, NAT-D).
    fn on_am2(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Phase1Done, Failed> {
        let chain = plain_payloads(rx)?;
        let choice = accept_reply(link, &chain)?;
        link.cky_r = rx.header.responder_cookie;
        take_vendor_ids(link, &chain);
        let (ke, n_r) = take_ke_nonce(&choice, &chain)?;
        let gxy = auth::agree(&self.dh, ke)?;
        let x = Exchanged { n_i: &self.n_i, n_r, g_i: &self.g_i, g_r: ke, gxy: &gxy };
        let mut crypto = derive_keys(link, &choice, &x)?;
        let auth = AuthInputs { sa_i_b: self.sa_i_b, g_i: self.g_i, g_r: ke.to_vec() };
        if let Err(e) = authenticate_responder(link, &choice, &chain, &auth, &crypto) {
            return Err(Failed::keyed(e, crypto));
        }
        float(link);
        let id = link.peer.local_id.to_payload();
        let mut payloads = vec![Payload::Hash(auth.hash_i(&crypto.keys, link, &id.body()))];
        payloads.extend(nat_d_payloads(link, &choice));
        let packet = crypto.seal_phase1(link, EXCHANGE, &payloads);
        // AM3 expects no answer: kept to resend if AM2 comes again.
        link.last_answer = Some(AnsweredRequest::new(rx.data, packet.clone()));
        link.transmit(ctx, packet);
        Ok(Phase1Done { crypto, choice, initial_contact: None })
    }
}

/// AM2's identity, HASH_R and NAT-D.
fn authenticate_responder(
    link: &mut Link,
    choice: &Phase1Choice,
    chain: &PayloadChain,
    auth: &AuthInputs,
    crypto: &MessageCrypto,
) -> Result<(), ProtocolError> {
    let id = check_peer_id(link, chain)?;
    check_auth_hash(chain.hash()?, &auth.hash_r(&crypto.keys, link, &id.body()), "HASH_R")?;
    detect_nat(link, choice, chain)
}

impl ExpectAm3 {
    /// AM3: HASH_I (encrypted or not) and NAT-D. Phase 1 done.
    fn on_am3(mut self, link: &mut Link, rx: &Received<'_>) -> Result<Phase1Done, Failed> {
        match self.verify(link, rx) {
            Ok(()) => Ok(Phase1Done { crypto: self.crypto, choice: self.choice, initial_contact: None }),
            Err(e) => Err(Failed::keyed(e, self.crypto)),
        }
    }

    fn verify(&mut self, link: &mut Link, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let psk_hint = |detail: &str| ProtocolError::Malformed {
            reason: FailReason::AuthenticationFailed,
            detail: format!("{detail}: likely pre-shared key mismatch"),
        };
        let chain = if rx.header.is_encrypted() {
            let (plain, last) =
                self.crypto.open_phase1(rx).map_err(|_| psk_hint("cannot decrypt aggressive mode message 3"))?;
            let chain = parse_payloads(rx.header.next_payload, &plain, true)
                .map_err(|_| psk_hint("aggressive mode message 3 decrypts to garbage"))?;
            self.crypto.advance(last);
            chain
        } else {
            plain_payloads(rx)?
        };
        // HASH_I covers the ID payload body the initiator sent in AM1.
        check_auth_hash(chain.hash()?, &self.auth.hash_i(&self.crypto.keys, link, &self.peer_id_b), "HASH_I")?;
        // AM3 comes from the initiator's floated ports when it saw a NAT; its NAT-D payloads
        // describe the addresses of this very message.
        link.local = rx.local;
        link.remote = rx.remote;
        detect_nat(link, &self.choice, &chain)
    }
}
