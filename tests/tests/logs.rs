//! The daemon's log as a collector sees it (`--log-format json`, docs/operations.md "Logs"):
//! two vpngw gateways bring a tunnel up; `vpngw rekey/down/up` and one management API call are
//! each logged once as an action with its origin; every line naming an SPI names its
//! connection; no line has a `peer` field; a dead peer (the other daemon killed) is one WARN
//! line; a daemon that cannot start says so in one JSON line; and `run` with an invalid
//! configuration writes only JSON lines, one per problem.
//!
//! Dead peer detection cannot time out in less than 30 s (`[connection.dpd] timeout_seconds`
//! is 30-60), so this test takes about a minute.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::vpngw::{Vpngw, binary, config_text};

const PSK: &str = "logs-psk-0123456789abcdef";
const TOKEN: &str = "logs-token-3c9d1e7f20";
const API: &str = "http://127.0.0.1:9721";

fn connection(remote: &str, local_net: &str, remote_net: &str, start: &str) -> String {
    format!(
        "[[connection]]\nname = \"tunnel\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local_net}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{start}\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n\
         [connection.dpd]\ntimeout_seconds = 30\naction = \"clear\"\n"
    )
}

/// The log's lines, each parsed as JSON (a line that is not JSON fails the test).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line["fields"][name].as_str()
}

/// The action lines (`event=action`) for this action and origin.
fn actions<'a>(lines: &'a [Value], action: &str, origin: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            field(l, "event") == Some("action")
                && field(l, "action") == Some(action)
                && field(l, "origin") == Some(origin)
        })
        .collect()
}

/// One API request from inside a namespace; returns the status code.
fn api_post(lab: &Lab, ns: &str, path: &str) -> u16 {
    let code = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method="POST", data=b"")
req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print(r.status)
"#;
    let out = lab.exec(ns, "python3", &["-c", code, &format!("{API}{path}"), TOKEN]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no answer: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn json_log_names_connections_actions_and_one_line_per_event() {
    let lab = Lab::gateways("logs");
    let dir = lab.dir.join("logs-api");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let api = format!(
        "[api]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
        token.display(),
        dir.join("connections.toml").display()
    );
    let left_config = config_text(
        LEFT_WAN,
        &Vpngw::socket_for(&lab, "logs-left"),
        true,
        &format!("{}{api}", connection(RIGHT_WAN, LEFT_NET, RIGHT_NET, "active")),
    );
    let right_config = config_text(
        RIGHT_WAN,
        &Vpngw::socket_for(&lab, "logs-right"),
        true,
        &connection(LEFT_WAN, RIGHT_NET, LEFT_NET, "passive"),
    );
    let json = ["--log-format", "json"];
    let right = Vpngw::start(&lab, &lab.right, "logs-right", &right_config, &json);
    let left = Vpngw::start(&lab, &lab.left, "logs-left", &left_config, &json);
    left.wait_up("tunnel", Duration::from_secs(20)).unwrap_or_else(|| panic!("not up\n{}", left.log_text()));

    // The CLI: rekey, down, up; each answered, each logged once with origin=cli.
    for args in [["rekey", "tunnel"], ["down", "tunnel"], ["up", "tunnel"]] {
        let out = left.cli(&args);
        assert!(out.status.success(), "vpngw {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if args[0] == "rekey" {
            // The new pair there before the tunnel goes down.
            wait_for(Duration::from_secs(10), || {
                (left.log_text().matches("\"child SA established\"").count() >= 2).then_some(())
            })
            .unwrap_or_else(|| panic!("no rekey\n{}", left.log_text()));
        }
    }
    left.wait_up("tunnel", Duration::from_secs(20)).unwrap_or_else(|| panic!("not up again\n{}", left.log_text()));
    // The API: one rekey (202 started, or 409 when one is under way: logged alike).
    let code = api_post(&lab, &lab.left, "/api/v1/connections/tunnel/rekey");
    assert!(code == 202 || code == 409, "API rekey: {code}");

    // A second daemon next to the first cannot start (UDP 500 is held): one JSON ERROR line.
    let second = lab.dir.join("logs-second.toml");
    std::fs::write(
        &second,
        left_config
            .replace(&left.socket.display().to_string(), &lab.dir.join("logs-second.sock").display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(&second, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args = ["run", "--config", &second.display().to_string(), "--log-format", "json"];
    let out = lab.exec(&lab.left, &binary().display().to_string(), &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let failed = json_lines(&String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&Value> = failed.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{failed:?}");
    assert!(field(errors[0], "message").is_some_and(|m| m.contains("UDP")), "{}", errors[0]);

    // The peer's daemon dies without a word: dead peer detection on the left, one WARN line.
    let killed_at = left.log_text().lines().count();
    lab.kill(right.pid);
    wait_for(Duration::from_secs(50), || left.log_text().contains("dead peer").then_some(()))
        .unwrap_or_else(|| panic!("no dead peer detected\n{}", left.log_text()));
    // Whatever else the daemon would write about it comes in the same tick.
    std::thread::sleep(Duration::from_millis(500));

    let text = left.log_text();
    let lines = json_lines(&text);
    let right_lines = json_lines(&right.log_text());
    for l in lines.iter().chain(&right_lines) {
        let fields = l["fields"].as_object().unwrap_or_else(|| panic!("no fields: {l}"));
        assert!(!fields.contains_key("peer"), "a peer field (connection or remote is meant): {l}");
        if fields.keys().any(|k| k.contains("spi")) {
            assert!(fields.contains_key("connection"), "an SPI without its connection: {l}");
        }
    }
    for action in ["rekey", "down", "up"] {
        let found = actions(&lines, action, "cli");
        assert_eq!(found.len(), 1, "{action} from the CLI: {found:?}\n{text}");
        assert_eq!(field(found[0], "connection"), Some("tunnel"), "{}", found[0]);
        assert_eq!(found[0]["level"], "INFO", "{}", found[0]);
    }
    let from_api = actions(&lines, "rekey", "api");
    assert_eq!(from_api.len(), 1, "rekey from the API: {from_api:?}\n{text}");
    assert_eq!(field(from_api[0], "connection"), Some("tunnel"), "{}", from_api[0]);
    assert!(field(from_api[0], "client").is_some_and(|c| c.starts_with("127.0.0.1:")), "{}", from_api[0]);
    let all_actions = lines.iter().filter(|l| field(l, "event") == Some("action")).count();
    assert_eq!(all_actions, 4, "actions logged beyond the four asked for\n{text}");
    assert!(!text.contains(TOKEN) && !text.contains(PSK), "a secret in the log:\n{text}");

    let after_kill = json_lines(&text.lines().skip(killed_at).collect::<Vec<_>>().join("\n"));
    let dead: Vec<&Value> =
        after_kill.iter().filter(|l| l["level"] == "WARN" && l["fields"].to_string().contains("dead peer")).collect();
    assert_eq!(dead.len(), 1, "dead peer detection is one WARN line: {dead:?}\n{text}");
    assert_eq!(field(dead[0], "event"), Some("dpd_timeout"), "{}", dead[0]);
    assert_eq!(field(dead[0], "connection"), Some("tunnel"), "{}", dead[0]);
    assert!(field(dead[0], "remote").is_some_and(|r| r.starts_with(RIGHT_WAN)), "{}", dead[0]);
    // It is recorded all the same (vpngw diagnose, the metrics).
    let failure = left.wait_failure("tunnel", Duration::from_secs(5)).unwrap();
    assert!(failure["detail"].as_str().unwrap().contains("dead peer detection"), "{failure}");
    assert_eq!(left.stop(&lab), Some(0));
}

#[test]
fn run_with_an_invalid_configuration_and_json_logs_writes_one_json_line_per_problem() {
    let dir = std::env::temp_dir().join(format!("vpngw-logs-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vpngw.toml");
    std::fs::write(
        &config,
        "[gateway]\npublic_address = \"300.1.1.1\"\n\
         [[connection]]\nname = \"x\"\nremote_address = \"nowhere\"\npre_shared_key = \"secret-psk-0123456789\"\n\
         local_subnets = [\"10.1.0.0/33\"]\nremote_subnets = [\"10.2.0.0/24\"]\nstart = \"sometimes\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = config.display().to_string();
    // What `vpngw check` says: the problems, one `error:` line each, for people.
    let check = std::process::Command::new(binary()).args(["check", "--config", &cfg]).output().unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check_text = String::from_utf8_lossy(&check.stderr).into_owned();
    // `FILE:LINE:COL: error: PROBLEM` (the position is there when the key is in the file).
    let problems: Vec<&str> =
        check_text.lines().filter_map(|l| l.split_once("error: ").map(|(_, problem)| problem)).collect();
    assert!(problems.len() >= 3, "{check_text}");
    // The keys for programs, as `vpngw check --json` gives them.
    let check_json = std::process::Command::new(binary()).args(["check", "--json", "--config", &cfg]).output().unwrap();
    let check_json: Value = serde_json::from_slice(&check_json.stdout).unwrap();
    let keys: Vec<&str> =
        check_json["problems"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), problems.len(), "{check_json}\n{check_text}");

    let run = std::process::Command::new(binary())
        .args(["run", "--config", &cfg, "--log-format", "json"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.stdout.is_empty(), "{}", String::from_utf8_lossy(&run.stdout));
    let lines = json_lines(&stderr);
    assert_eq!(lines.len(), problems.len(), "one line per problem:\n{stderr}\n{check_text}");
    for ((line, problem), key) in lines.iter().zip(&problems).zip(&keys) {
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(field(line, "event"), Some("config_refused"), "{line}");
        assert_eq!(field(line, "file"), Some(cfg.as_str()), "{line}");
        assert_eq!(field(line, "key"), Some(*key), "{line} is not {problem}");
        assert!(field(line, "message").is_some_and(|m| m.contains(problem)), "{line} does not say {problem}");
    }
    assert!(!stderr.contains("secret-psk"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
