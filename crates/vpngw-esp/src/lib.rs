//! # vpngw-esp: the ESP (RFC 4303) tunnel-mode packet engine
//!
//! **Owns:** the ESP packet format ([`wire`]), the per-SA packet state: keyed transforms, the
//! outbound sequence counter and its soft/hard limits, the inbound anti-replay window
//! ([`replay`]), and encapsulation/decapsulation ([`sa`]). Every reason a packet is refused is one
//! variant of a closed enum ([`OpenError`], [`SealError`]) with a stable label for counters.
//!
//! **Must not touch:** sockets, TUN devices, threads, clocks, the outer IP/UDP header, SA lookup
//! by SPI, policy (which SA a packet needs), or the IKE control plane. Those belong to
//! `vpngw-dataplane` and `vpngw-ike`. This crate is sans-IO: byte buffers in, byte buffers out.
//!
//! **Data in and out:** the control plane builds an [`OutboundSa`] / [`InboundSa`] from
//! [`SaKeys`] (once per SA: key schedule and HMAC state are precomputed). A worker hands a
//! buffer with the inner packet and headroom/tailroom to [`OutboundSa::seal_in_place`] (or many
//! to [`OutboundSa::seal_batch`], where multi-buffer CBC runs) and gets back the range of the ESP
//! packet in the same buffer; inbound, [`InboundSa::open_in_place`] turns an ESP packet into the
//! range of its inner packet. IVs come from the worker's own [`vpngw_crypto::FastRng`].

#![forbid(unsafe_code)]

mod error;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod replay;
pub mod sa;
mod spi;
pub mod wire;

pub use error::{OpenError, SaError, SealError};
pub use replay::{DEFAULT_WINDOW, ReplayWindow};
pub use sa::{DEFAULT_SOFT_SEQUENCE_LIMIT, InboundSa, OpenPacket, Opened, OutboundSa, SaKeys, SealPacket, Sealed};
pub use spi::Spi;
pub use wire::{EspPacket, NextHeader, peek_spi};
