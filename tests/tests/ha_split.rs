//! Partial partitions of the hot-backup pair (tests/src/ha.rs draws the lab), against
//! strongSwan as the peer:
//!
//! - the sync link fails while VRRP still sees both nodes: no takeover, the tunnel keeps
//!   working, both nodes report the partner lost and the standby out of sync; healed, the
//!   standby is in sync again through a bulk (a crash right after proves the bulk carried what
//!   changed during the cut);
//! - VRRP fails while sync works (split brain): both nodes take the addresses and are active,
//!   neither applies the other's records; healed, keepalived keeps A (priority 250), B drops its
//!   state without Deletes, stands by and bulk-syncs from A, and strongSwan keeps its IKE SA;
//! - an old active that rejoins after a crash comes up as the standby and never takes the
//!   role or overwrites the new active's state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::ha::Node;
use vpngw_tests::ha_pair::{Pair, sw_child_spis};
use vpngw_tests::netns::wait_for;
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, wait_ping};

fn pings_both_ways(p: &Pair, timeout: Duration) -> (bool, bool) {
    (
        wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, timeout),
        wait_ping(&p.ha.lab, &p.ha.lab.right_host, LEFT_HOST, timeout),
    )
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn a_cut_sync_link_moves_nothing_and_heals_with_a_bulk() {
    let p = Pair::start("ha-cut-sync");
    let before = p.establish();
    let bulks_before = u64_of(&p.ha_status(Node::B), "bulk_syncs");
    let takeovers = (u64_of(&p.ha_status(Node::A), "takeovers"), u64_of(&p.ha_status(Node::B), "takeovers"));

    let gaps = p.gap_meters("cut-sync");
    std::thread::sleep(Duration::from_millis(200));
    p.ha.cut_sync();
    let cut = Instant::now();
    let noticed = wait_for(Duration::from_secs(5), || {
        let s = p.ha_status(Node::B);
        (s["in_sync"] == false && s["partner_connected"] == false).then(|| cut.elapsed())
    })
    .unwrap_or_else(|| panic!("the standby still says in sync: {}", p.ha_status(Node::B)));
    eprintln!("cut sync: the standby reported out of sync after {:.3} s", noticed.as_secs_f64());
    assert!(noticed <= Duration::from_millis(2500), "{noticed:?}");
    // A while with the link cut: nothing moves, the tunnel works; the tunnel changes (a rekey
    // by each side) that the standby cannot hear of now.
    let after_rekeys = p.rekey_both_ways(Node::A);
    std::thread::sleep(Duration::from_secs(1));
    let (a, b) = (p.ha_status(Node::A), p.ha_status(Node::B));
    eprintln!("during the cut: A {a}\nB {b}");
    assert_eq!(p.ha.vip_holders(), vec![Node::A], "no takeover without the sync link");
    assert_eq!((&a["role"], &b["role"]), (&Value::from("active"), &Value::from("standby")));
    assert_eq!((a["partner_connected"].as_bool(), a["in_sync"].as_bool()), (Some(false), Some(false)), "{a}");
    assert_eq!((u64_of(&a, "takeovers"), u64_of(&b, "takeovers")), takeovers);
    for (report, dir) in p.finish_gaps(gaps).iter().zip(["left->right", "right->left"]) {
        eprintln!("cut sync, {dir}: {}", report.summary());
        assert!(report.longest_gap <= Duration::from_millis(500), "{dir}: {}", report.summary());
    }

    p.ha.heal_sync();
    let healed = Instant::now();
    p.wait_in_sync(Node::A);
    eprintln!("heal: in sync again after {:.3} s", healed.elapsed().as_secs_f64());
    let b = p.ha_status(Node::B);
    assert!(u64_of(&b, "bulk_syncs") > bulks_before, "healed without a bulk: {b}");
    assert_eq!(p.ha.vip_holders(), vec![Node::A]);

    // The bulk carried the rekeyed child SAs: B takes over a crash of A with them.
    let gaps = p.gap_meters("after-heal");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    p.ha.crash(Node::A);
    assert!(p.ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::B));
    wait_for(Duration::from_secs(2), || (p.ha_status(Node::B)["role"] == "active").then_some(()));
    p.check_takeover(Node::B, &after_rekeys, gaps, log_mark);
    assert_ne!(sw_child_spis(&after_rekeys), sw_child_spis(&before));
}

/// A VRRP split brain and its end: everything about the roles, the state and strongSwan's IKE
/// SA is asserted; returns whether pings got through after the heal (left->right,
/// right->left, without any rekey) and what strongSwan logged since the cut.
fn split_brain(name: &str) -> (Pair, (bool, bool), String) {
    let p = Pair::start(name);
    let before = p.establish();
    let bulks_before = u64_of(&p.ha_status(Node::B), "bulk_syncs");
    let log_mark = p.charon.log().len();
    let gaps = p.gap_meters("split");
    std::thread::sleep(Duration::from_millis(200));

    p.ha.cut_vrrp();
    let cut = Instant::now();
    wait_for(Duration::from_secs(5), || (p.ha.vip_holders() == [Node::A, Node::B]).then_some(())).unwrap_or_else(
        || panic!("B did not take the addresses: {:?}\n{}", p.ha.vip_holders(), p.ha.keepalived_log(Node::B)),
    );
    eprintln!("cut VRRP: both hold the addresses after {:.3} s", cut.elapsed().as_secs_f64());
    // Both active, each sees the other active (the sync session works) and applies nothing.
    let (a, b) = wait_for(Duration::from_secs(3), || {
        let (a, b) = (p.ha_status(Node::A), p.ha_status(Node::B));
        (a["role"] == "active"
            && b["role"] == "active"
            && a["partner_role"] == "active"
            && b["partner_role"] == "active")
            .then_some((a, b))
    })
    .unwrap_or_else(|| panic!("not both active:\nA {}\nB {}", p.ha_status(Node::A), p.ha_status(Node::B)));
    eprintln!("split brain: A {a}\nB {b}");
    assert_eq!(b["last_takeover"]["ike_sas"].as_u64(), Some(1), "B took over with the replica: {b}");
    // Each serves its own state: the tunnel is up on both, traffic gets through (by the node
    // that answered ARP last).
    assert_eq!(p.node(Node::A).connection("to-right").unwrap()["state"], "up");
    assert_eq!(p.node(Node::B).connection("to-right").unwrap()["state"], "up");
    assert_eq!(pings_both_ways(&p, Duration::from_secs(5)), (true, true), "no traffic in the split brain");
    std::thread::sleep(Duration::from_secs(2));
    let (a2, b2) = (p.ha_status(Node::A), p.ha_status(Node::B));
    // Neither applied the other's records: no bulk either way, still both active.
    assert_eq!(u64_of(&b2, "bulk_syncs"), u64_of(&b, "bulk_syncs"), "B applied or sent a bulk: {b2}");
    assert_eq!(u64_of(&a2, "bulk_syncs"), u64_of(&a, "bulk_syncs"), "A applied or sent a bulk: {a2}");
    assert_eq!((a2["role"].as_str(), b2["role"].as_str()), (Some("active"), Some("active")));
    assert_eq!((a2["in_sync"].as_bool(), b2["in_sync"].as_bool()), (Some(false), Some(false)), "A {a2}\nB {b2}");

    p.ha.heal_vrrp();
    let healed = Instant::now();
    wait_for(Duration::from_secs(5), || (p.ha.vip_holders() == [Node::A]).then_some(())).unwrap_or_else(|| {
        panic!("the split brain did not end: {:?}\n{}", p.ha.vip_holders(), p.ha.keepalived_log(Node::B))
    });
    eprintln!("healed VRRP: A alone holds the addresses after {:.3} s", healed.elapsed().as_secs_f64());
    p.wait_in_sync(Node::A);
    eprintln!("healed VRRP: B standby in sync after {:.3} s", healed.elapsed().as_secs_f64());
    let b3 = p.ha_status(Node::B);
    assert!(u64_of(&b3, "bulk_syncs") > bulks_before, "B did not bulk-sync from A: {b3}");
    let b_log = p.node(Node::B).log_text();
    assert!(b_log.contains("standing by (state dropped, peers not told)"), "{b_log}");
    assert_eq!(p.node(Node::B).connection("to-right").unwrap()["state"], "down", "B dropped its state");

    // strongSwan: the same IKE SA, no Delete from either node, and traffic both ways.
    let (lr, rl) = pings_both_ways(&p, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let reports = p.finish_gaps(gaps);
    for (report, dir) in reports.iter().zip(["left->right", "right->left"]) {
        eprintln!("split brain and heal, {dir}: {}", report.summary());
    }
    let sw_log = p.charon.log()[log_mark..].to_string();
    let after = p.charon.list_sas();
    eprintln!("strongSwan before {before:?}\nafter {after:?}");
    assert!(!sw_log.contains("received DELETE") && !sw_log.contains("deleting IKE_SA"), "{sw_log}");
    assert_eq!(after.ike_sas, before.ike_sas, "strongSwan has another IKE SA");
    (p, (lr, rl), sw_log)
}

/// The split brain and its end, and the tunnel working again after a rekey by each side on the
/// IKE SA that survived. (Without the rekey it does not: see the ignored test below.)
#[test]
fn a_vrrp_split_brain_makes_both_active_and_a_wins_when_it_heals() {
    let (p, (lr, rl), _) = split_brain("ha-cut-vrrp");
    eprintln!("split brain healed: pings without a rekey: left->right {lr}, right->left {rl}");
    let before = p.charon.list_sas();
    let after = p.rekey_both_ways(Node::A);
    assert_eq!(after.ike_sas, before.ike_sas);
    assert_eq!(pings_both_ways(&p, Duration::from_secs(5)), (true, true));
}

/// After the split brain, A's child SAs would send with A's own outbound sequence numbers,
/// behind those B used meanwhile on the same SAs, and strongSwan would drop them as replays:
/// the winner rekeys its child SAs as soon as the partner stands down, and traffic flows again
/// with no rekey started by the test.
#[test]
fn after_a_vrrp_split_brain_the_tunnel_works_without_a_rekey() {
    let (p, (lr, rl), sw_log) = split_brain("ha-cut-vrrp-seq");
    assert_eq!(
        (lr, rl),
        (true, true),
        "pings after the heal (left->right, right->left)\nA:\n{}\nstrongSwan:\n{sw_log}",
        p.node(Node::A).log_text()
    );
}

#[test]
fn an_old_active_that_rejoins_stands_by_and_overwrites_nothing() {
    let mut p = Pair::start("ha-rejoin");
    let before = p.establish();
    p.ha.crash(Node::A);
    assert!(p.ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::B));
    wait_for(Duration::from_secs(2), || (p.ha_status(Node::B)["role"] == "active").then_some(()))
        .unwrap_or_else(|| panic!("B did not take over: {}", p.ha_status(Node::B)));
    assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)));
    let b_before = p.ha_status(Node::B);

    // A boots again and starts vpngw and keepalived: it must stand by from its first status on.
    p.ha.revive(Node::A);
    let gaps = p.gap_meters("rejoin");
    p.start_node(Node::A);
    let started = Instant::now();
    let mut roles = std::collections::BTreeSet::new();
    let mut in_sync_at = None;
    while started.elapsed() < Duration::from_secs(15) {
        let (a, b) = (p.ha_status(Node::A), p.ha_status(Node::B));
        roles.insert(a["role"].as_str().unwrap_or("no answer").to_string());
        assert_ne!(a["role"], "active", "the rejoining node took the role: {a}\n{}", p.node(Node::A).log_text());
        assert_eq!(p.ha.vip_holders(), vec![Node::B], "the rejoining node holds the address");
        assert_eq!(b["role"], "active", "{b}");
        if in_sync_at.is_none() && a["in_sync"] == true && b["in_sync"] == true {
            in_sync_at = Some(started.elapsed());
        }
        // Watch 2 s more once in sync.
        if in_sync_at.is_some_and(|t| started.elapsed() > t + Duration::from_secs(2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let in_sync_at = in_sync_at.unwrap_or_else(|| panic!("A never in sync: {}", p.ha_status(Node::A)));
    eprintln!("rejoin: A's roles seen {roles:?}; in sync {:.3} s after its start", in_sync_at.as_secs_f64());
    let (a, b) = (p.ha_status(Node::A), p.ha_status(Node::B));
    eprintln!("rejoined: A {a}\nB {b}");
    assert_eq!(u64_of(&a, "takeovers"), 0, "{a}");
    assert!(!p.node(Node::A).log_text().contains("took over as active"));
    // B's state is its own: same epoch, no takeover, nothing stale refused (A sent nothing),
    // and it sent A a bulk.
    assert_eq!(b["epoch"], b_before["epoch"], "B's epoch changed: {b}");
    assert_eq!(b["takeovers"], b_before["takeovers"]);
    assert_eq!(u64_of(&b, "stale_refused"), 0, "A sent records to B: {b}");
    assert!(u64_of(&b, "bulk_syncs") > u64_of(&b_before, "bulk_syncs"), "{b}");
    assert_eq!(p.node(Node::A).connection("to-right").unwrap()["state"], "down");

    // B keeps the tunnel: strongSwan's SAs unchanged, traffic through B.
    for (report, dir) in p.finish_gaps(gaps).iter().zip(["left->right", "right->left"]) {
        eprintln!("rejoin, {dir}: {}", report.summary());
        assert!(report.longest_gap <= Duration::from_millis(500), "{dir}: {}", report.summary());
    }
    let after = p.charon.list_sas();
    assert_eq!(after.ike_sas, before.ike_sas, "strongSwan has another IKE SA");
    assert_eq!(sw_child_spis(&after), sw_child_spis(&before), "strongSwan's child SAs changed");
    assert_eq!(pings_both_ways(&p, Duration::from_secs(3)), (true, true));
}
