//! Main mode with Diffie-Hellman handed out as work (`EngineConfig::dh_offload`), as the
//! daemon runs it on its pool: the same bytes on the wire as computing in place, messages that
//! arrive while the work runs, and results that come back too late.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use vpngw_crypto::FastRng;
use vpngw_ike::{Endpoint, EngineConfig, ExchangeMode};

const LIMIT: Duration = Duration::from_secs(120);

/// The standard pair, each side offloading or not, their RNGs seeded as `Pair::new` seeds them.
fn pair(a_offloads: bool, b_offloads: bool, seed: u64) -> Pair {
    let (a_cfg, b_cfg) = configs();
    let config = |dh_offload| EngineConfig { dh_offload, ..engine_config() };
    let mut a = Endpoint::new(config(a_offloads), FastRng::from_seed_for_tests(seed));
    let mut b = Endpoint::new(config(b_offloads), FastRng::from_seed_for_tests(seed + 1000));
    a.add_peer(a_cfg).unwrap();
    b.add_peer(b_cfg).unwrap();
    Pair::with_endpoints(a, b, Instant::now())
}

fn assert_up(p: &Pair) {
    assert!(Pair::failures(&p.a_events).is_empty(), "A failures: {:?}", Pair::failures(&p.a_events));
    assert!(Pair::failures(&p.b_events).is_empty(), "B failures: {:?}", Pair::failures(&p.b_events));
    assert_eq!(Pair::established(&p.a_events), 1);
    assert_eq!(Pair::established(&p.b_events), 1);
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert_mirrored(&ca[0], &cb[0]);
}

/// Offloading changes where the exponentiation runs, nothing else: with the same seeds, every
/// datagram of main mode and quick mode is byte for byte the one computed in place (so the
/// keys are too), whichever side offloads.
#[test]
fn offloaded_main_mode_puts_the_same_bytes_on_the_wire() {
    let run = |a_off, b_off| {
        let mut p = pair(a_off, b_off, 41);
        p.a.initiate(p.now, "to-b").unwrap();
        p.drive(LIMIT);
        assert_up(&p);
        p.wire.iter().map(|(dir, _, _, bytes)| (*dir, bytes.clone())).collect::<Vec<_>>()
    };
    let in_place = run(false, false);
    assert_eq!(in_place.len(), 9, "six main mode and three quick mode messages");
    assert_eq!(run(true, false), in_place, "initiator offloads");
    assert_eq!(run(false, true), in_place, "responder offloads");
    assert_eq!(run(true, true), in_place, "both offload");
}

/// Without offloading nothing is handed out: the engine computes in place.
#[test]
fn without_offload_no_work_is_handed_out() {
    let mut p = pair(false, false, 42);
    p.hold_dh = true;
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert_up(&p);
    assert!(p.held_dh.0.is_empty() && p.held_dh.1.is_empty());
}

/// The responder's work is slow: the initiator retransmits MM3 meanwhile. The copies cause no
/// second computation and no answer; the result, when it comes, answers with MM4 and the
/// exchange completes without a failure.
#[test]
fn copies_of_message_3_while_the_work_runs_cost_nothing() {
    let mut p = pair(false, true, 43);
    p.hold_dh = true;
    p.a.initiate(p.now, "to-b").unwrap();
    p.settle();
    assert_eq!(p.held_dh.1.len(), 1, "B computes for MM3");
    let sent_by_b = p.wire.iter().filter(|(to_b, ..)| !to_b).count();
    assert_eq!(sent_by_b, 1, "B answered MM1 only");
    // A's MM3 retransmissions (1 s, then 2 s) reach B while its work is held.
    p.drive(Duration::from_secs(4));
    let mm3_copies = p.wire.iter().filter(|(to_b, ..)| *to_b).count() - 2;
    assert!(mm3_copies >= 2, "A retransmitted MM3 ({mm3_copies} copies)");
    assert_eq!(p.held_dh.1.len(), 1, "no second computation for a copy");
    assert_eq!(p.wire.iter().filter(|(to_b, ..)| !to_b).count(), 1, "no answer before the result");
    p.hold_dh = false;
    assert!(p.release_dh());
    p.drive(LIMIT);
    assert_up(&p);
}

/// A result for a responder SA that timed out meanwhile (half-open) changes nothing: no
/// message, no event, no panic.
#[test]
fn a_result_after_the_sa_went_changes_nothing() {
    let mut p = pair(false, true, 44);
    p.hold_dh = true;
    p.blackhole_a = false;
    p.a.initiate(p.now, "to-b").unwrap();
    p.settle();
    assert_eq!(p.held_dh.1.len(), 1);
    // A stops talking; B's half-open SA goes after its timeout (30 s).
    p.blackhole_a = true;
    p.drive_until(Duration::from_secs(40));
    assert!(p.b.ike_sas().is_empty(), "B's half-open SA timed out");
    let wire_before = p.wire.len();
    let events_before = p.b_events.len();
    assert!(p.release_dh());
    p.settle();
    assert_eq!(p.b.poll_transmit(), None);
    assert_eq!(p.wire.len(), wire_before);
    assert_eq!(p.b_events.len(), events_before);
}

/// Aggressive mode still computes in place, with offloading on (documented).
#[test]
fn aggressive_mode_computes_in_place() {
    let (mut a_cfg, mut b_cfg) = configs();
    a_cfg.mode = ExchangeMode::Aggressive;
    b_cfg.mode = ExchangeMode::Aggressive;
    let config = EngineConfig { dh_offload: true, ..engine_config() };
    let mut a = Endpoint::new(config.clone(), FastRng::from_seed_for_tests(45));
    let mut b = Endpoint::new(config, FastRng::from_seed_for_tests(1045));
    a.add_peer(a_cfg).unwrap();
    b.add_peer(b_cfg).unwrap();
    let mut p = Pair::with_endpoints(a, b, Instant::now());
    p.hold_dh = true;
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert_up(&p);
    assert!(p.held_dh.0.is_empty() && p.held_dh.1.is_empty());
}
