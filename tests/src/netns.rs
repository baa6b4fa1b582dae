//! Network namespaces for system tests: two gateways joined by a veth "internet", each with
//! its protected network on a dummy interface. Every lab gets unique namespace names, so tests
//! run in parallel; dropping the lab stops what it started (by PID) and deletes the namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const LEFT_WAN: &str = "198.51.100.1";
pub const RIGHT_WAN: &str = "198.51.100.2";
pub const LEFT_NET: &str = "10.1.0.0/24";
pub const RIGHT_NET: &str = "10.2.0.0/24";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if !out.status.success() {
        panic!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// Fails the test early, with the reason, when it cannot create namespaces.
pub fn require_root() {
    let uid = run(&["id", "-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "system tests need root (network namespaces); run `make test` as root"
    );
}

#[derive(Debug)]
pub struct Lab {
    pub left: String,
    pub right: String,
    /// Hosts on each side's protected network: 10.1.0.10 and 10.2.0.10.
    pub left_host: String,
    pub right_host: String,
    pub dir: PathBuf,
    /// This lab's prefix of namespace names (unique per test process and lab).
    tag: String,
    /// Namespaces added with [`Lab::add_namespace`], deleted with the four above.
    extra: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
}

impl Lab {
    /// Four namespaces: left host (10.1.0.10) - left gateway (lan0 10.1.0.1, wan0
    /// 198.51.100.1) == right gateway (wan0 198.51.100.2, lan0 10.2.0.1) - right host
    /// (10.2.0.10). Gateways forward, but have no route to the other protected network: only a
    /// tunnel can carry it.
    pub fn gateways(name: &str) -> Self {
        let lab = Self::namespaces(name);
        run(&[
            "ip", "link", "add", "wan0", "netns", &lab.left, "type", "veth", "peer", "name", "wan0", "netns",
            &lab.right,
        ]);
        run(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &lab.left_host,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &lab.left,
        ]);
        run(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &lab.right_host,
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &lab.right,
        ]);
        for (gw, host, wan, lan, host_addr) in [
            (&lab.left, &lab.left_host, LEFT_WAN, "10.1.0.1", "10.1.0.10"),
            (&lab.right, &lab.right_host, RIGHT_WAN, "10.2.0.1", "10.2.0.10"),
        ] {
            lab.ip(gw, &["addr", "add", &format!("{wan}/24"), "dev", "wan0"]);
            lab.ip(gw, &["addr", "add", &format!("{lan}/24"), "dev", "lan0"]);
            lab.ip(host, &["addr", "add", &format!("{host_addr}/24"), "dev", "eth0"]);
            for (ns, dev) in [(gw, "wan0"), (gw, "lan0"), (host, "eth0")] {
                lab.ip(ns, &["link", "set", dev, "up"]);
            }
            lab.ip(host, &["route", "add", "default", "via", lan]);
            run(&["ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        lab
    }

    /// The four namespaces of [`Lab::gateways`] (loopback up, nothing else) and the lab's
    /// directory: the start of other topologies (the HA lab, `ha.rs`).
    pub fn namespaces(name: &str) -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("vg{}-{n}", std::process::id() % 100_000);
        let lab = Self {
            left: format!("{tag}-l"),
            right: format!("{tag}-r"),
            left_host: format!("{tag}-lh"),
            right_host: format!("{tag}-rh"),
            dir: std::env::temp_dir().join("vpngw-tests").join(format!("{name}-{tag}")),
            tag,
            extra: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir).unwrap_or_else(|e| panic!("{}: {e}", lab.dir.display()));
        for ns in [&lab.left, &lab.right, &lab.left_host, &lab.right_host] {
            run(&["ip", "netns", "add", ns]);
            lab.ip(ns, &["link", "set", "lo", "up"]);
        }
        lab
    }

    /// Creates one more namespace, `<tag>-<suffix>` (loopback up), deleted with the lab.
    pub fn add_namespace(&self, suffix: &str) -> String {
        let ns = format!("{}-{suffix}", self.tag);
        run(&["ip", "netns", "add", &ns]);
        self.extra.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ns.clone());
        self.ip(&ns, &["link", "set", "lo", "up"]);
        ns
    }

    /// `sysctl -w` in a namespace, e.g. `net.ipv4.ip_forward=1`.
    ///
    /// # Panics
    /// If sysctl refuses the setting.
    pub fn sysctl(&self, ns: &str, setting: &str) {
        run(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]);
    }

    pub fn ip(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "-n", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Adds these addresses (`ADDR/PREFIX`) to `dev` in `ns`, all in one `ip -batch` (one
    /// process, not one per address: labs with many peers add dozens).
    ///
    /// # Panics
    /// If ip refuses one of them.
    pub fn add_addresses(&self, ns: &str, dev: &str, addresses: &[String]) {
        let batch: String = addresses.iter().map(|a| format!("addr add {a} dev {dev}\n")).collect();
        self.ip_batch(ns, &batch);
    }

    /// Runs `ip -n NS -batch -` with `commands`, one `ip` command a line (without the `ip`).
    ///
    /// # Panics
    /// If ip refuses one of them.
    pub fn ip_batch(&self, ns: &str, commands: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["-n", ns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("ip -batch: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(commands.as_bytes()).unwrap_or_else(|e| panic!("ip -batch: {e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("ip -batch: {e}"));
        assert!(out.status.success(), "ip -n {ns} -batch failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs a command in a namespace and returns its output (not checked).
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// Drops (`on`) or lets through again what namespace `ns` receives on UDP 500 from
    /// address `from`, with an nftables table of its own named `table`.
    ///
    /// # Panics
    /// If nft refuses the change.
    pub fn drop_ike_from(&self, ns: &str, from: &str, table: &str, on: bool) {
        let script = if on {
            format!(
                "add table inet {table}\nadd chain inet {table} input {{ type filter hook input priority 0 ; }}\n\
                 add rule inet {table} input ip saddr {from} udp dport 500 drop\n"
            )
        } else {
            format!("delete table inet {table}\n")
        };
        let path = self.dir.join(format!("{table}-{ns}.nft"));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = self.exec(ns, "nft", &["-f", &path.display().to_string()]);
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts a long-running program in a namespace; it is stopped when the lab is dropped.
    /// Output goes to `log`.
    pub fn spawn(&self, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> u32 {
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]).args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
        pid
    }

    /// Kills a process this lab started with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to a process this lab started and waits for it; returns its exit code.
    pub fn stop(&self, pid: u32, grace: Duration) -> Option<i32> {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = children.iter().position(|c| c.id() == pid)?;
        let child = children.remove(i);
        drop(children);
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        Self::reap(child, grace)
    }

    /// Waits for a process this lab started to exit by itself (SIGKILL after `timeout`);
    /// returns its exit code.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Option<i32> {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = children.iter().position(|c| c.id() == pid)?;
        let child = children.remove(i);
        drop(children);
        Self::reap(child, timeout)
    }

    fn reap(mut child: Child, grace: Duration) -> Option<i32> {
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children: Vec<Child> =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for mut c in children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let extra = std::mem::take(&mut *self.extra.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for ns in [&self.left, &self.right, &self.left_host, &self.right_host].into_iter().chain(&extra) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A veth pair: `dev_a` in namespace `ns_a`, `dev_b` in `ns_b` (both down).
pub fn veth(ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) {
    run(&["ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b]);
}

/// Polls `f` every 50 ms until it returns `Some`, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
