//! Floods of spoofed first messages (issue 16): from a configured peer's address, with fresh
//! cookies, no keys. State and work stay bounded (half-open SAs per peer and in total,
//! Diffie-Hellman per second), the established SA with that peer is untouched, and the peer's
//! own exchanges still complete once the flood stops.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use vpngw_ike::{Endpoint, ExchangeMode, IkeSaState};

/// B's first message to A in `mode` (from a negotiation of its own), and its addresses.
fn first_message(mode: ExchangeMode, seed: u64) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let (mut a, mut b) = configs();
    a.mode = mode;
    b.mode = mode;
    let mut p = Pair::new(a, b, seed);
    p.b.initiate(p.now, "to-a").unwrap();
    p.drive(Duration::from_secs(10));
    let (_, from, to, first) = p.wire.iter().find(|(a_to_b, ..)| !a_to_b).cloned().unwrap();
    (first, from, to)
}

fn established(e: &Endpoint) -> Vec<(vpngw_ike::IkeSaId, Vec<String>)> {
    e.ike_sas()
        .iter()
        .filter(|s| s.state == IkeSaState::Established)
        .map(|s| (s.id, s.children.iter().map(|c| c.spi_in.to_string()).collect()))
        .collect()
}

/// 20,000 spoofed first messages at 2,000/s (virtual time) at A, which has a tunnel with B.
/// Returns the pair after the flood, the number of answers A sent, and the most half-open SAs
/// seen.
fn flood(mode: ExchangeMode, seed: u64) -> (Pair, usize, usize) {
    let (first, from, to) = first_message(mode, seed);
    let (mut a, mut b) = configs();
    a.mode = mode;
    b.mode = mode;
    let mut p = Pair::new(a, b, seed + 1);
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(Duration::from_secs(10));
    let before = established(&p.a);
    assert_eq!(before.len(), 1);
    let (mut answers, mut most) = (0, 0);
    for i in 0u32..20_000 {
        let mut m = first.clone();
        m[..4].copy_from_slice(&i.to_be_bytes());
        m[4..8].copy_from_slice(&[0x5a; 4]);
        p.now += Duration::from_micros(500);
        p.a.handle(p.now, to, from, &m);
        p.a.handle_timeout(p.now);
        while let Some(t) = p.a.poll_transmit() {
            answers += usize::from(t.payload[4..8] == [0x5a; 4]);
        }
        most = most.max(p.a.half_open_ike_sas());
    }
    assert_eq!(established(&p.a), before, "the established SA is untouched");
    (p, answers, most)
}

#[test]
fn a_main_mode_flood_keeps_half_open_state_bounded_and_the_tunnel_up() {
    let (mut p, answers, most) = flood(ExchangeMode::Main, 91);
    assert!(most <= 8, "half-open SAs: {most}");
    // Main mode's first message costs no Diffie-Hellman: each gets its answer.
    assert_eq!(answers, 20_000);
    let drops = p.a.drops().by_reason.clone();
    assert!(drops.get("half_open_evicted").copied().unwrap_or(0) >= 19_000, "{drops:?}");
    // After the flood, a rekey and a re-authentication by B still complete.
    let name = "to-a";
    assert_eq!(p.b.rekey_connection(p.now, name).unwrap(), 1);
    let mark = p.a_events.len();
    p.drive(p.now - p.start + Duration::from_secs(30));
    assert_eq!(Pair::children(&p.a_events[mark..]).len(), 1, "{:?}", &p.a_events[mark..]);
}

#[test]
fn an_aggressive_mode_flood_is_held_to_the_diffie_hellman_budget() {
    let (p, answers, most) = flood(ExchangeMode::Aggressive, 92);
    assert!(most <= 8, "half-open SAs: {most}");
    // 10 s of flood: at most 20/s for the peer (and a first second's burst), each answered
    // once and resent at most twice.
    assert!(answers <= (10 * 20 + 20) * 3, "{answers} answers");
    assert!(answers >= 10 * 20, "the budget is used, not zero: {answers}");
    let drops = p.a.drops().by_reason.clone();
    assert!(drops.get("dh_rate_limit").copied().unwrap_or(0) >= 19_000, "{drops:?}");
}
