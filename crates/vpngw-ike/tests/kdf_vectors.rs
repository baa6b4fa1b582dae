//! The phase 1 key derivation against published vectors: NIST ACVP IKEv1 KDF (PSK, SHA-256: the
//! only byte-aligned PSK set NIST publishes) and NIST sample values carried by NSS (SHA-1:
//! SKEYID from a PSK, and SKEYID_d/a/e from a given SKEYID). The same code runs for MD5/SHA-1 in
//! service; strongSwan interop covers those end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;

use vpngw_crypto::{HashAlgorithm, Prf};
use vpngw_ike::keys::{Phase1Inputs, skeyids};

fn load(file: &str) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    text.split("# case: ")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(" = "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

fn h(v: &str) -> Vec<u8> {
    hex::decode(v).unwrap()
}

fn hash_of(name: &str) -> HashAlgorithm {
    HashAlgorithm::from_name(name).unwrap()
}

#[test]
fn acvp_psk_sha256_cases() {
    let cases = load("ikev1_kdf.txt");
    assert_eq!(cases.len(), 10);
    for c in &cases {
        let (ni, nr, gxy, psk) = (h(&c["ni"]), h(&c["nr"]), h(&c["gxy"]), h(&c["psk"]));
        let cky_i: [u8; 8] = h(&c["cky_i"]).try_into().unwrap();
        let cky_r: [u8; 8] = h(&c["cky_r"]).try_into().unwrap();
        let inputs = Phase1Inputs {
            hash: hash_of(&c["hash"]),
            psk: &psk,
            ni: &ni,
            nr: &nr,
            gxy: &gxy,
            cky_i: &cky_i,
            cky_r: &cky_r,
        };
        let [skeyid, d, a, e] = skeyids(&inputs);
        assert_eq!(hex::encode(skeyid.expose()), c["skeyid"]);
        assert_eq!(hex::encode(d.expose()), c["skeyid_d"]);
        assert_eq!(hex::encode(a.expose()), c["skeyid_a"]);
        assert_eq!(hex::encode(e.expose()), c["skeyid_e"]);
    }
}

#[test]
fn nist_sha1_partial_cases() {
    let cases = load("ikev1_kdf_sha1_partial.txt");
    let mut checked = 0;
    for c in &cases {
        assert_eq!(c["hash"], "sha1");
        if let (Some(psk), Some(ni), Some(nr)) = (c.get("psk"), c.get("ni"), c.get("nr")) {
            let skeyid = Prf::new(HashAlgorithm::Sha1, &h(psk)).compute(&[&h(ni), &h(nr)]);
            assert_eq!(hex::encode(skeyid.expose()), c["skeyid"]);
            checked += 1;
        }
        if let (Some(gxy), Some(d)) = (c.get("gxy"), c.get("skeyid_d")) {
            // SKEYID given: check the d/a/e chain with the library's composition.
            let prf = Prf::new(HashAlgorithm::Sha1, &h(&c["skeyid"]));
            let (g, ci, cr) = (h(gxy), h(&c["cky_i"]), h(&c["cky_r"]));
            let kd = prf.compute(&[&g, &ci, &cr, &[0]]);
            let ka = prf.compute(&[kd.expose(), &g, &ci, &cr, &[1]]);
            let ke = prf.compute(&[ka.expose(), &g, &ci, &cr, &[2]]);
            assert_eq!(hex::encode(kd.expose()), *d);
            assert_eq!(hex::encode(ka.expose()), c["skeyid_a"]);
            assert_eq!(hex::encode(ke.expose()), c["skeyid_e"]);
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} partial cases ran");
}
