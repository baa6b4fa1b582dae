//! The monitoring files in `deploy/monitoring/`: alert rules valid and unit-tested with
//! `promtool test rules` (each alert fires when it should and stays quiet when it should not),
//! the Grafana dashboard well-formed. That their expressions name real metrics and parse is
//! checked against a live gateway and Prometheus in `metrics.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

fn promtool(args: &[&str]) -> (bool, String) {
    vpngw_tests::tool::require("/usr/bin/promtool", "apt-get install prometheus");
    let out = Command::new("promtool").args(args).current_dir(monitoring()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS: 11 rules found"), "{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "{said}");
    // Every alert has at least one firing expectation in the tests.
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring().join("alerts.test.yml")).unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        let fires = tests.split("alertname: ").skip(1).any(|t| t.starts_with(name) && t.contains("exp_labels"));
        assert!(fires, "alert {name} has no test where it fires");
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_prometheus_queries() {
    let text = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "vpngw-overview");
    let panels = d["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for wanted in [
        "Tunnels up",
        "Tunnel state",
        "Throughput per connection",
        "Drops by reason (gateway)",
        "Negotiation failures by reason",
        "HA role",
        "HA in sync and partner",
        "HA sync lag",
        "HA sync messages",
        "HA sync bytes",
        "HA takeovers",
        "HA auth failures and rejected frames",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            assert!(e.contains("vpngw_") || e.contains("process_"), "{e}");
        }
    }
}
