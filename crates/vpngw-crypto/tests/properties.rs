//! Property tests: multi-buffer CBC equals serial CBC for any mix of packet lengths and counts
//! (lanes are refilled as packets finish), and decryption inverts encryption, for every cipher.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;
use vpngw_crypto::{CbcCipher, CbcJob, EncryptionAlgorithm};

fn algorithm() -> impl Strategy<Value = EncryptionAlgorithm> {
    prop::sample::select(EncryptionAlgorithm::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn multi_buffer_equals_serial(
        alg in algorithm(),
        key_seed in any::<u8>(),
        // Up to 100 packets: past the 64 lanes of a bitsliced DES pass, so that lanes are
        // refilled from waiting packets.
        blocks in prop::collection::vec(0usize..24, 0..100),
        fill in any::<u8>(),
    ) {
        let spec = alg.spec();
        let key: Vec<u8> = (0..spec.key_len).map(|i| key_seed.wrapping_add((i as u8).wrapping_mul(37))).collect();
        let cipher = CbcCipher::new(alg, &key).unwrap();
        let ivs: Vec<Vec<u8>> = (0..blocks.len()).map(|i| vec![i as u8 ^ fill; spec.block_len]).collect();
        let plains: Vec<Vec<u8>> = blocks
            .iter()
            .enumerate()
            .map(|(i, n)| (0..n * spec.block_len).map(|j| (i * 131 + j) as u8 ^ fill).collect())
            .collect();
        let mut serial = plains.clone();
        for (data, iv) in serial.iter_mut().zip(&ivs) {
            cipher.encrypt(iv, data).unwrap();
        }
        let mut multi = plains.clone();
        let mut jobs: Vec<CbcJob<'_>> =
            multi.iter_mut().zip(&ivs).map(|(data, iv)| CbcJob { iv, data }).collect();
        cipher.encrypt_multi(&mut jobs).unwrap();
        prop_assert_eq!(&multi, &serial);
        for ((data, iv), plain) in multi.iter_mut().zip(&ivs).zip(&plains) {
            cipher.decrypt(iv, data).unwrap();
            prop_assert_eq!(&*data, plain);
        }
    }

    /// Decryption of long packets: many passes of 64 blocks plus a tail (bitsliced for DES, with
    /// a short tail done block by block), against serial CBC.
    #[test]
    fn long_decrypt_inverts_serial_encrypt(
        alg in algorithm(),
        key_seed in any::<u8>(),
        n in 0usize..300,
        fill in any::<u8>(),
    ) {
        let spec = alg.spec();
        let key: Vec<u8> = (0..spec.key_len).map(|i| key_seed.wrapping_add((i as u8).wrapping_mul(53))).collect();
        let cipher = CbcCipher::new(alg, &key).unwrap();
        let iv = vec![fill; spec.block_len];
        let plain: Vec<u8> = (0..n * spec.block_len).map(|j| (j * 7) as u8 ^ fill).collect();
        let mut data = plain.clone();
        cipher.encrypt(&iv, &mut data).unwrap();
        cipher.decrypt(&iv, &mut data).unwrap();
        prop_assert_eq!(data, plain);
    }
}

/// Every length from 0 to 300 blocks, for DES and 3DES: the bitsliced decryption's pass shapes
/// (64-lane, 128-lane, 128 then 64, a serial tail after a 128-lane pass) all against serial
/// encryption by the `des` crate.
#[test]
fn des_decrypt_every_length() {
    for alg in [EncryptionAlgorithm::Des, EncryptionAlgorithm::TripleDes] {
        let key: Vec<u8> = (0..alg.spec().key_len).map(|i| (i as u8).wrapping_mul(29) ^ 0x35).collect();
        let cipher = CbcCipher::new(alg, &key).unwrap();
        let iv = [0x5au8; 8];
        for n in 0..=300usize {
            let plain: Vec<u8> = (0..n * 8).map(|j| (j * 13 + n) as u8).collect();
            let mut data = plain.clone();
            cipher.encrypt(&iv, &mut data).unwrap();
            cipher.decrypt(&iv, &mut data).unwrap();
            assert!(data == plain, "{alg}: {n} blocks");
        }
    }
}
