//! Dual-server hot backup against strongSwan 5.9.8: two vpngw (A, B) share the public and LAN
//! virtual addresses, keepalived (VRRPv3, 100 ms adverts, the deploy/ha samples) elects the
//! active one and calls `vpngw ha notify` / `vpngw ha check`, and the sync channel keeps the
//! standby's replica. A crash of the active (kill -9 and its links down) and a graceful
//! handover move the tunnel to the other server with no renegotiation: strongSwan keeps its
//! IKE SA (cookies) and child SAs, pings every 10 ms see a gap of at most a second, and DPD and
//! rekeys started by either side go on on the synced IKE SA.
//!
//! `make test` runs one crash and one handover; `make ha` runs `HA_CRASHES` crashes (20).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use vpngw_tests::ha::{GapMeter, HaLab, Node, R_WAN, WAN_VIP};
use vpngw_tests::netns::{LEFT_NET, RIGHT_NET, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, SwSas, SwTimers, esp_words, ike_words};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, binary, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";
const SYNC_KEY: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

struct Pair {
    ha: HaLab,
    nodes: [Option<Vpngw>; 2],
    charon: Charon,
}

fn sync_address(node: Node) -> &'static str {
    match node {
        Node::A => "192.0.2.1:9722",
        Node::B => "192.0.2.2:9722",
    }
}

fn config(ha: &HaLab, node: Node, name: &str) -> String {
    let connection = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{R_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"passive\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n"
    );
    let key = ha.lab.dir.join(format!("sync-{}.key", node.letter()));
    std::fs::write(&key, SYNC_KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let partner = node.other();
    format!(
        "{}\n[ha]\nnode_name = \"node-{}\"\npartner_name = \"node-{}\"\nlisten = \"{}\"\npartner = \"{}\"\n\
         key_file = \"{}\"\ntrack_file = \"{}\"\n",
        config_text(WAN_VIP, &Vpngw::socket_for(&ha.lab, name), true, &connection),
        node.letter(),
        partner.letter(),
        sync_address(node),
        sync_address(partner),
        key.display(),
        ha.track_file(node).display()
    )
}

impl Pair {
    /// A and B running vpngw and keepalived, A active; strongSwan on R with DPD every 2 s.
    fn start(name: &str) -> Self {
        let ha = HaLab::new(name);
        let mut nodes = [None, None];
        for node in Node::BOTH {
            nodes[slot(node)] = Some(Self::start_node(&ha, node, 1));
            if node == Node::A {
                assert!(ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(), "{}", ha.keepalived_log(Node::A));
            }
        }
        let charon = Charon::start_with(&ha.lab, &ha.r, true);
        let timers = SwTimers { dpd_delay: "2s".into(), dpd_timeout: "20s".into(), ..SwTimers::default() };
        let sw = SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "disable"), PSK);
        charon.load_with(&sw, &timers);
        Self { ha, nodes, charon }
    }

    fn start_node(ha: &HaLab, node: Node, generation: u32) -> Vpngw {
        let name = format!("gw-{}{generation}", node.letter());
        let v = Vpngw::start(&ha.lab, ha.ns(node), &name, &config(ha, node, &name), &[]);
        ha.register_vpngw(node, v.pid);
        let (bin, socket) = (binary().display().to_string(), v.socket.display().to_string());
        ha.start_keepalived(
            node,
            &format!("{bin} ha notify --socket {socket}"),
            &format!("{bin} ha check --socket {socket}"),
        );
        v
    }

    fn node(&self, node: Node) -> &Vpngw {
        self.nodes[slot(node)].as_ref().unwrap()
    }

    fn ha_status(&self, node: Node) -> Value {
        self.node(node).status().map(|s| s["ha"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until `node` is active and its partner a standby in sync.
    fn wait_in_sync(&self, active: Node) {
        wait_for(Duration::from_secs(15), || {
            let a = self.ha_status(active);
            let s = self.ha_status(active.other());
            (a["role"] == "active" && s["role"] == "standby" && s["in_sync"] == true && a["in_sync"] == true)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "not in sync:\n{}\n{}\n{}\n{}",
                self.ha_status(active),
                self.ha_status(active.other()),
                self.node(active).log_text(),
                self.node(active.other()).log_text()
            )
        });
    }
}

fn slot(node: Node) -> usize {
    match node {
        Node::A => 0,
        Node::B => 1,
    }
}

fn sw_child_spis(sas: &SwSas) -> Vec<(String, String)> {
    let mut spis: Vec<(String, String)> = sas.children.iter().map(|c| (c.spi_in.clone(), c.spi_out.clone())).collect();
    spis.sort();
    spis
}

/// A takeover by `to`: strongSwan keeps its IKE SA and child SAs, the gap stays under a
/// second, DPD is answered, and a rekey by each side succeeds on the synced IKE SA.
fn check_takeover(p: &Pair, to: Node, before: &SwSas, gaps: [GapMeter; 2], log_mark: usize) {
    let took = p.ha_status(to);
    assert_eq!(took["role"], "active", "{took}\n{}", p.node(to).log_text());
    let last = &took["last_takeover"];
    assert_eq!((last["ike_sas"].as_u64(), last["refused"].as_array().map(Vec::len)), (Some(1), Some(0)), "{took}");
    assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)), "{}", p.node(to).log_text());
    std::thread::sleep(Duration::from_millis(500));
    for (gap, dir) in gaps.into_iter().zip(["left->right", "right->left"]) {
        let report = gap.finish(&p.ha.lab);
        eprintln!("takeover by {to:?}, {dir}: {}", report.summary());
        assert!(report.longest_gap <= Duration::from_secs(1), "{dir}: {}\n{}", report.summary(), p.node(to).log_text());
    }
    // strongSwan's DPD probes reach the new active and are answered; nothing was renegotiated.
    let sw_log = wait_for(Duration::from_secs(15), || {
        let l = p.charon.log()[log_mark..].to_string();
        (l.matches("N(DPD_ACK)").count() >= 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("DPD unanswered:\n{}\n{}", &p.charon.log()[log_mark..], p.node(to).log_text()));
    assert!(!sw_log.contains("deleting IKE_SA"), "{sw_log}");
    let after = p.charon.list_sas();
    assert_eq!(after.ike_sas, before.ike_sas, "strongSwan has another IKE SA");
    assert_eq!(sw_child_spis(&after), sw_child_spis(before), "strongSwan's child SAs changed");
    let log = p.node(to).log_text();
    assert!(!log.contains("IKE SA established") && !log.contains("negotiation failed"), "{log}");
}

/// Rekeys by vpngw then by strongSwan on the current IKE SA; returns strongSwan's SAs after.
fn rekey_both_ways(p: &Pair, on: Node) -> SwSas {
    let ike_before = p.charon.list_sas().ike_sas;
    let old = sw_child_spis(&p.charon.list_sas());
    let out = p.node(on).cli(&["rekey", "to-right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mid = wait_for(Duration::from_secs(30), || {
        let spis = sw_child_spis(&p.charon.list_sas());
        (spis.len() == 1 && spis != old).then_some(spis)
    })
    .unwrap_or_else(|| panic!("vpngw's rekey: {:?}\n{}", p.charon.list_sas(), p.node(on).log_text()));
    assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
    p.charon.rekey_child();
    wait_for(Duration::from_secs(30), || {
        let spis = sw_child_spis(&p.charon.list_sas());
        (spis.len() == 1 && spis != mid).then_some(())
    })
    .unwrap_or_else(|| panic!("strongSwan's rekey: {:?}\n{}", p.charon.list_sas(), p.node(on).log_text()));
    assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
    let after = p.charon.list_sas();
    assert_eq!(after.ike_sas, ike_before, "the rekeys ran on the same IKE SA");
    after
}

fn gap_meters(p: &Pair, tag: &str) -> [GapMeter; 2] {
    [
        GapMeter::start(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, &format!("{tag}-lr")),
        GapMeter::start(&p.ha.lab, &p.ha.lab.right_host, LEFT_HOST, &format!("{tag}-rl")),
    ]
}

#[test]
fn the_standby_takes_over_a_crashed_active_and_a_handover_without_renegotiation() {
    let mut p = Pair::start("ha-takeover");
    p.charon.initiate(10);
    p.node(Node::A)
        .wait_up("to-right", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{}", p.node(Node::A).log_text()));
    assert!(wait_ping(&p.ha.lab, &p.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
    p.wait_in_sync(Node::A);
    let standby = p.node(Node::B).connection("to-right").unwrap();
    assert_eq!(standby["state"], "down", "the standby negotiates nothing: {standby}");
    let before = p.charon.list_sas();
    assert_eq!((before.ike_sas.len(), before.children.len()), (1, 1), "{before:?}");

    // 1. A crashes (kill -9 of vpngw and keepalived, its links down).
    let gaps = gap_meters(&p, "crash");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    p.ha.crash(Node::A);
    assert!(p.ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::B));
    check_takeover(&p, Node::B, &before, gaps, log_mark);
    let after_rekeys = rekey_both_ways(&p, Node::B);

    // 2. A comes back as the standby and bulk-syncs; then a graceful handover moves the tunnel
    // back to it.
    p.ha.revive(Node::A);
    p.nodes[0] = Some(Pair::start_node(&p.ha, Node::A, 2));
    p.wait_in_sync(Node::B);
    assert_eq!(p.ha.vip_holder(), Some(Node::B), "nopreempt: the returning node stays the backup");
    let gaps = gap_meters(&p, "handover");
    std::thread::sleep(Duration::from_millis(300));
    let log_mark = p.charon.log().len();
    let out = p.node(Node::B).cli(&["ha", "handover"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), p.node(Node::B).log_text());
    assert!(p.ha.wait_vips(Node::A, Duration::from_secs(3)).is_some(), "{}", p.ha.keepalived_log(Node::A));
    check_takeover(&p, Node::A, &after_rekeys, gaps, log_mark);
    rekey_both_ways(&p, Node::A);
    // B stays up as the standby, ready again: its track file lets keepalived out of FAULT.
    let track = p.ha.track_file(Node::B);
    wait_for(Duration::from_secs(5), || {
        (std::fs::read_to_string(&track).ok()?.trim() == "0" && p.ha.transitions(Node::B).last()? == "BACKUP")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!("B not back to BACKUP: {:?}\n{}", p.ha.transitions(Node::B), p.ha.keepalived_log(Node::B))
    });
    p.wait_in_sync(Node::A);
}
