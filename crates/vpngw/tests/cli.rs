//! The command line without a network: `check` lists every problem and exits 2, `run` refuses an
//! invalid file before starting anything, clients report an absent daemon clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

fn vpngw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vpngw"))
}

fn write(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
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
    assert!(text.contains("connection[0].ike.dh_group = \"dh1\""), "{text}");
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
        "connection[0].remote_address",
        "connection[0].remote_subnets[0]",
        "connection[0].start",
        "connection[0].colour",
        "connection[0].ipsec.pfs",
        "connection[0].ipsec.lifetime_seconds",
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
        err.contains("connection[1].remote_subnets = \"10.2.0.128/25\": 10.1.0.0/16 -> 10.2.0.128/25 overlaps connection \"branch-1\" (connection[0])'s 10.1.0.0/24 -> 10.2.0.0/24"),
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection[0].pre_shared_key: required"));
    assert!(!std::path::Path::new("/tmp/vpngw-cli-test-never-created.sock").exists());
}

#[test]
fn clients_say_when_no_daemon_runs() {
    let out = vpngw().args(["status", "--socket", "/tmp/vpngw-no-such-daemon.sock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `vpngw run` running?"));
}
