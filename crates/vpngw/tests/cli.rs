//! The command line without a network: `check` lists every problem and exits 2, `run` refuses an
//! invalid file before starting anything, clients report an absent daemon clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

fn vpngw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vpngw"))
}

/// Writes a file for the tests, mode 0600 (configurations here hold keys).
fn write(name: &str, text: &str) -> PathBuf {
    write_mode(name, text, 0o600)
}

fn write_mode(name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

const GOOD: &str = r#"
[gateway]
name = "gw-a"
public_address = "198.51.100.1"
control_socket = "/tmp/vpngw-cli-test-never-created.sock"

[[connection]]
name = "branch-1"
remote_address = "198.51.100.2"
pre_shared_key = "super-secret-psk-value"
local_subnets = ["10.1.0.0/24"]
remote_subnets = ["10.2.0.0/24"]
"#;

#[test]
fn check_accepts_the_seed_defaults_with_warnings() {
    let out = vpngw().args(["check", "--config"]).arg(write("good.toml", GOOD)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("OK (1 connection(s), 3 warning(s))"), "{text}");
    assert!(text.contains("connection \"branch-1\".ike.dh_group = \"dh1\""), "{text}");
    assert!(!text.contains("super-secret"), "{text}");
}

#[test]
fn check_lists_every_problem_and_exits_2() {
    let bad = GOOD.replace("\"198.51.100.2\"", "\"not-an-address\"").replace(
        "remote_subnets = [\"10.2.0.0/24\"]",
        "remote_subnets = [\"10.2.0.0/33\"]\nstart = \"never\"\ncolour = 1",
    ) + "[connection.ipsec]\npfs = \"dh99\"\nlifetime_seconds = \"long\"\n";
    let out = vpngw().args(["check", "--config"]).arg(write("bad.toml", &bad)).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for key in [
        "connection \"branch-1\".remote_address",
        "connection \"branch-1\".remote_subnets[0]",
        "connection \"branch-1\".start",
        "connection \"branch-1\".colour",
        "connection \"branch-1\".ipsec.pfs",
        "connection \"branch-1\".ipsec.lifetime_seconds",
    ] {
        assert!(err.contains(key), "{key} missing:\n{err}");
    }
    assert!(err.contains("6 problem(s)"), "{err}");
    assert!(!err.contains("super-secret"), "{err}");
}

#[test]
fn check_refuses_connections_whose_subnets_overlap_naming_both() {
    let second = "\n[[connection]]\nname = \"branch-2\"\nremote_address = \"198.51.100.3\"\n\
                  pre_shared_key = \"super-secret-psk-value\"\nlocal_subnets = [\"10.1.0.0/16\"]\nremote_subnets = [\"10.2.0.128/25\"]\n";
    let out =
        vpngw().args(["check", "--config"]).arg(write("overlap.toml", &format!("{GOOD}{second}"))).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("1 problem(s)"), "{err}");
    assert!(
        err.contains("connection \"branch-2\".remote_subnets = \"10.2.0.128/25\": 10.1.0.0/16 -> 10.2.0.128/25 overlaps connection \"branch-1\"'s 10.1.0.0/24 -> 10.2.0.0/24"),
        "{err}"
    );
    assert!(!err.contains("super-secret"), "{err}");
    // Disjoint remote subnets: accepted.
    let disjoint = second.replace("10.2.0.128/25", "10.3.0.0/24");
    let out =
        vpngw().args(["check", "--config"]).arg(write("disjoint.toml", &format!("{GOOD}{disjoint}"))).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_refuses_key_files_others_can_read_and_warns_about_such_a_file_with_inline_keys() {
    // A key file: 0644 refused (exit 2, the file, its mode, the fix), 0600 accepted.
    let key = write_mode("branch-1.psk", "file-secret-psk-value\n", 0o644);
    let with_file = GOOD.replace(
        "pre_shared_key = \"super-secret-psk-value\"",
        &format!("pre_shared_key_file = \"{}\"", key.display()),
    );
    let config = write("key-file.toml", &with_file);
    let out = vpngw().args(["check", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let path = key.display();
    assert!(err.contains(&format!("{path} has mode 0644")) && err.contains(&format!("chmod 600 {path}")), "{err}");
    assert!(!err.contains("file-secret"), "{err}");
    write_mode("branch-1.psk", "file-secret-psk-value\n", 0o600);
    let out = vpngw().args(["check", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Inline keys in a file others can read: accepted, with a warning line.
    let open = write_mode("inline-0644.toml", GOOD, 0o644);
    let out = vpngw().args(["check", "--config"]).arg(&open).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("OK (1 connection(s), 4 warning(s))"), "{text}");
    let line = format!(
        "warning: connection \"branch-1\".pre_shared_key = <redacted>: the file holds the keys of connection(s) \"branch-1\" inline, and {} has mode 0644",
        open.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(!text.contains("super-secret"), "{text}");
}

#[test]
fn check_points_at_each_problem_by_line_and_column_and_names_connections() {
    // Line 14 is `dh_group = "dh3"` (indented by 2), line 17 an unknown key of a connection
    // without a valid name.
    let bad = GOOD.replace(
        "remote_subnets = [\"10.2.0.0/24\"]\n",
        "remote_subnets = [\"10.2.0.0/24\"]\n[connection.ike]\n  dh_group = \"dh3\"\n",
    ) + "[[connection]]\nname = \"bad name\"\ncolour = 1\n";
    let path = write("located.toml", &bad);
    let lines: Vec<&str> = bad.lines().collect();
    assert_eq!((lines[13], lines[16]), ("  dh_group = \"dh3\"", "colour = 1"), "the test's own layout");
    let out = vpngw().args(["check", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let file = path.display();
    for line in [
        format!("{file}:14:14: error: connection \"branch-1\".ike.dh_group = \"dh3\": must be one of: "),
        format!("{file}:17:1: error: connection[1].colour: unknown key"),
        format!("{file}:16:8: error: connection[1].name = \"bad name\": 1-64 characters"),
    ] {
        assert!(err.lines().any(|l| l.starts_with(&line)), "{line}\nnot in:\n{err}");
    }
    // A required key that is missing points at its table.
    let missing = write("missing.toml", &GOOD.replace("remote_address = \"198.51.100.2\"\n", ""));
    let out = vpngw().args(["check", "--config"]).arg(&missing).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: connection \"branch-1\".remote_address: required"), "{err}");
    assert!(err.contains(&format!("{}:", missing.display())), "{err}");
}

#[test]
fn check_json_is_one_document_with_keys_names_and_places() {
    let bad = GOOD.to_string() + "[connection.ike]\ndh_group = \"dh3\"\n";
    let out = vpngw().args(["check", "--json", "--config"]).arg(write("json.toml", &bad)).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["ok"].as_bool(), doc["connections"].as_u64(), doc["host_checked"].as_bool()),
        (Some(false), Some(0), Some(false))
    );
    let p = &doc["problems"][0];
    assert_eq!(p["scope"], "config");
    assert_eq!(p["key"], "connection[0].ike.dh_group");
    assert_eq!(p["connection"], "branch-1");
    assert_eq!(p["value"], "\"dh3\"");
    assert_eq!((p["line"].as_u64(), p["column"].as_u64()), (Some(14), Some(12)), "{doc:#}");
    assert!(p["text"].as_str().unwrap().starts_with("connection \"branch-1\".ike.dh_group = \"dh3\": must be one of"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("super-secret"));
    // Valid: ok, the connections counted, the warnings with their places (a default's: its table).
    let out = vpngw().args(["check", "--json", "--config"]).arg(write("json-ok.toml", GOOD)).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["connections"].as_u64()), (Some(true), Some(1)));
    assert_eq!(doc["problems"], serde_json::json!([]));
    let w = doc["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 3, "{doc:#}");
    assert!(w.iter().all(|w| w["connection"] == "branch-1" && w["line"].is_u64()), "{doc:#}");
    // Not TOML: one problem for the whole file, with the parser's place.
    let out = vpngw()
        .args(["check", "--json", "--config"])
        .arg(write("json-syntax.toml", "[gateway]\nname = \n"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &doc["problems"][0];
    assert_eq!((p["key"].as_str(), p["line"].as_u64()), (Some(""), Some(2)), "{doc:#}");
    assert!(p["reason"].as_str().unwrap().starts_with("not valid TOML: "), "{doc:#}");
}

#[test]
fn check_reports_syntax_errors_and_missing_files() {
    let out = vpngw().args(["check", "--config"]).arg(write("syntax.toml", "[gateway\nx=")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
    let out = vpngw().args(["check", "--config", "/nonexistent/vpngw.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/vpngw.toml"));
}

#[test]
fn run_refuses_an_invalid_file_before_starting_anything() {
    let bad = GOOD.replace("pre_shared_key = \"super-secret-psk-value\"", "");
    let out = vpngw().args(["run", "--config"]).arg(write("run-bad.toml", &bad)).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection \"branch-1\".pre_shared_key: required"));
    assert!(!std::path::Path::new("/tmp/vpngw-cli-test-never-created.sock").exists());
}

#[test]
fn clients_say_when_no_daemon_runs() {
    let out = vpngw().args(["status", "--socket", "/tmp/vpngw-no-such-daemon.sock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "no control socket: exit 4 (the daemon is not running)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `vpngw run` running?"));
    // A socket file nobody listens on (a daemon that died): refused, also 4.
    let dead = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli").join("dead.sock");
    std::fs::create_dir_all(dead.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&dead);
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let out = vpngw().args(["down", "branch-1", "--socket"]).arg(&dead).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn clients_give_up_on_a_daemon_that_never_answers() {
    // Accepts every connection and never answers, as a daemon whose loop is stuck.
    let socket = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli").join("stuck.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let out = vpngw().args(["status", "--control-timeout", "1", "--socket"]).arg(&socket).output().unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the daemon did not answer within 1 s"), "{err}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
}

#[test]
fn help_lists_the_exit_codes_and_version_names_the_revision() {
    let out = vpngw().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in ["3    no such connection", "4    the daemon is not running", "124  timed out"] {
        assert!(help.contains(line), "{line:?} missing:\n{help}");
    }
    let out = vpngw().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with(&format!("vpngw {} (", env!("CARGO_PKG_VERSION"))), "{version}");
}
