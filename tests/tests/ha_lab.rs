//! The hot-backup lab with the real pieces, before hot backup exists: vpngw (no HA settings) on
//! both nodes with the public virtual address as `public_address`, keepalived moving the
//! addresses (stand-ins for `ha notify` and `ha check`), and strongSwan on R as the peer that
//! knows only the virtual address. The tunnel forms through the active node and carries traffic
//! both ways; the standby's vpngw starts although it does not hold the address
//! (`ip_nonlocal_bind`); a crash kills the registered vpngw with keepalived.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use vpngw_tests::ha::{HaLab, Node, R_WAN, WAN_VIP};
use vpngw_tests::netns::{LEFT_NET, RIGHT_NET};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";

#[test]
fn tunnel_through_the_active_node() {
    let ha = HaLab::new("ha-lab");
    let healthy = ha.lab.dir.join("healthy");
    std::fs::write(&healthy, "").unwrap();
    let check = format!("test -f {}", healthy.display());
    ha.start_keepalived(Node::A, "true", &check);
    assert!(ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(), "{}", ha.keepalived_log(Node::A));
    ha.start_keepalived(Node::B, "true", &check);

    let conn = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{R_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"passive\"\n\
         [connection.ike]\nencryption = \"aes-256\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-256\"\nauthentication = \"sha1\"\npfs = \"dh14\"\n"
    );
    let gateways: Vec<Vpngw> = Node::BOTH
        .into_iter()
        .map(|node| {
            let name = format!("gw-{}", node.letter());
            let config = config_text(WAN_VIP, &Vpngw::socket_for(&ha.lab, &name), true, &conn);
            let v = Vpngw::start(&ha.lab, ha.ns(node), &name, &config, &[]);
            ha.register_vpngw(node, v.pid);
            v
        })
        .collect();

    let charon = Charon::start_with(&ha.lab, &ha.r, true);
    let sw = SwConn::lab_right(ike_words("aes-256", "sha1", "dh14"), esp_words("aes-256", "sha1", "dh14"), PSK);
    assert_eq!(sw.remote_addr, WAN_VIP, "R's peer is the public virtual address");
    charon.load(&sw);
    charon.initiate(10);
    gateways[0].wait_up("to-right", Duration::from_secs(15)).unwrap_or_else(|| panic!("{}", gateways[0].log_text()));
    assert!(wait_ping(&ha.lab, &ha.lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "left -> right");
    assert_eq!(ping(&ha.lab, &ha.lab.right_host, LEFT_HOST, 5), 5, "right -> left");
    assert_eq!(gateways[1].connection("to-right").unwrap()["state"], "down", "the standby negotiated nothing");

    ha.crash(Node::A);
    assert!(ha.wait_vips(Node::B, Duration::from_secs(2)).is_some(), "{}", ha.keepalived_log(Node::B));
    assert!(gateways[0].status().is_none(), "A's vpngw survived the crash");
    assert!(gateways[1].status().is_some(), "B's vpngw died with A");
}
