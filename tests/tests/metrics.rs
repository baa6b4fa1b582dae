//! Prometheus metrics, checked by Prometheus's own tools: `promtool check metrics` on what
//! `/metrics` serves, and a real Prometheus server (Debian's, 2.42) scraping two vpngw
//! gateways in their namespaces and answering queries about their tunnels.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::traffic::{RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text, lone_ha_section};

const PSK: &str = "lab-psk-0123456789abcdef";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn connection(name: &str, remote: &str, local: &str, remote_net: &str, start: &str) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{start}\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n"
    )
}

/// An HTTP GET from inside a namespace (the endpoints listen on the namespace's loopback).
fn http_get(lab: &Lab, ns: &str, url: &str) -> Option<String> {
    let code =
        "import sys, urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')";
    let out = lab.exec(ns, "python3", &["-c", code, url]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of one series in an exposition, e.g. `vpngw_tunnel_up{connection="to-right"}`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

fn promtool_check(text: &str) -> (bool, String) {
    vpngw_tests::tool::require("/usr/bin/promtool", "apt-get install prometheus");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn metrics_are_clean_count_across_rekeys_and_a_real_prometheus_scrapes_them() {
    let lab = Lab::gateways("metrics");
    let right_cfg = config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(&lab, "metrics-r"),
        true,
        &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive"),
    );
    // A second connection on the left that never comes up: it must appear all the same. The
    // left gateway is the active server of a hot-backup pair whose partner never comes, so
    // that its hot-backup series are checked too.
    let left_cfg = config_text(
        LEFT_WAN,
        &Vpngw::socket_for(&lab, "metrics-l"),
        true,
        &format!(
            "{}[connection.health_check]\nlocal_address = \"10.1.0.1\"\nremote_address = \"10.2.0.10\"\n{}{}",
            connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, "active"),
            connection("to-nowhere", "198.51.100.9", "10.1.1.0/24", "10.9.0.0/24", "passive"),
            lone_ha_section(&lab, "metrics-l")
        ),
    );
    let right = Vpngw::start(&lab, &lab.right, "metrics-r", &right_cfg, &[]);
    let left = Vpngw::start(&lab, &lab.left, "metrics-l", &left_cfg, &[]);
    left.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}", left.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 10), 10);

    let url = "http://127.0.0.1:9720/metrics";
    let before = http_get(&lab, &lab.left, url).unwrap_or_else(|| panic!("no /metrics\n{}", left.log_text()));
    let (clean, said) = promtool_check(&before);
    assert!(clean, "promtool check metrics:\n{said}\n{before}");
    assert_eq!(value(&before, "vpngw_tunnel_up{connection=\"to-right\"}"), Some(1.0), "{before}");
    assert_eq!(value(&before, "vpngw_tunnel_up{connection=\"to-nowhere\"}"), Some(0.0), "{before}");
    assert_eq!(value(&before, "vpngw_ike_sa_state{connection=\"to-nowhere\",state=\"none\"}"), Some(1.0));
    assert_eq!(value(&before, "vpngw_child_sas{connection=\"to-right\",state=\"active\"}"), Some(1.0));
    let out_before = value(&before, "vpngw_esp_packets_total{connection=\"to-right\",direction=\"out\"}").unwrap();
    assert!(out_before >= 11.0, "{before}");
    // The revision is the build's (build.rs): any value, between the gateway and the version.
    let build_info = before.lines().find(|l| l.starts_with("vpngw_build_info{gateway=\"gw-198.51.100.1\",revision=\""));
    assert!(build_info.is_some_and(|l| l.ends_with("\",version=\"0.1.0\"} 1")), "{before}");
    assert!(value(&before, "process_resident_memory_bytes").is_some_and(|v| v > 1e6), "{before}");
    // Labels stay bounded: no SPI, address or port anywhere in a label.
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("198.51.100.2") && !line.contains(":4500"), "unbounded label: {line}");
    }
    assert!(!before.contains(PSK));
    // What alerts join on: the configured start and exchange mode, for every connection.
    for (series, v) in [
        ("vpngw_connection_info{connection=\"to-right\",mode=\"main\",start=\"active\"}", 1.0),
        ("vpngw_connection_info{connection=\"to-nowhere\",mode=\"main\",start=\"passive\"}", 1.0),
        // The file loaded at start counts as the last load, applied; no reload yet.
        ("vpngw_config_last_reload_success", 1.0),
        ("vpngw_config_reloads_total{result=\"applied\"}", 0.0),
        ("vpngw_config_reloads_total{result=\"refused\"}", 0.0),
    ] {
        assert_eq!(value(&before, series), Some(v), "{series}\n{before}");
    }
    // The child SA's expiry is ahead (lifetimes are hours); a connection without one has none.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let expiry = value(&before, "vpngw_child_sa_expiry_timestamp_seconds{connection=\"to-right\"}");
    assert!(expiry.is_some_and(|t| t > now + 60.0), "{expiry:?} (now {now})\n{before}");
    assert!(!before.contains("vpngw_child_sa_expiry_timestamp_seconds{connection=\"to-nowhere\"}"), "{before}");
    // The left initiated: main mode and quick mode messages both ways, retransmissions counted
    // apart (whether any happened depends on timing: only that the series exists).
    for (series, at_least) in [
        ("vpngw_ike_messages_total{direction=\"out\",exchange=\"main\"}", 3.0),
        ("vpngw_ike_messages_total{direction=\"in\",exchange=\"main\"}", 3.0),
        ("vpngw_ike_messages_total{direction=\"out\",exchange=\"quick\"}", 2.0),
        ("vpngw_ike_messages_total{direction=\"in\",exchange=\"quick\"}", 1.0),
        ("vpngw_ike_retransmissions_total{exchange=\"main\"}", 0.0),
    ] {
        assert!(value(&before, series).is_some_and(|v| v >= at_least), "{series} >= {at_least}\n{before}");
    }
    let started = value(&before, "vpngw_config_last_reload_timestamp_seconds").unwrap();
    assert!(started <= now && started > now - 120.0, "{started} (now {now})");
    // Hot backup: active since its takeover at start, no partner.
    for (series, v) in [
        ("vpngw_ha_role{role=\"active\"}", 1.0),
        ("vpngw_ha_role{role=\"standby\"}", 0.0),
        ("vpngw_ha_partner_connected", 0.0),
        ("vpngw_ha_partner_role{role=\"active\"}", 0.0),
        ("vpngw_ha_in_sync", 0.0),
        ("vpngw_ha_takeovers_total", 1.0),
        ("vpngw_ha_info{node=\"metrics-l-a\",pair=\"metrics-l-a/metrics-l-b\",partner=\"metrics-l-b\"}", 1.0),
    ] {
        assert_eq!(value(&before, series), Some(v), "{series}\n{before}");
    }
    assert!(value(&before, "vpngw_ha_last_takeover_seconds").is_some_and(|t| t < 5.0), "{before}");
    assert!(value(&before, "vpngw_ha_sync_messages_total{direction=\"sent\"}").is_some(), "{before}");
    let right_before = http_get(&lab, &lab.right, url).unwrap();
    assert!(!right_before.contains("vpngw_ha_"), "hot-backup series without [ha]:\n{right_before}");

    // A rekey: new SPIs, fresh SA counters; the connection's totals carry on.
    let out = left.cli(&["rekey", "to-right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replaced = wait_for(Duration::from_secs(30), || {
        let t = http_get(&lab, &lab.left, url)?;
        (value(&t, "vpngw_child_sa_rekeys_total{connection=\"to-right\"}")? >= 1.0).then_some(t)
    })
    .unwrap_or_else(|| panic!("no rekey counted\n{}", left.log_text()));
    assert!(
        value(&replaced, "vpngw_esp_packets_total{connection=\"to-right\",direction=\"out\"}").unwrap() >= out_before
    );
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 10), 10);
    let after = http_get(&lab, &lab.left, url).unwrap();
    let out_after = value(&after, "vpngw_esp_packets_total{connection=\"to-right\",direction=\"out\"}").unwrap();
    assert!(out_after >= out_before + 10.0, "reset by the rekey? {out_before} then {out_after}\n{after}");
    let right_text = http_get(&lab, &lab.right, url).unwrap();
    let in_right = value(&right_text, "vpngw_esp_packets_total{connection=\"to-left\",direction=\"in\"}").unwrap();
    assert!(in_right >= out_after - 2.0, "right received {in_right}, left sent {out_after}");

    // A real Prometheus in the left namespace scrapes the left gateway.
    vpngw_tests::tool::require(PROMETHEUS, "apt-get install prometheus");
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vpngw\n    \
         static_configs:\n      - targets: ['127.0.0.1:9720']\n",
    )
    .unwrap();
    let config_arg = format!("--config.file={}", dir.join("prometheus.yml").display());
    let data_arg = format!("--storage.tsdb.path={}", dir.join("data").display());
    lab.spawn(
        &lab.left,
        PROMETHEUS,
        &[&config_arg, &data_arg, "--web.listen-address=127.0.0.1:9090"],
        &[],
        &dir.join("prometheus.log"),
    );
    // The first scrape lands some seconds after start: poll.
    let query = "http://127.0.0.1:9090/api/v1/query?query=vpngw_tunnel_up";
    let series = wait_for(Duration::from_secs(60), || {
        let body = http_get(&lab, &lab.left, query)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?.clone();
        (result.len() == 2).then_some(result)
    })
    .unwrap_or_else(|| {
        panic!(
            "Prometheus has no vpngw series: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    });
    let up: Vec<(String, String)> = series
        .iter()
        .map(|s| (s["metric"]["connection"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().to_string()))
        .collect();
    assert!(up.contains(&("to-right".into(), "1".into())) && up.contains(&("to-nowhere".into(), "0".into())), "{up:?}");
    assert!(series.iter().all(|s| s["metric"]["job"] == "vpngw"));
    // Scrapes are healthy (up == 1) and did not slow the tunnel: pings still all answered.
    let health = http_get(&lab, &lab.left, "http://127.0.0.1:9090/api/v1/query?query=up").unwrap();
    assert!(health.contains("\"value\":[") && health.contains(",\"1\"]"), "{health}");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 5), 5);

    // The dashboard's and the alerts' expressions: each names metrics the gateway exports and
    // is a query this Prometheus accepts. The sync lag exists only while an active streams to a
    // standby (this one has none; the unit tests in ops/metrics.rs cover it).
    let mut families: Vec<&str> =
        after.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    families.push("vpngw_ha_sync_lag_seconds");
    // Per connection, a reason is a series only once it counted (operations.md, "Series at
    // scale"): with no ESP refused and no failure, these families have no series yet.
    families.push("vpngw_connection_dropped_packets_total");
    families.push("vpngw_negotiation_failures_total");
    for expr in monitoring_expressions() {
        for name in metric_names(&expr) {
            assert!(families.contains(&name.as_str()), "{name} (in {expr}) is not exported: {families:?}");
        }
        let q = expr.replace("$instance", ".*").replace("$connection", ".*");
        let encoded: String = q
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let body = http_get(&lab, &lab.left, &format!("http://127.0.0.1:9090/api/v1/query?query={encoded}"))
            .unwrap_or_else(|| panic!("Prometheus refused {q}"));
        assert!(body.contains("\"status\":\"success\""), "{q}: {body}");
    }

    // A refused reload (an invalid file) is counted and remembered until one is applied.
    std::fs::write(&right.config, right_cfg.replace("\"aes-128\"", "\"rot13\"")).unwrap();
    let refused = right.cli(&["reload"]);
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    let text = http_get(&lab, &lab.right, url).unwrap();
    assert_eq!(value(&text, "vpngw_config_reloads_total{result=\"refused\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "vpngw_config_last_reload_success"), Some(0.0), "{text}");
    assert!(value(&text, "vpngw_config_last_reload_timestamp_seconds").unwrap() >= now, "{text}");
    std::fs::write(&right.config, &right_cfg).unwrap();
    let applied = right.cli(&["reload"]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let text = http_get(&lab, &lab.right, url).unwrap();
    assert_eq!(value(&text, "vpngw_config_reloads_total{result=\"applied\"}"), Some(1.0), "{text}");
    assert_eq!(value(&text, "vpngw_config_last_reload_success"), Some(1.0), "{text}");
    assert_eq!(left.stop(&lab), Some(0));
    assert_eq!(right.stop(&lab), Some(0));
}

/// Every PromQL expression in `deploy/monitoring/` (dashboard targets and alert rules).
fn monitoring_expressions() -> Vec<String> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    exprs.extend(rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).map(str::to_string));
    assert!(exprs.len() >= 15, "{exprs:?}");
    exprs
}

/// The vpngw_/process_ metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in expr.match_indices("vpngw_").chain(expr.match_indices("process_")) {
        let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        names.push(name);
    }
    names
}

fn health(v: &Vpngw) -> Value {
    v.connection("to-right").map(|c| c["health"].clone()).unwrap_or(Value::Null)
}

#[test]
fn health_check_measures_the_tunnel_and_flags_loss_once() {
    let lab = Lab::gateways("health");
    let right_cfg = config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(&lab, "health-r"),
        true,
        &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive"),
    );
    // The left gateway's LAN address (10.1.0.1) probes the right host through the tunnel.
    let probe = "[connection.health_check]\nlocal_address = \"10.1.0.1\"\nremote_address = \"10.2.0.10\"\n\
                 interval_seconds = 1\nunhealthy_after = 3\n";
    let left_cfg = config_text(
        LEFT_WAN,
        &Vpngw::socket_for(&lab, "health-l"),
        true,
        &format!("{}{probe}", connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, "active")),
    );
    let right = Vpngw::start(&lab, &lab.right, "health-r", &right_cfg, &[]);
    let left = Vpngw::start(&lab, &lab.left, "health-l", &left_cfg, &[]);
    left.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}", left.log_text()));
    let h = wait_for(Duration::from_secs(15), || {
        let h = health(&left);
        (h["healthy"] == true && h["probes_answered"].as_u64() >= Some(3)).then_some(h)
    })
    .unwrap_or_else(|| panic!("never healthy: {}\n{}", health(&left), left.log_text()));
    let rtt = h["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 100.0, "{h}");
    assert!(h["jitter_ms"].as_f64().is_some(), "{h}");
    // The probes went through the tunnel: the right gateway opened them.
    let answered_before = h["probes_answered"].as_u64().unwrap();
    let text = http_get(&lab, &lab.left, "http://127.0.0.1:9720/metrics").unwrap();
    assert_eq!(value(&text, "vpngw_health_check_healthy{connection=\"to-right\"}"), Some(1.0), "{text}");
    assert!(value(&text, "vpngw_health_check_rtt_seconds{connection=\"to-right\"}").is_some_and(|v| v > 0.0));
    assert!(left.status_text().contains("health check 10.1.0.1 -> 10.2.0.10: healthy"), "{}", left.status_text());

    // The right host stops answering pings: unhealthy after three losses, said once.
    let nft = lab.dir.join("mute.nft");
    std::fs::write(
        &nft,
        "add table inet mute\nadd chain inet mute input { type filter hook input priority 0 ; }\n\
         add rule inet mute input icmp type echo-request drop\n",
    )
    .unwrap();
    let out = lab.exec(&lab.right_host, "nft", &["-f", &nft.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let h = wait_for(Duration::from_secs(10), || {
        let h = health(&left);
        (h["healthy"] == false).then_some(h)
    })
    .unwrap_or_else(|| panic!("never unhealthy: {}\n{}", health(&left), left.log_text()));
    assert!(h["loss_ratio"].as_f64().unwrap() > 0.0, "{h}");
    std::thread::sleep(Duration::from_secs(4));
    let warned = left.log_text().lines().filter(|l| l.contains("tunnel unhealthy")).count();
    assert_eq!(warned, 1, "{}", left.log_text());
    let text = http_get(&lab, &lab.left, "http://127.0.0.1:9720/metrics").unwrap();
    assert_eq!(value(&text, "vpngw_health_check_healthy{connection=\"to-right\"}"), Some(0.0));
    assert!(value(&text, "vpngw_health_check_probes_total{connection=\"to-right\",result=\"lost\"}").unwrap() >= 3.0);
    // The tunnel itself is still up: health is about the path, not the SAs.
    assert_eq!(left.connection("to-right").unwrap()["state"], "up");

    // Answers again: healthy again, said once.
    let out = lab.exec(&lab.right_host, "nft", &["delete", "table", "inet", "mute"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(10), || (health(&left)["healthy"] == true).then_some(()))
        .unwrap_or_else(|| panic!("not healthy again: {}", health(&left)));
    assert!(health(&left)["probes_answered"].as_u64().unwrap() > answered_before);
    assert_eq!(left.log_text().lines().filter(|l| l.contains("tunnel healthy")).count(), 1, "{}", left.log_text());
    assert_eq!(left.stop(&lab), Some(0));
    assert_eq!(right.stop(&lab), Some(0));
}
