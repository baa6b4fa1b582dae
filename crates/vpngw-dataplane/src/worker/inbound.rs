//! The inbound stage: UDP 4500 reads (GRO) -> keepalive | IKE (to the control plane) | ESP, and
//! raw ESP reads (recvmmsg; the IPv4 header stripped) -> each run of one SPI opened as a batch
//! (replay check, ICV, decrypt, replay commit) -> the SA's selectors -> the MSS of TCP SYNs
//! clamped ([`crate::mss`]) -> gathered for one coalescing write into the TUN.

use std::io::{self, IoSliceMut};

use arrayvec::ArrayVec;
use tun_rs::VIRTIO_NET_HDR_LEN;
use vpngw_esp::{OpenPacket, peek_spi};

use super::base::{BATCH, UDP_BUFFERS, Worker};
use super::ctx::{RAW_LEN, RAW_RECV, TunOut, WorkerCtx};
use crate::counters::{DropReason, bump};
use crate::mss::{MssClamp, clamp_tcp_header, tcp_syn_header};
use crate::packet::ipv4;
use crate::sa_table::{InboundEntry, InboundMap};
use crate::shared::ToControl;
use crate::sys::{RawLink, Received, Tun, UdpLink};

/// ESP packets opened per batch call: a UDP GRO read holds at most 64 datagrams.
const ESP_RUN: usize = 64;

/// What a datagram on UDP 4500 is (RFC 3948), told apart before any state is touched.
enum Incoming<'a> {
    /// A NAT keepalive: the one byte 0xff.
    Keepalive,
    /// IKE: the datagram past its four-byte zero non-ESP marker.
    Ike(&'a [u8]),
    /// Anything else is ESP (its SPI is never zero).
    Esp(&'a mut [u8]),
}

fn parse_incoming(datagram: &mut [u8]) -> Incoming<'_> {
    match datagram {
        [0xff] => Incoming::Keepalive,
        [0, 0, 0, 0, _, ..] => Incoming::Ike(&datagram[4..]),
        _ => Incoming::Esp(datagram),
    }
}

impl<T: Tun, U: UdpLink, R: RawLink> Worker<T, U, R> {
    pub(super) fn inbound_udp(&mut self, ctx: &mut WorkerCtx) {
        let WorkerCtx { udp_bufs: bufs, tun_out: out, .. } = ctx;
        let mut meta = [Received::default(); UDP_BUFFERS];
        let n = {
            let mut iovs: ArrayVec<IoSliceMut<'_>, UDP_BUFFERS> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match self.udp.recv_batch(&mut iovs, &mut meta) {
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
                match parse_incoming(data) {
                    Incoming::Keepalive => bump(&self.counters().keepalives, 1),
                    Incoming::Ike(ike) => {
                        bump(&self.counters().ike_forwarded, 1);
                        if !(self.shared.to_control)(ToControl::Ike { from: m.from, data: ike.to_vec() }) {
                            self.counters().drop(DropReason::ControlQueueFull);
                        }
                    }
                    Incoming::Esp(packet) => {
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
    pub(super) fn inbound_raw(&mut self, ctx: &mut WorkerCtx) {
        let WorkerCtx { raw_in: rin, tun_out: out, .. } = ctx;
        if self.raw.is_none() {
            return;
        }
        let view = self.shared.table.inbound_view();
        let mut done = 0;
        while done < BATCH {
            let want = (BATCH - done).min(RAW_RECV);
            let n = {
                let mut iovs: ArrayVec<IoSliceMut<'_>, RAW_RECV> =
                    rin.buf.chunks_mut(RAW_LEN).take(want).map(IoSliceMut::new).collect();
                let Some(raw) = self.raw.as_mut() else { return };
                let Some(n) = raw.recv_batch(&mut iovs, &mut rin.lens[..want]) else { return };
                n.min(want)
            };
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
    fn open_esp(&mut self, view: &InboundMap, packets: &mut [&mut [u8]], out: &mut TunOut) {
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
                let Some(inner) = p.buf.get_mut(opened.payload) else { continue };
                // The decrypted packet must belong to this SA's traffic (RFC 4301 s.5.2).
                let allowed = ipv4(inner)
                    .is_some_and(|i| entry.selectors.remote.contains(&i.src) && entry.selectors.local.contains(&i.dst));
                if !allowed {
                    self.counters().drop(DropReason::Policy);
                    continue;
                }
                self.clamp_mss_inbound(entry, inner);
                let inner: &[u8] = inner;
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

    /// Lowers the MSS of a decapsulated TCP SYN (or SYN-ACK) for our LAN host: it tells that
    /// host how large the segments it sends back may be, and those go out through the outbound
    /// SA of the reverse direction, whose overhead sets the clamp. Without one (being
    /// replaced), the inbound SA's transport with the largest ESP overhead gateway.rs allows
    /// (IV 16, padding 15, trailer 2, ICV 12) stands in. Counted.
    fn clamp_mss_inbound(&self, entry: &InboundEntry, packet: &mut [u8]) {
        /// ESP header 8 + IV 16, and padding 15 + trailer 2 + ICV 12: AES-CBC with SHA1-96.
        const WORST_HEADER: usize = 24;
        const WORST_TRAILER: usize = 29;
        if self.shared.tcp_mss_clamp == MssClamp::Off {
            return;
        }
        let Some((tcp_start, tcp_len)) = tcp_syn_header(packet) else { return };
        let Some(info) = ipv4(packet) else { return };
        let (tun_mtu, path_mtu) = (self.shared.tun_mtu, self.shared.path_mtu);
        let outbound = self.shared.table.outbound_view();
        let limit = match outbound.lookup(info.dst, info.src) {
            Some(out) => self.shared.tcp_mss_clamp.limit(
                tun_mtu,
                path_mtu,
                out.transport.udp,
                out.sa.header_len(),
                out.sa.max_trailer_len(),
            ),
            None => {
                self.shared.tcp_mss_clamp.limit(tun_mtu, path_mtu, entry.transport.udp, WORST_HEADER, WORST_TRAILER)
            }
        };
        if let Some(limit) = limit
            && clamp_tcp_header(packet, tcp_start, tcp_len, limit)
        {
            bump(&self.counters().mss_clamped, 1);
        }
    }

    /// Writes the gathered decrypted packets to the TUN, coalescing TCP segments.
    pub(super) fn flush_tun(&mut self, out: &mut TunOut) {
        if out.len == 0 {
            return;
        }
        if let Err(e) = self.tun.send_batch(&mut out.bufs[..out.len], VIRTIO_NET_HDR_LEN) {
            tracing::debug!(worker = self.id, error = %e, "TUN write failed");
            self.counters().drop(DropReason::Send);
        }
        out.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_on_port_4500_are_told_apart() {
        assert!(matches!(parse_incoming(&mut [0xff]), Incoming::Keepalive));
        assert!(matches!(parse_incoming(&mut [0, 0, 0, 0, 0x11, 0x22]), Incoming::Ike([0x11, 0x22])));
        // A marker with nothing behind it is no IKE: ESP, which then finds it malformed.
        assert!(matches!(parse_incoming(&mut [0, 0, 0, 0]), Incoming::Esp([0, 0, 0, 0])));
        assert!(matches!(parse_incoming(&mut [0xff, 0xff]), Incoming::Esp([0xff, 0xff])));
        assert!(matches!(parse_incoming(&mut [1, 2, 3, 4, 0, 0, 0, 1]), Incoming::Esp([1, 2, 3, 4, 0, 0, 0, 1])));
        assert!(matches!(parse_incoming(&mut []), Incoming::Esp([])));
    }
}
