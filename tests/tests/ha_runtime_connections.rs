//! Hot backup and the management API's runtime connections: one created on the active reaches
//! the standby through the sync channel and is part of its configuration (and its state file),
//! so a takeover finds it; one deleted on the active goes from the standby too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vpngw_tests::ha::{HaLab, Node, R_WAN, WAN_VIP};
use vpngw_tests::ha_pair::{ha_section, start_vpngw_and_keepalived};
use vpngw_tests::netns::{LEFT_NET, RIGHT_NET, wait_for};
use vpngw_tests::vpngw::{Vpngw, config_text};

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn start_node(ha: &HaLab, node: Node) -> Vpngw {
    let name = format!("gw-{}", node.letter());
    let dir = ha.lab.dir.join(format!("api-{}", node.letter()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, state) = (dir.join("api.token"), dir.join("connections.toml"));
    private(&token, "test-token-0123456789abcdef0123456789\n");
    let connection = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{R_WAN}\"\npre_shared_key = \"lab-psk-0123456789abcdef\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"passive\"\n"
    );
    let config = format!(
        "{}{}\n[api]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
        config_text(WAN_VIP, &Vpngw::socket_for(&ha.lab, &name), true, &connection),
        ha_section(ha, node),
        token.display(),
        state.display()
    );
    start_vpngw_and_keepalived(ha, node, &name, &config)
}

/// The connections `v` lists, by name, with where each is defined.
fn connections(v: &Vpngw) -> Vec<(String, String)> {
    let out = v.cli(&["connection", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["source"].as_str().unwrap().to_string()))
        .collect();
    names.sort();
    names
}

#[test]
fn a_runtime_connection_made_on_the_active_reaches_the_standby() {
    let ha = HaLab::new("ha-runtime-conns");
    let a = start_node(&ha, Node::A);
    assert!(ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(), "{}", ha.keepalived_log(Node::A));
    let b = start_node(&ha, Node::B);
    wait_for(Duration::from_secs(10), || (b.status()?["ha"]["in_sync"] == true).then_some(()))
        .unwrap_or_else(|| panic!("B never in sync: {}", b.log_text()));

    let file = ha.lab.dir.join("branch-7.toml");
    std::fs::write(
        &file,
        "remote_address = \"203.0.113.7\"\npre_shared_key = \"branch-7-psk-0123456789\"\n\
         local_subnets = [\"10.1.7.0/24\"]\nremote_subnets = [\"10.7.0.0/24\"]\nstart = \"passive\"\n\
         [ike]\nencryption = \"aes-256\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n",
    )
    .unwrap();
    let out = a.cli(&["connection", "add", "branch-7", "--file", &file.display().to_string()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stderr), a.log_text());
    let want = vec![("branch-7".to_string(), "api".to_string()), ("to-right".to_string(), "file".to_string())];
    assert_eq!(connections(&a), want);
    wait_for(Duration::from_secs(5), || (connections(&b) == want).then_some(()))
        .unwrap_or_else(|| panic!("B has {:?}\n{}", connections(&b), b.log_text()));
    // B keeps it in its own state file, as the API does.
    let state = std::fs::read_to_string(ha.lab.dir.join("api-b/connections.toml")).unwrap();
    assert!(state.contains("branch-7") && state.contains("203.0.113.7"), "{state}");
    // The standby negotiates nothing for it, and shows its parameters, never its key.
    let shown = b.connection("branch-7").unwrap();
    assert_eq!(shown["state"], "down", "{shown}");
    assert!(!b.status_text().contains("branch-7-psk"), "the key in B's status");
    assert!(!b.log_text().contains("branch-7-psk"), "the key in B's log");

    let out = a.cli(&["connection", "remove", "branch-7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = vec![("to-right".to_string(), "file".to_string())];
    wait_for(Duration::from_secs(5), || (connections(&b) == want).then_some(()))
        .unwrap_or_else(|| panic!("B still has {:?}\n{}", connections(&b), b.log_text()));
}
