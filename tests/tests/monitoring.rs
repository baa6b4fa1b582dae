//! The monitoring files in `deploy/monitoring/`: alert rules valid and unit-tested with
//! `promtool test rules` (each alert fires when it should and stays quiet when it should not),
//! each carrying the labels of an NFVO's fault management (OpenStack Tacker's Prometheus Plugin)
//! and a runbook in `docs/troubleshooting.md`; the sample Prometheus and Alertmanager
//! configurations valid (`promtool check config`, `amtool check-config`) and routing to Tacker;
//! the Grafana dashboard well-formed. That their expressions name real metrics and parse is
//! checked against a live gateway and Prometheus in `metrics.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// Runs one of Prometheus' tools in deploy/monitoring: whether it succeeded, and what it said.
fn in_monitoring(program: &str, install: &str, args: &[&str]) -> (bool, String) {
    vpngw_tests::tool::require(&format!("/usr/bin/{program}"), install);
    let out = Command::new(program).args(args).current_dir(monitoring()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn promtool(args: &[&str]) -> (bool, String) {
    in_monitoring("promtool", "apt-get install prometheus", args)
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS: 12 rules found"), "{said}");
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

/// Where the rules' `runbook_url`s point (the workspace's `repository`, then the file).
const RUNBOOKS: &str = "https://example.invalid/vpngw/blob/main/docs/troubleshooting.md#";

/// The values Tacker's alert schema and ETSI NFV-SOL 002/003 alarms allow.
const PERCEIVED_SEVERITIES: [&str; 6] = ["CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE", "CLEARED"];
const EVENT_TYPES: [&str; 5] =
    ["COMMUNICATIONS_ALARM", "PROCESSING_ERROR_ALARM", "ENVIRONMENTAL_ALARM", "QOS_ALARM", "EQUIPMENT_ALARM"];

/// Each rule of `alerts.yml`: its name and its text (expr, for, labels, annotations).
fn rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    text.split("- alert: ")
        .skip(1)
        .map(|r| {
            let (name, rest) = r.split_once('\n').unwrap();
            (name.trim().to_string(), rest.to_string())
        })
        .collect()
}

/// The value of `key:` in a rule (its first occurrence), unquoted.
fn field(rule: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}: ");
    rule.lines().find_map(|l| l.trim().strip_prefix(&prefix)).map(|v| v.trim_matches('"').to_string())
}

/// GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces to '-'.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(markdown: &str) -> Vec<String> {
    let mut code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            code = !code;
        } else if !code && line.starts_with('#') {
            let title = line.trim_start_matches('#');
            if title.starts_with(' ') {
                out.push(anchor(title));
            }
        }
    }
    out
}

/// The grouping clauses of an expression's aggregations, e.g. `by (vnf_instance_id, pair)`;
/// panics on an aggregation without one (it would drop every label).
fn aggregation_clauses(expr: &str) -> Vec<String> {
    const AGGREGATIONS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk quantile";
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // The text of the parenthesised group that `s` starts with (after spaces), and what follows.
    let group = |s: &str| -> (String, String) {
        let s = s.trim_start();
        assert!(s.starts_with('('), "{expr}");
        let mut depth = 0;
        for (i, c) in s.char_indices() {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            if depth == 0 {
                return (s[1..i].to_string(), s[i + 1..].to_string());
            }
        }
        panic!("unbalanced: {expr}");
    };
    let mut clauses = Vec::new();
    for (i, c) in expr.char_indices() {
        if !c.is_ascii_alphabetic() || expr[..i].chars().next_back().is_some_and(ident) {
            continue;
        }
        let word: String = expr[i..].chars().take_while(|&c| ident(c)).collect();
        if !AGGREGATIONS.split(' ').any(|a| a == word) {
            continue;
        }
        let rest = expr[i + word.len()..].trim_start();
        // `sum by (l) (x)` or `sum (x) by (l)`.
        let after = if rest.starts_with('(') { group(rest).1 } else { rest.to_string() };
        let after = after.trim_start();
        let kind = ["by", "without"].into_iter().find(|k| after.starts_with(k));
        let kind = kind.unwrap_or_else(|| panic!("`{word}` without by/without drops every label: {expr}"));
        clauses.push(format!("{kind} ({})", group(&after[kind.len()..]).0));
    }
    clauses
}

#[test]
fn every_alert_carries_the_nfvo_labels_keeps_vnf_instance_id_and_has_a_runbook() {
    assert_eq!(anchor("Hot backup: both active (split brain)"), "hot-backup-both-active-split-brain");
    assert_eq!(
        anchor("One look: `vpngw status`, then `vpngw diagnose NAME`"),
        "one-look-vpngw-status-then-vpngw-diagnose-name"
    );
    assert_eq!(aggregation_clauses("max_over_time(x[5m]) > 0"), Vec::<String>::new());
    assert_eq!(aggregation_clauses("sum(rate(x[1m])) by (a, b)"), ["by (a, b)"]);
    let troubleshooting =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md")).unwrap();
    let headings = anchors(&troubleshooting);
    let rules = rules();
    assert_eq!(rules.len(), 12, "{:?}", rules.iter().map(|r| &r.0).collect::<Vec<_>>());
    let mut aggregated = 0;
    for (name, rule) in &rules {
        let get = |key: &str| field(rule, key).unwrap_or_else(|| panic!("{name} has no {key}"));
        assert_eq!(get("receiver_type"), "tacker", "{name}");
        assert_eq!(get("function_type"), "vnffm", "{name}");
        let perceived = get("perceived_severity");
        assert!(PERCEIVED_SEVERITIES.contains(&perceived.as_str()), "{name}: {perceived}");
        match get("severity").as_str() {
            "critical" => assert_eq!(perceived, "CRITICAL", "{name}"),
            "warning" => assert!(["MAJOR", "WARNING"].contains(&perceived.as_str()), "{name}: {perceived}"),
            other => panic!("{name}: severity {other}"),
        }
        let event = get("event_type");
        assert!(EVENT_TYPES.contains(&event.as_str()), "{name}: {event}");
        for key in ["summary", "description", "probable_cause", "fault_type", "fault_details"] {
            assert!(!get(key).trim().is_empty(), "{name}: empty {key}");
        }
        let url = get("runbook_url");
        let target = url.strip_prefix(RUNBOOKS).unwrap_or_else(|| panic!("{name}: {url} is not under {RUNBOOKS}"));
        assert!(headings.iter().any(|h| h == target), "{name}: no heading #{target} in docs/troubleshooting.md");
        // The VNF instance is a target label: no aggregation may drop it.
        for clause in aggregation_clauses(&get("expr")) {
            let keeps = clause.contains("vnf_instance_id") != clause.starts_with("without");
            assert!(keeps, "{name}: `{clause}` drops vnf_instance_id");
            aggregated += 1;
        }
    }
    assert_eq!(aggregated, 3, "the aggregations of VpngwReplayOrIcvDropsRising and VpngwHaBothActive");
}

/// Runs amtool (Debian's prometheus-alertmanager, which make test installs).
fn amtool(args: &[&str]) -> (bool, String) {
    in_monitoring("amtool", "apt-get install prometheus-alertmanager (make deps-test)", args)
}

#[test]
fn the_prometheus_and_alertmanager_configurations_are_valid_and_send_vnf_alerts_to_tacker() {
    let (ok, said) = promtool(&["check", "config", "prometheus.yml"]);
    assert!(ok && said.contains("SUCCESS: 1 rule files found"), "{said}");
    // Each target group of the sample names its VNF instance.
    let prometheus = std::fs::read_to_string(monitoring().join("prometheus.yml")).unwrap();
    let (_, scrape) = prometheus.split_once("\nscrape_configs:").unwrap();
    let targets = scrape.lines().filter(|l| l.trim().starts_with("- targets:")).count();
    let ids = scrape.lines().filter(|l| l.trim().starts_with("vnf_instance_id: ")).count();
    assert!(targets > 0 && ids == targets, "{targets} target groups, {ids} vnf_instance_id labels");

    let (ok, said) = amtool(&["check-config", "alertmanager.yml"]);
    assert!(ok, "{said}");
    let routes = |labels: &[String], receivers: &str| {
        let mut args = vec![
            "config".to_string(),
            "routes".into(),
            "test".into(),
            "--config.file=alertmanager.yml".into(),
            format!("--verify.receivers={receivers}"),
        ];
        args.extend(labels.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, said) = amtool(&args);
        assert!(ok, "{labels:?} should go to {receivers}: {said}");
    };
    // Every alert of a gateway that is a VNF instance reaches Tacker's /alert and the operators;
    // without vnf_instance_id (a gateway no NFVO manages) only the operators.
    for (name, rule) in rules() {
        let mut labels: Vec<String> =
            ["receiver_type", "function_type", "severity", "perceived_severity", "event_type"]
                .iter()
                .map(|k| format!("{k}={}", field(&rule, k).unwrap()))
                .collect();
        labels.push(format!("alertname={name}"));
        routes(&labels, "operators");
        labels.push("vnf_instance_id=0b7e9d24-3c61-4f0a-8e52-9d1c7a6b3e22".into());
        routes(&labels, "tacker-vnffm,operators");
    }
    let config = std::fs::read_to_string(monitoring().join("alertmanager.yml")).unwrap();
    assert!(config.contains(":9890/alert\n"), "Tacker's Prometheus Plugin FM endpoint is POST /alert on 9890");
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
        "Child SA expiry",
        "IKE messages by exchange",
        "IKE retransmissions",
        "Configuration reloads",
        "TCP MSS clamped",
        "Connections and builds",
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
