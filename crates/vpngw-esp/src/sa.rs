//! The SA's packet state and the two halves of the engine: [`OutboundSa::seal_in_place`] and
//! [`InboundSa::open_in_place`], plus batch forms.
//!
//! Both work in the caller's buffer: the inner packet sits at `payload` with headroom before it
//! (for SPI, sequence and IV) and tailroom after it (for padding, trailer and ICV), and becomes
//! the ESP packet where it lies. Nothing is allocated per packet. The key schedule and the keyed
//! HMAC state are built once in `new`.
//!
//! Both SA types are `Sync`: the outbound sequence is one atomic counter and the replay window
//! is lock-free, so any number of workers may seal or open with one SA.

use core::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use arrayvec::ArrayVec;
use vpngw_crypto::mac::MAX_MAC_LEN;
use vpngw_crypto::rand_core::CryptoRng;
use vpngw_crypto::{CbcCipher, CbcJob, EncryptionAlgorithm, IntegrityAlgorithm, IntegrityKey, SecretBytes};

use crate::error::{OpenError, SaError, SealError};
use crate::replay::ReplayWindow;
use crate::spi::Spi;
use crate::wire::{ESP_HEADER_LEN, ESP_TRAILER_LEN, EspPacket, NextHeader};

/// Rekey is requested when this sequence number is handed out, leaving 2^28 packets (268 s at
/// 1 Mpps) for the control plane to install a new SA before the 32-bit space runs out.
pub const DEFAULT_SOFT_SEQUENCE_LIMIT: u32 = u32::MAX - (1 << 28);

/// Packets per internal step of the batch API (one sequence reservation, one multi-buffer run):
/// 64, the lanes of one bitsliced DES pass (AES needs only 8-30).
pub const BATCH_STEP: usize = 64;

/// Keys and algorithms of one direction of an ESP SA, as the control plane derives them.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SaKeys {
    pub encryption: EncryptionAlgorithm,
    pub encryption_key: SecretBytes,
    pub integrity: IntegrityAlgorithm,
    pub integrity_key: SecretBytes,
}

/// The keyed transforms and sizes shared by both directions' code.
#[derive(Debug)]
struct Transform {
    cipher: CbcCipher,
    integrity: IntegrityKey,
    block_len: usize,
    iv_len: usize,
    icv_len: usize,
}

impl Transform {
    fn new(keys: &SaKeys) -> Result<Self, SaError> {
        let cipher = CbcCipher::new(keys.encryption, keys.encryption_key.expose())?;
        let integrity = IntegrityKey::new(keys.integrity, keys.integrity_key.expose())?;
        let spec = keys.encryption.spec();
        Ok(Self { cipher, block_len: spec.block_len, iv_len: spec.iv_len, icv_len: integrity.icv_len(), integrity })
    }

    fn header_len(&self) -> usize {
        ESP_HEADER_LEN + self.iv_len
    }

    /// Encrypted length for a payload: payload + padding + trailer, block-aligned (RFC 4303
    /// s.2.4; 8 and 16 also satisfy the 4-byte alignment ESP needs).
    fn encrypted_len(&self, payload_len: usize) -> usize {
        (payload_len + ESP_TRAILER_LEN).next_multiple_of(self.block_len)
    }
}

/// Where each part of one packet goes, computed before any byte is written.
#[derive(Clone, Copy, Debug)]
struct Layout {
    esp_start: usize,
    ciphertext_start: usize,
    payload_end: usize,
    ciphertext_end: usize,
    icv_end: usize,
}

/// Result of sealing one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The ESP packet (SPI .. ICV) inside the caller's buffer.
    pub range: Range<usize>,
    pub sequence: u32,
    /// This packet crossed the soft sequence limit: the control plane should rekey now. Reported
    /// on exactly one packet per SA.
    pub rekey_due: bool,
}

/// Result of opening one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The inner packet inside the caller's buffer.
    pub payload: Range<usize>,
    pub next_header: NextHeader,
    pub sequence: u32,
}

/// One packet for [`OutboundSa::seal_batch`]; `outcome` is filled in.
#[derive(Debug)]
pub struct SealPacket<'a> {
    pub buf: &'a mut [u8],
    pub payload: Range<usize>,
    pub next_header: NextHeader,
    pub outcome: Option<Result<Sealed, SealError>>,
}

impl<'a> SealPacket<'a> {
    pub fn new(buf: &'a mut [u8], payload: Range<usize>, next_header: NextHeader) -> Self {
        Self { buf, payload, next_header, outcome: None }
    }
}

/// One packet for [`InboundSa::open_batch`]; `outcome` is filled in.
#[derive(Debug)]
pub struct OpenPacket<'a> {
    pub buf: &'a mut [u8],
    pub outcome: Option<Result<Opened, OpenError>>,
}

impl<'a> OpenPacket<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, outcome: None }
    }
}

/// The sending half of an ESP SA.
#[derive(Debug)]
pub struct OutboundSa {
    spi: Spi,
    transform: Transform,
    /// Last sequence number handed out. 64 bits wide so that it can never wrap: numbers above
    /// 2^32 - 1 are refused instead of being sent.
    last_sequence: AtomicU64,
    soft_limit: u64,
}

impl OutboundSa {
    pub fn new(spi: Spi, keys: &SaKeys) -> Result<Self, SaError> {
        Ok(Self {
            spi,
            transform: Transform::new(keys)?,
            last_sequence: AtomicU64::new(0),
            soft_limit: u64::from(DEFAULT_SOFT_SEQUENCE_LIMIT),
        })
    }

    /// Sets the sequence number whose use reports `rekey_due`.
    pub fn with_soft_sequence_limit(mut self, limit: u32) -> Self {
        self.soft_limit = u64::from(limit);
        self
    }

    /// Resumes numbering after `last` (hot-backup takeover jumps ahead of the last synced value).
    pub fn with_last_sequence(self, last: u32) -> Self {
        self.last_sequence.store(u64::from(last), Ordering::Relaxed);
        self
    }

    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// Bytes needed before the payload: SPI, sequence and IV.
    pub fn header_len(&self) -> usize {
        self.transform.header_len()
    }

    /// Most bytes needed after any payload: padding, trailer and ICV.
    pub fn max_trailer_len(&self) -> usize {
        self.transform.block_len - 1 + ESP_TRAILER_LEN + self.transform.icv_len
    }

    /// Length of the ESP packet for a payload of `payload_len` bytes.
    pub fn sealed_len(&self, payload_len: usize) -> usize {
        self.header_len() + self.transform.encrypted_len(payload_len) + self.transform.icv_len
    }

    /// Sequence numbers handed out so far (may exceed 2^32 - 1 once exhausted).
    pub fn sequence_used(&self) -> u64 {
        self.last_sequence.load(Ordering::Relaxed)
    }

    fn layout(&self, buf_len: usize, payload: &Range<usize>, next_header: NextHeader) -> Result<Layout, SealError> {
        if payload.start > payload.end || payload.end > buf_len {
            return Err(SealError::BadRange);
        }
        if !(next_header.is_tunnel_mode() || next_header == NextHeader::NO_NEXT_HEADER) {
            return Err(SealError::BadNextHeader);
        }
        let esp_start = payload.start.checked_sub(self.header_len()).ok_or(SealError::NoRoom)?;
        let ciphertext_end = payload.start + self.transform.encrypted_len(payload.len());
        let icv_end = ciphertext_end + self.transform.icv_len;
        if icv_end > buf_len {
            return Err(SealError::NoRoom);
        }
        Ok(Layout { esp_start, ciphertext_start: payload.start, payload_end: payload.end, ciphertext_end, icv_end })
    }

    /// Reserves `count` consecutive sequence numbers; returns the first.
    fn reserve(&self, count: usize) -> u64 {
        self.last_sequence.fetch_add(count as u64, Ordering::Relaxed) + 1
    }

    fn sealed(&self, layout: &Layout, sequence: u64) -> Sealed {
        Sealed {
            range: layout.esp_start..layout.icv_end,
            sequence: sequence as u32,
            rekey_due: sequence == self.soft_limit,
        }
    }

    /// Writes SPI, sequence, a fresh IV, padding (1, 2, 3, ...), pad length and next header.
    fn write_clear_parts(&self, rng: &mut impl CryptoRng, buf: &mut [u8], l: &Layout, seq: u64, nh: NextHeader) {
        buf[l.esp_start..l.esp_start + 4].copy_from_slice(&self.spi.to_be_bytes());
        buf[l.esp_start + 4..l.esp_start + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        rng.fill_bytes(&mut buf[l.esp_start + ESP_HEADER_LEN..l.ciphertext_start]);
        let pad_len = l.ciphertext_end - ESP_TRAILER_LEN - l.payload_end;
        for (i, b) in buf[l.payload_end..l.payload_end + pad_len].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        buf[l.ciphertext_end - 2] = pad_len as u8;
        buf[l.ciphertext_end - 1] = nh.0;
    }

    fn write_icv(&self, buf: &mut [u8], l: &Layout) {
        let mut icv = [0u8; MAX_MAC_LEN];
        let icv = &mut icv[..self.transform.icv_len];
        self.transform.integrity.sign(&buf[l.esp_start..l.ciphertext_end], icv);
        buf[l.ciphertext_end..l.icv_end].copy_from_slice(icv);
    }

    /// Seals the packet at `buf[payload]` in place. `rng` supplies the IV: in service, the worker's own
    /// [`vpngw_crypto::FastRng`].
    pub fn seal_in_place(
        &self,
        rng: &mut impl CryptoRng,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: NextHeader,
    ) -> Result<Sealed, SealError> {
        let l = self.layout(buf.len(), &payload, next_header)?;
        let seq = self.reserve(1);
        if seq > u64::from(u32::MAX) {
            return Err(SealError::SequenceExhausted);
        }
        self.write_clear_parts(rng, buf, &l, seq, next_header);
        let (head, tail) = buf.split_at_mut(l.ciphertext_start);
        self.transform
            .cipher
            .encrypt(&head[l.esp_start + ESP_HEADER_LEN..], &mut tail[..l.ciphertext_end - l.ciphertext_start])
            // Unreachable: `layout` sized the IV and block-aligned the data.
            .map_err(|_| SealError::BadRange)?;
        self.write_icv(buf, &l);
        Ok(self.sealed(&l, seq))
    }

    /// Copies `payload` into `out` (after room for the header) and seals it there.
    pub fn seal(
        &self,
        rng: &mut impl CryptoRng,
        payload: &[u8],
        next_header: NextHeader,
        out: &mut [u8],
    ) -> Result<Sealed, SealError> {
        let start = self.header_len();
        let end = start + payload.len();
        out.get_mut(start..end).ok_or(SealError::NoRoom)?.copy_from_slice(payload);
        self.seal_in_place(rng, out, start..end, next_header)
    }

    /// Seals many packets of this SA: one sequence reservation and one multi-buffer CBC run per
    /// [`BATCH_STEP`] packets. Each packet's `outcome` is set; the output bytes are exactly what
    /// [`OutboundSa::seal_in_place`] would produce with the same IVs.
    pub fn seal_batch(&self, rng: &mut impl CryptoRng, packets: &mut [SealPacket<'_>]) {
        for step in packets.chunks_mut(BATCH_STEP) {
            let mut layouts: ArrayVec<Option<(Layout, u64)>, BATCH_STEP> = ArrayVec::new();
            for p in step.iter_mut() {
                match self.layout(p.buf.len(), &p.payload, p.next_header) {
                    Ok(l) => layouts.push(Some((l, 0))),
                    Err(e) => {
                        p.outcome = Some(Err(e));
                        layouts.push(None);
                    }
                }
            }
            let mut seq = self.reserve(layouts.iter().flatten().count());
            for (p, slot) in step.iter_mut().zip(layouts.iter_mut()) {
                let Some((l, assigned)) = slot else { continue };
                if seq > u64::from(u32::MAX) {
                    p.outcome = Some(Err(SealError::SequenceExhausted));
                    *slot = None;
                } else {
                    *assigned = seq;
                    self.write_clear_parts(rng, p.buf, l, seq, p.next_header);
                }
                seq += 1;
            }
            let mut jobs: ArrayVec<CbcJob<'_>, BATCH_STEP> = ArrayVec::new();
            for (p, slot) in step.iter_mut().zip(layouts.iter()) {
                let Some((l, _)) = slot else { continue };
                let (head, tail) = p.buf.split_at_mut(l.ciphertext_start);
                jobs.push(CbcJob {
                    iv: &head[l.esp_start + ESP_HEADER_LEN..],
                    data: &mut tail[..l.ciphertext_end - l.ciphertext_start],
                });
            }
            let encrypted = self.transform.cipher.encrypt_multi(&mut jobs);
            drop(jobs);
            if encrypted.is_ok() {
                // The ICVs of the whole step at once (HMAC-SHA1: two packets at a time).
                let mut icvs = [[0u8; MAX_MAC_LEN]; BATCH_STEP];
                let signed: ArrayVec<&[u8], BATCH_STEP> = step
                    .iter()
                    .zip(layouts.iter())
                    .filter_map(|(p, slot)| slot.as_ref().map(|(l, _)| &p.buf[l.esp_start..l.ciphertext_end]))
                    .collect();
                self.transform.integrity.sign_many(&signed, |i, icv| icvs[i][..icv.len()].copy_from_slice(icv));
                drop(signed);
                let icv_len = self.transform.icv_len;
                let mut next = icvs.iter();
                for (p, slot) in step.iter_mut().zip(layouts.iter()) {
                    let Some((l, seq)) = slot else { continue };
                    if let Some(icv) = next.next() {
                        p.buf[l.ciphertext_end..l.icv_end].copy_from_slice(&icv[..icv_len]);
                    }
                    p.outcome = Some(Ok(self.sealed(l, *seq)));
                }
            } else {
                for (p, slot) in step.iter_mut().zip(layouts.iter()) {
                    // Unreachable: every job's shape came from `layout`.
                    if slot.is_some() {
                        p.outcome = Some(Err(SealError::BadRange));
                    }
                }
            }
        }
    }
}

/// A packet that passed [`InboundSa::check`]: where its parts are, and its sequence number.
#[derive(Clone, Copy, Debug)]
struct Checked {
    sequence: u32,
    ciphertext_start: usize,
    ciphertext_end: usize,
}

/// The receiving half of an ESP SA.
#[derive(Debug)]
pub struct InboundSa {
    spi: Spi,
    transform: Transform,
    window: ReplayWindow,
}

impl InboundSa {
    /// `replay_window`: packets, 64..=16384 ([`crate::replay::DEFAULT_WINDOW`] is 1024).
    pub fn new(spi: Spi, keys: &SaKeys, replay_window: u32) -> Result<Self, SaError> {
        Ok(Self { spi, transform: Transform::new(keys)?, window: ReplayWindow::new(replay_window)? })
    }

    pub fn spi(&self) -> Spi {
        self.spi
    }

    pub fn replay_window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Opens the ESP packet that fills `buf` (SPI .. ICV), in place. Order: lengths, SPI,
    /// replay pre-check, ICV (constant time), replay commit, decryption, padding, next header;
    /// nothing is decrypted before the ICV has passed.
    pub fn open_in_place(&self, buf: &mut [u8]) -> Result<Opened, OpenError> {
        let checked = self.check(buf)?;
        // The ICV runs from the ciphertext's end to the end of the packet (`EspPacket`).
        let (authenticated, icv) = buf.split_at(checked.ciphertext_end);
        if !self.transform.integrity.verify(authenticated, icv) {
            return Err(OpenError::IcvMismatch);
        }
        self.finish(buf, checked)
    }

    /// Everything before the ICV: framing, SPI, and the replay window's look (no commit yet).
    fn check(&self, buf: &[u8]) -> Result<Checked, OpenError> {
        let t = &self.transform;
        let view = EspPacket::new_checked(buf, t.iv_len, t.block_len, t.icv_len)?;
        if view.spi() != self.spi {
            return Err(OpenError::SpiMismatch);
        }
        let sequence = view.sequence();
        self.window.check(sequence)?;
        Ok(Checked { sequence, ciphertext_start: view.ciphertext_offset(), ciphertext_end: view.icv_offset() })
    }

    /// Everything after a good ICV: the window's commit, decryption, padding and next header.
    fn finish(&self, buf: &mut [u8], c: Checked) -> Result<Opened, OpenError> {
        let Checked { sequence, ciphertext_start, ciphertext_end } = c;
        self.window.commit(sequence)?;
        let (head, tail) = buf.split_at_mut(ciphertext_start);
        self.transform
            .cipher
            .decrypt(&head[ESP_HEADER_LEN..], &mut tail[..ciphertext_end - ciphertext_start])
            // Unreachable: `new_checked` sized the IV and block-aligned the ciphertext.
            .map_err(|_| OpenError::BadLength)?;
        let next_header = NextHeader(buf[ciphertext_end - 1]);
        let pad_len = usize::from(buf[ciphertext_end - 2]);
        let payload_end = (ciphertext_end - ESP_TRAILER_LEN)
            .checked_sub(pad_len)
            .filter(|end| *end >= ciphertext_start)
            .ok_or(OpenError::BadPadding)?;
        let padding = &buf[payload_end..ciphertext_end - ESP_TRAILER_LEN];
        if padding.iter().enumerate().any(|(i, b)| usize::from(*b) != i + 1) {
            return Err(OpenError::BadPadding);
        }
        if next_header == NextHeader::NO_NEXT_HEADER {
            return Err(OpenError::DummyPacket);
        }
        if !next_header.is_tunnel_mode() {
            return Err(OpenError::BadNextHeader);
        }
        Ok(Opened { payload: ciphertext_start..payload_end, next_header, sequence })
    }

    /// Copies `packet` into `out` and opens it there.
    pub fn open(&self, packet: &[u8], out: &mut [u8]) -> Result<Opened, OpenError> {
        let room = out.get_mut(..packet.len()).ok_or(OpenError::Truncated)?;
        room.copy_from_slice(packet);
        self.open_in_place(room)
    }

    /// Opens many packets of this SA, with the same outcome per packet as
    /// [`InboundSa::open_in_place`] one after the other: the ICVs of up to [`BATCH_STEP`]
    /// packets are checked together (HMAC-SHA1 two at a time), then each good packet is
    /// committed to the replay window and decrypted in order (CBC decryption is already
    /// parallel inside a packet). A sequence number twice in one batch passes the window's
    /// look for both, and the second fails at the commit (or, forged, at a second look), as it
    /// would have one by one.
    pub fn open_batch(&self, packets: &mut [OpenPacket<'_>]) {
        let t = &self.transform;
        for step in packets.chunks_mut(BATCH_STEP) {
            let mut checked: ArrayVec<Option<Checked>, BATCH_STEP> = ArrayVec::new();
            for p in step.iter_mut() {
                match self.check(p.buf) {
                    Ok(c) => checked.push(Some(c)),
                    Err(e) => {
                        p.outcome = Some(Err(e));
                        checked.push(None);
                    }
                }
            }
            let mut good = [false; BATCH_STEP];
            {
                let mut messages: ArrayVec<&[u8], BATCH_STEP> = ArrayVec::new();
                let mut icvs: ArrayVec<&[u8], BATCH_STEP> = ArrayVec::new();
                for (p, c) in step.iter().zip(&checked) {
                    if let Some(c) = c {
                        let (authenticated, icv) = p.buf.split_at(c.ciphertext_end);
                        messages.push(authenticated);
                        icvs.push(icv);
                    }
                }
                t.integrity.verify_many(&messages, &icvs, |i, ok| good[i] = ok);
            }
            let mut next = good.iter();
            for (p, c) in step.iter_mut().zip(checked) {
                let Some(c) = c else { continue };
                let ok = next.next().copied().unwrap_or(false);
                // A forged packet whose sequence number an earlier packet of this batch took is
                // a replay (the window's look comes first one by one), not an ICV mismatch.
                let forged = || self.window.check(c.sequence).err().unwrap_or(OpenError::IcvMismatch);
                p.outcome = Some(if ok { self.finish(p.buf, c) } else { Err(forged()) });
            }
        }
    }
}
