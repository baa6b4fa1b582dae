//! Two SHA-1 block compressions interleaved with the SHA-NI instructions.
//!
//! One SHA-1 stream is latency-bound: each `sha1rnds4` waits for the previous one's result.
//! Two independent streams written side by side let the CPU issue one stream's instruction
//! while the other's is in flight. The round structure is the standard one of the SHA
//! extensions (Intel's "New Instructions Supporting the Secure Hash Algorithm on Intel
//! Architecture Processors", 2013): message words are scheduled with `sha1msg1`/`sha1msg2`,
//! four rounds at a time by `sha1rnds4` with the round function selected by its immediate,
//! and `sha1nexte` derives E for the next four rounds.

#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_extract_epi32, _mm_loadu_si128, _mm_set_epi8, _mm_set_epi32, _mm_sha1msg1_epu32,
    _mm_sha1msg2_epu32, _mm_sha1nexte_epu32, _mm_sha1rnds4_epu32, _mm_shuffle_epi8, _mm_shuffle_epi32,
    _mm_storeu_si128, _mm_xor_si128,
};

/// Proof that the CPU has the instructions [`compress_pair`] uses: only
/// [`ShaNi::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShaNi(());

impl ShaNi {
    pub(crate) fn detect() -> Option<Self> {
        let ok = std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1");
        ok.then_some(Self(()))
    }

    /// Compresses `block_a` into `a` and `block_b` into `b`.
    pub(crate) fn compress_pair(self, a: &mut [u32; 5], block_a: &[u8; 64], b: &mut [u32; 5], block_b: &[u8; 64]) {
        // SAFETY: a `ShaNi` exists only after `detect` found every target feature that
        // `compress_pair` enables on this CPU, so each instruction it contains can execute.
        // Its memory accesses are through references of the exact sizes it reads and
        // writes (see there).
        unsafe { compress_pair(a, block_a, b, block_b) }
    }
}

/// A 16-byte load and store: unaligned forms, within arrays of 64 bytes (offsets 0, 16, 32,
/// 48) and 5 words (the first 4), so every access is in bounds.
#[inline(always)]
unsafe fn load(block: &[u8; 64], i: usize) -> __m128i {
    debug_assert!(i < 4);
    // SAFETY: i < 4, so bytes 16i..16i+16 lie inside the 64-byte array; loadu has no
    // alignment requirement.
    unsafe { _mm_loadu_si128(block.as_ptr().add(16 * i).cast()) }
}

#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
unsafe fn compress_pair(a: &mut [u32; 5], block_a: &[u8; 64], b: &mut [u32; 5], block_b: &[u8; 64]) {
    // SAFETY (the whole body): the caller guarantees the enabled features are present; memory
    // is touched only through `load` (in bounds, see there) and the loads/stores of the first
    // four words of the 5-word states (16 bytes of 20).
    unsafe {
        // Big-endian message words: reverse the bytes of the 16-byte lane.
        let swap = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let abcd_a = _mm_shuffle_epi32(_mm_loadu_si128(a.as_ptr().cast()), 0b0001_1011);
        let abcd_b = _mm_shuffle_epi32(_mm_loadu_si128(b.as_ptr().cast()), 0b0001_1011);
        let e_a = _mm_set_epi32(a[4] as i32, 0, 0, 0);
        let e_b = _mm_set_epi32(b[4] as i32, 0, 0, 0);

        let mut wa = [
            _mm_shuffle_epi8(load(block_a, 0), swap),
            _mm_shuffle_epi8(load(block_a, 1), swap),
            _mm_shuffle_epi8(load(block_a, 2), swap),
            _mm_shuffle_epi8(load(block_a, 3), swap),
        ];
        let mut wb = [
            _mm_shuffle_epi8(load(block_b, 0), swap),
            _mm_shuffle_epi8(load(block_b, 1), swap),
            _mm_shuffle_epi8(load(block_b, 2), swap),
            _mm_shuffle_epi8(load(block_b, 3), swap),
        ];

        // Rounds 0-3: E enters by plain addition; afterwards `sha1nexte` carries it.
        let mut ha0 = abcd_a;
        let mut hb0 = abcd_b;
        let mut ha1 = _mm_sha1rnds4_epu32(ha0, _mm_add_epi32(e_a, wa[0]), 0);
        let mut hb1 = _mm_sha1rnds4_epu32(hb0, _mm_add_epi32(e_b, wb[0]), 0);

        // Rounds 4-79, four at a time. Group g (1..20) uses message words w[g] (w[0..4] are
        // the block; from w[4] on each is scheduled from the four before it), round function
        // g / 5, and alternates which of h0/h1 holds the newest ABCD.
        macro_rules! group {
            ($g:expr, $f:expr) => {{
                let g: usize = $g;
                if g >= 4 {
                    // w[g] = msg2(msg1(w[g-4], w[g-3]) ^ w[g-2], w[g-1]), ring of 4.
                    let (i0, i1, i2, i3) = ((g - 4) % 4, (g - 3) % 4, (g - 2) % 4, (g - 1) % 4);
                    wa[i0] = _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32(wa[i0], wa[i1]), wa[i2]), wa[i3]);
                    wb[i0] = _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32(wb[i0], wb[i1]), wb[i2]), wb[i3]);
                }
                let w = g % 4;
                if g % 2 == 1 {
                    ha0 = _mm_sha1rnds4_epu32(ha1, _mm_sha1nexte_epu32(ha0, wa[w]), $f);
                    hb0 = _mm_sha1rnds4_epu32(hb1, _mm_sha1nexte_epu32(hb0, wb[w]), $f);
                } else {
                    ha1 = _mm_sha1rnds4_epu32(ha0, _mm_sha1nexte_epu32(ha1, wa[w]), $f);
                    hb1 = _mm_sha1rnds4_epu32(hb0, _mm_sha1nexte_epu32(hb1, wb[w]), $f);
                }
            }};
        }
        group!(1, 0);
        group!(2, 0);
        group!(3, 0);
        group!(4, 0);
        group!(5, 1);
        group!(6, 1);
        group!(7, 1);
        group!(8, 1);
        group!(9, 1);
        group!(10, 2);
        group!(11, 2);
        group!(12, 2);
        group!(13, 2);
        group!(14, 2);
        group!(15, 3);
        group!(16, 3);
        group!(17, 3);
        group!(18, 3);
        group!(19, 3);

        // After group 19 (odd), h0 holds the final ABCD and h1 the state E is derived from.
        let abcd_a = _mm_add_epi32(abcd_a, ha0);
        let abcd_b = _mm_add_epi32(abcd_b, hb0);
        let e_a = _mm_sha1nexte_epu32(ha1, e_a);
        let e_b = _mm_sha1nexte_epu32(hb1, e_b);
        _mm_storeu_si128(a.as_mut_ptr().cast(), _mm_shuffle_epi32(abcd_a, 0b0001_1011));
        _mm_storeu_si128(b.as_mut_ptr().cast(), _mm_shuffle_epi32(abcd_b, 0b0001_1011));
        a[4] = _mm_extract_epi32(e_a, 3) as u32;
        b[4] = _mm_extract_epi32(e_b, 3) as u32;
    }
}
