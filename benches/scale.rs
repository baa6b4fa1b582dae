//! Scale and memory (`make bench-scale`):
//! - per-packet cost (SA table lookup + seal, as a worker does it) with 1 SA and with 10,000 SA
//!   pairs installed and traffic spread over all of them, and the ratio;
//! - lookups alone (inbound by SPI, outbound by longest prefix) at both sizes;
//! - two threads sealing with one shared SA (the atomic sequence counter) versus each with its
//!   own: what sharing an SA between workers costs;
//! - memory per SA pair in the dataplane table and per tunnel in the IKE engine: live heap
//!   bytes (a counting allocator) and resident-set growth.
//!
//! Custom harness (no criterion): medians of 5 runs, printed with ratios.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a failure aborts the run

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Counts live heap bytes.
struct Counting;

// SAFETY: forwards every call unchanged to the system allocator; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpngw_crypto::{EncryptionAlgorithm, FastRng, HashAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_dataplane::sa_table::{
    InboundEntry, Ipv4Net, OutboundCounters, OutboundEntry, SaCounters, SaTable, Selectors, Transport,
};
use vpngw_esp::{InboundSa, NextHeader, OutboundSa, SaKeys, Spi};
use vpngw_ike::testing::Pair;
use vpngw_ike::{
    Endpoint, EngineConfig, ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy, Phase2Policy, SubnetPair,
};

const SAS: usize = 10_000;

fn keys(seed: u32) -> SaKeys {
    suite_keys(seed, EncryptionAlgorithm::Aes128, IntegrityAlgorithm::HmacSha1_96)
}

fn suite_keys(seed: u32, encryption: EncryptionAlgorithm, integrity: IntegrityAlgorithm) -> SaKeys {
    let b = seed.to_be_bytes();
    let e_len = encryption.spec().key_len;
    let i_len = integrity.spec().key_len;
    SaKeys {
        encryption,
        encryption_key: SecretBytes::new((0..e_len).map(|i| b[i % 4] ^ (i as u8).wrapping_mul(17) ^ 0x5a).collect()),
        integrity,
        integrity_key: SecretBytes::new((0..i_len).map(|i| b[i % 4] ^ i as u8).collect()),
    }
}

/// SA pair n protects 10.1.0.0/24 <=> 10.(2 + n / 250).(n % 250).0/24.
fn remote_net(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 2 + (n / 250) as u8, (n % 250) as u8, 0)
}

fn install(table: &SaTable, n: usize) {
    install_suite(table, n, &keys(n as u32));
}

fn install_suite(table: &SaTable, n: usize, k: &SaKeys) {
    let selectors = Selectors {
        local: Ipv4Net::new_assert(Ipv4Addr::new(10, 1, 0, 0), 24),
        remote: Ipv4Net::new_assert(remote_net(n), 24),
    };
    let transport = Transport {
        local: "198.51.100.1:4500".parse().unwrap(),
        remote: "198.51.100.2:4500".parse().unwrap(),
        udp: false,
    };
    // One name per pair, shared by both entries, as the daemon installs them.
    let connection: Arc<str> = "c".into();
    table.install(
        InboundEntry {
            connection: connection.clone(),
            sa: InboundSa::new(Spi::new(0x1000 + n as u32), k, 1024).unwrap(),
            selectors,
            transport,
            counters: SaCounters::default(),
        },
        OutboundEntry {
            connection,
            sa: OutboundSa::new(Spi::new(0x8000_0000 + n as u32), k).unwrap(),
            selectors,
            transport,
            counters: OutboundCounters::default(),
        },
    );
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// ns per packet: lookup the outbound SA (in a per-batch snapshot, as workers do) for a
/// destination in `spread` remote networks, seal. `burst` packets go to one SA before the
/// next (traffic comes in bursts per flow; 1 = every packet another SA, the worst case).
fn per_packet(table: &SaTable, spread: usize, size: usize, burst: usize) -> f64 {
    let mut rng = FastRng::from_seed_for_tests(1);
    let mut buf = vec![0u8; 64 + size + 64];
    buf[64] = 0x45;
    let packets = 200_000;
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut i = 0;
            while i < packets {
                let view = table.outbound_view();
                for _ in 0..32 {
                    // A stride coprime with the SA count visits them all in a scattered order.
                    let n = ((i / burst) * 7919) % spread;
                    let dst = Ipv4Addr::from(u32::from(remote_net(n)) | 9);
                    let e = view.lookup(Ipv4Addr::new(10, 1, 0, 5), dst).unwrap();
                    black_box(e.sa.seal_in_place(&mut rng, &mut buf, 64..64 + size, NextHeader::IPV4).unwrap());
                    i += 1;
                }
            }
            start.elapsed().as_nanos() as f64 / packets as f64
        })
        .collect();
    median(runs)
}

fn lookups(table: &SaTable, spread: usize) -> (f64, f64) {
    let n = 1_000_000;
    let inbound: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let view = table.inbound_view();
            for i in 0..n {
                black_box(view.get(&Spi::new(0x1000 + ((i * 7919) % spread) as u32)));
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    let outbound: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let view = table.outbound_view();
            for i in 0..n {
                let dst = Ipv4Addr::from(u32::from(remote_net((i * 7919) % spread)) | 9);
                black_box(view.lookup(Ipv4Addr::new(10, 1, 0, 5), dst));
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    (median(inbound), median(outbound))
}

/// Two threads sealing 64-byte packets: with one shared SA, or one SA each. ns per packet.
fn shared_sa(shared: bool) -> f64 {
    let a = Arc::new(OutboundSa::new(Spi::new(1), &keys(1)).unwrap());
    let b = if shared { a.clone() } else { Arc::new(OutboundSa::new(Spi::new(2), &keys(2)).unwrap()) };
    let per_thread = 500_000;
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let handles: Vec<_> = [a.clone(), b.clone()]
                .into_iter()
                .enumerate()
                .map(|(t, sa)| {
                    std::thread::spawn(move || {
                        let mut rng = FastRng::from_seed_for_tests(t as u64);
                        let mut buf = vec![0u8; 192];
                        buf[64] = 0x45;
                        for _ in 0..per_thread {
                            black_box(sa.seal_in_place(&mut rng, &mut buf, 64..128, NextHeader::IPV4).ok());
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            start.elapsed().as_nanos() as f64 / (2 * per_thread) as f64
        })
        .collect();
    median(runs)
}

/// (live heap bytes, resident bytes) per tunnel in the IKE engine: `tunnels` peers negotiated
/// in memory (dh1).
fn engine_memory(tunnels: usize) -> (f64, f64) {
    let peer = |name: String, local: Ipv4Addr, remote: Ipv4Addr, n: usize, initiator: bool| {
        let a = Ipv4Subnet::new(Ipv4Addr::new(10, 1, 0, 0), 24).unwrap();
        let b = Ipv4Subnet::new(remote_net(n), 24).unwrap();
        PeerConfig {
            name,
            local_address: IpAddr::V4(local),
            remote_address: IpAddr::V4(remote),
            psk: SecretBytes::from_slice(b"scale-psk-0123456789"),
            local_id: Identity::Ipv4(local),
            remote_id: Identity::Ipv4(remote),
            mode: ExchangeMode::Main,
            phase1: Phase1Policy {
                encryption: EncryptionAlgorithm::Aes128,
                hash: HashAlgorithm::Sha1,
                ..Phase1Policy::default()
            },
            phase2: Phase2Policy::default(),
            subnets: vec![if initiator {
                SubnetPair { local: b, remote: a }
            } else {
                SubnetPair { local: a, remote: b }
            }],
            force_udp_encapsulation: false,
            dpd: None,
        }
    };
    let hub_addr = Ipv4Addr::new(198, 51, 100, 1);
    let spoke = |n: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n as u32 + 1);
    let before = rss_bytes();
    let live_before = live();
    let mut hub = Endpoint::new(EngineConfig::default(), FastRng::from_seed_for_tests(1));
    for n in 0..tunnels {
        hub.add_peer(peer(format!("spoke-{n}"), hub_addr, spoke(n), n, false)).unwrap();
    }
    let now = Instant::now();
    let mut established = 0;
    for n in 0..tunnels {
        // One spoke at a time: its engine is dropped after, only the hub's state remains.
        let mut s = Endpoint::new(EngineConfig::default(), FastRng::from_seed_for_tests(n as u64 + 2));
        s.add_peer(peer("hub".into(), spoke(n), hub_addr, n, true)).unwrap();
        let mut pair = Pair::with_endpoints(s, hub, now);
        pair.record_wire = false;
        pair.a.initiate(now, "hub").unwrap();
        pair.settle();
        established += Pair::children_established(&pair.b_events);
        (_, hub) = pair.into_endpoints();
    }
    assert_eq!(established, tunnels);
    let per_live = (live() - live_before) as f64 / tunnels as f64;
    let per_rss = (rss_bytes().saturating_sub(before)) as f64 / tunnels as f64;
    black_box(&hub);
    (per_live, per_rss)
}

fn main() {
    println!("scale: one core per measurement, medians of 5 runs");
    let one = SaTable::new();
    install(&one, 0);
    let before = rss_bytes();
    let live_before = live();
    let many = SaTable::new();
    for n in 0..SAS {
        install(&many, n);
    }
    let per_pair_live = (live() - live_before) as f64 / SAS as f64;
    let per_pair_rss = (rss_bytes().saturating_sub(before)) as f64 / SAS as f64;
    for size in [64usize, 1400] {
        let a = per_packet(&one, 1, size, 32);
        let burst = per_packet(&many, SAS, size, 32);
        let scattered = per_packet(&many, SAS, size, 1);
        println!(
            "lookup + seal {size:>4} B: 1 SA {a:>7.1} ns | {SAS} SA pairs, bursts of 32 per SA {burst:>7.1} ns ({:.3}x) | every packet another SA {scattered:>7.1} ns ({:.3}x)",
            burst / a,
            scattered / a
        );
    }
    let (i1, o1) = lookups(&one, 1);
    let (i2, o2) = lookups(&many, SAS);
    println!(
        "inbound lookup by SPI: 1 SA {i1:.1} ns, {SAS} {i2:.1} ns; outbound by longest prefix: 1 SA {o1:.1} ns, {SAS} {o2:.1} ns (scattered)"
    );
    let own = shared_sa(false);
    let shared = shared_sa(true);
    println!(
        "2 threads sealing 64 B: own SA each {own:.1} ns/packet, one shared SA {shared:.1} ns/packet: {:.3}x",
        shared / own
    );
    println!(
        "dataplane memory per SA pair: {per_pair_live:.0} bytes live heap, {per_pair_rss:.0} bytes RSS growth ({SAS} pairs)"
    );
    drop(many);
    // The seed's default suite: 3DES keeps two key schedules (the des crate's and the
    // bitsliced one, docs/adr/0008-bitsliced-des.md).
    let live_before = live();
    let des = SaTable::new();
    for n in 0..SAS {
        install_suite(&des, n, &suite_keys(n as u32, EncryptionAlgorithm::TripleDes, IntegrityAlgorithm::HmacMd5_96));
    }
    let per_pair_des = (live() - live_before) as f64 / SAS as f64;
    println!("dataplane memory per SA pair, 3des-md5 (the seed's default): {per_pair_des:.0} bytes live heap");
    drop(des);
    std::thread::sleep(Duration::from_millis(10));
    let tunnels = 2000;
    let (l, r) = engine_memory(tunnels);
    println!(
        "IKE engine memory per tunnel (1 child SA pair): {l:.0} bytes live heap, {r:.0} bytes RSS growth ({tunnels} tunnels)"
    );
}
