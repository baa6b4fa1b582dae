//! The crate's one error type. Messages name sizes and algorithms, never key bytes.

use crate::registry::{DhGroup, EncryptionAlgorithm};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("{algorithm}: key must be {expected} bytes, got {got}")]
    KeyLength { algorithm: &'static str, expected: usize, got: usize },
    #[error("{algorithm}: weak key refused (RFC 2405 s.5 / RFC 2451 s.2.3); negotiate new keying material")]
    WeakKey { algorithm: EncryptionAlgorithm },
    #[error("{algorithm}: IV must be {expected} bytes, got {got}")]
    IvLength { algorithm: EncryptionAlgorithm, expected: usize, got: usize },
    #[error("{algorithm}: data length {len} is not a multiple of the {block}-byte block")]
    NotBlockAligned { algorithm: EncryptionAlgorithm, len: usize, block: usize },
    #[error("{group}: public value must be {expected} bytes, got {got}")]
    DhPublicValueLength { group: DhGroup, expected: usize, got: usize },
    #[error("{group}: peer public value out of range (must satisfy 1 < y < p-1)")]
    DhPublicValueRange { group: DhGroup },
    #[error("{group}: peer public value is not in the prime-order subgroup (y^q != 1 mod p)")]
    DhPublicValueSubgroup { group: DhGroup },
    #[error("operating system random source failed: {0}")]
    Entropy(String),
}
