//! The I/O seam of a worker: what it reads and writes, as three small traits (the TUN queue,
//! ESP in UDP, raw ESP), and their implementations over the kernel's devices and sockets. The
//! worker is generic over them (one call per batch, no dynamic dispatch), so a test can drive
//! the whole packet path through in-memory ones.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use arrayvec::ArrayVec;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, recvmmsg};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use socket2::Socket;
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Most packets one [`RawLink::recv_batch`] or [`RawLink::send_batch`] call reads or sends.
pub const MAX_BATCH: usize = 128;
/// Most reads one [`UdpLink::recv_batch`] call makes (each may hold 64 coalesced datagrams).
pub const MAX_UDP_READS: usize = 16;

/// A worker's queue of the TUN device: plaintext in and out.
pub trait Tun {
    /// Reads what one read of the device gives (one packet, or a TSO super-packet split into
    /// segments) without waiting: packet `k` lands at `offset` in `bufs[k]`, `sizes[k]` long.
    /// Returns the count; `WouldBlock` when there is nothing to read.
    fn recv_batch(&mut self, bufs: &mut [Vec<u8>], sizes: &mut [usize], offset: usize) -> io::Result<usize>;

    /// Writes packets, each at `offset` in its buffer (the room before it is the virtio
    /// header's), coalescing TCP segments of one flow (GRO) into one write.
    fn send_batch(&mut self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()>;
}

/// What one UDP read holds: `len` bytes from `from`, datagrams `stride` apart (GRO; the last
/// may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub from: SocketAddr,
    pub len: usize,
    pub stride: usize,
}

impl Default for Received {
    fn default() -> Self {
        Self { from: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), len: 0, stride: 0 }
    }
}

/// A worker's socket for ESP in UDP (port 4500): GRO reads, GSO sends.
pub trait UdpLink {
    /// Reads without waiting, up to one read per buffer: read `k` fills `bufs[k]` as
    /// `meta[k]` says. Returns the count; `WouldBlock` when there is nothing to read.
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], meta: &mut [Received]) -> io::Result<usize>;

    /// Sends `contents` to `to`: one datagram, or with `segment_size` one per `segment_size`
    /// bytes (GSO; the last may be shorter), all or none.
    fn send_batch(&mut self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()>;

    /// Most datagrams one [`UdpLink::send_batch`] call may carry.
    fn max_segments(&self) -> usize;
}

/// A worker's raw ESP socket (IP protocol 50): ESP without UDP.
pub trait RawLink {
    /// Reads up to `bufs.len()` (at most [`MAX_BATCH`]) packets without waiting, packet `k`
    /// into `bufs[k]` with its IPv4 header (as the kernel hands raw packets over), `lens[k]`
    /// long. `None`: nothing to read, or the read failed.
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], lens: &mut [usize]) -> Option<usize>;

    /// Sends a prefix of `packets` (ESP, the kernel writes the IPv4 header) to `to` with one
    /// call, in order, and returns its length (see [`send_mmsg`]).
    fn send_batch(&mut self, to: Ipv4Addr, packets: &[IoSlice<'_>]) -> Result<usize, Errno>;
}

/// One queue of the kernel's TUN device, with the scratch its offloads need.
pub struct TunQueue {
    device: SyncDevice,
    /// One read as the device gives it (virtio header, then up to 64 KiB), split from here.
    read: Vec<u8>,
    /// The coalescing state of a write (reset by every write).
    gro: GROTable,
}

impl TunQueue {
    pub fn new(device: SyncDevice) -> Self {
        Self { device, read: vec![0u8; VIRTIO_NET_HDR_LEN + 65536], gro: GROTable::default() }
    }
}

impl fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunQueue").finish_non_exhaustive()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}

impl Tun for TunQueue {
    fn recv_batch(&mut self, bufs: &mut [Vec<u8>], sizes: &mut [usize], offset: usize) -> io::Result<usize> {
        self.device.recv_multiple(&mut self.read, bufs, sizes, offset)
    }

    fn send_batch(&mut self, bufs: &mut [Vec<u8>], offset: usize) -> io::Result<()> {
        self.device.send_multiple(&mut self.gro, bufs, offset).map(drop)
    }
}

/// A worker's UDP 4500 socket (a member of [`super::udp_group`]) with quinn-udp's GRO/GSO.
pub struct UdpPort {
    socket: UdpSocket,
    state: UdpSocketState,
    /// What quinn-udp tells of each read.
    meta: [RecvMeta; MAX_UDP_READS],
}

impl UdpPort {
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self { socket, state, meta: [RecvMeta::default(); MAX_UDP_READS] })
    }
}

impl fmt::Debug for UdpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpPort").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl AsFd for UdpPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl UdpLink for UdpPort {
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], meta: &mut [Received]) -> io::Result<usize> {
        let want = bufs.len().min(meta.len()).min(MAX_UDP_READS);
        let n = self.state.recv(UdpSockRef::from(&self.socket), &mut bufs[..want], &mut self.meta[..want])?;
        for (m, g) in meta.iter_mut().zip(&self.meta[..n]) {
            *m = Received { from: g.addr, len: g.len, stride: g.stride };
        }
        Ok(n)
    }

    fn send_batch(&mut self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let t = Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
        self.state.send(UdpSockRef::from(&self.socket), &t)
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

/// A worker's raw ESP socket ([`super::raw_esp_socket`]) with the headers recvmmsg fills.
pub struct RawSocket {
    socket: Socket,
    headers: MultiHeaders<SockaddrIn>,
}

impl RawSocket {
    pub fn new(socket: Socket) -> Self {
        Self { socket, headers: MultiHeaders::preallocate(MAX_BATCH, None) }
    }
}

impl fmt::Debug for RawSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSocket").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl RawLink for RawSocket {
    fn recv_batch(&mut self, bufs: &mut [IoSliceMut<'_>], lens: &mut [usize]) -> Option<usize> {
        // recvmmsg takes one scatter list per message: here one buffer each. (A plain array:
        // recvmmsg borrows it for as long as its results, which a container with a destructor
        // would outlive.)
        let want = bufs.len().min(MAX_BATCH);
        let mut each = bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(each.next().map(|b| &mut **b).unwrap_or_default())]);
        let got = recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut().take(want),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .ok()?;
        let mut n = 0;
        for (len, m) in lens.iter_mut().zip(got) {
            *len = m.bytes;
            n += 1;
        }
        Some(n)
    }

    fn send_batch(&mut self, to: Ipv4Addr, packets: &[IoSlice<'_>]) -> Result<usize, Errno> {
        send_mmsg(&self.socket, Some(SocketAddrV4::new(to, 0)), packets)
    }
}

/// Sends a prefix of `packets`, one datagram or frame each, in order, with one sendmmsg call:
/// to `to` or, without it, where the socket is bound (a link path's AF_PACKET socket). Returns
/// how many the kernel took (it may take fewer than asked; the caller goes on with the rest).
pub fn send_mmsg(socket: &Socket, to: Option<SocketAddrV4>, packets: &[IoSlice<'_>]) -> Result<usize, Errno> {
    // rustix's sendmmsg returns the count it sent. (nix's only tells it through a results
    // iterator that reads a never-written address: undefined behaviour.)
    let to = to.map(SocketAddrAny::from);
    let packets = &packets[..packets.len().min(MAX_BATCH)];
    let mut controls: ArrayVec<SendAncillaryBuffer<'_, '_, '_>, MAX_BATCH> =
        packets.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut messages: ArrayVec<MMsgHdr<'_>, MAX_BATCH> = packets
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, control)| match &to {
            Some(to) => MMsgHdr::new_with_addr(to, std::slice::from_ref(iov), control),
            None => MMsgHdr::new(std::slice::from_ref(iov), control),
        })
        .collect();
    sendmmsg(socket, &mut messages, SendFlags::empty()).map_err(|e| Errno::from_raw(e.raw_os_error()))
}
