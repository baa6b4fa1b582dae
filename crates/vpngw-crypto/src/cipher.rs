//! CBC-mode block ciphers with the key schedule computed once per SA.
//!
//! Serial CBC goes through the `cbc` crate over a borrowed cipher (`cbc::Encryptor<&C>`), so a
//! packet costs no key-schedule copy. Multi-buffer CBC encryption is ours (no crate does it; see
//! docs/adr/0003-multi-buffer-cbc.md): CBC encryption is serial inside one packet and bound by
//! the AES round latency, but the chains of several packets are independent, so one block of
//! each is encrypted together through the cipher's parallel `encrypt_blocks`, which pipelines
//! AES-NI/VAES the way CBC decryption already does.

use core::fmt;

use zeroize::Zeroize;

use aes::cipher::consts::{U8, U16};
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, BlockCipherDecrypt, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt, BlockModeDecrypt,
    BlockModeEncrypt, BlockSizeUser, InnerIvInit, KeyInit, ParBlocks,
};
use aes::{Aes128, Aes192, Aes256};
use des::{Des, TdesEde3};

use crate::bitsliced_des::{self, Direction, LANES, Schedule, WIDE_LANES};
use crate::error::CryptoError;
use crate::registry::EncryptionAlgorithm;

/// A keyed CBC cipher: the expanded key schedule, wiped on drop (RustCrypto `zeroize` feature).
/// Boxed, so that an SA holds only its own algorithm's schedule (352 bytes for AES-128) rather
/// than the largest one's: thousands of SAs are kept in memory.
#[derive(Clone)]
pub enum CbcCipher {
    Des(Box<DesKeys<Des>>),
    TripleDes(Box<DesKeys<TdesEde3>>),
    Aes128(Box<Aes128>),
    Aes192(Box<Aes192>),
    Aes256(Box<Aes256>),
}

/// One packet for [`CbcCipher::encrypt_multi`]: its IV and its block-aligned plaintext, encrypted
/// in place.
#[derive(Debug)]
pub struct CbcJob<'a> {
    pub iv: &'a [u8],
    pub data: &'a mut [u8],
}

impl fmt::Debug for CbcCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CbcCipher({}, <key redacted>)", self.algorithm())
    }
}

macro_rules! dispatch {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            CbcCipher::Des(b) => {
                let $c = &b.serial;
                $body
            }
            CbcCipher::TripleDes(b) => {
                let $c = &b.serial;
                $body
            }
            CbcCipher::Aes128(b) => {
                let $c = &**b;
                $body
            }
            CbcCipher::Aes192(b) => {
                let $c = &**b;
                $body
            }
            CbcCipher::Aes256(b) => {
                let $c = &**b;
                $body
            }
        }
    };
}

impl CbcCipher {
    /// Expands `key` for `algorithm`. DES and 3DES weak keys are refused.
    pub fn new(algorithm: EncryptionAlgorithm, key: &[u8]) -> Result<Self, CryptoError> {
        let spec = algorithm.spec();
        if key.len() != spec.key_len {
            return Err(CryptoError::KeyLength { algorithm: spec.name, expected: spec.key_len, got: key.len() });
        }
        if matches!(algorithm, EncryptionAlgorithm::Des | EncryptionAlgorithm::TripleDes)
            && des::weak_key_test(key).is_err()
        {
            return Err(CryptoError::WeakKey { algorithm });
        }
        let length_error = |_: des::cipher::InvalidLength| CryptoError::KeyLength {
            algorithm: spec.name,
            expected: spec.key_len,
            got: key.len(),
        };
        Ok(match algorithm {
            EncryptionAlgorithm::Des => {
                let k: &[u8; 8] = key.try_into().map_err(|_| length_error(des::cipher::InvalidLength))?;
                Self::Des(Box::new(DesKeys {
                    serial: Des::new_from_slice(key).map_err(length_error)?,
                    sliced: Schedule::des(k),
                }))
            }
            EncryptionAlgorithm::TripleDes => {
                let k: &[u8; 24] = key.try_into().map_err(|_| length_error(des::cipher::InvalidLength))?;
                Self::TripleDes(Box::new(DesKeys {
                    serial: TdesEde3::new_from_slice(key).map_err(length_error)?,
                    sliced: Schedule::triple_des(k),
                }))
            }
            EncryptionAlgorithm::Aes128 => Self::Aes128(Box::new(Aes128::new_from_slice(key).map_err(length_error)?)),
            EncryptionAlgorithm::Aes192 => Self::Aes192(Box::new(Aes192::new_from_slice(key).map_err(length_error)?)),
            EncryptionAlgorithm::Aes256 => Self::Aes256(Box::new(Aes256::new_from_slice(key).map_err(length_error)?)),
        })
    }

    pub fn algorithm(&self) -> EncryptionAlgorithm {
        match self {
            Self::Des(_) => EncryptionAlgorithm::Des,
            Self::TripleDes(_) => EncryptionAlgorithm::TripleDes,
            Self::Aes128(_) => EncryptionAlgorithm::Aes128,
            Self::Aes192(_) => EncryptionAlgorithm::Aes192,
            Self::Aes256(_) => EncryptionAlgorithm::Aes256,
        }
    }

    pub fn block_len(&self) -> usize {
        self.algorithm().spec().block_len
    }

    /// CBC-encrypts `data` in place. `data` must be block-aligned; `iv` one block long.
    pub fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        let algorithm = self.algorithm();
        dispatch!(self, c => cbc_encrypt(c, algorithm, iv, data))
    }

    /// CBC-decrypts `data` in place (parallel inside the packet: each block needs only the
    /// previous ciphertext block, which is already known).
    pub fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        let algorithm = self.algorithm();
        match self {
            Self::Des(k) => k.decrypt(algorithm, iv, data),
            Self::TripleDes(k) => k.decrypt(algorithm, iv, data),
            _ => dispatch!(self, c => cbc_decrypt(c, algorithm, iv, data)),
        }
    }

    /// CBC-encrypts several packets, interleaving their chains block by block (multi-buffer CBC).
    /// The output is exactly what [`CbcCipher::encrypt`] gives for each job. Every job is checked
    /// before any is touched, so an error leaves all data as it was.
    pub fn encrypt_multi(&self, jobs: &mut [CbcJob<'_>]) -> Result<(), CryptoError> {
        let algorithm = self.algorithm();
        for job in jobs.iter() {
            check_shape(algorithm, job.iv, job.data.len())?;
        }
        match self {
            Self::Des(k) => k.encrypt_multi(algorithm, jobs),
            Self::TripleDes(k) => k.encrypt_multi(algorithm, jobs),
            Self::Aes128(c) => cbc_encrypt_multi(&**c, jobs),
            Self::Aes192(c) => cbc_encrypt_multi(&**c, jobs),
            Self::Aes256(c) => cbc_encrypt_multi(&**c, jobs),
        }
        Ok(())
    }
}

fn check_shape(algorithm: EncryptionAlgorithm, iv: &[u8], len: usize) -> Result<(), CryptoError> {
    let block = algorithm.spec().block_len;
    if iv.len() != block {
        return Err(CryptoError::IvLength { algorithm, expected: block, got: iv.len() });
    }
    if len % block != 0 {
        return Err(CryptoError::NotBlockAligned { algorithm, len, block });
    }
    Ok(())
}

fn cbc_encrypt<C: BlockCipherEncrypt>(
    cipher: &C,
    algorithm: EncryptionAlgorithm,
    iv: &[u8],
    data: &mut [u8],
) -> Result<(), CryptoError> {
    check_shape(algorithm, iv, data.len())?;
    let iv = Array::try_from(iv).map_err(|_| CryptoError::IvLength {
        algorithm,
        expected: C::block_size(),
        got: iv.len(),
    })?;
    let (blocks, _) = Array::slice_as_chunks_mut(data);
    cbc::Encryptor::<&C>::inner_iv_init(cipher, &iv).encrypt_blocks(blocks);
    Ok(())
}

fn cbc_decrypt<C: BlockCipherDecrypt + BlockCipherEncrypt>(
    cipher: &C,
    algorithm: EncryptionAlgorithm,
    iv: &[u8],
    data: &mut [u8],
) -> Result<(), CryptoError> {
    check_shape(algorithm, iv, data.len())?;
    let iv = Array::try_from(iv).map_err(|_| CryptoError::IvLength {
        algorithm,
        expected: C::block_size(),
        got: iv.len(),
    })?;
    let (blocks, _) = Array::slice_as_chunks_mut(data);
    cbc::Decryptor::<&C>::inner_iv_init(cipher, &iv).decrypt_blocks(blocks);
    Ok(())
}

/// Multi-buffer CBC: the chains of up to `P` packets advance together, where `P` is the
/// backend's native parallel width (8 blocks for AES-NI, 30 for VAES-256 on this CPU). When a
/// packet finishes, the next waiting packet takes its lane (the job scheduling of Intel's
/// ipsec-mb), so packets of mixed lengths keep the pipeline full. Shapes were checked by the
/// caller.
fn cbc_encrypt_multi<C: BlockCipherEncrypt<BlockSize = U16>>(cipher: &C, jobs: &mut [CbcJob<'_>]) {
    cipher.encrypt_with_backend(MultiBufferCbc { jobs });
}

/// The multi-buffer loop as a cipher-backend closure: the backend (AES-NI, VAES, software) is
/// chosen once per batch, and its parallel block function is called directly.
struct MultiBufferCbc<'j, 'a> {
    jobs: &'j mut [CbcJob<'a>],
}

impl BlockSizeUser for MultiBufferCbc<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for MultiBufferCbc<'_, '_> {
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let jobs = self.jobs;
        let lanes = B::ParBlocksSize::USIZE;
        let bs = 16;
        // chain[k]: lane k's previous ciphertext block (the IV at first), then the cipher input.
        // Lanes beyond `active` hold stale blocks that are encrypted along and never written out:
        // a parallel call costs the same however many of its lanes are real, and even two real
        // lanes beat two serial, latency-bound block encryptions.
        let mut chain: ParBlocks<B> = Default::default();
        let mut lane_job: Array<usize, B::ParBlocksSize> = Default::default();
        let mut lane_pos: Array<usize, B::ParBlocksSize> = Default::default();
        let mut active = 0;
        let mut next_job = 0;
        loop {
            while active < lanes && next_job < jobs.len() {
                let job = &jobs[next_job];
                if !job.data.is_empty() {
                    chain[active].copy_from_slice(job.iv);
                    lane_job[active] = next_job;
                    lane_pos[active] = 0;
                    active += 1;
                }
                next_job += 1;
            }
            if active == 0 {
                return;
            }
            for k in 0..active {
                let pos = lane_pos[k];
                let plain = &jobs[lane_job[k]].data[pos..pos + bs];
                for (c, p) in chain[k].iter_mut().zip(plain) {
                    *c ^= p;
                }
            }
            if active == 1 {
                backend.encrypt_block_inplace(&mut chain[0]);
            } else {
                backend.encrypt_par_blocks_inplace(&mut chain);
            }
            let mut k = 0;
            while k < active {
                let pos = lane_pos[k];
                let data = &mut jobs[lane_job[k]].data;
                data[pos..pos + bs].copy_from_slice(&chain[k]);
                if pos + bs == data.len() {
                    // Lane done: move the last active lane (not yet written this round) into slot k.
                    active -= 1;
                    chain.swap(k, active);
                    lane_job.swap(k, active);
                    lane_pos.swap(k, active);
                } else {
                    lane_pos[k] = pos + bs;
                    k += 1;
                }
            }
        }
    }
}

/// A DES or 3DES key held twice: as the `des` crate's schedule (128 bytes per DES key), for the
/// few-block cases, and as the bitsliced passes read it (8 bytes per DES key: the halves C0 and
/// D0, from which each round's subkey is rotated out), for CBC decryption of a packet and
/// multi-buffer encryption of many (`crate::bitsliced_des`). 3DES: 416 bytes, one allocation.
#[derive(Clone)]
pub struct DesKeys<C> {
    serial: C,
    sliced: Schedule,
}

impl<C> fmt::Debug for DesKeys<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DesKeys(<redacted>)")
    }
}

impl<C: BlockCipherEncrypt<BlockSize = U8> + BlockCipherDecrypt> DesKeys<C> {
    /// CBC decryption: every block is independent, so a packet of at least
    /// [`bitsliced_des::MIN_LANES`] blocks is decrypted in bitsliced passes: 128 blocks per pass
    /// while more than 64 are left, then 64, and a short tail block by block.
    fn decrypt(&self, algorithm: EncryptionAlgorithm, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        check_shape(algorithm, iv, data.len())?;
        if data.len() / 8 < bitsliced_des::MIN_LANES {
            return cbc_decrypt(&self.serial, algorithm, iv, data);
        }
        // One or two passes per packet: inline round keys beat expanding them.
        let keys = self.sliced.inline(Direction::Decrypt);
        let mut previous = block_u64(iv);
        let mut lanes = [0u64; WIDE_LANES];
        let mut ciphertext = [0u64; WIDE_LANES];
        let mut rest = data;
        let mut result = Ok(());
        while !rest.is_empty() {
            let left = rest.len() / 8;
            if left < bitsliced_des::MIN_LANES {
                // A short tail: cheaper block by block, chained from the last ciphertext block.
                result = cbc_decrypt(&self.serial, algorithm, &previous.to_be_bytes(), rest);
                break;
            }
            let n = left.min(if left > LANES { WIDE_LANES } else { LANES });
            let (chunk, tail) = rest.split_at_mut(n * 8);
            for (c, b) in ciphertext.iter_mut().zip(chunk.chunks_exact(8)) {
                *c = block_u64(b);
            }
            lanes = ciphertext;
            match lanes.first_chunk_mut::<LANES>() {
                Some(narrow) if n <= LANES => bitsliced_des::crypt(&keys, narrow),
                _ => bitsliced_des::crypt_wide(&keys, &mut lanes),
            }
            for (i, out) in chunk.chunks_exact_mut(8).enumerate() {
                let chained = if i == 0 { previous } else { ciphertext[i - 1] };
                out.copy_from_slice(&(lanes[i] ^ chained).to_be_bytes());
            }
            previous = ciphertext[n - 1];
            rest = tail;
        }
        // The lanes held decrypted blocks (plaintext XOR public ciphertext).
        lanes.zeroize();
        result
    }

    /// Multi-buffer CBC encryption: one lane per packet, 64 packets per pass, a finished packet's
    /// lane taken by the next waiting one (as for AES). When fewer than
    /// [`bitsliced_des::MIN_LANES`] packets are left (or were there at all), they finish block by
    /// block. Shapes were checked by the caller.
    fn encrypt_multi(&self, algorithm: EncryptionAlgorithm, jobs: &mut [CbcJob<'_>]) {
        // Spread the round keys only once a pass is due: a batch of fewer than MIN_LANES packets
        // goes block by block from the start (the straggler path below) and never needs them.
        let mut masks = None;
        // chain[k]: lane k's previous ciphertext block (the IV at first), then the cipher input.
        let mut chain = [0u64; LANES];
        let mut lane_job = [0usize; LANES];
        let mut lane_pos = [0usize; LANES];
        let mut active = 0;
        let mut next_job = 0;
        loop {
            while active < LANES && next_job < jobs.len() {
                let job = &jobs[next_job];
                if !job.data.is_empty() {
                    chain[active] = block_u64(job.iv);
                    lane_job[active] = next_job;
                    lane_pos[active] = 0;
                    active += 1;
                }
                next_job += 1;
            }
            if active < bitsliced_des::MIN_LANES && next_job == jobs.len() {
                // The stragglers (or a small batch): a whole pass for a few lanes costs more
                // than serial blocks. Each lane's chain value is its IV or last ciphertext block.
                for k in 0..active {
                    let job = &mut jobs[lane_job[k]];
                    let pos = lane_pos[k];
                    let _ = cbc_encrypt(&self.serial, algorithm, &chain[k].to_be_bytes(), &mut job.data[pos..]);
                }
                break;
            }
            for k in 0..active {
                let pos = lane_pos[k];
                chain[k] ^= block_u64(&jobs[lane_job[k]].data[pos..pos + 8]);
            }
            bitsliced_des::crypt(masks.get_or_insert_with(|| self.sliced.expand(Direction::Encrypt)), &mut chain);
            let mut k = 0;
            while k < active {
                let pos = lane_pos[k];
                let data = &mut jobs[lane_job[k]].data;
                data[pos..pos + 8].copy_from_slice(&chain[k].to_be_bytes());
                if pos + 8 == data.len() {
                    active -= 1;
                    chain.swap(k, active);
                    lane_job.swap(k, active);
                    lane_pos.swap(k, active);
                } else {
                    lane_pos[k] = pos + 8;
                    k += 1;
                }
            }
        }
        chain.zeroize();
    }
}

/// An 8-byte block as a big-endian integer (the bitsliced DES's block form).
fn block_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_sizes_are_errors_not_panics() {
        let c = CbcCipher::new(EncryptionAlgorithm::Aes128, &[7u8; 16]).unwrap();
        let mut data = [0u8; 17];
        assert!(matches!(c.encrypt(&[0u8; 16], &mut data), Err(CryptoError::NotBlockAligned { .. })));
        assert!(matches!(c.decrypt(&[0u8; 8], &mut data[..16]), Err(CryptoError::IvLength { .. })));
        assert!(matches!(
            CbcCipher::new(EncryptionAlgorithm::Aes256, &[0u8; 16]),
            Err(CryptoError::KeyLength { expected: 32, got: 16, .. })
        ));
        // DES weak key 0101010101010101 and a degenerate 3DES key (K1 = K2) are refused.
        assert!(matches!(CbcCipher::new(EncryptionAlgorithm::Des, &[1u8; 8]), Err(CryptoError::WeakKey { .. })));
        let mut degenerate = [0x5au8; 24];
        degenerate[16..].copy_from_slice(&[0x3c; 8]);
        assert!(matches!(
            CbcCipher::new(EncryptionAlgorithm::TripleDes, &degenerate),
            Err(CryptoError::WeakKey { .. })
        ));
    }

    /// What a 3DES SA's cipher costs in memory (the dataplane keeps thousands): the `des`
    /// crate's schedule plus 8 bytes per key for the bitsliced passes, in one allocation.
    #[test]
    fn des_keys_are_compact() {
        assert_eq!(core::mem::size_of::<DesKeys<TdesEde3>>(), 384 + 32);
        assert_eq!(core::mem::size_of::<DesKeys<Des>>(), 128 + 32);
        assert_eq!(core::mem::size_of::<CbcCipher>(), 16);
    }

    #[test]
    fn debug_hides_the_key() {
        let c = CbcCipher::new(EncryptionAlgorithm::Aes128, &[0xab; 16]).unwrap();
        let shown = format!("{c:?}");
        assert_eq!(shown, "CbcCipher(aes-128, <key redacted>)");
    }

    #[test]
    fn multi_rejects_a_bad_job_before_touching_any() {
        let c = CbcCipher::new(EncryptionAlgorithm::Aes128, &[7u8; 16]).unwrap();
        let iv = [1u8; 16];
        let mut a = [0u8; 32];
        let mut b = [0u8; 20];
        let mut jobs = [CbcJob { iv: &iv, data: &mut a }, CbcJob { iv: &iv, data: &mut b }];
        assert!(c.encrypt_multi(&mut jobs).is_err());
        assert_eq!(a, [0u8; 32]);
    }
}
