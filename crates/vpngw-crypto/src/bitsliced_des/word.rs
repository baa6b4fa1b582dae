//! Bit planes: the word the bitsliced rounds compute on (`u64` for 64 lanes, [`Pair`] or the
//! SSE2 register for 128). A leaf: the S-box circuits and the SSE2 word build on it.

use core::ops::{BitAnd, BitOr, BitXor, BitXorAssign, Not};

/// A bit plane: one bit of every lane. Plain `u64` for 64 lanes, [`Pair`] for 128.
pub(crate) trait Word:
    Copy + BitAnd<Output = Self> + BitOr<Output = Self> + BitXor<Output = Self> + BitXorAssign + Not<Output = Self>
{
    const ZERO: Self;
    /// `self & !other` (one SSE2 instruction, `pandn`).
    fn andn(self, other: Self) -> Self;
    /// A round-key mask (0 or all ones) on every lane.
    fn splat(mask: u64) -> Self;
}

impl Word for u64 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn andn(self, other: Self) -> Self {
        self & !other
    }
    #[inline(always)]
    fn splat(mask: u64) -> Self {
        mask
    }
}

/// A 128-lane plane: two 64-lane halves.
pub(crate) trait WideWord: Word {
    fn from_halves(low: u64, high: u64) -> Self;
    fn halves(self) -> (u64, u64);
}

/// Two 64-lane planes side by side: the portable 128-lane word for targets without SSE2.
#[derive(Clone, Copy, Default)]
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
pub(crate) struct Pair([u64; 2]);

impl WideWord for Pair {
    #[inline(always)]
    fn from_halves(low: u64, high: u64) -> Self {
        Pair([low, high])
    }
    #[inline(always)]
    fn halves(self) -> (u64, u64) {
        (self.0[0], self.0[1])
    }
}

macro_rules! pair_op {
    ($trait:ident, $f:ident, $op:tt) => {
        impl $trait for Pair {
            type Output = Pair;
            #[inline(always)]
            fn $f(self, o: Pair) -> Pair {
                Pair([self.0[0] $op o.0[0], self.0[1] $op o.0[1]])
            }
        }
    };
}
pair_op!(BitAnd, bitand, &);
pair_op!(BitOr, bitor, |);
pair_op!(BitXor, bitxor, ^);

impl BitXorAssign for Pair {
    #[inline(always)]
    fn bitxor_assign(&mut self, o: Pair) {
        self.0[0] ^= o.0[0];
        self.0[1] ^= o.0[1];
    }
}

impl Not for Pair {
    type Output = Pair;
    #[inline(always)]
    fn not(self) -> Pair {
        Pair([!self.0[0], !self.0[1]])
    }
}

impl Word for Pair {
    const ZERO: Self = Pair([0; 2]);
    #[inline(always)]
    fn andn(self, other: Self) -> Self {
        Pair([self.0[0] & !other.0[0], self.0[1] & !other.0[1]])
    }
    #[inline(always)]
    fn splat(mask: u64) -> Self {
        Pair([mask; 2])
    }
}
