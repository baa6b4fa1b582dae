//! Many tunnels through the real daemon, scaled down for `make test` (the 5,000-tunnel figures
//! are `make bench-tunnels`, docs/performance.md): 200 initiators of the load generator
//! (`vpngw-loadgen`, vpngw's own IKE engine), each from its own address, negotiate main mode and
//! quick mode with one vpngw, then one ICMP echo goes through each tunnel as raw ESP sealed
//! with that tunnel's keys and must come back from the host behind vpngw. vpngw's status
//! then lists every connection up, and its API-free surfaces still answer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Instant;

use serde_json::Value;
use vpngw_tests::loadgen::Plan;
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
