//! What one fuzz input does, shared by the `cargo fuzz` target `esp_open` in `fuzz/` and the
//! test that replays its corpus (`tests/fuzz_corpus.rs`), so both run the same code (feature
//! `testing`). It must never panic, whatever the bytes; the checks below hold for any input.

use vpngw_crypto::{EncryptionAlgorithm, FastRng, IntegrityAlgorithm, IntegrityKey, SecretBytes};

use crate::sa::{InboundSa, OpenPacket, Opened, OutboundSa, SaKeys};
use crate::wire::{ESP_HEADER_LEN, NextHeader};
use crate::{OpenError, Spi};

/// The fixed SA's SPI (seeds carry it; a signed input gets it written in).
pub const SPI: Spi = Spi::new(0x1000_0001);

/// At most this many packets in one batch input.
pub const MAX_BATCH: usize = 16;

/// Input: a selector byte, then the packet(s).
/// - bits 0-2: the cipher (`EncryptionAlgorithm::ALL`, modulo its length); bit 3: the integrity
///   algorithm;
/// - bit 4, "signed": the packet gets this SA's SPI and a valid ICV, so that decryption, padding
///   and next-header checks are reached (a forged packet stops at the ICV);
/// - bit 5, "batch": the rest is packets, each a 16-bit big-endian length and its bytes, opened
///   with `open_batch` and one by one on a twin SA: the outcomes must be the same;
/// - bit 6, "seal": the rest is an inner packet, sealed and opened again: it comes back whole.
pub fn open(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let algorithms = EncryptionAlgorithm::ALL;
    let encryption = algorithms[usize::from(selector & 7) % algorithms.len()];
    let integrity = if selector & 8 == 0 { IntegrityAlgorithm::HmacSha1_96 } else { IntegrityAlgorithm::HmacMd5_96 };
    let keys = SaKeys {
        encryption,
        encryption_key: key(0x11, encryption.spec().key_len),
        integrity,
        integrity_key: key(0x5a, integrity.spec().key_len),
    };
    let (Ok(sa), Ok(twin)) = (InboundSa::new(SPI, &keys, 64), InboundSa::new(SPI, &keys, 64)) else {
        panic!("the fixed SA's keys are valid");
    };
    let Ok(mac) = IntegrityKey::new(keys.integrity, keys.integrity_key.expose()) else {
        panic!("the fixed integrity key is valid");
    };
    let packets: Vec<Vec<u8>> = if selector & 0x20 != 0 { split(rest) } else { vec![rest.to_vec()] };
    let packets: Vec<Vec<u8>> =
        if selector & 0x10 != 0 { packets.into_iter().map(|p| sign(&mac, p)).collect() } else { packets };

    if selector & 0x40 != 0 {
        return seal_and_open(&keys, &sa, rest);
    }
    if selector & 0x20 != 0 {
        let mut batch_bufs = packets.clone();
        let mut batch: Vec<OpenPacket<'_>> = batch_bufs.iter_mut().map(|b| OpenPacket::new(b)).collect();
        sa.open_batch(&mut batch);
        let batch: Vec<_> = batch.into_iter().map(|p| p.outcome).collect();
        for (i, (packet, outcome)) in packets.iter().zip(batch).enumerate() {
            let mut buf = packet.clone();
            let one = twin.open_in_place(&mut buf);
            check(packet, &one);
            assert_eq!(outcome.as_ref(), Some(&one), "packet {i}: open_batch and open_in_place differ");
            if let Ok(o) = one {
                assert_eq!(batch_bufs[i][o.payload.clone()], buf[o.payload], "packet {i}: inner packets differ");
            }
        }
    } else {
        for packet in &packets {
            let mut buf = packet.clone();
            let opened = sa.open_in_place(&mut buf);
            check(packet, &opened);
        }
    }
}

/// What holds for any opened packet: the inner packet lies inside the packet, after the header,
/// its next header is a tunnel-mode one, and the SPI and sequence number are the packet's.
fn check(packet: &[u8], result: &Result<Opened, OpenError>) {
    if let Ok(o) = result {
        assert!(o.payload.start >= ESP_HEADER_LEN && o.payload.end <= packet.len(), "{o:?} of {} bytes", packet.len());
        assert!(o.next_header.is_tunnel_mode());
        assert_eq!(o.sequence.to_be_bytes(), packet[4..8]);
        assert_eq!(packet[..4], SPI.to_be_bytes());
    }
}

fn seal_and_open(keys: &SaKeys, sa: &InboundSa, inner: &[u8]) {
    let Ok(out_sa) = OutboundSa::new(SPI, keys) else { panic!("the fixed SA's keys are valid") };
    let mut rng = FastRng::from_seed_for_tests(0);
    let mut buf = vec![0u8; out_sa.sealed_len(inner.len())];
    let Ok(sealed) = out_sa.seal(&mut rng, inner, NextHeader::IPV4, &mut buf) else {
        panic!("sealed_len is room enough");
    };
    let packet = &mut buf[sealed.range.clone()];
    let opened = sa.open_in_place(packet);
    match opened {
        Ok(o) => {
            assert_eq!(&packet[o.payload], inner, "the inner packet comes back whole");
            assert_eq!(o.sequence, sealed.sequence);
        }
        Err(e) => panic!("our own sealed packet does not open: {e}"),
    }
}

/// The packet with the SA's SPI and a valid ICV appended.
fn sign(mac: &IntegrityKey, mut packet: Vec<u8>) -> Vec<u8> {
    if let Some(spi) = packet.get_mut(..4) {
        spi.copy_from_slice(&SPI.to_be_bytes());
    }
    let mut icv = vec![0u8; mac.icv_len()];
    mac.sign(&packet, &mut icv);
    packet.extend_from_slice(&icv);
    packet
}

/// Length-prefixed packets (a short last one is cut at the input's end).
fn split(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    while let [a, b, rest @ ..] = data
        && packets.len() < MAX_BATCH
    {
        let (p, rest) = rest.split_at(usize::from(u16::from_be_bytes([*a, *b])).min(rest.len()));
        packets.push(p.to_vec());
        data = rest;
    }
    packets
}

/// A fixed key that is not a DES weak key (bytes vary).
fn key(start: u8, len: usize) -> SecretBytes {
    SecretBytes::new((0..len).map(|i| start.wrapping_add((i as u8).wrapping_mul(37))).collect())
}

/// Seed inputs: for each algorithm pair, a packet this SA sealed (with a sequence of them for the
/// batch mode) and the seal mode with a small IPv4 packet.
pub fn seed_inputs() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let inner: Vec<u8> = [0x45u8, 0, 0, 28].into_iter().chain((4..28).map(|i| i as u8)).collect();
    for (c, cipher) in EncryptionAlgorithm::ALL.into_iter().enumerate() {
        for (m, integrity) in [IntegrityAlgorithm::HmacSha1_96, IntegrityAlgorithm::HmacMd5_96].into_iter().enumerate()
        {
            let selector = c as u8 | (m as u8) << 3;
            let keys = SaKeys {
                encryption: cipher,
                encryption_key: key(0x11, cipher.spec().key_len),
                integrity,
                integrity_key: key(0x5a, integrity.spec().key_len),
            };
            let Ok(out_sa) = OutboundSa::new(SPI, &keys) else { panic!("valid keys") };
            let mut rng = FastRng::from_seed_for_tests(1);
            let mut sealed = Vec::new();
            for _ in 0..3 {
                let mut buf = vec![0u8; out_sa.sealed_len(inner.len())];
                let Ok(s) = out_sa.seal(&mut rng, &inner, NextHeader::IPV4, &mut buf) else { panic!("room") };
                sealed.push(buf[s.range].to_vec());
            }
            let name = format!("{}-{}", cipher.name(), integrity.name());
            seeds.push((format!("{name}-open"), [&[selector][..], &sealed[0]].concat()));
            let mut batch = vec![selector | 0x20];
            for p in [&sealed[0], &sealed[1], &sealed[0], &sealed[2]] {
                batch.extend_from_slice(&(p.len() as u16).to_be_bytes());
                batch.extend_from_slice(p);
            }
            seeds.push((format!("{name}-batch"), batch));
            seeds.push((format!("{name}-seal"), [&[selector | 0x40][..], &inner].concat()));
        }
    }
    seeds
}
