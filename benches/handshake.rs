//! Complete IKEv1 negotiations per second: main mode (6 messages) + one quick mode (3 messages)
//! between two in-memory engines, per DH group, without PFS and with PFS in the same group, all
//! on one core. Both sides' work is counted: a gateway answering N peers per second does half of it,
//! so the per-core figure for one gateway is about twice what is printed.
//!
//! Run: `make bench` (or `cargo bench -p vpngw-benches --bench handshake`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a failure aborts the run

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use vpngw_benches::{criterion_dir, median_ns};
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, FastRng, HashAlgorithm, SecretBytes};
use vpngw_ike::testing::Pair;
use vpngw_ike::{
    Endpoint, EngineConfig, ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy, Phase2Policy, SubnetPair,
};

const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fn peer(name: &str, local: Ipv4Addr, remote: Ipv4Addr, group: DhGroup, pfs: bool, l: &str, r: &str) -> PeerConfig {
    let net = |s: &str| Ipv4Subnet::new(s.parse().unwrap(), 24).unwrap();
    PeerConfig {
        name: name.into(),
        local_address: IpAddr::V4(local),
        remote_address: IpAddr::V4(remote),
        psk: SecretBytes::from_slice(b"bench-psk-0123456789"),
        local_id: Identity::Ipv4(local),
        remote_id: Identity::Ipv4(remote),
        mode: ExchangeMode::Main,
        phase1: Phase1Policy {
            encryption: EncryptionAlgorithm::Aes128,
            hash: HashAlgorithm::Sha1,
            dh_group: group,
            lifetime: Duration::from_secs(86400),
        },
        phase2: Phase2Policy { pfs: pfs.then_some(group), ..Phase2Policy::default() },
        subnets: vec![SubnetPair { local: net(l), remote: net(r) }],
        force_udp_encapsulation: false,
        dpd: None,
    }
}

/// One full negotiation between fresh engines; panics unless both sides installed a child SA.
fn handshake(group: DhGroup, pfs: bool, seed: u64) {
    let mut a = Endpoint::new(EngineConfig::default(), FastRng::from_seed_for_tests(seed));
    let mut b = Endpoint::new(EngineConfig::default(), FastRng::from_seed_for_tests(seed ^ 0xffff));
    a.add_peer(peer("to-b", A, B, group, pfs, "10.1.0.0", "10.2.0.0")).unwrap();
    b.add_peer(peer("to-a", B, A, group, pfs, "10.2.0.0", "10.1.0.0")).unwrap();
    let mut pair = Pair::with_endpoints(a, b, Instant::now());
    pair.record_wire = false;
    pair.a.initiate(pair.now, "to-b").unwrap();
    pair.settle();
    let children = Pair::children_established(&pair.a_events) + Pair::children_established(&pair.b_events);
    assert_eq!(children, 2, "negotiation did not complete");
}

fn main() {
    let quick = std::env::var_os("VPNGW_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .output_directory(&criterion_dir())
        .sample_size(if quick { 10 } else { 20 })
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .configure_from_args();
    let mut group = c.benchmark_group("ike_handshake");
    let mut seed = 0;
    for (kind, pfs) in [("main_quick", false), ("main_quick_pfs", true)] {
        for g in DhGroup::ALL {
            group.bench_function(BenchmarkId::new(kind, g.name()), |bench| {
                bench.iter(|| {
                    seed += 1;
                    handshake(g, pfs, seed);
                })
            });
        }
    }
    group.finish();
    c.final_summary();
    println!("\nIKEv1 main mode + quick mode (aes-128/sha1), both engines on one core, median:");
    println!(
        "{:<6} {:>14} {:>14} {:>18} {:>18}",
        "group", "ms (no PFS)", "per s (no PFS)", "ms (PFS same group)", "per s (PFS)"
    );
    for g in DhGroup::ALL {
        let plain = median_ns("ike_handshake", "main_quick", g.name());
        let pfs = median_ns("ike_handshake", "main_quick_pfs", g.name());
        if let (Some(a), Some(b)) = (plain, pfs) {
            println!("{:<6} {:>14.3} {:>14.0} {:>18.3} {:>18.0}", g.name(), a / 1e6, 1e9 / a, b / 1e6, 1e9 / b);
        }
    }
    println!("A DH exponentiation with a 256-bit exponent dominates: 4 per negotiation without PFS, 8 with.");
}
