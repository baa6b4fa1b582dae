//! The per-worker CSPRNG for IVs and nonces.
//!
//! ChaCha12 (rand_chacha), seeded once from the operating system. A worker owns one, so a
//! packet's IV costs a few nanoseconds of keystream and no syscall and no lock. ChaCha output
//! is unpredictable without the seed, which is what RFC 3602 s.2.1 asks of CBC IVs.

use core::fmt;

use rand_chacha::ChaCha12Rng;
use rand_core::{CryptoRng, Infallible, Rng, SeedableRng, TryCryptoRng, TryRng};

use crate::error::CryptoError;

/// A fast CSPRNG for one thread.
pub struct FastRng(ChaCha12Rng);

impl fmt::Debug for FastRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FastRng(<state redacted>)")
    }
}

impl FastRng {
    /// Seeds from the operating system (getrandom(2)). The only syscall this type makes.
    pub fn from_os() -> Result<Self, CryptoError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| CryptoError::Entropy(e.to_string()))?;
        let rng = ChaCha12Rng::from_seed(seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Self(rng))
    }

    /// A reproducible generator for tests and benchmarks (feature `testing`). Never for keys
    /// or IVs in service.
    #[cfg(any(test, feature = "testing"))]
    pub fn from_seed_for_tests(seed: u64) -> Self {
        Self(ChaCha12Rng::seed_from_u64(seed))
    }
}

impl TryRng for FastRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl TryCryptoRng for FastRng {}

/// Compile-time check that `FastRng` is accepted where a cryptographic RNG is required.
const _: fn() = || {
    fn assert_crypto_rng<R: CryptoRng>() {}
    assert_crypto_rng::<FastRng>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_seeded_generators_differ() {
        let mut a = FastRng::from_os().unwrap();
        let mut b = FastRng::from_os().unwrap();
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        a.fill_bytes(&mut x);
        b.fill_bytes(&mut y);
        assert_ne!(x, y);
        assert_ne!(x, [0u8; 32]);
    }
}
