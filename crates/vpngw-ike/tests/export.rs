//! Export and import of established state: one side's IKE SA moves, mid-life, into a fresh
//! endpoint, which goes on talking to the untouched peer (DPD both ways, quick-mode rekeys
//! started by either side, Deletes from either side).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Pair, assert_mirrored, configs, engine_config};
use vpngw_crypto::FastRng;
use vpngw_esp::Spi;
use vpngw_ike::{DeleteReason, DpdAction, DpdPolicy, Endpoint, Event, IkeSaState, PeerConfig, SnapshotError};

fn with_dpd() -> (PeerConfig, PeerConfig) {
    let (mut a, mut b) = configs();
    let policy = DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Clear };
    a.dpd = Some(policy);
    b.dpd = Some(policy);
    (a, b)
}

/// Informational messages sent after `skip` datagrams, by A (`from_a`) or by B.
fn informationals(p: &Pair, from_a: bool, skip: usize) -> usize {
    p.wire[skip..].iter().filter(|(a, _, _, d)| *a == from_a && d.get(18) == Some(&5)).count()
}

fn trouble(events: &[Event]) -> Vec<&Event> {
    events.iter().filter(|e| matches!(e, Event::NegotiationFailed { .. } | Event::IkeSaDeleted { .. })).collect()
}

fn deleted(events: &[Event], reason: DeleteReason) -> Vec<(Spi, Spi)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted { spi_in, spi_out, reason: r, .. } if *r == reason => Some((*spi_in, *spi_out)),
            _ => None,
        })
        .collect()
}

/// Runs `p` for `d` more of virtual time.
fn run(p: &mut Pair, d: Duration) {
    let until = p.now - p.start + d;
    p.drive_until(until);
}

/// The newest child SA each side established after the marks, checked to be one tunnel.
fn newest_mirrored(p: &Pair, a_mark: usize, b_mark: usize) -> (Spi, Spi) {
    let a = Pair::children(&p.a_events[a_mark..]);
    let b = Pair::children(&p.b_events[b_mark..]);
    let (x, y) = (a.last().expect("A got a new child SA"), b.last().expect("B got a new child SA"));
    assert_mirrored(x, y);
    (x.spi_in, y.spi_in)
}

#[test]
fn an_exported_ike_sa_goes_on_in_a_fresh_endpoint() {
    let (a_cfg, b_cfg) = with_dpd();
    let mut p = Pair::new(a_cfg.clone(), b_cfg, 61);
    p.a.initiate(p.now, "to-b").unwrap();
    run(&mut p, Duration::from_secs(10));
    // Mid-life: DPD probes both ways (silence), then a rekey and the Delete of the old pair.
    run(&mut p, Duration::from_secs(50));
    assert!(informationals(&p, true, 0) > 0 && informationals(&p, false, 0) > 0);
    assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1);
    run(&mut p, Duration::from_secs(30));
    assert_eq!(deleted(&p.a_events, DeleteReason::Rekeyed).len(), 1, "the old pair retired");
    assert!(trouble(&p.a_events).is_empty() && trouble(&p.b_events).is_empty());

    let before = &p.a.ike_sas()[0];
    let children_before: HashSet<(Spi, Spi)> = before.children.iter().map(|c| (c.spi_in, c.spi_out)).collect();
    let b_sa = p.b.ike_sas()[0].id;
    let snapshot = p.a.export_ike_sa(p.now, before.id).unwrap();
    let shown = format!("{snapshot:?}");
    assert!(shown.contains("redacted"), "{shown}");
    for secret in [&snapshot.keys.skeyid, &snapshot.keys.skeyid_d, &snapshot.keys.skeyid_a, &snapshot.keys.skeyid_e] {
        assert!(!shown.contains(&format!("{:?}", secret.expose())), "a key in Debug: {shown}");
    }
    assert_eq!(snapshot.children.len(), 1);

    // A restarts from the snapshot: a fresh endpoint, another RNG, the same configuration.
    let mut fresh = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(777));
    fresh.add_peer(a_cfg).unwrap();
    fresh.import_ike_sa(p.now, snapshot.clone()).unwrap();
    assert!(fresh.import_ike_sa(p.now, snapshot).is_err(), "the same SA twice");
    p.a = fresh;
    let after = &p.a.ike_sas()[0];
    assert_eq!(after.state, IkeSaState::Established);
    assert_eq!(after.children.iter().map(|c| (c.spi_in, c.spi_out)).collect::<HashSet<_>>(), children_before);
    let (a_mark, b_mark, wire_mark) = (p.a_events.len(), p.b_events.len(), p.wire.len());

    // DPD both ways, past several timeouts: each side's probes are read and answered.
    run(&mut p, Duration::from_secs(120));
    assert!(informationals(&p, true, wire_mark) >= 2 && informationals(&p, false, wire_mark) >= 2);
    assert!(trouble(&p.a_events[a_mark..]).is_empty(), "{:?}", &p.a_events[a_mark..]);
    assert!(trouble(&p.b_events[b_mark..]).is_empty(), "{:?}", &p.b_events[b_mark..]);
    assert_eq!(p.b.ike_sas().len(), 1);
    assert_eq!(p.b.ike_sas()[0].id, b_sa, "the peer's IKE SA is the one it had");

    // Quick-mode rekeys, started by the imported side and by the peer.
    assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1);
    run(&mut p, Duration::from_secs(30));
    newest_mirrored(&p, a_mark, b_mark);
    let (a_mark, b_mark) = (p.a_events.len(), p.b_events.len());
    assert_eq!(p.b.rekey_connection(p.now, "to-a").unwrap(), 1);
    run(&mut p, Duration::from_secs(30));
    let (a_spi, b_spi) = newest_mirrored(&p, a_mark, b_mark);
    assert!(trouble(&p.a_events).is_empty() && trouble(&p.b_events).is_empty());

    // Deletes: a child SA from the imported side, one from the peer, then the IKE SA.
    let (a_mark, b_mark) = (p.a_events.len(), p.b_events.len());
    p.a.expire_child(p.now, a_spi);
    run(&mut p, Duration::from_secs(1));
    assert_eq!(deleted(&p.b_events[b_mark..], DeleteReason::PeerDeleted), vec![(b_spi, a_spi)]);
    p.a.initiate(p.now, "to-b").unwrap();
    run(&mut p, Duration::from_secs(5));
    let (a_spi, b_spi) = newest_mirrored(&p, a_mark, b_mark);
    let a_mark = p.a_events.len();
    p.b.expire_child(p.now, b_spi);
    run(&mut p, Duration::from_secs(1));
    assert_eq!(deleted(&p.a_events[a_mark..], DeleteReason::PeerDeleted), vec![(a_spi, b_spi)]);
    p.b.terminate(p.now, "to-a").unwrap();
    run(&mut p, Duration::from_secs(1));
    assert!(
        p.a_events[a_mark..].iter().any(|e| matches!(e, Event::IkeSaDeleted { reason: DeleteReason::PeerDeleted, .. })),
        "{:?}",
        &p.a_events[a_mark..]
    );
    assert!(p.a.ike_sas().is_empty() && p.b.ike_sas().is_empty());
}

/// Moves one datagram A sent to B (`deliver`) or loses it. Returns whether there was one.
fn a_to_b(p: &mut Pair, deliver: bool) -> bool {
    let Some(t) = p.a.poll_transmit() else { return false };
    if deliver {
        p.b.handle(p.now, t.remote, t.local, &t.payload);
    }
    true
}

/// Moves one datagram B sent to A (`deliver`) or loses it.
fn b_to_a(p: &mut Pair, deliver: bool) -> bool {
    let Some(t) = p.b.poll_transmit() else { return false };
    if deliver {
        p.a.handle(p.now, t.remote, t.local, &t.payload);
    }
    true
}

/// A pair with one tunnel up and quiet.
fn established_pair(seed: u64) -> (Pair, PeerConfig) {
    let (a_cfg, b_cfg) = with_dpd();
    let mut p = Pair::new(a_cfg.clone(), b_cfg, seed);
    p.a.initiate(p.now, "to-b").unwrap();
    run(&mut p, Duration::from_secs(10));
    assert_eq!(p.a.ike_sas()[0].children.len(), 1);
    (p, a_cfg)
}

/// A's only IKE SA moves into a fresh endpoint (another RNG, the same configuration).
fn restart_a(p: &mut Pair, a_cfg: PeerConfig) {
    let id = p.a.ike_sas()[0].id;
    let snapshot = p.a.export_ike_sa(p.now, id).unwrap();
    let mut fresh = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(4242));
    fresh.add_peer(a_cfg).unwrap();
    fresh.import_ike_sa(p.now, snapshot).unwrap();
    p.a = fresh;
}

/// The number of child SAs each side established after the marks, and no trouble on either.
fn settled_rekey(p: &Pair, a_mark: usize, b_mark: usize) {
    assert!(trouble(&p.a_events[a_mark..]).is_empty(), "A: {:?}", &p.a_events[a_mark..]);
    assert!(trouble(&p.b_events[b_mark..]).is_empty(), "B: {:?}", &p.b_events[b_mark..]);
    let a_sas = &p.a.ike_sas()[0];
    let b_sas = &p.b.ike_sas()[0];
    let active = |info: &vpngw_ike::IkeSaInfo| {
        info.children
            .iter()
            .filter(|c| c.state == vpngw_ike::ChildSaState::Active)
            .map(|c| (c.spi_in, c.spi_out))
            .collect::<Vec<_>>()
    };
    let (a_active, b_active) = (active(a_sas), active(b_sas));
    assert_eq!(a_active.len(), 1, "{a_sas:?}");
    assert_eq!(b_active.len(), 1, "{b_sas:?}");
    assert_eq!(a_active[0], (b_active[0].1, b_active[0].0), "one tunnel, mirrored");
}

#[test]
fn an_export_between_qm2_and_a_lost_qm3_goes_on_when_the_peer_resends_qm2() {
    // The peer rekeys; we answer QM1 with QM2 (our inbound SA installed), its QM3 is lost,
    // and we restart from a snapshot taken then: the restored exchange resends QM2, the peer
    // answers the duplicate with QM3 again, and the pair switches over on both sides.
    let (mut p, a_cfg) = established_pair(71);
    let old = p.a.ike_sas()[0].children[0].spi_in;
    let (a_mark, b_mark) = (p.a_events.len(), p.b_events.len());
    assert_eq!(p.b.rekey_connection(p.now, "to-a").unwrap(), 1);
    assert!(b_to_a(&mut p, true), "QM1");
    assert!(a_to_b(&mut p, true), "QM2");
    assert!(b_to_a(&mut p, false), "QM3, lost");
    restart_a(&mut p, a_cfg);
    run(&mut p, Duration::from_secs(60));
    settled_rekey(&p, a_mark, b_mark);
    assert_ne!(
        p.a.ike_sas()[0].children.iter().find(|c| c.state == vpngw_ike::ChildSaState::Active).unwrap().spi_in,
        old
    );
}

#[test]
fn an_export_after_our_qm3_was_lost_answers_the_peers_duplicate_qm2() {
    // Our rekey: QM1 and QM2 pass, our QM3 is lost, then we restart: the peer resends QM2 and
    // the restored finished exchange answers with the same QM3 (not a new exchange, which
    // would fail with INVALID-HASH-INFORMATION).
    let (mut p, a_cfg) = established_pair(72);
    let (a_mark, b_mark) = (p.a_events.len(), p.b_events.len());
    assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1);
    assert!(a_to_b(&mut p, true), "QM1");
    assert!(b_to_a(&mut p, true), "QM2");
    assert!(a_to_b(&mut p, false), "QM3, lost");
    restart_a(&mut p, a_cfg);
    run(&mut p, Duration::from_secs(60));
    settled_rekey(&p, a_mark, b_mark);
    let replies = p.wire.iter().filter(|(from_a, _, _, d)| *from_a && d.get(18) == Some(&32)).count();
    assert!(replies >= 1, "the lost QM3 was resent");
}

#[test]
fn an_export_while_our_qm1_is_unanswered_starts_that_quick_mode_again() {
    // Our rekey's QM1 is lost and we restart before the retransmission: the restored SA
    // starts the rekey afresh (a new message ID) and the answer to the old one, should it
    // come, is dropped.
    let (mut p, a_cfg) = established_pair(73);
    let (a_mark, b_mark) = (p.a_events.len(), p.b_events.len());
    assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1);
    assert!(a_to_b(&mut p, false), "QM1, lost");
    let id = p.a.ike_sas()[0].id;
    let snapshot = p.a.export_ike_sa(p.now, id).unwrap();
    assert_eq!(snapshot.queued_quick_modes.len(), 1, "{snapshot:?}");
    restart_a(&mut p, a_cfg);
    run(&mut p, Duration::from_secs(60));
    settled_rekey(&p, a_mark, b_mark);
    assert_eq!(Pair::children(&p.b_events[b_mark..]).len(), 1, "one new pair at the peer");
}

#[test]
fn a_snapshot_with_absurd_times_or_spis_in_use_is_refused_and_changes_nothing() {
    let (p, a_cfg) = established_pair(74);
    let id = p.a.ike_sas()[0].id;
    let good = p.a.export_ike_sa(p.now, id).unwrap();
    let fresh = || {
        let mut e = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(5));
        e.add_peer(a_cfg.clone()).unwrap();
        e
    };

    let mut e = fresh();
    let mut s = good.clone();
    s.expires_in = Duration::MAX;
    assert_eq!(e.import_ike_sa(p.now, s), Err(SnapshotError::TimeOutOfRange(Duration::MAX)));
    let mut s = good.clone();
    s.children[0].rekey_in = Some(Duration::MAX);
    assert_eq!(e.import_ike_sa(p.now, s), Err(SnapshotError::TimeOutOfRange(Duration::MAX)));
    assert!(e.ike_sas().is_empty());

    // The same child SPI twice: refused, and nothing reserved (the good one imports after).
    let mut s = good.clone();
    s.initiator_cookie[0] ^= 1;
    s.children.push(s.children[0].clone());
    let spi = s.children[0].spi_in;
    assert_eq!(e.import_ike_sa(p.now, s), Err(SnapshotError::SpiInUse(spi)));
    e.import_ike_sa(p.now, good.clone()).unwrap();
    // Another IKE SA claiming the SPIs now in use: refused.
    let mut s = good;
    s.initiator_cookie[0] ^= 1;
    assert_eq!(e.import_ike_sa(p.now, s), Err(SnapshotError::SpiInUse(spi)));
    assert_eq!(e.ike_sas().len(), 1);
}

/// Hot backup's use of export: a standby keeps the last export of every IKE SA that
/// `take_changed` named (synced every 500 ms of virtual time) and takes over from that replica
/// at any moment: mid-DPD, mid-rekey, just after one. The peer keeps its IKE SA, and DPD and
/// rekeys started by either side go on without a failure.
#[test]
fn a_replica_fed_only_by_take_changed_takes_over_at_any_moment() {
    use std::collections::BTreeMap;
    const SLICE: Duration = Duration::from_millis(500);
    for takeover_at in [12u64, 31, 40, 41, 47, 55, 56, 75] {
        let (a_cfg, b_cfg) = with_dpd();
        let mut p = Pair::new(a_cfg.clone(), b_cfg, 90 + takeover_at);
        p.a.initiate(p.now, "to-b").unwrap();
        // The replica: per IKE SA handle, the instant of its last export and the snapshot.
        let mut replica = BTreeMap::new();
        let mut elapsed = Duration::ZERO;
        let mut quiet_slices = 0;
        while elapsed < Duration::from_secs(takeover_at) {
            if elapsed == Duration::from_secs(40) {
                assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1);
            }
            if elapsed == Duration::from_secs(55) {
                assert_eq!(p.b.rekey_connection(p.now, "to-a").unwrap(), 1);
            }
            elapsed += SLICE;
            let wire_before = p.wire.len();
            p.drive_until(elapsed);
            let changed = p.a.take_changed();
            if p.wire.len() == wire_before && changed.is_empty() {
                quiet_slices += 1;
            }
            for id in changed {
                if let Ok(s) = p.a.export_ike_sa(p.now, id) {
                    replica.insert(id, (p.now, s));
                }
            }
            replica.retain(|id, _| p.a.has_ike_sa(*id));
        }
        assert!(quiet_slices > 10, "quiet slices name no SA ({quiet_slices} quiet of {elapsed:?})");
        assert_eq!(replica.len(), 1, "at {takeover_at} s");
        let b_sa = p.b.ike_sas()[0].id;
        let mut standby = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(4000 + takeover_at));
        standby.add_peer(a_cfg).unwrap();
        for (at, snapshot) in replica.into_values() {
            standby.import_ike_sa(at, snapshot).unwrap();
        }
        p.a = standby;
        let (a_mark, b_mark, wire_mark) = (p.a_events.len(), p.b_events.len(), p.wire.len());
        run(&mut p, Duration::from_secs(90));
        assert!(informationals(&p, true, wire_mark) >= 2 && informationals(&p, false, wire_mark) >= 2);
        assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 1, "at {takeover_at} s");
        run(&mut p, Duration::from_secs(20));
        newest_mirrored(&p, a_mark, b_mark);
        let (a2, b2) = (p.a_events.len(), p.b_events.len());
        assert_eq!(p.b.rekey_connection(p.now, "to-a").unwrap(), 1);
        run(&mut p, Duration::from_secs(20));
        newest_mirrored(&p, a2, b2);
        assert!(trouble(&p.a_events[a_mark..]).is_empty(), "at {takeover_at} s: {:?}", &p.a_events[a_mark..]);
        assert!(trouble(&p.b_events[b_mark..]).is_empty(), "at {takeover_at} s: {:?}", &p.b_events[b_mark..]);
        let b_now: Vec<_> = p.b.ike_sas().iter().map(|s| s.id).collect();
        assert_eq!(b_now, vec![b_sa], "at {takeover_at} s: the peer keeps its IKE SA");
    }
}
