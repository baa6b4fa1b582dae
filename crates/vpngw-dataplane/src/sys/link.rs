//! The transmit socket of raw ESP's link path ([`crate::link`]): AF_PACKET, SOCK_RAW, bound to
//! one interface with protocol 0. Protocol 0 registers no receive hook, so the socket gets no
//! copy of the interface's frames (a bound protocol would be a tap on every one of them); the
//! frames it sends carry their own Ethernet header, and the kernel reads their protocol from it.
//! Frames pass the device's queueing discipline and packet taps (no PACKET_QDISC_BYPASS): a
//! `tcpdump` on the uplink still shows the ESP that leaves.

use std::io;

use nix::libc;
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};

/// Opens the link-layer socket for interface `ifindex` (needs CAP_NET_RAW). Non-blocking: a
/// full send buffer makes sendmmsg stop short, and the worker counts the rest as `send` drops.
pub fn link_socket(ifindex: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    let mut storage = SockAddrStorage::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: `sockaddr_ll` is one of this platform's `sockaddr_*` types, which is what
    // `view_as` requires (it asserts the size fits in the storage).
    let address: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    address.sll_family = libc::AF_PACKET as libc::sa_family_t;
    address.sll_protocol = 0;
    address.sll_ifindex = ifindex;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: the storage holds an initialised `sockaddr_ll` (zeroed, then its fields set) with
    // `sll_family` AF_PACKET, and `len` is exactly its size, as `SockAddr::new` requires.
    let address = unsafe { SockAddr::new(storage, len) };
    socket.bind(&address)?;
    Ok(socket)
}
