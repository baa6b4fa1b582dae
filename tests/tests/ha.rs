//! Dual-server hot backup against strongSwan 5.9.8: two vpngw (A, B) share the public and LAN
//! virtual addresses, keepalived (VRRPv3, 100 ms adverts, the deploy/ha samples) elects the
//! active one and calls `vpngw ha notify` / `vpngw ha check`, and the sync channel keeps the
//! standby's replica. A crash of the active (kill -9 and its links down) and a graceful
//! handover move the tunnel to the other server with no renegotiation: strongSwan keeps its
//! IKE SA (cookies) and child SAs, pings every 10 ms see a gap of at most a second, and DPD and
//! rekeys started by either side go on on the synced IKE SA.
//!
//! `make test` runs one crash and one handover here; `make ha` runs tests/ha_soak.rs (`HA_CRASHES`
//! crashes, 20) and tests/ha_split.rs covers the partial partitions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use vpngw_tests::ha::Node;
use vpngw_tests::ha_pair::Pair;

#[test]
fn the_standby_takes_over_a_crashed_active_and_a_handover_without_renegotiation() {
    let mut p = Pair::start("ha-takeover");
    let before = p.establish();
    let standby = p.node(Node::B).connection("to-right").unwrap();
    assert_eq!(standby["state"], "down", "the standby negotiates nothing: {standby}");

    // 1. A crashes (kill -9 of vpngw and keepalived, its links down).
    let gaps = p.gap_meters("crash");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    p.ha.crash(Node::A);
    assert!(p.ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::B));
    p.check_takeover(Node::B, &before, gaps, log_mark);
    let after_rekeys = p.rekey_both_ways(Node::B);

    // 2. A comes back as the standby and bulk-syncs; then a graceful handover moves the tunnel
    // back to it.
    p.ha.revive(Node::A);
    p.start_node(Node::A);
    p.wait_in_sync(Node::B);
    assert_eq!(p.ha.vip_holder(), Some(Node::B), "nopreempt: the returning node stays the backup");
    let gaps = p.gap_meters("handover");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    let out = p.node(Node::B).cli(&["ha", "handover"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), p.node(Node::B).log_text());
    assert!(p.ha.wait_vips(Node::A, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::A));
    p.check_takeover(Node::A, &after_rekeys, gaps, log_mark);
    p.rekey_both_ways(Node::A);
}
