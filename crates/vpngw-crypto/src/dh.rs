//! MODP Diffie-Hellman for IKE: groups 1, 2, 5, 14 and 24.
//!
//! All arithmetic with the private exponent is crypto-bigint's constant-time Montgomery
//! exponentiation (`BoxedMontyForm::pow`, whose running time depends on the exponent's declared
//! precision, 256 bits, never on its value). No variable-time bignum library touches a private
//! exponent. Peer values are validated before use (1 < y < p-1, and y^q = 1 mod p for group 24,
//! whose generator spans only a 256-bit subgroup), and the shared secret is left-padded to the
//! modulus length as IKE hashes it (RFC 2409 s.5, RFC 5114 s.4).

use core::fmt;
use std::sync::OnceLock;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use rand_core::CryptoRng;
use zeroize::Zeroize;

use crate::error::CryptoError;
use crate::groups;
use crate::registry::DhGroup;
use crate::secret::SecretBytes;

/// A group's parameters in the form the arithmetic wants, built once per process.
struct GroupParams {
    modulus_bits: u32,
    p_minus_1: BoxedUint,
    monty: BoxedMontyParams,
    generator: BoxedMontyForm,
    /// Prime order of the subgroup the generator spans, for groups where it is not (p-1)/2;
    /// held at the exponent precision (256 bits), so that y^q costs a 256-bit exponentiation.
    subgroup_order: Option<BoxedUint>,
}

fn parse_hex(group: DhGroup, lines: &[&str], bits: u32) -> BoxedUint {
    let hex: String = lines.concat();
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        let text = core::str::from_utf8(pair).unwrap_or("");
        // The constants are compiled in and covered by tests; a typo is a build defect.
        let byte = u8::from_str_radix(text, 16).unwrap_or_else(|_| panic!("{group}: bad hex constant"));
        bytes.push(byte);
    }
    BoxedUint::from_be_slice(&bytes, bits).unwrap_or_else(|_| panic!("{group}: constant wider than {bits} bits"))
}

fn params(group: DhGroup) -> &'static GroupParams {
    static CELLS: [OnceLock<GroupParams>; 5] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let index = DhGroup::ALL.iter().position(|g| *g == group).unwrap_or(0);
    CELLS[index].get_or_init(|| {
        let bits = group.spec().modulus_bits;
        let constants = groups::constants(group);
        let p = parse_hex(group, constants.p, bits);
        let p_minus_1 = p.wrapping_sub(BoxedUint::one_with_precision(bits));
        let odd = Option::<Odd<BoxedUint>>::from(Odd::new(p)).unwrap_or_else(|| panic!("{group}: p is even"));
        let monty = BoxedMontyParams::new(odd);
        let g = parse_hex(group, constants.g, bits);
        let generator = BoxedMontyForm::new(g, &monty);
        let subgroup_order = constants.q.map(|q| parse_hex(group, q, group.spec().exponent_bits));
        GroupParams { modulus_bits: bits, p_minus_1, monty, generator, subgroup_order }
    })
}

/// Our half of one exchange: the private exponent (wiped on drop) and the public value.
pub struct DhPrivateKey {
    group: DhGroup,
    exponent: BoxedUint,
    public: Vec<u8>,
}

impl fmt::Debug for DhPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhPrivateKey({}, <exponent redacted>)", self.group)
    }
}

impl Drop for DhPrivateKey {
    fn drop(&mut self) {
        self.exponent.zeroize();
    }
}

/// A private exponent whose public value is not computed yet: drawing it is cheap, and
/// [`DhExponent::into_key`] (one exponentiation) can run on another thread than the one that
/// owns the random generator (the IKE engine's Diffie-Hellman work, `vpngw-ike`'s `DhWork`).
pub struct DhExponent {
    group: DhGroup,
    exponent: BoxedUint,
}

impl fmt::Debug for DhExponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhExponent({}, <redacted>)", self.group)
    }
}

impl Drop for DhExponent {
    fn drop(&mut self) {
        self.exponent.zeroize();
    }
}

impl DhExponent {
    /// A fresh 256-bit private exponent from `rng` (for group 24: uniform in [2, q-1]).
    pub fn random(group: DhGroup, rng: &mut impl CryptoRng) -> Self {
        let gp = params(group);
        let mut bytes = [0u8; 32];
        loop {
            rng.fill_bytes(&mut bytes);
            let candidate = exponent_from_bytes(group, &bytes);
            bytes.zeroize();
            // Rejection sampling: a rejected candidate is thrown away, so the number of tries
            // tells nothing about the exponent that is finally kept.
            let Ok(x) = candidate else { continue };
            if let Some(q) = &gp.subgroup_order
                && x >= *q
            {
                continue;
            }
            return Self { group, exponent: x };
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Computes the public value g^x: the expensive step.
    pub fn into_key(mut self) -> DhPrivateKey {
        // Moved out, not copied: `self` is dropped holding zero.
        let exponent = std::mem::replace(&mut self.exponent, BoxedUint::zero());
        DhPrivateKey::with_exponent(self.group, exponent)
    }
}

impl DhPrivateKey {
    /// A fresh 256-bit private exponent from `rng` (for group 24: uniform in [2, q-1]), and
    /// its public value.
    pub fn generate(group: DhGroup, rng: &mut impl CryptoRng) -> Self {
        DhExponent::random(group, rng).into_key()
    }

    /// A key from a given big-endian exponent of at most 256 bits. For known-answer tests and
    /// nothing else: production keys come from [`DhPrivateKey::generate`].
    pub fn from_exponent(group: DhGroup, exponent: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self::with_exponent(group, exponent_from_bytes(group, exponent)?))
    }

    fn with_exponent(group: DhGroup, exponent: BoxedUint) -> Self {
        let public = params(group).generator.pow(&exponent).retrieve().to_be_bytes().into_vec();
        Self { group, exponent, public }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// g^x mod p, big-endian, exactly the modulus length (the KE payload).
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// Validates the peer's public value and computes g^xy mod p, left-padded to the modulus
    /// length.
    pub fn agree(&self, peer_public: &[u8]) -> Result<SecretBytes, CryptoError> {
        let y = validate_public_value(self.group, peer_public)?;
        let gp = params(self.group);
        let shared = BoxedMontyForm::new(y, &gp.monty).pow(&self.exponent).retrieve();
        let mut bytes = shared.to_be_bytes();
        let secret = SecretBytes::from_slice(&bytes);
        bytes.zeroize();
        Ok(secret)
    }
}

/// Parses a private exponent: at most 256 bits, and not 0 or 1 (which would make the public
/// value 1 or g).
fn exponent_from_bytes(group: DhGroup, exponent: &[u8]) -> Result<BoxedUint, CryptoError> {
    let bits = group.spec().exponent_bits;
    let refused = CryptoError::KeyLength { algorithm: group.name(), expected: bits as usize / 8, got: exponent.len() };
    if exponent.len() > bits as usize / 8 {
        return Err(refused);
    }
    let x = BoxedUint::from_be_slice(exponent, bits).map_err(|_| refused.clone())?;
    if x <= BoxedUint::one_with_precision(bits) {
        return Err(refused);
    }
    Ok(x)
}

/// Checks a peer's public value for `group` and returns it as a number.
pub fn validate_public_value(group: DhGroup, value: &[u8]) -> Result<BoxedUint, CryptoError> {
    let gp = params(group);
    let expected = group.modulus_len();
    if value.len() != expected {
        return Err(CryptoError::DhPublicValueLength { group, expected, got: value.len() });
    }
    let y = BoxedUint::from_be_slice(value, gp.modulus_bits).map_err(|_| CryptoError::DhPublicValueLength {
        group,
        expected,
        got: value.len(),
    })?;
    // Public values: variable-time comparisons are fine here.
    if y <= BoxedUint::one_with_precision(gp.modulus_bits) || y >= gp.p_minus_1 {
        return Err(CryptoError::DhPublicValueRange { group });
    }
    if let Some(q) = &gp.subgroup_order {
        let in_subgroup = BoxedMontyForm::new(y.clone(), &gp.monty).pow(q).retrieve();
        if in_subgroup != BoxedUint::one_with_precision(gp.modulus_bits) {
            return Err(CryptoError::DhPublicValueSubgroup { group });
        }
    }
    Ok(y)
}

/// The group's modulus p, big-endian (for tests and diagnostics).
pub fn modulus(group: DhGroup) -> Vec<u8> {
    params(group).monty.modulus().to_be_bytes().into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha12Rng {
        rand_chacha::ChaCha12Rng::seed_from_u64(7)
    }

    #[test]
    fn every_group_agrees_and_pads_to_the_modulus() {
        let mut r = rng();
        for group in DhGroup::ALL {
            let a = DhPrivateKey::generate(group, &mut r);
            let b = DhPrivateKey::generate(group, &mut r);
            assert_eq!(a.public_value().len(), group.modulus_len());
            let ab = a.agree(b.public_value()).unwrap();
            let ba = b.agree(a.public_value()).unwrap();
            assert_eq!(ab, ba, "{group}");
            assert_eq!(ab.len(), group.modulus_len());
            assert_ne!(a.public_value(), b.public_value());
        }
    }

    #[test]
    fn small_exponent_gives_left_padded_values() {
        // 2^2 = 4: the public value is mostly leading zeros and must keep them.
        let k = DhPrivateKey::from_exponent(DhGroup::Modp1024, &[2]).unwrap();
        let public = k.public_value();
        assert_eq!(public.len(), 128);
        assert!(public[..127].iter().all(|b| *b == 0));
        assert_eq!(public[127], 4);
    }

    #[test]
    fn bad_peer_values_are_refused() {
        for group in DhGroup::ALL {
            let k = DhPrivateKey::generate(group, &mut rng());
            let n = group.modulus_len();
            let mut one = vec![0u8; n];
            one[n - 1] = 1;
            let p = modulus(group);
            let mut p_minus_1 = p.clone();
            p_minus_1[n - 1] -= 1; // p is odd, so this does not borrow
            for bad in [vec![0u8; n], one, p_minus_1, p, vec![0xff; n]] {
                assert!(matches!(k.agree(&bad), Err(CryptoError::DhPublicValueRange { .. })), "{group}");
            }
            assert!(matches!(k.agree(&[2u8; 3]), Err(CryptoError::DhPublicValueLength { .. })));
        }
    }

    #[test]
    fn group24_refuses_values_outside_the_subgroup() {
        // 2 is in range but (with overwhelming likelihood, and checked here) not of order q.
        let group = DhGroup::Modp2048S256;
        let mut two = vec![0u8; 256];
        two[255] = 2;
        let k = DhPrivateKey::generate(group, &mut rng());
        assert!(matches!(k.agree(&two), Err(CryptoError::DhPublicValueSubgroup { .. })));
        // Our own public values are in the subgroup.
        let other = DhPrivateKey::generate(group, &mut rng());
        assert!(validate_public_value(group, other.public_value()).is_ok());
    }

    #[test]
    fn debug_hides_the_exponent() {
        let k = DhPrivateKey::from_exponent(DhGroup::Modp768, &[0x42; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "DhPrivateKey(dh1, <exponent redacted>)");
    }
}
