//! HMAC, keyed once: ESP integrity (HMAC-MD5-96, HMAC-SHA1-96) and the IKEv1 PRFs.
//!
//! The keyed state is `hmac`'s block-level core: the hash states after absorbing `key ^ ipad`
//! and `key ^ opad` (48 bytes for MD5, 56 for SHA-1, 80 for SHA-256), so a per-packet MAC
//! copies that state instead of hashing two key blocks again. The core is kept without the
//! empty 64-byte input buffer a full `Hmac<D>` carries (every SA holds two of these); each MAC
//! gets a fresh buffer.

use core::fmt;

use hmac::block_api::HmacCore;
use hmac::digest::block_api::CoreProxy;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha1::{Digest, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::CryptoError;
use crate::registry::{HashAlgorithm, IntegrityAlgorithm};
use crate::secret::SecretBytes;
use crate::sha1_pair::{self, HmacSha1Pair};

/// The longest HMAC output we produce (SHA-256).
pub const MAX_MAC_LEN: usize = 32;

/// The hash cores wipe themselves on drop (RustCrypto `zeroize` feature).
#[derive(Clone)]
enum KeyedHmac {
    Md5(HmacCore<Md5>),
    Sha1(HmacCore<Sha1>),
    Sha256(HmacCore<Sha256>),
}

/// HMAC accepts keys of any length (RFC 2104 s.3): `new_from_slice` cannot fail for it.
fn keyed<D: hmac::EagerHash>(key: &[u8]) -> HmacCore<D> {
    <HmacCore<D> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

impl KeyedHmac {
    fn new(hash: HashAlgorithm, key: &[u8]) -> Self {
        match hash {
            HashAlgorithm::Md5 => Self::Md5(keyed(key)),
            HashAlgorithm::Sha1 => Self::Sha1(keyed(key)),
            HashAlgorithm::Sha256 => Self::Sha256(keyed(key)),
        }
    }

    /// Full-length MAC of the concatenation of `parts`, written to the front of `out`;
    /// returns the MAC length.
    fn mac_parts(&self, parts: &[&[u8]], out: &mut [u8; MAX_MAC_LEN]) -> usize {
        fn run<D: hmac::EagerHash>(core: &HmacCore<D>, parts: &[&[u8]], out: &mut [u8; MAX_MAC_LEN]) -> usize
        where
            Hmac<D>: Mac + CoreProxy<Core = HmacCore<D>>,
        {
            let mut m = Hmac::<D>::compose(core.clone(), Default::default());
            for p in parts {
                m.update(p);
            }
            let tag = m.finalize().into_bytes();
            out[..tag.len()].copy_from_slice(&tag);
            tag.len()
        }
        match self {
            Self::Md5(m) => run(m, parts, out),
            Self::Sha1(m) => run(m, parts, out),
            Self::Sha256(m) => run(m, parts, out),
        }
    }
}

/// ESP integrity key: HMAC with the output truncated to the ICV length (RFC 2403, RFC 2404).
#[derive(Clone)]
pub struct IntegrityKey {
    algorithm: IntegrityAlgorithm,
    hmac: IcvHmac,
}

/// HMAC-SHA1 through [`crate::sha1_pair`] (two packets at a time in batches, and a smaller
/// keyed state than `hmac`'s), the others through `hmac`.
#[derive(Clone)]
enum IcvHmac {
    Sha1(HmacSha1Pair),
    Other(KeyedHmac),
}

impl IcvHmac {
    fn mac(&self, data: &[u8], out: &mut [u8; MAX_MAC_LEN]) {
        match self {
            Self::Sha1(h) => out[..sha1_pair::OUTPUT].copy_from_slice(&h.mac(data)),
            Self::Other(h) => {
                h.mac_parts(&[data], out);
            }
        }
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntegrityKey({}, <key redacted>)", self.algorithm)
    }
}

impl IntegrityKey {
    /// `key` must have the algorithm's key length (16 bytes for MD5, 20 for SHA-1).
    pub fn new(algorithm: IntegrityAlgorithm, key: &[u8]) -> Result<Self, CryptoError> {
        let spec = algorithm.spec();
        if key.len() != spec.key_len {
            return Err(CryptoError::KeyLength { algorithm: spec.name, expected: spec.key_len, got: key.len() });
        }
        let hmac = match spec.hash {
            HashAlgorithm::Sha1 => IcvHmac::Sha1(HmacSha1Pair::new(key)),
            other => IcvHmac::Other(KeyedHmac::new(other, key)),
        };
        Ok(Self { algorithm, hmac })
    }

    pub fn algorithm(&self) -> IntegrityAlgorithm {
        self.algorithm
    }

    pub fn icv_len(&self) -> usize {
        self.algorithm.spec().icv_len
    }

    /// Writes the truncated ICV of `data` into `icv` (which must be `icv_len()` bytes).
    pub fn sign(&self, data: &[u8], icv: &mut [u8]) {
        let mut full = [0u8; MAX_MAC_LEN];
        self.hmac.mac(data, &mut full);
        let n = icv.len().min(self.icv_len());
        icv[..n].copy_from_slice(&full[..n]);
    }

    /// The truncated ICVs of many messages (the ESP packets of one batch), each handed to
    /// `emit` with its index: HMAC-SHA1 two messages at a time, the others one by one.
    pub fn sign_many(&self, messages: &[&[u8]], mut emit: impl FnMut(usize, &[u8])) {
        let n = self.icv_len();
        match &self.hmac {
            IcvHmac::Sha1(h) => h.mac_many(messages, |i, full| emit(i, &full[..n])),
            IcvHmac::Other(_) => {
                let mut full = [0u8; MAX_MAC_LEN];
                for (i, m) in messages.iter().enumerate() {
                    self.hmac.mac(m, &mut full);
                    emit(i, &full[..n]);
                }
            }
        }
    }

    /// Checks `icv` against the ICV of `data` in constant time (`subtle`): the time taken does
    /// not depend on how many leading bytes match. A wrong-length `icv` is a mismatch.
    pub fn verify(&self, data: &[u8], icv: &[u8]) -> bool {
        let mut full = [0u8; MAX_MAC_LEN];
        self.hmac.mac(data, &mut full);
        let expected = &full[..self.icv_len()];
        icv.len() == expected.len() && bool::from(expected.ct_eq(icv))
    }

    /// [`IntegrityKey::verify`] for many messages: `icvs[i]` against the ICV of `messages[i]`,
    /// each result handed to `emit` (constant-time compare, as there).
    pub fn verify_many(&self, messages: &[&[u8]], icvs: &[&[u8]], mut emit: impl FnMut(usize, bool)) {
        self.sign_many(messages, |i, expected| {
            let icv = icvs.get(i).copied().unwrap_or_default();
            emit(i, icv.len() == expected.len() && bool::from(expected.ct_eq(icv)));
        });
    }
}

/// A keyed IKE pseudo-random function (HMAC-MD5 or HMAC-SHA1, full output).
#[derive(Clone)]
pub struct Prf {
    hash: HashAlgorithm,
    hmac: KeyedHmac,
}

impl fmt::Debug for Prf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prf(hmac-{}, <key redacted>)", self.hash)
    }
}

impl Prf {
    pub fn new(hash: HashAlgorithm, key: &[u8]) -> Self {
        Self { hash, hmac: KeyedHmac::new(hash, key) }
    }

    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }

    pub fn output_len(&self) -> usize {
        self.hash.output_len()
    }

    /// `prf(key, parts[0] | parts[1] | ...)`, as secret bytes.
    pub fn compute(&self, parts: &[&[u8]]) -> SecretBytes {
        let mut out = [0u8; MAX_MAC_LEN];
        let n = self.hmac.mac_parts(parts, &mut out);
        let secret = SecretBytes::from_slice(&out[..n]);
        zeroize::Zeroize::zeroize(&mut out);
        secret
    }
}

/// The plain hash of the concatenation of `parts` (IKEv1 phase 1 IV, NAT-D, vendor IDs).
pub fn hash(hash: HashAlgorithm, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match hash {
        HashAlgorithm::Md5 => run::<Md5>(parts),
        HashAlgorithm::Sha1 => run::<Sha1>(parts),
        HashAlgorithm::Sha256 => run::<Sha256>(parts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_rejects_every_single_bit_flip_and_wrong_lengths() {
        let key = IntegrityKey::new(IntegrityAlgorithm::HmacSha1_96, &[0x0b; 20]).unwrap();
        let data = b"what do ya want for nothing?";
        let mut icv = [0u8; 12];
        key.sign(data, &mut icv);
        assert!(key.verify(data, &icv));
        for byte in 0..12 {
            for bit in 0..8 {
                let mut bad = icv;
                bad[byte] ^= 1 << bit;
                assert!(!key.verify(data, &bad));
            }
        }
        assert!(!key.verify(data, &icv[..11]));
        assert!(!key.verify(data, &[]));
    }

    #[test]
    fn prf_parts_equal_concatenation() {
        let prf = Prf::new(HashAlgorithm::Sha1, b"key");
        assert_eq!(prf.compute(&[b"ab", b"", b"cd"]), prf.compute(&[b"abcd"]));
        assert_eq!(prf.output_len(), 20);
        assert_eq!(hash(HashAlgorithm::Md5, &[b"a", b"bc"]), hash(HashAlgorithm::Md5, &[b"abc"]));
    }

    #[test]
    fn integrity_key_length_is_checked() {
        assert!(matches!(
            IntegrityKey::new(IntegrityAlgorithm::HmacMd5_96, &[0; 20]),
            Err(CryptoError::KeyLength { expected: 16, got: 20, .. })
        ));
    }
}
