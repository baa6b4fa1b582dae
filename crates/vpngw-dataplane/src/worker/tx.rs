//! The transmit stage: where one SA's run of sealed packets leaves, decided once per run
//! ([`Tx`]): ESP in UDP gathered into GSO sends, raw ESP through the peer's link path (own
//! Ethernet and IPv4 headers; a packet too big for the link takes the raw IP socket), or raw
//! ESP through the raw IP socket, each raw run with as few sendmmsg calls as the kernel allows.

use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{AddAssign, Range};

use arrayvec::ArrayVec;
use nix::errno::Errno;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use vpngw_esp::SealPacket;

use super::base::{BATCH, Worker};
use crate::counters::{DropReason, WorkerCounters, bump};
use crate::link::{ETHERNET_LEN, LinkPath};
use crate::packet::{OUTER_IPV4_LEN, write_outer_ipv4};
use crate::sa_table::{OutboundEntry, Transport};
use crate::shared::ToControl;
use crate::sys::{self, IPPROTO_ESP, RawLink, Tun, UdpLink};

/// A UDP GSO send is one UDP datagram to the kernel first: at most 65507 bytes in all.
const GSO_MAX_BYTES: usize = 65_507;

/// Packets and inner (plaintext) bytes handed to the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Sent {
    pub packets: u64,
    pub bytes: u64,
}

impl AddAssign for Sent {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// ESP-in-UDP packets of one SA gathered for one UDP GSO send: equal-size segments back to
/// back (the last may be shorter), so the kernel sends up to 64 datagrams for one syscall and
/// carries them as one super-packet as far as it can.
pub(super) struct Gso {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    max: usize,
    /// Inner (plaintext) bytes of the gathered packets, for the counters once sent.
    inner_bytes: u64,
}

impl Gso {
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::with_capacity(65536), segment: 0, count: 0, max: max.clamp(1, 64), inner_bytes: 0 }
    }
}

/// The sealed raw ESP packets (or link-path frames) of one SA's run, in order, gathered for one
/// sendmmsg (a run is at most BATCH packets), with each one's inner length for the counters.
/// Starts empty and uninitialised: a run costs nothing for the slots it does not fill (as
/// arrays, every run wrote 3 KB of empty slots per `RawRun`, twice for a link path).
struct RawRun<'b> {
    iovs: ArrayVec<IoSlice<'b>, BATCH>,
    inner: ArrayVec<usize, BATCH>,
}

impl<'b> RawRun<'b> {
    fn new() -> Self {
        Self { iovs: ArrayVec::new(), inner: ArrayVec::new() }
    }

    fn is_full(&self) -> bool {
        self.iovs.is_full()
    }

    fn push(&mut self, packet: &'b [u8], inner: usize) {
        self.iovs.push(IoSlice::new(packet));
        self.inner.push(inner);
    }

    /// Empties the run; returns how many packets it held.
    fn take_len(&mut self) -> usize {
        let n = self.iovs.len();
        self.iovs.clear();
        self.inner.clear();
        n
    }
}

/// How one SA's run leaves: chosen once per run, from the SA's transport and the link paths.
// Lives on the stack for one run, built in place and never moved (`finish` borrows it); boxing
// the raw runs would allocate per run, and their 6 KB stay uninitialised until filled.
#[allow(clippy::large_enum_variant)]
enum Tx<'p, 'b> {
    /// ESP in UDP to `to`, gathered in the worker's GSO batch.
    Udp { to: SocketAddr },
    /// Raw ESP through `peer`'s link path; packets too big for the link go in `fallback`, for
    /// the raw IP socket.
    Link { peer: Ipv4Addr, path: &'p LinkPath, frames: RawRun<'b>, fallback: RawRun<'b> },
    /// Raw ESP through the raw IP socket (`None`: not an IPv4 peer, nothing can be sent).
    Raw { to: Option<Ipv4Addr>, run: RawRun<'b> },
}

impl<'p, 'b> Tx<'p, 'b> {
    fn for_run(transport: &Transport, links: &'p FxHashMap<Ipv4Addr, Arc<LinkPath>>) -> Self {
        let peer = match transport.remote.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        };
        if transport.udp {
            return Self::Udp { to: transport.remote };
        }
        match peer.and_then(|ip| Some((ip, links.get(&ip)?))) {
            Some((peer, path)) => Self::Link { peer, path, frames: RawRun::new(), fallback: RawRun::new() },
            None => Self::Raw { to: peer, run: RawRun::new() },
        }
    }
}

impl<T: Tun, U: UdpLink, R: RawLink> Worker<T, U, R> {
    /// Sends one SA's run of sealed packets through its transport (a rekey hint to the control
    /// plane for each packet past the soft limit; a packet that could not be sealed is a `seal`
    /// drop). Returns what went out. The run is borrowed, not moved: by value, its up to
    /// BATCH `SealPacket`s (9 KB) were copied into this call and again into its iterator.
    pub(super) fn transmit_run(
        &mut self,
        entry: &OutboundEntry,
        links: &FxHashMap<Ipv4Addr, Arc<LinkPath>>,
        packets: &mut [SealPacket<'_>],
        gso: &mut Gso,
    ) -> Sent {
        let mut tx = Tx::for_run(&entry.transport, links);
        let mut sent = Sent::default();
        for p in packets.iter_mut() {
            match &p.outcome {
                Some(Ok(sealed)) => {
                    if sealed.rekey_due && !(self.shared.to_control)(ToControl::RekeyDue { spi_out: entry.sa.spi() }) {
                        self.counters().drop(DropReason::ControlQueueFull);
                    }
                    let (esp, inner) = (sealed.range.clone(), p.payload.len());
                    // Counted when the batch is handed to the kernel, not before.
                    sent += self.push(&mut tx, gso, &mut *p.buf, esp, inner);
                }
                _ => self.counters().drop(DropReason::Seal),
            }
        }
        sent += self.finish(&mut tx, gso);
        sent
    }

    /// Adds one sealed packet (ESP at `esp` in `buf`) to the run, sending what was gathered
    /// first when it is full.
    fn push<'b>(
        &mut self,
        tx: &mut Tx<'_, 'b>,
        gso: &mut Gso,
        buf: &'b mut [u8],
        esp: Range<usize>,
        inner: usize,
    ) -> Sent {
        let mut sent = Sent::default();
        match tx {
            Tx::Udp { to } => sent += self.gso_push(gso, *to, &buf[esp], inner),
            Tx::Link { peer, path, frames, fallback } => match self.frame(path, *peer, buf, esp.clone()) {
                Some(frame) => {
                    let buf: &'b [u8] = buf;
                    if frames.is_full() {
                        sent += self.link_send(path, frames);
                    }
                    frames.push(&buf[frame], inner);
                }
                None => {
                    let buf: &'b [u8] = buf;
                    if fallback.is_full() {
                        sent += self.raw_send(Some(*peer), fallback);
                    }
                    fallback.push(&buf[esp], inner);
                }
            },
            Tx::Raw { to, run } => {
                let buf: &'b [u8] = buf;
                if run.is_full() {
                    sent += self.raw_send(*to, run);
                }
                run.push(&buf[esp], inner);
            }
        }
        sent
    }

    /// Sends what the run still holds.
    fn finish(&mut self, tx: &mut Tx<'_, '_>, gso: &mut Gso) -> Sent {
        match tx {
            Tx::Udp { to } => self.gso_flush(gso, *to),
            Tx::Link { peer, path, frames, fallback } => {
                let mut sent = self.link_send(path, frames);
                sent += self.raw_send(Some(*peer), fallback);
                sent
            }
            Tx::Raw { to, run } => self.raw_send(*to, run),
        }
    }

    /// Adds one ESP packet to the GSO batch for `dst` (one SA's run: always the same
    /// destination), sending the batch first when this packet cannot join it.
    fn gso_push(&mut self, gso: &mut Gso, dst: SocketAddr, esp: &[u8], inner_len: usize) -> Sent {
        let mut sent = Sent::default();
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
            sent += self.gso_flush(gso, dst);
        }
        sent
    }

    /// Sends the gathered batch; returns what was sent (nothing if the send failed: then each
    /// packet counts as a `Send` drop instead).
    fn gso_flush(&mut self, gso: &mut Gso, dst: SocketAddr) -> Sent {
        if gso.count == 0 {
            return Sent::default();
        }
        let segment_size = (gso.count > 1).then_some(gso.segment);
        let sent = if self.udp.send_batch(dst, &gso.buf, segment_size).is_ok() {
            Sent { packets: gso.count as u64, bytes: gso.inner_bytes }
        } else {
            self.counters().drop_n(DropReason::Send, gso.count as u64);
            Sent::default()
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
    fn link_send(&self, path: &LinkPath, run: &mut RawRun<'_>) -> Sent {
        let sent = send_run(run, self.counters(), |packets| sys::send_mmsg(&path.socket, None, packets));
        bump(&self.counters().out_link_packets, sent.packets);
        sent
    }

    /// Sends the gathered raw ESP packets of one SA's run to `to` through the raw IP socket,
    /// in order, and empties the run. Every packet not sent counts as a `Send` drop.
    fn raw_send(&mut self, to: Option<Ipv4Addr>, run: &mut RawRun<'_>) -> Sent {
        let counters = &self.shared.counters[self.id];
        let (Some(raw), Some(to)) = (self.raw.as_mut(), to) else {
            // Raw ESP not enabled, or not an IPv4 peer: nothing of this run can be sent.
            let n = run.take_len();
            counters.drop_n(DropReason::Send, n as u64);
            return Sent::default();
        };
        send_run(run, counters, |packets| raw.send_batch(to, packets))
    }
}

/// Sends a run with as few calls of `send` as it takes (see [`send_batched`]) and empties it;
/// packets not sent count as `Send` drops.
fn send_run(
    run: &mut RawRun<'_>,
    counters: &WorkerCounters,
    mut send: impl FnMut(&[IoSlice<'_>]) -> Result<usize, Errno>,
) -> Sent {
    let n = run.iovs.len();
    if n == 0 {
        return Sent::default();
    }
    let mut sent = Sent::default();
    let dropped = send_batched(
        n,
        |rest| send(&run.iovs[rest]),
        |range| {
            sent.packets += range.len() as u64;
            sent.bytes += run.inner[range].iter().sum::<usize>() as u64;
        },
    );
    run.take_len();
    counters.drop_n(DropReason::Send, dropped);
    sent
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
