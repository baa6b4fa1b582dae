//! Hot backup with a vpngw as the customer's gateway (tests/tests/ha.rs has strongSwan): the
//! peer on R initiates to the public virtual address; after a crash of the active node its IKE
//! SA (cookies) and child SA SPIs are the ones from before, traffic resumes within a second, and
//! a rekey started by each side runs on the synced IKE SA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::Value;
use vpngw_tests::ha::{GapMeter, HaLab, Node, R_WAN, WAN_VIP};
use vpngw_tests::ha_pair::{ha_section, start_vpngw_and_keepalived};
use vpngw_tests::netns::{LEFT_NET, RIGHT_NET, wait_for};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-vpngw-peer-0123456789";
const SUITE: &str = "[connection.ike]\nencryption = \"aes-256\"\nauthentication = \"sha1\"\ndh_group = \"dh2\"\n\
                     [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\npfs = \"dh2\"\n";

fn start_node(ha: &HaLab, node: Node) -> Vpngw {
    let name = format!("gw-{}", node.letter());
    let connection = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{R_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"passive\"\n{SUITE}"
    );
    let config = config_text(WAN_VIP, &Vpngw::socket_for(&ha.lab, &name), true, &connection) + &ha_section(ha, node);
    start_vpngw_and_keepalived(ha, node, &name, &config)
}

/// The peer's IKE SA cookies and child SA SPIs, as its status shows them.
fn peer_sas(peer: &Vpngw) -> (Value, Vec<(String, String)>) {
    let c = peer.connection("to-left").unwrap();
    let ike = &c["ike_sa"];
    let mut spis: Vec<(String, String)> = c["child_sas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| (ch["spi_in"].as_str().unwrap().to_string(), ch["spi_out"].as_str().unwrap().to_string()))
        .collect();
    spis.sort();
    (serde_json::json!([ike["initiator_cookie"], ike["responder_cookie"]]), spis)
}

#[test]
fn a_vpngw_peer_keeps_its_ike_sa_and_spis_through_a_takeover() {
    let ha = HaLab::new("ha-vpngw-peer");
    let a = start_node(&ha, Node::A);
    assert!(ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(), "{}", ha.keepalived_log(Node::A));
    let b = start_node(&ha, Node::B);
    let peer_conn = format!(
        "[[connection]]\nname = \"to-left\"\nremote_address = \"{WAN_VIP}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{RIGHT_NET}\"]\nremote_subnets = [\"{LEFT_NET}\"]\nstart = \"active\"\n{SUITE}\
         [connection.dpd]\ntimeout_seconds = 30\n"
    );
    let peer_cfg = config_text(R_WAN, &Vpngw::socket_for(&ha.lab, "peer"), true, &peer_conn);
    let peer = Vpngw::start(&ha.lab, &ha.r, "peer", &peer_cfg, &[]);
    peer.wait_up("to-left", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}\n{}", peer.log_text(), a.log_text()));
    assert!(wait_ping(&ha.lab, &ha.lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "{}", a.log_text());
    wait_for(Duration::from_secs(15), || {
        let s = b.status()?;
        (s["ha"]["role"] == "standby" && s["ha"]["in_sync"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("B never in sync: {:?}\n{}", b.status().map(|s| s["ha"].clone()), b.log_text()));
    let before = peer_sas(&peer);

    // Garbage at the standby's sync port (B listens: "node-a" sorts first and dials): refused and
    // counted; the standby stays in sync with the active.
    let failures = |v: &Vpngw| v.status().unwrap()["ha"]["auth_failures"].as_u64().unwrap();
    let before_failures = failures(&b);
    let garbage = "import socket; s = socket.create_connection(('192.0.2.2', 9722)); \
                   s.sendall(b'\\x00\\x30' + bytes(range(48))); s.close()";
    let out = ha.lab.exec(ha.ns(Node::A), "python3", &["-c", garbage]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(5), || (failures(&b) == before_failures + 1).then_some(()))
        .unwrap_or_else(|| panic!("garbage not counted: {}", b.status().unwrap()["ha"]));
    let s = b.status().unwrap();
    assert_eq!((&s["ha"]["role"], &s["ha"]["in_sync"]), (&Value::from("standby"), &Value::from(true)), "{}", s["ha"]);

    let gaps = [
        GapMeter::start(&ha.lab, &ha.lab.left_host, RIGHT_HOST, "lr"),
        GapMeter::start(&ha.lab, &ha.lab.right_host, LEFT_HOST, "rl"),
    ];
    std::thread::sleep(Duration::from_millis(300));
    ha.crash(Node::A);
    assert!(ha.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "{}", ha.keepalived_log(Node::B));
    assert!(wait_ping(&ha.lab, &ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)), "{}", b.log_text());
    std::thread::sleep(Duration::from_millis(500));
    for gap in gaps {
        let report = gap.finish(&ha.lab);
        eprintln!("takeover, vpngw peer: {}", report.summary());
        assert!(report.longest_gap <= Duration::from_secs(1), "{}\n{}", report.summary(), b.log_text());
    }
    assert_eq!(peer_sas(&peer), before, "the peer's IKE SA or child SAs changed");
    assert_eq!(b.status().unwrap()["ha"]["last_takeover"]["ike_sas"], 1);

    // Rekeys on the synced IKE SA: the new active's, then the peer's.
    for (who, v) in [("B", &b), ("peer", &peer)] {
        let name = if who == "B" { "to-right" } else { "to-left" };
        let old = peer_sas(&peer).1;
        let out = v.cli(&["rekey", name]);
        assert!(out.status.success(), "{who}: {}", String::from_utf8_lossy(&out.stderr));
        wait_for(Duration::from_secs(20), || {
            let (_, spis) = peer_sas(&peer);
            (spis.len() == 1 && spis != old).then_some(())
        })
        .unwrap_or_else(|| panic!("{who}'s rekey: {:?}\n{}\n{}", peer_sas(&peer), b.log_text(), peer.log_text()));
        assert!(wait_ping(&ha.lab, &ha.lab.left_host, RIGHT_HOST, Duration::from_secs(5)), "after {who}'s rekey");
        assert_eq!(peer_sas(&peer).0, before.0, "{who}'s rekey ran on the same IKE SA");
    }
    for log in [b.log_text(), peer.log_text()] {
        assert!(!log.contains("negotiation failed"), "{log}");
    }
    assert_eq!(b.log_text().matches("IKE SA established").count(), 0, "B negotiated anew: {}", b.log_text());
}
