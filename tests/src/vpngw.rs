//! Running the `vpngw` binary under test in a namespace, and reading its status.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{Lab, wait_for};

/// The `vpngw` binary of this build (`make test` builds it before running the tests).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("VPNGW_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/vpngw
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let candidate = exe.parent().and_then(|d| d.parent()).map(|d| d.join("vpngw"));
    match candidate {
        Some(p) if p.exists() => p,
        _ => panic!("vpngw binary not found next to the tests; run `cargo build -p vpngw` first (make test does)"),
    }
}

#[derive(Debug)]
pub struct Vpngw {
    pub ns: String,
    pub pid: u32,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// A gateway configuration: `[gateway]` for this address plus the given connection sections.
pub fn config_text(public_address: &str, socket: &std::path::Path, tuning: bool, connections: &str) -> String {
    let tuning = if tuning { "\n[tuning]\nretransmit_initial_ms = 500\nretransmit_tries = 3\n" } else { "" };
    format!(
        "[gateway]\nname = \"gw-{public_address}\"\npublic_address = \"{public_address}\"\ncontrol_socket = \"{}\"\n{tuning}\n{connections}",
        socket.display()
    )
}

/// An `[ha]` section for a gateway that runs as the one server of a hot-backup pair whose
/// partner never comes (the partner's sync address on the namespace's loopback has no
/// listener). It holds its public address, so it takes the active role at once: what the
/// surfaces show with `[ha]`, without a second server and keepalived (tests/src/ha.rs has those).
pub fn lone_ha_section(lab: &Lab, name: &str) -> String {
    let dir = lab.dir.join(format!("vpngw-{name}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let key = dir.join("sync.key");
    // A test key; vpngw refuses a key file that group or others can read.
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    format!(
        "\n[ha]\nnode_name = \"{name}-a\"\npartner_name = \"{name}-b\"\nlisten = \"127.0.0.1:9722\"\n\
         partner = \"127.0.0.1:9723\"\nkey_file = \"{}\"\ntrack_file = \"{}\"\n",
        key.display(),
        dir.join("ha-track").display()
    )
}

impl Vpngw {
    /// Writes `config` and starts `vpngw run` in `ns`; returns once its control socket exists.
    pub fn start(lab: &Lab, ns: &str, name: &str, config: &str, extra: &[&str]) -> Self {
        let v = Self::spawn(lab, ns, name, config, extra, &[]);
        wait_for(Duration::from_secs(10), || v.socket.exists().then_some(()))
            .unwrap_or_else(|| panic!("vpngw did not start:\n{}", v.log_text()));
        v
    }

    /// Writes `config` and starts `vpngw run` in `ns` with `env` added to its environment (a
    /// `RUST_LOG` there replaces the default), without waiting for it: for tests that watch
    /// the start itself (systemd's notify socket).
    pub fn spawn(lab: &Lab, ns: &str, name: &str, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = lab.dir.join(format!("vpngw-{name}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.join("vpngw.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
        // Inline keys: vpngw warns about a configuration file others can read.
        std::fs::set_permissions(&config_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let log = dir.join("vpngw.log");
        let cfg = config_path.display().to_string();
        let mut args = vec!["run", "--config", &cfg];
        args.extend_from_slice(extra);
        let bin = binary();
        let mut environment = vec![("RUST_LOG", "info,vpngw_ike=debug")];
        environment.retain(|(k, _)| !env.iter().any(|(e, _)| e == k));
        environment.extend_from_slice(env);
        let pid = lab.spawn(ns, &bin.display().to_string(), &args, &environment, &log);
        let socket = dir.join("vpngw.sock");
        Self { ns: ns.into(), pid, config: config_path, socket, log }
    }

    pub fn socket_for(lab: &Lab, name: &str) -> PathBuf {
        lab.dir.join(format!("vpngw-{name}")).join("vpngw.sock")
    }

    pub fn status(&self) -> Option<Value> {
        let out = Command::new(binary())
            .args(["status", "--json", "--socket", &self.socket.display().to_string()])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status_text(&self) -> String {
        let out = Command::new(binary()).args(["status", "--socket", &self.socket.display().to_string()]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// The status of one connection.
    pub fn connection(&self, name: &str) -> Option<Value> {
        self.status()?["connections"].as_array()?.iter().find(|c| c["name"] == name).cloned()
    }

    /// Waits until the connection is up (IKE SA and every child SA), returns its status.
    pub fn wait_up(&self, name: &str, timeout: Duration) -> Option<Value> {
        wait_for(timeout, || self.connection(name).filter(|c| c["state"] == "up"))
    }

    /// Waits for a recorded failure of the connection.
    pub fn wait_failure(&self, name: &str, timeout: Duration) -> Option<Value> {
        wait_for(timeout, || {
            self.connection(name).and_then(|c| (!c["last_failure"].is_null()).then(|| c["last_failure"].clone()))
        })
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .args(["--socket", &self.socket.display().to_string()])
            .output()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait: returns the exit code.
    pub fn stop(&self, lab: &Lab) -> Option<i32> {
        lab.stop(self.pid, Duration::from_secs(5))
    }
}
