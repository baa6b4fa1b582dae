//! A 128-lane bit plane in one SSE2 register, for [`super::RoundMasks::crypt_wide`].
//!
//! The compiler does not vectorise the portable [`super::word::Pair`] well (measured: a 128-lane pass
//! took 2.4x a 64-lane one), while SSE2 does one 128-bit operation per gate, and `pandn` makes
//! the AND-NOT gates (half of the circuit) one instruction instead of two.

#![allow(unsafe_code)]

use core::arch::x86_64::{
    __m128i, _mm_and_si128, _mm_andnot_si128, _mm_cvtsi128_si64, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi64x,
    _mm_unpackhi_epi64, _mm_xor_si128,
};
use core::ops::{BitAnd, BitOr, BitXor, BitXorAssign, Not};

use super::word::{WideWord, Word};

// SAFETY (every `unsafe` block in this file): this module is compiled only when the target has
// SSE2 statically enabled (`cfg(target_feature = "sse2")` on the `mod` item; every x86_64 target
// does, as SSE2 is part of the x86_64 baseline), so each SSE2 instruction exists on every CPU
// the binary runs on. The intrinsics used take and return register values only: no pointer, no
// memory access, no alignment requirement; they cannot be unsound to call.

/// 128 lanes: one bit of each of 128 blocks.
#[derive(Clone, Copy)]
pub(crate) struct Sse2(__m128i);

impl WideWord for Sse2 {
    #[inline(always)]
    fn from_halves(low: u64, high: u64) -> Self {
        // SAFETY: see the module comment.
        Self(unsafe { _mm_set_epi64x(high as i64, low as i64) })
    }

    #[inline(always)]
    fn halves(self) -> (u64, u64) {
        // SAFETY: see the module comment.
        unsafe { (_mm_cvtsi128_si64(self.0) as u64, _mm_cvtsi128_si64(_mm_unpackhi_epi64(self.0, self.0)) as u64) }
    }
}

macro_rules! sse2_op {
    ($trait:ident, $f:ident, $intrinsic:ident) => {
        impl $trait for Sse2 {
            type Output = Sse2;
            #[inline(always)]
            fn $f(self, o: Sse2) -> Sse2 {
                // SAFETY: see the module comment.
                Sse2(unsafe { $intrinsic(self.0, o.0) })
            }
        }
    };
}
sse2_op!(BitAnd, bitand, _mm_and_si128);
sse2_op!(BitOr, bitor, _mm_or_si128);
sse2_op!(BitXor, bitxor, _mm_xor_si128);

impl BitXorAssign for Sse2 {
    #[inline(always)]
    fn bitxor_assign(&mut self, o: Sse2) {
        *self = *self ^ o;
    }
}

impl Not for Sse2 {
    type Output = Sse2;
    #[inline(always)]
    fn not(self) -> Sse2 {
        self ^ Sse2::splat(u64::MAX)
    }
}

impl Word for Sse2 {
    // `__m128i` has no const constructor; transmuting 16 zero bytes of `[u64; 2]` into it is
    // sound: both are 16 bytes of plain data without invalid bit patterns.
    // SAFETY: as just said.
    const ZERO: Self = Sse2(unsafe { core::mem::transmute::<[u64; 2], __m128i>([0, 0]) });

    #[inline(always)]
    fn andn(self, other: Self) -> Self {
        // SAFETY: see the module comment. `_mm_andnot_si128(a, b)` is `!a & b`.
        Sse2(unsafe { _mm_andnot_si128(other.0, self.0) })
    }

    #[inline(always)]
    fn splat(mask: u64) -> Self {
        // SAFETY: see the module comment.
        Sse2(unsafe { _mm_set1_epi64x(mask as i64) })
    }
}
