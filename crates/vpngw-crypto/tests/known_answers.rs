//! Known-answer tests from published vectors (tests/vectors/*.txt, each case with its source):
//! RFC 3602 s.4 (AES-CBC, all 8 cases), RFC 2202 (HMAC-MD5/SHA1, incl. the -96 truncations of
//! RFC 2403/2404), FIPS 81 and NIST SP 800-20/800-67 (DES, 3DES), RFC 5114 A.3 (DH group 24),
//! and the RFC 2409/3526 MODP primes rebuilt from their pi formula.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;

use num_bigint::BigUint;
use vpngw_crypto::dh::{self, DhPrivateKey};
use vpngw_crypto::mac::hash;
use vpngw_crypto::{
    CbcCipher, CryptoError, DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm, IntegrityKey, Prf,
};

struct Case {
    name: String,
    fields: HashMap<String, Vec<u8>>,
}

impl Case {
    fn get(&self, field: &str) -> &[u8] {
        self.fields.get(field).unwrap_or_else(|| panic!("{}: no field {field}", self.name))
    }
}

fn load(file: &str) -> Vec<Case> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut cases = Vec::new();
    let mut current: Option<Case> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# case: ") {
            cases.extend(current.take());
            current = Some(Case { name: name.trim().to_string(), fields: HashMap::new() });
        } else if let (Some(case), Some((k, v))) = (current.as_mut(), line.split_once(" = ")) {
            if !line.starts_with('#') {
                let bytes = hex::decode(v.trim()).unwrap_or_else(|e| panic!("{}: {k}: {e}", case.name));
                case.fields.insert(k.trim().to_string(), bytes);
            }
        }
    }
    cases.extend(current);
    assert!(!cases.is_empty(), "{path}: no cases");
    cases
}

fn aes_for(key: &[u8]) -> EncryptionAlgorithm {
    match key.len() {
        16 => EncryptionAlgorithm::Aes128,
        24 => EncryptionAlgorithm::Aes192,
        32 => EncryptionAlgorithm::Aes256,
        n => panic!("AES key of {n} bytes"),
    }
}

fn check_cbc(name: &str, cipher: &CbcCipher, iv: &[u8], plain: &[u8], expected: &[u8]) {
    let mut buf = plain.to_vec();
    cipher.encrypt(iv, &mut buf).unwrap();
    assert_eq!(hex::encode(&buf), hex::encode(expected), "{name}: encrypt");
    // Multi-buffer over three copies at different offsets in the job list gives the same.
    let (mut a, mut b, mut c) = (plain.to_vec(), vec![0u8; 0], plain.to_vec());
    let mut jobs = [
        vpngw_crypto::CbcJob { iv, data: &mut a },
        vpngw_crypto::CbcJob { iv, data: &mut b },
        vpngw_crypto::CbcJob { iv, data: &mut c },
    ];
    cipher.encrypt_multi(&mut jobs).unwrap();
    assert_eq!(a, expected, "{name}: multi-buffer lane 0");
    assert_eq!(c, expected, "{name}: multi-buffer lane 2");
    // Enough packets that DES takes its bitsliced multi-buffer path (one lane per packet; at
    // least MIN_LANES = 20) and refills lanes (more than 64).
    let mut copies = vec![plain.to_vec(); 70];
    let mut jobs: Vec<vpngw_crypto::CbcJob<'_>> =
        copies.iter_mut().map(|data| vpngw_crypto::CbcJob { iv, data }).collect();
    cipher.encrypt_multi(&mut jobs).unwrap();
    for (k, copy) in copies.iter().enumerate() {
        assert_eq!(copy, expected, "{name}: multi-buffer of 70, packet {k}");
    }
    cipher.decrypt(iv, &mut buf).unwrap();
    assert_eq!(buf, plain, "{name}: decrypt");
    // A long message that starts with the vector: its first blocks must encrypt to the vector's
    // ciphertext, and decryption (bitsliced for DES: many independent blocks) must invert it.
    let long: Vec<u8> = plain.iter().copied().cycle().take(plain.len() * 40).collect();
    let mut sealed = long.clone();
    cipher.encrypt(iv, &mut sealed).unwrap();
    assert_eq!(&sealed[..expected.len()], expected, "{name}: long message prefix");
    cipher.decrypt(iv, &mut sealed).unwrap();
    assert!(sealed == long, "{name}: long message decrypt");
}

#[test]
fn rfc3602_aes_cbc_all_cases() {
    let cases = load("aes_cbc.txt");
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let key = case.get("key");
        let cipher = CbcCipher::new(aes_for(key), key).unwrap();
        check_cbc(&case.name, &cipher, case.get("iv"), case.get("plaintext"), case.get("ciphertext"));
    }
}

#[test]
fn des_and_3des_vectors() {
    let cases = load("des.txt");
    let mut checked = 0;
    let mut weak = 0;
    for case in &cases {
        let key: Vec<u8> = match case.fields.get("key") {
            Some(k) => k.clone(),
            None => [case.get("key1"), case.get("key2"), case.get("key3")].concat(),
        };
        let algorithm = if key.len() == 8 { EncryptionAlgorithm::Des } else { EncryptionAlgorithm::TripleDes };
        let cipher = match CbcCipher::new(algorithm, &key) {
            Ok(c) => c,
            Err(CryptoError::WeakKey { .. }) => {
                // SP 800-20 table A.1 runs on the weak key 0101...: we must refuse it.
                assert_eq!(key, [1u8; 8], "{}: refused a key that is not weak", case.name);
                weak += 1;
                continue;
            }
            Err(e) => panic!("{}: {e}", case.name),
        };
        let plain = case.get("plaintext");
        let expected = case.get("ciphertext");
        if let Some(iv) = case.fields.get("iv") {
            check_cbc(&case.name, &cipher, iv, plain, expected);
        } else {
            // ECB, block by block = CBC of one block with a zero IV.
            for (i, (p, c)) in plain.chunks(8).zip(expected.chunks(8)).enumerate() {
                check_cbc(&format!("{} block {i}", case.name), &cipher, &[0u8; 8], p, c);
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} DES/3DES cases ran");
    assert_eq!(weak, 8, "SP 800-20 table A.1 rows use the weak key");
}

#[test]
fn rfc2202_hmac_and_96_bit_truncation() {
    let cases = load("hmac.txt");
    assert_eq!(cases.len(), 14);
    let mut truncated = 0;
    for case in &cases {
        let hash_alg = if case.name.contains("md5") { HashAlgorithm::Md5 } else { HashAlgorithm::Sha1 };
        let prf = Prf::new(hash_alg, case.get("key"));
        assert_eq!(prf.compute(&[case.get("data")]).expose(), case.get("digest"), "{}", case.name);
        // RFC 2403/2404 ICVs are the first 96 bits; where the RFC prints them, compare.
        if let Some(d96) = case.fields.get("digest96") {
            let alg = if hash_alg == HashAlgorithm::Md5 {
                IntegrityAlgorithm::HmacMd5_96
            } else {
                IntegrityAlgorithm::HmacSha1_96
            };
            let key = IntegrityKey::new(alg, case.get("key")).unwrap();
            let mut icv = [0u8; 12];
            key.sign(case.get("data"), &mut icv);
            assert_eq!(&icv[..], &d96[..], "{}", case.name);
            assert!(key.verify(case.get("data"), d96));
            truncated += 1;
        }
    }
    assert_eq!(truncated, 2);
}

#[test]
fn plain_hashes() {
    // RFC 1321 and FIPS 180 examples.
    assert_eq!(hex::encode(hash(HashAlgorithm::Md5, &[b"abc"])), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(hex::encode(hash(HashAlgorithm::Sha1, &[b"ab", b"c"])), "a9993e364706816aba3e25717850c26c9cd0d89d");
}

#[test]
fn rfc5114_group24_known_answer() {
    let cases = load("dh.txt");
    let case = cases.iter().find(|c| c.name == "rfc5114_a3").unwrap();
    let group = DhGroup::Modp2048S256;
    assert_eq!(dh::modulus(group), case.get("p"));
    let a = DhPrivateKey::from_exponent(group, case.get("xA")).unwrap();
    let b = DhPrivateKey::from_exponent(group, case.get("xB")).unwrap();
    assert_eq!(a.public_value(), case.get("yA"));
    assert_eq!(b.public_value(), case.get("yB"));
    assert_eq!(a.agree(case.get("yB")).unwrap().expose(), case.get("Z"));
    assert_eq!(b.agree(case.get("yA")).unwrap().expose(), case.get("Z"));
}

#[test]
fn modp_groups_match_the_published_primes() {
    let cases = load("dh.txt");
    for (name, group) in [
        ("modp_group1", DhGroup::Modp768),
        ("modp_group2", DhGroup::Modp1024),
        ("modp_group5", DhGroup::Modp1536),
        ("modp_group14", DhGroup::Modp2048),
    ] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        assert_eq!(dh::modulus(group), case.get("p"), "{name}");
        assert_eq!(case.get("g"), [2]);
    }
}

/// floor(pi * 2^bits), from Machin's formula in integers, with guard bits.
fn pi_scaled(bits: u32) -> BigUint {
    let guard = 64;
    let one = BigUint::from(1u8) << (bits + guard);
    let arctan_inv = |x: u32| {
        let x = BigUint::from(x);
        let x2 = &x * &x;
        let mut term = &one / &x;
        let mut sum_pos = term.clone();
        let mut sum_neg = BigUint::ZERO;
        let mut n = 1u32;
        let mut positive = false;
        while term > BigUint::ZERO {
            term /= &x2;
            n += 2;
            let t = &term / n;
            if positive {
                sum_pos += t;
            } else {
                sum_neg += t;
            }
            positive = !positive;
        }
        sum_pos - sum_neg
    };
    (arctan_inv(5) * 16u32 - arctan_inv(239) * 4u32) >> guard
}

#[test]
fn modp_primes_follow_the_pi_formula() {
    // RFC 2409 s.6.1/6.2, RFC 3526: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k)
    for (group, n, k) in [
        (DhGroup::Modp768, 768u32, 149_686u32),
        (DhGroup::Modp1024, 1024, 129_093),
        (DhGroup::Modp1536, 1536, 741_804),
        (DhGroup::Modp2048, 2048, 124_476),
    ] {
        let two = BigUint::from(2u8);
        let p = two.pow(n) - two.pow(n - 64) - 1u8 + two.pow(64) * (pi_scaled(n - 130) + k);
        assert_eq!(dh::modulus(group), p.to_bytes_be(), "{group}");
    }
}

#[test]
fn group24_structure() {
    // q | p - 1 and g^q = 1 mod p, q of 256 bits (RFC 5114 s.2.3).
    let cases = load("dh.txt");
    let case = cases.iter().find(|c| c.name == "rfc5114_a3").unwrap();
    let p = BigUint::from_bytes_be(case.get("p"));
    let q = BigUint::from_bytes_be(case.get("q"));
    let g = BigUint::from_bytes_be(case.get("g"));
    assert_eq!(q.bits(), 256);
    assert_eq!((&p - 1u8) % &q, BigUint::ZERO);
    assert_eq!(g.modpow(&q, &p), BigUint::from(1u8));
}
