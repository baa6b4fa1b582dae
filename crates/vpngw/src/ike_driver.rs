//! The IKE engine and its sockets (quinn's `ConnectionDriver` shape): datagrams in from UDP 500
//! and, through the dataplane, from UDP 4500; the engine's transmits out on the port they
//! belong to; its timers run when due. What the engine's events mean for the rest of the
//! gateway is the daemon's (`daemon/events.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;
use vpngw_dataplane::sa_table::SaTable;
use vpngw_ike::{Endpoint, IKE_PORT, NAT_T_PORT, Transmit};

/// The 4-byte non-ESP marker in front of IKE on port 4500 (RFC 3948 s.2.2).
const NON_ESP_MARKER: [u8; 4] = [0; 4];

pub struct IkeDriver {
    pub endpoint: Endpoint,
    sock_ike: UdpSocket,
    /// Bound to the NAT-T port for sending IKE; the dataplane's workers receive on it.
    sock_natt: UdpSocket,
    public: Ipv4Addr,
}

impl IkeDriver {
    pub fn new(endpoint: Endpoint, sock_ike: UdpSocket, sock_natt: UdpSocket, public: Ipv4Addr) -> Self {
        Self { endpoint, sock_ike, sock_natt, public }
    }

    /// Waits for a datagram on UDP 500 and feeds it to the engine (receive errors are ignored:
    /// the next datagram is awaited).
    pub async fn receive(&mut self, buf: &mut [u8]) {
        if let Ok((n, from)) = self.sock_ike.recv_from(buf).await {
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
