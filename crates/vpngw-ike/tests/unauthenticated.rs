//! Unauthenticated input never changes established state (issue 16): from the peer's own
//! address, with no keys, a spoofed main-mode first message and a cleartext INFORMATIONAL
//! carrying INITIAL-CONTACT with its cookies (the two-packet attack that used to drop every SA
//! with the peer), with the responder cookie left zero or set to the one we answered with.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const NOTIFY: u8 = 11;
const INFORMATIONAL: u8 = 5;
const INITIAL_CONTACT: u16 = 24578;

/// A cleartext INFORMATIONAL with one INITIAL-CONTACT notify naming these cookies.
fn cleartext_initial_contact(cky_i: [u8; 8], cky_r: [u8; 8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&cky_i);
    m.extend_from_slice(&cky_r);
    m.extend_from_slice(&[NOTIFY, 0x10, INFORMATIONAL, 0]);
    m.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    m.extend_from_slice(&56u32.to_be_bytes());
    // Notify: generic header, DOI 1, protocol ISAKMP, SPI size 16, type, the cookies.
    m.extend_from_slice(&[0, 0, 0, 28, 0, 0, 0, 1, 1, 16]);
    m.extend_from_slice(&INITIAL_CONTACT.to_be_bytes());
    m.extend_from_slice(&cky_i);
    m.extend_from_slice(&cky_r);
    m
}

/// B initiated; the tunnel is up. Returns the pair, B's first message and the addresses B
/// sends from and to.
fn established_by_b(seed: u64) -> (Pair, Vec<u8>, SocketAddr, SocketAddr) {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, seed);
    p.b.initiate(p.now, "to-a").unwrap();
    p.drive(Duration::from_secs(10));
    let (_, from, to, first) = p.wire.iter().find(|(a_to_b, ..)| !a_to_b).cloned().unwrap();
    assert_eq!(first[18], 2, "B's first message is main mode");
    (p, first, from, to)
}

/// A's SAs as (IKE SA, child SPIs), to compare before and after.
fn sas(p: &Pair) -> Vec<(vpngw_ike::IkeSaId, Vec<(String, String)>)> {
    p.a.ike_sas()
        .iter()
        .filter(|s| s.state == vpngw_ike::IkeSaState::Established)
        .map(|s| (s.id, s.children.iter().map(|c| (c.spi_in.to_string(), c.spi_out.to_string())).collect()))
        .collect()
}

fn spoof(respond_with_our_cookie: bool, seed: u64) {
    let (mut p, first, from, to) = established_by_b(seed);
    let before = sas(&p);
    assert_eq!(before.len(), 1);
    let mark = p.a_events.len();
    // The spoofed first message: B's, with a fresh initiator cookie.
    let mut mm1 = first.clone();
    let cky_i = [0x5a; 8];
    mm1[..8].copy_from_slice(&cky_i);
    p.a.handle(p.now, to, from, &mm1);
    // A answers it (to the real B, who ignores it); an on-path attacker would see the cookie.
    let mut cky_r = [0u8; 8];
    while let Some(t) = p.a.poll_transmit() {
        if t.payload[..8] == cky_i {
            cky_r.copy_from_slice(&t.payload[8..16]);
        }
    }
    assert_ne!(cky_r, [0; 8], "A answered the spoofed first message");
    let named = if respond_with_our_cookie { cky_r } else { [0; 8] };
    p.a.handle(p.now, to, from, &cleartext_initial_contact(cky_i, named));
    p.drive(Duration::from_secs(20));
    assert_eq!(sas(&p), before, "{:?}", &p.a_events[mark..]);
    assert!(
        !p.a_events[mark..].iter().any(|e| matches!(e, vpngw_ike::Event::ChildSaDeleted { .. })),
        "{:?}",
        &p.a_events[mark..]
    );
}

#[test]
fn a_cleartext_initial_contact_with_a_zero_responder_cookie_changes_nothing() {
    spoof(false, 81);
}

#[test]
fn a_cleartext_initial_contact_with_our_responder_cookie_changes_nothing() {
    spoof(true, 82);
}

/// B's first message (as B would send it to A), for spoofing from B's address.
fn bs_first_message(seed: u64) -> (Vec<u8>, SocketAddr, SocketAddr) {
    let (_, first, from, to) = established_by_b(seed);
    (first, from, to)
}

/// A initiates; before B's answer reaches it (A's first message is lost once), a spoofed first
/// message from B's address arrives, with initiator cookies that win the crossed-initiation
/// rule: one ff..ff, or (`every_half_second`) a fresh winning cookie every 0.5 s for 30 s.
/// A's own exchange yields once, resumes when the spoofed one does not authenticate, and the
/// tunnel comes up; nothing fails. (Before: A dropped its own exchange for the spoofed one,
/// silently, and nothing brought the tunnel up again.)
fn spoofed_first_messages_delay_our_initiation_once(every_half_second: bool, seed: u64) {
    let (first, from, to) = bs_first_message(seed);
    let (a, b) = configs();
    let mut p = Pair::new(a, b, seed + 1);
    p.drop_from_a = 1;
    p.a.initiate(p.now, "to-b").unwrap();
    let spoofs = if every_half_second { 60 } else { 1 };
    let mut up_at = None;
    for i in 0..spoofs {
        let mut mm1 = first.clone();
        mm1[..8].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff - i as u8]);
        p.a.handle(p.now, to, from, &mm1);
        p.drive_until(Duration::from_millis(500 * (i + 1)));
        if up_at.is_none() && Pair::children(&p.a_events).len() == 1 {
            up_at = Some(p.now - p.start);
        }
    }
    p.drive_with(Duration::from_secs(60), |p| {
        if up_at.is_none() && Pair::children(&p.a_events).len() == 1 {
            up_at = Some(p.now - p.start);
        }
    });
    let up_at = up_at.expect("up");
    assert_eq!(Pair::established(&p.a_events), 1, "{:?}", p.a_events);
    assert_eq!(Pair::children(&p.a_events).len(), 1, "{:?}", p.a_events);
    assert_eq!(Pair::children(&p.b_events).len(), 1, "{:?}", p.b_events);
    // The pause (10 s) and a little: the spoofer delays A once, not at each spoof.
    assert!(up_at <= Duration::from_secs(12), "up after {up_at:?}");
    let failures = Pair::failures(&p.a_events);
    assert!(failures.iter().all(|(r, _)| *r != vpngw_ike::FailReason::PeerUnreachable), "{failures:?}");
}

#[test]
fn a_spoofed_winning_first_message_delays_our_initiation_and_does_not_stop_it() {
    spoofed_first_messages_delay_our_initiation_once(false, 83);
}

#[test]
fn a_stream_of_spoofed_winning_first_messages_delays_our_initiation_once() {
    spoofed_first_messages_delay_our_initiation_once(true, 84);
}

/// What the spoofing system tests send and found uncounted: a cleartext INITIAL-CONTACT with
/// the established SA's own cookies, and a first message carrying 64 Delete payloads of 65,535
/// SPIs of size 0 (the amplification). Both change nothing and are counted.
#[test]
fn cleartext_informationals_and_unreadable_first_messages_are_counted() {
    let (mut p, first, from, to) = established_by_b(85);
    let before = sas(&p);
    let (cky_i, cky_r) = (first[..8].try_into().unwrap(), established_cookies(&p));
    p.a.handle(p.now, to, from, &cleartext_initial_contact(cky_i, cky_r));
    // The amplification: a main mode first message of 64 Deletes, SPI size 0, 65,535 SPIs.
    let mut m = first[..28].to_vec();
    m[..8].copy_from_slice(&[0x77; 8]);
    m[16] = 12; // first payload: Delete
    let mut body = Vec::new();
    for i in 0..64 {
        let next = if i == 63 { 0 } else { 12 };
        body.extend_from_slice(&[next, 0, 0, 16, 0, 0, 0, 1, 3, 0, 0xff, 0xff]);
        body.extend_from_slice(&[0; 4]);
    }
    m.extend_from_slice(&body);
    let len = m.len() as u32;
    m[24..28].copy_from_slice(&len.to_be_bytes());
    let started = std::time::Instant::now();
    for _ in 0..200 {
        p.a.handle(p.now, to, from, &m);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "200 amplification datagrams took {:?}", started.elapsed());
    p.drive(Duration::from_secs(20));
    assert_eq!(sas(&p), before);
    let drops = &p.a.drops().by_reason;
    assert_eq!(drops.get("unprotected_informational"), Some(&1), "{drops:?}");
    assert_eq!(drops.get("first_message_refused"), Some(&200), "{drops:?}");
}

/// The responder cookie of A's established IKE SA (B initiated: A chose it).
fn established_cookies(p: &Pair) -> [u8; 8] {
    let (_, _, _, mm2) = p.wire.iter().find(|(a_to_b, ..)| *a_to_b).cloned().unwrap();
    mm2[8..16].try_into().unwrap()
}
