//! The hot-backup lab with keepalived alone: the sample configurations of `deploy/ha/` move both
//! virtual addresses, with stand-ins for the daemon's `ha notify` (a script recording the
//! states) and `ha check` (`test -f` of a file the test removes to make a node sick). No vpngw
//! runs here; this proves the harness and the keepalived side before the daemon joins.

use std::time::{Duration, Instant};

use vpngw_tests::ha::{GapMeter, HaLab, KaOptions, LAN_VIP, Node, WAN_VIP};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST};

/// The stand-ins, in the lab directory: `roles-<node>` collects the notified states, the node is
/// healthy while `healthy-<node>` exists.
struct StandIn {
    dir: std::path::PathBuf,
}

impl StandIn {
    fn new(ha: &HaLab) -> Self {
        let dir = ha.lab.dir.clone();
        let record = dir.join("record.sh");
        std::fs::write(&record, "#!/bin/sh\n# record.sh FILE STATE\necho \"$2\" >> \"$1\"\n")
            .unwrap_or_else(|e| panic!("stand-in files: {e}"));
        std::fs::set_permissions(&record, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| panic!("stand-in files: {e}"));
        for node in Node::BOTH {
            std::fs::write(dir.join(format!("healthy-{}", node.letter())), "")
                .unwrap_or_else(|e| panic!("stand-in files: {e}"));
        }
        Self { dir }
    }

    fn notify(&self, node: Node) -> String {
        format!(
            "{} {}",
            self.dir.join("record.sh").display(),
            self.dir.join(format!("roles-{}", node.letter())).display()
        )
    }

    fn check(&self, node: Node) -> String {
        format!("test -f {}", self.dir.join(format!("healthy-{}", node.letter())).display())
    }

    fn roles(&self, node: Node) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("roles-{}", node.letter()))).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    fn set_healthy(&self, node: Node, healthy: bool) {
        let file = self.dir.join(format!("healthy-{}", node.letter()));
        if healthy {
            std::fs::write(file, "").unwrap_or_else(|e| panic!("stand-in files: {e}"));
        } else {
            std::fs::remove_file(file).unwrap_or_else(|e| panic!("stand-in files: {e}"));
        }
    }

    /// Waits for `state` to be the last one notified on `node`.
    fn wait_role(&self, node: Node, state: &str, timeout: Duration) -> bool {
        vpngw_tests::netns::wait_for(timeout, || {
            (self.roles(node).last().map(String::as_str) == Some(state)).then_some(())
        })
        .is_some()
    }
}

/// Starts A, waits for it to hold both addresses, then B: A is active (B starting first with
/// `nopreempt` would keep the role).
fn start_pair(ha: &HaLab, s: &StandIn, opts: KaOptions) {
    ha.start_keepalived_with(Node::A, &s.notify(Node::A), &s.check(Node::A), opts);
    assert!(
        ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(),
        "A never became active:\n{}",
        ha.keepalived_log(Node::A)
    );
    ha.start_keepalived_with(Node::B, &s.notify(Node::B), &s.check(Node::B), opts);
    assert!(s.wait_role(Node::B, "BACKUP", Duration::from_secs(5)), "B: {:?}", s.roles(Node::B));
    assert!(s.wait_role(Node::A, "MASTER", Duration::from_secs(2)), "A: {:?}", s.roles(Node::A));
    assert_eq!(ha.vip_holders(), [Node::A]);
    assert!(!ha.holds(Node::B, LAN_VIP));
}

#[test]
fn crash_sick_node_and_split_brain() {
    let ha = HaLab::new("ha-keepalived");
    ha.route_without_tunnel();
    let s = StandIn::new(&ha);
    start_pair(&ha, &s, KaOptions::default());
    assert!(vpngw_tests::traffic::wait_ping(&ha.lab, &ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)));

    // A crashes: B takes both addresses; pings both ways measure the interruption.
    let there = GapMeter::start(&ha.lab, &ha.lab.left_host, RIGHT_HOST, "left-to-right");
    let back = GapMeter::start(&ha.lab, &ha.lab.right_host, LEFT_HOST, "right-to-left");
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    ha.crash(Node::A);
    let seen = ha.wait_vips(Node::B, Duration::from_secs(3));
    let takeover = seen.map(|t| t - t0);
    std::thread::sleep(Duration::from_millis(700));
    let (there, back) = (there.finish(&ha.lab), back.finish(&ha.lab));
    println!("crash of A: B holds both addresses after {takeover:?}");
    println!("left to right: {}; right to left: {}", there.summary(), back.summary());
    let takeover = takeover.unwrap_or_else(|| panic!("B never took over:\n{}", ha.keepalived_log(Node::B)));
    assert!(takeover < Duration::from_secs(1), "takeover took {takeover:?}");
    assert!(s.wait_role(Node::B, "MASTER", Duration::from_secs(2)), "B: {:?}", s.roles(Node::B));
    assert_eq!(ha.transitions(Node::B).last().map(String::as_str), Some("MASTER"));
    assert_eq!(ha.vip_holder(), Some(Node::B), "the crashed node's leftover addresses do not count");
    // Traffic resumed through B; the longest gap is the takeover plus the ARP updates.
    for r in [&there, &back] {
        assert!(r.longest_gap < Duration::from_millis(1500), "{}", r.summary());
        assert!(r.received > 50, "{}", r.summary());
    }

    // A comes back: nopreempt keeps it the backup, no second switchover.
    ha.revive(Node::A);
    ha.start_keepalived(Node::A, &s.notify(Node::A), &s.check(Node::A));
    assert!(s.wait_role(Node::A, "BACKUP", Duration::from_secs(3)), "A: {:?}", s.roles(Node::A));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ha.vip_holders(), [Node::B], "the returning node took the role back");

    // B's check fails: after fall (2) x interval (1 s) B goes to FAULT and A takes over.
    let t0 = Instant::now();
    s.set_healthy(Node::B, false);
    let seen = ha.wait_vips(Node::A, Duration::from_secs(4)).map(|t| t - t0);
    println!("failing check on B: A holds both addresses after {seen:?}");
    let seen = seen.unwrap_or_else(|| panic!("A never took over:\n{}", ha.keepalived_log(Node::A)));
    assert!(seen < Duration::from_secs(3), "fall x interval is 2 s: {seen:?}");
    assert!(s.wait_role(Node::B, "FAULT", Duration::from_secs(1)), "B: {:?}", s.roles(Node::B));
    assert!(s.wait_role(Node::A, "MASTER", Duration::from_secs(1)), "A: {:?}", s.roles(Node::A));
    assert!(!ha.holds(Node::B, WAN_VIP) && !ha.holds(Node::B, LAN_VIP));
    // Healthy again (rise 2): B is the backup, A keeps the role.
    s.set_healthy(Node::B, true);
    assert!(s.wait_role(Node::B, "BACKUP", Duration::from_secs(4)), "B: {:?}", s.roles(Node::B));
    assert_eq!(ha.vip_holders(), [Node::A]);

    // Sync cut alone: VRRP does not notice (a separate bridge), nobody moves.
    ha.cut_sync();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ha.vip_holders(), [Node::A]);
    ha.heal_sync();

    // VRRP lost on one link only: the other instance still hears A, and the sync group keeps
    // B's instance on the silent link from taking over alone. Nobody moves.
    for link in ["lan0", "wan0"] {
        ha.cut_vrrp_on(&[link]);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(ha.vip_holders(), [Node::A], "VRRP cut on {link}");
        assert!(!ha.holds(Node::B, LAN_VIP), "VRRP cut on {link}: B took the LAN address alone");
        ha.heal_vrrp();
    }

    // VRRP cut alone: each node thinks the other dead, both hold the addresses (split brain:
    // the daemon's sync link is what can tell them apart).
    let t0 = Instant::now();
    ha.cut_vrrp();
    let both = ha.wait_vips(Node::B, Duration::from_secs(2)).map(|t| t - t0);
    println!("VRRP cut: B holds the addresses too after {both:?}");
    assert!(both.is_some(), "B did not take the addresses: {:?}", s.roles(Node::B));
    assert_eq!(ha.vip_holders(), [Node::A, Node::B]);
    assert!(s.wait_role(Node::B, "MASTER", Duration::from_secs(1)), "B: {:?}", s.roles(Node::B));
    // Healed: the higher priority (A) keeps the role whatever nopreempt says (two masters
    // compare priorities), B steps back.
    ha.heal_vrrp();
    assert!(s.wait_role(Node::B, "BACKUP", Duration::from_secs(2)), "B: {:?}", s.roles(Node::B));
    assert_eq!(ha.vip_holders(), [Node::A]);
    assert!(ha.holds(Node::A, LAN_VIP) && !ha.holds(Node::B, LAN_VIP));
}

#[test]
fn unicast_configuration_fails_over() {
    let ha = HaLab::new("ha-keepalived-unicast");
    let s = StandIn::new(&ha);
    let unicast = KaOptions { unicast: true };
    start_pair(&ha, &s, unicast);

    // A stops gracefully (maintenance): its priority-0 advert hands the role over at once.
    // keepalived takes about a second to exit after it released the role: poll meanwhile.
    let t0 = Instant::now();
    let seen = std::thread::scope(|scope| {
        scope.spawn(|| ha.stop_keepalived(Node::A));
        ha.wait_vips(Node::B, Duration::from_secs(3)).map(|t| t - t0)
    });
    println!("unicast, graceful stop of A: B holds both addresses after {seen:?}");
    assert!(seen.is_some_and(|t| t < Duration::from_millis(500)), "{seen:?}:\n{}", ha.keepalived_log(Node::B));
    assert!(!ha.holds(Node::A, WAN_VIP) && !ha.holds(Node::A, LAN_VIP), "A kept an address after stopping");
    ha.start_keepalived_with(Node::A, &s.notify(Node::A), &s.check(Node::A), unicast);
    assert!(s.wait_role(Node::A, "BACKUP", Duration::from_secs(3)), "A: {:?}", s.roles(Node::A));

    // B crashes: A takes over.
    let t0 = Instant::now();
    ha.crash(Node::B);
    let seen = ha.wait_vips(Node::A, Duration::from_secs(3)).map(|t| t - t0);
    println!("unicast, crash of B: A holds both addresses after {seen:?}");
    assert!(seen.is_some_and(|t| t < Duration::from_secs(1)), "{seen:?}:\n{}", ha.keepalived_log(Node::A));
    assert!(s.wait_role(Node::A, "MASTER", Duration::from_secs(2)), "A: {:?}", s.roles(Node::A));
}
