//! The hot-backup soak (`make ha`: `HA_CRASHES=20 cargo test -p vpngw-tests --test ha_soak --
//! --ignored --nocapture`): the active crashes `HA_CRASHES` times (20 unless set), A and B in
//! turn; after each takeover the crashed node boots again, restarts vpngw and keepalived, and
//! is a standby in sync before the next crash. Throughout: pings every 10 ms both ways (the gap
//! of each takeover), a paced TCP stream from the left host to the right host (its SHA-256 at
//! both ends must match at the end) and numbered UDP datagrams from the right host to the
//! left host. strongSwan keeps the IKE SA it had before the first crash; its child SAs change
//! only through the rekeys the test starts: after every takeover (every `HA_REKEY_EVERY`th, 1
//! unless set) vpngw and then strongSwan rekey the child SA on the synced IKE SA (quick modes and
//! the old SA's Delete, an informational: the IV chain and message IDs came across). DPD is not
//! checked here: under continuous traffic neither side probes (tests/ha.rs checks it after each
//! takeover on a quiet tunnel). Then `HA_HANDOVERS` (3)
//! graceful handovers. Prints every gap, the bulk-sync times, and the sync channel's bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use vpngw_tests::ha::Node;
use vpngw_tests::ha_pair::{LongTraffic, Pair, bulk_applied_took, bulk_sync_ms, sw_child_spis};
use vpngw_tests::netns::wait_for;
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, wait_ping};

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

fn bytes_sent(p: &Pair, node: Node) -> u64 {
    p.ha_status(node)["bytes_sent"].as_u64().unwrap_or_else(|| panic!("{}", p.ha_status(node)))
}

/// The sync channel's bytes per second from `node` over `window`.
fn sync_rate(p: &Pair, node: Node, window: Duration) -> f64 {
    let (b0, t0) = (bytes_sent(p, node), Instant::now());
    std::thread::sleep(window);
    (bytes_sent(p, node) - b0) as f64 / t0.elapsed().as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 }
}

fn fmt(v: &[f64]) -> String {
    v.iter().map(|g| format!("{g:.3}")).collect::<Vec<_>>().join(" ")
}

#[test]
#[ignore = "the hot-backup soak, minutes long: make ha (HA_CRASHES=20 ... -- --ignored)"]
fn the_active_crashes_again_and_again_under_traffic_without_renegotiation() {
    let crashes = env_count("HA_CRASHES", 20);
    let handovers = env_count("HA_HANDOVERS", 3);
    let rekey_every = env_count("HA_REKEY_EVERY", 1).max(1);
    let mut p = Pair::start("ha-soak");
    let first = p.establish();
    let ike = first.ike_sas.clone();
    let mut spis = sw_child_spis(&first);
    let kbps = 100;
    let traffic = LongTraffic::start(&p.ha.lab, kbps);
    std::thread::sleep(Duration::from_secs(1));
    let idle_rate = sync_rate(&p, Node::A, Duration::from_secs(5));
    eprintln!("sync from the active at {kbps} KiB/s TCP + 200 UDP datagrams/s + 2x100 pings/s: {idle_rate:.0} B/s");

    let (mut gaps, mut gaps_lr, mut gaps_rl, mut bulks, mut rekey_bytes) = (vec![], vec![], vec![], vec![], vec![]);
    let mut bulk_took = vec![];
    let mut bulk_bytes = vec![];
    let mut active = Node::A;
    for i in 1..=crashes {
        let to = active.other();
        let meters = p.gap_meters(&format!("crash{i}"));
        std::thread::sleep(Duration::from_millis(300));
        p.ha.crash(active);
        assert!(p.ha.wait_vips(to, Duration::from_secs(3)).is_some(), "crash {i}: {}", p.ha.keepalived_log(to));
        wait_for(Duration::from_secs(2), || (p.ha_status(to)["role"] == "active").then_some(()))
            .unwrap_or_else(|| panic!("crash {i}: {to:?} not active: {}", p.ha_status(to)));
        let last = p.ha_status(to)["last_takeover"].clone();
        assert_eq!(
            (last["ike_sas"].as_u64(), last["refused"].as_array().map(Vec::len)),
            (Some(1), Some(0)),
            "crash {i}: {last}\n{}",
            p.node(to).log_text()
        );
        assert!(
            wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3))
                && wait_ping(&p.ha.lab, &p.ha.lab.right_host, LEFT_HOST, Duration::from_secs(3)),
            "crash {i}: no traffic through {to:?}\n{}",
            p.node(to).log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
        let [lr, rl] = p.finish_gaps(meters);
        let gap = lr.longest_gap.max(rl.longest_gap).as_secs_f64();
        eprintln!(
            "crash {i} of {active:?}: gap {gap:.3} s (left->right {}; right->left {})",
            lr.summary(),
            rl.summary()
        );
        gaps.push(gap);
        gaps_lr.push(lr.longest_gap.as_secs_f64());
        gaps_rl.push(rl.longest_gap.as_secs_f64());
        let sw = p.charon.list_sas();
        assert_eq!(sw.ike_sas, ike, "crash {i}: strongSwan has another IKE SA");
        assert_eq!(sw_child_spis(&sw), spis, "crash {i}: strongSwan's child SAs changed");

        // The crashed node boots, restarts and bulk-syncs.
        p.ha.revive(active);
        p.start_node(active);
        p.wait_in_sync(to);
        // What the restarted node received so far: the bulk (and a few heartbeats).
        bulk_bytes.push(p.ha_status(active)["bytes_received"].as_u64().unwrap_or(0));
        let took = bulk_sync_ms(&p.node(active).log_text());
        assert_eq!(took.len(), 1, "crash {i}: bulk syncs of the restarted {active:?}: {took:?}");
        bulks.push(took[0]);
        bulk_took.extend(bulk_applied_took(&p.node(active).log_text()));
        assert_eq!(p.ha.vip_holder(), Some(to), "crash {i}: nopreempt");
        if i % rekey_every == 0 {
            let (b0, t0) = (bytes_sent(&p, to), Instant::now());
            let after = p.rekey_both_ways(to);
            // Wait until the standby acknowledged the rekeys.
            std::thread::sleep(Duration::from_millis(300));
            p.wait_in_sync(to);
            let extra = (bytes_sent(&p, to) - b0) as f64 - idle_rate * t0.elapsed().as_secs_f64();
            eprintln!(
                "crash {i}: rekey by vpngw and by strongSwan on {to:?}: about {extra:.0} sync bytes beyond the steady rate"
            );
            rekey_bytes.push(extra / 2.0);
            spis = sw_child_spis(&after);
            assert_eq!(after.ike_sas, ike);
        }
        active = to;
    }

    let end_rate = sync_rate(&p, active, Duration::from_secs(5));
    eprintln!(
        "sync from the active after {crashes} crashes and their rekeys: {end_rate:.0} B/s (before: {idle_rate:.0} B/s)"
    );
    let mut handover_gaps = vec![];
    for i in 1..=handovers {
        let to = active.other();
        let meters = p.gap_meters(&format!("handover{i}"));
        std::thread::sleep(Duration::from_millis(300));
        let out = p.node(active).cli(&["ha", "handover"]);
        assert!(
            out.status.success(),
            "handover {i}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            p.node(active).log_text()
        );
        assert!(p.ha.wait_vips(to, Duration::from_secs(3)).is_some(), "handover {i}");
        assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)), "handover {i}");
        std::thread::sleep(Duration::from_millis(300));
        let [lr, rl] = p.finish_gaps(meters);
        let gap = lr.longest_gap.max(rl.longest_gap).as_secs_f64();
        eprintln!("handover {i} {active:?} -> {to:?}: gap {gap:.3} s ({}; {})", lr.summary(), rl.summary());
        handover_gaps.push(gap);
        // The node that handed over stands by, keepalived ready to elect it again (not FAULT).
        wait_for(Duration::from_secs(3), || {
            (p.ha.transitions(active).last().map(String::as_str) == Some("BACKUP")).then_some(())
        })
        .unwrap_or_else(|| panic!("handover {i}: {active:?} not BACKUP: {:?}", p.ha.transitions(active)));
        p.wait_in_sync(to);
        let sw = p.charon.list_sas();
        assert_eq!(sw.ike_sas, ike, "handover {i}: strongSwan has another IKE SA");
        assert_eq!(sw_child_spis(&sw), spis, "handover {i}: strongSwan's child SAs changed");
        active = to;
    }
    let bulk_after_handover = bulk_sync_ms(&p.node(active.other()).log_text());

    let report = traffic.finish(&p.ha.lab, Duration::from_secs(60));
    eprintln!("TCP stream sent {} received {}", report.tcp_sent, report.tcp_received);
    eprintln!("UDP sent {} received {}", report.udp_sent, report.udp_received);
    eprintln!("takeover gaps (s, worst of both directions): {}", fmt(&gaps));
    eprintln!("  left->right: {}", fmt(&gaps_lr));
    eprintln!("  right->left: {}", fmt(&gaps_rl));
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    eprintln!("median {:.3} s, worst {worst:.3} s", median(&gaps));
    eprintln!("bulk sync took_ms of each restarted node: {bulks:?}; after the handovers: {bulk_after_handover:?}");
    eprintln!("bulk applied (sync's own timing, BulkBegin to BulkEnd): {}", bulk_took.join(" "));
    eprintln!("sync bytes each restarted node had received when in sync (the bulk): {bulk_bytes:?}");
    eprintln!("sync bytes per rekey (about): {}", fmt(&rekey_bytes));
    eprintln!("handover gaps (s): {}", fmt(&handover_gaps));
    assert_eq!(gaps.len(), crashes);
    assert!(median(&gaps) <= 0.5, "median gap {:.3} s: {}", median(&gaps), fmt(&gaps));
    assert!(worst <= 1.0, "worst gap {worst:.3} s: {}", fmt(&gaps));
    assert!(handover_gaps.iter().all(|&g| g <= 1.0), "handover gaps {}", fmt(&handover_gaps));
    assert!(report.tcp_sent["bytes"].as_u64().unwrap_or(0) > 0, "{report:?}");
    assert_eq!(report.tcp_received["bytes"], report.tcp_sent["bytes"], "the TCP stream lost bytes");
    assert_eq!(report.tcp_received["sha256"], report.tcp_sent["sha256"], "the TCP stream is corrupt");
    let (sent, received) =
        (report.udp_sent["sent"].as_u64().unwrap_or(0), report.udp_received["received"].as_u64().unwrap_or(0));
    assert_eq!(report.udp_received["bad"], 0, "{report:?}");
    // 200 datagrams a second: each takeover may lose up to a second's worth.
    let allowed = 200 * (crashes + handovers) as u64;
    assert!(sent > 0 && received + allowed >= sent, "UDP: {received} of {sent} arrived");
}
