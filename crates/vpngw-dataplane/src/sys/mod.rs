//! The operating-system side of the dataplane: the TUN device, the ESP sockets, CPU pinning and
//! waiting, and (in `worker_io`) the traits a worker reads and writes packets through with their
//! kernel implementations: every system call of the packet path is made here. Safe wrappers
//! only (tun-rs, socket2, quinn-udp, nix, rustix): no `unsafe` here, and in `link` only to
//! spell the AF_PACKET address socket2 has no constructor for.
//!
//! Inbound ESP is spread over the workers by SPI, so that every SA is opened by one worker, in
//! order, and one peer's SAs spread over the cores: the UDP 4500 sockets form one SO_REUSEPORT
//! group whose classic BPF program picks socket `spi % workers` ([`udp_group`]), and each raw
//! ESP socket has a filter keeping `spi % workers == worker` ([`raw_esp_socket`]).

mod link;
mod worker_io;

pub use link::link_socket;
pub use worker_io::{
    MAX_BATCH, MAX_UDP_READS, RawLink, RawSocket, Received, Tun, TunQueue, UdpLink, UdpPort, send_mmsg,
};

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use arrayvec::ArrayVec;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tun_rs::{DeviceBuilder, SyncDevice};

/// IP protocol number of ESP.
pub const IPPROTO_ESP: i32 = 50;

/// Creates the TUN device with one queue per worker (IFF_MULTI_QUEUE when more than one: the
/// kernel spreads flows over the queues, each flow staying on one), up, with this MTU, and
/// with offloads (IFF_VNET_HDR + TSO/GRO): the kernel hands over TCP super-packets of up to
/// 64 KiB that the worker splits, and takes coalesced ones back, so the inner traffic crosses
/// the kernel's stack once per super-packet rather than once per packet.
pub fn tun_queues(name: &str, mtu: u16, queues: usize) -> io::Result<Vec<SyncDevice>> {
    let first =
        DeviceBuilder::new().name(name).mtu(mtu).multi_queue(queues > 1).offload(true).enable(false).build_sync()?;
    // The SPD is IPv4: IPv6 goes off before the link comes up, or the kernel's neighbour and
    // router solicitations enter the TUN first and count as drops (`not_ipv4`) at every
    // start. A kernel without IPv6 has no such file, and nothing to turn off.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    first.enabled(true)?;
    let mut all = Vec::with_capacity(queues);
    for _ in 1..queues {
        all.push(first.try_clone()?);
    }
    all.insert(0, first);
    for q in &all {
        q.set_nonblocking(true)?;
    }
    Ok(all)
}

/// The UDP sockets on `addr` (port 4500), one per worker, in one SO_REUSEPORT group steered by
/// SPI: the datagram goes to socket `spi % workers`, i.e. to worker `spi % workers` (the same
/// share as [`raw_esp_socket`]), so one peer's SAs spread over the workers although they all
/// share one 4-tuple (which the kernel's default reuseport hash would send to one socket).
///
/// Kernel semantics relied on (net/core/sock_reuseport.c, net/ipv4/udp.c):
/// - a socket's index in the group is the order in which it joined, i.e. was bound: the sockets
///   are bound here in worker order, so the socket of worker `k` is index `k`;
/// - SO_ATTACH_REUSEPORT_CBPF on a bound member sets the program of the whole group (on any
///   member; attached before bind, a socket that then joins an existing group fails to bind
///   with EADDRINUSE), so it is attached once, to socket 0, after all are bound;
/// - for UDP the program sees the datagram past its UDP header (offset 0 = first payload byte:
///   the SPI of ESP, the zero non-ESP marker of IKE), and its return value is the socket index;
///   an index out of range falls back to the 4-tuple hash;
/// - UDP GRO (the workers enable it) coalesces datagrams of one 4-tuple before the socket is
///   chosen, and the program then sees the first one: a GRO read can hold other workers' SPIs
///   (net/ipv4/udp_offload.c; read from the source, not measured here). Any worker opens any
///   SA, so this costs at most some reordering between workers.
///
/// Payloads shorter than an SPI (the 1-byte NAT keepalive 0xff) go to socket 0, as does IKE
/// (marker 0 = SPI 0): any worker hands IKE over to the control plane.
pub fn udp_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<UdpSocket>> {
    let mut group = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        group.push(udp_socket(addr)?);
    }
    if group.len() > 1 {
        let n = u32::try_from(group.len()).map_err(|_| io::Error::other("too many workers"))?;
        let mut program = [
            bpf(0x80, 0, 0, 0), // ld #len: A = payload length
            bpf(0x35, 1, 0, 4), // A >= 4 ? skip 1 : next
            bpf(0x06, 0, 0, 0), // ret #0: too short for an SPI (keepalive): socket 0
            bpf(0x20, 0, 0, 0), // ld [0]: A = SPI (big-endian)
            bpf(0x94, 0, 0, n), // A %= workers
            bpf(0x16, 0, 0, 0), // ret A: socket index
        ];
        // The kernel copies the program during the call; the pointer is not kept.
        let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
        setsockopt(&group[0], sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)?;
    }
    Ok(group)
}

fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// One UDP socket on `addr` (port 4500) with SO_REUSEPORT (a member of [`udp_group`]).
/// Non-blocking, with large buffers.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A raw IP socket for ESP (protocol 50). Every raw socket gets a copy of every ESP packet, so
/// with several workers each socket carries a classic BPF filter that keeps only its share:
/// by SPI (`spi % workers == worker`), so that all packets of an SA are opened by one worker, in
/// order. (Spreading one SA's packets over workers by sequence blocks was tried: it reorders
/// TCP segments, and halved 3DES throughput; see docs/performance.md.) Each packet is read once.
pub fn raw_esp_socket(address: Ipv4Addr, worker: u32, workers: u32) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_ESP)))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    // Bound to the address IKE uses: ESP leaves from it whatever source the route would pick
    // (a host with several addresses on the uplink), and only ESP sent to it arrives here.
    // (Writing the outer header ourselves, IP_HDRINCL, was measured: the kernel then builds a
    // route per packet instead of using its cached one, and it was no faster; see
    // docs/performance.md.)
    s.bind(&SocketAddr::from((address, 0)).into())?;
    if workers > 1 {
        // The filter sees the packet from its IPv4 header. Packets too short to hold an SPI go
        // to worker 0 (a load beyond the end would make the filter drop them uncounted).
        let short_verdict = if worker == 0 { 0xffff } else { 0 };
        let program = [
            SockFilter::new(0xb1, 0, 0, 0),             // ldxb 4*([0]&0xf): X = header length
            SockFilter::new(0x87, 0, 0, 0),             // txa
            SockFilter::new(0x04, 0, 0, 4),             // add #4
            SockFilter::new(0x07, 0, 0, 0),             // tax: X = header length + 4
            SockFilter::new(0x80, 0, 0, 0),             // ld #len
            SockFilter::new(0x3d, 1, 0, 0),             // len >= X ? skip 1 : next
            SockFilter::new(0x06, 0, 0, short_verdict), // too short for an SPI
            SockFilter::new(0xb1, 0, 0, 0),             // X = header length
            SockFilter::new(0x40, 0, 0, 0),             // ld [x+0]: A = SPI
            SockFilter::new(0x94, 0, 0, workers),       // A %= workers
            SockFilter::new(0x15, 0, 1, worker),        // A == worker ? accept : drop
            SockFilter::new(0x06, 0, 0, 0xffff),        // ret whole packet
            SockFilter::new(0x06, 0, 0, 0),             // ret 0: another worker's
        ];
        s.attach_filter(&program)?;
    }
    Ok(s)
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The CPUs this process may run on: its affinity mask (`taskset`, a cgroup cpuset).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).map_err(io::Error::from)?;
    Ok((0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Wakes every worker out of `wait` (for shutdown).
#[derive(Debug)]
pub struct Waker(EventFd);

impl Waker {
    pub fn new() -> io::Result<Self> {
        Ok(Self(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(io::Error::from)?,
        ))
    }

    pub fn wake(&self) {
        let _ = self.0.write(1);
    }

    /// Resets the wake-up (after which poll waits again).
    pub fn reset(&self) {
        let _ = self.0.read();
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Most descriptors one [`wait`] watches.
pub const MAX_WAIT_FDS: usize = 8;

/// Waits until one of `fds` (at most [`MAX_WAIT_FDS`]) is readable or `timeout` passes; returns
/// which are readable.
pub fn wait(fds: &[BorrowedFd<'_>], timeout: Duration, ready: &mut [bool]) -> io::Result<()> {
    if fds.len() > MAX_WAIT_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors to wait for"));
    }
    let mut pfds: ArrayVec<PollFd<'_>, MAX_WAIT_FDS> =
        fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)).collect();
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut pfds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    for (r, p) in ready.iter_mut().zip(&pfds) {
        *r = p.revents().is_some_and(|e| e.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP));
    }
    Ok(())
}
