//! `make bench-soak`: two vpngw over an impaired outer link (issue 16). On each gateway's
//! egress of its outer interface (wan0), nftables (this kernel has no netem): 1 % of packets
//! dropped (`numgen random mod 1000 < 10 drop`), 0.5 % duplicated (`dup to "wan0"`, netdev
//! family), 2 % reordered (`dup to "dly0" drop`: `tools/delay.py` reads the copy from the
//! other end of that veth pair and sends it on wan0 10 ms later, so that later packets overtake
//! it). IKE and ESP alike. Child SA lifetimes of 40 s
//! (each side rekeys by time), for SOAK_SECONDS (default 150: at least three rekeys) of pings
//! every 10 ms and a paced TCP stream of 256 KiB/s between the hosts.
//!
//! Checked (the exit status says whether all held): the tunnel stays up (status every second),
//! at least three rekeys, no echo reply delivered twice (ping's duplicates, of a second ping
//! every 10 ms that ends at a deadline: a duplicated ESP packet must be dropped by the replay
//! check), the TCP stream arrives whole (sha256 of what
//! was sent equals what was received). Prints a Markdown table with the impairment's own
//! counters (what nftables dropped, duplicated and delayed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)] // a benchmark

use std::time::{Duration, Instant};

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN};
use vpngw_tests::traffic::{Background, RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "bench-psk-0123456789abcdef";

/// Per mille: loss, duplication, reordering.
const LOSS: u32 = 10;
const DUP: u32 = 5;
const REORDER: u32 = 20;

fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The socket mark of the frames `tools/delay.py` sends again: the egress rules let them pass.
const DELAYED_MARK: &str = "0x99";
/// How long a reordered packet is held back.
const DELAY_MS: &str = "10";

fn impair(lab: &Lab, ns: &str) {
    let nsx = |a: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(a);
        run(&all)
    };
    // Reordering: a copy of the packet goes to a veth pair whose other end `delay.py` reads,
    // the original is dropped, and delay.py sends the copy on wan0 DELAY_MS later (marked, so
    // that these rules let it through). An HTB class of low rate, tried first (as
    // ../shared/lab/impair.sh does it), reordered 0.12 % of datagrams instead of 2 % at 5,000/s:
    // HTB sends a packet at once when its class has tokens, and a 2 % share rarely runs out.
    nsx(&["ip", "link", "add", "dly0", "type", "veth", "peer", "name", "dly1"]);
    for dev in ["dly0", "dly1"] {
        nsx(&["sysctl", "-qw", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")]);
        nsx(&["ip", "link", "set", dev, "up"]);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/delay.py");
    lab.spawn(
        ns,
        "python3",
        &[script, "dly1", "wan0", DELAY_MS, DELAYED_MARK],
        &[],
        &lab.dir.join(format!("delay-{ns}.log")),
    );
    let rules = format!(
        "table netdev impair {{\n  chain egress {{ type filter hook egress device \"wan0\" priority 0; policy accept;\n    \
         meta mark {DELAYED_MARK} accept\n    \
         numgen random mod 1000 < {LOSS} counter drop\n    numgen random mod 1000 < {DUP} counter dup to \"wan0\"\n    \
         numgen random mod 1000 < {REORDER} counter dup to \"dly0\" drop\n  }}\n}}\n"
    );
    let path = lab.dir.join(format!("impair-{ns}.nft"));
    std::fs::write(&path, rules).unwrap();
    nsx(&["nft", "-f", &path.display().to_string()]);
}

/// The packets each impairment rule matched: (dropped, duplicated, delayed).
fn impaired(ns: &str) -> (u64, u64, u64) {
    let text = run(&["ip", "netns", "exec", ns, "nft", "list", "table", "netdev", "impair"]);
    let counts: Vec<u64> =
        text.lines().filter_map(|l| l.split("counter packets ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    (counts.first().copied().unwrap_or(0), counts.get(1).copied().unwrap_or(0), counts.get(2).copied().unwrap_or(0))
}

fn conn(name: &str, remote: &str, local_net: &str, remote_net: &str, start: &str) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local_net}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{start}\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\nlifetime_seconds = 40\n"
    )
}

fn main() {
    vpngw_tests::netns::require_root();
    let seconds: u32 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let lab = Lab::gateways("soak");
    let right_cfg = config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(&lab, "soak-r"),
        false,
        &conn("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive"),
    );
    let left_cfg = config_text(
        LEFT_WAN,
        &Vpngw::socket_for(&lab, "soak-l"),
        false,
        &conn("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, "active"),
    );
    let right = Vpngw::start(&lab, &lab.right, "soak-r", &right_cfg, &[]);
    let left = Vpngw::start(&lab, &lab.left, "soak-l", &left_cfg, &[]);
    left.wait_up("to-right", Duration::from_secs(30)).unwrap_or_else(|| panic!("not up\n{}", left.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
    let established = |v: &Vpngw| v.log_text().matches("child SA established").count();
    let (left_before, right_before) = (established(&left), established(&right));
    impair(&lab, &lab.left);
    impair(&lab, &lab.right);
    eprintln!(
        "impairment on both wan0: loss {LOSS}/1000, dup {DUP}/1000, reorder {REORDER}/1000; {seconds} s of traffic"
    );

    let bg = Background::start(&lab, seconds, 256);
    // The checked pings: every 10 ms with a deadline (-w), so that ping ends and reports on a
    // busy machine too (Background's own pings go by count and are killed unreported when
    // they run long).
    let ping_log = lab.dir.join("ping-checked.out");
    let deadline = (seconds + 5).to_string();
    let ping = lab.spawn(
        &lab.left_host,
        "ping",
        &["-q", "-i", "0.01", "-w", &deadline, "-W", "2", RIGHT_HOST],
        &[],
        &ping_log,
    );
    let start = Instant::now();
    let mut not_up = Vec::new();
    while start.elapsed() < Duration::from_secs(u64::from(seconds)) {
        for (v, name) in [(&left, "to-right"), (&right, "to-left")] {
            let state = v.connection(name).map(|c| c["state"].as_str().unwrap_or("").to_string());
            if state.as_deref() != Some("up") {
                not_up.push(format!("{:.0} s: {name} {state:?}", start.elapsed().as_secs_f64()));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    lab.wait_exit(ping, Duration::from_secs(30));
    let stats = std::fs::read_to_string(&ping_log).unwrap_or_default();
    let line = stats.lines().find(|l| l.contains("packets transmitted")).unwrap_or("").to_string();
    let field = |suffix: &str| -> u64 {
        line.split(", ").find_map(|p| p.trim_start_matches('+').strip_suffix(suffix)?.trim().parse().ok()).unwrap_or(0)
    };
    let (pings_sent, pings_received, pings_duplicated) =
        (field(" packets transmitted"), field(" received"), field(" duplicates"));
    let report = bg.finish(&lab, Duration::from_secs(60));
    // Each rekey is one "child SA established" in each side's log.
    let (rekeys_left, rekeys_right) = (established(&left) - left_before, established(&right) - right_before);
    let rekeys = rekeys_left.min(rekeys_right);
    let (ld, lu, lr) = impaired(&lab.left);
    let (rd, ru, rr) = impaired(&lab.right);
    let drops = |v: &Vpngw| v.status().map(|s| s["dropped"].to_string()).unwrap_or_default();
    let stream_ok =
        !report.stream_sent["sha256"].is_null() && report.stream_received["sha256"] == report.stream_sent["sha256"];
    let failures = |v: &Vpngw| v.log_text().matches("negotiation failed").count();

    println!(
        "| seconds | rekeys (left / right log) | tunnel not up (samples) | pings answered | duplicate replies | TCP stream | longest stall s | outer packets dropped / duplicated / delayed (left+right) | negotiation failures |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {seconds} | {rekeys_left} / {rekeys_right} | {} | {} of {} | {} | {} B, sha256 {} | {:.2} | {} / {} / {} | {} |",
        not_up.len(),
        pings_received,
        pings_sent,
        pings_duplicated,
        report.stream_received["bytes"],
        if stream_ok { "equal" } else { "DIFFERS" },
        report.max_gap(),
        ld + rd,
        lu + ru,
        lr + rr,
        failures(&left) + failures(&right),
    );
    eprintln!("drops: left {}\n       right {}", drops(&left), drops(&right));
    let mut failed = Vec::new();
    if !not_up.is_empty() {
        failed.push(format!("the tunnel was not up: {not_up:?}"));
    }
    if rekeys < 3 {
        failed.push(format!("only {rekeys} rekeys"));
    }
    if pings_sent == 0 {
        failed.push(format!("no ping report: duplicates unchecked ({stats:?})"));
    }
    if pings_duplicated > 0 || report.pings_duplicated > 0 {
        failed.push(format!("{pings_duplicated} + {} duplicate echo replies delivered", report.pings_duplicated));
    }
    if !stream_ok {
        failed.push(format!("the TCP stream differs: {}", report.summary()));
    }
    if lu + ru == 0 || ld + rd == 0 || lr + rr == 0 {
        failed.push("an impairment matched nothing: the soak did not test it".into());
    }
    let _ = left.stop(&lab);
    let _ = right.stop(&lab);
    if failed.is_empty() {
        eprintln!("soak: all checks held");
    } else {
        eprintln!("soak FAILED:\n  {}", failed.join("\n  "));
        std::process::exit(1);
    }
}
