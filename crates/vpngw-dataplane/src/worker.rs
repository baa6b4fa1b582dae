//! One worker: an OS thread pinned to a core, owning one TUN queue, one UDP 4500 socket (in a
//! SO_REUSEPORT group whose BPF program sends each datagram to socket `spi % workers`) and, for
//! raw ESP, one protocol-50 socket filtered to the same share of SPIs: each SA is opened by one
//! worker, and one peer's SAs spread over the workers. Worker 0's UDP socket also gets NAT
//! keepalives and IKE (zero marker); GRO-coalesced reads can still hold other workers' SPIs
//! (see `sys::udp_group`), which any worker opens as well.
//!
//! Per wake-up it drains each readable source in a bounded batch:
//! - TUN -> SPD/SA lookup -> MTU check -> seal (multi-buffer, per run of one SA) -> UDP (GSO)
//!   or raw (one sendmmsg per run);
//! - UDP 4500 -> keepalive | IKE (to the control plane) | ESP -> open -> selectors -> TUN;
//! - raw ESP (recvmmsg, up to 64 packets a call) -> open -> selectors -> TUN.
//!
//! It holds SA references only inside a batch; `busy`/`epoch` let the control plane wait until
//! no worker can still use an SA it removed.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, recvmmsg};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use socket2::Socket;
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};
use vpngw_crypto::FastRng;
use vpngw_esp::{NextHeader, OpenPacket, SealPacket, peek_spi};

use crate::counters::{DropReason, WorkerCounters, bump};
use crate::link::{ETHERNET_LEN, LinkPath};
use crate::packet::{OUTER_IPV4_LEN, icmp_fragmentation_needed, ipv4, write_outer_ipv4};
use crate::sa_table::{InboundMap, Outbound, OutboundEntry};
use crate::sys::IPPROTO_ESP;
use crate::{Shared, ToControl};

/// Room before an inner packet for SPI, sequence and IV (outer headers are the kernel's).
const HEADROOM: usize = 64;
/// Room after it for padding, trailer and ICV.
const TAILROOM: usize = 64;
/// Largest inner packet read from the TUN.
const MAX_INNER: usize = 9000;
/// Packets drained per source per wake-up: bounds the time any SA reference is held.
pub const BATCH: usize = 128;
/// One TUN read yields at most this many segments (a 64 KiB TSO packet of small MSS).
const MAX_SEGMENTS: usize = 64;
/// Decrypted packets gathered for one coalescing write to the TUN.
const TUN_OUT: usize = 64;
const UDP_BUFFERS: usize = 16;
/// A UDP GRO read can hold up to 64 coalesced datagrams: room for 64 full-size ones.
const UDP_BUFFER_LEN: usize = 64 * 1536;
/// A UDP GSO send is one UDP datagram to the kernel first: at most 65507 bytes in all.
const GSO_MAX_BYTES: usize = 65_507;
/// Raw ESP packets read with one recvmmsg call (BATCH still bounds the packets per wake-up).
const RAW_RECV: usize = 64;
/// ESP packets opened per batch call: a UDP GRO read holds at most 64 datagrams.
const ESP_RUN: usize = 64;
/// Room for one raw ESP packet as read: the largest IPv4 packet.
const RAW_LEN: usize = 65536;

pub(crate) struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub tun: SyncDevice,
    pub udp: UdpSocket,
    pub udp_state: UdpSocketState,
    pub raw: Option<Socket>,
    pub rng: FastRng,
    /// Identification field of the last outer IPv4 header this worker wrote (link path).
    pub ip_id: u16,
}

/// ESP-in-UDP packets of one SA gathered for one UDP GSO send: equal-size segments back to
/// back (the last may be shorter), so the kernel sends up to 64 datagrams for one syscall and
/// carries them as one super-packet as far as it can.
struct Gso {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    max: usize,
    /// Inner (plaintext) bytes of the gathered packets, for the counters once sent.
    inner_bytes: u64,
}

impl Gso {
    fn new(max: usize) -> Self {
        Self { buf: Vec::with_capacity(65536), segment: 0, count: 0, max: max.clamp(1, 64), inner_bytes: 0 }
    }
}

/// Decrypted packets waiting for the TUN, each at offset VIRTIO_NET_HDR_LEN in its buffer;
/// written together so that TCP segments of one flow are coalesced (GRO) into one write.
struct TunOut {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunOut {
    fn new() -> Self {
        Self { bufs: (0..TUN_OUT).map(|_| Vec::with_capacity(65536)).collect(), len: 0, gro: GROTable::default() }
    }

    fn push(&mut self, packet: &[u8]) -> bool {
        let Some(b) = self.bufs.get_mut(self.len) else { return false };
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.len += 1;
        true
    }

    fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }
}

/// Raw ESP receiving, allocated once per worker: RAW_RECV buffers of RAW_LEN in one allocation
/// (its pages are touched only where packets land), the headers recvmmsg fills, the lengths.
struct RawIn {
    buf: Vec<u8>,
    headers: MultiHeaders<SockaddrIn>,
    lens: [usize; RAW_RECV],
}

impl RawIn {
    fn new(enabled: bool) -> Self {
        let n = if enabled { RAW_RECV } else { 0 };
        Self { buf: vec![0u8; n * RAW_LEN], headers: MultiHeaders::preallocate(n, None), lens: [0; RAW_RECV] }
    }

    /// Reads up to `want` (at most RAW_RECV) packets with one recvmmsg call, without waiting;
    /// packet `k` is then `buf[k * RAW_LEN..][..lens[k]]`. `None`: nothing to read, or an error.
    fn receive(&mut self, fd: RawFd, want: usize) -> Option<usize> {
        let mut chunks = self.buf.chunks_mut(RAW_LEN);
        let mut iovs: [[IoSliceMut<'_>; 1]; RAW_RECV] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let got = recvmmsg(fd, &mut self.headers, iovs.iter_mut().take(want), MsgFlags::MSG_DONTWAIT, None).ok()?;
        let mut n = 0;
        for (len, m) in self.lens.iter_mut().zip(got) {
            *len = m.bytes;
            n += 1;
        }
        Some(n)
    }
}

/// The sealed raw ESP packets of one SA's run, in order, gathered for one sendmmsg (a run is
/// at most BATCH packets), with each one's inner length for the byte counters.
struct RawRun<'a> {
    iovs: [[IoSlice<'a>; 1]; BATCH],
    inner: [usize; BATCH],
    len: usize,
}

impl<'a> RawRun<'a> {
    fn new() -> Self {
        Self { iovs: [[IoSlice::new(&[])]; BATCH], inner: [0; BATCH], len: 0 }
    }

    fn is_full(&self) -> bool {
        self.len == BATCH
    }

    fn push(&mut self, esp: &'a [u8], inner: usize) {
        self.iovs[self.len] = [IoSlice::new(esp)];
        self.inner[self.len] = inner;
        self.len += 1;
    }
}

impl Worker {
    fn counters(&self) -> &WorkerCounters {
        &self.shared.counters[self.id]
    }

    pub fn run(mut self) {
        let mut tun_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; HEADROOM + MAX_INNER + TAILROOM]).collect();
        let mut tun_sizes = vec![0usize; BATCH];
        let mut tun_raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65536];
        let mut out = TunOut::new();
        let mut udp_bufs: Vec<Vec<u8>> = (0..UDP_BUFFERS).map(|_| vec![0u8; UDP_BUFFER_LEN]).collect();
        let mut raw_in = RawIn::new(self.raw.is_some());
        let mut gso = Gso::new(self.udp_state.max_gso_segments());
        let mut ready = [false; 4];
        while !self.shared.stop.load(Ordering::Acquire) {
            {
                let mut fds = vec![self.shared.waker.fd(), self.tun.as_fd(), self.udp.as_fd()];
                if let Some(r) = &self.raw {
                    fds.push(r.as_fd());
                }
                if let Err(e) = crate::sys::wait(&fds, Duration::from_millis(200), &mut ready[..fds.len()]) {
                    tracing::warn!(worker = self.id, error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let started = Instant::now();
            let c = self.counters();
            c.busy.store(true, Ordering::Release);
            if ready[0] {
                self.shared.waker.reset();
            }
            let release = self.shared.pending_ready.swap(false, Ordering::AcqRel);
            if ready[1] || release {
                self.outbound(&mut tun_raw, &mut tun_bufs, &mut tun_sizes, &mut gso, release);
            }
            if ready[2] {
                self.inbound_udp(&mut udp_bufs, &mut out);
            }
            if self.raw.is_some() && ready[3] {
                self.inbound_raw(&mut raw_in, &mut out);
            }
            self.flush_tun(&mut out);
            let c = self.counters();
            bump(&c.busy_ns, started.elapsed().as_nanos() as u64);
            c.busy.store(false, Ordering::Release);
            bump(&c.epoch, 1);
        }
    }

    // ------------------------------------------------------------------------------------
    // Outbound: TUN -> ESP

    /// Seals what the TUN has; with `release`, first the packets held for SAs being
    /// negotiated (on-traffic start), which are older.
    fn outbound(&mut self, raw: &mut [u8], bufs: &mut [Vec<u8>], sizes: &mut [usize], gso: &mut Gso, release: bool) {
        // One snapshot of the SA table for the batch: no lock, no reference counting per packet.
        let view = self.shared.table.outbound_view();
        let links = self.shared.links.paths.load();
        let mut plan: Vec<(Option<&Arc<OutboundEntry>>, Range<usize>)> = Vec::with_capacity(bufs.len());
        let mut filled = 0;
        if release {
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
                if view.lookup(p.selectors.local.addr, p.selectors.remote.addr).is_none() {
                    continue;
                }
                let mut held = q.len();
                while held > 0 && filled < room {
                    held -= 1;
                    let Some((at, packet)) = q.pop(now, &mut expired) else { break };
                    let Some(slot) = bufs[filled].get_mut(HEADROOM..HEADROOM + packet.len()) else { continue };
                    slot.copy_from_slice(&packet);
                    let range = HEADROOM..HEADROOM + packet.len();
                    sizes[filled] = packet.len();
                    plan.push((self.classify(&view, &bufs[filled][range.clone()], Some(at)), range));
                    filled += 1;
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
        while bufs.len() - filled >= MAX_SEGMENTS {
            let n = match self.tun.recv_multiple(raw, &mut bufs[filled..], &mut sizes[filled..], HEADROOM) {
                Ok(n) => n,
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
                let entry = self.classify(&view, &bufs[k][range.clone()], None);
                plan.push((entry, range));
            }
            filled += n;
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
            let mut packets: Vec<SealPacket<'_>> = bufs[i..j]
                .iter_mut()
                .zip(&plan[i..j])
                .map(|(b, p)| SealPacket::new(b, p.1.clone(), NextHeader::IPV4))
                .collect();
            entry.sa.seal_batch(&mut self.rng, &mut packets);
            let (mut sent_packets, mut sent_bytes) = (0u64, 0u64);
            let remote = entry.transport.remote;
            let link = match remote.ip() {
                IpAddr::V4(ip) if !entry.transport.udp => links.get(&ip).map(|path| (ip, path)),
                _ => None,
            };
            let mut run = RawRun::new();
            let mut link_run = RawRun::new();
            for (p, pl) in packets.iter_mut().zip(&plan[i..j]) {
                match &p.outcome {
                    Some(Ok(sealed)) => {
                        if sealed.rekey_due {
                            (self.shared.to_control)(ToControl::RekeyDue { spi_out: entry.sa.spi() });
                        }
                        let esp = sealed.range.clone();
                        if entry.transport.udp {
                            // Counted when the batch is handed to the kernel, not before.
                            let (n, b) = self.gso_push(gso, remote, &p.buf[esp], pl.1.len());
                            sent_packets += n;
                            sent_bytes += b;
                        } else if let Some((path, frame)) =
                            link.and_then(|(peer, path)| Some((path, self.frame(path, peer, p.buf, esp.clone())?)))
                        {
                            if link_run.is_full() {
                                let (n, b) = self.link_send(path, &mut link_run);
                                sent_packets += n;
                                sent_bytes += b;
                            }
                            link_run.push(&p.buf[frame], pl.1.len());
                        } else {
                            if run.is_full() {
                                let (n, b) = self.raw_send(remote, &mut run);
                                sent_packets += n;
                                sent_bytes += b;
                            }
                            run.push(&p.buf[esp], pl.1.len());
                        }
                    }
                    _ => self.counters().drop(DropReason::Seal),
                }
            }
            if entry.transport.udp {
                let (n, b) = self.gso_flush(gso, remote);
                sent_packets += n;
                sent_bytes += b;
            } else {
                if let Some((_, path)) = link {
                    let (n, b) = self.link_send(path, &mut link_run);
                    sent_packets += n;
                    sent_bytes += b;
                }
                let (n, b) = self.raw_send(remote, &mut run);
                sent_packets += n;
                sent_bytes += b;
            }
            entry.counters.packets.fetch_add(sent_packets, Ordering::Relaxed);
            entry.counters.bytes.fetch_add(sent_bytes, Ordering::Relaxed);
            bump(&self.counters().out_packets, sent_packets);
            bump(&self.counters().out_bytes, sent_bytes);
            i = j;
        }
    }

    /// Which SA must seal this packet; `None` if it is held for an SA being negotiated or
    /// dropped (and counted) instead. `held_since`: when a packet coming out of a pending
    /// queue first arrived.
    fn classify<'v>(
        &self,
        view: &'v Outbound,
        packet: &[u8],
        held_since: Option<Instant>,
    ) -> Option<&'v Arc<OutboundEntry>> {
        let Some(info) = ipv4(packet) else {
            self.counters().drop(DropReason::NotIpv4);
            return None;
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
                            (self.shared.to_control)(ToControl::Acquire { connection: policy.connection.clone() });
                        }
                    }
                    None => self.counters().drop(DropReason::NoSa),
                },
                None => self.counters().drop(DropReason::NoPolicy),
            }
            return None;
        };
        let overhead = if entry.transport.udp { 28 } else { 20 } + entry.sa.header_len() + entry.sa.max_trailer_len();
        let max_inner = usize::from(self.shared.path_mtu).saturating_sub(overhead);
        if info.total_len > max_inner && info.dont_fragment {
            // Path MTU discovery through the tunnel: tell the sender what fits.
            let from = first_host(entry.selectors.remote.addr, entry.selectors.remote.prefix);
            let mut icmp = vec![0u8; VIRTIO_NET_HDR_LEN + 128];
            if let Some(n) =
                icmp_fragmentation_needed(packet, &info, from, max_inner as u16, &mut icmp[VIRTIO_NET_HDR_LEN..])
            {
                icmp.truncate(VIRTIO_NET_HDR_LEN + n);
                let _ = self.tun.send_multiple(&mut GROTable::default(), &mut [icmp], VIRTIO_NET_HDR_LEN);
            }
            self.counters().drop(DropReason::TooBig);
            return None;
        }
        Some(entry)
    }

    /// Adds one ESP packet to the GSO batch for `dst` (one SA's run: always the same
    /// destination), sending the batch first when this packet cannot join it.
    fn gso_push(&self, gso: &mut Gso, dst: SocketAddr, esp: &[u8], inner_len: usize) -> (u64, u64) {
        let mut sent = (0, 0);
        if gso.count > 0
            && (esp.len() > gso.segment || gso.count == gso.max || gso.buf.len() + esp.len() > GSO_MAX_BYTES)
        {
            sent = self.gso_flush(gso, dst);
        }
        if gso.count == 0 {
            gso.segment = esp.len();
        }
        gso.buf.extend_from_slice(esp);
        gso.count += 1;
        gso.inner_bytes += inner_len as u64;
        // A shorter packet can only end a GSO batch.
        if esp.len() < gso.segment {
            let (n, b) = self.gso_flush(gso, dst);
            sent = (sent.0 + n, sent.1 + b);
        }
        sent
    }

    /// Sends the gathered batch; returns the packets and inner bytes sent (none if the send
    /// failed: then each counts as a `Send` drop instead).
    fn gso_flush(&self, gso: &mut Gso, dst: SocketAddr) -> (u64, u64) {
        if gso.count == 0 {
            return (0, 0);
        }
        let t = Transmit {
            destination: dst,
            ecn: None,
            contents: &gso.buf,
            segment_size: (gso.count > 1).then_some(gso.segment),
            src_ip: None,
        };
        let sent = if self.udp_state.send(UdpSockRef::from(&self.udp), &t).is_ok() {
            (gso.count as u64, gso.inner_bytes)
        } else {
            self.counters().drop_n(DropReason::Send, gso.count as u64);
            (0, 0)
        };
        gso.buf.clear();
        gso.count = 0;
        gso.inner_bytes = 0;
        sent
    }

    /// Writes the Ethernet and outer IPv4 headers of the link path before the ESP packet at
    /// `esp` in `buf` (in the headroom); returns the frame's range. `None` if the packet is too
    /// big for the link (the raw IP socket sends it, fragmenting if it must) or the headroom is
    /// short (never with HEADROOM 64: ESP's header and IV take at most 24 bytes of it).
    fn frame(&mut self, path: &LinkPath, peer: Ipv4Addr, buf: &mut [u8], esp: Range<usize>) -> Option<Range<usize>> {
        let total = u16::try_from(esp.len() + OUTER_IPV4_LEN).ok().filter(|&t| t <= path.hop.mtu)?;
        let start = esp.start.checked_sub(ETHERNET_LEN + OUTER_IPV4_LEN)?;
        let (ethernet, ip) = buf.get_mut(start..esp.start)?.split_at_mut(ETHERNET_LEN);
        ethernet.copy_from_slice(&path.ethernet);
        let ip: &mut [u8; OUTER_IPV4_LEN] = ip.try_into().ok()?;
        self.ip_id = self.ip_id.wrapping_add(1);
        write_outer_ipv4(ip, self.shared.public_address, peer, total, self.ip_id, IPPROTO_ESP as u8);
        Some(start..esp.end)
    }

    /// Sends the gathered frames of one SA's run through its link path, in order, and empties
    /// the run; as [`Self::raw_send`] otherwise.
    fn link_send(&self, path: &LinkPath, run: &mut RawRun<'_>) -> (u64, u64) {
        let (packets, bytes) = self.send_run(&path.socket, None, run);
        bump(&self.counters().out_link_packets, packets);
        (packets, bytes)
    }

    /// Sends the gathered raw ESP packets of one SA's run to `remote` through the raw IP socket,
    /// in order, and empties the run. Returns the packets and inner bytes sent; every packet not
    /// sent counts as a `Send` drop.
    fn raw_send(&self, remote: SocketAddr, run: &mut RawRun<'_>) -> (u64, u64) {
        let (Some(raw), IpAddr::V4(ip)) = (&self.raw, remote.ip()) else {
            // Raw ESP not enabled, or not an IPv4 peer: nothing of this run can be sent.
            let n = std::mem::replace(&mut run.len, 0);
            self.counters().drop_n(DropReason::Send, n as u64);
            return (0, 0);
        };
        let to = SocketAddrAny::from(SocketAddrV4::new(ip, 0));
        self.send_run(raw, Some(&to), run)
    }

    /// Sends a run with as few sendmmsg calls as the kernel allows (see [`send_batched`]), to
    /// `to` or, without it, where the socket is bound; empties the run.
    fn send_run(&self, socket: &Socket, to: Option<&SocketAddrAny>, run: &mut RawRun<'_>) -> (u64, u64) {
        let n = std::mem::replace(&mut run.len, 0);
        if n == 0 {
            return (0, 0);
        }
        let (mut packets, mut bytes) = (0u64, 0u64);
        let dropped = send_batched(
            n,
            |rest| {
                // rustix's sendmmsg returns the count it sent. (nix's only tells it through a
                // results iterator that reads a never-written address: undefined behaviour.)
                let mut controls: ArrayVec<SendAncillaryBuffer<'_, '_, '_>, BATCH> =
                    rest.clone().map(|_| SendAncillaryBuffer::default()).collect();
                let mut messages: ArrayVec<MMsgHdr<'_>, BATCH> = run.iovs[rest]
                    .iter()
                    .zip(controls.iter_mut())
                    .map(|(iov, control)| match to {
                        Some(to) => MMsgHdr::new_with_addr(to, iov, control),
                        None => MMsgHdr::new(iov, control),
                    })
                    .collect();
                sendmmsg(socket, &mut messages, SendFlags::empty()).map_err(|e| Errno::from_raw(e.raw_os_error()))
            },
            |sent| {
                packets += sent.len() as u64;
                bytes += run.inner[sent].iter().sum::<usize>() as u64;
            },
        );
        self.counters().drop_n(DropReason::Send, dropped);
        (packets, bytes)
    }

    // ------------------------------------------------------------------------------------
    // Inbound: ESP -> TUN

    fn inbound_udp(&mut self, bufs: &mut [Vec<u8>], out: &mut TunOut) {
        let mut meta = [RecvMeta::default(); UDP_BUFFERS];
        let n = {
            let mut iovs: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match self.udp_state.recv(UdpSockRef::from(&self.udp), &mut iovs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(worker = self.id, error = %e, "UDP receive failed");
                    return;
                }
            }
        };
        let view = self.shared.table.inbound_view();
        for (buf, m) in bufs.iter_mut().zip(&meta).take(n) {
            // The datagrams of one GRO read (`stride` apart, the last maybe shorter): ESP is
            // gathered and opened in batches, keepalives and IKE are handled on the spot.
            let mut esp: ArrayVec<&mut [u8], ESP_RUN> = ArrayVec::new();
            let len = m.len.min(buf.len());
            for data in buf[..len].chunks_mut(m.stride.max(1)) {
                match data {
                    [0xff] => bump(&self.counters().keepalives, 1),
                    [0, 0, 0, 0, ike @ ..] if !ike.is_empty() => {
                        bump(&self.counters().ike_forwarded, 1);
                        (self.shared.to_control)(ToControl::Ike { from: m.addr, data: ike.to_vec() });
                    }
                    packet => {
                        if esp.is_full() {
                            self.open_esp(&view, &mut esp, out);
                            esp.clear();
                        }
                        esp.push(packet);
                    }
                }
            }
            self.open_esp(&view, &mut esp, out);
        }
    }

    /// Reads raw ESP packets, up to RAW_RECV per recvmmsg call and BATCH per wake-up, and
    /// opens each (the kernel hands them over with their IPv4 header).
    fn inbound_raw(&mut self, rin: &mut RawIn, out: &mut TunOut) {
        let Some(fd) = self.raw.as_ref().map(|r| r.as_raw_fd()) else { return };
        let view = self.shared.table.inbound_view();
        let mut done = 0;
        while done < BATCH {
            let want = (BATCH - done).min(RAW_RECV);
            let Some(n) = rin.receive(fd, want) else { return };
            let mut esp: ArrayVec<&mut [u8], ESP_RUN> = ArrayVec::new();
            for (buf, &len) in rin.buf.chunks_mut(RAW_LEN).zip(&rin.lens).take(n) {
                let packet = &mut buf[..len.min(RAW_LEN)];
                match ipv4(packet) {
                    Some(info) if info.protocol == 50 => {
                        let (hl, tl) = (info.header_len, info.total_len);
                        if esp.is_full() {
                            self.open_esp(&view, &mut esp, out);
                            esp.clear();
                        }
                        esp.push(&mut packet[hl..tl]);
                    }
                    _ => self.counters().drop(DropReason::Malformed),
                }
            }
            self.open_esp(&view, &mut esp, out);
            done += n;
            if n < want {
                // Drained (poll tells when more arrive).
                return;
            }
        }
    }

    /// Opens received ESP packets: each run of one SPI as a batch (its ICVs checked together,
    /// see `InboundSa::open_batch`), then checks each inner packet against the SA's selectors
    /// and queues it for the TUN.
    fn open_esp(&self, view: &InboundMap, packets: &mut [&mut [u8]], out: &mut TunOut) {
        let mut i = 0;
        while i < packets.len() {
            let Some(spi) = peek_spi(packets[i]) else {
                self.counters().drop(DropReason::Malformed);
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < packets.len() && peek_spi(packets[j]) == Some(spi) {
                j += 1;
            }
            let run = &mut packets[i..j];
            i = j;
            let Some(entry) = view.get(&spi) else {
                self.counters().drop_n(DropReason::UnknownSpi, run.len() as u64);
                continue;
            };
            let mut batch: ArrayVec<OpenPacket<'_>, ESP_RUN> = run.iter_mut().map(|p| OpenPacket::new(p)).collect();
            entry.sa.open_batch(&mut batch);
            for p in batch {
                let opened = match p.outcome {
                    Some(Ok(o)) => o,
                    Some(Err(e)) => {
                        entry.counters.drop(e);
                        self.counters().drop(DropReason::Esp(e));
                        continue;
                    }
                    None => continue,
                };
                let inner = &p.buf[opened.payload];
                // The decrypted packet must belong to this SA's traffic (RFC 4301 s.5.2).
                let allowed = ipv4(inner)
                    .is_some_and(|i| entry.selectors.remote.contains(i.src) && entry.selectors.local.contains(i.dst));
                if !allowed {
                    self.counters().drop(DropReason::Policy);
                    continue;
                }
                if out.is_full() {
                    self.flush_tun(out);
                }
                if !out.push(inner) {
                    self.counters().drop(DropReason::Send);
                    continue;
                }
                entry.counters.add(inner.len());
                bump(&self.counters().in_packets, 1);
                bump(&self.counters().in_bytes, inner.len() as u64);
            }
        }
    }
}

impl Worker {
    /// Writes the gathered decrypted packets to the TUN, coalescing TCP segments.
    fn flush_tun(&self, out: &mut TunOut) {
        if out.len == 0 {
            return;
        }
        if let Err(e) = self.tun.send_multiple(&mut out.gro, &mut out.bufs[..out.len], VIRTIO_NET_HDR_LEN) {
            tracing::debug!(worker = self.id, error = %e, "TUN write failed");
            self.counters().drop(DropReason::Send);
        }
        out.len = 0;
    }
}

/// Sends packets `0..n` in order with `send`, which sends a prefix of the range it is given and
/// returns its length (sendmmsg: it may send fewer than asked, then the rest goes in the next
/// call); `sent` is told each range that went out. A full socket buffer or queue (EAGAIN,
/// ENOBUFS) gives up on what is left; any other error drops the one packet it refused (as one
/// send_to per packet did) and the rest is tried. Returns how many packets were dropped.
fn send_batched(
    n: usize,
    mut send: impl FnMut(Range<usize>) -> Result<usize, Errno>,
    mut sent: impl FnMut(Range<usize>),
) -> u64 {
    let mut dropped = 0;
    let mut at = 0;
    while at < n {
        match send(at..n) {
            Ok(k) if k > 0 => {
                let k = k.min(n - at);
                sent(at..at + k);
                at += k;
            }
            Err(Errno::EAGAIN | Errno::ENOBUFS) => {
                dropped += (n - at) as u64;
                break;
            }
            _ => {
                dropped += 1;
                at += 1;
            }
        }
    }
    dropped
}

/// The first host address of a network (the source of our ICMP messages, so that they arrive
/// on the TUN from where the tunnel's traffic comes).
fn first_host(net: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    if prefix >= 31 { net } else { Ipv4Addr::from(u32::from(net) + 1) }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // vectors of ranges: the calls made, the ranges sent
mod tests {
    use super::*;

    /// Runs `send_batched` over `n` packets against scripted sendmmsg answers; returns the
    /// ranges each call was given, the ranges sent and the drop count.
    fn script(n: usize, answers: &[Result<usize, Errno>]) -> (Vec<Range<usize>>, Vec<Range<usize>>, u64) {
        let mut answers = answers.iter();
        let (mut asked, mut sent) = (Vec::new(), Vec::new());
        let dropped = send_batched(
            n,
            |rest| {
                asked.push(rest);
                *answers.next().expect("more calls than scripted")
            },
            |r| sent.push(r),
        );
        (asked, sent, dropped)
    }

    #[test]
    fn one_call_sends_everything() {
        assert_eq!(script(5, &[Ok(5)]), (vec![0..5], vec![0..5], 0));
        assert_eq!(script(0, &[]), (vec![], vec![], 0));
    }

    #[test]
    fn partial_sends_continue_with_the_rest() {
        assert_eq!(script(10, &[Ok(3), Ok(4), Ok(3)]), (vec![0..10, 3..10, 7..10], vec![0..3, 3..7, 7..10], 0));
    }

    #[test]
    fn a_full_buffer_drops_what_is_left() {
        assert_eq!(script(10, &[Ok(4), Err(Errno::EAGAIN)]), (vec![0..10, 4..10], vec![0..4], 6));
        assert_eq!(script(10, &[Err(Errno::ENOBUFS)]), (vec![0..10], vec![], 10));
    }

    #[test]
    fn other_errors_drop_one_packet_and_go_on() {
        // A partial send whose next packet failed: the kernel reports that error on the next call.
        let (asked, sent, dropped) = script(6, &[Ok(2), Err(Errno::EMSGSIZE), Ok(3)]);
        assert_eq!(asked, vec![0..6, 2..6, 3..6]);
        assert_eq!(sent, vec![0..2, 3..6]);
        assert_eq!(dropped, 1);
        // Every packet refused: each dropped once, no endless loop (nor on a 0 answer).
        assert_eq!(script(3, &[Err(Errno::EPERM), Ok(0), Err(Errno::EHOSTUNREACH)]).2, 3);
    }
}
