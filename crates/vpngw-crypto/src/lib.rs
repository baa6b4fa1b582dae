//! # vpngw-crypto: the algorithm registry and the crypto transforms of IPsec and IKEv1
//!
//! **Owns:** what each algorithm is ([`registry`]: names, wire numbers, sizes, weak flags) and the
//! keyed transforms built from it: CBC ciphers with serial and multi-buffer encryption and
//! bitsliced DES ([`cipher`]), HMAC integrity and the IKE PRFs ([`mac`]), MODP Diffie-Hellman
//! with validated peer values ([`dh`]), zeroizing secret containers ([`secret`]) and the per-worker CSPRNG
//! ([`rng`]).
//!
//! **Must not touch:** packet formats (ESP framing is `vpngw-esp`, ISAKMP and the IKEv1 key
//! schedule are `vpngw-ike`), sockets, threads, clocks, configuration, logging. The only system
//! call anywhere in this crate is the one-time OS seed of [`rng::FastRng::from_os`].
//!
//! **Data in and out:** key bytes and algorithm identifiers go in; keyed objects come out, which
//! then transform caller-owned buffers in place. Key schedules are computed once (per SA), never
//! per packet (the bitsliced DES keeps each key's two 28-bit halves and, per batch, rotates each
//! round's subkey out of them and spreads its bits to word masks). Every key-holding type wipes
//! itself on drop and prints as `<redacted>`.
//!
//! Implementations are RustCrypto's (aes, cbc, des, md-5, sha1, hmac) and crypto-bigint's. Written
//! here because no crate provides them: multi-buffer CBC (docs/adr/0003-multi-buffer-cbc.md) and a
//! bitsliced, constant-time DES/3DES for CBC over many blocks (`bitsliced_des`,
//! docs/adr/0008-bitsliced-des.md), the `des` crate doing the few-block cases, and HMAC-SHA1
//! of two messages at a time (`sha1_pair`, docs/adr/0009-two-lane-sha1.md).

// `unsafe` only in bitsliced_des/sse2.rs (SSE2 intrinsics, register-only) and sha1_pair/shani.rs
// (SHA-NI intrinsics behind run-time detection), each with its proof there.
#![deny(unsafe_code)]

mod bitsliced_des;
pub mod cipher;
pub mod dh;
mod error;
mod groups;
pub mod mac;
pub mod registry;
pub mod rng;
pub mod secret;
mod sha1_pair;

pub use cipher::{CbcCipher, CbcJob};
pub use dh::{DhExponent, DhPrivateKey};
pub use error::CryptoError;
pub use mac::{IntegrityKey, Prf};
/// Re-exported so that callers name the RNG traits of the same version.
pub use rand_core;
pub use registry::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm};
pub use rng::FastRng;
pub use secret::SecretBytes;
