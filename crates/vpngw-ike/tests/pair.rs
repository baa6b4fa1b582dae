//! Two engines negotiating in memory: every phase 1 and phase 2 parameter combination, both
//! modes, NAT traversal, several subnet pairs, retransmission, lifetimes, deletes, and each
//! kind of mismatch ending in the right reason on the right side.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_ike::{Encapsulation, Event, ExchangeMode, FailReason, Identity, IkeSaInfo, SubnetPair};

const LIMIT: Duration = Duration::from_secs(120);

fn up(a_cfg: vpngw_ike::PeerConfig, b_cfg: vpngw_ike::PeerConfig, seed: u64) -> Pair {
    let name = a_cfg.name.clone();
    let mut p = Pair::new(a_cfg, b_cfg, seed);
    p.a.initiate(p.now, &name).unwrap();
    p.drive(LIMIT);
    p
}

fn assert_up(p: &Pair, children: usize) {
    assert!(Pair::failures(&p.a_events).is_empty(), "A failures: {:?}", Pair::failures(&p.a_events));
    assert!(Pair::failures(&p.b_events).is_empty(), "B failures: {:?}", Pair::failures(&p.b_events));
    assert_eq!(Pair::established(&p.a_events), 1);
    assert_eq!(Pair::established(&p.b_events), 1);
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!(ca.len(), children);
    assert_eq!(cb.len(), children);
    for x in &ca {
        let y = cb.iter().find(|y| y.spi_in == x.spi_out).expect("B has the mirror SA");
        assert_mirrored(x, y);
    }
}

#[test]
fn seed_defaults_main_mode() {
    let (a, b) = configs();
    let p = up(a, b, 1);
    assert_up(&p, 1);
    let c = &Pair::children(&p.a_events)[0];
    assert_eq!(c.encryption, EncryptionAlgorithm::TripleDes);
    assert_eq!(c.integrity, IntegrityAlgorithm::HmacMd5_96);
    assert_eq!(c.pfs, None);
    assert_eq!(c.lifetime_seconds, 3600);
    assert_eq!(c.lifetime_kilobytes, Some(1_843_200));
    assert_eq!(c.encapsulation, Encapsulation::Tunnel);
    // Six main mode messages and three quick mode messages, nothing retransmitted.
    assert_eq!(p.wire.len(), 9);
    let info: Vec<IkeSaInfo> = p.a.ike_sas();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].state.as_str(), "established");
    assert_eq!(info[0].children.len(), 1);
}

/// Messages by exchange type (main, aggressive, quick, informational, other): what each side
/// sent and received, and which of the sent were retransmissions.
#[test]
fn messages_are_counted_by_exchange_and_retransmissions_apart() {
    use vpngw_ike::MessageCounters;
    let counts = |m: &MessageCounters| (m.sent, m.received, m.retransmitted);
    let (a, b) = configs();
    let p = up(a, b, 1);
    assert_up(&p, 1);
    // A: MM1, MM3, MM5 and QM1, QM3 out; MM2, MM4, MM6 and QM2 in. B the mirror.
    assert_eq!(counts(p.a.messages()), ([3, 0, 2, 0, 0], [3, 0, 1, 0, 0], [0; 5]));
    assert_eq!(counts(p.b.messages()), ([3, 0, 1, 0, 0], [3, 0, 2, 0, 0], [0; 5]));
    assert_eq!(MessageCounters::EXCHANGES, ["main", "aggressive", "quick", "informational", "other"]);

    // B's first answer is lost: A sends MM1 again (a retransmission), B answers it anew.
    let (a, b) = configs();
    let name = a.name.clone();
    let mut p = Pair::new(a, b, 2);
    p.drop_from_b = 1;
    p.a.initiate(p.now, &name).unwrap();
    p.drive(LIMIT);
    assert_up(&p, 1);
    let (sent, received, retransmitted) = counts(p.a.messages());
    assert_eq!(retransmitted, [1, 0, 0, 0, 0], "{:?}", p.a.messages());
    assert_eq!(sent, [4, 0, 2, 0, 0], "retransmissions are among the sent");
    assert_eq!(received, [3, 0, 1, 0, 0], "the lost answer never arrived");
    // B had MM1 twice and sent its answer again to the repeat: a retransmission too.
    assert_eq!(counts(p.b.messages()), ([4, 0, 1, 0, 0], [4, 0, 2, 0, 0], [1, 0, 0, 0, 0]));
}

#[test]
fn every_phase1_combination_main_and_aggressive() {
    let mut seed = 100;
    for mode in [ExchangeMode::Main, ExchangeMode::Aggressive] {
        for encryption in EncryptionAlgorithm::ALL {
            for hash in [HashAlgorithm::Md5, HashAlgorithm::Sha1] {
                for dh_group in DhGroup::ALL {
                    let (mut a, mut b) = configs();
                    for c in [&mut a, &mut b] {
                        c.mode = mode;
                        c.phase1.encryption = encryption;
                        c.phase1.hash = hash;
                        c.phase1.dh_group = dh_group;
                    }
                    seed += 1;
                    let p = up(a, b, seed);
                    assert_up(&p, 1);
                    let established = p.a_events.iter().find_map(|e| match e {
                        Event::IkeSaEstablished { encryption, hash, dh_group, mode, .. } => {
                            Some((*encryption, *hash, *dh_group, *mode))
                        }
                        _ => None,
                    });
                    assert_eq!(established, Some((encryption, hash, dh_group, mode)));
                }
            }
        }
    }
}

#[test]
fn every_phase2_combination() {
    let mut seed = 1000;
    for encryption in EncryptionAlgorithm::ALL {
        for integrity in IntegrityAlgorithm::ALL {
            for pfs in [
                None,
                Some(DhGroup::Modp768),
                Some(DhGroup::Modp1024),
                Some(DhGroup::Modp1536),
                Some(DhGroup::Modp2048),
                Some(DhGroup::Modp2048S256),
            ] {
                let (mut a, mut b) = configs();
                for c in [&mut a, &mut b] {
                    c.phase2.encryption = encryption;
                    c.phase2.integrity = integrity;
                    c.phase2.pfs = pfs;
                }
                seed += 1;
                let p = up(a, b, seed);
                assert_up(&p, 1);
                let c = &Pair::children(&p.b_events)[0];
                assert_eq!((c.encryption, c.integrity, c.pfs), (encryption, integrity, pfs));
            }
        }
    }
}

/// Both sides initiate at once (both told to start, or both restarting after dead peer
/// detection): their first messages cross. One exchange goes on, the same one on both sides,
/// whichever side's cookie is higher: one IKE SA and one pair of child SAs at each end, nothing
/// failed or deleted, and it stays so. (Before: each side's INITIAL-CONTACT cleared the other
/// side's IKE SA, and the tunnel stayed down until dead peer detection, 30 s or more.)
#[test]
fn both_sides_initiating_at_once_settle_on_one_exchange() {
    // Also with A's first message lost: both sides retransmit at the same moment, and must not
    // both give way.
    for (mode, lose_first) in [
        (ExchangeMode::Main, false),
        (ExchangeMode::Aggressive, false),
        (ExchangeMode::Main, true),
        (ExchangeMode::Aggressive, true),
    ] {
        for seed in 1..=8 {
            let (mut a_cfg, mut b_cfg) = configs();
            a_cfg.mode = mode;
            b_cfg.mode = mode;
            let (a_name, b_name) = (a_cfg.name.clone(), b_cfg.name.clone());
            let mut p = Pair::new(a_cfg, b_cfg, seed);
            p.drop_from_a = usize::from(lose_first);
            p.a.initiate(p.now, &a_name).unwrap();
            p.b.initiate(p.now, &b_name).unwrap();
            p.drive(Duration::from_secs(600));
            let deleted = |events: &[Event]| {
                events.iter().filter(|e| matches!(e, Event::IkeSaDeleted { .. } | Event::ChildSaDeleted { .. })).count()
            };
            assert_eq!(deleted(&p.a_events), 0, "{mode} seed {seed}: A deleted SAs: {:?}", p.a_events);
            assert_eq!(deleted(&p.b_events), 0, "{mode} seed {seed}: B deleted SAs: {:?}", p.b_events);
            assert_up(&p, 1);
            // The two sides did not both win: one is the IKE initiator, the other the responder.
            let roles = |events: &[Event]| {
                events
                    .iter()
                    .find_map(|e| if let Event::IkeSaEstablished { role, .. } = e { Some(*role) } else { None })
            };
            assert_ne!(roles(&p.a_events), roles(&p.b_events), "{mode} seed {seed}");
        }
    }
}

/// Both initiate at once, but A's first messages never reach B (B is behind a NAT that lets
/// only its own initiations through): whichever cookie is higher, B's exchange goes on. When
/// A's would win, A drops B's first message twice, then, its own still unanswered, answers the
/// third copy: up within B's second retransmission, not after A's exchange times out.
#[test]
fn a_crossed_initiation_the_peer_cannot_hear_gives_way() {
    for seed in 1..=8 {
        let (a_cfg, b_cfg) = configs();
        let (a_name, b_name) = (a_cfg.name.clone(), b_cfg.name.clone());
        let mut p = Pair::new(a_cfg, b_cfg, seed);
        p.b_unreachable_first = true;
        p.a.initiate(p.now, &a_name).unwrap();
        p.b.initiate(p.now, &b_name).unwrap();
        let start = p.now;
        let mut up_at = None;
        p.drive_with(Duration::from_secs(120), |p| {
            if up_at.is_none() && Pair::children(&p.a_events).len() == 1 && Pair::children(&p.b_events).len() == 1 {
                up_at = Some(p.now - start);
            }
        });
        let up_at = up_at.unwrap_or_else(|| panic!("seed {seed}: never up: {:?}", p.a_events));
        // B retransmits after 1 s and 2 s more (the test engines' timers): up by then.
        assert!(up_at <= Duration::from_secs(4), "seed {seed}: up after {up_at:?}");
        assert_eq!(Pair::established(&p.a_events), 1, "seed {seed}");
        assert_eq!(Pair::established(&p.b_events), 1, "seed {seed}");
        let role = p
            .b_events
            .iter()
            .find_map(|e| if let Event::IkeSaEstablished { role, .. } = e { Some(*role) } else { None });
        assert_eq!(role, Some(vpngw_ike::Role::Initiator), "seed {seed}: B's exchange goes on");
    }
}

#[test]
fn aggressive_mode_with_fqdn_identities() {
    let (mut a, mut b) = configs();
    a.mode = ExchangeMode::Aggressive;
    b.mode = ExchangeMode::Aggressive;
    a.local_id = Identity::Fqdn("left.lab.example".into());
    a.remote_id = Identity::Fqdn("right.lab.example".into());
    b.local_id = Identity::Fqdn("right.lab.example".into());
    b.remote_id = Identity::Fqdn("LEFT.lab.example".into());
    let p = up(a, b, 7);
    assert_up(&p, 1);
    assert_eq!(p.wire.len(), 6, "three aggressive mode and three quick mode messages");
}

#[test]
fn three_subnet_pairs_three_quick_modes() {
    let (mut a, mut b) = configs();
    for (i, (l, r)) in [("10.1.1.0/24", "10.2.1.0/24"), ("10.1.2.0/24", "10.2.2.0/24")].iter().enumerate() {
        a.subnets.push(SubnetPair { local: subnet(l), remote: subnet(r) });
        b.subnets.push(SubnetPair { local: subnet(r), remote: subnet(l) });
        let _ = i;
    }
    let p = up(a, b, 8);
    assert_up(&p, 3);
}

#[test]
fn quick_modes_of_many_pairs_run_two_at_a_time() {
    let (mut a, mut b) = configs();
    for i in 1..=4 {
        let (l, r) = (format!("10.1.{i}.0/24"), format!("10.2.{i}.0/24"));
        a.subnets.push(SubnetPair { local: subnet(&l), remote: subnet(&r) });
        b.subnets.push(SubnetPair { local: subnet(&r), remote: subnet(&l) });
    }
    let p = up(a, b, 18);
    assert_up(&p, 5);
    // strongSwan remembers the IVs of only three exchanges: never more than two of ours at once.
    assert_eq!(most_in_flight(&p.wire), 2, "quick modes of ours at once");
}

/// Largest number of A's quick modes under way at once in `wire`: QM1 opens one (a new
/// message ID from A), QM3 closes it.
fn most_in_flight(wire: &[(bool, std::net::SocketAddr, std::net::SocketAddr, Vec<u8>)]) -> usize {
    let (mut open, mut most) = (std::collections::HashSet::new(), 0);
    for (from_a, _, _, data) in wire {
        let d = if data.starts_with(&[0, 0, 0, 0]) { &data[4..] } else { &data[..] };
        if !*from_a || d.len() < 28 || d[18] != 32 {
            continue;
        }
        let mid = u32::from_be_bytes([d[20], d[21], d[22], d[23]]);
        if !open.insert(mid) {
            open.remove(&mid);
        }
        most = most.max(open.len());
    }
    most
}

#[test]
fn rekeying_many_pairs_at_once_runs_two_at_a_time_too() {
    let (mut a, mut b) = configs();
    for i in 1..=4 {
        let (l, r) = (format!("10.1.{i}.0/24"), format!("10.2.{i}.0/24"));
        a.subnets.push(SubnetPair { local: subnet(&l), remote: subnet(&r) });
        b.subnets.push(SubnetPair { local: subnet(&r), remote: subnet(&l) });
    }
    let mut p = up(a, b, 19);
    assert_up(&p, 5);
    let before = p.wire.len();
    // `vpngw rekey`: every pair at once.
    assert_eq!(p.a.rekey_connection(p.now, "to-b").unwrap(), 5);
    p.drive(LIMIT);
    assert_eq!(Pair::children(&p.a_events).len(), 10, "five replacements made");
    assert_eq!(most_in_flight(&p.wire[before..]), 2, "rekey quick modes of ours at once");
    assert!(Pair::failures(&p.a_events).is_empty() && Pair::failures(&p.b_events).is_empty());
}

#[test]
fn a_refused_pair_does_not_keep_the_others_down() {
    let (mut a, mut b) = configs();
    // A asks for a pair B does not protect, first in line, then three B accepts.
    a.subnets.insert(0, SubnetPair { local: subnet("10.1.9.0/24"), remote: subnet("10.2.9.0/24") });
    for i in 1..=3 {
        let (l, r) = (format!("10.1.{i}.0/24"), format!("10.2.{i}.0/24"));
        a.subnets.push(SubnetPair { local: subnet(&l), remote: subnet(&r) });
        b.subnets.push(SubnetPair { local: subnet(&r), remote: subnet(&l) });
    }
    let p = up(a, b, 23);
    let failures = Pair::failures(&p.a_events);
    assert!(!failures.is_empty(), "the refused pair is reported");
    assert!(failures.iter().all(|f| f.0 == vpngw_ike::FailReason::TrafficSelectorMismatch), "{failures:?}");
    // The original pair and the three accepted ones: up, whatever was under way when the
    // refusal came.
    let mut pairs: Vec<String> = Pair::children(&p.a_events).iter().map(|c| c.selectors.to_string()).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 4, "{pairs:?}");
    assert!(!pairs.iter().any(|s| s.contains("10.2.9.0")), "{pairs:?}");
}

#[test]
fn nat_is_detected_and_ike_floats_to_4500() {
    let (mut a, mut b) = configs();
    a.local_address = A_PRIVATE.into();
    b.remote_address = NAT_PUBLIC.into();
    let mut p = Pair::new(a, b, 9);
    p.nat = true;
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert_up(&p, 1);
    for (c, remote_port) in Pair::children(&p.a_events)
        .iter()
        .map(|c| (c, 4500))
        .chain(Pair::children(&p.b_events).iter().map(|c| (c, 14500)))
    {
        assert_eq!(c.encapsulation, Encapsulation::UdpTunnel { draft: false });
        assert_eq!(c.local.port(), 4500);
        assert_eq!(c.remote.port(), remote_port, "B sees A's NAT-mapped port");
    }
    // MM1-MM4 on port 500, everything from MM5 on on 4500.
    let ports: Vec<u16> = p.wire.iter().map(|(_, _, dst, _)| dst.port()).collect();
    assert_eq!(&ports[..4], &[500, 10500, 500, 10500], "B answers A's NAT mapping");
    assert!(ports[4..].iter().all(|p| *p == 4500 || *p == 14500), "{ports:?}");
}

#[test]
fn lost_datagrams_are_retransmitted() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 10);
    p.drop_from_a = 2; // MM1 and its first retransmission
    p.drop_from_b = 1; // MM2
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert_up(&p, 1);
}

#[test]
fn a_duplicate_request_gets_the_same_answer_and_no_new_work() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 11);
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert_up(&p, 1);
    // Replay MM5 (A's third message) at B: B answers with the same MM6 bytes, and nothing
    // else happens (no second IKE SA, no event).
    let (_, src, dst, mm5) = p.wire.iter().filter(|w| w.0).nth(2).cloned().unwrap();
    let mm6 = p.wire.iter().filter(|w| !w.0).nth(2).map(|w| w.3.clone()).unwrap();
    p.b.handle(p.now, dst, src, &mm5);
    let again = p.b.poll_transmit().expect("an answer to the duplicate");
    assert_eq!(again.payload, mm6);
    assert!(p.b.poll_event().is_none());
    assert_eq!(p.b.ike_sas().len(), 1);
    // The same for quick mode: a replayed QM2 at A gets the same QM3.
    let (_, src, dst, qm2) = p.wire.iter().filter(|w| !w.0).nth(3).cloned().unwrap();
    let qm3 = p.wire.iter().filter(|w| w.0).nth(4).map(|w| w.3.clone()).unwrap();
    p.a.handle(p.now, dst, src, &qm2);
    assert_eq!(p.a.poll_transmit().expect("QM3 again").payload, qm3);
    assert!(p.a.poll_event().is_none());
}

#[test]
fn responder_lifetime_is_honoured() {
    let (mut a, mut b) = configs();
    b.phase2.lifetime_seconds = 1800;
    b.phase2.lifetime_kilobytes = 100_000;
    a.phase1.lifetime = Duration::from_secs(28_800);
    let p = up(a, b, 12);
    assert_up(&p, 1);
    for c in Pair::children(&p.a_events).iter().chain(Pair::children(&p.b_events).iter()) {
        assert_eq!(c.lifetime_seconds, 1800);
        assert_eq!(c.lifetime_kilobytes, Some(100_000));
    }
    let lifetimes: Vec<u64> = p
        .a_events
        .iter()
        .chain(p.b_events.iter())
        .filter_map(|e| {
            if let Event::IkeSaEstablished { lifetime_seconds, .. } = e { Some(*lifetime_seconds) } else { None }
        })
        .collect();
    assert_eq!(lifetimes, [28_800, 28_800], "both sides use the proposed (shorter than nothing) phase 1 lifetime");
}

#[test]
fn a_peer_cannot_impose_lifetimes_below_the_floor() {
    // B (its own configuration, below the floor) asks for 5 s and 5 KB: B keeps its own; A
    // takes the shorter lifetime only down to 30 s and 1024 KB (a rekey storm otherwise).
    let (a, mut b) = configs();
    b.phase2.lifetime_seconds = 5;
    b.phase2.lifetime_kilobytes = 5;
    let mut p = Pair::new(a, b, 14);
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(Duration::from_secs(2));
    let (a_first, b_first) = (&Pair::children(&p.a_events)[0], &Pair::children(&p.b_events)[0]);
    assert_eq!((a_first.lifetime_seconds, a_first.lifetime_kilobytes), (30, Some(1024)));
    assert_eq!((b_first.lifetime_seconds, b_first.lifetime_kilobytes), (5, Some(5)));
}

#[test]
fn terminate_sends_deletes_and_the_peer_honours_them() {
    let (a, b) = configs();
    let mut p = up(a, b, 13);
    assert_up(&p, 1);
    p.a.terminate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    assert!(p.b_events.iter().any(|e| matches!(e, Event::ChildSaDeleted { .. })));
    assert!(p.b_events.iter().any(|e| matches!(e, Event::IkeSaDeleted { .. })));
    assert!(p.a.ike_sas().is_empty());
    assert!(p.b.ike_sas().is_empty());
}

// --------------------------------------------------------------------------------------------
// Mismatches

fn failure_of(events: &[Event]) -> Option<(FailReason, String)> {
    Pair::failures(events).into_iter().next()
}

#[test]
fn phase1_proposal_mismatch_names_the_parameters() {
    let (mut a, b) = configs();
    a.phase1.encryption = EncryptionAlgorithm::Aes256;
    a.phase1.dh_group = DhGroup::Modp2048;
    let p = up(a, b, 20);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::Phase1ProposalMismatch);
    assert_eq!(
        detail,
        "phase 1 proposal mismatch with 198.51.100.1: encryption: peer offered aes-256, configured 3des; dh_group: peer offered dh14, configured dh1"
    );
    let (reason, detail) = failure_of(&p.a_events).unwrap();
    assert_eq!(reason, FailReason::Phase1ProposalMismatch);
    assert!(detail.contains("refused our phase 1 proposal") && detail.contains("aes-256"), "{detail}");
    assert_eq!(Pair::established(&p.a_events) + Pair::established(&p.b_events), 0);
    assert!(p.a.ike_sas().is_empty() && p.b.ike_sas().is_empty(), "no leaked state");
}

#[test]
fn psk_mismatch_is_recognised_on_both_sides() {
    let (mut a, b) = configs();
    a.psk = SecretBytes::from_slice(b"another-secret-key");
    let p = up(a, b, 21);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::AuthenticationFailed);
    assert!(detail.contains("pre-shared key"), "{detail}");
    let (reason, detail) = failure_of(&p.a_events).unwrap();
    assert_eq!(reason, FailReason::AuthenticationFailed, "{detail}");
    for (_, d) in Pair::failures(&p.a_events).iter().chain(Pair::failures(&p.b_events).iter()) {
        assert!(!d.contains("another-secret") && !d.contains("lab-psk"), "a key in a message: {d}");
    }
    assert!(p.a.ike_sas().is_empty() && p.b.ike_sas().is_empty());
}

#[test]
fn id_mismatch() {
    let (a, mut b) = configs();
    b.remote_id = Identity::Fqdn("someone.else".into());
    let p = up(a, b, 22);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::IdMismatch);
    assert_eq!(detail, "remote_id: peer sent ip:198.51.100.1, configured fqdn:someone.else");
    assert_eq!(failure_of(&p.a_events).unwrap().0, FailReason::IdMismatch);
}

#[test]
fn main_versus_aggressive() {
    let (mut a, b) = configs();
    a.mode = ExchangeMode::Aggressive;
    let p = up(a, b, 23);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::ModeMismatch);
    assert_eq!(detail, "mode: peer uses aggressive mode, configured main");
    assert_eq!(Pair::established(&p.a_events), 0);
}

#[test]
fn pfs_mismatch() {
    let (mut a, b) = configs();
    a.phase2.pfs = Some(DhGroup::Modp1024);
    let p = up(a, b, 24);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::PfsMismatch);
    assert!(detail.ends_with("pfs: peer offered dh2, configured disable"), "{detail}");
    assert_eq!(failure_of(&p.a_events).unwrap().0, FailReason::Phase2ProposalMismatch);
    assert!(Pair::children(&p.a_events).is_empty() && Pair::children(&p.b_events).is_empty());
}

#[test]
fn phase2_proposal_mismatch() {
    let (mut a, b) = configs();
    a.phase2.encryption = EncryptionAlgorithm::Aes128;
    a.phase2.integrity = IntegrityAlgorithm::HmacSha1_96;
    let p = up(a, b, 25);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::Phase2ProposalMismatch);
    assert!(
        detail.ends_with(
            "encryption: peer offered aes-128, configured 3des; authentication: peer offered sha1, configured md5"
        ),
        "{detail}"
    );
}

#[test]
fn traffic_selector_mismatch() {
    let (a, mut b) = configs();
    b.subnets = vec![SubnetPair { local: subnet("10.9.0.0/24"), remote: subnet("10.1.0.0/24") }];
    let p = up(a, b, 26);
    let (reason, detail) = failure_of(&p.b_events).unwrap();
    assert_eq!(reason, FailReason::TrafficSelectorMismatch);
    assert!(detail.contains("10.2.0.0/24") && detail.contains("10.9.0.0/24"), "{detail}");
    assert_eq!(failure_of(&p.a_events).unwrap().0, FailReason::TrafficSelectorMismatch);
}

#[test]
fn silent_peer_is_unreachable() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 27);
    p.drop_from_a = usize::MAX;
    p.a.initiate(p.now, "to-b").unwrap();
    p.drive(LIMIT);
    let (reason, _) = failure_of(&p.a_events).unwrap();
    assert_eq!(reason, FailReason::PeerUnreachable);
    assert!(p.a.ike_sas().is_empty());
}

#[test]
fn unknown_peer_and_hostile_datagrams() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 28);
    // Garbage and truncated headers from anywhere: counted, nothing else.
    for junk in [&[][..], &[0u8; 10], &[0xffu8; 28], &[1u8; 300]] {
        p.b.handle(p.now, "198.51.100.2:500".parse().unwrap(), "198.51.100.1:500".parse().unwrap(), junk);
    }
    assert!(p.b.poll_transmit().is_none());
    assert!(p.b.drops().by_reason.values().sum::<u64>() >= 4);
    // A well-formed MM1 from an unknown address: a failure event, no SA.
    p.a.initiate(p.now, "to-b").unwrap();
    let mm1 = p.a.poll_transmit().unwrap();
    p.b.handle(p.now, mm1.remote, "192.0.2.77:500".parse().unwrap(), &mm1.payload);
    let events: Vec<Event> = std::iter::from_fn(|| p.b.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::NegotiationFailed { reason: FailReason::UnknownPeer, .. })),
        "{events:?}"
    );
    // The 0xff header claims version 15 from a configured peer's address: reported as such.
    assert!(
        events.iter().any(|e| matches!(e, Event::NegotiationFailed { reason: FailReason::VersionMismatch, .. })),
        "{events:?}"
    );
    assert!(p.b.ike_sas().is_empty());
}

/// The responder answers a retransmission of our MM1 (it crossed its MM2 in flight) with MM2
/// again, which reaches us after we sent MM3. The copy is ignored: read as the next message,
/// it would end the negotiation ("missing KE payload"), as seen against strongSwan when both
/// sides initiated at once.
#[test]
fn a_copy_of_the_answer_already_taken_is_ignored() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b, 13);
    p.a.initiate(p.now, "to-b").unwrap();
    let mm1 = p.a.poll_transmit().expect("MM1");
    p.b.handle(p.now, mm1.remote, mm1.local, &mm1.payload);
    let mm2 = p.b.poll_transmit().expect("MM2");
    p.a.handle(p.now, mm2.remote, mm2.local, &mm2.payload);
    let mm3 = p.a.poll_transmit().expect("MM3");
    p.a.handle(p.now, mm2.remote, mm2.local, &mm2.payload);
    assert!(p.a.poll_transmit().is_none(), "nothing sent for the copy");
    let mut events = vec![];
    while let Some(e) = p.a.poll_event() {
        events.push(e);
    }
    assert!(Pair::failures(&events).is_empty(), "{events:?}");
    // The exchange goes on from MM3 and completes.
    p.b.handle(p.now, mm3.remote, mm3.local, &mm3.payload);
    p.drive(LIMIT);
    assert_up(&p, 1);
}
