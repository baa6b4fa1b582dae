//! Traffic through tunnels, end to end, between the lab's hosts (10.1.0.10 <-> 10.2.0.10):
//! pings both ways, a TCP transfer whose SHA-256 must match at both ends, and numbered UDP
//! datagrams that must all arrive; through vpngw <-> strongSwan 5.9.8 (ESP in UDP: strongSwan's
//! userspace ESP forces NAT-T) and vpngw <-> vpngw (raw ESP, IP protocol 50), with the seed's
//! default suite and with aes-256/sha1/dh14 + PFS dh14, each side initiating.
//!
//! A capture of the outer link must hold no inner packet and no plaintext marker, and
//! `tcpdump -E`, fed the keys vpngw logged (`--esp-keylog`), must decrypt vpngw's ESP: an
//! independent check of our packets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{Capture, LEFT_HOST, MARKER, RIGHT_HOST, ping, tcp_transfer, udp_transfer, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";

#[derive(Clone, Copy, Debug)]
struct Suite {
    ike: (&'static str, &'static str, &'static str),
    esp: (&'static str, &'static str, &'static str),
}

const SEED_DEFAULT: Suite = Suite { ike: ("3des", "md5", "dh1"), esp: ("3des", "md5", "disable") };
const STRONG: Suite = Suite { ike: ("aes-256", "sha1", "dh14"), esp: ("aes-256", "sha1", "dh14") };

fn connection(name: &str, remote: &str, local_net: &str, remote_net: &str, suite: Suite, active: bool) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\nlocal_subnets = [\"{local_net}\"]\n\
         remote_subnets = [\"{remote_net}\"]\nstart = \"{}\"\n[connection.ike]\nencryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\n\
         [connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\npfs = \"{}\"\n",
        if active { "active" } else { "passive" },
        suite.ike.0,
        suite.ike.1,
        suite.ike.2,
        suite.esp.0,
        suite.esp.1,
        suite.esp.2,
    )
}

/// Pings, TCP and UDP through the tunnel while the left gateway's outer link is captured; then
/// the capture is checked and decrypted with `keys`.
fn traffic_and_capture(lab: &Lab, name: &str, keys: &Path, udp_encapsulated: bool) {
    assert!(wait_ping(lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(15)), "{name}: tunnel never carried a ping");
    let cap = Capture::start(lab, &lab.left, "wan0", name);
    assert_eq!(ping(lab, &lab.left_host, RIGHT_HOST, 5), 5, "{name}: pings left -> right");
    assert_eq!(ping(lab, &lab.right_host, LEFT_HOST, 5), 5, "{name}: pings right -> left");
    let (sent, received) = tcp_transfer(lab, 3_000_000);
    assert_eq!(sent["bytes"], 3_000_000, "{name}: {sent}");
    assert_eq!(received["bytes"], sent["bytes"], "{name}: TCP bytes: sent {sent}, received {received}");
    assert_eq!(received["sha256"], sent["sha256"], "{name}: TCP content differs");
    assert_eq!(udp_transfer(lab, 200), 200, "{name}: UDP datagrams lost");
    cap.stop(lab);

    // Nothing in clear on the wire.
    assert_eq!(cap.count("ip and net 10.0.0.0/8"), 0, "{name}: inner packets on the outer link");
    assert!(!cap.contains(MARKER), "{name}: plaintext marker on the outer link");
    // The TCP transfer alone puts 3 MB of ESP on the wire (packets are not counted: UDP GSO
    // shows tcpdump one super-packet for a whole batch).
    let filter = if udp_encapsulated { "udp port 4500 and greater 100" } else { "esp" };
    let (esp_packets, esp_bytes) = (cap.count(filter), cap.bytes(filter));
    eprintln!("{name}: {esp_packets} ESP packets, {esp_bytes} bytes; tcpdump: {}", cap.report());
    assert!(
        esp_bytes > 3_000_000,
        "{name}: only {esp_bytes} bytes of ESP captured ({esp_packets} packets); tcpdump: {}",
        cap.report()
    );
    if !udp_encapsulated {
        assert_eq!(cap.count("udp port 4500"), 0, "{name}: ESP in UDP where raw ESP was expected");
    }

    // An independent implementation decrypts our packets with the keys vpngw derived.
    let text = cap.decrypt(keys);
    let requests =
        text.lines().filter(|l| l.contains(&format!("{LEFT_HOST} > {RIGHT_HOST}: ICMP echo request"))).count();
    let replies = text.lines().filter(|l| l.contains(&format!("{RIGHT_HOST} > {LEFT_HOST}: ICMP echo reply"))).count();
    assert!(
        requests >= 5 && replies >= 5,
        "{name}: tcpdump -E decrypted {requests} requests and {replies} replies:\n{}",
        text.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        text.contains(&format!("{LEFT_HOST}.")) && text.contains(&format!("{RIGHT_HOST}.5001")),
        "{name}: TCP not decrypted"
    );
}

fn counters_moved(v: &Vpngw, name: &str) {
    let conn = v.connection(name).unwrap();
    let child = &conn["child_sas"][0];
    assert!(
        child["packets_out"].as_u64().unwrap_or(0) > 100 && child["packets_in"].as_u64().unwrap_or(0) > 100,
        "counters did not move: {child}"
    );
}

#[test]
fn vpngw_and_strongswan() {
    let lab = Lab::gateways("e2e-sw");
    let charon = Charon::start_with(&lab, &lab.right, true);
    let mut n = 0;
    for suite in [SEED_DEFAULT, STRONG] {
        for vpngw_initiates in [true, false] {
            n += 1;
            let name = format!("sw{n}");
            charon.load(&SwConn {
                aggressive: false,
                local_addr: RIGHT_WAN.into(),
                remote_addr: LEFT_WAN.into(),
                local_id: RIGHT_WAN.into(),
                remote_id: LEFT_WAN.into(),
                ike: ike_words(suite.ike.0, suite.ike.1, suite.ike.2),
                esp: esp_words(suite.esp.0, suite.esp.1, suite.esp.2),
                local_ts: vec![RIGHT_NET.into()],
                remote_ts: vec![LEFT_NET.into()],
                psk: PSK.into(),
            });
            let keys = lab.dir.join(format!("{name}.keys"));
            let socket = Vpngw::socket_for(&lab, &name);
            let config = config_text(
                LEFT_WAN,
                &socket,
                true,
                &connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, suite, vpngw_initiates),
            );
            let v = Vpngw::start(&lab, &lab.left, &name, &config, &["--esp-keylog", &keys.display().to_string()]);
            if !vpngw_initiates {
                charon.initiate(10);
            }
            v.wait_up("to-right", Duration::from_secs(15))
                .unwrap_or_else(|| panic!("{name} {suite:?}: not up\n{}", v.log_text()));
            traffic_and_capture(&lab, &name, &keys, true);
            counters_moved(&v, "to-right");
            assert_eq!(v.stop(&lab), Some(0));
            assert!(
                wait_for(Duration::from_secs(5), || (charon.list_sas().ike_established == 0).then_some(())).is_some()
            );
        }
    }
}

#[test]
fn vpngw_and_vpngw_over_raw_esp() {
    let lab = Lab::gateways("e2e-vg");
    // The link path pauses for half a second whenever the kernel's neighbour entry for the peer
    // goes stale (15-45 s after its last confirmation), so that the kernel verifies it again.
    // Here entries stay reachable for minutes: the shares asserted below do not depend on where
    // such a pause falls. (The pause itself: unit tests in link_paths.rs; an entry that is gone
    // altogether: link_path_follows_the_neighbour_table.)
    for ns in [&lab.left, &lab.right] {
        let set = lab.exec(ns, "sysctl", &["-qw", "net.ipv4.neigh.wan0.base_reachable_time_ms=600000"]);
        assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    }
    let mut n = 0;
    for suite in [SEED_DEFAULT, STRONG] {
        for left_initiates in [true, false] {
            n += 1;
            let name = format!("vg{n}");
            let keys = lab.dir.join(format!("{name}.keys"));
            let right_cfg = config_text(
                RIGHT_WAN,
                &Vpngw::socket_for(&lab, &format!("{name}-r")),
                true,
                &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, suite, !left_initiates),
            );
            let left_cfg = config_text(
                LEFT_WAN,
                &Vpngw::socket_for(&lab, &format!("{name}-l")),
                true,
                &connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, suite, left_initiates),
            );
            // The last run sends raw ESP through the raw IP socket (`esp_output = "ip"`), the
            // others through the link path (the default).
            let link = n < 4;
            let (right_cfg, left_cfg) = if link {
                (right_cfg, left_cfg)
            } else {
                let ip = |c: String| c.replacen("[gateway]\n", "[gateway]\nesp_output = \"ip\"\n", 1);
                (ip(right_cfg), ip(left_cfg))
            };
            let right = Vpngw::start(&lab, &lab.right, &format!("{name}-r"), &right_cfg, &[]);
            let left = Vpngw::start(
                &lab,
                &lab.left,
                &format!("{name}-l"),
                &left_cfg,
                &["--esp-keylog", &keys.display().to_string()],
            );
            let (initiator, conn) = if left_initiates { (&left, "to-right") } else { (&right, "to-left") };
            initiator
                .wait_up(conn, Duration::from_secs(15))
                .unwrap_or_else(|| panic!("{name}: not up\n{}\n{}", left.log_text(), right.log_text()));
            let status = left.wait_up("to-right", Duration::from_secs(15)).expect("left up");
            assert_eq!(status["child_sas"][0]["encapsulation"], "esp", "no NAT between the gateways: raw ESP");
            if link {
                // The daemons publish the link path within a refresh or two of the SA (0.5 s
                // each; a stale neighbour entry from the previous run waits one out): the
                // traffic below is then meant to take it.
                for v in [&left, &right] {
                    let published = wait_for(Duration::from_secs(5), || {
                        (v.status().unwrap()["link_paths"].as_array().map(Vec::len) == Some(1)).then_some(())
                    });
                    assert!(published.is_some(), "{name}: no link path published:\n{}", v.log_text());
                }
            }
            traffic_and_capture(&lab, &name, &keys, false);
            counters_moved(&left, "to-right");
            counters_moved(&right, "to-left");
            for (v, peer) in [(&left, RIGHT_WAN), (&right, LEFT_WAN)] {
                let status = v.status().unwrap();
                let workers = status["workers"].as_array().unwrap();
                let out: u64 = workers.iter().map(|w| w["packets_out"].as_u64().unwrap_or(0)).sum();
                let via_link: u64 = workers.iter().map(|w| w["packets_out_link"].as_u64().unwrap_or(0)).sum();
                let paths = status["link_paths"].as_array().unwrap();
                if link {
                    // The kernel's neighbour entry for the peer is re-verified through the IP
                    // socket for a moment when it goes stale: most packets, not all, take the
                    // link path. The capture above decrypted them: their headers are right.
                    assert!(via_link * 2 > out, "{name}: {via_link} of {out} packets through the link path");
                    assert_eq!(paths.len(), 1, "{name}: {paths:?}");
                    assert_eq!(paths[0]["peer"], peer);
                    assert_eq!(paths[0]["device"], "wan0");
                } else {
                    assert_eq!(via_link, 0, "{name}: esp_output = \"ip\" but {via_link} packets through the link path");
                    assert!(paths.is_empty(), "{name}: {paths:?}");
                }
            }
            if n == 1 {
                path_mtu_discovery(&lab);
                link_path_follows_the_neighbour_table(&lab, &left);
                link_path_follows_a_route_change(&lab, &left);
            }
            // No replay drops from our own reordering, no ICV failures, and no IPv6 from the
            // kernel into the TUN (IPv6 is off before the link comes up).
            for v in [&left, &right] {
                // Every worker pinned, to a core of its own.
                let workers = v.status().unwrap()["workers"].as_array().unwrap().clone();
                let cores: std::collections::BTreeSet<u64> =
                    workers.iter().filter_map(|w| w["core"].as_u64()).collect();
                assert_eq!(cores.len(), workers.len(), "{name}: worker placement: {workers:?}");
                let dropped = &v.status().unwrap()["dropped"];
                for bad in ["esp_replay", "esp_too_old", "esp_icv", "esp_not_ipv4"] {
                    assert!(dropped[bad].is_null(), "{name}: {bad} drops: {dropped}");
                }
            }
            assert_eq!(left.stop(&lab), Some(0));
            assert_eq!(right.stop(&lab), Some(0));
        }
    }
}

/// The link path rests on the kernel's neighbour entry for the peer: with the entry gone
/// (`ip neigh flush`), raw ESP falls back to the raw IP socket, whose packets make the kernel
/// resolve the peer again, and then the link path returns; no ping is lost on the way.
fn link_path_follows_the_neighbour_table(lab: &Lab, left: &Vpngw) {
    let through_ip_socket = |v: &Vpngw| -> u64 {
        let status = v.status().unwrap();
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["packets_out"].as_u64().unwrap_or(0) - w["packets_out_link"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = through_ip_socket(left);
    let flush = lab.exec(&lab.left, "ip", &["neigh", "flush", "dev", "wan0"]);
    assert!(flush.status.success(), "{}", String::from_utf8_lossy(&flush.stderr));
    // 3 s of pings, 10 a second: across the refresh that finds no entry and the one after the
    // kernel resolved it again.
    let out = lab.exec(&lab.left_host, "ping", &["-c", "30", "-i", "0.1", "-W", "1", RIGHT_HOST]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "pings lost while the neighbour entry was rebuilt:\n{text}");
    assert!(
        through_ip_socket(left) > before,
        "no packet took the raw IP socket while the kernel had no neighbour entry"
    );
    let back = wait_for(Duration::from_secs(5), || {
        let status = left.status().unwrap();
        (status["link_paths"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
    assert!(back.is_some(), "the link path did not return:\n{}", left.log_text());
}

/// The link path follows the kernel's routing as it changes: a more specific route sends the
/// peer through a second link (wan1), then its removal brings it back to wan0, each within a
/// second or two, without a ping lost. The daemon learns of the changes from the kernel's
/// announcements; without them, it would look the route up again only after 30 s.
fn link_path_follows_a_route_change(lab: &Lab, left: &Vpngw) {
    let path = |v: &Vpngw| -> Option<String> {
        let status = v.status().unwrap();
        let paths = status["link_paths"].as_array()?.clone();
        paths.first().and_then(|p| p["device"].as_str()).map(str::to_string)
    };
    let run = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let rx_packets = |dev: &str| -> u64 {
        let out = lab.exec(&lab.right, "cat", &[&format!("/sys/class/net/{dev}/statistics/rx_packets")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    assert_eq!(path(left).as_deref(), Some("wan0"));
    // A second link between the gateways. The right one takes ESP for its wan0 address on wan1
    // too (the kernel's weak host model) as long as reverse-path filtering lets it in.
    run(std::process::Command::new("ip")
        .args(["link", "add", "wan1", "netns", &lab.left, "type", "veth", "peer", "name", "wan1", "netns", &lab.right])
        .output()
        .unwrap());
    for (ns, addr) in [(&lab.left, "203.0.113.1/30"), (&lab.right, "203.0.113.2/30")] {
        lab.ip(ns, &["addr", "add", addr, "dev", "wan1"]);
        lab.ip(ns, &["link", "set", "wan1", "up"]);
    }
    run(lab.exec(&lab.right, "sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.wan1.rp_filter=0"]));
    let pings = |what: &str| {
        let out = lab.exec(&lab.left_host, "ping", &["-c", "20", "-i", "0.1", "-W", "1", RIGHT_HOST]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(" 0% packet loss"), "pings lost {what}:\n{text}");
    };
    let moved_within = |device: &str| {
        // The kernel resolves the new next hop from the IP socket's packets first: pings
        // keep it busy while we wait.
        wait_for(Duration::from_secs(3), || {
            let _ = lab.exec(&lab.left_host, "ping", &["-c", "1", "-W", "1", RIGHT_HOST]);
            (path(left).as_deref() == Some(device)).then_some(())
        })
        .is_some()
    };
    lab.ip(&lab.left, &["route", "add", &format!("{RIGHT_WAN}/32"), "via", "203.0.113.2", "dev", "wan1"]);
    assert!(moved_within("wan1"), "the link path did not follow the new route:\n{}", left.log_text());
    let before = rx_packets("wan1");
    pings("after the route change");
    assert!(rx_packets("wan1") >= before + 20, "the ESP did not cross wan1 ({} packets)", rx_packets("wan1") - before);
    lab.ip(&lab.left, &["route", "del", &format!("{RIGHT_WAN}/32")]);
    assert!(moved_within("wan0"), "the link path did not return with the route:\n{}", left.log_text());
    let before = rx_packets("wan1");
    pings("after the route's removal");
    assert!(rx_packets("wan1") < before + 5, "ESP still crosses wan1 after the route's removal");
    lab.ip(&lab.left, &["link", "del", "wan1"]);
}

/// A packet too big for the tunnel with DF set is answered with ICMP "fragmentation needed"
/// (the TUN's MTU is 1400), and packets that fit cross with DF set.
fn path_mtu_discovery(lab: &Lab) {
    let big =
        lab.exec(&lab.left_host, "ping", &["-M", "do", "-s", "1472", "-c", "2", "-i", "0.3", "-W", "1", RIGHT_HOST]);
    let text = format!("{}{}", String::from_utf8_lossy(&big.stdout), String::from_utf8_lossy(&big.stderr));
    assert!(text.contains("mtu = 1400") || text.contains("mtu=1400"), "no fragmentation-needed answer:\n{text}");
    let fits =
        lab.exec(&lab.left_host, "ping", &["-M", "do", "-s", "1372", "-c", "2", "-i", "0.3", "-W", "2", RIGHT_HOST]);
    assert!(
        String::from_utf8_lossy(&fits.stdout).contains(" 0% packet loss"),
        "{}",
        String::from_utf8_lossy(&fits.stdout)
    );
}

/// Hostile input at a running gateway: garbage on UDP 4500 and on the raw ESP socket, unknown
/// SPIs, forged ICVs, truncated packets and a replayed packet are dropped and counted by
/// reason; the tunnel keeps working and the daemon does not crash.
#[test]
fn hostile_esp_is_dropped_and_counted() {
    let lab = Lab::gateways("e2e-bad");
    let right_cfg = config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(&lab, "bad-r"),
        true,
        &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, STRONG, false),
    );
    let left_cfg = config_text(
        LEFT_WAN,
        &Vpngw::socket_for(&lab, "bad-l"),
        true,
        &connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, STRONG, true),
    );
    let _right = Vpngw::start(&lab, &lab.right, "bad-r", &right_cfg, &[]);
    let left = Vpngw::start(&lab, &lab.left, "bad-l", &left_cfg, &[]);
    let status = left.wait_up("to-right", Duration::from_secs(15)).expect("up");
    let spi_in = status["child_sas"][0]["spi_in"].as_str().unwrap().to_string();
    // One real ESP packet towards the left gateway, captured to be replayed later.
    let cap = Capture::start(&lab, &lab.left, "wan0", "bad");
    assert!(wait_ping(&lab, &lab.right_host, LEFT_HOST, Duration::from_secs(5)));
    cap.stop(&lab);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/inject.py");
    let out = lab.exec(&lab.left, "python3", &[script, "first-esp", &cap.file.display().to_string()]);
    let mut replay = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Take a packet the right gateway sent (its first is the ping's echo request).
    if !replay.starts_with(&spi_in) {
        replay = String::new();
    }
    let forged = format!("{spi_in}00000fff{}", "ab".repeat(60));
    let truncated = format!("{spi_in}0000");
    let mut esp_args =
        vec![script, "esp", LEFT_WAN, "deadbeef00000001aaaaaaaa", forged.as_str(), truncated.as_str(), "01"];
    if !replay.is_empty() {
        esp_args.push(replay.as_str());
    }
    lab.exec(&lab.right, "python3", &esp_args);
    lab.exec(
        &lab.right,
        "python3",
        &[script, "udp", LEFT_WAN, "4500", "ff", "0000", "00000000ffffffff", "deadbeef0000000199", &forged],
    );
    let dropped = wait_for(Duration::from_secs(5), || {
        let d = left.status()?["dropped"].clone();
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        // The IKE drop comes through the control queue and the loop: published a little later.
        let ike = d.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("ike_")));
        (n("esp_unknown_spi") >= 2 && n("esp_icv") >= 2 && n("esp_malformed") >= 2 && ike).then_some(d)
    })
    .unwrap_or_else(|| panic!("drops not counted: {}", left.status().unwrap()["dropped"]));
    assert!(dropped["esp_truncated"].as_u64().unwrap_or(0) >= 1, "{dropped}");
    assert!(dropped["esp_malformed"].as_u64().unwrap_or(0) >= 2, "{dropped}");
    assert!(
        dropped.as_object().unwrap().keys().any(|k| k.starts_with("ike_")),
        "garbage behind a non-ESP marker counted as IKE drop: {dropped}"
    );
    if !replay.is_empty() {
        assert!(dropped["esp_replay"].as_u64().unwrap_or(0) >= 1, "{dropped}");
    }
    // Still up, still carrying traffic.
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 3), 3);
    assert_eq!(left.stop(&lab), Some(0));
}
