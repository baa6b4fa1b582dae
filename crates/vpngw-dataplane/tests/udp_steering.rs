//! The UDP 4500 group steers by SPI: on loopback, a datagram whose payload starts with SPI `s`
//! reaches socket `s % n` of the group made by `sys::udp_group` (the function the daemon uses),
//! and short datagrams (NAT keepalive) and IKE (zero non-ESP marker) reach socket 0.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use vpngw_dataplane::sys::udp_group;

/// A group of `n` sockets on 127.0.0.1 at a free port (retried if the port is taken meanwhile).
fn group(n: usize) -> (SocketAddr, Vec<UdpSocket>) {
    for _ in 0..20 {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match udp_group(addr, n) {
            Ok(g) => return (addr, g),
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            Err(e) => panic!("udp_group: {e}"),
        }
    }
    panic!("no free port");
}

/// Sends `payload` to the group and returns the index of the socket that received it.
fn arrives_at(sender: &UdpSocket, to: SocketAddr, group: &[UdpSocket], payload: &[u8]) -> usize {
    sender.send_to(payload, to).unwrap();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (i, s) in group.iter().enumerate() {
            match s.recv_from(&mut buf) {
                Ok((len, from)) => {
                    assert_eq!(&buf[..len], payload, "socket {i} got another datagram");
                    assert_eq!(from, sender.local_addr().unwrap());
                    // Exactly one socket gets it.
                    for (j, t) in group.iter().enumerate() {
                        assert!(t.recv_from(&mut buf).is_err(), "socket {j} got a second copy");
                    }
                    return i;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv on socket {i}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "datagram {payload:02x?} did not arrive");
        std::thread::yield_now();
    }
}

fn check(n: usize) {
    let (addr, group) = group(n);
    assert_eq!(group.len(), n);
    // One sender: every datagram has the same 4-tuple, as all SAs of one peer do.
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let spis: [u32; 12] = [1, 2, 3, 4, 5, 6, 7, 0x100, 0xc0ff_ee01, 0xdead_beef, 0xffff_ffff, 0x8000_0000];
    let mut seen = vec![false; n];
    for spi in spis {
        // An ESP-in-UDP header: SPI, sequence number, then some ciphertext.
        let mut esp = spi.to_be_bytes().to_vec();
        esp.extend_from_slice(&[0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
        let at = arrives_at(&sender, addr, &group, &esp);
        assert_eq!(at, (spi % n as u32) as usize, "SPI {spi:#x} with {n} sockets");
        seen[at] = true;
        // Exactly the SPI: 4 bytes suffice.
        assert_eq!(arrives_at(&sender, addr, &group, &spi.to_be_bytes()), (spi % n as u32) as usize);
    }
    assert!(seen.iter().all(|s| *s), "every socket got some SPI: {seen:?}");
    // NAT keepalive: one byte 0xff, too short for an SPI.
    assert_eq!(arrives_at(&sender, addr, &group, &[0xff]), 0);
    // Other short payloads, down to empty.
    assert_eq!(arrives_at(&sender, addr, &group, &[0x12, 0x34, 0x56]), 0);
    assert_eq!(arrives_at(&sender, addr, &group, &[]), 0);
    // IKE on 4500: the non-ESP marker (four zero bytes) then the IKE header.
    let mut ike = vec![0u8; 4];
    ike.extend_from_slice(&[0x11; 28]);
    assert_eq!(arrives_at(&sender, addr, &group, &ike), 0);
}

#[test]
fn two_sockets_steer_by_spi() {
    check(2);
}

#[test]
fn three_sockets_steer_by_spi() {
    check(3);
}

#[test]
fn five_sockets_steer_by_spi() {
    check(5);
}

#[test]
fn one_socket_gets_everything() {
    check(1);
}
