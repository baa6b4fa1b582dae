//! How one IKE SA's messages are framed, sent and protected: [`Link`] (the two ends: cookies,
//! addresses, the peer's configuration, the phase 1 request in flight and the last answer) and
//! [`MessageCrypto`] (SKEYID*, the phase 1 cipher and the IV base), which exists only once
//! phase 1 has derived the keys.
//!
//! Message crypto follows RFC 2409 and strongSwan's reading of it (docs/interop): phase 1 IV =
//! hash(g^xi | g^xr), then the last ciphertext block of each phase 1 message; phase 2 and
//! informational IVs start at hash(last phase 1 block | M-ID); quick mode chains per M-ID,
//! informational messages do not chain.

use std::net::SocketAddr;
use std::sync::Arc;

use vpngw_crypto::CbcCipher;

use crate::config::{ExchangeMode, PeerConfig};
use crate::event::{IkeSaId, Role};
use crate::exchange::{Ctx, Received, Retransmit, Transmit, packet_hash};
use crate::keys::{Phase1Keys, phase2_iv};
use crate::nat_t::NatT;
use crate::snapshot::AnsweredRequest;
use crate::wire::{
    ExchangeType, FLAG_ENCRYPTED, HEADER_LEN, IsakmpHeader, Payload, PayloadChain, PayloadType, VERSION_1_0, WireError,
    encode_payloads, parse_payloads,
};

/// One IKE SA's two ends and what its phase 1 has in flight.
pub(crate) struct Link {
    pub id: IkeSaId,
    pub peer: Arc<PeerConfig>,
    pub role: Role,
    pub mode: ExchangeMode,
    pub cky_i: [u8; 8],
    pub cky_r: [u8; 8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub nat: NatT,
    pub peer_supports_dpd: bool,
    /// The phase 1 request waiting for its answer.
    pub retransmit: Option<Retransmit>,
    /// The last phase 1 request we answered (hash of its bytes) and our answer, to resend on
    /// duplicates.
    pub last_answer: Option<AnsweredRequest>,
    /// Hash of the last phase 1 message that moved the exchange on. A copy of it (the peer
    /// answered a retransmission of ours, or the network duplicated it) is ignored: it would
    /// otherwise be read as the next message and end the negotiation.
    pub last_taken: Option<u64>,
}

impl Link {
    pub fn new(
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
            nat: NatT::default(),
            peer_supports_dpd: false,
            retransmit: None,
            last_answer: None,
            last_taken: None,
        }
    }

    /// CKY-I | CKY-R: the SPI of the ISAKMP SA in notifies and deletes.
    pub fn cookies(&self) -> Vec<u8> {
        [self.cky_i, self.cky_r].concat()
    }

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

    /// Encodes a message, encrypting it with `cipher` and `iv` when given. Returns the packet
    /// and, for encrypted messages, the last ciphertext block (the next IV of a chain).
    fn encode(
        &self,
        exchange: ExchangeType,
        message_id: u32,
        payloads: &[Payload],
        encryption: Option<(&CbcCipher, &[u8])>,
    ) -> (Vec<u8>, Vec<u8>) {
        let first = payloads.first().map_or(PayloadType::NONE, Payload::kind);
        let mut body = encode_payloads(payloads);
        let mut last = Vec::new();
        if let Some((cipher, iv)) = encryption {
            let bs = cipher.block_len();
            body.resize(body.len().next_multiple_of(bs), 0);
            // The IV is one block (we derived it) and the body is block-aligned (just padded).
            if cipher.encrypt(iv, &mut body).is_ok() {
                last = body[body.len() - bs..].to_vec();
            }
        }
        let mut packet = Vec::with_capacity(HEADER_LEN + body.len());
        self.header(exchange, message_id, first, encryption.is_some(), body.len()).encode(&mut packet);
        packet.extend_from_slice(&body);
        (packet, last)
    }

    /// Encodes an unencrypted message.
    pub fn build_clear(&self, exchange: ExchangeType, message_id: u32, payloads: &[Payload]) -> Vec<u8> {
        self.encode(exchange, message_id, payloads, None).0
    }

    pub fn transmit(&self, ctx: &mut Ctx<'_>, packet: Vec<u8>) {
        ctx.out.push_back(Transmit { local: self.local, remote: self.remote, payload: packet });
    }

    /// Sends `packet` again (a request unanswered, or an answer to a repeated request), counted
    /// as a retransmission.
    pub fn retransmit(&self, ctx: &mut Ctx<'_>, packet: Vec<u8>) {
        ctx.messages.retransmission(&packet);
        self.transmit(ctx, packet);
    }

    /// Sends a phase 1 request and arms its retransmission.
    pub fn send_request(&mut self, ctx: &mut Ctx<'_>, packet: Vec<u8>) {
        self.retransmit = Some(Retransmit::new(packet.clone(), ctx));
        self.transmit(ctx, packet);
    }

    /// Sends an answer and remembers it for duplicates of `request`.
    pub fn send_answer(&mut self, ctx: &mut Ctx<'_>, request: &[u8], packet: Vec<u8>) {
        self.last_answer = Some(AnsweredRequest::new(request, packet.clone()));
        self.transmit(ctx, packet);
    }

    /// Whether `rx` is a copy of the phase 1 message that last moved the exchange on.
    pub fn repeats_last_taken(&self, rx: &Received<'_>) -> bool {
        self.last_taken == Some(packet_hash(rx.data))
    }

    /// Remembers `rx` as the phase 1 message that last moved the exchange on.
    pub fn take(&mut self, rx: &Received<'_>) {
        self.last_taken = Some(packet_hash(rx.data));
    }

    /// If `rx` repeats the request we last answered, resends the answer (no new work).
    pub fn answer_duplicate(&self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> bool {
        match &self.last_answer {
            Some(a) if a.answers(rx.data) => {
                self.retransmit(ctx, a.answer.clone());
                true
            }
            _ => false,
        }
    }
}

/// The payloads of an unencrypted message.
pub(crate) fn plain_payloads(rx: &Received<'_>) -> Result<PayloadChain, WireError> {
    parse_payloads(rx.header.next_payload, &rx.data[HEADER_LEN..rx.header.length as usize], false)
}

/// The keys of an IKE SA and its message cipher; `iv` is the phase 1 IV chain, and after
/// phase 1 its last CBC block (the base of every later exchange's IV).
pub(crate) struct MessageCrypto {
    pub keys: Phase1Keys,
    cipher: CbcCipher,
    iv: Vec<u8>,
}

impl MessageCrypto {
    pub fn new(keys: Phase1Keys, cipher: CbcCipher, iv: Vec<u8>) -> Self {
        Self { keys, cipher, iv }
    }

    /// prf(SKEYID_a, parts...): the HASH payloads of phase 2 and informational exchanges.
    pub fn hash_a(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.keys.hash_a(parts)
    }

    /// The first IV of a phase 2 or informational exchange with this message ID.
    pub fn exchange_iv(&self, message_id: u32) -> Vec<u8> {
        phase2_iv(self.keys.hash, &self.iv, message_id, self.cipher.block_len())
    }

    /// Encodes and encrypts a message with `iv`; returns it and its last ciphertext block.
    pub fn seal(
        &self,
        link: &Link,
        exchange: ExchangeType,
        message_id: u32,
        payloads: &[Payload],
        iv: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        link.encode(exchange, message_id, payloads, Some((&self.cipher, iv)))
    }

    /// A phase 1 message, encrypted on the IV chain, which moves on.
    pub fn seal_phase1(&mut self, link: &Link, exchange: ExchangeType, payloads: &[Payload]) -> Vec<u8> {
        let (packet, last) = link.encode(exchange, 0, payloads, Some((&self.cipher, &self.iv)));
        self.iv = last;
        packet
    }

    /// Decrypts the body of a received message with `iv`; returns the plaintext and the last
    /// ciphertext block.
    pub fn open(&self, rx: &Received<'_>, iv: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let bs = self.cipher.block_len();
        let body = &rx.data[HEADER_LEN..rx.header.length as usize];
        if body.is_empty() || body.len() % bs != 0 {
            return Err(WireError::BadLength { what: "encrypted body", len: body.len() });
        }
        let last = body[body.len() - bs..].to_vec();
        let mut plain = body.to_vec();
        self.cipher
            .decrypt(iv, &mut plain)
            .map_err(|e| WireError::Invalid { what: "encrypted body", detail: e.to_string() })?;
        Ok((plain, last))
    }

    /// Decrypts a phase 1 message on the IV chain. The chain moves on only by
    /// [`MessageCrypto::advance`]: the caller decides when the message counts.
    pub fn open_phase1(&self, rx: &Received<'_>) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        self.open(rx, &self.iv)
    }

    pub fn advance(&mut self, last_block: Vec<u8>) {
        self.iv = last_block;
    }

    /// The IV chain (after phase 1: the base of every later exchange's IV).
    pub fn iv(&self) -> &[u8] {
        &self.iv
    }
}

/// An established (or keyed) IKE SA's way to its peer: the ends and the keys, lent together.
#[derive(Clone, Copy)]
pub(crate) struct Secured<'a> {
    pub link: &'a Link,
    pub crypto: &'a MessageCrypto,
}
