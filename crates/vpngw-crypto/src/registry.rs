//! The algorithm registry: every algorithm vpngw speaks, as data.
//!
//! One table row per algorithm carries its configuration word (the seed's vocabulary), its
//! numbers on the wire (IKEv1 phase 1 attribute, IPsec DOI transform/attribute, IKEv2 transform
//! ID) and its sizes. Parsers, proposal builders, diagnosis and metrics all read these tables,
//! so adding SHA-2, AES-GCM or IKEv2 means adding rows (and a transform), not editing call sites.
//!
//! Numbers: RFC 2409 Appendix A (phase 1 attributes), RFC 2407 s.4.4.4/4.5 (IPsec DOI), RFC 3602
//! (AES-CBC = 7 in phase 1, ESP_AES = 12), RFC 3526 / RFC 5114 (groups 5, 14, 24), IANA IKEv2.

use core::fmt;

/// Block ciphers in CBC mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum EncryptionAlgorithm {
    Des,
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

/// Everything the rest of vpngw needs to know about a cipher.
#[derive(Debug, PartialEq, Eq)]
pub struct CipherSpec {
    pub algorithm: EncryptionAlgorithm,
    /// Configuration word, as in the seed's tables (`3des`, `aes-128`).
    pub name: &'static str,
    /// Key length in bytes.
    pub key_len: usize,
    /// Cipher block length in bytes; ESP padding aligns to it.
    pub block_len: usize,
    /// Explicit IV carried in each ESP packet (RFC 2405, RFC 2451, RFC 3602).
    pub iv_len: usize,
    /// IKEv1 phase 1 "Encryption Algorithm" attribute value (RFC 2409 App. A, RFC 3602 s.5).
    pub ikev1_phase1_id: u16,
    /// IPsec DOI ESP transform ID (RFC 2407 s.4.4.4, RFC 3602 s.5).
    pub esp_transform_id: u8,
    /// "Key Length" attribute in bits, for variable-key-length ciphers only (AES).
    pub key_length_attribute: Option<u16>,
    /// IANA IKEv2 transform type 1 ID.
    pub ikev2_id: u16,
    /// Weak by today's standards: `vpngw check` warns, but the seed's defaults use it.
    pub weak: bool,
}

const CIPHERS: [CipherSpec; 5] = [
    CipherSpec {
        algorithm: EncryptionAlgorithm::Des,
        name: "des",
        key_len: 8,
        block_len: 8,
        iv_len: 8,
        ikev1_phase1_id: 1,
        esp_transform_id: 2,
        key_length_attribute: None,
        ikev2_id: 2,
        weak: true,
    },
    CipherSpec {
        algorithm: EncryptionAlgorithm::TripleDes,
        name: "3des",
        key_len: 24,
        block_len: 8,
        iv_len: 8,
        ikev1_phase1_id: 5,
        esp_transform_id: 3,
        key_length_attribute: None,
        ikev2_id: 3,
        weak: false,
    },
    CipherSpec {
        algorithm: EncryptionAlgorithm::Aes128,
        name: "aes-128",
        key_len: 16,
        block_len: 16,
        iv_len: 16,
        ikev1_phase1_id: 7,
        esp_transform_id: 12,
        key_length_attribute: Some(128),
        ikev2_id: 12,
        weak: false,
    },
    CipherSpec {
        algorithm: EncryptionAlgorithm::Aes192,
        name: "aes-192",
        key_len: 24,
        block_len: 16,
        iv_len: 16,
        ikev1_phase1_id: 7,
        esp_transform_id: 12,
        key_length_attribute: Some(192),
        ikev2_id: 12,
        weak: false,
    },
    CipherSpec {
        algorithm: EncryptionAlgorithm::Aes256,
        name: "aes-256",
        key_len: 32,
        block_len: 16,
        iv_len: 16,
        ikev1_phase1_id: 7,
        esp_transform_id: 12,
        key_length_attribute: Some(256),
        ikev2_id: 12,
        weak: false,
    },
];

impl EncryptionAlgorithm {
    pub const ALL: [Self; 5] = [Self::Des, Self::TripleDes, Self::Aes128, Self::Aes192, Self::Aes256];

    pub fn spec(self) -> &'static CipherSpec {
        &CIPHERS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// From a phase 1 proposal: "Encryption Algorithm" plus the optional "Key Length" (bits).
    /// AES without a key length means AES-128 (RFC 3602 s.5 leaves it to the DOI; every
    /// implementation in the field reads it this way).
    pub fn from_ikev1_phase1(id: u16, key_length_bits: Option<u16>) -> Option<Self> {
        Self::match_wire(|s| s.ikev1_phase1_id == id, key_length_bits)
    }

    /// From a quick-mode ESP transform: transform ID plus the optional "Key Length" (bits).
    pub fn from_esp_transform(id: u8, key_length_bits: Option<u16>) -> Option<Self> {
        Self::match_wire(|s| s.esp_transform_id == id, key_length_bits)
    }

    fn match_wire(id_matches: impl Fn(&CipherSpec) -> bool, key_length_bits: Option<u16>) -> Option<Self> {
        CIPHERS.iter().find_map(|s| {
            let key_ok = match (s.key_length_attribute, key_length_bits) {
                (None, None) => true,
                (None, Some(_)) => false, // a key length for a fixed-size cipher is malformed
                (Some(bits), Some(k)) => bits == k,
                (Some(bits), None) => bits == 128,
            };
            (id_matches(s) && key_ok).then_some(s.algorithm)
        })
    }
}

impl fmt::Display for EncryptionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ESP/AH integrity algorithms (truncated HMAC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum IntegrityAlgorithm {
    HmacMd5_96,
    HmacSha1_96,
}

#[derive(Debug, PartialEq, Eq)]
pub struct IntegritySpec {
    pub algorithm: IntegrityAlgorithm,
    /// Configuration word (`md5`, `sha1`): the seed calls phase 2 integrity "authentication".
    pub name: &'static str,
    /// HMAC key length in bytes (RFC 2403: 128 bits, RFC 2404: 160 bits).
    pub key_len: usize,
    /// Truncated ICV length in bytes.
    pub icv_len: usize,
    /// The underlying hash, also the IKEv1 PRF of the same name.
    pub hash: HashAlgorithm,
    /// IPsec DOI "Authentication Algorithm" attribute (RFC 2407 s.4.5).
    pub ikev1_auth_attribute: u16,
    /// IANA IKEv2 transform type 3 ID.
    pub ikev2_id: u16,
    pub weak: bool,
}

const INTEGRITY: [IntegritySpec; 2] = [
    IntegritySpec {
        algorithm: IntegrityAlgorithm::HmacMd5_96,
        name: "md5",
        key_len: 16,
        icv_len: 12,
        hash: HashAlgorithm::Md5,
        ikev1_auth_attribute: 1,
        ikev2_id: 1,
        weak: true,
    },
    IntegritySpec {
        algorithm: IntegrityAlgorithm::HmacSha1_96,
        name: "sha1",
        key_len: 20,
        icv_len: 12,
        hash: HashAlgorithm::Sha1,
        ikev1_auth_attribute: 2,
        ikev2_id: 2,
        weak: false,
    },
];

impl IntegrityAlgorithm {
    pub const ALL: [Self; 2] = [Self::HmacMd5_96, Self::HmacSha1_96];

    pub fn spec(self) -> &'static IntegritySpec {
        &INTEGRITY[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    pub fn from_ikev1_auth_attribute(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.spec().ikev1_auth_attribute == value)
    }
}

impl fmt::Display for IntegrityAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hmac-{}-96", self.name())
    }
}

/// Hash functions: the IKEv1 phase 1 "Hash Algorithm", which also selects the HMAC PRF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum HashAlgorithm {
    Md5,
    Sha1,
    /// Not in the seed's tables; here for the IKEv1 KDF vectors NIST publishes (SHA-256 only)
    /// and for the SHA-2 suites to come.
    Sha256,
}

#[derive(Debug, PartialEq, Eq)]
pub struct HashSpec {
    pub algorithm: HashAlgorithm,
    /// Configuration word (`md5`, `sha1`): the seed's phase 1 "authentication algorithm".
    pub name: &'static str,
    pub output_len: usize,
    /// IKEv1 phase 1 "Hash Algorithm" attribute (RFC 2409 App. A).
    pub ikev1_phase1_id: u16,
    /// IANA IKEv2 transform type 2 (PRF) ID of the HMAC built on it.
    pub ikev2_prf_id: u16,
    pub weak: bool,
}

const HASHES: [HashSpec; 3] = [
    HashSpec {
        algorithm: HashAlgorithm::Md5,
        name: "md5",
        output_len: 16,
        ikev1_phase1_id: 1,
        ikev2_prf_id: 1,
        weak: true,
    },
    HashSpec {
        algorithm: HashAlgorithm::Sha1,
        name: "sha1",
        output_len: 20,
        ikev1_phase1_id: 2,
        ikev2_prf_id: 2,
        weak: false,
    },
    HashSpec {
        algorithm: HashAlgorithm::Sha256,
        name: "sha256",
        output_len: 32,
        ikev1_phase1_id: 4,
        ikev2_prf_id: 5,
        weak: false,
    },
];

impl HashAlgorithm {
    pub const ALL: [Self; 3] = [Self::Md5, Self::Sha1, Self::Sha256];

    pub fn spec(self) -> &'static HashSpec {
        &HASHES[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn output_len(self) -> usize {
        self.spec().output_len
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }

    pub fn from_ikev1_phase1(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.spec().ikev1_phase1_id == value)
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Diffie-Hellman MODP groups. The discriminant is the IKE group number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u16)]
pub enum DhGroup {
    /// RFC 2409 s.6.1, 768-bit.
    Modp768 = 1,
    /// RFC 2409 s.6.2, 1024-bit.
    Modp1024 = 2,
    /// RFC 3526 s.2, 1536-bit.
    Modp1536 = 5,
    /// RFC 3526 s.3, 2048-bit.
    Modp2048 = 14,
    /// RFC 5114 s.2.3, 2048-bit with a 256-bit prime-order subgroup.
    Modp2048S256 = 24,
}

#[derive(Debug, PartialEq, Eq)]
pub struct DhGroupSpec {
    pub group: DhGroup,
    /// Configuration word (`dh1` ... `dh24`), as in the seed.
    pub name: &'static str,
    /// Modulus length in bits; KE payloads and shared secrets are exactly this long in bytes/8.
    pub modulus_bits: u32,
    /// Size of the private exponent in bits (RFC 3526 s.8: 256 bits is enough for all of them;
    /// group 24's subgroup order q has 256 bits).
    pub exponent_bits: u32,
    pub weak: bool,
}

const DH_GROUPS: [DhGroupSpec; 5] = [
    DhGroupSpec { group: DhGroup::Modp768, name: "dh1", modulus_bits: 768, exponent_bits: 256, weak: true },
    DhGroupSpec { group: DhGroup::Modp1024, name: "dh2", modulus_bits: 1024, exponent_bits: 256, weak: true },
    DhGroupSpec { group: DhGroup::Modp1536, name: "dh5", modulus_bits: 1536, exponent_bits: 256, weak: false },
    DhGroupSpec { group: DhGroup::Modp2048, name: "dh14", modulus_bits: 2048, exponent_bits: 256, weak: false },
    DhGroupSpec { group: DhGroup::Modp2048S256, name: "dh24", modulus_bits: 2048, exponent_bits: 256, weak: false },
];

impl DhGroup {
    pub const ALL: [Self; 5] = [Self::Modp768, Self::Modp1024, Self::Modp1536, Self::Modp2048, Self::Modp2048S256];

    pub fn spec(self) -> &'static DhGroupSpec {
        let index = Self::ALL.iter().position(|g| *g == self).unwrap_or(0);
        &DH_GROUPS[index]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The group number used on the wire by IKEv1 ("Group Description") and IKEv2.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// Length of public values and of the shared secret in bytes.
    pub fn modulus_len(self) -> usize {
        self.spec().modulus_bits as usize / 8
    }

    pub fn from_number(number: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.number() == number)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_sit_at_their_enum_index() {
        for a in EncryptionAlgorithm::ALL {
            assert_eq!(a.spec().algorithm, a);
            assert_eq!(EncryptionAlgorithm::from_name(a.name()), Some(a));
        }
        for a in IntegrityAlgorithm::ALL {
            assert_eq!(a.spec().algorithm, a);
            assert_eq!(IntegrityAlgorithm::from_name(a.name()), Some(a));
        }
        for a in HashAlgorithm::ALL {
            assert_eq!(a.spec().algorithm, a);
            assert_eq!(HashAlgorithm::from_name(a.name()), Some(a));
        }
        for g in DhGroup::ALL {
            assert_eq!(g.spec().group, g);
            assert_eq!(DhGroup::from_number(g.number()), Some(g));
            assert_eq!(DhGroup::from_name(g.name()), Some(g));
        }
    }

    #[test]
    fn wire_numbers_match_the_rfcs() {
        use EncryptionAlgorithm::*;
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(1, None), Some(Des));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(5, None), Some(TripleDes));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(7, Some(128)), Some(Aes128));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(7, Some(192)), Some(Aes192));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(7, Some(256)), Some(Aes256));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(7, None), Some(Aes128));
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(7, Some(512)), None);
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(5, Some(192)), None);
        assert_eq!(EncryptionAlgorithm::from_ikev1_phase1(2, None), None); // IDEA: not offered
        assert_eq!(EncryptionAlgorithm::from_esp_transform(2, None), Some(Des));
        assert_eq!(EncryptionAlgorithm::from_esp_transform(3, None), Some(TripleDes));
        assert_eq!(EncryptionAlgorithm::from_esp_transform(12, Some(256)), Some(Aes256));
        assert_eq!(IntegrityAlgorithm::from_ikev1_auth_attribute(1), Some(IntegrityAlgorithm::HmacMd5_96));
        assert_eq!(IntegrityAlgorithm::from_ikev1_auth_attribute(2), Some(IntegrityAlgorithm::HmacSha1_96));
        assert_eq!(HashAlgorithm::from_ikev1_phase1(1), Some(HashAlgorithm::Md5));
        assert_eq!(HashAlgorithm::from_ikev1_phase1(2), Some(HashAlgorithm::Sha1));
        assert_eq!(DhGroup::from_number(24), Some(DhGroup::Modp2048S256));
        assert_eq!(DhGroup::from_number(15), None);
    }

    #[test]
    fn seed_words_and_weak_flags() {
        let weak: Vec<&str> = EncryptionAlgorithm::ALL
            .iter()
            .filter(|a| a.spec().weak)
            .map(|a| a.name())
            .chain(IntegrityAlgorithm::ALL.iter().filter(|a| a.spec().weak).map(|a| a.name()))
            .chain(DhGroup::ALL.iter().filter(|g| g.spec().weak).map(|g| g.name()))
            .collect();
        assert_eq!(weak, ["des", "md5", "dh1", "dh2"]);
        assert_eq!(DhGroup::Modp2048S256.modulus_len(), 256);
        assert_eq!(DhGroup::Modp768.modulus_len(), 96);
    }
}
