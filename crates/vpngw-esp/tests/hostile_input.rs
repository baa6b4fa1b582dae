//! Arbitrary bytes into the decapsulation path: never a panic, always a typed reason, and a
//! valid packet with any damage is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{all_suites, inner_packet, keys};
use proptest::prelude::*;
use vpngw_crypto::FastRng;
use vpngw_esp::{InboundSa, NextHeader, OutboundSa, Spi};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(suite in 0usize..10, bytes in prop::collection::vec(any::<u8>(), 0..2048), spi_match in any::<bool>()) {
        let (e, i) = all_suites()[suite];
        let inb = InboundSa::new(Spi::new(0x100), &keys(e, i, 1), 64).unwrap();
        let mut buf = bytes;
        if spi_match && buf.len() >= 4 {
            buf[..4].copy_from_slice(&Spi::new(0x100).to_be_bytes());
        }
        // Random bytes cannot carry a valid ICV: the result is an error.
        prop_assert!(inb.open_in_place(&mut buf).is_err());
    }

    #[test]
    fn damaged_packets_are_refused(
        suite in 0usize..10,
        len in 0usize..600,
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        truncate in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (e, i) = all_suites()[suite];
        let k = keys(e, i, 2);
        let out = OutboundSa::new(Spi::new(0x100), &k).unwrap();
        let inb = InboundSa::new(Spi::new(0x100), &k, 64).unwrap();
        let inner = inner_packet(len, 9);
        let mut buf = vec![0u8; len + 100];
        let sealed = out.seal(&mut FastRng::from_seed_for_tests(1), &inner, NextHeader::IPV4, &mut buf).unwrap();
        let original = buf[sealed.range.clone()].to_vec();
        let mut damaged = original.clone();
        for (index, xor) in cuts {
            let at = index.index(damaged.len());
            damaged[at] ^= xor;
        }
        if let Some(t) = truncate {
            damaged.truncate(t.index(damaged.len()));
        }
        let untouched = damaged == original;
        let result = inb.open_in_place(&mut damaged);
        if untouched {
            // The damage cancelled out (xor 0, or truncation at the end of the packet).
            prop_assert!(result.is_ok());
        } else {
            prop_assert!(result.is_err(), "damaged packet accepted: {:?}", result);
        }
    }
}
