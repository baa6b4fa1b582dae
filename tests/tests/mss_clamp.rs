//! TCP MSS clamping end to end (`[gateway] tcp_mss_clamp`): a path between the gateways whose
//! MTU is small (wan0 1300 on both, `path_mtu = 1300`, so the TUN MTU is 1200) and on which
//! every ICMP "fragmentation needed" is dropped (nftables in both gateways: what they would send
//! their hosts, and what they would forward), so path MTU discovery cannot work.
//!
//! With `"auto"` the SYN's MSS (1460 from the hosts' 1500-byte links) is clamped to 1200 - 40 =
//! 1160 both ways, the counters say so, and a 3 MB transfer from the left host to the right
//! host completes intact. With `"off"` the right host sees MSS 1460, the left host's full-size
//! segments meet the left gateway's 1200-byte TUN, whose ICMP never arrives, and the same
//! transfer stalls: the test can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root};
use vpngw_tests::traffic::{Capture, RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";
const PATH_MTU: u16 = 1300;
/// The TUN MTU vpngw derives from it (path_mtu - 100), less IPv4 and TCP headers.
const CLAMP: u16 = PATH_MTU - 100 - 40;
const TRANSFER: usize = 3_000_000;
/// Long enough for 3 MB through the tunnel on a busy two-core machine (well under a second
/// when it works), short enough to keep the stalled case cheap.
const TRANSFER_TIMEOUT_S: u32 = 12;

fn connection(name: &str, remote: &str, local_net: &str, remote_net: &str, active: bool) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local_net}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{}\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n",
        if active { "active" } else { "passive" },
    )
}

/// Drops ICMP "fragmentation needed" (type 3 code 4) that namespace `ns` sends or forwards.
fn drop_fragmentation_needed(lab: &Lab, ns: &str) {
    let script = "add table inet pmtud_blackhole\n\
         add chain inet pmtud_blackhole sent { type filter hook output priority 0 ; }\n\
         add chain inet pmtud_blackhole forwarded { type filter hook forward priority 0 ; }\n\
         add rule inet pmtud_blackhole sent icmp type destination-unreachable icmp code frag-needed counter drop\n\
         add rule inet pmtud_blackhole forwarded icmp type destination-unreachable icmp code frag-needed counter drop\n";
    let path = lab.dir.join(format!("pmtud-blackhole-{ns}.nft"));
    std::fs::write(&path, script).unwrap();
    let out = lab.exec(ns, "nft", &["-f", &path.display().to_string()]);
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

/// ICMP "fragmentation needed" the nftables rules of `ns` dropped so far.
fn dropped_fragmentation_needed(lab: &Lab, ns: &str) -> u64 {
    let out = lab.exec(ns, "nft", &["list", "table", "inet", "pmtud_blackhole"]);
    String::from_utf8_lossy(&out.stdout)
        .split("packets ")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The MSS option of every SYN (and SYN-ACK) in a capture, in order.
fn syn_mss(capture: &Capture) -> Vec<u16> {
    let out = Command::new("tcpdump")
        .args(["-r", &capture.file.display().to_string(), "-n", "-v", "tcp[tcpflags] & tcp-syn != 0"])
        .output()
        .expect("tcpdump");
    String::from_utf8_lossy(&out.stdout)
        .split("mss ")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// Sends TRANSFER bytes from the left host to the right host with traffic.py, giving up after
/// TRANSFER_TIMEOUT_S; returns (the client finished, bytes the server got, the digests matched).
fn transfer(lab: &Lab, run: &str) -> (bool, u64, bool) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/traffic.py");
    let log = lab.dir.join(format!("{run}-tcp-server.out"));
    let server = lab.spawn(&lab.right_host, "python3", &[script, "tcp-server", RIGHT_HOST, "5001"], &[], &log);
    std::thread::sleep(Duration::from_millis(300));
    let client = lab.exec(
        &lab.left_host,
        "timeout",
        &[&TRANSFER_TIMEOUT_S.to_string(), "python3", script, "tcp-client", RIGHT_HOST, "5001", &TRANSFER.to_string()],
    );
    let finished = client.status.success();
    let sent: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap_or_default();
    // A client that gave up leaves the server waiting: stop it; it reports nothing then.
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(server, Duration::from_secs(2));
    let received: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap_or_default().trim()).unwrap_or_default();
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    let intact = finished && received["sha256"].is_string() && received["sha256"] == sent["sha256"];
    (finished, bytes, intact)
}

fn mss_clamped(v: &Vpngw) -> u64 {
    let status = v.status().expect("status");
    status["workers"].as_array().unwrap().iter().map(|w| w["mss_clamped"].as_u64().unwrap_or(0)).sum()
}

/// Both gateways with this `tcp_mss_clamp`, the tunnel up; returns (left, right).
fn gateways(lab: &Lab, run: &str, clamp: &str) -> (Vpngw, Vpngw) {
    let gateway = |c: String| {
        c.replacen("[gateway]\n", &format!("[gateway]\npath_mtu = {PATH_MTU}\ntcp_mss_clamp = {clamp}\n"), 1)
    };
    let (l, r) = (format!("{run}-l"), format!("{run}-r"));
    let right_cfg = gateway(config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(lab, &r),
        true,
        &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, false),
    ));
    let left_cfg = gateway(config_text(
        LEFT_WAN,
        &Vpngw::socket_for(lab, &l),
        true,
        &connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, true),
    ));
    let right = Vpngw::start(lab, &lab.right, &r, &right_cfg, &[]);
    let left = Vpngw::start(lab, &lab.left, &l, &left_cfg, &[]);
    left.wait_up("to-right", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{run}: not up\n{}\n{}", left.log_text(), right.log_text()));
    assert!(
        wait_ping(lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(15)),
        "{run}: the tunnel never carried a ping"
    );
    (left, right)
}

#[test]
fn tcp_crosses_a_path_without_pmtud_only_with_the_mss_clamped() {
    require_root();
    let lab = Lab::gateways("mss-clamp");
    for ns in [&lab.left, &lab.right] {
        lab.ip(ns, &["link", "set", "wan0", "mtu", &PATH_MTU.to_string()]);
        drop_fragmentation_needed(&lab, ns);
    }

    // "auto": clamped both ways, the transfer completes.
    let (left, right) = gateways(&lab, "auto", "\"auto\"");
    let capture = Capture::start(&lab, &lab.right_host, "eth0", "auto-right-host");
    let (finished, bytes, intact) = transfer(&lab, "auto");
    capture.stop(&lab);
    let mss = syn_mss(&capture);
    assert!(
        finished && intact,
        "auto: the transfer did not complete intact ({bytes} of {TRANSFER} bytes arrived); SYN MSS seen {mss:?}"
    );
    // The SYN as the right host got it, then its SYN-ACK (1460) before the right gateway.
    assert_eq!(mss, [CLAMP, 1460], "auto: MSS of the SYN and SYN-ACK at the right host");
    // The left gateway clamped the SYN on its way in, the right one the SYN-ACK.
    let (left_clamped, right_clamped) = (mss_clamped(&left), mss_clamped(&right));
    assert!(left_clamped >= 1 && right_clamped >= 1, "mss_clamped: left {left_clamped}, right {right_clamped}");
    assert!(left.status_text().contains("TCP MSS clamped in"), "{}", left.status_text());
    assert_eq!(left.stop(&lab), Some(0));
    assert_eq!(right.stop(&lab), Some(0));

    // "off": the SYN keeps 1460, the left host's 1500-byte segments do not fit the left
    // gateway's TUN, the ICMP that says so is dropped: the transfer stalls.
    let (left, right) = gateways(&lab, "off", "\"off\"");
    let capture = Capture::start(&lab, &lab.right_host, "eth0", "off-right-host");
    let icmp_before = dropped_fragmentation_needed(&lab, &lab.left);
    let (finished, bytes, _) = transfer(&lab, "off");
    capture.stop(&lab);
    let mss = syn_mss(&capture);
    assert_eq!(mss, [1460, 1460], "off: MSS of the SYN and SYN-ACK at the right host");
    assert!(
        !finished,
        "off: {bytes} bytes crossed without the clamp: the path is no black hole, the test proves nothing"
    );
    assert!(
        dropped_fragmentation_needed(&lab, &lab.left) > icmp_before,
        "off: the stall is not the black hole's (no fragmentation needed dropped)"
    );
    assert_eq!((mss_clamped(&left), mss_clamped(&right)), (0, 0));
    assert_eq!(left.stop(&lab), Some(0));
    assert_eq!(right.stop(&lab), Some(0));
}
