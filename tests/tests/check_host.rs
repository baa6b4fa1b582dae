//! `vpngw check --host` in a network namespace of its own: the clean case passes; an address
//! not on the host, UDP 500 held by another program, forwarding off, a key file others can
//! read and one owned by someone else are each named; a running vpngw holding the ports is a
//! warning naming it. Nothing outside the namespace and the lab's directory is changed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vpngw_tests::netns::{LEFT_WAN, Lab, veth, wait_for};
use vpngw_tests::vpngw::{Vpngw, binary, config_text};

/// The lab's left namespace as a gateway's host: `wan0` (a veth to the right namespace) with
/// LEFT_WAN, forwarding on, rp_filter off. Returns its name.
fn host(lab: &Lab) -> String {
    let ns = lab.left.clone();
    veth(&ns, "wan0", &lab.right, "wan0");
    lab.ip(&ns, &["addr", "add", &format!("{LEFT_WAN}/24"), "dev", "wan0"]);
    lab.ip(&ns, &["link", "set", "wan0", "up"]);
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.wan0.rp_filter=0",
    ] {
        lab.sysctl(&ns, s);
    }
    ns
}

fn private(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A configuration for `public` with its key and the API token in files (mode 0600) next to it.
fn configuration(lab: &Lab, name: &str, public: &str) -> PathBuf {
    let dir = lab.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    private(&dir.join("branch-1.psk"), "check-host-psk-0123456789\n", 0o600);
    private(&dir.join("api.token"), "check-host-token-0123456789abcdef\n", 0o600);
    let connection = "[[connection]]\nname = \"branch-1\"\nremote_address = \"198.51.100.2\"\n\
                      pre_shared_key_file = \"branch-1.psk\"\nlocal_subnets = [\"10.1.0.0/24\"]\n\
                      remote_subnets = [\"10.2.0.0/24\"]\n\n[api]\ntoken_file = \"api.token\"\n";
    let path = dir.join("vpngw.toml");
    private(&path, &config_text(public, &dir.join("vpngw.sock"), false, connection), 0o600);
    path
}

/// `vpngw check --host --json` in `ns`: the exit code and the document.
fn check(lab: &Lab, ns: &str, config: &Path) -> (Option<i32>, Value) {
    let out = lab.exec(
        ns,
        &binary().display().to_string(),
        &["check", "--host", "--json", "--config", &config.display().to_string()],
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), doc)
}

fn host_items<'a>(doc: &'a Value, list: &str) -> Vec<&'a Value> {
    doc[list].as_array().unwrap().iter().filter(|i| i["scope"] == "host").collect()
}

#[test]
fn a_ready_host_passes_and_each_missing_piece_is_named() {
    let lab = Lab::namespaces("check-host");
    let ns = host(&lab);
    let config = configuration(&lab, "ready", LEFT_WAN);

    // Clean: exit 0, the host looked at, nothing found on it.
    let (code, doc) = check(&lab, &ns, &config);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(
        (doc["ok"].as_bool(), doc["host_checked"].as_bool(), doc["connections"].as_u64()),
        (Some(true), Some(true), Some(1))
    );
    assert!(host_items(&doc, "problems").is_empty() && host_items(&doc, "warnings").is_empty(), "{doc:#}");
    // The text: a summary line for the file and one for the host.
    let out =
        lab.exec(&ns, &binary().display().to_string(), &["check", "--host", "--config", &config.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OK (1 connection(s)") && text.contains("host: OK (0 problem(s), 0 warning(s))"), "{text}");

    // An address this host does not have: a problem pointing at the key in the file.
    let elsewhere = configuration(&lab, "elsewhere", "198.51.100.9");
    let (code, doc) = check(&lab, &ns, &elsewhere);
    assert_eq!(code, Some(2), "{doc:#}");
    let p = host_items(&doc, "problems");
    assert_eq!(p.len(), 1, "{doc:#}");
    assert_eq!(p[0]["key"], "gateway.public_address");
    assert!(p[0]["reason"].as_str().unwrap().starts_with("not an address of this host"), "{doc:#}");
    let written = std::fs::read_to_string(&elsewhere).unwrap();
    let line = written.lines().position(|l| l.starts_with("public_address")).unwrap() + 1;
    assert_eq!((p[0]["line"].as_u64(), p[0]["column"].as_u64()), (Some(line as u64), Some(18)), "{doc:#}");
    let out = lab.exec(
        &ns,
        &binary().display().to_string(),
        &["check", "--host", "--config", &elsewhere.display().to_string()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:{line}:18: error: gateway.public_address = \"198.51.100.9\": not an address of this host",
        elsewhere.display()
    );
    assert!(err.contains(&want), "{want}\nnot in:\n{err}");

    // UDP 500 held by another program: named with its pid.
    let holder = lab.spawn(
        &ns,
        &vpngw_tests::tool::python(),
        &["-c", &format!("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{LEFT_WAN}', 500))\ntime.sleep(60)")],
        &[],
        &lab.dir.join("holder.log"),
    );
    let doc = wait_for(Duration::from_secs(10), || {
        let (code, doc) = check(&lab, &ns, &config);
        (code == Some(2)).then_some(doc)
    })
    .unwrap_or_else(|| panic!("the held port was not found: {}", check(&lab, &ns, &config).1));
    let p = host_items(&doc, "problems");
    assert_eq!(p.len(), 1, "{doc:#}");
    let reason = p[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("UDP 500 on it is held by python"), "{reason}");
    assert!(reason.contains(&format!("(pid {holder})")), "{reason}");
    lab.kill(holder);

    // Forwarding off and strict reverse path filtering: a problem and warnings.
    lab.sysctl(&ns, "net.ipv4.ip_forward=0");
    lab.sysctl(&ns, "net.ipv4.conf.wan0.rp_filter=1");
    let (code, doc) = check(&lab, &ns, &config);
    assert_eq!(code, Some(2), "{doc:#}");
    let p = host_items(&doc, "problems");
    assert_eq!(
        (p.len(), &p[0]["key"], &p[0]["value"]),
        (1, &Value::from("net.ipv4.ip_forward"), &Value::from("0")),
        "{doc:#}"
    );
    assert_eq!(p[0]["line"], Value::Null);
    let w = host_items(&doc, "warnings");
    assert_eq!(w.len(), 1, "{doc:#}");
    assert_eq!(w[0]["key"], "net.ipv4.conf.wan0.rp_filter");
    assert!(w[0]["reason"].as_str().unwrap().contains("rp_filter=2"), "{doc:#}");
    lab.sysctl(&ns, "net.ipv4.ip_forward=1");
    lab.sysctl(&ns, "net.ipv4.conf.wan0.rp_filter=0");

    // The key file readable by others: refused (the configuration check already says so);
    // the token file owned by another user: a warning naming the owner.
    let dir = config.parent().unwrap();
    std::fs::set_permissions(dir.join("branch-1.psk"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, doc) = check(&lab, &ns, &config);
    assert_eq!(code, Some(2), "{doc:#}");
    let p = doc["problems"].as_array().unwrap();
    assert_eq!(p.len(), 1, "{doc:#}");
    assert_eq!(
        (&p[0]["key"], &p[0]["connection"]),
        (&Value::from("connection[0].pre_shared_key_file"), &Value::from("branch-1"))
    );
    assert!(p[0]["reason"].as_str().unwrap().contains("has mode 0644"), "{doc:#}");
    assert!(p[0]["text"].as_str().unwrap().starts_with("connection \"branch-1\".pre_shared_key_file = "), "{doc:#}");
    assert_eq!(doc["host_checked"], false, "an invalid configuration is not checked against the host");
    std::fs::set_permissions(dir.join("branch-1.psk"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(dir.join("api.token"), Some(65534), None).unwrap();
    let (code, doc) = check(&lab, &ns, &config);
    assert_eq!(code, Some(0), "{doc:#}");
    let w = host_items(&doc, "warnings");
    assert_eq!((w.len(), &w[0]["key"]), (1, &Value::from("api.token_file")), "{doc:#}");
    assert!(w[0]["reason"].as_str().unwrap().contains("is owned by uid 65534"), "{doc:#}");
    std::os::unix::fs::chown(dir.join("api.token"), Some(0), None).unwrap();
}

#[test]
fn a_running_vpngw_holding_the_ports_is_a_warning_that_names_it() {
    let lab = Lab::namespaces("check-host-running");
    let ns = host(&lab);
    let connection = "[[connection]]\nname = \"branch-1\"\nremote_address = \"198.51.100.2\"\n\
                      pre_shared_key = \"check-host-psk-0123456789\"\nlocal_subnets = [\"10.1.0.0/24\"]\n\
                      remote_subnets = [\"10.2.0.0/24\"]\nstart = \"passive\"\n";
    let v = Vpngw::start(
        &lab,
        &ns,
        "held",
        &config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "held"), false, connection),
        &[],
    );
    let (code, doc) = check(&lab, &ns, &v.config);
    assert_eq!(code, Some(0), "{doc:#}");
    let w: Vec<String> =
        host_items(&doc, "warnings").iter().map(|w| w["reason"].as_str().unwrap().to_string()).collect();
    for port in [500, 4500] {
        let want = format!("UDP {port} on it is held by vpngw (pid {})", v.pid);
        assert!(w.iter().any(|r| r.starts_with(&want)), "{want} not in {w:#?}");
    }
    v.stop(&lab);
}
