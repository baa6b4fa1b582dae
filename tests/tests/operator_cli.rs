//! The operator's CLI against strongSwan 5.9.8, as a network engineer uses it in the first
//! week: `vpngw status NAME` (one connection, the ISAKMP cookies as strongSwan prints them,
//! traffic each way with when it last moved), `vpngw connection list` as a table, counts,
//! filters and pages (`--summary`, `--state`, `--name`, `--limit`, `--after`), `--json` on
//! every kind of command (reads, commands, refusals, `up --wait`), and `vpngw rekey --ike`:
//! a re-authentication that strongSwan follows (a new ISAKMP SA on both sides, the old one
//! deleted, the same child SAs, pings through).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "operator-psk-0123456789abcdef";

fn config(lab: &Lab) -> String {
    let connections = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"active\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n\
         [[connection]]\nname = \"to-nowhere\"\nremote_address = \"198.51.100.99\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"10.9.0.0/24\"]\nstart = \"passive\"\n"
    );
    config_text(LEFT_WAN, &Vpngw::socket_for(lab, "operator"), true, &connections)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The JSON document a `--json` command printed on stdout (it must be one).
fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

fn child_spis(c: &Value) -> Vec<String> {
    let mut spis: Vec<String> =
        c["child_sas"].as_array().unwrap().iter().map(|ch| ch["spi_in"].as_str().unwrap().to_string()).collect();
    spis.sort();
    spis
}

#[test]
fn status_connection_list_json_and_reauthentication_on_demand() {
    let lab = Lab::gateways("operator");
    let charon = Charon::start_with(&lab, &lab.right, true);
    let sw_conn = SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "disable"), PSK);
    charon.load(&sw_conn);
    let v = Vpngw::start(&lab, &lab.left, "operator", &config(&lab), &[]);
    let before = v.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("not up\n{}", v.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)));

    // status NAME: that connection only, its cookies as strongSwan prints them (ours starred
    // on each side), traffic each way scaled, and when it last moved (the daemon looks every
    // second).
    let sw = charon.list_sas();
    assert_eq!(sw.ike_sas.len(), 1, "{sw:?}");
    let (cky_i, cky_r) = (
        before["ike_sa"]["initiator_cookie"].as_str().unwrap(),
        before["ike_sa"]["responder_cookie"].as_str().unwrap(),
    );
    assert!(sw.ike_sas[0].ends_with(&format!("{cky_i}_i {cky_r}_r*")), "strongSwan {:?}, vpngw {before}", sw.ike_sas);
    let shown = wait_for(Duration::from_secs(5), || {
        let out = v.cli(&["status", "to-right"]);
        let said = stdout(&out);
        (out.status.success() && said.matches("pkts, last ").count() == 2).then_some(said)
    })
    .unwrap_or_else(|| panic!("no last-packet times: {}", text(&v.cli(&["status", "to-right"]))));
    assert!(shown.contains(&format!("    cookies {cky_i}_i* {cky_r}_r\n")), "{shown}");
    assert!(shown.contains("\nto-right: up ") && !shown.contains("to-nowhere"), "{shown}");
    assert!(shown.contains("    in  ") && shown.contains("    out ") && !shown.contains("one-way"), "{shown}");
    let one = json(&v.cli(&["status", "to-right", "--json"]));
    assert_eq!(one["connections"].as_array().unwrap().len(), 1, "{one}");
    let child = &one["connections"][0]["child_sas"][0];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for field in ["last_inbound_at_unix", "last_outbound_at_unix"] {
        let at = child[field].as_u64().unwrap_or_else(|| panic!("{field} missing: {child}"));
        assert!(at <= now && now - at < 30, "{field} = {at}, now {now}");
    }
    // Exact counts in JSON (the table scales them).
    assert!(child["bytes_in"].as_u64().unwrap() > 0 && child["packets_out"].as_u64().unwrap() > 0, "{child}");
    let missing = v.cli(&["status", "no-such"]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    let missing = v.cli(&["status", "no-such", "--json"]);
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    assert_eq!((json(&missing)["ok"].clone(), json(&missing)["kind"].clone()), (false.into(), "not-found".into()));

    // connection list: a table by default, the API's documents with --json.
    let table = stdout(&v.cli(&["connection", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["NAME", "SOURCE", "STATE", "REMOTE", "START/MODE", "IKE", "ESP", "CHILD SAS"], "{table}");
    let row = |name: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {table}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(
        row("to-right"),
        ["to-right", "file", "up", RIGHT_WAN, "active/main", "aes-128/sha1/dh14", "aes-128/sha1/pfs", "disable", "1/1"],
        "{table}"
    );
    assert_eq!(row("to-nowhere")[..4], ["to-nowhere", "file", "down", "198.51.100.99"], "{table}");
    let listed = json(&v.cli(&["connection", "list", "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Counts, filters and pages (issue 20), done by the daemon: the counts line, then the
    // connections in name order.
    let all = stdout(&v.cli(&["status"]));
    assert!(all.contains("\nconnections: 2 (1 up, 0 connecting, 1 down)\n"), "{all}");
    assert!(all.find("\nto-nowhere: ").unwrap() < all.find("\nto-right: ").unwrap(), "name order: {all}");
    let summary = v.cli(&["status", "--summary"]);
    let said = stdout(&summary);
    assert!(
        summary.status.success() && said.ends_with("connections: 2 (1 up, 0 connecting, 1 down)\n"),
        "{}",
        text(&summary)
    );
    assert!(!said.contains("to-right"), "{said}");
    let down = stdout(&v.cli(&["status", "--state", "down"]));
    assert!(down.contains("connections matching --state down: 1 (0 up, 0 connecting, 1 down)"), "{down}");
    assert!(down.contains("\nto-nowhere: down ") && !down.contains("to-right"), "{down}");
    // A page of one, the command for the next, and that one the last.
    let first = stdout(&v.cli(&["status", "--name", "to-*", "--limit", "1"]));
    assert!(first.contains("showing 1 of 2: to-nowhere\n"), "{first}");
    assert!(first.ends_with("\nnext page: vpngw status --name 'to-*' --limit 1 --after to-nowhere\n"), "{first}");
    let second = v.cli(&["status", "--name", "to-*", "--limit", "1", "--after", "to-nowhere", "--json"]);
    let second = json(&second);
    assert_eq!(second["connections"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["connections"][0]["name"], "to-right", "{second}");
    assert_eq!(second["page"], serde_json::json!({"matched": 2, "by_state": {"up": 1, "connecting": 0, "down": 1}}));
    let nothing = v.cli(&["status", "--name", "nope-*"]);
    assert!(nothing.status.success() && stdout(&nothing).contains("no connection matches"), "{}", text(&nothing));
    // connection list: the same filters; the table says what matched; --json stays an array.
    let table = v.cli(&["connection", "list", "--state", "up,connecting", "--limit", "5"]);
    let said = stdout(&table);
    assert!(said.starts_with("NAME ") && said.contains("\nto-right ") && !said.contains("to-nowhere"), "{said}");
    assert!(said.ends_with("\nconnections matching --state up,connecting: 1 (1 up, 0 connecting, 0 down)\n"), "{said}");
    let paged = v.cli(&["connection", "list", "--limit", "1", "--json"]);
    assert_eq!(
        json(&paged).as_array().map(|a| a.iter().map(|c| c["name"].clone()).collect::<Vec<_>>()),
        Some(vec!["to-nowhere".into()])
    );
    assert!(
        String::from_utf8_lossy(&paged.stderr)
            .contains("next page: vpngw connection list --limit 1 --after to-nowhere"),
        "{}",
        text(&paged)
    );
    // Refused before asking: a state that does not exist, NAME with a filter.
    let bad = v.cli(&["status", "--state", "established"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("(up, connecting, down)"), "{}", text(&bad));
    let both = v.cli(&["status", "to-right", "--state", "up"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));

    // --json on commands: the answer, or the refusal, as a document on stdout.
    let down = v.cli(&["down", "to-nowhere", "--json"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(json(&down)["ok"], true);
    assert!(json(&down)["message"].as_str().unwrap().contains("to-nowhere"), "{}", text(&down));
    let up = v.cli(&["up", "to-right", "--wait", "--json"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(
        (json(&up)["outcome"].clone(), json(&up)["child_sas"].clone()),
        ("up".into(), 1.into()),
        "{}",
        text(&up)
    );
    let refused = v.cli(&["rekey", "to-nowhere", "--ike", "--json"]);
    assert_eq!(refused.status.code(), Some(1), "nothing to re-authenticate: {}", text(&refused));
    assert_eq!((json(&refused)["ok"].clone(), json(&refused)["kind"].clone()), (false.into(), "conflict".into()));
    assert!(refused.stderr.is_empty(), "--json writes refusals to stdout only: {}", text(&refused));
    let bad_filter = v.cli(&["log-level", "info,=", "--json"]);
    assert_eq!(bad_filter.status.code(), Some(2), "{}", text(&bad_filter));
    assert_eq!(json(&bad_filter)["kind"], "invalid", "{}", text(&bad_filter));

    // rekey --ike: a new ISAKMP SA with strongSwan; the child SAs stay, traffic goes on.
    let out = v.cli(&["rekey", "to-right", "--ike"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("re-authenticating"), "{}", text(&out));
    let after = wait_for(Duration::from_secs(20), || {
        v.connection("to-right")
            .filter(|c| c["state"] == "up" && c["ike_sa"]["initiator_cookie"] != before["ike_sa"]["initiator_cookie"])
    })
    .unwrap_or_else(|| panic!("no new IKE SA\n{}\n{}", v.log_text(), charon.log()));
    assert_eq!(child_spis(&after), child_spis(&before), "child SAs renegotiated: {after}");
    let sw_after = wait_for(Duration::from_secs(15), || {
        let s = charon.list_sas();
        (s.ike_established == 1 && s.ike_sas != sw.ike_sas).then_some(s)
    })
    .unwrap_or_else(|| panic!("strongSwan: {:?}\n{}", charon.list_sas(), charon.log()));
    let new_cky = after["ike_sa"]["initiator_cookie"].as_str().unwrap();
    assert!(sw_after.ike_sas[0].contains(&format!("{new_cky}_i")), "{sw_after:?} vs {after}");
    assert_eq!(sw_after.children.len(), 1, "{sw_after:?}");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 5), 5, "{}", v.log_text());
    let log = v.log_text();
    assert!(!log.contains("negotiation failed"), "{log}");
    assert_eq!(v.stop(&lab), Some(0));
}
