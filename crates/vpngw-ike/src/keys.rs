//! The IKEv1 key schedule (RFC 2409 s.5, Appendix B) and the hashes that authenticate messages.
//!
//! Everything here is a pure function of its inputs, so it is tested against published vectors
//! (NIST ACVP for SKEYID*) and against the peer's behaviour (strongSwan's logged keys).

use std::net::SocketAddr;

use vpngw_crypto::mac::hash;
use vpngw_crypto::{EncryptionAlgorithm, HashAlgorithm, Prf, SecretBytes};
use vpngw_esp::Spi;

/// SKEYID and the three keys derived from it, plus the phase 1 encryption key.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Phase1Keys {
    pub hash: HashAlgorithm,
    pub skeyid: SecretBytes,
    pub skeyid_d: SecretBytes,
    pub skeyid_a: SecretBytes,
    pub skeyid_e: SecretBytes,
    /// The phase 1 cipher key: SKEYID_e, expanded or truncated to the cipher's key length.
    pub encryption_key: SecretBytes,
}

/// Inputs of the phase 1 derivation.
#[derive(Debug)]
pub struct Phase1Inputs<'a> {
    pub hash: HashAlgorithm,
    pub psk: &'a [u8],
    pub ni: &'a [u8],
    pub nr: &'a [u8],
    /// g^xy, left-padded to the modulus length.
    pub gxy: &'a [u8],
    pub cky_i: &'a [u8; 8],
    pub cky_r: &'a [u8; 8],
}

/// SKEYID = prf(PSK, Ni_b | Nr_b); SKEYID_d, _a, _e per RFC 2409 s.5.
pub fn skeyids(i: &Phase1Inputs<'_>) -> [SecretBytes; 4] {
    let skeyid = Prf::new(i.hash, i.psk).compute(&[i.ni, i.nr]);
    let prf = Prf::new(i.hash, skeyid.expose());
    let d = prf.compute(&[i.gxy, i.cky_i, i.cky_r, &[0]]);
    let a = prf.compute(&[d.expose(), i.gxy, i.cky_i, i.cky_r, &[1]]);
    let e = prf.compute(&[a.expose(), i.gxy, i.cky_i, i.cky_r, &[2]]);
    [skeyid, d, a, e]
}

/// RFC 2409 Appendix B: a key longer than SKEYID_e is K1 | K2 | ... with K1 = prf(SKEYID_e, 0)
/// and Ki = prf(SKEYID_e, Ki-1); otherwise the first bytes of SKEYID_e.
pub fn phase1_encryption_key(hash: HashAlgorithm, skeyid_e: &SecretBytes, key_len: usize) -> SecretBytes {
    if skeyid_e.len() >= key_len {
        let mut k = skeyid_e.clone();
        k.truncate(key_len);
        return k;
    }
    let prf = Prf::new(hash, skeyid_e.expose());
    let mut out = SecretBytes::new(Vec::with_capacity(key_len + hash.output_len()));
    let mut block = prf.compute(&[&[0]]);
    loop {
        out.extend_from_slice(block.expose());
        if out.len() >= key_len {
            break;
        }
        block = prf.compute(&[block.expose()]);
    }
    out.truncate(key_len);
    out
}

impl Phase1Keys {
    pub fn derive(i: &Phase1Inputs<'_>, cipher: EncryptionAlgorithm) -> Self {
        let [skeyid, skeyid_d, skeyid_a, skeyid_e] = skeyids(i);
        let encryption_key = phase1_encryption_key(i.hash, &skeyid_e, cipher.spec().key_len);
        Self { hash: i.hash, skeyid, skeyid_d, skeyid_a, skeyid_e, encryption_key }
    }

    /// HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).
    /// HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b): the caller swaps the
    /// argument pairs.
    pub fn auth_hash(
        &self,
        g_own: &[u8],
        g_peer: &[u8],
        cky_own: &[u8],
        cky_peer: &[u8],
        sai_b: &[u8],
        id_b: &[u8],
    ) -> Vec<u8> {
        Prf::new(self.hash, self.skeyid.expose())
            .compute(&[g_own, g_peer, cky_own, cky_peer, sai_b, id_b])
            .expose()
            .to_vec()
    }

    /// prf(SKEYID_a, parts...): the HASH payloads of phase 2 and informational exchanges.
    pub fn hash_a(&self, parts: &[&[u8]]) -> Vec<u8> {
        Prf::new(self.hash, self.skeyid_a.expose()).compute(parts).expose().to_vec()
    }

    /// Quick mode KEYMAT (RFC 2409 s.5.5) of `len` bytes for one SA, keyed by the SPI of its
    /// receiving side: prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), expanded as
    /// K1 | K2 | ... with Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b).
    pub fn keymat(
        &self,
        pfs_gxy: Option<&[u8]>,
        protocol: u8,
        spi: Spi,
        ni: &[u8],
        nr: &[u8],
        len: usize,
    ) -> SecretBytes {
        let prf = Prf::new(self.hash, self.skeyid_d.expose());
        let g = pfs_gxy.unwrap_or(&[]);
        let spi = spi.to_be_bytes();
        let mut out = SecretBytes::new(Vec::with_capacity(len + self.hash.output_len()));
        let mut block = prf.compute(&[g, &[protocol], &spi, ni, nr]);
        loop {
            out.extend_from_slice(block.expose());
            if out.len() >= len {
                break;
            }
            block = prf.compute(&[block.expose(), g, &[protocol], &spi, ni, nr]);
        }
        out.truncate(len);
        out
    }
}

/// The phase 1 IV: hash(g^xi | g^xr), truncated to the cipher block.
pub fn phase1_iv(hash_alg: HashAlgorithm, gxi: &[u8], gxr: &[u8], block_len: usize) -> Vec<u8> {
    let mut iv = hash(hash_alg, &[gxi, gxr]);
    iv.truncate(block_len);
    iv
}

/// The first IV of a phase 2 or informational exchange: hash(last phase 1 CBC block | M-ID).
pub fn phase2_iv(hash_alg: HashAlgorithm, phase1_last_block: &[u8], message_id: u32, block_len: usize) -> Vec<u8> {
    let mut iv = hash(hash_alg, &[phase1_last_block, &message_id.to_be_bytes()]);
    iv.truncate(block_len);
    iv
}

/// NAT-D (RFC 3947 s.3.2): hash(CKY-I | CKY-R | IP | port).
pub fn nat_d(hash_alg: HashAlgorithm, cky_i: &[u8; 8], cky_r: &[u8; 8], addr: SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    hash(hash_alg, &[cky_i, cky_r, &ip, &addr.port().to_be_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appendix_b_expansion() {
        // SHA-1 gives 20 bytes: a 24-byte 3DES key needs K1 | K2 with K1 = prf(SKEYID_e, 0).
        let e = SecretBytes::from_slice(&[0x11; 20]);
        let k = phase1_encryption_key(HashAlgorithm::Sha1, &e, 24);
        let prf = Prf::new(HashAlgorithm::Sha1, e.expose());
        let k1 = prf.compute(&[&[0]]);
        let k2 = prf.compute(&[k1.expose()]);
        assert_eq!(&k.expose()[..20], k1.expose());
        assert_eq!(&k.expose()[20..], &k2.expose()[..4]);
        // Long enough: truncated, not expanded (AES-128 from SHA-1).
        assert_eq!(phase1_encryption_key(HashAlgorithm::Sha1, &e, 16).expose(), &[0x11; 16]);
        // MD5 (16 bytes) for AES-256: two blocks.
        assert_eq!(phase1_encryption_key(HashAlgorithm::Md5, &e, 32).len(), 32);
    }

    #[test]
    fn keymat_expansion_and_direction() {
        let keys = Phase1Keys {
            hash: HashAlgorithm::Md5,
            skeyid: SecretBytes::from_slice(&[1; 16]),
            skeyid_d: SecretBytes::from_slice(&[2; 16]),
            skeyid_a: SecretBytes::from_slice(&[3; 16]),
            skeyid_e: SecretBytes::from_slice(&[4; 16]),
            encryption_key: SecretBytes::from_slice(&[5; 24]),
        };
        let long = keys.keymat(None, 3, Spi::new(0x1234), b"ni", b"nr", 44);
        let short = keys.keymat(None, 3, Spi::new(0x1234), b"ni", b"nr", 16);
        assert_eq!(&long.expose()[..16], short.expose());
        let prf = Prf::new(HashAlgorithm::Md5, &[2; 16]);
        let k1 = prf.compute(&[&[3], &0x1234u32.to_be_bytes(), b"ni", b"nr"]);
        let k2 = prf.compute(&[k1.expose(), &[3], &0x1234u32.to_be_bytes(), b"ni", b"nr"]);
        assert_eq!(&long.expose()[..16], k1.expose());
        assert_eq!(&long.expose()[16..32], k2.expose());
        assert_ne!(keys.keymat(None, 3, Spi::new(0x1235), b"ni", b"nr", 16), short, "another SPI, other keys");
        assert_ne!(keys.keymat(Some(b"g"), 3, Spi::new(0x1234), b"ni", b"nr", 16), short, "PFS changes the keys");
    }
}
