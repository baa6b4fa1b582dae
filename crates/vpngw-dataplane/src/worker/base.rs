//! What every stage of a worker shares: the [`Worker`] itself (its devices, its share of the
//! dataplane's state) and the sizes of its batches and buffers.

use std::sync::Arc;

use vpngw_crypto::FastRng;

use crate::shared::Shared;
use crate::sys;

/// Room before an inner packet for SPI, sequence and IV (outer headers are the kernel's).
pub(super) const HEADROOM: usize = 64;
/// Room after it for padding, trailer and ICV.
pub(super) const TAILROOM: usize = 64;
/// Largest inner packet read from the TUN.
pub(super) const MAX_INNER: usize = 9000;
/// Packets drained per source per wake-up: bounds the time any SA reference is held.
pub(crate) const BATCH: usize = 128;
pub(super) const UDP_BUFFERS: usize = sys::MAX_UDP_READS;
/// A UDP GRO read can hold up to 64 coalesced datagrams: room for 64 full-size ones.
pub(super) const UDP_BUFFER_LEN: usize = 64 * 1536;
/// Room for one ICMP "fragmentation needed" after the TUN's virtio header.
pub(super) const ICMP_LEN: usize = 128;

pub(crate) struct Worker<T, U, R> {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub tun: T,
    pub udp: U,
    pub raw: Option<R>,
    pub rng: FastRng,
    /// Identification field of the last outer IPv4 header this worker wrote (link path).
    pub ip_id: u16,
}
