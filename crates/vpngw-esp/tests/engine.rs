//! The ESP engine end to end in memory: round trips for every suite and size, tampering,
//! replay, sequence limits, padding and next-header checks, batches, and the RFC 3602 tunnel-mode
//! packets reproduced byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{FixedBytes, all_suites, inner_packet, keys};
use vpngw_crypto::{CbcCipher, EncryptionAlgorithm, FastRng, IntegrityAlgorithm, IntegrityKey, SecretBytes};
use vpngw_esp::{InboundSa, NextHeader, OpenError, OpenPacket, OutboundSa, SaKeys, SealError, SealPacket, Spi};

const SPI: Spi = Spi::new(0xc0ffee01);

fn pair(e: EncryptionAlgorithm, i: IntegrityAlgorithm) -> (OutboundSa, InboundSa) {
    let k = keys(e, i, 9);
    (OutboundSa::new(SPI, &k).unwrap(), InboundSa::new(SPI, &k, 1024).unwrap())
}

fn seal_vec(out: &OutboundSa, rng: &mut FastRng, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; out.header_len() + inner.len() + out.max_trailer_len()];
    let sealed = out.seal(rng, inner, NextHeader::IPV4, &mut buf).unwrap();
    buf[sealed.range].to_vec()
}

#[test]
fn round_trip_every_suite_every_size_0_to_1500() {
    let mut rng = FastRng::from_seed_for_tests(1);
    for (e, i) in all_suites() {
        let (out, inb) = pair(e, i);
        let block = e.spec().block_len;
        for len in 0..=1500 {
            let inner = inner_packet(len, len as u8);
            let mut buf = vec![0u8; out.header_len() + len + out.max_trailer_len()];
            let start = out.header_len();
            buf[start..start + len].copy_from_slice(&inner);
            let sealed = out.seal_in_place(&mut rng, &mut buf, start..start + len, NextHeader::IPV4).unwrap();
            let esp_len = sealed.range.len();
            assert_eq!(esp_len, out.sealed_len(len));
            // Minimal padding: the encrypted part is payload + 2 rounded up to the block.
            let enc = esp_len - 8 - e.spec().iv_len - 12;
            assert_eq!(enc % block, 0);
            assert!(enc - (len + 2) < block, "{e}/{i} len {len}: padded to {enc}");
            assert_eq!(sealed.sequence as usize, len + 1);
            let mut esp = buf[sealed.range].to_vec();
            // Ciphertext never shows the plaintext (for packets long enough to tell).
            if len >= 32 {
                assert!(!esp.windows(16).any(|w| w == &inner[8..24]), "{e}/{i}: plaintext visible");
            }
            let opened = inb.open_in_place(&mut esp).unwrap_or_else(|r| panic!("{e}/{i} len {len}: {r}"));
            assert_eq!(&esp[opened.payload.clone()], &inner[..], "{e}/{i} len {len}");
            assert_eq!(opened.next_header, NextHeader::IPV4);
            assert_eq!(opened.sequence as usize, len + 1);
        }
    }
}

#[test]
fn ivs_differ_between_packets() {
    let (out, _) = pair(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96);
    let mut rng = FastRng::from_os().unwrap();
    let a = seal_vec(&out, &mut rng, &inner_packet(100, 0));
    let b = seal_vec(&out, &mut rng, &inner_packet(100, 0));
    assert_ne!(&a[8..24], &b[8..24]);
    assert_ne!(&a[24..], &b[24..], "same plaintext must not give the same ciphertext");
}

#[test]
fn flipping_any_byte_after_the_spi_is_an_icv_failure() {
    for (e, i) in all_suites() {
        let (out, _) = pair(e, i);
        let out = out.with_last_sequence(0x0102_0303);
        let mut rng = FastRng::from_seed_for_tests(2);
        let good = seal_vec(&out, &mut rng, &inner_packet(61, 3));
        for index in 0..good.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let (_, inb) = pair(e, i);
                let mut bad = good.clone();
                bad[index] ^= mask;
                let expected = if index < 4 { OpenError::SpiMismatch } else { OpenError::IcvMismatch };
                assert_eq!(inb.open_in_place(&mut bad).unwrap_err(), expected, "{e}/{i} byte {index} ^ {mask:#x}");
            }
        }
        // Sanity: the untouched packet opens.
        let (_, inb) = pair(e, i);
        assert!(inb.open_in_place(&mut good.clone()).is_ok());
    }
}

#[test]
fn wrong_key_is_an_icv_failure() {
    let (out, _) = pair(EncryptionAlgorithm::Aes256, IntegrityAlgorithm::HmacSha1_96);
    let other =
        InboundSa::new(SPI, &keys(EncryptionAlgorithm::Aes256, IntegrityAlgorithm::HmacSha1_96, 10), 64).unwrap();
    let mut p = seal_vec(&out, &mut FastRng::from_seed_for_tests(3), &inner_packet(40, 0));
    assert_eq!(other.open_in_place(&mut p).unwrap_err(), OpenError::IcvMismatch);
}

#[test]
fn replays_are_dropped_after_a_good_packet() {
    let (out, inb) = pair(EncryptionAlgorithm::TripleDes, IntegrityAlgorithm::HmacMd5_96);
    let p = seal_vec(&out, &mut FastRng::from_seed_for_tests(4), &inner_packet(80, 1));
    assert!(inb.open_in_place(&mut p.clone()).is_ok());
    assert_eq!(inb.open_in_place(&mut p.clone()).unwrap_err(), OpenError::Replayed);
}

#[test]
fn a_forged_packet_does_not_advance_the_window() {
    let (out, inb) = pair(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96);
    let mut rng = FastRng::from_seed_for_tests(5);
    let first = seal_vec(&out, &mut rng, &inner_packet(40, 0));
    // A forgery far ahead with a broken ICV must not slide the window past `first`.
    let mut forged = seal_vec(&out.with_last_sequence(1_000_000), &mut rng, &inner_packet(40, 0));
    let n = forged.len();
    forged[n - 1] ^= 1;
    assert_eq!(inb.open_in_place(&mut forged).unwrap_err(), OpenError::IcvMismatch);
    assert_eq!(inb.replay_window().highest(), 0);
    assert!(inb.open_in_place(&mut first.clone()).is_ok());
}

#[test]
fn sequence_exhaustion_and_soft_limit() {
    let k = keys(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96, 1);
    let out = OutboundSa::new(SPI, &k).unwrap().with_soft_sequence_limit(u32::MAX - 1).with_last_sequence(u32::MAX - 3);
    let mut rng = FastRng::from_seed_for_tests(6);
    let mut buf = vec![0u8; 256];
    let mut seal = || {
        buf[24] = 0x45;
        out.seal_in_place(&mut rng, &mut buf, 24..124, NextHeader::IPV4)
    };
    let a = seal().unwrap();
    assert_eq!((a.sequence, a.rekey_due), (u32::MAX - 2, false));
    let b = seal().unwrap();
    assert_eq!((b.sequence, b.rekey_due), (u32::MAX - 1, true));
    let c = seal().unwrap();
    assert_eq!((c.sequence, c.rekey_due), (u32::MAX, false));
    // Never wraps to 0: refused, and stays refused.
    for _ in 0..3 {
        assert_eq!(seal().unwrap_err(), SealError::SequenceExhausted);
    }
}

#[test]
fn seal_reports_missing_room_and_bad_ranges() {
    let (out, _) = pair(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96);
    let mut rng = FastRng::from_seed_for_tests(7);
    let mut buf = vec![0u8; 200];
    // Headroom 23 < 24.
    assert_eq!(out.seal_in_place(&mut rng, &mut buf, 23..100, NextHeader::IPV4).unwrap_err(), SealError::NoRoom);
    // Tailroom: 100 bytes of payload at 24 need 24 + 112 + 12 = 148 > 140.
    assert_eq!(out.seal_in_place(&mut rng, &mut buf[..140], 24..124, NextHeader::IPV4).unwrap_err(), SealError::NoRoom);
    assert_eq!(out.seal_in_place(&mut rng, &mut buf, 24..201, NextHeader::IPV4).unwrap_err(), SealError::BadRange);
    assert_eq!(out.seal_in_place(&mut rng, &mut buf, 24..100, NextHeader(17)).unwrap_err(), SealError::BadNextHeader);
    // None of these consumed a sequence number.
    assert_eq!(out.sequence_used(), 0);
}

/// Builds a packet the way a peer would, with chosen trailer bytes, to test what open() checks
/// after the ICV.
fn craft(keys: &SaKeys, seq: u32, encrypted_plain: &[u8]) -> Vec<u8> {
    let iv = vec![0x11u8; keys.encryption.spec().iv_len];
    let mut body = encrypted_plain.to_vec();
    CbcCipher::new(keys.encryption, keys.encryption_key.expose()).unwrap().encrypt(&iv, &mut body).unwrap();
    let mut p = [&SPI.to_be_bytes()[..], &seq.to_be_bytes(), &iv, &body].concat();
    let mut icv = [0u8; 12];
    IntegrityKey::new(keys.integrity, keys.integrity_key.expose()).unwrap().sign(&p, &mut icv);
    p.extend_from_slice(&icv);
    p
}

#[test]
fn trailer_checks_after_a_valid_icv() {
    let k = keys(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96, 5);
    let inb = InboundSa::new(SPI, &k, 64).unwrap();
    let mut plain = vec![0x45u8; 16];
    // Correct: 10 bytes of payload, pad 1..4, pad length 4, next header 4.
    plain[10..14].copy_from_slice(&[1, 2, 3, 4]);
    plain[14] = 4;
    plain[15] = 4;
    let opened = inb.open_in_place(&mut craft(&k, 1, &plain)).unwrap();
    assert_eq!(opened.payload.len(), 10);
    let mut bad_pad = plain.clone();
    bad_pad[12] = 9;
    assert_eq!(inb.open_in_place(&mut craft(&k, 2, &bad_pad)).unwrap_err(), OpenError::BadPadding);
    let mut long_pad = plain.clone();
    long_pad[14] = 15; // pad length beyond the payload
    assert_eq!(inb.open_in_place(&mut craft(&k, 3, &long_pad)).unwrap_err(), OpenError::BadPadding);
    let mut udp = plain.clone();
    udp[15] = 17;
    assert_eq!(inb.open_in_place(&mut craft(&k, 4, &udp)).unwrap_err(), OpenError::BadNextHeader);
    let mut dummy = plain.clone();
    dummy[15] = 59;
    assert_eq!(inb.open_in_place(&mut craft(&k, 5, &dummy)).unwrap_err(), OpenError::DummyPacket);
    // Authentic packets with bad trailers still used up their sequence numbers.
    assert_eq!(inb.open_in_place(&mut craft(&k, 3, &plain)).unwrap_err(), OpenError::Replayed);
    // IPv6 inner packet, and a zero-length payload with 14 bytes of padding.
    let mut v6 = plain.clone();
    v6[15] = 41;
    assert_eq!(inb.open_in_place(&mut craft(&k, 6, &v6)).unwrap().next_header, NextHeader::IPV6);
    let mut empty: Vec<u8> = (1..=14).collect();
    empty.extend_from_slice(&[14, 4]);
    assert_eq!(inb.open_in_place(&mut craft(&k, 7, &empty)).unwrap().payload.len(), 0);
}

#[test]
fn truncated_and_misaligned_packets() {
    let (out, inb) = pair(EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacMd5_96);
    let p = seal_vec(&out, &mut FastRng::from_seed_for_tests(8), &inner_packet(30, 0));
    for len in 0..52 {
        assert_eq!(inb.open_in_place(&mut p[..len].to_vec()).unwrap_err(), OpenError::Truncated, "len {len}");
    }
    let mut longer = p.clone();
    longer.push(0);
    assert_eq!(inb.open_in_place(&mut longer).unwrap_err(), OpenError::BadLength);
}

#[test]
fn batch_output_equals_single_packet_output() {
    for (e, i) in all_suites() {
        let k = keys(e, i, 3);
        let single = OutboundSa::new(SPI, &k).unwrap();
        let batched = OutboundSa::new(SPI, &k).unwrap();
        let lens: Vec<usize> = (0..70).map(|n| (n * 97) % 1450).collect();
        let h = single.header_len();
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|l| vec![0u8; h + l + single.max_trailer_len()]).collect();
        for (b, l) in bufs.iter_mut().zip(&lens) {
            b[h..h + l].copy_from_slice(&inner_packet(*l, *l as u8));
        }
        let mut expected = bufs.clone();
        let mut rng = FastRng::from_seed_for_tests(9);
        let singles: Vec<_> = expected
            .iter_mut()
            .zip(&lens)
            .map(|(b, l)| single.seal_in_place(&mut rng, b, h..h + l, NextHeader::IPV4).unwrap())
            .collect();
        // Packet 5 has no room: it fails alone and takes no sequence number.
        bufs[5].truncate(h + lens[5]);
        let mut rng = FastRng::from_seed_for_tests(9);
        let mut packets: Vec<SealPacket<'_>> =
            bufs.iter_mut().zip(&lens).map(|(b, l)| SealPacket::new(b, h..h + l, NextHeader::IPV4)).collect();
        batched.seal_batch(&mut rng, &mut packets);
        let outcomes: Vec<_> = packets.into_iter().map(|p| p.outcome.unwrap()).collect();
        assert_eq!(outcomes[5], Err(SealError::NoRoom));
        // IVs come from the same stream, so packets before 5 are identical; after it, each is
        // the single-path packet of the previous number.
        for n in 0..5 {
            assert_eq!(outcomes[n].as_ref().unwrap(), &singles[n]);
            assert_eq!(bufs[n], expected[n], "{e}/{i} packet {n}");
        }
        let inb = InboundSa::new(SPI, &k, 1024).unwrap();
        for (n, outcome) in outcomes.iter().enumerate() {
            let Ok(sealed) = outcome else { continue };
            let mut esp = bufs[n][sealed.range.clone()].to_vec();
            let opened = inb.open_in_place(&mut esp).unwrap();
            assert_eq!(&esp[opened.payload], &inner_packet(lens[n], lens[n] as u8)[..], "{e}/{i} packet {n}");
        }
        assert_eq!(batched.sequence_used(), 69);
    }
}

#[test]
fn open_batch_reports_each_packet() {
    let (out, inb) = pair(EncryptionAlgorithm::Aes192, IntegrityAlgorithm::HmacSha1_96);
    let mut rng = FastRng::from_seed_for_tests(10);
    let good = seal_vec(&out, &mut rng, &inner_packet(300, 1));
    let mut bufs = [good.clone(), good.clone(), vec![1, 2, 3], seal_vec(&out, &mut rng, &inner_packet(5, 2))];
    let mut packets: Vec<OpenPacket<'_>> = bufs.iter_mut().map(|b| OpenPacket::new(b)).collect();
    inb.open_batch(&mut packets);
    let outcomes: Vec<_> = packets.into_iter().map(|p| p.outcome.unwrap().map(|o| o.payload.len())).collect();
    assert_eq!(outcomes, [Ok(300), Err(OpenError::Replayed), Err(OpenError::Truncated), Ok(5)]);
}

/// A batch opens exactly as the same packets one by one: 150 packets (three batch steps) of
/// every suite, with good ones, a replay inside the batch and one of an already-seen number,
/// a flipped ICV bit, a flipped ciphertext bit, a wrong SPI, truncated and misaligned ones.
#[test]
fn open_batch_equals_one_by_one() {
    for (e, i) in all_suites() {
        let k = keys(e, i, 4);
        let out = OutboundSa::new(SPI, &k).unwrap();
        let other = OutboundSa::new(Spi::new(SPI.get() ^ 1), &k).unwrap();
        let mut rng = FastRng::from_seed_for_tests(11);
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for n in 0..150usize {
            let inner = inner_packet((n * 37) % 1400, n as u8);
            let mut p = seal_vec(&out, &mut rng, &inner);
            match n % 10 {
                3 => *p.last_mut().unwrap() ^= 0x10,
                5 if p.len() > 30 => p[25] ^= 1,
                7 => p = seal_vec(&other, &mut rng, &inner),
                8 => p.truncate(p.len() / 2),
                9 => p.pop().map_or((), |_| ()),
                _ => {}
            }
            packets.push(p);
            if n % 17 == 16 {
                packets.push(packets[packets.len() - 2].clone());
            }
        }
        packets.push(packets[0].clone());
        let sequential = InboundSa::new(SPI, &k, 1024).unwrap();
        let expected: Vec<_> = packets
            .iter()
            .map(|p| {
                let mut b = p.clone();
                sequential.open_in_place(&mut b).map(|o| b[o.payload].to_vec())
            })
            .collect();
        let batched = InboundSa::new(SPI, &k, 1024).unwrap();
        let mut bufs = packets.clone();
        let mut batch: Vec<OpenPacket<'_>> = bufs.iter_mut().map(|b| OpenPacket::new(b)).collect();
        batched.open_batch(&mut batch);
        let outcomes: Vec<_> = batch.into_iter().map(|p| p.outcome.unwrap().map(|o| o.payload)).collect();
        for (n, (got, want)) in outcomes.iter().zip(&expected).enumerate() {
            let got = got.clone().map(|r| bufs[n][r].to_vec());
            assert_eq!(&got, want, "{e}/{i} packet {n}");
        }
        for reason in [OpenError::Replayed, OpenError::IcvMismatch, OpenError::SpiMismatch] {
            assert!(expected.iter().any(|r| r.as_ref().err() == Some(&reason)), "{e}/{i}: no {reason:?} case");
        }
        assert!(expected.iter().filter(|r| r.is_ok()).count() > 60, "{e}/{i}");
    }
}

fn vector_case(name: &str) -> std::collections::HashMap<String, Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vpngw-crypto/tests/vectors/aes_cbc.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let block = text.split("# case: ").find(|b| b.starts_with(name)).unwrap();
    block
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), hex::decode(v.trim()).unwrap()))
        .collect()
}

#[test]
fn rfc3602_tunnel_mode_packets_byte_for_byte() {
    // RFC 3602 s.4 cases 7 and 8 are tunnel-mode ESP packets (no ICV in the RFC; ours adds one,
    // checked against an independently keyed HMAC).
    for case in ["rfc3602_case7", "rfc3602_case8"] {
        let v = vector_case(case);
        let spi = Spi::from_be_bytes(v["spi"][..].try_into().unwrap());
        let seq = u32::from_be_bytes(v["seq"][..].try_into().unwrap());
        let keys = SaKeys {
            encryption: EncryptionAlgorithm::Aes128,
            encryption_key: SecretBytes::from_slice(&v["key"]),
            integrity: IntegrityAlgorithm::HmacSha1_96,
            integrity_key: SecretBytes::from_slice(&[0x0b; 20]),
        };
        let out = OutboundSa::new(spi, &keys).unwrap().with_last_sequence(seq - 1);
        let inner = [&v["orig_ip_header"][..], &v["payload"]].concat();
        let mut buf = vec![0u8; 512];
        let sealed = out.seal(&mut FixedBytes(v["iv"].clone(), 0), &inner, NextHeader::IPV4, &mut buf).unwrap();
        let esp = &buf[sealed.range];
        let (body, icv) = esp.split_at(esp.len() - 12);
        assert_eq!(hex::encode(body), hex::encode(&v["esp_packet"]), "{case}");
        let check = IntegrityKey::new(IntegrityAlgorithm::HmacSha1_96, &[0x0b; 20]).unwrap();
        assert!(check.verify(body, icv));
        let inb = InboundSa::new(spi, &keys, 64).unwrap();
        let mut copy = esp.to_vec();
        let opened = inb.open_in_place(&mut copy).unwrap();
        assert_eq!(&copy[opened.payload], &inner[..]);
        assert_eq!(opened.sequence, seq);
    }
}
