//! The security association database: SAs published by the control plane, read per packet
//! without locks.
//!
//! Readers load an `Arc` snapshot through arc-swap (no lock, no reference-count contention on
//! the table itself); the control plane, the only writer, builds a new snapshot and swaps it in.
//! Installing is make-before-break: a new inbound SA is visible before the outbound SA that
//! makes the peer use it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use rustc_hash::FxHashMap as HashMap;
use vpngw_esp::{InboundSa, OpenError, OutboundSa, Spi};

/// An IPv4 network as a selector (the one network type of the workspace).
pub use ipnet::Ipv4Net;

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

/// An inbound SA's counters: packets and bytes opened, and the packets it refused by reason.
/// Workers add, the control plane reads.
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

    pub fn dropped(&self, reason: OpenError) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }
}

/// An outbound SA's counters: packets and bytes sealed and sent. No drops: the reasons an SA
/// counts are [`OpenError`]s, which only opening produces (a packet refused on the way out is
/// counted per worker), so 72 bytes of always-zero counters per outbound SA are left out.
#[derive(Debug, Default)]
pub struct OutboundCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

impl OutboundCounters {
    pub fn add(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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
    pub counters: OutboundCounters,
}

/// Inbound SAs by SPI. FxHash: the keys are SPIs we chose at random ourselves, so a fast,
/// non-keyed hash cannot be attacked.
pub type InboundMap = HashMap<Spi, Arc<InboundEntry>>;

/// Items keyed by a remote network, found by longest-prefix match on a destination (then the
/// first whose local network holds the source). Cost: one hash lookup per distinct prefix
/// length in use (usually one to three), whatever the number of items.
#[derive(Clone, Debug)]
pub struct NetIndex<T> {
    by_net: HashMap<(u32, u8), Vec<T>>,
    /// Prefix lengths present, longest first.
    prefixes: Vec<u8>,
}

impl<T> Default for NetIndex<T> {
    fn default() -> Self {
        Self { by_net: HashMap::default(), prefixes: Vec::new() }
    }
}

/// The network of `addr` with this prefix length (at most 32), as the index's key.
fn network(addr: Ipv4Addr, prefix: u8) -> u32 {
    Ipv4Net::new(addr, prefix).map_or(0, |n| u32::from(n.network()))
}

impl<T> NetIndex<T> {
    pub fn insert(&mut self, remote: Ipv4Net, item: T) {
        let prefix = remote.prefix_len();
        self.by_net.entry((u32::from(remote.network()), prefix)).or_default().push(item);
        if !self.prefixes.contains(&prefix) {
            self.prefixes.push(prefix);
            self.prefixes.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.by_net.retain(|_, v| {
            v.retain(&mut keep);
            !v.is_empty()
        });
        let present: std::collections::HashSet<u8> = self.by_net.keys().map(|(_, p)| *p).collect();
        self.prefixes.retain(|p| present.contains(p));
    }

    /// The first item for the longest remote network holding `dst` whose `local` test passes.
    pub fn lookup(&self, dst: Ipv4Addr, mut local: impl FnMut(&T) -> bool) -> Option<&T> {
        for &p in &self.prefixes {
            if let Some(items) = self.by_net.get(&(network(dst, p), p))
                && let Some(hit) = items.iter().find(|i| local(i))
            {
                return Some(hit);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.by_net.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_net.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.by_net.values().flatten()
    }
}

/// Outbound SAs, by selectors (for packets) and by SPI (for status).
#[derive(Clone, Debug, Default)]
pub struct Outbound {
    by_selectors: NetIndex<Arc<OutboundEntry>>,
    by_spi: HashMap<Spi, Arc<OutboundEntry>>,
}

impl Outbound {
    /// The SA whose selectors cover a packet from `src` to `dst` (longest remote prefix).
    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&Arc<OutboundEntry>> {
        self.by_selectors.lookup(dst, |e| e.selectors.local.contains(&src))
    }

    /// The SA with this SPI.
    pub fn by_spi(&self, spi: Spi) -> Option<&Arc<OutboundEntry>> {
        self.by_spi.get(&spi)
    }

    /// Every outbound SA, in no order.
    pub fn all(&self) -> impl Iterator<Item = &Arc<OutboundEntry>> {
        self.by_spi.values()
    }
}

/// SA entries taken out of the table, handed back for their final counters (a worker may
/// still count a packet on one until it finishes its batch: read them once the `Arc` is the
/// last one).
#[derive(Debug, Default)]
pub struct Withdrawn {
    pub inbound: Vec<Arc<InboundEntry>>,
    pub outbound: Vec<Arc<OutboundEntry>>,
}

impl Withdrawn {
    pub fn append(&mut self, mut other: Withdrawn) {
        self.inbound.append(&mut other.inbound);
        self.outbound.append(&mut other.outbound);
    }
}

#[derive(Default)]
pub struct SaTable {
    inbound: ArcSwap<InboundMap>,
    outbound: ArcSwap<Outbound>,
    /// Serialises writers (the control plane); readers never touch it.
    write: Mutex<()>,
}

impl fmt::Debug for SaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, o) = self.len();
        f.debug_struct("SaTable").field("inbound", &i).field("outbound", &o).finish()
    }
}

impl SaTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes an SA pair: inbound first, so that the peer's first packet under the new
    /// keys already finds its SA; then outbound, replacing any older SA for the same selectors.
    /// For tests and benchmarks: the daemon installs outbound SAs on activation
    /// (make-before-break), with [`SaTable::install_inbound`] and [`SaTable::install_outbound`].
    #[cfg(any(test, feature = "testing"))]
    pub fn install(&self, inbound: InboundEntry, outbound: OutboundEntry) -> Withdrawn {
        self.install_inbound(inbound);
        self.install_outbound(outbound)
    }

    /// Publishes an inbound SA (make-before-break: before the peer may send with it).
    pub fn install_inbound(&self, inbound: InboundEntry) {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let spi = inbound.sa.spi();
        let mut map = InboundMap::clone(&self.inbound.load());
        map.insert(spi, Arc::new(inbound));
        self.inbound.store(Arc::new(map));
    }

    /// Publishes an outbound SA, replacing any older SA for the same selectors: from the next
    /// batch on, workers seal with it.
    pub fn install_outbound(&self, outbound: OutboundEntry) -> Withdrawn {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Outbound::clone(&self.outbound.load());
        let selectors = outbound.selectors;
        let replaced: Vec<Spi> =
            out.by_selectors.iter().filter(|e| e.selectors == selectors).map(|e| e.sa.spi()).collect();
        out.by_selectors.retain(|e| e.selectors != selectors);
        let mut withdrawn = Withdrawn::default();
        for spi in replaced {
            withdrawn.outbound.extend(out.by_spi.remove(&spi));
        }
        let entry = Arc::new(outbound);
        out.by_spi.insert(entry.sa.spi(), entry.clone());
        out.by_selectors.insert(selectors.remote, entry);
        self.outbound.store(Arc::new(out));
        withdrawn
    }

    /// Withdraws an SA pair: outbound first (nothing new is sealed with it), then inbound.
    pub fn remove(&self, spi_in: Spi, spi_out: Spi) -> Withdrawn {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Outbound::clone(&self.outbound.load());
        out.by_selectors.retain(|e| e.sa.spi() != spi_out);
        let outbound: Vec<_> = out.by_spi.remove(&spi_out).into_iter().collect();
        self.outbound.store(Arc::new(out));
        let mut map = InboundMap::clone(&self.inbound.load());
        let inbound: Vec<_> = map.remove(&spi_in).into_iter().collect();
        self.inbound.store(Arc::new(map));
        Withdrawn { inbound, outbound }
    }

    /// Removes every SA of a connection.
    pub fn remove_connection(&self, connection: &str) -> Withdrawn {
        let _writer = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut withdrawn = Withdrawn::default();
        let mut out = Outbound::clone(&self.outbound.load());
        out.by_selectors.retain(|e| &*e.connection != connection);
        out.by_spi.retain(|_, e| {
            let keep = &*e.connection != connection;
            if !keep {
                withdrawn.outbound.push(e.clone());
            }
            keep
        });
        self.outbound.store(Arc::new(out));
        let mut map = InboundMap::clone(&self.inbound.load());
        map.retain(|_, e| {
            let keep = &*e.connection != connection;
            if !keep {
                withdrawn.inbound.push(e.clone());
            }
            keep
        });
        self.inbound.store(Arc::new(map));
        withdrawn
    }

    /// Every inbound SA (for status and metrics).
    pub fn inbound_all(&self) -> Vec<Arc<InboundEntry>> {
        self.inbound.load().values().cloned().collect()
    }

    /// The inbound SA for an SPI: one atomic load, no lock.
    pub fn inbound(&self, spi: Spi) -> Option<Arc<InboundEntry>> {
        self.inbound.load().get(&spi).cloned()
    }

    /// A snapshot of the inbound SAs for a batch of packets: lookups in it take no lock and
    /// touch no reference count. Hold it only for the batch (a newer table is published
    /// meanwhile; the snapshot keeps the SAs it saw alive).
    pub fn inbound_view(&self) -> Guard<Arc<InboundMap>> {
        self.inbound.load()
    }

    /// A snapshot of the outbound SAs for a batch of packets (see [`SaTable::inbound_view`]).
    pub fn outbound_view(&self) -> Guard<Arc<Outbound>> {
        self.outbound.load()
    }

    /// The outbound SA whose selectors cover a packet from `src` to `dst` (longest remote
    /// prefix first). Tests only: the workers look up in an [`SaTable::outbound_view`].
    #[cfg(test)]
    pub fn outbound_for(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<Arc<OutboundEntry>> {
        self.outbound.load().lookup(src, dst).cloned()
    }

    pub fn outbound_by_spi(&self, spi: Spi) -> Option<Arc<OutboundEntry>> {
        self.outbound.load().by_spi.get(&spi).cloned()
    }

    /// Every outbound SA (for status and keepalives).
    pub fn outbound_all(&self) -> Vec<Arc<OutboundEntry>> {
        self.outbound.load().by_spi.values().cloned().collect()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.inbound.load().len(), self.outbound.load().by_spi.len())
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
        let (spi_in, spi_out) = (Spi::new(spi_in), Spi::new(spi_out));
        let selectors = Selectors {
            local: Ipv4Net::new_assert(Ipv4Addr::new(10, 1, 0, 0), 24),
            remote: Ipv4Net::new_assert(Ipv4Addr::from(remote), 24),
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
            OutboundEntry {
                connection: conn.into(),
                sa: out,
                selectors,
                transport,
                counters: OutboundCounters::default(),
            },
        )
    }

    #[test]
    fn install_lookup_replace_remove() {
        let t = SaTable::new();
        let (i, o) = entries("a", 100, 200, [10, 2, 0, 0]);
        t.install(i, o);
        assert!(t.inbound(Spi::new(100)).is_some());
        assert_eq!(
            t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 9)).map(|e| e.sa.spi()),
            Some(Spi::new(200))
        );
        assert!(t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 3, 0, 9)).is_none());
        // A rekey: the new pair replaces the outbound SA for the same selectors, both inbound
        // SAs stay until the old one is removed.
        let (i2, o2) = entries("a", 101, 201, [10, 2, 0, 0]);
        let replaced = t.install(i2, o2);
        assert_eq!(t.len(), (2, 1));
        // The replaced outbound SA comes back, for its final counters.
        assert_eq!(replaced.outbound.iter().map(|e| e.sa.spi()).collect::<Vec<_>>(), vec![Spi::new(200)]);
        assert!(replaced.inbound.is_empty());
        assert_eq!(
            t.outbound_for(Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 9)).map(|e| e.sa.spi()),
            Some(Spi::new(201))
        );
        let gone = t.remove(Spi::new(100), Spi::new(200));
        assert_eq!(t.len(), (1, 1));
        assert_eq!((gone.inbound.len(), gone.outbound.len()), (1, 0), "outbound 200 went at the switch");
        let (i3, o3) = entries("b", 300, 400, [10, 9, 0, 0]);
        t.install(i3, o3);
        let gone = t.remove_connection("a");
        assert_eq!(t.len(), (1, 1));
        assert_eq!((gone.inbound[0].sa.spi(), gone.outbound[0].sa.spi()), (Spi::new(101), Spi::new(201)));
        assert!(t.inbound(Spi::new(300)).is_some());
    }

    #[test]
    fn readers_keep_their_snapshot_while_writers_swap() {
        let t = Arc::new(SaTable::new());
        let (i, o) = entries("a", 1000, 2000, [10, 2, 0, 0]);
        t.install(i, o);
        let held = t.inbound(Spi::new(1000));
        t.remove(Spi::new(1000), Spi::new(2000));
        assert!(t.inbound(Spi::new(1000)).is_none());
        assert_eq!(held.map(|e| e.sa.spi()), Some(Spi::new(1000)), "an in-flight packet keeps its SA");
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    (0..100_000).filter(|n| t.inbound(Spi::new(5000 + n % 10)).is_some()).count()
                })
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
