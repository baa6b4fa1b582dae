//! Hostile and malformed datagrams: random bytes, and random damage to each message of a real
//! negotiation, fed to the engines at that stage. Never a panic, and the engines keep working.
//! (Whether damage is detected is covered elsewhere: IKEv1 leaves some bytes unauthenticated,
//! e.g. vendor IDs and the padding of encrypted messages, so "damage = failure" would be false.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;

/// The datagrams of one successful negotiation (direction, source, destination, bytes).
fn transcript(seed: u64) -> Vec<(bool, std::net::SocketAddr, std::net::SocketAddr, Vec<u8>)> {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, seed);
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(Duration::from_secs(10));
    p.wire.clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1500), header_like in any::<bool>()) {
        let (a, b) = configs();
        let mut p = Pair::new(a, b, 1);
        let mut data = bytes;
        if header_like && data.len() >= 28 {
            data[17] = 0x10; // version 1.0
            data[18] = 2; // main mode
            let len = data.len() as u32;
            data[24..28].copy_from_slice(&len.to_be_bytes());
        }
        p.b.handle(p.now, "198.51.100.2:500".parse().unwrap(), "198.51.100.1:500".parse().unwrap(), &data);
        p.b.handle_timeout(p.now + Duration::from_secs(100));
        while p.b.poll_event().is_some() {}
        while p.b.poll_transmit().is_some() {}
    }

    #[test]
    fn damaged_messages_at_every_stage_never_panic(
        seed in 0u64..4,
        index in 0usize..9,
        damage in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let wire = transcript(seed);
        prop_assume!(index < wire.len());
        // Replay the negotiation up to `index`, then deliver a damaged copy of that message.
        let (a, b) = configs();
        let mut p = Pair::new(a, b, seed);
        p.a.initiate(p.now, "to-b").unwrap();
        for (i, (a_to_b, src, dst, bytes)) in wire.iter().enumerate() {
            let mut bytes = bytes.clone();
            if i == index {
                for (at, xor) in &damage {
                    let at = at.index(bytes.len());
                    bytes[at] ^= xor;
                }
                if let Some(c) = cut {
                    bytes.truncate(c.index(bytes.len()));
                }
            }
            let target = if *a_to_b { &mut p.b } else { &mut p.a };
            target.handle(p.now, *dst, *src, &bytes);
            while target.poll_transmit().is_some() {}
            if i == index {
                break;
            }
        }
        // The engines survive timers and keep answering queries.
        p.a.handle_timeout(p.now + Duration::from_secs(300));
        p.b.handle_timeout(p.now + Duration::from_secs(300));
        let _ = (p.a.ike_sas(), p.b.ike_sas());
    }
}
