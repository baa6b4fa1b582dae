//! Many tunnels through the real daemon, scaled down for `make test` (the 5,000-tunnel figures
//! are `make bench-tunnels`, docs/performance.md): 200 initiators of the load generator
//! (`vpngw-loadgen`, vpngw's own IKE engine), each from its own address, negotiate main mode and
//! quick mode with one vpngw, then one ICMP echo goes through each tunnel as raw ESP sealed
//! with that tunnel's keys and must come back from the host behind vpngw. vpngw's status
//! then lists every connection up, and its API-free surfaces still answer.
//!
//! A small rekey storm too (the 5,000-tunnel one is `STORM=gateway make bench-tunnels`): vpngw
//! initiates 100 tunnels with a 30 s child SA lifetime (the shortest it accepts), so it is the
//! quick-mode initiator of each and replaces all of them within 17-20 s while 20 of them carry
//! pings; about 40 s (the lifetime's floor and the old pairs' 10 s grace).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Instant;

use serde_json::Value;
use vpngw_tests::loadgen::Plan;
use vpngw_tests::netns::wait_for;
use vpngw_tests::netns::{LEFT_WAN, Lab, RIGHT_WAN};
use vpngw_tests::vpngw::{Vpngw, config_text};

const TUNNELS: u32 = 200;

#[test]
fn two_hundred_initiators_come_up_and_carry_an_echo_each() {
    let lab = Lab::gateways("scale");
    let plan = Plan::new(LEFT_WAN.parse().unwrap(), TUNNELS);
    // The initiators' addresses are local to the right namespace (AnyIP), and routed there.
    lab.ip(&lab.right, &["route", "add", "local", &plan.address_range(), "dev", "lo"]);
    lab.ip(&lab.left, &["route", "add", &plan.address_range(), "via", RIGHT_WAN]);
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "scale"), false, &plan.gateway_connections(""));
    let v = Vpngw::start(&lab, &lab.left, "scale", &config, &[]);
    let bin = env!("CARGO_BIN_EXE_vpngw-loadgen");
    let started = Instant::now();
    let out = lab.exec(
        &lab.right,
        bin,
        &["--gateway", LEFT_WAN, "--tunnels", &TUNNELS.to_string(), "--concurrency", "64", "--timeout", "60"],
    );
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no report ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("{report} in {took:?}");
    assert_eq!(
        report["established"],
        TUNNELS,
        "{report}\n{}",
        v.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(report["failures"], serde_json::json!({}), "{report}");
    assert_eq!(report["echo"]["sent"], TUNNELS, "{report}");
    assert_eq!(report["echo"]["answered"], TUNNELS, "an echo lost: {report}");
    assert!(out.status.success(), "{report}");
    // vpngw's side: every connection up, as responder.
    let status = v.status().unwrap();
    let connections = status["connections"].as_array().unwrap();
    assert_eq!(connections.len(), TUNNELS as usize);
    let up = connections.iter().filter(|c| c["state"] == "up").count();
    // The initiators are gone (no Deletes sent: they just stopped), so DPD has not cleared
    // anything yet.
    assert_eq!(up, TUNNELS as usize, "{} of {TUNNELS} up", up);
    assert!(connections.iter().all(|c| c["ike_sa"]["role"] == "responder"));
    assert_eq!(v.stop(&lab), Some(0));
}

#[test]
fn vpngw_rekeys_a_hundred_tunnels_at_once_without_losing_a_ping() {
    const N: u32 = 100;
    let lab = Lab::gateways("storm");
    let mut plan = Plan::new(LEFT_WAN.parse().unwrap(), N);
    plan.child_lifetime_seconds = 30;
    plan.gateway_initiates = true;
    lab.ip(&lab.right, &["route", "add", "local", &plan.address_range(), "dev", "lo"]);
    lab.ip(&lab.left, &["route", "add", &plan.address_range(), "via", RIGHT_WAN]);
    let bin = env!("CARGO_BIN_EXE_vpngw-loadgen");
    // The generator answers, so it listens before vpngw starts initiating.
    let log = lab.dir.join("loadgen.json");
    let args = [
        "--gateway",
        LEFT_WAN,
        "--tunnels",
        "100",
        "--timeout",
        "30",
        "--hold",
        "34",
        "--child-lifetime",
        "30",
        "--gateway-initiates",
        "--storm",
        "--ping-sample",
        "20",
    ];
    let loadgen = lab.spawn(&lab.right, bin, &args, &[], &log);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "storm"), false, &plan.gateway_connections(""));
    let v = Vpngw::start(&lab, &lab.left, "storm", &config, &[]);
    let report: Value = wait_for(std::time::Duration::from_secs(120), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().find_map(|l| serde_json::from_str::<Value>(l).ok())
    })
    .unwrap_or_else(|| panic!("no report: {}", std::fs::read_to_string(&log).unwrap_or_default()));
    eprintln!("{report}");
    let _ = lab.wait_exit(loadgen, std::time::Duration::from_secs(10));
    let storm = &report["storm"];
    let tail = || v.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n");
    assert_eq!(report["established"], N, "{report}\n{}", tail());
    assert_eq!(storm["rekeyed"], N, "{report}");
    assert_eq!(storm["by_gateway"], N, "vpngw, the quick-mode initiator, rekeys first: {report}");
    assert_eq!(storm["new_spis_both_ways"], N, "{report}");
    assert_eq!(storm["old_deleted"], N, "{report}");
    assert_eq!(storm["in_window"], N, "each within its jitter window: {report}");
    assert_eq!(storm["failures"], serde_json::json!({}), "{report}");
    assert_eq!(report["pings"]["lost"], 0, "pings lost across the rekeys: {report}");
    assert!(report["pings"]["sent"].as_u64().unwrap() > 20 * 100, "{report}");
    assert_eq!(v.stop(&lab), Some(0));
}
