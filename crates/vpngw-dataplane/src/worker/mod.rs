//! One worker: an OS thread pinned to a core, owning one TUN queue, one UDP 4500 socket (in a
//! SO_REUSEPORT group whose BPF program sends each datagram to socket `spi % workers`) and, for
//! raw ESP, one protocol-50 socket filtered to the same share of SPIs: each SA is opened by one
//! worker, and one peer's SAs spread over the workers. Worker 0's UDP socket also gets NAT
//! keepalives and IKE (zero marker); GRO-coalesced reads can still hold other workers' SPIs
//! (see `sys::udp_group`), which any worker opens as well.
//!
//! Per wake-up it drains each readable source in a bounded batch, one stage per file:
//! - [`outbound`]: TUN -> SA/SPD lookup -> ICMP for packets too big -> seal (multi-buffer, per
//!   run of one SA), then [`tx`]: UDP (GSO), link path or raw IP socket (one sendmmsg per run);
//! - [`inbound`]: UDP 4500 -> keepalive | IKE (to the control plane) | ESP, and raw ESP
//!   (recvmmsg, up to 64 packets a call) -> open -> selectors -> TUN.
//!
//! Its I/O goes through the traits of [`crate::sys`] (the kernel's devices in service, memory in
//! tests); its scratch is a [`WorkerCtx`], allocated once. It holds SA references only inside a
//! batch; `busy`/`epoch` let the control plane wait until no worker can still use an SA it
//! removed.

mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
mod tx;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use vpngw_crypto::FastRng;

use crate::Shared;
use crate::counters::{WorkerCounters, bump};
use crate::sys::{self, RawLink, Tun, UdpLink};
use inbound::{RawIn, TunOut};
use tx::Gso;

/// Room before an inner packet for SPI, sequence and IV (outer headers are the kernel's).
const HEADROOM: usize = 64;
/// Room after it for padding, trailer and ICV.
const TAILROOM: usize = 64;
/// Largest inner packet read from the TUN.
const MAX_INNER: usize = 9000;
/// Packets drained per source per wake-up: bounds the time any SA reference is held.
pub(crate) const BATCH: usize = 128;
const UDP_BUFFERS: usize = sys::MAX_UDP_READS;
/// A UDP GRO read can hold up to 64 coalesced datagrams: room for 64 full-size ones.
const UDP_BUFFER_LEN: usize = 64 * 1536;
/// Room for one ICMP "fragmentation needed" after the TUN's virtio header.
const ICMP_LEN: usize = 128;

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
    tun_bufs: Vec<Vec<u8>>,
    tun_sizes: [usize; BATCH],
    /// UDP 4500 reads (GRO: several datagrams each).
    udp_bufs: Vec<Vec<u8>>,
    raw_in: RawIn,
    gso: Gso,
    tun_out: TunOut,
    /// An ICMP "fragmentation needed" on its way into the TUN.
    icmp: Vec<u8>,
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

impl<T: Tun + AsFd, U: UdpLink + AsFd, R: RawLink + AsFd> Worker<T, U, R> {
    pub fn run(mut self) {
        let mut ctx = WorkerCtx::new(self.raw.is_some(), self.udp.max_segments());
        while !self.shared.stop.load(Ordering::Acquire) {
            self.wait(&mut ctx.ready);
            self.turn(&mut ctx);
        }
    }

    /// Waits (200 ms at most) until a source is readable or the waker fires, and says which in
    /// `ready` (left as it was if poll fails).
    fn wait(&self, ready: &mut Ready) {
        let mut fds: ArrayVec<BorrowedFd<'_>, 4> = ArrayVec::new();
        fds.extend([self.shared.waker.fd(), self.tun.as_fd(), self.udp.as_fd()]);
        if let Some(r) = &self.raw {
            fds.push(r.as_fd());
        }
        let mut flags = [ready.waker, ready.tun, ready.udp, ready.raw];
        if let Err(e) = sys::wait(&fds, Duration::from_millis(200), &mut flags[..fds.len()]) {
            tracing::warn!(worker = self.id, error = %e, "poll failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let [waker, tun, udp, raw] = flags;
        *ready = Ready { waker, tun, udp, raw };
    }
}

impl<T: Tun, U: UdpLink, R: RawLink> Worker<T, U, R> {
    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.id]
    }

    /// One wake-up's work on the sources `ctx.ready` names: held packets (when the control
    /// plane released them) and the TUN out, the sockets in, then the decrypted packets into
    /// the TUN.
    pub(crate) fn turn(&mut self, ctx: &mut WorkerCtx) {
        let started = Instant::now();
        let c = self.counters();
        c.busy.store(true, Ordering::Release);
        if ctx.ready.waker {
            self.shared.waker.reset();
        }
        let release = self.shared.pending_ready.swap(false, Ordering::AcqRel);
        if ctx.ready.tun || release {
            self.outbound(ctx, release);
        }
        if ctx.ready.udp {
            self.inbound_udp(ctx);
        }
        if self.raw.is_some() && ctx.ready.raw {
            self.inbound_raw(ctx);
        }
        self.flush_tun(&mut ctx.tun_out);
        let c = self.counters();
        bump(&c.busy_ns, started.elapsed().as_nanos() as u64);
        c.busy.store(false, Ordering::Release);
        bump(&c.epoch, 1);
    }
}
