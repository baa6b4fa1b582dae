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
//!
//! Beside the stages: `base.rs` (the [`Worker`], the batch and buffer sizes: what every file
//! uses) and `ctx.rs` (the scratch, with the inbound stage's buffers; the transmit stage's
//! `Gso` is in `tx.rs`); this file runs the loop.

mod base;
mod ctx;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
mod tx;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;

use crate::counters::{WorkerCounters, bump};
use crate::sys::{self, RawLink, Tun, UdpLink};
pub(crate) use base::Worker;
use ctx::{Ready, WorkerCtx};

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
