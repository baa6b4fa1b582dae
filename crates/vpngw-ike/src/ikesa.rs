//! One IKE SA: phase 1 (main or aggressive mode), its informational exchanges, and the quick
//! modes it protects (in `quick_mode.rs`).
//!
//! Message crypto follows RFC 2409 and strongSwan's reading of it (docs/interop): phase 1 IV =
//! hash(g^xi | g^xr), then the last ciphertext block of each phase 1 message; phase 2 and
//! informational IVs start at hash(last phase 1 block | M-ID); quick mode chains per M-ID,
//! informational messages do not chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpngw_crypto::rand_core::Rng;
use vpngw_crypto::{CbcCipher, DhPrivateKey};

use crate::child::ChildRecord;
use crate::config::{ExchangeMode, Identity, PeerConfig};
use crate::event::{DeleteReason, Event, FailReason, IkeSaId, IkeSaInfo, Role};
use crate::exchange::{
    Ctx, IKE_PORT, NAT_T_PORT, NONCE_LEN, ProtocolError, Received, Retransmit, RetransmitDue, Transmit, hash_matches,
    nonzero_cookie, packet_hash,
};
use crate::keys::{Phase1Inputs, Phase1Keys, nat_d, phase1_iv, phase2_iv};
use crate::liveness::{self, Liveness};
use crate::proposal::{self, Phase1Choice};
use crate::quick_mode::QuickMode;
use crate::timer::Timer;
use crate::wire::{
    DOI_IPSEC, DeletePayload, ExchangeType, FLAG_ENCRYPTED, HEADER_LEN, IdPayload, IsakmpHeader, NotifyPayload,
    NotifyType, Payload, PayloadChain, PayloadType, ProtocolId, SaPayload, VERSION_1_0, WireError, encode_payloads,
    parse_payloads, vendor_id,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Main mode initiator: MM1 sent.
    MmI1,
    MmI3,
    MmI5,
    /// Main mode responder: MM2 sent.
    MmR2,
    MmR4,
    /// Aggressive mode initiator: AM1 sent.
    AmI1,
    /// Aggressive mode responder: AM2 sent.
    AmR2,
    Established,
    /// Gone: the endpoint removes it.
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::MmI1 | Self::MmI3 | Self::MmI5 | Self::MmR2 | Self::MmR4 => "negotiating (main mode)",
            Self::AmI1 | Self::AmR2 => "negotiating (aggressive mode)",
            Self::Established => "established",
            Self::Dead => "deleted",
        }
    }
}

pub(crate) struct IkeSa {
    pub id: IkeSaId,
    pub peer: Arc<PeerConfig>,
    pub role: Role,
    pub mode: ExchangeMode,
    pub cky_i: [u8; 8],
    pub cky_r: [u8; 8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: State,
    /// NAT-T negotiated by vendor ID: Some(false) = RFC 3947, Some(true) = a draft.
    pub nat_t: Option<bool>,
    pub nat_detected: bool,
    pub peer_supports_dpd: bool,
    /// Send INITIAL-CONTACT in MM5 (first contact with this peer).
    pub initial_contact: bool,
    /// The peer sent INITIAL-CONTACT: the endpoint drops older SAs with it.
    pub initial_contact_received: bool,
    /// The initiator cookie of the peer's exchange dropped for this one when both sides
    /// initiated at once, and how many copies of its first message were dropped (see
    /// `Endpoint::settle_crossed_initiation`).
    pub crossed_dropped: Option<([u8; 8], u32)>,
    sa_i_b: Vec<u8>,
    dh: Option<DhPrivateKey>,
    g_i: Vec<u8>,
    g_r: Vec<u8>,
    n_i: Vec<u8>,
    n_r: Vec<u8>,
    pub choice: Option<Phase1Choice>,
    pub keys: Option<Phase1Keys>,
    pub cipher: Option<CbcCipher>,
    /// Phase 1 IV chain; after establishment, the last phase 1 CBC block.
    pub iv: Vec<u8>,
    pub retransmit: Option<Retransmit>,
    /// The last request we answered (hash of its bytes) and our answer, to resend on duplicates.
    last_answer: Option<(u64, Vec<u8>)>,
    pub quick_modes: Vec<QuickMode>,
    /// Subnet pairs waiting for a quick mode of ours (a few run at a time).
    pub qm_queue: std::collections::VecDeque<crate::quick_mode::Queued>,
    /// Message IDs of quick modes of ours given up after a refusal (their late answers are
    /// dropped, not taken for new exchanges).
    pub aborted_exchanges: std::collections::VecDeque<u32>,
    pub children: Vec<ChildRecord>,
    /// A responder that is not established by then is dropped.
    half_open_deadline: Option<Instant>,
    /// The body of the initiator's ID payload in aggressive mode (covered by HASH_I in AM3).
    peer_id_b: Vec<u8>,
    pub established_at: Option<Instant>,
    pub expires_at: Option<Instant>,
    pub liveness: Liveness,
    /// A newer IKE SA with the same peer took over its child SAs: no DPD, no
    /// re-authentication; it goes when the peer deletes it or soon after.
    pub superseded: bool,
    /// The endpoint has looked at this SA since it was established (adoption of child SAs).
    pub settled: bool,
    /// This SA re-authenticates that one: once established, it takes over.
    pub replaces: Option<IkeSaId>,
}

impl IkeSa {
    fn new(
        id: IkeSaId,
        peer: Arc<PeerConfig>,
        role: Role,
        mode: ExchangeMode,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Self {
        Self {
            id,
            peer,
            role,
            mode,
            cky_i: [0; 8],
            cky_r: [0; 8],
            local,
            remote,
            state: State::Dead,
            nat_t: None,
            nat_detected: false,
            peer_supports_dpd: false,
            initial_contact: false,
            initial_contact_received: false,
            crossed_dropped: None,
            sa_i_b: Vec::new(),
            dh: None,
            g_i: Vec::new(),
            g_r: Vec::new(),
            n_i: Vec::new(),
            n_r: Vec::new(),
            choice: None,
            keys: None,
            cipher: None,
            iv: Vec::new(),
            retransmit: None,
            last_answer: None,
            quick_modes: Vec::new(),
            qm_queue: std::collections::VecDeque::new(),
            aborted_exchanges: std::collections::VecDeque::new(),
            children: Vec::new(),
            half_open_deadline: None,
            peer_id_b: Vec::new(),
            established_at: None,
            expires_at: None,
            liveness: Liveness::default(),
            superseded: false,
            settled: false,
            replaces: None,
        }
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    // ---------------------------------------------------------------------------------------
    // Sending

    fn header(
        &self,
        exchange: ExchangeType,
        message_id: u32,
        first: PayloadType,
        encrypted: bool,
        body_len: usize,
    ) -> IsakmpHeader {
        IsakmpHeader {
            initiator_cookie: self.cky_i,
            responder_cookie: self.cky_r,
            next_payload: first,
            version: VERSION_1_0,
            exchange,
            flags: if encrypted { FLAG_ENCRYPTED } else { 0 },
            message_id,
            length: (HEADER_LEN + body_len) as u32,
        }
    }

    /// Encodes a message, encrypting it with `iv` when given. Returns the packet and, for
    /// encrypted messages, the last ciphertext block (the next IV of a chain).
    pub(crate) fn build(
        &self,
        exchange: ExchangeType,
        message_id: u32,
        payloads: &[Payload],
        iv: Option<&[u8]>,
    ) -> (Vec<u8>, Vec<u8>) {
        let first = payloads.first().map_or(PayloadType::NONE, Payload::kind);
        let mut body = encode_payloads(payloads);
        let mut last = Vec::new();
        if let (Some(iv), Some(cipher)) = (iv, self.cipher.as_ref()) {
            let bs = cipher.block_len();
            body.resize(body.len().next_multiple_of(bs), 0);
            // The IV is one block (we derived it) and the body is block-aligned (just padded).
            if cipher.encrypt(iv, &mut body).is_ok() {
                last = body[body.len() - bs..].to_vec();
            }
        }
        let mut packet = Vec::with_capacity(HEADER_LEN + body.len());
        self.header(exchange, message_id, first, iv.is_some(), body.len()).encode(&mut packet);
        packet.extend_from_slice(&body);
        (packet, last)
    }

    pub(crate) fn transmit(&self, ctx: &mut Ctx<'_>, packet: Vec<u8>) {
        ctx.out.push_back(Transmit { local: self.local, remote: self.remote, payload: packet });
    }

    /// Sends a phase 1 request and arms its retransmission.
    fn send_request(&mut self, ctx: &mut Ctx<'_>, packet: Vec<u8>) {
        self.retransmit = Some(Retransmit::new(packet.clone(), ctx));
        self.transmit(ctx, packet);
    }

    /// Sends an answer and remembers it for duplicates of `request`.
    fn send_answer(&mut self, ctx: &mut Ctx<'_>, request: &[u8], packet: Vec<u8>) {
        self.last_answer = Some((packet_hash(request), packet.clone()));
        self.transmit(ctx, packet);
    }

    /// Decrypts the body of a received message with `iv`; returns the plaintext and the last
    /// ciphertext block.
    pub(crate) fn decrypt(&self, rx: &Received<'_>, iv: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let cipher = self
            .cipher
            .as_ref()
            .ok_or(WireError::Invalid { what: "message", detail: "encrypted before keys exist".into() })?;
        let bs = cipher.block_len();
        let body = &rx.data[HEADER_LEN..rx.header.length as usize];
        if body.is_empty() || body.len() % bs != 0 {
            return Err(WireError::BadLength { what: "encrypted body", len: body.len() });
        }
        let last = body[body.len() - bs..].to_vec();
        let mut plain = body.to_vec();
        cipher
            .decrypt(iv, &mut plain)
            .map_err(|e| WireError::Invalid { what: "encrypted body", detail: e.to_string() })?;
        Ok((plain, last))
    }

    fn plain_payloads(rx: &Received<'_>) -> Result<PayloadChain, WireError> {
        parse_payloads(rx.header.next_payload, &rx.data[HEADER_LEN..rx.header.length as usize], false)
    }

    /// If `rx` repeats the request we last answered, resends the answer (no new work).
    pub(crate) fn answer_duplicate(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> bool {
        match &self.last_answer {
            Some((h, answer)) if *h == packet_hash(rx.data) => {
                let answer = answer.clone();
                self.transmit(ctx, answer);
                true
            }
            _ => false,
        }
    }

    /// Reports a failure, tells the peer when asked to, and ends this IKE SA if phase 1 is not
    /// complete.
    pub(crate) fn fail(&mut self, ctx: &mut Ctx<'_>, failure: ProtocolError) {
        let reason = failure.reason();
        tracing::debug!(peer = %self.peer.name, %reason, detail = %failure, "negotiation failed");
        if let Some(n) = failure.notify() {
            self.send_notify(ctx, ProtocolId::ISAKMP, n, self.cookies(), Vec::new());
        }
        ctx.events.push_back(Event::NegotiationFailed {
            peer: Some(self.peer.name.clone()),
            remote: self.remote,
            reason,
            detail: failure.into_detail(),
        });
        if !self.is_established() {
            self.state = State::Dead;
            self.retransmit = None;
        }
    }

    pub(crate) fn cookies(&self) -> Vec<u8> {
        [self.cky_i, self.cky_r].concat()
    }

    fn vendor_ids() -> Vec<Payload> {
        vec![
            Payload::VendorId(vendor_id::NAT_T_RFC3947.to_vec()),
            Payload::VendorId(vendor_id::NAT_T_DRAFT_02_NL.to_vec()),
            Payload::VendorId(vendor_id::DPD.to_vec()),
        ]
    }

    /// Reads the peer's vendor IDs: NAT-T variant (RFC 3947 preferred) and DPD. Unknown IDs are
    /// ignored.
    fn read_vendor_ids(&mut self, chain: &PayloadChain) {
        let mut rfc = false;
        let mut draft = false;
        for v in chain.vendor_ids() {
            match v {
                x if x == vendor_id::NAT_T_RFC3947 => rfc = true,
                x if x == vendor_id::NAT_T_DRAFT_03
                    || x == vendor_id::NAT_T_DRAFT_02
                    || x == vendor_id::NAT_T_DRAFT_02_NL =>
                {
                    draft = true
                }
                x if x == vendor_id::DPD => self.peer_supports_dpd = true,
                other => {
                    tracing::debug!(peer = %self.peer.name, vendor_id = %hex_string(other), "unknown vendor ID ignored")
                }
            }
        }
        self.nat_t = if rfc {
            Some(false)
        } else if draft {
            Some(true)
        } else {
            None
        };
    }

    /// Our NAT-T vendor ID as a responder: the best one the initiator sent.
    fn chosen_nat_t_vid(&self) -> Option<Payload> {
        match self.nat_t {
            Some(false) => Some(Payload::VendorId(vendor_id::NAT_T_RFC3947.to_vec())),
            Some(true) => Some(Payload::VendorId(vendor_id::NAT_T_DRAFT_02_NL.to_vec())),
            None => None,
        }
    }

    fn nat_d_payloads(&self) -> Vec<Payload> {
        let (Some(draft), Some(choice)) = (self.nat_t, self.choice.as_ref()) else { return Vec::new() };
        // First the peer's address (destination), then ours (source): RFC 3947 s.3.2. Forcing
        // UDP encapsulation, ours is a hash of nothing, so the peer concludes we are behind a
        // NAT (strongSwan's method for `encap = yes`): a fixed derivation from the cookies keeps
        // retransmissions byte-identical.
        let mut ours = nat_d(choice.hash, &self.cky_i, &self.cky_r, self.local);
        if self.peer.force_udp_encapsulation {
            ours =
                vpngw_crypto::mac::hash(choice.hash, &[b"vpngw: forced UDP encapsulation", &self.cky_i, &self.cky_r]);
        }
        vec![
            Payload::NatD { hash: nat_d(choice.hash, &self.cky_i, &self.cky_r, self.remote), draft },
            Payload::NatD { hash: ours, draft },
        ]
    }

    /// Compares the peer's NAT-D payloads with the addresses we see; floats to port 4500 when
    /// a NAT is detected on either side (RFC 3947 s.3.2, s.4).
    fn detect_nat(&mut self, chain: &PayloadChain) -> Result<(), ProtocolError> {
        let (Some(_), Some(choice)) = (self.nat_t, self.choice.as_ref()) else { return Ok(()) };
        let hashes: Vec<&[u8]> = chain.nat_d().collect();
        let [ours, theirs @ ..] = hashes.as_slice() else {
            return Err(ProtocolError::unannounced(
                FailReason::NatDetectionFailed,
                "NAT-T was negotiated but the peer sent no NAT-D payloads",
            ));
        };
        if theirs.is_empty() {
            return Err(ProtocolError::unannounced(
                FailReason::NatDetectionFailed,
                "the peer sent only one NAT-D payload",
            ));
        }
        let local_ok = *ours == nat_d(choice.hash, &self.cky_i, &self.cky_r, self.local);
        let remote_hash = nat_d(choice.hash, &self.cky_i, &self.cky_r, self.remote);
        let remote_ok = theirs.iter().any(|h| *h == remote_hash);
        if !local_ok || !remote_ok || self.peer.force_udp_encapsulation {
            tracing::debug!(peer = %self.peer.name, local_behind_nat = !local_ok, peer_behind_nat = !remote_ok, forced = self.peer.force_udp_encapsulation, "NAT detected");
            self.nat_detected = true;
        }
        Ok(())
    }

    /// Moves IKE to port 4500 (both sides) once a NAT was detected.
    fn float(&mut self) {
        if self.nat_detected && self.local.port() == IKE_PORT {
            self.local.set_port(NAT_T_PORT);
            self.remote.set_port(NAT_T_PORT);
        }
    }

    fn derive_keys(&mut self, gxy: &[u8]) -> Result<(), ProtocolError> {
        let choice = self
            .choice
            .clone()
            .ok_or_else(|| ProtocolError::unannounced(FailReason::MalformedMessage, "keys before proposal"))?;
        let keys = Phase1Keys::derive(
            &Phase1Inputs {
                hash: choice.hash,
                psk: self.peer.psk.expose(),
                ni: &self.n_i,
                nr: &self.n_r,
                gxy,
                cky_i: &self.cky_i,
                cky_r: &self.cky_r,
            },
            choice.encryption,
        );
        let cipher = CbcCipher::new(choice.encryption, keys.encryption_key.expose()).map_err(|e| {
            ProtocolError::unannounced(FailReason::MalformedMessage, format!("phase 1 key refused: {e}"))
        })?;
        self.iv = phase1_iv(choice.hash, &self.g_i, &self.g_r, cipher.block_len());
        self.keys = Some(keys);
        self.cipher = Some(cipher);
        Ok(())
    }

    fn hash_i(&self, id_b: &[u8]) -> Vec<u8> {
        self.keys
            .as_ref()
            .map_or_else(Vec::new, |k| k.auth_hash(&self.g_i, &self.g_r, &self.cky_i, &self.cky_r, &self.sa_i_b, id_b))
    }

    fn hash_r(&self, id_b: &[u8]) -> Vec<u8> {
        self.keys
            .as_ref()
            .map_or_else(Vec::new, |k| k.auth_hash(&self.g_r, &self.g_i, &self.cky_r, &self.cky_i, &self.sa_i_b, id_b))
    }

    /// The peer's identity payload, checked against the configured `remote_id`.
    fn check_peer_id<'c>(&self, chain: &'c PayloadChain) -> Result<&'c IdPayload, ProtocolError> {
        let id = chain.id().map_err(|_| ProtocolError::MissingPayload("no ID payload".into()))?;
        match Identity::from_payload(id) {
            Some(got) if got.matches(&self.peer.remote_id) => Ok(id),
            got => Err(ProtocolError::BadId {
                reason: FailReason::IdMismatch,
                detail: format!(
                    "remote_id: peer sent {}, configured {}",
                    got.map_or_else(|| format!("{} (unsupported)", id.id_type), |g| g.to_string()),
                    self.peer.remote_id
                ),
            }),
        }
    }

    fn established(&mut self, ctx: &mut Ctx<'_>) {
        self.state = State::Established;
        self.retransmit = None;
        self.dh = None;
        self.established_at = Some(ctx.now);
        let Some(choice) = self.choice.clone() else { return };
        let ours = self.peer.phase1.lifetime.as_secs();
        let lifetime = choice.lifetime_seconds.map_or(ours, |theirs| theirs.min(ours)).max(1);
        if choice.lifetime_seconds.is_some_and(|t| t != ours) {
            tracing::info!(peer = %self.peer.name, offered = ?choice.lifetime_seconds, configured = ours, used = lifetime, "IKE SA lifetimes differ: the shorter is used");
        }
        self.expires_at = Some(ctx.now + Duration::from_secs(lifetime));
        liveness::start(self, ctx, Duration::from_secs(lifetime));
        ctx.events.push_back(Event::IkeSaEstablished {
            peer: self.peer.name.clone(),
            ike_sa: self.id,
            role: self.role,
            mode: self.mode,
            local: self.local,
            remote: self.remote,
            encryption: choice.encryption,
            hash: choice.hash,
            dh_group: choice.dh_group,
            lifetime_seconds: lifetime,
            nat_detected: self.nat_detected,
        });
    }

    /// The peer's KE and nonce, the KE checked against the chosen group.
    fn take_ke_nonce(&self, chain: &PayloadChain) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
        let ke = chain.ke()?;
        let nonce = chain.nonce()?;
        self.check_ke(ke)?;
        Ok((ke.to_vec(), nonce.to_vec()))
    }

    fn check_ke(&self, ke: &[u8]) -> Result<(), ProtocolError> {
        let group = self.choice.as_ref().map(|c| c.dh_group);
        match group {
            Some(g) if ke.len() == g.modulus_len() => Ok(()),
            Some(g) => Err(ProtocolError::BadKeyExchange {
                reason: FailReason::Phase1ProposalMismatch,
                detail: format!(
                    "dh_group: peer's key exchange has {} bytes, {} needs {}",
                    ke.len(),
                    g.name(),
                    g.modulus_len()
                ),
            }),
            None => Err(ProtocolError::unannounced(FailReason::MalformedMessage, "key exchange before proposal")),
        }
    }

    fn agree(&self, peer_public: &[u8]) -> Result<vpngw_crypto::SecretBytes, ProtocolError> {
        self.dh
            .as_ref()
            .ok_or_else(|| ProtocolError::unannounced(FailReason::MalformedMessage, "no DH key"))?
            .agree(peer_public)
            .map_err(|e| ProtocolError::BadKeyExchange {
                reason: FailReason::MalformedMessage,
                detail: format!("peer's DH value refused: {e}"),
            })
    }

    /// Verifies the peer's HASH_I or HASH_R.
    fn check_auth_hash(received: &[u8], expected: &[u8], which: &str) -> Result<(), ProtocolError> {
        if hash_matches(received, expected) {
            Ok(())
        } else {
            Err(ProtocolError::AuthenticationFailed(format!("{which} does not verify: pre-shared key mismatch")))
        }
    }

    /// The responder's SA payload: our own proposal, or a mismatch.
    fn accept_reply(&self, chain: &PayloadChain) -> Result<Phase1Choice, ProtocolError> {
        proposal::accept_phase1_reply(&self.peer.phase1, chain.sa()?).map_err(|m| ProtocolError::NoProposalChosen {
            reason: FailReason::Phase1ProposalMismatch,
            detail: format!("peer answered with another proposal: {m}"),
        })
    }

    // ---------------------------------------------------------------------------------------
    // Initiator

    pub fn initiate(id: IkeSaId, peer: Arc<PeerConfig>, ctx: &mut Ctx<'_>, initial_contact: bool) -> Self {
        let local = SocketAddr::new(peer.local_address, IKE_PORT);
        let remote = SocketAddr::new(peer.remote_address, IKE_PORT);
        let mode = peer.mode;
        let mut sa = Self::new(id, peer, Role::Initiator, mode, local, remote);
        sa.cky_i = nonzero_cookie(ctx.rng);
        sa.initial_contact = initial_contact;
        let offer = proposal::phase1_offer(&sa.peer.phase1);
        let mut sa_body = Vec::new();
        offer.encode(&mut sa_body);
        sa.sa_i_b = sa_body;
        let mut payloads = vec![Payload::Sa(offer)];
        match mode {
            ExchangeMode::Main => {
                payloads.extend(Self::vendor_ids());
                sa.state = State::MmI1;
                let (packet, _) = sa.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, None);
                sa.send_request(ctx, packet);
            }
            ExchangeMode::Aggressive => {
                let group = sa.peer.phase1.dh_group;
                let dh = DhPrivateKey::generate(group, ctx.rng);
                sa.g_i = dh.public_value().to_vec();
                sa.dh = Some(dh);
                sa.n_i = ctx.random_bytes(NONCE_LEN);
                payloads.push(Payload::KeyExchange(sa.g_i.clone()));
                payloads.push(Payload::Nonce(sa.n_i.clone()));
                payloads.push(Payload::Id(sa.peer.local_id.to_payload()));
                payloads.extend(Self::vendor_ids());
                sa.state = State::AmI1;
                let (packet, _) = sa.build(ExchangeType::AGGRESSIVE, 0, &payloads, None);
                sa.send_request(ctx, packet);
            }
        }
        sa
    }

    /// MM2: the responder's choice and vendor IDs. Sends MM3 (KE, Ni, NAT-D).
    fn on_mm2(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let choice = self.accept_reply(&chain)?;
        self.cky_r = rx.header.responder_cookie;
        self.read_vendor_ids(&chain);
        let dh = DhPrivateKey::generate(choice.dh_group, ctx.rng);
        self.g_i = dh.public_value().to_vec();
        self.dh = Some(dh);
        self.choice = Some(choice);
        self.n_i = ctx.random_bytes(NONCE_LEN);
        let mut payloads = vec![Payload::KeyExchange(self.g_i.clone()), Payload::Nonce(self.n_i.clone())];
        payloads.extend(self.nat_d_payloads());
        let (packet, _) = self.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, None);
        self.state = State::MmI3;
        self.send_request(ctx, packet);
        Ok(())
    }

    /// MM4: the responder's KE and nonce. Derives keys, detects NAT, sends MM5 (ID, HASH_I).
    fn on_mm4(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let (ke, nr) = self.take_ke_nonce(&chain)?;
        let gxy = self.agree(&ke)?;
        self.g_r = ke;
        self.n_r = nr;
        self.derive_keys(gxy.expose())?;
        self.detect_nat(&chain)?;
        self.float();
        let id = self.peer.local_id.to_payload();
        let hash = self.hash_i(&id.body());
        let mut payloads = vec![Payload::Id(id), Payload::Hash(hash)];
        if self.initial_contact {
            payloads.push(Payload::Notify(NotifyPayload::new(
                ProtocolId::ISAKMP,
                NotifyType::INITIAL_CONTACT,
                self.cookies(),
                Vec::new(),
            )));
        }
        let iv = self.iv.clone();
        let (packet, last) = self.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, Some(&iv));
        self.iv = last;
        self.state = State::MmI5;
        self.send_request(ctx, packet);
        Ok(())
    }

    /// MM6: the responder's identity and HASH_R. Phase 1 done.
    fn on_mm6(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let psk_hint = || {
            ProtocolError::unannounced(
                FailReason::AuthenticationFailed,
                "main mode message 6 does not decrypt: likely pre-shared key mismatch",
            )
        };
        if !rx.header.is_encrypted() {
            return Err(ProtocolError::unannounced(FailReason::MalformedMessage, "main mode message 6 not encrypted"));
        }
        let (plain, last) = self.decrypt(rx, &self.iv.clone()).map_err(|_| psk_hint())?;
        let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|_| psk_hint())?;
        let id = self.check_peer_id(&chain)?;
        Self::check_auth_hash(chain.hash()?, &self.hash_r(&id.body()), "HASH_R")?;
        self.iv = last;
        self.established(ctx);
        Ok(())
    }

    /// AM2: everything from the responder at once. Verifies HASH_R, sends AM3 (HASH_I, NAT-D).
    fn on_am2(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let choice = self.accept_reply(&chain)?;
        self.cky_r = rx.header.responder_cookie;
        self.choice = Some(choice);
        self.read_vendor_ids(&chain);
        let (ke, nr) = self.take_ke_nonce(&chain)?;
        let gxy = self.agree(&ke)?;
        self.g_r = ke;
        self.n_r = nr;
        self.derive_keys(gxy.expose())?;
        let id = self.check_peer_id(&chain)?;
        Self::check_auth_hash(chain.hash()?, &self.hash_r(&id.body()), "HASH_R")?;
        self.detect_nat(&chain)?;
        self.float();
        let id = self.peer.local_id.to_payload();
        let mut payloads = vec![Payload::Hash(self.hash_i(&id.body()))];
        payloads.extend(self.nat_d_payloads());
        let iv = self.iv.clone();
        let (packet, last) = self.build(ExchangeType::AGGRESSIVE, 0, &payloads, Some(&iv));
        self.iv = last;
        // AM3 expects no answer: kept to resend if AM2 comes again.
        self.last_answer = Some((packet_hash(rx.data), packet.clone()));
        self.transmit(ctx, packet);
        self.established(ctx);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Responder

    /// Answers MM1 or AM1 for `peer`. The SA comes back even when the first message was
    /// refused, so that the caller can report and notify with its cookies.
    pub fn respond(
        id: IkeSaId,
        peer: Arc<PeerConfig>,
        ctx: &mut Ctx<'_>,
        rx: &Received<'_>,
    ) -> (Self, Result<(), ProtocolError>) {
        let mode =
            if rx.header.exchange == ExchangeType::AGGRESSIVE { ExchangeMode::Aggressive } else { ExchangeMode::Main };
        let mut sa = Self::new(id, peer, Role::Responder, mode, rx.local, rx.remote);
        sa.cky_i = rx.header.initiator_cookie;
        sa.cky_r = nonzero_cookie(ctx.rng);
        sa.half_open_deadline = Some(ctx.now + ctx.config.half_open_timeout);
        let result = match mode {
            ExchangeMode::Main => sa.on_mm1(ctx, rx),
            ExchangeMode::Aggressive => sa.on_am1(ctx, rx),
        };
        (sa, result)
    }

    fn select(&mut self, rx: &Received<'_>, chain: &PayloadChain) -> Result<SaPayload, ProtocolError> {
        let raw = chain
            .payloads
            .iter()
            .find(|p| p.payload.kind() == PayloadType::SA)
            .ok_or(WireError::MissingPayload(PayloadType::SA))?;
        let Payload::Sa(offer) = &raw.payload else {
            return Err(WireError::MissingPayload(PayloadType::SA).into());
        };
        let (reply, choice) =
            proposal::select_phase1(&self.peer.phase1, offer).map_err(|m| ProtocolError::NoProposalChosen {
                reason: FailReason::Phase1ProposalMismatch,
                detail: format!("phase 1 proposal mismatch with {}: {m}", rx.remote.ip()),
            })?;
        let body = &rx.data[HEADER_LEN..rx.header.length as usize];
        self.sa_i_b = body[raw.body_range()].to_vec();
        self.choice = Some(choice);
        self.read_vendor_ids(chain);
        Ok(reply)
    }

    fn responder_vids(&self) -> Vec<Payload> {
        let mut v: Vec<Payload> = self.chosen_nat_t_vid().into_iter().collect();
        v.push(Payload::VendorId(vendor_id::DPD.to_vec()));
        v
    }

    fn on_mm1(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let reply = self.select(rx, &chain)?;
        let mut payloads = vec![Payload::Sa(reply)];
        payloads.extend(self.responder_vids());
        let (packet, _) = self.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, None);
        self.state = State::MmR2;
        self.send_answer(ctx, rx.data, packet);
        Ok(())
    }

    fn on_mm3(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let (ke, ni) = self.take_ke_nonce(&chain)?;
        self.respond_ke(ctx, ke, ni)?;
        self.detect_nat(&chain)?;
        let mut payloads = vec![Payload::KeyExchange(self.g_r.clone()), Payload::Nonce(self.n_r.clone())];
        payloads.extend(self.nat_d_payloads());
        let (packet, _) = self.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, None);
        self.state = State::MmR4;
        self.send_answer(ctx, rx.data, packet);
        Ok(())
    }

    /// Responder: our DH value and nonce for the initiator's `ke` and `ni`, and the keys.
    fn respond_ke(&mut self, ctx: &mut Ctx<'_>, ke: Vec<u8>, ni: Vec<u8>) -> Result<(), ProtocolError> {
        let group = self
            .choice
            .as_ref()
            .map(|c| c.dh_group)
            .ok_or_else(|| ProtocolError::unannounced(FailReason::MalformedMessage, "no proposal"))?;
        let dh = DhPrivateKey::generate(group, ctx.rng);
        self.g_r = dh.public_value().to_vec();
        self.dh = Some(dh);
        let gxy = self.agree(&ke)?;
        self.g_i = ke;
        self.n_i = ni;
        self.n_r = ctx.random_bytes(NONCE_LEN);
        self.derive_keys(gxy.expose())
    }

    fn on_mm5(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
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
        let (plain, last) = self.decrypt(rx, &self.iv.clone()).map_err(|_| psk_hint())?;
        let chain = parse_payloads(rx.header.next_payload, &plain, true).map_err(|_| psk_hint())?;
        // Later messages use the chain from here, whether we accept MM5 or report on it.
        self.iv = last;
        let id = self.check_peer_id(&chain)?;
        Self::check_auth_hash(chain.hash()?, &self.hash_i(&id.body()), "HASH_I")?;
        self.initial_contact_received = chain.notifies().any(|n| n.notify_type == NotifyType::INITIAL_CONTACT);
        // The initiator floats to 4500 for MM5 when it sees a NAT: follow it.
        self.local = rx.local;
        self.remote = rx.remote;
        let id = self.peer.local_id.to_payload();
        let payloads = vec![Payload::Id(id.clone()), Payload::Hash(self.hash_r(&id.body()))];
        let iv = self.iv.clone();
        let (packet, last) = self.build(ExchangeType::IDENTITY_PROTECTION, 0, &payloads, Some(&iv));
        self.iv = last;
        self.send_answer(ctx, rx.data, packet);
        self.established(ctx);
        Ok(())
    }

    fn on_am1(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let chain = Self::plain_payloads(rx)?;
        let reply = self.select(rx, &chain)?;
        let ke = chain.ke()?;
        let ni = chain.nonce()?;
        self.peer_id_b = self.check_peer_id(&chain)?.body();
        self.check_ke(ke)?;
        self.respond_ke(ctx, ke.to_vec(), ni.to_vec())?;
        let our_id = self.peer.local_id.to_payload();
        let mut payloads = vec![
            Payload::Sa(reply),
            Payload::KeyExchange(self.g_r.clone()),
            Payload::Nonce(self.n_r.clone()),
            Payload::Id(our_id.clone()),
        ];
        payloads.extend(self.responder_vids());
        payloads.extend(self.nat_d_payloads());
        payloads.push(Payload::Hash(self.hash_r(&our_id.body())));
        let (packet, _) = self.build(ExchangeType::AGGRESSIVE, 0, &payloads, None);
        self.state = State::AmR2;
        self.last_answer = Some((packet_hash(rx.data), packet.clone()));
        // AM2 is the middle of a three-message exchange: resent until AM3 arrives.
        self.send_request(ctx, packet);
        Ok(())
    }

    fn on_am3(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Result<(), ProtocolError> {
        let psk_hint = |detail: &str| ProtocolError::Malformed {
            reason: FailReason::AuthenticationFailed,
            detail: format!("{detail}: likely pre-shared key mismatch"),
        };
        let chain = if rx.header.is_encrypted() {
            let (plain, last) =
                self.decrypt(rx, &self.iv.clone()).map_err(|_| psk_hint("cannot decrypt aggressive mode message 3"))?;
            let chain = parse_payloads(rx.header.next_payload, &plain, true)
                .map_err(|_| psk_hint("aggressive mode message 3 decrypts to garbage"))?;
            self.iv = last;
            chain
        } else {
            Self::plain_payloads(rx)?
        };
        // HASH_I covers the ID payload body the initiator sent in AM1.
        Self::check_auth_hash(chain.hash()?, &self.hash_i(&self.peer_id_b), "HASH_I")?;
        // AM3 comes from the initiator's floated ports when it saw a NAT; its NAT-D payloads
        // describe the addresses of this very message.
        self.local = rx.local;
        self.remote = rx.remote;
        self.detect_nat(&chain)?;
        self.established(ctx);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Dispatch

    /// A phase 1 message (main or aggressive mode, message ID 0) for this SA.
    pub fn handle_phase1(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) {
        if self.answer_duplicate(ctx, rx) {
            return;
        }
        let expected = match self.mode {
            ExchangeMode::Main => ExchangeType::IDENTITY_PROTECTION,
            ExchangeMode::Aggressive => ExchangeType::AGGRESSIVE,
        };
        if rx.header.exchange != expected {
            return self.fail(
                ctx,
                ProtocolError::WrongExchange(format!(
                    "mode: peer uses {}, configured {}",
                    rx.header.exchange, self.mode
                )),
            );
        }
        let result = match self.state {
            State::MmI1 => self.on_mm2(ctx, rx),
            State::MmI3 => self.on_mm4(ctx, rx),
            State::MmI5 => self.on_mm6(ctx, rx),
            State::MmR2 => self.on_mm3(ctx, rx),
            State::MmR4 => self.on_mm5(ctx, rx),
            State::AmI1 => self.on_am2(ctx, rx),
            State::AmR2 => self.on_am3(ctx, rx),
            State::Established | State::Dead => {
                tracing::debug!(peer = %self.peer.name, "phase 1 message after phase 1: ignored");
                Ok(())
            }
        };
        // Quick modes start from the endpoint once it has moved older SAs' child SAs over.
        if let Err(f) = result {
            self.fail(ctx, f);
        }
    }

    /// When `timer` is due next, if it is armed.
    fn deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::Retransmit => self.retransmit.as_ref().map(|r| r.next_at),
            Timer::HalfOpen => self.half_open_deadline.filter(|_| !self.is_established() && self.state != State::Dead),
            Timer::QuickMode => self.quick_modes.iter().filter_map(|q| q.retransmit.as_ref().map(|r| r.next_at)).min(),
            Timer::ChildSa => self.children.iter().filter_map(ChildRecord::next_timeout).min(),
            Timer::Reauth => liveness::reauth_deadline(self),
            Timer::Dpd => liveness::dpd_deadline(self),
            Timer::Expiry => self.expires_at,
        }
    }

    /// The earliest deadline of all timers.
    pub fn next_timeout(&self) -> Option<Instant> {
        Timer::VALUES.into_iter().filter_map(|t| self.deadline(t)).min()
    }

    /// Fires the timers that are due, in [`Timer::VALUES`] order.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        for timer in Timer::VALUES {
            if self.deadline(timer).is_some_and(|t| t <= ctx.now) {
                self.on_timer(timer, ctx);
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Ctx<'_>) {
        match timer {
            Timer::Retransmit => self.on_retransmit_timer(ctx),
            Timer::HalfOpen => {
                tracing::debug!(peer = %self.peer.name, "half-open IKE SA timed out");
                self.state = State::Dead;
            }
            Timer::QuickMode => crate::quick_mode::handle_timeouts(self, ctx),
            Timer::ChildSa => crate::child::handle_timeouts(self, ctx),
            Timer::Reauth => liveness::on_reauth_timer(self, ctx.now),
            Timer::Dpd => liveness::on_dpd_timer(self, ctx),
            Timer::Expiry => {
                if self.is_established() {
                    self.delete(ctx, DeleteReason::Expired);
                }
            }
        }
    }

    fn on_retransmit_timer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(r) = self.retransmit.as_mut() else { return };
        match r.poll(ctx.now, ctx.config.retransmit_factor) {
            RetransmitDue::Resend(p) => self.transmit(ctx, p),
            RetransmitDue::NotYet => {}
            RetransmitDue::GiveUp => {
                self.retransmit = None;
                let failure = match self.state {
                    State::MmI5 => ProtocolError::unannounced(
                        FailReason::AuthenticationFailed,
                        "no answer to main mode message 5: likely pre-shared key mismatch (or the peer does not accept our identity)",
                    ),
                    State::MmI1 | State::AmI1 => ProtocolError::unannounced(
                        FailReason::PeerUnreachable,
                        format!("no answer from {} after {} retransmissions", self.remote, ctx.config.retransmit_tries),
                    ),
                    _ => ProtocolError::unannounced(
                        FailReason::PeerUnreachable,
                        format!("peer {} stopped answering during phase 1", self.remote),
                    ),
                };
                self.fail(ctx, failure);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Informational

    /// Sends an informational exchange: encrypted with a HASH once keys exist, in the clear
    /// before (RFC 2409 s.5.7).
    pub(crate) fn send_informational(&mut self, ctx: &mut Ctx<'_>, payloads: Vec<Payload>) {
        let (Some(keys), Some(cipher)) = (self.keys.as_ref(), self.cipher.as_ref()) else {
            let (packet, _) = self.build(ExchangeType::INFORMATIONAL, 0, &payloads, None);
            self.transmit(ctx, packet);
            return;
        };
        let message_id = ctx.rng.next_u32().max(1);
        let rest = encode_payloads(&payloads);
        let hash = keys.hash_a(&[&message_id.to_be_bytes(), &rest]);
        let iv = phase2_iv(keys.hash, &self.iv, message_id, cipher.block_len());
        let mut all = vec![Payload::Hash(hash)];
        all.extend(payloads);
        let (packet, _) = self.build(ExchangeType::INFORMATIONAL, message_id, &all, Some(&iv));
        self.transmit(ctx, packet);
    }

    pub(crate) fn send_notify(
        &mut self,
        ctx: &mut Ctx<'_>,
        protocol: ProtocolId,
        kind: NotifyType,
        spi: Vec<u8>,
        data: Vec<u8>,
    ) {
        self.send_informational(ctx, vec![Payload::Notify(NotifyPayload::new(protocol, kind, spi, data))]);
    }

    /// An informational exchange from the peer: deletes, notifies, DPD.
    pub fn handle_informational(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) {
        let chain = if rx.header.is_encrypted() {
            let (Some(keys), Some(cipher)) = (self.keys.as_ref(), self.cipher.as_ref()) else { return };
            let iv = phase2_iv(keys.hash, &self.iv, rx.header.message_id, cipher.block_len());
            let decrypted = self
                .decrypt(rx, &iv)
                .and_then(|(plain, _)| parse_payloads(rx.header.next_payload, &plain, true).map(|c| (plain, c)));
            let Ok((plain, chain)) = decrypted else {
                if self.state == State::MmI5 {
                    self.fail(
                        ctx,
                        ProtocolError::unannounced(
                            FailReason::AuthenticationFailed,
                            "the peer's answer to main mode message 5 does not decrypt: likely pre-shared key mismatch",
                        ),
                    );
                } else {
                    tracing::debug!(peer = %self.peer.name, "undecryptable informational message dropped");
                }
                return;
            };
            let Some(first) = chain.payloads.first() else { return };
            let Payload::Hash(hash) = &first.payload else {
                tracing::debug!(peer = %self.peer.name, "informational without HASH first dropped");
                return;
            };
            let rest = &plain[first.range.end..chain.end];
            if !hash_matches(hash, &keys.hash_a(&[&rx.header.message_id.to_be_bytes(), rest])) {
                tracing::debug!(peer = %self.peer.name, "informational with a bad HASH dropped");
                return;
            }
            liveness::heard(self, ctx.now);
            chain
        } else {
            if self.keys.is_some() && self.is_established() {
                tracing::debug!(peer = %self.peer.name, "unprotected informational after phase 1 dropped");
                return;
            }
            match Self::plain_payloads(rx) {
                Ok(c) => c,
                Err(_) => return,
            }
        };
        for p in chain.iter() {
            match p {
                Payload::Delete(d) => self.on_delete(ctx, d),
                Payload::Notify(n) => self.on_notify(ctx, n),
                _ => {}
            }
        }
    }

    fn on_notify(&mut self, ctx: &mut Ctx<'_>, n: &NotifyPayload) {
        match n.notify_type {
            NotifyType::R_U_THERE if n.data.len() == 4 => {
                // Answered in a new exchange with the same sequence number (RFC 3706 s.5.2).
                self.send_notify(ctx, ProtocolId::ISAKMP, NotifyType::R_U_THERE_ACK, self.cookies(), n.data.clone());
            }
            NotifyType::R_U_THERE_ACK => liveness::on_ack(self, ctx.now, &n.data),
            NotifyType::INITIAL_CONTACT => self.initial_contact_received = true,
            t if t.is_error() => {
                let (reason, detail) = match t {
                    NotifyType::NO_PROPOSAL_CHOSEN if n.protocol == ProtocolId::ESP || self.is_established() => (
                        FailReason::Phase2ProposalMismatch,
                        format!("the peer refused our quick mode proposal ({})", describe_phase2(&self.peer)),
                    ),
                    NotifyType::NO_PROPOSAL_CHOSEN => (
                        FailReason::Phase1ProposalMismatch,
                        format!("the peer refused our phase 1 proposal ({})", describe_phase1(&self.peer)),
                    ),
                    NotifyType::INVALID_ID_INFORMATION if self.is_established() => (
                        FailReason::TrafficSelectorMismatch,
                        format!(
                            "traffic selectors: the peer refused ours, offered {} (local <=> remote)",
                            self.peer.subnets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    NotifyType::INVALID_ID_INFORMATION => {
                        (FailReason::IdMismatch, "the peer refused our identity".to_string())
                    }
                    NotifyType::AUTHENTICATION_FAILED => (
                        FailReason::AuthenticationFailed,
                        "the peer says AUTHENTICATION-FAILED: pre-shared key or identity mismatch".to_string(),
                    ),
                    NotifyType::INVALID_EXCHANGE_TYPE => {
                        (FailReason::ModeMismatch, format!("the peer refused {} mode", self.mode))
                    }
                    NotifyType::PAYLOAD_MALFORMED if matches!(self.state, State::MmI5) => (
                        FailReason::AuthenticationFailed,
                        "the peer could not read main mode message 5: likely pre-shared key mismatch".to_string(),
                    ),
                    NotifyType::INVALID_KEY_INFORMATION => {
                        (FailReason::Phase1ProposalMismatch, "the peer refused our key exchange".to_string())
                    }
                    other => (FailReason::MalformedMessage, format!("the peer sent {other}")),
                };
                if n.protocol == ProtocolId::ESP || self.is_established() {
                    // The notify's SPI, when it carries one, names the quick mode refused.
                    let spi = <[u8; 4]>::try_from(n.spi.as_slice()).ok().map(u32::from_be_bytes);
                    crate::quick_mode::abort_pending(self, ctx, spi, reason, &detail);
                }
                ctx.events.push_back(Event::NegotiationFailed {
                    peer: Some(self.peer.name.clone()),
                    remote: self.remote,
                    reason,
                    detail,
                });
                if !self.is_established() {
                    self.state = State::Dead;
                    self.retransmit = None;
                }
            }
            _ => tracing::debug!(peer = %self.peer.name, notify = %n.notify_type, "notify ignored"),
        }
    }

    fn on_delete(&mut self, ctx: &mut Ctx<'_>, d: &DeletePayload) {
        match d.protocol {
            ProtocolId::ISAKMP if d.spis.iter().any(|s| s.as_slice() == self.cookies().as_slice()) => {
                self.drop_all(ctx, DeleteReason::PeerDeleted);
            }
            ProtocolId::ESP => {
                for spi in &d.spis {
                    let Ok(b) = <[u8; 4]>::try_from(spi.as_slice()) else { continue };
                    let spi = u32::from_be_bytes(b);
                    crate::quick_mode::remove_child(self, ctx, spi, DeleteReason::PeerDeleted);
                }
            }
            _ => {}
        }
    }

    /// Ends this IKE SA and its children without telling the peer.
    pub fn drop_all(&mut self, ctx: &mut Ctx<'_>, reason: DeleteReason) {
        let children: Vec<u32> = self.children.iter().map(|c| c.spi_in).collect();
        for spi in children {
            crate::quick_mode::remove_child(self, ctx, spi, DeleteReason::IkeSaGone);
        }
        if self.is_established() {
            ctx.events.push_back(Event::IkeSaDeleted { peer: self.peer.name.clone(), ike_sa: self.id, reason });
        }
        self.state = State::Dead;
        self.retransmit = None;
        self.quick_modes.clear();
    }

    /// Deletes this IKE SA: Delete for each child SA, then for the ISAKMP SA (RFC 2408 s.3.15).
    pub fn delete(&mut self, ctx: &mut Ctx<'_>, reason: DeleteReason) {
        if self.is_established() {
            let children: Vec<u32> = self.children.iter().map(|c| c.spi_in).collect();
            for spi_in in children {
                crate::child::send_delete(self, ctx, spi_in);
            }
            let cookies = self.cookies();
            self.send_informational(
                ctx,
                vec![Payload::Delete(DeletePayload {
                    doi: DOI_IPSEC,
                    protocol: ProtocolId::ISAKMP,
                    spi_size: 16,
                    spis: vec![cookies],
                })],
            );
        }
        self.drop_all(ctx, reason);
    }

    pub fn info(&self) -> IkeSaInfo {
        IkeSaInfo {
            id: self.id,
            peer: self.peer.name.clone(),
            role: self.role,
            state: self.state.name(),
            local: self.local,
            remote: self.remote,
            encryption: self.choice.as_ref().map(|c| c.encryption),
            hash: self.choice.as_ref().map(|c| c.hash),
            dh_group: self.choice.as_ref().map(|c| c.dh_group),
            nat_detected: self.nat_detected,
            established_at: self.established_at,
            expires_at: self.expires_at,
            children: self.children.iter().map(ChildRecord::info).collect(),
        }
    }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn describe_phase1(p: &PeerConfig) -> String {
    format!(
        "offered encryption {}, authentication {}, dh_group {}",
        p.phase1.encryption, p.phase1.hash, p.phase1.dh_group
    )
}

pub(crate) fn describe_phase2(p: &PeerConfig) -> String {
    format!(
        "offered encryption {}, authentication {}, pfs {}",
        p.phase2.encryption,
        p.phase2.integrity.name(),
        p.phase2.pfs.map_or("disable".to_string(), |g| g.name().to_string())
    )
}
