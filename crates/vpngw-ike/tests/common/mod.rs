//! What the IKE tests share: the standard pair's addresses and configurations, and a check that
//! two child SAs are the two ends of one tunnel. The pair itself is `vpngw_ike::testing::Pair`.
// Each test binary uses a part of this module (dead code, unused re-exports); a failed unwrap is
// a failed test.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use vpngw_crypto::{FastRng, SecretBytes};
pub use vpngw_ike::testing::{A_ADDR, A_PRIVATE, B_ADDR, NAT_PUBLIC, PSK, Pair, configs, engine_config, peer, subnet};
use vpngw_ike::{ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy, Phase2Policy, SubnetPair};

/// Checks that two child SAs are the two ends of one tunnel: SPIs and keys crossed, and packets
/// sealed by one open at the other.
pub fn assert_mirrored(x: &vpngw_ike::ChildSa, y: &vpngw_ike::ChildSa) {
    assert_eq!(x.spi_in, y.spi_out);
    assert_eq!(x.spi_out, y.spi_in);
    assert_eq!(x.keys_in.encryption_key, y.keys_out.encryption_key);
    assert_eq!(x.keys_in.integrity_key, y.keys_out.integrity_key);
    assert_eq!(x.keys_out.encryption_key, y.keys_in.encryption_key);
    assert_ne!(x.keys_in.encryption_key, x.keys_out.encryption_key, "directions must differ");
    assert_eq!(x.selectors.local, y.selectors.remote);
    assert_eq!(x.selectors.remote, y.selectors.local);
    let out = vpngw_esp::OutboundSa::new(x.spi_out, &x.keys_out).unwrap();
    let inb = vpngw_esp::InboundSa::new(y.spi_in, &y.keys_in, 64).unwrap();
    let mut rng = FastRng::from_seed_for_tests(1);
    let mut buf = vec![0u8; 256];
    let inner = [0x45u8; 60];
    let sealed = out.seal(&mut rng, &inner, vpngw_esp::NextHeader::IPV4, &mut buf).unwrap();
    let opened = inb.open_in_place(&mut buf[sealed.range.clone()]).unwrap();
    assert_eq!(opened.payload.len(), 60);
}
