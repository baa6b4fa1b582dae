//! The IKE engine and its sockets (quinn's `ConnectionDriver` shape): datagrams in from UDP 500
//! and, through the dataplane, from UDP 4500; the engine's transmits out on the port they
//! belong to; its timers run when due. What the engine's events mean for the rest of the
//! gateway is the daemon's (`daemon/events.rs`).
//!
//! Queues between the IKE sockets and the loop, each bounded and its drops counted: UDP 500 is
//! read by the loop itself, so its only queue is the socket's receive buffer in the kernel,
//! whose overflows the kernel counts for us (`SO_RXQ_OVFL`; `ike_receive_buffer_full` in
//! status and metrics); IKE on UDP 4500 comes from the dataplane's workers through the control
//! queue (1024 messages, `esp_control_queue_full`).
//!
//! Main mode's Diffie-Hellman runs on the pool (`dh_pool.rs`) when the engine hands it out
//! (`[tuning] dh_threads` above 0): work goes out before the transmits are taken, results come
//! back on the loop (`dh_pool::DhResults`) to [`IkeDriver::on_dh_done`].

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use vpngw_crypto::FastRng;
use vpngw_dataplane::sa_table::SaTable;
use vpngw_ike::{DhDone, Endpoint, EngineConfig, IKE_PORT, NAT_T_PORT, PeerConfig, Transmit};

use crate::dh_pool::DhPool;

/// The 4-byte non-ESP marker in front of IKE on port 4500 (RFC 3948 s.2.2).
const NON_ESP_MARKER: [u8; 4] = [0; 4];

pub struct IkeDriver {
    pub endpoint: Endpoint,
    sock_ike: UdpSocket,
    /// Bound to the NAT-T port for sending IKE; the dataplane's workers receive on it.
    sock_natt: UdpSocket,
    public: Ipv4Addr,
    /// Datagrams for UDP 500 the kernel dropped, its receive buffer full (the loop behind).
    receive_buffer_full: u64,
    /// Runs the engine's Diffie-Hellman work; none when it computes in place.
    pub dh_pool: Option<DhPool>,
    /// Which engine the pool's results are for: raised when [`IkeDriver::reset_endpoint`]
    /// replaces it, so that a late result cannot reach the new engine.
    dh_epoch: u64,
}

impl IkeDriver {
    pub fn new(endpoint: Endpoint, sock_ike: UdpSocket, sock_natt: UdpSocket, public: Ipv4Addr) -> Self {
        // The kernel then tells, with each datagram, how many it dropped on this socket.
        if let Err(e) = setsockopt(&sock_ike, sockopt::RxqOvfl, &1) {
            tracing::warn!(error = %e, "UDP 500: receive buffer overflows will not be counted (SO_RXQ_OVFL)");
        }
        Self { endpoint, sock_ike, sock_natt, public, receive_buffer_full: 0, dh_pool: None, dh_epoch: 0 }
    }

    /// Hands the engine's Diffie-Hellman work to the pool (what the pool cannot take now is
    /// run here, and its result given back at once).
    fn hand_out_dh_work(&mut self) {
        while let Some(work) = self.endpoint.poll_dh_work() {
            let done = match &self.dh_pool {
                Some(pool) => pool.submit(self.dh_epoch, work),
                // An engine that offloads without a pool (never made so): computed here.
                None => Some(work.run()),
            };
            if let Some(done) = done {
                self.endpoint.complete_dh_work(Instant::now(), done);
            }
        }
    }

    /// The pool's size and counters, for metrics.
    pub fn dh_stats(&self) -> crate::ops::metrics::DhStats {
        let Some(pool) = &self.dh_pool else { return Default::default() };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        crate::ops::metrics::DhStats {
            threads: pool.threads(),
            queued: pool.queued(),
            pooled: load(&pool.counters.pooled),
            inline: load(&pool.counters.inline),
        }
    }

    /// A result from the pool: to the engine, unless that engine was replaced meanwhile.
    pub fn on_dh_done(&mut self, (epoch, done): (u64, DhDone)) {
        if epoch == self.dh_epoch {
            self.endpoint.complete_dh_work(Instant::now(), done);
        } else {
            tracing::debug!("Diffie-Hellman result for a replaced IKE engine: dropped");
        }
    }

    /// Replaces the engine with a fresh one that knows these peers and nothing else (hot
    /// backup: a server that steps down, or takes over, starts from no SA). Whatever the old
    /// one had queued is dropped with it, unsent.
    pub fn reset_endpoint(&mut self, config: EngineConfig, peers: impl IntoIterator<Item = PeerConfig>) {
        let rng = match FastRng::from_os() {
            Ok(rng) => rng,
            Err(e) => {
                tracing::error!(error = %e, "cannot seed a fresh IKE engine: the old one stays");
                return;
            }
        };
        let mut endpoint = Endpoint::new(config, rng);
        for peer in peers {
            // Names are unique: they come from the engine being replaced's configuration.
            let _ = endpoint.add_peer(peer);
        }
        self.endpoint = endpoint;
        self.dh_epoch += 1;
    }

    /// Datagrams for UDP 500 the kernel dropped because the socket's receive buffer was full.
    pub fn receive_buffer_full(&self) -> u64 {
        self.receive_buffer_full
    }

    /// Waits for a datagram on UDP 500 and feeds it to the engine (receive errors are ignored:
    /// the next datagram is awaited).
    pub async fn receive(&mut self, buf: &mut [u8]) {
        let received = loop {
            if self.sock_ike.readable().await.is_err() {
                return;
            }
            match self.sock_ike.try_io(Interest::READABLE, || receive_counting(&self.sock_ike, buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r,
            }
        };
        if let Ok((n, from, dropped)) = received {
            if let Some(dropped) = dropped {
                self.receive_buffer_full = u64::from(dropped);
            }
            let local = SocketAddr::new(IpAddr::V4(self.public), IKE_PORT);
            self.endpoint.handle(Instant::now(), local, from, &buf[..n]);
        }
    }

    /// A datagram the dataplane's workers received on UDP 4500 (marker stripped).
    pub fn on_natt_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let local = SocketAddr::new(IpAddr::V4(self.public), NAT_T_PORT);
        self.endpoint.handle(Instant::now(), local, from, data);
    }

    /// What the engine queued to send.
    pub fn take_transmits(&mut self) -> Vec<Transmit> {
        self.hand_out_dh_work();
        std::iter::from_fn(|| self.endpoint.poll_transmit()).collect()
    }

    /// Sends `transmits`, each from the port it belongs to (4500 with the non-ESP marker).
    pub async fn send(&self, transmits: Vec<Transmit>) {
        for t in transmits {
            let result = if t.local.port() == NAT_T_PORT {
                let mut framed = Vec::with_capacity(t.payload.len() + 4);
                framed.extend_from_slice(&NON_ESP_MARKER);
                framed.extend_from_slice(&t.payload);
                self.sock_natt.send_to(&framed, t.remote).await
            } else {
                self.sock_ike.send_to(&t.payload, t.remote).await
            };
            if let Err(e) = result {
                tracing::debug!(remote = %t.remote, error = %e, "send failed");
            }
        }
    }

    /// Runs the engine's timers if one is due now.
    pub fn run_due_timers(&mut self) {
        if self.endpoint.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            self.endpoint.handle_timeout(Instant::now());
        }
    }

    /// NAT keepalives (one 0xFF byte, RFC 3948 s.2.3) to every peer we reach through UDP.
    pub async fn send_keepalives(&self, table: &SaTable) {
        let peers: std::collections::BTreeSet<SocketAddr> =
            table.outbound_all().iter().filter(|e| e.transport.udp).map(|e| e.transport.remote).collect();
        for p in peers {
            let _ = self.sock_natt.send_to(&[0xff], p).await;
        }
    }
}

/// One datagram from `sock` into `buf`: its length, its source, and the kernel's count of the
/// datagrams this socket dropped so far (when the kernel attached it).
fn receive_counting(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(u32);
    let msg = recvmsg::<SockaddrIn>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let dropped = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
        ControlMessageOwned::RxqOvfl(n) => Some(n),
        _ => None,
    });
    let from = msg.address.map(|a| SocketAddr::from(std::net::SocketAddrV4::from(a)));
    let from = from.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without a source address"))?;
    Ok((msg.bytes, from, dropped))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    /// A socket nobody reads for a while: the kernel drops what its buffer cannot hold, and the
    /// next datagram read tells how many.
    #[test]
    fn receive_buffer_overflows_are_counted() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket2::SockRef::from(&std_sock).set_recv_buffer_size(4096).unwrap();
            std_sock.set_nonblocking(true).unwrap();
            let sock = UdpSocket::from_std(std_sock).unwrap();
            setsockopt(&sock, sockopt::RxqOvfl, &1).unwrap();
            let to = sock.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..200 {
                sender.send_to(&[0u8; 200], to).unwrap();
            }
            // What the buffer held was queued before the drops; the next datagram tells.
            let mut buf = [0u8; 2048];
            let mut held = 0;
            while let Ok((n, _, _)) = receive_counting(&sock, &mut buf) {
                assert_eq!(n, 200);
                held += 1;
            }
            assert!(held < 200, "{held}");
            sender.send_to(&[1u8; 100], to).unwrap();
            sock.readable().await.unwrap();
            let (n, from, dropped) = sock.try_io(Interest::READABLE, || receive_counting(&sock, &mut buf)).unwrap();
            assert_eq!((n, from), (100, sender.local_addr().unwrap()));
            assert_eq!(dropped, Some(200 - held), "{held} held");
        });
    }
}
