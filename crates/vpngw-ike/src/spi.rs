//! Inbound SPIs: unique, random, never in the reserved range 0..=255 (RFC 4303 s.2.1).

use std::collections::HashSet;

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;
use vpngw_esp::Spi;

/// The SPIs in use by this engine's inbound SAs.
#[derive(Debug, Default)]
pub struct SpiPool {
    used: HashSet<Spi>,
}

impl SpiPool {
    /// A fresh random SPI, outside the reserved range and not in use, now taken.
    pub fn allocate(&mut self, rng: &mut FastRng) -> Spi {
        loop {
            let spi = Spi::new(rng.next_u32());
            if !spi.is_reserved() && self.used.insert(spi) {
                return spi;
            }
        }
    }

    /// Marks an SPI taken (an imported child SA's); false if it was already.
    pub fn reserve(&mut self, spi: Spi) -> bool {
        self.used.insert(spi)
    }

    pub fn release(&mut self, spi: Spi) {
        self.used.remove(&spi);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_unique_spis_outside_the_reserved_range() {
        let mut pool = SpiPool::default();
        let mut rng = FastRng::from_seed_for_tests(1);
        let spis: Vec<Spi> = (0..1000).map(|_| pool.allocate(&mut rng)).collect();
        assert!(spis.iter().all(|s| !s.is_reserved()));
        assert_eq!(spis.iter().collect::<HashSet<_>>().len(), spis.len());
        assert_eq!(pool.in_use(), 1000);
        assert!(!pool.reserve(spis[0]), "already taken");
        pool.release(spis[0]);
        assert!(pool.reserve(spis[0]));
    }
}
