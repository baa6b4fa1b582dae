//! Inbound SPIs: unique, random, never in the reserved range 0..=255 (RFC 4303 s.2.1).

use std::collections::HashSet;

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

/// The SPIs in use by this engine's inbound SAs.
#[derive(Debug, Default)]
pub struct SpiPool {
    used: HashSet<u32>,
}

impl SpiPool {
    pub fn allocate(&mut self, rng: &mut FastRng) -> u32 {
        loop {
            let spi = rng.next_u32();
            if spi > 255 && self.used.insert(spi) {
                return spi;
            }
        }
    }

    /// Marks an SPI taken (an imported child SA's); false if it was already.
    pub fn reserve(&mut self, spi: u32) -> bool {
        self.used.insert(spi)
    }

    pub fn release(&mut self, spi: u32) {
        self.used.remove(&spi);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}
