//! The security association database: SAs published by the control plane, read per packet
//! without locks.
//!
//! Readers load an `Arc` snapshot through arc-swap (no lock, no reference-count contention on
//! the table itself); the control plane, the only writer, builds a new snapshot and swaps it in.
//! Installing is make-before-break: a new inbound SA is visible before the outbound SA that
//! makes the peer use it.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use vpngw_esp::{InboundSa, OpenError, OutboundSa};

/// An IPv4 network as a selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Traffic an SA pair protects: local network <=> remote network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Selectors {
    pub local: Ipv4Net,
    pub remote: Ipv4Net,
}

/// How ESP leaves and arrives: raw (IP protocol 50) or in UDP (RFC 3948), between these
/// addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp: bool,
}

/// Per-SA counters: workers add, the control plane reads.
#[derive(Debug, Default)]
pub struct SaCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub drops: [AtomicU64; OpenError::COUNT],
}

impl SaCounters {
    pub fn add(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn drop(&self, reason: OpenError) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct InboundEntry {
    pub connection: Arc<str>,
    pub sa: InboundSa,
    pub selectors: Selectors,
    pub transport: Transport,
    pub counters: SaCounters,
}

#[derive(Debug)]
pub struct OutboundEntry {
    pub connection: Arc<str>,
    pub sa: OutboundSa,
    pub selectors: Selectors,
    pub transport: Transport,
    pub counters: SaCounters,
}

type InboundMap = HashMap<u32, Arc<InboundEntry>>;
type OutboundList = Vec<Arc<OutboundEntry>>;

#[derive(Default)]
pub struct SaTable {
    inbound: ArcSwap<InboundMap>,
    outbound: ArcSwap<OutboundList>,
    /// Serialises writers (the control plane); readers never touch it.
    write: Mutex<()>,
}

impl fmt::Debug for SaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaTable")
            .field("inbound", &self.inbound.load().len())
            .field("outbound", &self.outbound.load().len())
            .finish()
    }
}

impl SaTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes an SA pair: inbound first, so that the peer's first packet under the new
    /// keys already finds its SA; then outbound, replacing any older SA for the same selectors.
    pub fn install(&self, inbound: InboundEntry, outbound: OutboundEntry) {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let spi = inbound.sa.spi();
        let mut map = InboundMap::clone(&self.inbound.load());
        map.insert(spi, Arc::new(inbound));
        self.inbound.store(Arc::new(map));
        let mut list = OutboundList::clone(&self.outbound.load());
        list.retain(|e| e.selectors != outbound.selectors);
        list.push(Arc::new(outbound));
        self.outbound.store(Arc::new(list));
    }

    /// Withdraws an SA pair: outbound first (nothing new is sealed with it), then inbound.
    pub fn remove(&self, spi_in: u32, spi_out: u32) {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = OutboundList::clone(&self.outbound.load());
        list.retain(|e| e.sa.spi() != spi_out);
        self.outbound.store(Arc::new(list));
        let mut map = InboundMap::clone(&self.inbound.load());
        map.remove(&spi_in);
        self.inbound.store(Arc::new(map));
    }

    /// Removes every SA of a connection.
    pub fn remove_connection(&self, connection: &str) {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = OutboundList::clone(&self.outbound.load());
        list.retain(|e| &*e.connection != connection);
        self.outbound.store(Arc::new(list));
        let mut map = InboundMap::clone(&self.inbound.load());
        map.retain(|_, e| &*e.connection != connection);
        self.inbound.store(Arc::new(map));
    }

    /// The inbound SA for an SPI: one atomic load, no lock.
    pub fn inbound(&self, spi: u32) -> Option<Arc<InboundEntry>> {
        self.inbound.load().get(&spi).cloned()
    }

    /// The outbound SA whose selectors cover a packet from `src` to `dst`.
    pub fn outbound_for(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<Arc<OutboundEntry>> {
        self.outbound
            .load()
            .iter()
            .find(|e| e.selectors.local.contains(src) && e.selectors.remote.contains(dst))
            .cloned()
    }

    pub fn outbound_by_spi(&self, spi: u32) -> Option<Arc<OutboundEntry>> {
        self.outbound.load().iter().find(|e| e.sa.spi() == spi).cloned()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.inbound.load().len(), self.outbound.load().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpngw_crypto::{EncryptionAlgorithm, IntegrityAlgorithm, SecretBytes};
    use vpngw_esp::SaKeys;

    fn keys() -> SaKeys {
        SaKeys {
            encryption: EncryptionAlgorithm::Aes128,
            encryption_key: SecretBytes::from_slice(&[1; 16]),
            integrity: IntegrityAlgorithm::HmacSha1_96,
            integrity_key: SecretBytes::from_slice(&[2; 20]),
        }
    }

    fn entries(conn: &str, spi_in: u32, spi_out: u32, remote: [u8; 4]) -> (InboundEntry, OutboundEntry) {
        let selectors = Selectors {
            local: Ipv4Net { addr: Ipv4Addr::new(10, 1, 0, 0), prefix: 24 },
            remote: Ipv4Net { addr: Ipv4Addr::from(remote), prefix: 24 },
        };
        let transport = Transport {
            local: "198.51.100.1:4500".parse().unwrap_or_else(|_| unreachable!()),
            remote: "198.51.100.2:4500".parse().unwrap_or_else(|_| unreachable!()),
            udp: true,
        };
        let inb = InboundSa::new(spi_in, &keys(), 64).unwrap_or_else(|_| unreachable!());
        let out = OutboundSa::new(spi_out, &keys()).unwrap_or_else(|_| unreachable!());
        (
            InboundEntry { connection: conn.into(), sa: inb, selectors, transport, counters: SaCounters::default() },
            OutboundEntry { connection: conn.into(), sa: out, selectors, transport, counters: SaCounters::default() },
        )
    }

    #[test]
    fn install_lookup_replace_remove() {
        let t = SaTable::new();
        let (i, o) = entries("a", 100, 200, [10, 2, 0, 0]);
        t.install(i, o);
        assert!(t.inbound(100).is_some());
        assert_eq!(
            t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 9)).map(|e| e.sa.spi()),
            Some(200)
        );
        assert!(t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 3, 0, 9)).is_none());
        // A rekey: the new pair replaces the outbound SA for the same selectors, both inbound
        // SAs stay until the old one is removed.
        let (i2, o2) = entries("a", 101, 201, [10, 2, 0, 0]);
        t.install(i2, o2);
        assert_eq!(t.len(), (2, 1));
        assert_eq!(
            t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 9)).map(|e| e.sa.spi()),
            Some(201)
        );
        t.remove(100, 200);
        assert_eq!(t.len(), (1, 1));
        let (i3, o3) = entries("b", 300, 400, [10, 9, 0, 0]);
        t.install(i3, o3);
        t.remove_connection("a");
        assert_eq!(t.len(), (1, 1));
        assert!(t.inbound(300).is_some());
    }

    #[test]
    fn readers_keep_their_snapshot_while_writers_swap() {
        let t = Arc::new(SaTable::new());
        let (i, o) = entries("a", 1000, 2000, [10, 2, 0, 0]);
        t.install(i, o);
        let held = t.inbound(1000);
        t.remove(1000, 2000);
        assert!(t.inbound(1000).is_none());
        assert_eq!(held.map(|e| e.sa.spi()), Some(1000), "an in-flight packet keeps its SA");
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || (0..100_000).filter(|n| t.inbound(5000 + n % 10).is_some()).count())
            })
            .collect();
        for n in 0..50u32 {
            let (i, o) = entries("c", 5000 + n % 10, 6000 + n, [10, 2, 0, 0]);
            t.install(i, o);
        }
        for r in readers {
            assert!(r.join().is_ok());
        }
    }
}
