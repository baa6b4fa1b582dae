//! The outbound stage: plaintext from the TUN (first, when released, the packets held for SAs
//! being negotiated) -> classify (the SA table, longest prefix; on a miss the SPD: hold,
//! acquire or drop) -> ICMP "fragmentation needed" for a packet too big for its tunnel -> the
//! MSS of TCP SYNs clamped ([`crate::mss`]) -> seal, each run of one SA as one batch
//! (multi-buffer CBC) -> its transport ([`super::tx`]).

use std::io;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use tun_rs::VIRTIO_NET_HDR_LEN;
use vpngw_esp::{NextHeader, SealPacket};

use super::base::{BATCH, HEADROOM, ICMP_LEN, Worker};
use super::ctx::WorkerCtx;
use crate::counters::{DropReason, bump};
use crate::mss::{MssClamp, clamp_tcp_header, tcp_syn_header};
use crate::packet::{Ipv4Info, icmp_fragmentation_needed, ipv4};
use crate::sa_table::{Outbound, OutboundEntry};
use crate::shared::ToControl;
use crate::sys::{RawLink, Tun, UdpLink};

/// One TUN read yields at most this many segments (a 64 KiB TSO packet of small MSS).
const MAX_SEGMENTS: usize = 64;

/// Each packet of the batch in order: the SA that seals it (`None`: held or dropped), and
/// where it is in its buffer.
type Plan<'v> = ArrayVec<(Option<&'v Arc<OutboundEntry>>, Range<usize>), BATCH>;

/// What classifying a packet decided.
enum Verdict<'v> {
    /// Seal it with this SA.
    Seal(&'v Arc<OutboundEntry>),
    /// It does not fit this SA's tunnel and has DF set: the sender must learn what fits,
    /// `max_inner` bytes.
    TooBig { entry: &'v Arc<OutboundEntry>, info: Ipv4Info, max_inner: usize },
    /// Held for an SA being negotiated, or dropped (and counted).
    Done,
}

impl<T: Tun, U: UdpLink, R: RawLink> Worker<T, U, R> {
    /// Seals what the TUN has; with `release`, first the packets held for SAs being
    /// negotiated (on-traffic start), which are older.
    pub(super) fn outbound(&mut self, ctx: &mut WorkerCtx, release: bool) {
        // One snapshot of the SA table for the batch: no lock, no reference counting per packet.
        let view = self.shared.table.outbound_view();
        let links = self.shared.links.paths.load();
        let WorkerCtx { tun_bufs: bufs, tun_sizes: sizes, gso, icmp, .. } = ctx;
        let mut plan = Plan::new();
        if release {
            self.release_held(&view, bufs, sizes, icmp, &mut plan);
        }
        while bufs.len() - plan.len() >= MAX_SEGMENTS {
            let filled = plan.len();
            let n = match self.tun.recv_batch(&mut bufs[filled..], &mut sizes[filled..], HEADROOM) {
                Ok(n) => n.min(bufs.len() - filled),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // A vanished device (namespace deleted, interface removed) reads as an error
                    // forever: pause instead of spinning.
                    tracing::warn!(worker = self.id, error = %e, "TUN read failed");
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            for k in filled..filled + n {
                let range = HEADROOM..HEADROOM + sizes[k];
                let entry = self.admit(&view, &bufs[k][range.clone()], None, icmp);
                plan.push((entry, range));
            }
        }
        // Seal runs of packets of one SA together (multi-buffer CBC), then send them: ESP in UDP
        // in GSO batches, raw ESP with one sendmmsg for the run.
        let mut i = 0;
        while i < plan.len() {
            let Some(entry) = plan[i].0 else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < plan.len() && plan[j].0.is_some_and(|e| Arc::ptr_eq(e, entry)) {
                j += 1;
            }
            let mut packets: ArrayVec<SealPacket<'_>, BATCH> = bufs[i..j]
                .iter_mut()
                .zip(&plan[i..j])
                .map(|(b, p)| {
                    if let Some(packet) = b.get_mut(p.1.clone()) {
                        self.clamp_mss(entry, packet);
                    }
                    SealPacket::new(b, p.1.clone(), NextHeader::IPV4)
                })
                .collect();
            entry.sa.seal_batch(&mut self.rng, &mut packets);
            let sent = self.transmit_run(entry, &links, &mut packets, gso);
            entry.counters.packets.fetch_add(sent.packets, Ordering::Relaxed);
            entry.counters.bytes.fetch_add(sent.bytes, Ordering::Relaxed);
            bump(&self.counters().out_packets, sent.packets);
            bump(&self.counters().out_bytes, sent.bytes);
            i = j;
        }
    }

    /// Fills the batch with the packets held for policies that have an SA now, into the first
    /// buffers; `plan` gets one entry per packet.
    fn release_held<'v>(
        &mut self,
        view: &'v Outbound,
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        icmp: &mut Vec<u8>,
        plan: &mut Plan<'v>,
    ) {
        let now = Instant::now();
        let spd = self.shared.spd.load();
        let mut expired = 0;
        // Only the queues of policies that have an SA now are drained (the others keep
        // waiting, untouched: nothing circles here), each at most by what it held when we
        // looked; room is left for one TUN read, so held packets never starve the TUN.
        let room = bufs.len() - MAX_SEGMENTS;
        let mut more = false;
        for p in spd.policies() {
            let Some(q) = p.pending.as_ref().filter(|q| !q.is_empty()) else { continue };
            if view.lookup(p.selectors.local.network(), p.selectors.remote.network()).is_none() {
                continue;
            }
            let mut held = q.len();
            while held > 0 && plan.len() < room {
                held -= 1;
                let Some((at, packet)) = q.pop(now, &mut expired) else { break };
                let filled = plan.len();
                let range = HEADROOM..HEADROOM + packet.len();
                let Some(slot) = bufs[filled].get_mut(range.clone()) else { continue };
                slot.copy_from_slice(&packet);
                sizes[filled] = packet.len();
                let entry = self.admit(view, &bufs[filled][range.clone()], Some(at), icmp);
                plan.push((entry, range));
            }
            if held > 0 {
                more = true;
                break;
            }
        }
        if more {
            // The batch is full: the rest next round.
            self.shared.pending_ready.store(true, Ordering::Release);
            self.shared.waker.wake();
        }
        self.counters().drop_n(DropReason::PendingExpired, expired);
    }

    /// Classifies one packet and, if it is too big for its tunnel, answers the sender: the SA
    /// that must seal it, if any.
    fn admit<'v>(
        &mut self,
        view: &'v Outbound,
        packet: &[u8],
        held_since: Option<Instant>,
        icmp: &mut Vec<u8>,
    ) -> Option<&'v Arc<OutboundEntry>> {
        match self.classify(view, packet, held_since) {
            Verdict::Seal(entry) => Some(entry),
            Verdict::TooBig { entry, info, max_inner } => {
                self.fragmentation_needed(entry, packet, &info, max_inner, icmp);
                None
            }
            Verdict::Done => None,
        }
    }

    /// Which SA must seal this packet, or whether it is too big for it; held or dropped (and
    /// counted) otherwise. `held_since`: when a packet coming out of a pending queue first
    /// arrived.
    fn classify<'v>(&self, view: &'v Outbound, packet: &[u8], held_since: Option<Instant>) -> Verdict<'v> {
        let Some(info) = ipv4(packet) else {
            self.counters().drop(DropReason::NotIpv4);
            return Verdict::Done;
        };
        let Some(entry) = view.lookup(info.src, info.dst) else {
            match self.shared.spd.load().lookup(info.src, info.dst) {
                Some(policy) => match &policy.pending {
                    Some(queue) => {
                        let now = Instant::now();
                        let held = queue.push(held_since.unwrap_or(now), packet);
                        if held.displaced {
                            let why =
                                if held.displaced_expired { DropReason::PendingExpired } else { DropReason::NoSa };
                            self.counters().drop(why);
                        }
                        if queue.acquire_due(now) {
                            let acquire = ToControl::Acquire { connection: policy.connection.clone() };
                            if !(self.shared.to_control)(acquire) {
                                self.counters().drop(DropReason::ControlQueueFull);
                            }
                        }
                    }
                    None => self.counters().drop(DropReason::NoSa),
                },
                None => self.counters().drop(DropReason::NoPolicy),
            }
            return Verdict::Done;
        };
        let overhead = if entry.transport.udp { 28 } else { 20 } + entry.sa.header_len() + entry.sa.max_trailer_len();
        let max_inner = usize::from(self.shared.path_mtu).saturating_sub(overhead);
        if info.total_len > max_inner && info.dont_fragment {
            return Verdict::TooBig { entry, info, max_inner };
        }
        Verdict::Seal(entry)
    }

    /// Lowers the MSS of a TCP SYN about to be sealed with `entry` to what its tunnel carries
    /// (see [`crate::mss`]); counted. Every other packet costs a look at its protocol and flags.
    pub(super) fn clamp_mss(&self, entry: &OutboundEntry, packet: &mut [u8]) {
        if self.shared.tcp_mss_clamp == MssClamp::Off {
            return;
        }
        let Some((tcp_start, tcp_len)) = tcp_syn_header(packet) else { return };
        let limit = self.shared.tcp_mss_clamp.limit(
            self.shared.tun_mtu,
            self.shared.path_mtu,
            entry.transport.udp,
            entry.sa.header_len(),
            entry.sa.max_trailer_len(),
        );
        if let Some(limit) = limit
            && clamp_tcp_header(packet, tcp_start, tcp_len, limit)
        {
            bump(&self.counters().mss_clamped, 1);
        }
    }

    /// Path MTU discovery through the tunnel: writes ICMP "fragmentation needed" (announcing
    /// `max_inner`) to the sender of `packet` into the TUN, and drops the packet as `too_big`.
    fn fragmentation_needed(
        &mut self,
        entry: &OutboundEntry,
        packet: &[u8],
        info: &Ipv4Info,
        max_inner: usize,
        icmp: &mut Vec<u8>,
    ) {
        let from = first_host(entry.selectors.remote.network(), entry.selectors.remote.prefix_len());
        icmp.clear();
        icmp.resize(VIRTIO_NET_HDR_LEN + ICMP_LEN, 0);
        if let Some(n) =
            icmp_fragmentation_needed(packet, info, from, max_inner as u16, &mut icmp[VIRTIO_NET_HDR_LEN..])
        {
            icmp.truncate(VIRTIO_NET_HDR_LEN + n);
            let _ = self.tun.send_batch(std::slice::from_mut(icmp), VIRTIO_NET_HDR_LEN);
        }
        self.counters().drop(DropReason::TooBig);
    }
}

/// The first host address of a network (the source of our ICMP messages, so that they arrive
/// on the TUN from where the tunnel's traffic comes).
fn first_host(net: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    if prefix >= 31 { net } else { Ipv4Addr::from(u32::from(net) + 1) }
}
