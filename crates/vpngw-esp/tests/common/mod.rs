//! Helpers shared by the ESP engine's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use vpngw_crypto::rand_core::{Infallible, TryCryptoRng, TryRng};
use vpngw_crypto::{EncryptionAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_esp::SaKeys;

/// Every cipher x integrity pair the gateway negotiates.
pub fn all_suites() -> Vec<(EncryptionAlgorithm, IntegrityAlgorithm)> {
    EncryptionAlgorithm::ALL
        .into_iter()
        .flat_map(|e| IntegrityAlgorithm::ALL.into_iter().map(move |i| (e, i)))
        .collect()
}

/// Deterministic, non-weak keys for a suite.
pub fn keys(encryption: EncryptionAlgorithm, integrity: IntegrityAlgorithm, seed: u8) -> SaKeys {
    let ek: Vec<u8> =
        (0..encryption.spec().key_len).map(|i| seed.wrapping_add((i as u8).wrapping_mul(29)) ^ 0x5a).collect();
    let ik: Vec<u8> = (0..integrity.spec().key_len).map(|i| seed.wrapping_mul(3).wrapping_add(i as u8)).collect();
    SaKeys { encryption, encryption_key: SecretBytes::new(ek), integrity, integrity_key: SecretBytes::new(ik) }
}

/// A test double for the IV source: returns the given bytes, cycling.
pub struct FixedBytes(pub Vec<u8>, pub usize);

impl TryRng for FixedBytes {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for d in dst {
            *d = self.0[self.1 % self.0.len()];
            self.1 += 1;
        }
        Ok(())
    }
}
impl TryCryptoRng for FixedBytes {}

/// An IPv4-looking inner packet of `len` bytes (version nibble 4 when long enough).
pub fn inner_packet(len: usize, salt: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ salt).collect();
    if let Some(first) = p.first_mut() {
        *first = 0x45;
    }
    p
}
