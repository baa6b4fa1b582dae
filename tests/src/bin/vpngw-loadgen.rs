//! `vpngw-loadgen`: thousands of IKEv1 initiators against one vpngw (`vpngw_tests::loadgen`).
//!
//! Run it in the namespace that holds the initiators' addresses; it prints the report as JSON.
//!
//! ```text
//! vpngw-loadgen --gateway 198.51.100.1 --tunnels 5000 [--dh-group dh14] [--concurrency 256]
//!               [--timeout 120] [--hold 0] [--no-dpd] [--child-lifetime 3600]
//!               [--gateway-initiates] [--storm] [--ping-sample N] [--ping-interval-ms 200]
//! vpngw-loadgen --gateway 198.51.100.1 --tunnels 5000 --gateway-config   # vpngw's [[connection]]s
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::process::ExitCode;
use std::time::Duration;

use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm};
use vpngw_tests::loadgen::{Plan, run};

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "vpngw-loadgen: {why}\nusage: vpngw-loadgen --gateway ADDR --tunnels N [--first-address ADDR] [--dh-group NAME] \
         [--ike-encryption NAME] [--ike-hash NAME] [--esp-encryption NAME] [--esp-integrity NAME] \
         [--concurrency N] [--timeout S] [--hold S] [--no-dpd] [--child-lifetime S] [--gateway-initiates] \
         [--storm] [--ping-sample N] [--ping-interval-ms MS] [--gateway-config]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let Some(gateway) = value("--gateway").and_then(|g| g.parse().ok()) else { return usage("--gateway ADDR") };
    let Some(tunnels) = value("--tunnels").and_then(|n| n.parse().ok()) else { return usage("--tunnels N") };
    let mut plan = Plan::new(gateway, tunnels);
    let number = |name: &str| value(name).and_then(|v| v.parse::<u64>().ok());
    if let Some(a) = value("--first-address").and_then(|a| a.parse().ok()) {
        plan.first_address = a;
    }
    macro_rules! algorithm {
        ($flag:literal, $field:ident, $ty:ty) => {
            if let Some(name) = value($flag) {
                match <$ty>::from_name(&name) {
                    Some(a) => plan.$field = a,
                    None => return usage(concat!("unknown ", $flag)),
                }
            }
        };
    }
    algorithm!("--dh-group", dh_group, DhGroup);
    algorithm!("--ike-encryption", ike_encryption, EncryptionAlgorithm);
    algorithm!("--ike-hash", ike_hash, HashAlgorithm);
    algorithm!("--esp-encryption", esp_encryption, EncryptionAlgorithm);
    algorithm!("--esp-integrity", esp_integrity, IntegrityAlgorithm);
    if let Some(n) = number("--concurrency") {
        plan.concurrency = n as usize;
    }
    if let Some(s) = number("--timeout") {
        plan.timeout = Duration::from_secs(s);
    }
    if let Some(s) = number("--hold") {
        plan.hold = Duration::from_secs(s);
    }
    if let Some(s) = number("--child-lifetime") {
        plan.child_lifetime_seconds = s as u32;
    }
    if let Some(n) = number("--ping-sample") {
        plan.ping_sample = n as u32;
    }
    if let Some(ms) = number("--ping-interval-ms") {
        plan.ping_interval = Duration::from_millis(ms.max(10));
    }
    plan.dpd = !args.iter().any(|a| a == "--no-dpd");
    plan.gateway_initiates = args.iter().any(|a| a == "--gateway-initiates");
    plan.storm = args.iter().any(|a| a == "--storm");
    if args.iter().any(|a| a == "--gateway-config") {
        print!("{}", plan.gateway_connections(""));
        return ExitCode::SUCCESS;
    }
    let report = match run(&plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vpngw-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.to_json());
    if report.established == plan.tunnels && report.echo_answered == report.established {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
