//! A worker's scratch ([`WorkerCtx`]), allocated once when it starts, with the buffers of its
//! inbound stage ([`TunOut`], [`RawIn`]); the transmit stage's ([`Gso`]) is in `tx.rs`.

use tun_rs::VIRTIO_NET_HDR_LEN;

use super::base::{BATCH, HEADROOM, ICMP_LEN, MAX_INNER, TAILROOM, UDP_BUFFER_LEN, UDP_BUFFERS};
use super::tx::Gso;

/// Decrypted packets gathered for one coalescing write to the TUN.
const TUN_OUT: usize = 64;
/// Raw ESP packets read with one recvmmsg call (BATCH still bounds the packets per wake-up).
pub(super) const RAW_RECV: usize = 64;
/// Room for one raw ESP packet as read: the largest IPv4 packet.
pub(super) const RAW_LEN: usize = 65536;

/// Decrypted packets waiting for the TUN, each at offset VIRTIO_NET_HDR_LEN in its buffer;
/// written together so that TCP segments of one flow are coalesced (GRO) into one write.
pub(super) struct TunOut {
    pub(super) bufs: Vec<Vec<u8>>,
    pub(super) len: usize,
}

impl TunOut {
    pub fn new() -> Self {
        Self { bufs: (0..TUN_OUT).map(|_| Vec::with_capacity(65536)).collect(), len: 0 }
    }

    pub(super) fn push(&mut self, packet: &[u8]) -> bool {
        let Some(b) = self.bufs.get_mut(self.len) else { return false };
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.len += 1;
        true
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }
}

/// Raw ESP receiving, allocated once per worker: RAW_RECV buffers of RAW_LEN in one allocation
/// (its pages are touched only where packets land), and the length of each packet read.
pub(super) struct RawIn {
    pub(super) buf: Vec<u8>,
    pub(super) lens: [usize; RAW_RECV],
}

impl RawIn {
    pub fn new(enabled: bool) -> Self {
        let n = if enabled { RAW_RECV } else { 0 };
        Self { buf: vec![0u8; n * RAW_LEN], lens: [0; RAW_RECV] }
    }
}

/// Which of a worker's sources poll found readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The control plane woke the worker (SAs arrived for held packets, or stop).
    pub waker: bool,
    pub tun: bool,
    pub udp: bool,
    pub raw: bool,
}

/// A worker's scratch, allocated once when it starts: nothing on the packet path allocates.
pub(crate) struct WorkerCtx {
    /// Plaintext read from the TUN, each at HEADROOM in its buffer, sealed in place.
    pub(super) tun_bufs: Vec<Vec<u8>>,
    pub(super) tun_sizes: [usize; BATCH],
    /// UDP 4500 reads (GRO: several datagrams each).
    pub(super) udp_bufs: Vec<Vec<u8>>,
    pub(super) raw_in: RawIn,
    pub(super) gso: Gso,
    pub(super) tun_out: TunOut,
    /// An ICMP "fragmentation needed" on its way into the TUN.
    pub(super) icmp: Vec<u8>,
    pub ready: Ready,
}

impl WorkerCtx {
    /// Scratch for a worker with (or without) a raw ESP socket whose UDP socket sends up to
    /// `max_segments` datagrams per GSO call.
    pub fn new(raw_esp: bool, max_segments: usize) -> Self {
        Self {
            tun_bufs: (0..BATCH).map(|_| vec![0u8; HEADROOM + MAX_INNER + TAILROOM]).collect(),
            tun_sizes: [0; BATCH],
            udp_bufs: (0..UDP_BUFFERS).map(|_| vec![0u8; UDP_BUFFER_LEN]).collect(),
            raw_in: RawIn::new(raw_esp),
            gso: Gso::new(max_segments),
            tun_out: TunOut::new(),
            icmp: Vec::with_capacity(tun_rs::VIRTIO_NET_HDR_LEN + ICMP_LEN),
            ready: Ready::default(),
        }
    }
}
