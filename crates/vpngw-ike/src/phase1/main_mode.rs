//! Main mode (RFC 2409 s.5, identity protection) with pre-shared keys, one waiting state per
//! message: each consumes itself on the message it waits for and returns the next, and only
//! the states after the key exchange hold keys.
//!
//! Initiator: MM1 -> [`ExpectMmSaReply`] -> MM3 -> [`ExpectMmKeReply`] -> MM5 ->
//! [`ExpectMmIdReply`] -> done. Responder: MM1 -> MM2 -> [`ExpectMmKe`] -> MM4 -> [`ExpectMmId`]
//! -> MM6, done.
//!
//! The three steps that exponentiate (the initiator's before MM3 and on MM4, the responder's
//! on MM3) hand the work to `Ctx::diffie_hellman` and wait in a `Computing*` state for its
//! result; when Diffie-Hellman is not offloaded the result comes back at once and the
//! exchange goes on in the same call (`dh_work.rs`).

use vpngw_crypto::{DhExponent, DhPrivateKey, SecretBytes};

use super::auth::{
    self, AuthInputs, Exchanged, Failed, Phase1Done, Step, accept_reply, check_auth_hash, check_peer_id, derive_keys,
    detect_nat, float, nat_d_payloads, shared_secret, take_ke_nonce, take_vendor_ids,
};
use crate::dh_work::{DhResult, DhTask};
use crate::event::FailReason;
use crate::exchange::{Ctx, NONCE_LEN, ProtocolError, Received};
use crate::info;
use crate::message::{Link, MessageCrypto, plain_payloads};
use crate::nat_t::initiator_vendor_ids;
use crate::proposal::{self, Phase1Choice};
use crate::wire::{ExchangeType, NotifyType, Payload, ProtocolId, parse_payloads};

const EXCHANGE: ExchangeType = ExchangeType::IDENTITY_PROTECTION;

/// Initiator: MM1 sent, waiting for the responder's choice.
pub(crate) struct ExpectMmSaReply {
    sa_i_b: Vec<u8>,
    /// Send INITIAL-CONTACT in MM5 (first contact with this peer).
    initial_contact: bool,
}

/// Initiator: MM3 sent, waiting for the responder's KE and nonce.
pub(crate) struct ExpectMmKeReply {
    sa_i_b: Vec<u8>,
    initial_contact: bool,
    choice: Phase1Choice,
    dh: DhPrivateKey,
    g_i: Vec<u8>,
    n_i: Vec<u8>,
}

/// Initiator: MM2 taken, our public value being computed for MM3.
pub(crate) struct ComputingMm3 {
    sa_i_b: Vec<u8>,
    initial_contact: bool,
    choice: Phase1Choice,
}

/// Initiator: MM4 taken, g^xy being computed for the keys that seal MM5.
pub(crate) struct ComputingMm5 {
    sa_i_b: Vec<u8>,
    initial_contact: bool,
    choice: Phase1Choice,
    g_i: Vec<u8>,
    n_i: Vec<u8>,
    g_r: Vec<u8>,
    n_r: Vec<u8>,
    /// NAT detection's verdict on MM4, reported under the keys once they exist.
    nat: Result<(), ProtocolError>,
}

/// Initiator: MM5 sent, waiting for the responder's identity and HASH_R.
pub(crate) struct ExpectMmIdReply {
    auth: AuthInputs,
    choice: Phase1Choice,
    crypto: MessageCrypto,
}

/// Responder: MM2 sent, waiting for the initiator's KE and nonce.
pub(crate) struct ExpectMmKe {
    sa_i_b: Vec<u8>,
    choice: Phase1Choice,
}

/// Responder: MM3 taken, our public value and g^xy being computed for MM4.
pub(crate) struct ComputingMm4 {
    sa_i_b: Vec<u8>,
    choice: Phase1Choice,
    g_i: Vec<u8>,
    n_i: Vec<u8>,
    nat: Result<(), ProtocolError>,
    /// MM3 itself: MM4 answers it (a copy of MM3 then gets MM4 again).
    request: Vec<u8>,
}

/// Responder: MM4 sent, waiting for the initiator's identity and HASH_I.
pub(crate) struct ExpectMmId {
    auth: AuthInputs,
    choice: Phase1Choice,
    crypto: MessageCrypto,
}

/// Main mode, in one of its waiting states.
pub(crate) enum MainMode {
    SaReply(ExpectMmSaReply),
    KeReply(ExpectMmKeReply),
    IdReply(ExpectMmIdReply),
    Ke(ExpectMmKe),
    Id(ExpectMmId),
    ComputingMm3(ComputingMm3),
    ComputingMm5(ComputingMm5),
    ComputingMm4(ComputingMm4),
}

impl MainMode {
    /// Sends MM1 (our offer and vendor IDs).
    pub fn initiate(ctx: &mut Ctx<'_>, link: &mut Link, initial_contact: bool) -> Self {
        let offer = proposal::phase1_offer(&link.peer.phase1);
        let mut sa_i_b = Vec::new();
        offer.encode(&mut sa_i_b);
        let mut payloads = vec![Payload::Sa(offer)];
        payloads.extend(initiator_vendor_ids());
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.send_request(ctx, packet);
        Self::SaReply(ExpectMmSaReply { sa_i_b, initial_contact })
    }

    /// Answers MM1 with MM2 (the chosen proposal, our vendor IDs).
    pub fn respond(ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Self, ProtocolError> {
        let chain = plain_payloads(rx)?;
        let selected = auth::select(link, rx, &chain)?;
        let mut payloads = vec![Payload::Sa(selected.reply)];
        payloads.extend(link.nat.responder_vendor_ids());
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.send_answer(ctx, rx.data, packet);
        Ok(Self::Ke(ExpectMmKe { sa_i_b: selected.sa_i_b, choice: selected.choice }))
    }

    pub fn handle(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Step<Self>, Failed> {
        match self {
            Self::SaReply(s) => s.on_mm2(ctx, link, rx),
            Self::KeReply(s) => s.on_mm4(ctx, link, rx),
            Self::IdReply(s) => s.on_mm6(link, rx).map(|done| Step::Done(Box::new(done))),
            Self::Ke(s) => s.on_mm3(ctx, link, rx),
            Self::Id(s) => s.on_mm5(ctx, link, rx).map(|done| Step::Done(Box::new(done))),
            // The IKE SA holds messages back while we compute; nothing moves until the result.
            computing @ (Self::ComputingMm3(_) | Self::ComputingMm5(_) | Self::ComputingMm4(_)) => {
                Ok(Step::Next(computing))
            }
        }
    }

    /// Hands `task` to Diffie-Hellman and goes on with its result, now (not offloaded) or when
    /// the driver brings it ([`MainMode::on_dh_done`]).
    fn compute(self, ctx: &mut Ctx<'_>, link: &mut Link, task: DhTask) -> Result<Step<Self>, Failed> {
        match ctx.diffie_hellman(link.id, task) {
            Some(result) => self.on_dh_done(ctx, link, result),
            None => Ok(Step::Next(self)),
        }
    }

    /// The result of the Diffie-Hellman work this exchange waits for. A result for a state that
    /// does not wait for one changes nothing.
    pub fn on_dh_done(self, ctx: &mut Ctx<'_>, link: &mut Link, result: DhResult) -> Result<Step<Self>, Failed> {
        match (self, result) {
            (Self::ComputingMm3(s), DhResult { key: Some(key), shared: None }) => {
                Ok(Step::Next(Self::KeReply(s.send_mm3(ctx, link, key))))
            }
            (Self::ComputingMm5(s), DhResult { key: None, shared: Some(shared) }) => {
                s.send_mm5(ctx, link, shared_secret(shared)?).map(|s| Step::Next(Self::IdReply(s)))
            }
            (Self::ComputingMm4(s), DhResult { key: Some(key), shared: Some(shared) }) => {
                s.send_mm4(ctx, link, &key, shared_secret(shared)?).map(|s| Step::Next(Self::Id(s)))
            }
            (other, _) => Ok(Step::Next(other)),
        }
    }

    /// Waiting for Diffie-Hellman work: the peer's messages wait too.
    pub fn is_computing(&self) -> bool {
        matches!(self, Self::ComputingMm3(_) | Self::ComputingMm5(_) | Self::ComputingMm4(_))
    }

    /// The keys, once derived.
    pub fn crypto(&self) -> Option<&MessageCrypto> {
        match self {
            Self::IdReply(s) => Some(&s.crypto),
            Self::Id(s) => Some(&s.crypto),
            Self::SaReply(_)
            | Self::KeReply(_)
            | Self::Ke(_)
            | Self::ComputingMm3(_)
            | Self::ComputingMm5(_)
            | Self::ComputingMm4(_) => None,
        }
    }

    pub fn choice(&self) -> Option<&Phase1Choice> {
        match self {
            Self::SaReply(_) => None,
            Self::KeReply(s) => Some(&s.choice),
            Self::IdReply(s) => Some(&s.choice),
            Self::Ke(s) => Some(&s.choice),
            Self::Id(s) => Some(&s.choice),
            Self::ComputingMm3(s) => Some(&s.choice),
            Self::ComputingMm5(s) => Some(&s.choice),
            Self::ComputingMm4(s) => Some(&s.choice),
        }
    }

    /// Our MM5 waits for its answer: silence or an unreadable answer then most likely means
    /// that the pre-shared keys differ.
    pub fn awaits_mm6(&self) -> bool {
        matches!(self, Self::IdReply(_))
    }

    /// Our first message waits for its answer.
    pub fn awaits_first_reply(&self) -> bool {
        matches!(self, Self::SaReply(_))
    }

    /// We answered the peer's first message and wait for its KE (the message that costs us
    /// a Diffie-Hellman computation).
    pub fn awaits_ke(&self) -> bool {
        matches!(self, Self::Ke(_))
    }
}

impl ExpectMmSaReply {
    /// MM2: the responder's choice and vendor IDs. Sends MM3 (KE, Ni, NAT-D).
    fn on_mm2(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Step<MainMode>, Failed> {
        let chain = plain_payloads(rx)?;
        let choice = accept_reply(link, &chain)?;
        link.cky_r = rx.header.responder_cookie;
        take_vendor_ids(link, &chain);
        let task = DhTask::PublicValue { exponent: DhExponent::random(choice.dh_group, ctx.rng) };
        let next = ComputingMm3 { sa_i_b: self.sa_i_b, initial_contact: self.initial_contact, choice };
        MainMode::ComputingMm3(next).compute(ctx, link, task)
    }
}

impl ComputingMm3 {
    /// Sends MM3 (KE, Ni, NAT-D) with the public value computed.
    fn send_mm3(self, ctx: &mut Ctx<'_>, link: &mut Link, dh: DhPrivateKey) -> ExpectMmKeReply {
        let g_i = dh.public_value().to_vec();
        let n_i = ctx.random_bytes(NONCE_LEN);
        let mut payloads = vec![Payload::KeyExchange(g_i.clone()), Payload::Nonce(n_i.clone())];
        payloads.extend(nat_d_payloads(link, &self.choice));
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.send_request(ctx, packet);
        ExpectMmKeReply {
            sa_i_b: self.sa_i_b,
            initial_contact: self.initial_contact,
            choice: self.choice,
            dh,
            g_i,
            n_i,
        }
    }
}

impl ExpectMmKeReply {
    /// MM4: the responder's KE and nonce. Derives keys, detects NAT, sends MM5 (ID, HASH_I).
    fn on_mm4(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Step<MainMode>, Failed> {
        let chain = plain_payloads(rx)?;
        let (ke, n_r) = take_ke_nonce(&self.choice, &chain)?;
        let nat = detect_nat(link, &self.choice, &chain);
        let task = DhTask::Shared { key: self.dh, peer_public: ke.to_vec() };
        let next = ComputingMm5 {
            sa_i_b: self.sa_i_b,
            initial_contact: self.initial_contact,
            choice: self.choice,
            g_i: self.g_i,
            n_i: self.n_i,
            g_r: ke.to_vec(),
            n_r: n_r.to_vec(),
            nat,
        };
        MainMode::ComputingMm5(next).compute(ctx, link, task)
    }
}

impl ComputingMm5 {
    /// Derives keys from g^xy, sends MM5 (ID, HASH_I).
    fn send_mm5(self, ctx: &mut Ctx<'_>, link: &mut Link, gxy: SecretBytes) -> Result<ExpectMmIdReply, Failed> {
        let x = Exchanged { n_i: &self.n_i, n_r: &self.n_r, g_i: &self.g_i, g_r: &self.g_r, gxy: &gxy };
        let mut crypto = derive_keys(link, &self.choice, &x)?;
        let auth = AuthInputs { sa_i_b: self.sa_i_b, g_i: self.g_i, g_r: self.g_r };
        if let Err(e) = self.nat {
            return Err(Failed::keyed(e, crypto));
        }
        float(link);
        let id = link.peer.local_id.to_payload();
        let hash = auth.hash_i(&crypto.keys, link, &id.body());
        let mut payloads = vec![Payload::Id(id), Payload::Hash(hash)];
        if self.initial_contact {
            payloads.push(info::notify(ProtocolId::ISAKMP, NotifyType::INITIAL_CONTACT, link.cookies(), Vec::new()));
        }
        let packet = crypto.seal_phase1(link, EXCHANGE, &payloads);
        link.send_request(ctx, packet);
        Ok(ExpectMmIdReply { auth, choice: self.choice, crypto })
    }
}

impl ExpectMmIdReply {
    /// MM6: the responder's identity and HASH_R. Phase 1 done.
    fn on_mm6(mut self, link: &Link, rx: &Received<'_>) -> Result<Phase1Done, Failed> {
        match self.verify(link, rx) {
            Ok(last) => {
                self.crypto.advance(last);
                Ok(Phase1Done { crypto: self.crypto, choice: self.choice, initial_contact: None })
            }
            Err(e) => Err(Failed::keyed(e, self.crypto)),
        }
    }

    /// Returns MM6's last ciphertext block.
    fn verify(&self, link: &Link, rx: &Received<'_>) -> Result<Vec<u8>, ProtocolError> {
        let psk_hint = || {
            ProtocolError::unannounced(
                FailReason::AuthenticationFailed,
                "main mode message 6 does not decrypt: likely pre-shared key mismatch",
            )
        };
        if !rx.header.is_encrypted() {
            return Err(ProtocolError::unannounced(FailReason::MalformedMessage, "main mode message 6 not encrypted"));
        }
        let (plain, last) = self.crypto.open_phase1(rx).map_err(|_| psk_hint())?;
        let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|_| psk_hint())?;
        let id = check_peer_id(link, &chain)?;
        check_auth_hash(chain.hash()?, &self.auth.hash_r(&self.crypto.keys, link, &id.body()), "HASH_R")?;
        Ok(last)
    }
}

impl ExpectMmKe {
    /// MM3: the initiator's KE and nonce. Derives keys, detects NAT, sends MM4 (KE, Nr, NAT-D).
    fn on_mm3(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Step<MainMode>, Failed> {
        let chain = plain_payloads(rx)?;
        let (ke, n_i) = take_ke_nonce(&self.choice, &chain)?;
        let nat = detect_nat(link, &self.choice, &chain);
        let exponent = DhExponent::random(self.choice.dh_group, ctx.rng);
        let task = DhTask::PublicValueAndShared { exponent, peer_public: ke.to_vec() };
        let next = ComputingMm4 {
            sa_i_b: self.sa_i_b,
            choice: self.choice,
            g_i: ke.to_vec(),
            n_i: n_i.to_vec(),
            nat,
            request: rx.data.to_vec(),
        };
        MainMode::ComputingMm4(next).compute(ctx, link, task)
    }
}

impl ComputingMm4 {
    /// Derives keys from g^xy, answers MM3 with MM4 (KE, Nr, NAT-D).
    fn send_mm4(
        self,
        ctx: &mut Ctx<'_>,
        link: &mut Link,
        dh: &DhPrivateKey,
        gxy: SecretBytes,
    ) -> Result<ExpectMmId, Failed> {
        let g_r = dh.public_value().to_vec();
        let n_r = ctx.random_bytes(NONCE_LEN);
        let x = Exchanged { n_i: &self.n_i, n_r: &n_r, g_i: &self.g_i, g_r: &g_r, gxy: &gxy };
        let crypto = derive_keys(link, &self.choice, &x)?;
        if let Err(e) = self.nat {
            return Err(Failed::keyed(e, crypto));
        }
        let mut payloads = vec![Payload::KeyExchange(g_r.clone()), Payload::Nonce(n_r)];
        payloads.extend(nat_d_payloads(link, &self.choice));
        let packet = link.build_clear(EXCHANGE, 0, &payloads);
        link.send_answer(ctx, &self.request, packet);
        let auth = AuthInputs { sa_i_b: self.sa_i_b, g_i: self.g_i, g_r };
        Ok(ExpectMmId { auth, choice: self.choice, crypto })
    }
}

impl ExpectMmId {
    /// MM5: the initiator's identity and HASH_I. Sends MM6 (ID, HASH_R): phase 1 done.
    fn on_mm5(mut self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Phase1Done, Failed> {
        let initial_contact = match self.verify(link, rx) {
            Ok(initial_contact) => initial_contact,
            Err(e) => return Err(Failed::keyed(e, self.crypto)),
        };
        // The initiator floats to 4500 for MM5 when it sees a NAT: follow it.
        link.local = rx.local;
        link.remote = rx.remote;
        let id = link.peer.local_id.to_payload();
        let payloads =
            vec![Payload::Id(id.clone()), Payload::Hash(self.auth.hash_r(&self.crypto.keys, link, &id.body()))];
        let packet = self.crypto.seal_phase1(link, EXCHANGE, &payloads);
        link.send_answer(ctx, rx.data, packet);
        Ok(Phase1Done { crypto: self.crypto, choice: self.choice, initial_contact: Some(initial_contact) })
    }

    /// Decrypts and checks MM5; returns whether it carries INITIAL-CONTACT. Later messages use
    /// the IV chain from MM5 on, whether we accept it or report on it.
    fn verify(&mut self, link: &Link, rx: &Received<'_>) -> Result<bool, ProtocolError> {
        let psk_hint = || ProtocolError::Malformed {
            reason: FailReason::AuthenticationFailed,
            detail: format!(
                "cannot decrypt main mode message 5 from {}: likely pre-shared key mismatch",
                rx.remote.ip()
            ),
        };
        if !rx.header.is_encrypted() {
            return Err(ProtocolError::Malformed {
                reason: FailReason::MalformedMessage,
                detail: "main mode message 5 not encrypted".into(),
            });
        }
        let (plain, last) = self.crypto.open_phase1(rx).map_err(|_| psk_hint())?;
        let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|_| psk_hint())?;
        self.crypto.advance(last);
        let id = check_peer_id(link, &chain)?;
        check_auth_hash(chain.hash()?, &self.auth.hash_i(&self.crypto.keys, link, &id.body()), "HASH_I")?;
        Ok(chain.notifies().any(|n| n.notify_type == NotifyType::INITIAL_CONTACT))
    }
}
