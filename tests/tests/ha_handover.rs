//! A graceful handover must leave a pair that can fail over again: the node that handed over
//! stands by with keepalived ready to take the role back (BACKUP, not FAULT), so a crash of
//! the new active or a second handover moves the tunnel back to it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use vpngw_tests::ha::Node;
use vpngw_tests::ha_pair::Pair;
use vpngw_tests::netns::wait_for;

#[test]
fn the_node_that_handed_over_takes_the_role_back_when_the_new_active_crashes() {
    let p = Pair::start("ha-handover-back");
    let before = p.establish();
    let out = p.node(Node::A).cli(&["ha", "handover"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), p.node(Node::A).log_text());
    assert!(p.ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::B));
    p.wait_in_sync(Node::B);
    // A is a standby keepalived may elect again.
    let ready = wait_for(Duration::from_secs(3), || {
        (p.ha.transitions(Node::A).last().map(String::as_str) == Some("BACKUP")).then_some(())
    });
    let track = std::fs::read_to_string(p.ha.track_file(Node::A)).unwrap_or_default();
    assert!(
        ready.is_some(),
        "A's keepalived transitions {:?}, track file {track:?}, status {}",
        p.ha.transitions(Node::A),
        p.ha_status(Node::A)
    );
    let gaps = p.gap_meters("crash-after-handover");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    p.ha.crash(Node::B);
    assert!(p.ha.wait_vips(Node::A, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::A));
    p.check_takeover(Node::A, &before, gaps, log_mark);
}
