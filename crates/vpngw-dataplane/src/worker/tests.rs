//! The whole packet path of two workers, A and B, with real SAs, through in-memory I/O: plaintext
//! into A's TUN, ESP on an in-memory link (UDP 4500 or raw ESP) with losses, reordering and
//! duplicates injected on the way, the same plaintext out of B's TUN, and every counter checked.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::errno::Errno;
use rustc_hash::FxHashMap;
use socket2::{Domain, Socket, Type};
use vpngw_crypto::{EncryptionAlgorithm, FastRng, IntegrityAlgorithm, SecretBytes};
use vpngw_esp::{InboundSa, OpenError, OutboundSa, SaKeys, Spi};

use super::{Ready, Worker, WorkerCtx};
use crate::counters::{DropReason, WorkerCounters};
use crate::link::{ETHERNET_LEN, LinkPath, LinkPaths, NextHop};
use crate::mss::MssClamp;
use crate::packet::{OUTER_IPV4_LEN, ipv4, write_outer_ipv4};
use crate::sa_table::{
    InboundEntry, Ipv4Net, OutboundCounters, OutboundEntry, SaCounters, SaTable, Selectors, Transport,
};
use crate::shared::{Shared, ToControl};
use crate::spd::Spd;
use crate::sys::{RawLink, Received, Tun, UdpLink, Waker};

/// A TUN queue in memory: each read gives one packet, as the kernel's does without TSO.
#[derive(Default)]
struct MemoryTun {
    incoming: VecDeque<Vec<u8>>,
    written: Vec<Vec<u8>>,
}

impl Tun for MemoryTun {
    fn recv_batch(&mut self, bufs: &mut [Vec<u8>], sizes: &mut [usize], offset: usize) -> io::Result<usize> {
        let (Some(buf), Some(size)) = (bufs.first_mut(), sizes.first_mut()) else { return Ok(0) };
        let packet = self.incoming.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        buf[offset..offset + packet.len()].copy_from_slice(&packet);
        *size = packet.len();
        Ok(1)
    }

    fn send_batch(&mut self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        self.written.extend(bufs.iter().map(|b| b[offset..].to_vec()));
        Ok(())
    }
}

/// A UDP socket in memory. Reads coalesce datagrams of one sender as GRO does (equal sizes, the
/// last may be shorter, 64 at most); a GSO send is split back into datagrams.
#[derive(Default)]
struct MemoryUdp {
    incoming: VecDeque<(SocketAddr, Vec<u8>)>,
    sent: Vec<(SocketAddr, Vec<u8>)>,
}

impl UdpLink for MemoryUdp {
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], meta: &mut [Received]) -> io::Result<usize> {
        let mut n = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((from, first)) = self.incoming.pop_front() else { break };
            buf[..first.len()].copy_from_slice(&first);
            let (stride, mut len, mut count) = (first.len(), first.len(), 1);
            while let Some((next_from, next)) = self.incoming.front()
                && *next_from == from
                && next.len() <= stride
                && len + next.len() <= buf.len()
                && count < 64
            {
                let shorter = next.len() < stride;
                buf[len..len + next.len()].copy_from_slice(next);
                len += next.len();
                count += 1;
                self.incoming.pop_front();
                if shorter {
                    break;
                }
            }
            *m = Received { from, len, stride };
            n += 1;
        }
        if n == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
    }

    fn send_batch(&mut self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let segment = segment_size.unwrap_or(contents.len());
        assert!(contents.len() <= segment * self.max_segments(), "more segments than the socket takes");
        self.sent.extend(contents.chunks(segment).map(|d| (to, d.to_vec())));
        Ok(())
    }

    fn max_segments(&self) -> usize {
        64
    }
}

/// A raw ESP socket in memory that takes at most `per_call` packets a call (as a sendmmsg that
/// stops short does); reads hand packets over with an IPv4 header, as the kernel does.
struct MemoryRaw {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<(Ipv4Addr, Vec<u8>)>,
    per_call: usize,
}

impl RawLink for MemoryRaw {
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], lens: &mut [usize]) -> Option<usize> {
        let mut n = 0;
        for (buf, len) in bufs.iter_mut().zip(lens.iter_mut()) {
            let Some(packet) = self.incoming.pop_front() else { break };
            buf[..packet.len()].copy_from_slice(&packet);
            *len = packet.len();
            n += 1;
        }
        (n > 0).then_some(n)
    }

    fn send_batch(&mut self, to: Ipv4Addr, packets: &[IoSlice<'_>]) -> Result<usize, Errno> {
        let n = packets.len().min(self.per_call);
        self.sent.extend(packets[..n].iter().map(|p| (to, p.to_vec())));
        Ok(n)
    }
}

type MemoryWorker = Worker<MemoryTun, MemoryUdp, MemoryRaw>;

/// One side: a worker on in-memory I/O with its own SA table, and what it told the control
/// plane.
struct Side {
    worker: MemoryWorker,
    ctx: WorkerCtx,
    table: Arc<SaTable>,
    control: Arc<Mutex<Vec<ToControl>>>,
    /// The control plane's queue refuses messages (full).
    control_full: Arc<AtomicBool>,
    address: Ipv4Addr,
}

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 1, 0, 0), 24);
const B_NET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 2, 0, 0), 24);
const SPI_A_TO_B: Spi = Spi::new(0x1000_0001);
const SPI_B_TO_A: Spi = Spi::new(0x2000_0002);
const REPLAY_WINDOW: u32 = 64;
const PATH_MTU: u16 = 1500;
const TUN_MTU: u16 = 1400;

fn keys(seed: u8) -> SaKeys {
    SaKeys {
        encryption: EncryptionAlgorithm::Aes128,
        encryption_key: SecretBytes::from_slice(&[seed; 16]),
        integrity: IntegrityAlgorithm::HmacSha1_96,
        integrity_key: SecretBytes::from_slice(&[seed.wrapping_add(1); 20]),
    }
}

fn side(address: Ipv4Addr, tcp_mss_clamp: MssClamp) -> Side {
    let table = Arc::new(SaTable::new());
    let control = Arc::new(Mutex::new(Vec::new()));
    let sink = control.clone();
    let control_full = Arc::new(AtomicBool::new(false));
    let full = control_full.clone();
    let shared = Arc::new(Shared {
        table: table.clone(),
        spd: Arc::new(ArcSwap::from_pointee(Spd::default())),
        stop: AtomicBool::new(false),
        pending_ready: AtomicBool::new(false),
        waker: Waker::new().unwrap(),
        counters: vec![WorkerCounters::default()].into(),
        to_control: Arc::new(move |m| {
            let accepted = !full.load(Ordering::Relaxed);
            if accepted {
                sink.lock().unwrap().push(m);
            }
            accepted
        }),
        path_mtu: PATH_MTU,
        tun_mtu: TUN_MTU,
        tcp_mss_clamp,
        public_address: address,
        links: LinkPaths::default(),
    });
    let raw = MemoryRaw { incoming: VecDeque::new(), sent: Vec::new(), per_call: 7 };
    let worker = Worker {
        id: 0,
        shared,
        tun: MemoryTun::default(),
        udp: MemoryUdp::default(),
        raw: Some(raw),
        rng: FastRng::from_os().unwrap(),
        ip_id: 0,
    };
    Side { worker, ctx: WorkerCtx::new(true, 64), table, control, control_full, address }
}

/// A and B with one SA pair each way, carried in UDP or as raw ESP.
fn pair(udp: bool) -> (Side, Side) {
    pair_clamping(udp, MssClamp::Auto, MssClamp::Auto)
}

/// [`pair`] with A and B clamping TCP MSS as told.
fn pair_clamping(udp: bool, clamp_a: MssClamp, clamp_b: MssClamp) -> (Side, Side) {
    let (a, b) = (side(A, clamp_a), side(B, clamp_b));
    for (from, to, spi_out, spi_in, local, remote) in
        [(&a, &b, SPI_A_TO_B, SPI_B_TO_A, A_NET, B_NET), (&b, &a, SPI_B_TO_A, SPI_A_TO_B, B_NET, A_NET)]
    {
        let selectors = Selectors { local, remote };
        let transport = Transport {
            local: SocketAddr::from((from.address, 4500)),
            remote: SocketAddr::from((to.address, 4500)),
            udp,
        };
        let seed_out = (spi_out.get() >> 28) as u8;
        let seed_in = (spi_in.get() >> 28) as u8;
        from.table.install(
            InboundEntry {
                connection: "tunnel".into(),
                sa: InboundSa::new(spi_in, &keys(seed_in), REPLAY_WINDOW).unwrap(),
                selectors,
                transport,
                counters: SaCounters::default(),
            },
            OutboundEntry {
                connection: "tunnel".into(),
                sa: OutboundSa::new(spi_out, &keys(seed_out)).unwrap(),
                selectors,
                transport,
                counters: OutboundCounters::default(),
            },
        );
    }
    (a, b)
}

/// Plaintext packet `i` from A's network to B's: an IPv4 header and a payload that is the
/// packet's own (sizes vary, so GSO batches end and start anew).
fn plaintext(i: usize, len: usize, dont_fragment: bool) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = if dont_fragment { 0x40 } else { 0 };
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 1, 0, 1 + (i % 200) as u8]);
    p[16..20].copy_from_slice(&[10, 2, 0, 1 + (i % 100) as u8]);
    for (k, byte) in p[20..].iter_mut().enumerate() {
        *byte = (i * 7 + k) as u8;
    }
    p
}

impl Side {
    /// Runs wake-ups with these sources readable until they hold nothing more.
    fn drain(&mut self, ready: Ready) {
        for _ in 0..1000 {
            let io = &self.worker;
            let pending = (ready.tun && !io.tun.incoming.is_empty())
                || (ready.udp && !io.udp.incoming.is_empty())
                || (ready.raw && io.raw.as_ref().is_some_and(|r| !r.incoming.is_empty()));
            if !pending {
                return;
            }
            self.ctx.ready = ready;
            self.worker.turn(&mut self.ctx);
        }
        panic!("the worker does not drain its sources");
    }

    fn counters(&self) -> &WorkerCounters {
        &self.worker.shared.counters[0]
    }

    /// Every drop reason this worker counted, with its count.
    fn drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|&r| (r, self.counters().dropped(r))).filter(|(_, n)| *n > 0).collect()
    }
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

const TUN_READY: Ready = Ready { waker: false, tun: true, udp: false, raw: false };
const UDP_READY: Ready = Ready { waker: false, tun: false, udp: true, raw: false };
const RAW_READY: Ready = Ready { waker: false, tun: false, udp: false, raw: true };

/// What the link does to the ESP packets A sent, in order: packet indices as B receives them.
/// Losses (7, 50, 51), a swap (100 <-> 101), one packet 30 places late (120), a duplicate right
/// behind its original (5: the same GRO read, the same open batch), and a duplicate far behind
/// (20, at the end: left of the replay window by then).
fn faults(n: usize) -> (Vec<usize>, u64, u64) {
    let mut order: Vec<usize> = (0..n).filter(|i| ![7, 50, 51, 120].contains(i)).collect();
    let at = |order: &Vec<usize>, i: usize| order.iter().position(|&x| x == i).unwrap();
    let p = at(&order, 100);
    order.swap(p, p + 1);
    let p = at(&order, 150);
    order.insert(p + 1, 120);
    let p = at(&order, 5);
    order.insert(p + 1, 5);
    order.push(20);
    (order, 1, 1)
}

/// The plaintexts B must write, in order: each delivered packet at its first arrival.
fn expected(plain: &[Vec<u8>], order: &[usize]) -> Vec<Vec<u8>> {
    let mut seen = vec![false; plain.len()];
    order.iter().filter(|&&i| !std::mem::replace(&mut seen[i], true)).map(|&i| plain[i].clone()).collect()
}

fn check_counters(a: &Side, b: &Side, plain: &[Vec<u8>], delivered: &[Vec<u8>], replayed: u64, too_old: u64) {
    let bytes = |ps: &[Vec<u8>]| ps.iter().map(|p| p.len() as u64).sum::<u64>();
    let (ac, bc) = (a.counters(), b.counters());
    assert_eq!((load(&ac.out_packets), load(&ac.out_bytes)), (plain.len() as u64, bytes(plain)));
    assert_eq!((load(&ac.in_packets), load(&ac.out_link_packets)), (0, 0));
    assert_eq!(a.drops(), vec![]);
    let out = a.table.outbound_by_spi(SPI_A_TO_B).unwrap();
    assert_eq!((out.counters.packets(), out.counters.bytes()), (plain.len() as u64, bytes(plain)));
    assert_eq!((load(&bc.in_packets), load(&bc.in_bytes)), (delivered.len() as u64, bytes(delivered)));
    assert_eq!(load(&bc.out_packets), 0);
    assert_eq!(
        b.drops(),
        vec![(DropReason::Esp(OpenError::Replayed), replayed), (DropReason::Esp(OpenError::TooOld), too_old)]
    );
    let inbound = b.table.inbound(SPI_A_TO_B).unwrap();
    assert_eq!((inbound.counters.packets(), inbound.counters.bytes()), (delivered.len() as u64, bytes(delivered)));
    assert_eq!(
        (inbound.counters.dropped(OpenError::Replayed), inbound.counters.dropped(OpenError::TooOld)),
        (replayed, too_old)
    );
    assert!(a.control.lock().unwrap().is_empty() && b.control.lock().unwrap().is_empty());
}

#[test]
fn plaintext_crosses_esp_in_udp_with_losses_reordering_and_duplicates() {
    let (mut a, mut b) = pair(true);
    let plain: Vec<Vec<u8>> = (0..200).map(|i| plaintext(i, 40 + (i * 37) % 1100, i % 3 == 0)).collect();
    a.worker.tun.incoming.extend(plain.iter().cloned());
    a.drain(TUN_READY);
    let esp = std::mem::take(&mut a.worker.udp.sent);
    assert_eq!(esp.len(), plain.len(), "one ESP datagram per packet");
    assert!(esp.iter().all(|(to, _)| *to == SocketAddr::from((B, 4500))));
    assert!(esp.iter().zip(&plain).all(|((_, e), p)| e.len() > p.len() && e[..4] == SPI_A_TO_B.to_be_bytes()));

    let (order, replayed, too_old) = faults(esp.len());
    let from = SocketAddr::from((A, 4500));
    b.worker.udp.incoming.extend(order.iter().map(|&i| (from, esp[i].1.clone())));
    b.drain(UDP_READY);

    let delivered = expected(&plain, &order);
    assert_eq!(b.worker.tun.written, delivered, "B's TUN gets exactly the plaintext, in arrival order");
    assert_eq!(delivered.len(), 197);
    check_counters(&a, &b, &plain, &delivered, replayed, too_old);
    assert!(b.worker.udp.sent.is_empty() && a.worker.tun.written.is_empty());
}

#[test]
fn plaintext_crosses_raw_esp_with_losses_reordering_and_duplicates() {
    let (mut a, mut b) = pair(false);
    let plain: Vec<Vec<u8>> = (0..200).map(|i| plaintext(i, 40 + (i * 53) % 1300, false)).collect();
    a.worker.tun.incoming.extend(plain.iter().cloned());
    a.drain(TUN_READY);
    let raw = a.worker.raw.as_mut().unwrap();
    let esp = std::mem::take(&mut raw.sent);
    // Sent with sendmmsg calls of at most 7 packets: every one went out, in order.
    assert_eq!(esp.len(), plain.len());
    assert!(esp.iter().all(|(to, e)| *to == B && e[..4] == SPI_A_TO_B.to_be_bytes()));
    assert!(a.worker.udp.sent.is_empty());

    // The kernel hands raw ESP over with its IPv4 header.
    let (order, replayed, too_old) = faults(esp.len());
    let incoming = &mut b.worker.raw.as_mut().unwrap().incoming;
    for &i in &order {
        let packet = &esp[i].1;
        let mut ip = [0u8; OUTER_IPV4_LEN];
        write_outer_ipv4(&mut ip, A, B, (OUTER_IPV4_LEN + packet.len()) as u16, i as u16, 50);
        incoming.push_back([&ip[..], packet].concat());
    }
    b.drain(RAW_READY);

    let delivered = expected(&plain, &order);
    assert_eq!(b.worker.tun.written, delivered);
    check_counters(&a, &b, &plain, &delivered, replayed, too_old);
}

#[test]
fn too_big_is_answered_with_icmp_and_strays_are_counted() {
    let (mut a, mut b) = pair(true);
    // ESP in UDP costs 28 + 24 (ESP header, IV) + 29 (most padding, trailer, ICV) bytes.
    let max_inner = usize::from(PATH_MTU) - 81;
    let big = plaintext(1, max_inner + 1, true);
    let fits = plaintext(2, max_inner, true);
    let unprotected = {
        let mut p = plaintext(3, 100, false);
        p[12..16].copy_from_slice(&[10, 9, 0, 1]);
        p
    };
    a.worker.tun.incoming.extend([big.clone(), fits.clone(), unprotected, vec![0x60; 40]]);
    a.drain(TUN_READY);

    // The sender of the big one learns what fits, from the first host of B's network.
    let [icmp] = &a.worker.tun.written[..] else { panic!("{:?}", a.worker.tun.written) };
    let header = ipv4(icmp).unwrap();
    assert_eq!((header.src, header.dst, header.protocol), (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 1, 0, 2), 1));
    assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]) as usize, max_inner);
    assert_eq!(&icmp[28..48], &big[..20]);
    assert_eq!(a.drops(), vec![(DropReason::NotIpv4, 1), (DropReason::NoPolicy, 1), (DropReason::TooBig, 1)]);
    assert_eq!(load(&a.counters().out_packets), 1);

    // B: the one that fits, then a NAT keepalive, an IKE datagram, an unknown SPI and a runt.
    let esp = std::mem::take(&mut a.worker.udp.sent);
    let from = SocketAddr::from((A, 4500));
    let ike = [&[0u8; 4][..], &[0x11; 28]].concat();
    let unknown = [&0x4444_4444u32.to_be_bytes()[..], &[0; 60]].concat();
    b.worker
        .udp
        .incoming
        .extend([esp[0].1.clone(), vec![0xff], ike, unknown, vec![1, 2]].into_iter().map(|d| (from, d)));
    b.drain(UDP_READY);
    assert_eq!(b.worker.tun.written, vec![fits]);
    assert_eq!((load(&b.counters().keepalives), load(&b.counters().ike_forwarded)), (1, 1));
    assert_eq!(b.drops(), vec![(DropReason::Malformed, 1), (DropReason::UnknownSpi, 1)]);
    {
        let control = b.control.lock().unwrap();
        let [ToControl::Ike { from: ike_from, data }] = &control[..] else { panic!("{control:?}") };
        assert_eq!((*ike_from, data.as_slice()), (from, &[0x11; 28][..]));
    }

    // The control plane's queue is full: the next IKE datagram is dropped and counted.
    b.control_full.store(true, Ordering::Relaxed);
    b.worker.udp.incoming.push_back((from, [&[0u8; 4][..], &[0x22; 28]].concat()));
    b.drain(UDP_READY);
    assert_eq!(b.control.lock().unwrap().len(), 1);
    assert_eq!(
        b.drops(),
        vec![(DropReason::Malformed, 1), (DropReason::UnknownSpi, 1), (DropReason::ControlQueueFull, 1)]
    );
}

/// The ESP sequence number of an ESP packet.
fn sequence(esp: &[u8]) -> u32 {
    u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]])
}

#[test]
fn raw_esp_takes_the_link_path_and_the_raw_socket_what_the_link_cannot_carry() {
    let (mut a, mut b) = pair(false);
    // The link path's socket: a UDP socket connected to a local receiver stands in for the
    // AF_PACKET socket (both send each frame as it is, where the socket is bound).
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    socket.connect(&receiver.local_addr().unwrap().into()).unwrap();
    let (source_mac, destination_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let hop = NextHop { device: "wan0".into(), ifindex: 7, source_mac, destination_mac, mtu: 1000 };
    let ethernet = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let path = Arc::new(LinkPath { hop, ethernet, socket: Arc::new(socket) });
    a.worker.shared.links.paths.store(Arc::new(FxHashMap::from_iter([(B, path)])));

    let plain: Vec<Vec<u8>> = (0..60).map(|i| plaintext(i, 40 + (i * 53) % 1300, false)).collect();
    a.worker.tun.incoming.extend(plain.iter().cloned());
    a.drain(TUN_READY);

    // What the link cannot carry (IPv4 + ESP over its MTU) took the raw IP socket.
    let raw = std::mem::take(&mut a.worker.raw.as_mut().unwrap().sent);
    assert!(raw.iter().all(|(to, esp)| *to == B && esp.len() + OUTER_IPV4_LEN > 1000));
    let links = load(&a.counters().out_link_packets) as usize;
    assert_eq!(links + raw.len(), plain.len());
    assert!(links > 0 && !raw.is_empty(), "{links} by the link, {} by the raw socket", raw.len());
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..links {
        let n = receiver.recv(&mut buf).unwrap();
        frames.push(buf[..n].to_vec());
    }
    // Each frame: the hop's Ethernet header, then an outer IPv4 header as the kernel's would be
    // (identification counting up), then the ESP packet.
    for (k, frame) in frames.iter().enumerate() {
        assert_eq!(frame[..ETHERNET_LEN], ethernet);
        let ip = &frame[ETHERNET_LEN..];
        let info = ipv4(ip).unwrap();
        assert_eq!((info.src, info.dst, info.protocol, info.total_len, info.dont_fragment), (A, B, 50, ip.len(), true));
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, k + 1);
        assert!(ip.len() <= 1000 && ip[20..24] == SPI_A_TO_B.to_be_bytes());
    }
    assert_eq!((load(&a.counters().out_packets), a.drops()), (plain.len() as u64, vec![]));

    // B gets them all as its raw socket would (IPv4 header first), in sequence order.
    let mut arriving: Vec<Vec<u8>> = frames.iter().map(|f| f[ETHERNET_LEN..].to_vec()).collect();
    for (_, esp) in &raw {
        let mut ip = [0u8; OUTER_IPV4_LEN];
        write_outer_ipv4(&mut ip, A, B, (OUTER_IPV4_LEN + esp.len()) as u16, 0, 50);
        arriving.push([&ip[..], esp].concat());
    }
    arriving.sort_by_key(|p| sequence(&p[OUTER_IPV4_LEN..]));
    b.worker.raw.as_mut().unwrap().incoming.extend(arriving);
    b.drain(RAW_READY);
    assert_eq!(b.worker.tun.written, plain);
    assert_eq!((load(&b.counters().in_packets), b.drops()), (plain.len() as u64, vec![]));
}

/// A SYN from A's network is clamped by A on its way into the tunnel; the SYN-ACK coming back
/// from a B that does not clamp is clamped by A on its way out of the tunnel: both directions,
/// each counted once, each checksum right.
#[test]
fn tcp_syns_are_clamped_both_ways_and_counted() {
    use crate::mss::TCP_SYN;
    use crate::mss::tests::{LINUX_SYN_OPTIONS, mss_of, segment, tcp_checksum_residue};
    let (mut a, mut b) = pair_clamping(true, MssClamp::Auto, MssClamp::Off);
    // min(TUN 1400, path 1500 - 81 (AES-CBC/SHA1 in UDP)) - 40.
    let clamp = 1360;
    let syn = segment(TCP_SYN, &LINUX_SYN_OPTIONS, &[]);
    let ack = segment(0x10, &LINUX_SYN_OPTIONS, b"not a SYN");
    a.worker.tun.incoming.extend([syn.clone(), ack.clone()]);
    a.drain(TUN_READY);
    let esp = std::mem::take(&mut a.worker.udp.sent);
    b.worker.udp.incoming.extend(esp.into_iter().map(|(_, d)| (SocketAddr::from((A, 4500)), d)));
    b.drain(UDP_READY);
    let [syn_at_b, ack_at_b] = &b.worker.tun.written[..] else { panic!("{:?}", b.worker.tun.written) };
    assert_eq!(mss_of(syn_at_b), Some(clamp));
    assert_eq!(tcp_checksum_residue(syn_at_b), 0);
    assert_eq!(ack_at_b, &ack, "only SYNs are touched");
    assert_eq!((load(&a.counters().mss_clamped), load(&b.counters().mss_clamped)), (1, 0));

    // The SYN-ACK: 10.2.0.10 -> 10.1.0.10, MSS 1460; B (off) seals it as it is.
    let mut syn_ack = segment(TCP_SYN | 0x10, &LINUX_SYN_OPTIONS, &[]);
    let (src, dst) = (syn_ack[12..16].to_vec(), syn_ack[16..20].to_vec());
    syn_ack[12..16].copy_from_slice(&dst);
    syn_ack[16..20].copy_from_slice(&src);
    b.worker.tun.incoming.push_back(syn_ack);
    b.drain(TUN_READY);
    let esp = std::mem::take(&mut b.worker.udp.sent);
    a.worker.udp.incoming.extend(esp.into_iter().map(|(_, d)| (SocketAddr::from((B, 4500)), d)));
    a.drain(UDP_READY);
    let [syn_ack_at_a] = &a.worker.tun.written[..] else { panic!("{:?}", a.worker.tun.written) };
    assert_eq!(mss_of(syn_ack_at_a), Some(clamp));
    assert_eq!(tcp_checksum_residue(syn_ack_at_a), 0);
    assert_eq!((load(&a.counters().mss_clamped), load(&b.counters().mss_clamped)), (2, 0));
    assert_eq!((a.drops(), b.drops()), (vec![], vec![]));
}
