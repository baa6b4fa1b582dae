//! HMAC-SHA1 of many messages, two at a time (docs/adr/0009-two-lane-sha1.md).
//!
//! ESP with HMAC-SHA1-96 spends more CPU on SHA-1 than on AES: measured under `make
//! bench-e2e` (aes128-sha1, ESP in UDP), `sha1::compress` was 22 % of all samples, AES 9 %.
//! A single SHA-1 stream is bound by the latency of the SHA-NI round instruction, so two
//! messages hashed side by side cost little more than one. No crate offers multi-message
//! SHA-1: `sha1` hashes one stream, and `hmac` drives one `sha1` state.
//!
//! The keyed part is the same as `hmac`'s (RFC 2104): the states after `key ^ ipad` and
//! `key ^ opad` are computed once per key with `sha1::block_api::compress`; per message, the
//! inner hash continues from the first over the message and its padding, the outer from the
//! second over the 20-byte inner digest. Without SHA-NI, each block goes through
//! `sha1::block_api::compress` (which has its own software path), so the result never depends
//! on the CPU.

use zeroize::Zeroize;

#[cfg(target_arch = "x86_64")]
mod shani;

/// SHA-1's initial state (FIPS 180-4 s.5.3.1).
const H0: [u32; 5] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0];
const BLOCK: usize = 64;
pub(crate) const OUTPUT: usize = 20;

/// The two-lane compression function this CPU supports.
#[derive(Clone, Copy, Debug)]
enum Engine {
    #[cfg(target_arch = "x86_64")]
    ShaNi(shani::ShaNi),
    Serial,
}

impl Engine {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = shani::ShaNi::detect() {
            return Self::ShaNi(s);
        }
        Self::Serial
    }

    fn compress_pair(self, a: &mut [u32; 5], block_a: &[u8; 64], b: &mut [u32; 5], block_b: &[u8; 64]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::ShaNi(s) => s.compress_pair(a, block_a, b, block_b),
            Self::Serial => {
                sha1::block_api::compress(a, core::slice::from_ref(block_a));
                sha1::block_api::compress(b, core::slice::from_ref(block_b));
            }
        }
    }
}

fn compress_one(state: &mut [u32; 5], block: &[u8; 64]) {
    sha1::block_api::compress(state, core::slice::from_ref(block));
}

/// HMAC-SHA1 keyed once: the chaining states after the ipad and opad blocks. Wiped on drop.
#[derive(Clone)]
pub(crate) struct HmacSha1Pair {
    inner: [u32; 5],
    outer: [u32; 5],
    engine: Engine,
}

impl Drop for HmacSha1Pair {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// One message: its full blocks straight from the caller's buffer, then one or two blocks of
/// the rest plus padding, built here.
struct Padded<'m> {
    full: &'m [u8],
    tail: [u8; 2 * BLOCK],
    blocks: usize,
}

impl<'m> Padded<'m> {
    /// `prefix_len`: bytes already hashed before `message` (one key block).
    fn new(message: &'m [u8], prefix_len: usize) -> Self {
        let split = message.len() - message.len() % BLOCK;
        let (full, rest) = message.split_at(split);
        let mut tail = [0u8; 2 * BLOCK];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let tail_len = if rest.len() + 9 <= BLOCK { BLOCK } else { 2 * BLOCK };
        let bits = ((prefix_len + message.len()) as u64) * 8;
        tail[tail_len - 8..tail_len].copy_from_slice(&bits.to_be_bytes());
        Self { full, tail, blocks: split / BLOCK + tail_len / BLOCK }
    }

    fn block(&self, i: usize) -> &[u8; 64] {
        let full_blocks = self.full.len() / BLOCK;
        let bytes = if i < full_blocks {
            &self.full[i * BLOCK..(i + 1) * BLOCK]
        } else {
            let t = i - full_blocks;
            &self.tail[t * BLOCK..(t + 1) * BLOCK]
        };
        // Exactly 64 bytes by construction: the conversion cannot fail.
        bytes.try_into().unwrap_or(&[0; 64])
    }
}

impl Drop for Padded<'_> {
    fn drop(&mut self) {
        // The tail holds message bytes (ciphertext in ESP, but the type does not know that).
        self.tail.zeroize();
    }
}

fn digest_bytes(state: &[u32; 5]) -> [u8; OUTPUT] {
    let mut out = [0u8; OUTPUT];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The outer hash's only block: the inner digest, padded, after one key block.
fn outer_block(inner: &[u32; 5]) -> [u8; 64] {
    let mut block = [0u8; 64];
    block[..OUTPUT].copy_from_slice(&digest_bytes(inner));
    block[OUTPUT] = 0x80;
    block[56..].copy_from_slice(&(((BLOCK + OUTPUT) as u64) * 8).to_be_bytes());
    block
}

impl HmacSha1Pair {
    pub(crate) fn new(key: &[u8]) -> Self {
        // RFC 2104: a key longer than the block is hashed first; then zero-padded.
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            use sha1::Digest;
            let mut d = sha1::Sha1::digest(key);
            k[..OUTPUT].copy_from_slice(&d);
            d.zeroize();
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut pad = [0u8; BLOCK];
        let mut keyed = |byte: u8| {
            for (p, k) in pad.iter_mut().zip(&k) {
                *p = k ^ byte;
            }
            let mut state = H0;
            compress_one(&mut state, &pad);
            state
        };
        let inner = keyed(0x36);
        let outer = keyed(0x5c);
        k.zeroize();
        pad.zeroize();
        Self { inner, outer, engine: Engine::detect() }
    }

    /// The full 20-byte MAC of every message, handed to `emit` with the message's index.
    pub(crate) fn mac_many(&self, messages: &[&[u8]], mut emit: impl FnMut(usize, &[u8; OUTPUT])) {
        let mut pairs = messages.chunks_exact(2);
        let (mut a, mut b) = ([0u8; OUTPUT], [0u8; OUTPUT]);
        for (i, m) in (&mut pairs).enumerate() {
            self.mac_two(m[0], m[1], &mut a, &mut b);
            emit(2 * i, &a);
            emit(2 * i + 1, &b);
        }
        if let Some(m) = pairs.remainder().first() {
            a = self.mac(m);
            emit(messages.len() - 1, &a);
        }
        a.zeroize();
        b.zeroize();
    }

    /// The full MAC of one message.
    pub(crate) fn mac(&self, message: &[u8]) -> [u8; OUTPUT] {
        let padded = Padded::new(message, BLOCK);
        let mut s = self.inner;
        for i in 0..padded.blocks {
            compress_one(&mut s, padded.block(i));
        }
        let mut o = self.outer;
        let mut block = outer_block(&s);
        compress_one(&mut o, &block);
        let out = digest_bytes(&o);
        s.zeroize();
        o.zeroize();
        block.zeroize();
        out
    }

    fn mac_two(&self, a: &[u8], b: &[u8], out_a: &mut [u8; OUTPUT], out_b: &mut [u8; OUTPUT]) {
        let (pa, pb) = (Padded::new(a, BLOCK), Padded::new(b, BLOCK));
        let (mut sa, mut sb) = (self.inner, self.inner);
        let both = pa.blocks.min(pb.blocks);
        for i in 0..both {
            self.engine.compress_pair(&mut sa, pa.block(i), &mut sb, pb.block(i));
        }
        for i in both..pa.blocks {
            compress_one(&mut sa, pa.block(i));
        }
        for i in both..pb.blocks {
            compress_one(&mut sb, pb.block(i));
        }
        let (mut oa, mut ob) = (self.outer, self.outer);
        let (mut ba, mut bb) = (outer_block(&sa), outer_block(&sb));
        self.engine.compress_pair(&mut oa, &ba, &mut ob, &bb);
        *out_a = digest_bytes(&oa);
        *out_b = digest_bytes(&ob);
        for s in [&mut sa, &mut sb, &mut oa, &mut ob] {
            s.zeroize();
        }
        ba.zeroize();
        bb.zeroize();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};
    use proptest::prelude::*;

    fn reference(key: &[u8], message: &[u8]) -> [u8; OUTPUT] {
        let mut m = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).unwrap();
        m.update(message);
        m.finalize().into_bytes().into()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 2202 s.3, all seven HMAC-SHA1 cases, through the single and the paired paths.
    #[test]
    fn rfc2202_vectors() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (vec![0x0b; 20], b"Hi There".to_vec(), "b617318655057264e28bc0b6fb378c8ef146be00"),
            (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec(), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
            (vec![0xaa; 20], vec![0xdd; 50], "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
            ),
            (vec![0x0c; 20], b"Test With Truncation".to_vec(), "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data".to_vec(),
                "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
            ),
        ];
        for (key, data, expected) in &cases {
            let h = HmacSha1Pair::new(key);
            assert_eq!(h.mac(data).to_vec(), hex(expected));
            let mut out = [[0u8; OUTPUT]; 3];
            h.mac_many(&[data, b"", data], |i, m| out[i] = *m);
            assert_eq!(out[0].to_vec(), hex(expected));
            assert_eq!(out[2].to_vec(), hex(expected));
            assert_eq!(out[1], reference(key, b""));
        }
    }

    /// Every message length from 0 to 300 (all padding cases: tail of 0-55 bytes in one block,
    /// 56-63 spilling into a second) paired with every other length class.
    #[test]
    fn all_lengths_pairwise_match_the_hmac_crate() {
        let key = [0x5au8; 20];
        let h = HmacSha1Pair::new(&key);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for a in 0..=300 {
            for b in [0, 1, 55, 56, 63, 64, 119, 120, 200, 300] {
                let mut out = [[0u8; OUTPUT]; 2];
                h.mac_many(&[&data[..a], &data[..b]], |i, m| out[i] = *m);
                assert_eq!(out[0], reference(&key, &data[..a]), "a={a} b={b}");
                assert_eq!(out[1], reference(&key, &data[..b]), "a={a} b={b}");
            }
        }
    }

    /// The SHA-NI pair and the serial engine agree block for block (on a CPU without SHA-NI
    /// both sides are serial, and the test still checks the serial path).
    #[test]
    fn engines_agree() {
        let blocks: Vec<[u8; 64]> = (0..50u8).map(|i| core::array::from_fn(|j| i.wrapping_mul(31) ^ j as u8)).collect();
        let mut a = H0;
        let mut b = [1, 2, 3, 4, 5];
        let (mut a2, mut b2) = (a, b);
        for pair in blocks.chunks_exact(2) {
            Engine::detect().compress_pair(&mut a, &pair[0], &mut b, &pair[1]);
            Engine::Serial.compress_pair(&mut a2, &pair[0], &mut b2, &pair[1]);
            assert_eq!((a, b), (a2, b2));
        }
    }

    /// On a CPU with SHA-NI the pair path is the SHA-NI one (else `engines_agree` compares the
    /// serial engine with itself).
    #[test]
    fn sha_ni_is_used_where_present() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("sha") && std::is_x86_feature_detected!("sse4.1") {
            assert!(matches!(Engine::detect(), Engine::ShaNi(_)));
        }
    }

    /// Throughput of one message at a time (the `hmac` crate) against pairs, 1400-byte
    /// messages: `cargo test --release -p vpngw-crypto -- --ignored --nocapture sha1_pair_speed`.
    #[test]
    #[ignore = "timing, not a check"]
    fn sha1_pair_speed() {
        let key = [7u8; 20];
        let h = HmacSha1Pair::new(&key);
        let reference_key = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&key).unwrap();
        let data = vec![0xabu8; 1400 * 64];
        let messages: Vec<&[u8]> = data.chunks(1400).collect();
        let mut out = vec![[0u8; OUTPUT]; messages.len()];
        let rounds = 400;
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                for _ in 0..rounds {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            (data.len() * rounds) as f64 / best / 1e6
        };
        let crate_mbs = time(&mut || {
            for (m, o) in messages.iter().zip(out.iter_mut()) {
                let mut mac = reference_key.clone();
                mac.update(m);
                *o = mac.finalize().into_bytes().into();
            }
            std::hint::black_box(&out);
        });
        let pair_mbs = time(&mut || {
            h.mac_many(&messages, |i, m| out[i] = *m);
            std::hint::black_box(&out);
        });
        println!(
            "HMAC-SHA1, 1400 B: hmac crate {crate_mbs:.0} MB/s, pairs {pair_mbs:.0} MB/s ({:.2}x)",
            pair_mbs / crate_mbs
        );
    }

    proptest! {
        #[test]
        fn batches_match_the_hmac_crate(
            key in proptest::collection::vec(any::<u8>(), 0..100),
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..9),
        ) {
            let h = HmacSha1Pair::new(&key);
            let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let mut out = vec![[0u8; OUTPUT]; refs.len()];
            h.mac_many(&refs, |i, m| out[i] = *m);
            for (m, o) in refs.iter().zip(&out) {
                prop_assert_eq!(*o, reference(&key, m));
            }
        }
    }
}
