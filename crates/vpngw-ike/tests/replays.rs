//! Replays of authentic messages (issue 16): a copy of the peer's quick-mode first message,
//! replayed after its exchange is no longer kept, must not start a new exchange (a DH and a
//! stray inbound SA); a copy of one of its informational messages (a DPD probe) must not be
//! answered or taken as a sign of life.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use vpngw_ike::{DpdAction, DpdPolicy, Event};

const QUICK_MODE: u8 = 32;
const INFORMATIONAL: u8 = 5;

/// The datagrams B sent to A of this exchange type, after `skip` on the wire.
fn from_b(p: &Pair, exchange: u8, skip: usize) -> Vec<(std::net::SocketAddr, std::net::SocketAddr, Vec<u8>)> {
    p.wire[skip..]
        .iter()
        .filter(|(a_to_b, _, _, d)| !a_to_b && d.get(18) == Some(&exchange))
        .map(|(_, src, dst, d)| (*src, *dst, d.clone()))
        .collect()
}

#[test]
fn a_replayed_quick_mode_long_after_its_exchange_starts_nothing() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 91);
    p.b.initiate(p.now, "to-a").unwrap();
    p.drive(Duration::from_secs(10));
    // Twelve rekeys by B: more finished exchanges than A keeps to answer duplicates.
    let mark = p.wire.len();
    for i in 0..12 {
        assert_eq!(p.b.rekey_connection(p.now, "to-a").unwrap(), 1, "rekey {i}");
        p.drive(p.now - p.start + Duration::from_secs(20));
    }
    let first_qm1 = from_b(&p, QUICK_MODE, mark).into_iter().next().unwrap();
    let established_before = Pair::children(&p.a_events).len();
    let spis_before: Vec<_> = p.a.ike_sas()[0].children.iter().map(|c| c.spi_in).collect();
    let sent_before = p.wire.len();
    p.a.handle(p.now, first_qm1.1, first_qm1.0, &first_qm1.2);
    assert!(p.a.poll_transmit().is_none(), "A answered a replayed QM1");
    p.drive(p.now - p.start + Duration::from_secs(5));
    assert_eq!(Pair::children(&p.a_events).len(), established_before, "a replay installed a child SA");
    let spis_after: Vec<_> = p.a.ike_sas()[0].children.iter().map(|c| c.spi_in).collect();
    assert_eq!(spis_after, spis_before);
    assert_eq!(p.wire.len(), sent_before);
}

#[test]
fn a_replayed_dpd_probe_is_neither_answered_nor_taken_as_life() {
    let (a, mut b) = configs();
    b.dpd = Some(DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Clear });
    let mut a = a;
    a.dpd = b.dpd;
    let mut p = Pair::new(a, b, 92);
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(Duration::from_secs(60));
    let probes = from_b(&p, INFORMATIONAL, 0);
    assert!(!probes.is_empty(), "B probed");
    let (src, dst, probe) = probes[0].clone();
    p.a.handle(p.now, dst, src, &probe);
    assert!(p.a.poll_transmit().is_none(), "A answered a replayed informational");
    while let Some(e) = p.a.poll_event() {
        assert!(!matches!(e, Event::NegotiationFailed { .. }), "{e:?}");
    }
}
