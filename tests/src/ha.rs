//! The hot-backup lab: two vpngw nodes, A and B, share a public and a LAN virtual address that
//! keepalived (VRRPv3, the sample configurations of `deploy/ha/`) moves between them; a right
//! gateway R (strongSwan or a third vpngw) knows only the public virtual address as its peer.
//!
//! ```text
//! left host eth0 10.1.0.10 ──┐
//! A lan0 10.1.0.2 ───────────┤ br-lan   LAN VIP 10.1.0.1 (the left host's default route)
//! B lan0 10.1.0.3 ───────────┘
//! A sync0 192.0.2.1 ─────────┐ br-sync  state sync only
//! B sync0 192.0.2.2 ─────────┘
//! A wan0 198.51.100.11 ──────┐
//! B wan0 198.51.100.12 ──────┤ br-wan   WAN VIP 198.51.100.1 (R's peer)
//! R wan0 198.51.100.2 ───────┘
//! R lan0 10.2.0.1 ─── right host eth0 10.2.0.10 (a veth of its own)
//! ```
//!
//! The three bridges live in one "switch" namespace. VRRP runs on the WAN and LAN bridges (the
//! links whose failure must move the addresses); state sync has a bridge of its own, so a test
//! can cut sync while VRRP still sees both nodes, or cut VRRP (an nftables drop of protocol 112)
//! while sync and all other traffic still flow: the two partial partitions.
//!
//! The [`Lab`] inside (`lab`) owns the namespaces and the processes: `lab.left` is node A,
//! `lab.right` is R, so [`crate::vpngw::Vpngw::start`], [`crate::strongswan::Charon::start`] and
//! [`crate::traffic`] work on it unchanged.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::netns::{Lab, wait_for};

pub const WAN_VIP: &str = "198.51.100.1";
pub const LAN_VIP: &str = "10.1.0.1";
pub const R_WAN: &str = "198.51.100.2";
pub const R_LAN: &str = "10.2.0.1";

/// Where the sample keepalived configurations and notify script live.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ha")
}

/// The check command of the sample configurations, replaced by the test's.
/// The sample's track file, which vpngw writes (`[ha] track_file`).
const SAMPLE_TRACK: &str = "\"/run/vpngw/ha-track\"";
const SAMPLE_CHECK: &str = "\"/usr/bin/vpngw ha check --socket /run/vpngw/vpngw.sock\"";
/// The notify line's script and command, replaced by the lab's copies.
const SAMPLE_NOTIFY: &str =
    "\"/etc/keepalived/vpngw-notify.sh /usr/bin/vpngw ha notify --socket /run/vpngw/vpngw.sock\"";

/// One of the two hot-backup nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
}

impl Node {
    pub const BOTH: [Self; 2] = [Self::A, Self::B];

    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// "a" or "b": in file and interface names.
    pub fn letter(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// The node's own address on the WAN bridge.
    pub fn wan(self) -> &'static str {
        match self {
            Self::A => "198.51.100.11",
            Self::B => "198.51.100.12",
        }
    }

    /// The node's own address on the LAN bridge.
    pub fn lan(self) -> &'static str {
        match self {
            Self::A => "10.1.0.2",
            Self::B => "10.1.0.3",
        }
    }

    /// The node's address on the sync bridge (192.0.2.0/24).
    pub fn sync(self) -> &'static str {
        match self {
            Self::A => "192.0.2.1",
            Self::B => "192.0.2.2",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

/// Which sample configuration keepalived runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KaOptions {
    /// `keepalived-<node>-unicast.conf` (adverts to the peer's address) instead of multicast.
    pub unicast: bool,
}

#[derive(Debug)]
struct Keepalived {
    pid: u32,
    vrrp_pid_file: PathBuf,
}

/// The namespaces, links and addresses of the drawing above, and what runs on the nodes.
#[derive(Debug)]
pub struct HaLab {
    pub lab: Lab,
    /// Node A's namespace (the same as `lab.left`).
    pub a: String,
    pub b: String,
    /// The right gateway's namespace (the same as `lab.right`).
    pub r: String,
    /// The namespace of the three bridges.
    pub switch: String,
    keepalived: Mutex<[Option<Keepalived>; 2]>,
    vpngw: Mutex<[Option<u32>; 2]>,
    /// Crashed and not revived: the addresses left on such a node reach no one.
    crashed: Mutex<[bool; 2]>,
}

impl HaLab {
    /// Builds the lab. Nothing runs yet; the left host's default route is the LAN virtual
    /// address, which no node holds until keepalived runs.
    pub fn new(name: &str) -> Self {
        let lab = Lab::namespaces(name);
        let b = lab.add_namespace("b");
        let switch = lab.add_namespace("sw");
        let ha = Self {
            a: lab.left.clone(),
            b,
            r: lab.right.clone(),
            switch,
            lab,
            keepalived: Mutex::new([None, None]),
            vpngw: Mutex::new([None, None]),
            crashed: Mutex::new([false, false]),
        };
        for bridge in ["br-wan", "br-lan", "br-sync"] {
            // Snooping off: the bridge would otherwise drop VRRP's multicast until it has seen an
            // IGMP report for 224.0.0.18.
            ha.lab.ip(&ha.switch, &["link", "add", bridge, "type", "bridge", "mcast_snooping", "0"]);
            ha.lab.ip(&ha.switch, &["link", "set", bridge, "up"]);
        }
        for node in Node::BOTH {
            let l = node.letter();
            let ns = ha.ns(node).to_string();
            ha.plug(&ns, "wan0", "br-wan", &format!("{l}-wan"), &format!("{}/24", node.wan()));
            ha.plug(&ns, "lan0", "br-lan", &format!("{l}-lan"), &format!("{}/24", node.lan()));
            ha.plug(&ns, "sync0", "br-sync", &format!("{l}-sync"), &format!("{}/24", node.sync()));
            ha.lab.sysctl(&ns, "net.ipv4.ip_forward=1");
            // The standby binds the virtual addresses before it holds them (IKE's and ESP's
            // sockets are ready at takeover).
            ha.lab.sysctl(&ns, "net.ipv4.ip_nonlocal_bind=1");
        }
        let (r, left_host, right_host) = (ha.r.clone(), ha.lab.left_host.clone(), ha.lab.right_host.clone());
        ha.plug(&r, "wan0", "br-wan", "r-wan", &format!("{R_WAN}/24"));
        ha.plug(&left_host, "eth0", "br-lan", "lh-lan", "10.1.0.10/24");
        ha.lab.ip(&left_host, &["route", "add", "default", "via", LAN_VIP]);
        crate::netns::veth(&r, "lan0", &right_host, "eth0");
        ha.lab.ip(&r, &["addr", "add", &format!("{R_LAN}/24"), "dev", "lan0"]);
        ha.lab.ip(&right_host, &["addr", "add", "10.2.0.10/24", "dev", "eth0"]);
        for (ns, dev) in [(&r, "lan0"), (&right_host, "eth0")] {
            ha.lab.ip(ns, &["link", "set", dev, "up"]);
        }
        ha.lab.ip(&right_host, &["route", "add", "default", "via", R_LAN]);
        ha.lab.sysctl(&r, "net.ipv4.ip_forward=1");
        ha
    }

    /// A veth from `ns`'s `dev` (with `addr`, up) to port `port` of `bridge` in the switch.
    fn plug(&self, ns: &str, dev: &str, bridge: &str, port: &str, addr: &str) {
        crate::netns::veth(&self.switch, port, ns, dev);
        self.lab.ip(&self.switch, &["link", "set", port, "master", bridge, "up"]);
        self.lab.ip(ns, &["addr", "add", addr, "dev", dev]);
        self.lab.ip(ns, &["link", "set", dev, "up"]);
    }

    pub fn ns(&self, node: Node) -> &str {
        match node {
            Node::A => &self.a,
            Node::B => &self.b,
        }
    }

    /// Plain routes between the protected networks through the virtual addresses, for tests of
    /// the harness without a tunnel (a real HA test leaves routing to the tunnel).
    pub fn route_without_tunnel(&self) {
        for node in Node::BOTH {
            self.lab.ip(self.ns(node), &["route", "add", "10.2.0.0/24", "via", R_WAN]);
        }
        self.lab.ip(&self.r, &["route", "add", "10.1.0.0/24", "via", WAN_VIP]);
    }

    /// Where a node's keepalived files go: the configuration, pid files, log, the wrappers of
    /// the test's commands and `transitions.log` (one `<unix time> <STATE>` line per notify).
    pub fn keepalived_dir(&self, node: Node) -> PathBuf {
        self.lab.dir.join(format!("keepalived-{}", node.letter()))
    }

    /// The node's sample configuration from `deploy/ha/` with the check replaced by `dir/check.sh`
    /// and the notify line by the lab's copy of `notify.sh` calling `dir/notify-command.sh`.
    pub fn keepalived_conf(&self, node: Node, opts: KaOptions) -> String {
        let file = deploy_dir().join(format!(
            "keepalived-{}{}.conf",
            node.letter(),
            if opts.unicast { "-unicast" } else { "" }
        ));
        let sample = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dir = self.keepalived_dir(node);
        for needle in [SAMPLE_CHECK, SAMPLE_NOTIFY, SAMPLE_TRACK] {
            assert_eq!(sample.matches(needle).count(), 1, "{} should contain {needle} once", file.display());
        }
        sample
            .replace(SAMPLE_TRACK, &format!("\"{}\"", self.track_file(node).display()))
            .replace(SAMPLE_CHECK, &format!("\"{}\"", dir.join("check.sh").display()))
            .replace(
                SAMPLE_NOTIFY,
                &format!("\"{} {}\"", dir.join("vpngw-notify.sh").display(), dir.join("notify-command.sh").display()),
            )
    }

    /// The node's keepalived track file (the sample's /run/vpngw/ha-track): what `[ha]
    /// track_file` of the node's vpngw names.
    pub fn track_file(&self, node: Node) -> PathBuf {
        self.keepalived_dir(node).join("ha-track")
    }

    /// [`HaLab::start_keepalived_with`] the multicast configuration.
    pub fn start_keepalived(&self, node: Node, notify_cmd: &str, check_cmd: &str) -> u32 {
        self.start_keepalived_with(node, notify_cmd, check_cmd, KaOptions::default())
    }

    /// Starts keepalived (VRRP only, foreground) on `node` with its sample configuration.
    /// `notify_cmd` is a shell command that gets the new state (MASTER, BACKUP, FAULT, STOP) as
    /// its last argument, e.g. `vpngw --socket SOCK ha notify`; `check_cmd` is a shell command
    /// whose exit status is the node's health, e.g. `vpngw --socket SOCK ha check`. Waits for the
    /// VRRP process; returns keepalived's pid.
    ///
    /// # Panics
    /// If keepalived is missing or does not start.
    pub fn start_keepalived_with(&self, node: Node, notify_cmd: &str, check_cmd: &str, opts: KaOptions) -> u32 {
        let keepalived = crate::tool::require("keepalived", "apt-get install keepalived");
        assert!(
            self.keepalived.lock().unwrap_or_else(PoisonError::into_inner)[node.index()].is_none(),
            "keepalived already runs on {node:?}"
        );
        let dir = self.keepalived_dir(node);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let transitions = dir.join("transitions.log");
        write_script(&dir.join("check.sh"), &format!("#!/bin/sh\n{check_cmd}\n"));
        write_script(
            &dir.join("notify-command.sh"),
            &format!("#!/bin/sh\necho \"$(date +%s.%N) $1\" >> {}\n{notify_cmd} \"$1\"\n", transitions.display()),
        );
        let notify = deploy_dir().join("notify.sh");
        let text = std::fs::read_to_string(&notify).unwrap_or_else(|e| panic!("{}: {e}", notify.display()));
        // A copy: keepalived's script security refuses scripts in directories a non-root user
        // could write to, and the source tree may belong to one.
        write_script(&dir.join("vpngw-notify.sh"), &text);
        let conf = dir.join("keepalived.conf");
        std::fs::write(&conf, self.keepalived_conf(node, opts)).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
        let pid_file = dir.join("keepalived.pid");
        let vrrp_pid_file = dir.join("vrrp.pid");
        // A crashed keepalived leaves its pid files behind.
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(&vrrp_pid_file);
        let path = |p: &Path| p.display().to_string();
        let pid = self.lab.spawn(
            self.ns(node),
            &keepalived,
            &[
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "--use-file",
                &path(&conf),
                "--pid",
                &path(&pid_file),
                "--vrrp_pid",
                &path(&vrrp_pid_file),
                "--checkers_pid",
                &path(&dir.join("checkers.pid")),
            ],
            &[],
            &dir.join("keepalived.log"),
        );
        wait_for(Duration::from_secs(5), || read_pid(&vrrp_pid_file)).unwrap_or_else(|| {
            panic!("keepalived on {node:?} did not start:\n{}", self.keepalived_log(node));
        });
        self.keepalived.lock().unwrap_or_else(PoisonError::into_inner)[node.index()] =
            Some(Keepalived { pid, vrrp_pid_file });
        pid
    }

    pub fn keepalived_log(&self, node: Node) -> String {
        std::fs::read_to_string(self.keepalived_dir(node).join("keepalived.log")).unwrap_or_default()
    }

    /// The states keepalived notified on `node`, oldest first.
    pub fn transitions(&self, node: Node) -> Vec<String> {
        let text = std::fs::read_to_string(self.keepalived_dir(node).join("transitions.log")).unwrap_or_default();
        text.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_string).collect()
    }

    /// Stops keepalived on `node` gracefully (SIGTERM: it releases the addresses and sends a
    /// priority-0 advert, so the peer takes over at once).
    pub fn stop_keepalived(&self, node: Node) {
        let k = self.keepalived.lock().unwrap_or_else(PoisonError::into_inner)[node.index()].take();
        if let Some(k) = k {
            self.lab.stop(k.pid, Duration::from_secs(5));
        }
    }

    /// Registers the pid of the vpngw running on `node` (started with `lab.spawn`, e.g. by
    /// [`crate::vpngw::Vpngw::start`]) so that [`HaLab::crash`] kills it too.
    pub fn register_vpngw(&self, node: Node, pid: u32) {
        self.vpngw.lock().unwrap_or_else(PoisonError::into_inner)[node.index()] = Some(pid);
    }

    /// A host crash: SIGKILL to the node's vpngw (if registered) and keepalived, and its three
    /// switch ports down. Nothing on the node says goodbye; its addresses (the virtual ones
    /// too) stay configured on the dead node, out of everyone's reach.
    pub fn crash(&self, node: Node) {
        if let Some(pid) = self.vpngw.lock().unwrap_or_else(PoisonError::into_inner)[node.index()].take() {
            self.lab.kill(pid);
        }
        let k = self.keepalived.lock().unwrap_or_else(PoisonError::into_inner)[node.index()].take();
        if let Some(k) = k {
            // Freeze the parent first: it would restart a VRRP child killed under it, and a child
            // that outlives its parent shuts down gracefully (releasing the addresses), which a
            // crash does not.
            signal("STOP", k.pid);
            if let Some(vrrp) = read_pid(&k.vrrp_pid_file) {
                signal("KILL", vrrp);
            }
            self.lab.kill(k.pid);
        }
        self.ports(node, "down");
        self.crashed.lock().unwrap_or_else(PoisonError::into_inner)[node.index()] = true;
    }

    /// The crashed node boots again: the addresses the crash left behind are gone (a reboot
    /// clears them) and its switch ports come up. keepalived and vpngw are the test's to start.
    pub fn revive(&self, node: Node) {
        let ns = self.ns(node).to_string();
        for (vip, dev) in [(WAN_VIP, "wan0"), (LAN_VIP, "lan0")] {
            let _ = self.lab.exec(&ns, "ip", &["addr", "del", &format!("{vip}/24"), "dev", dev]);
        }
        self.ports(node, "up");
        self.crashed.lock().unwrap_or_else(PoisonError::into_inner)[node.index()] = false;
    }

    fn ports(&self, node: Node, state: &str) {
        for link in ["wan", "lan", "sync"] {
            self.lab.ip(&self.switch, &["link", "set", &format!("{}-{link}", node.letter()), state]);
        }
    }

    /// Cuts the sync link silently: the bridge stops forwarding but both nodes keep carrier,
    /// as when a switch between them fails. VRRP (on the other bridges) is untouched.
    pub fn cut_sync(&self) {
        self.lab.ip(&self.switch, &["link", "set", "br-sync", "down"]);
    }

    pub fn heal_sync(&self) {
        self.lab.ip(&self.switch, &["link", "set", "br-sync", "up"]);
    }

    /// Both nodes drop the VRRP packets they receive (IP protocol 112, an nftables table
    /// `ha_cut_vrrp` in each): each believes the other dead and takes both addresses. All
    /// other traffic, sync included, still flows.
    pub fn cut_vrrp(&self) {
        self.cut_vrrp_on(&["wan0", "lan0"]);
    }

    /// [`HaLab::cut_vrrp`] on some of the nodes' interfaces only (`wan0`, `lan0`): the adverts
    /// on the other link still arrive.
    pub fn cut_vrrp_on(&self, interfaces: &[&str]) {
        let names = interfaces.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
        for node in Node::BOTH {
            self.nft(
                node,
                &format!(
                    "add table inet ha_cut_vrrp\n\
                     add chain inet ha_cut_vrrp input {{ type filter hook input priority 0 ; }}\n\
                     add rule inet ha_cut_vrrp input iifname {{ {names} }} ip protocol vrrp drop\n"
                ),
            );
        }
    }

    /// Undoes [`HaLab::cut_vrrp`] or [`HaLab::cut_vrrp_on`].
    pub fn heal_vrrp(&self) {
        for node in Node::BOTH {
            self.nft(node, "delete table inet ha_cut_vrrp\n");
        }
    }

    fn nft(&self, node: Node, script: &str) {
        let path = self.lab.dir.join(format!("ha-vrrp-{}.nft", node.letter()));
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = self.lab.exec(self.ns(node), "nft", &["-f", &path.display().to_string()]);
        assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether `node` has `addr` configured (on any interface; up or not, crashed or not).
    pub fn holds(&self, node: Node, addr: &str) -> bool {
        let out = self.lab.ip(self.ns(node), &["-o", "-4", "addr", "show"]);
        let needle = format!(" {addr}/");
        String::from_utf8_lossy(&out.stdout).contains(&needle)
    }

    /// The nodes that have the public virtual address configured (both in a split brain),
    /// except a crashed one (its leftover address reaches no one).
    pub fn vip_holders(&self) -> Vec<Node> {
        let crashed = *self.crashed.lock().unwrap_or_else(PoisonError::into_inner);
        Node::BOTH.into_iter().filter(|&n| !crashed[n.index()] && self.holds(n, WAN_VIP)).collect()
    }

    /// The node that has the public virtual address, if exactly one has it.
    pub fn vip_holder(&self) -> Option<Node> {
        match self.vip_holders()[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Polls every 10 ms until `node` holds both virtual addresses; returns when it saw them.
    pub fn wait_vips(&self, node: Node, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.holds(node, WAN_VIP) && self.holds(node, LAN_VIP) {
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(name: &str, pid: u32) {
    let _ = std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Pings every 10 ms with receive timestamps (`ping -D`), for the longest interruption of a
/// path across a failover. [`crate::traffic::Background`] only counts its pings (`ping -q`).
#[derive(Debug)]
pub struct GapMeter {
    pid: u32,
    log: PathBuf,
    started: f64,
}

/// What a [`GapMeter`] saw.
#[derive(Debug, Clone)]
pub struct GapReport {
    pub sent: u64,
    pub received: u64,
    /// The longest time without a reply, counting from the start and up to the stop too (so a
    /// path that never came back shows as a long gap, not as none).
    pub longest_gap: Duration,
    /// Unix time of the reply (or the stop) that ended the longest gap.
    pub gap_end: f64,
}

impl GapReport {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn summary(&self) -> String {
        format!(
            "{}/{} replies ({} lost), longest gap {:.3} s",
            self.received,
            self.sent,
            self.lost(),
            self.longest_gap.as_secs_f64()
        )
    }
}

impl GapMeter {
    /// Starts `ping -D -i 0.01` from `ns` to `dst`; `name` names its log in the lab directory.
    pub fn start(lab: &Lab, ns: &str, dst: &str, name: &str) -> Self {
        let log = lab.dir.join(format!("gap-{name}.log"));
        let started = unix_now();
        let pid = lab.spawn(ns, "ping", &["-D", "-n", "-i", "0.01", "-W", "1", dst], &[], &log);
        Self { pid, log, started }
    }

    /// Stops the pings (SIGINT: ping prints its statistics) and reports.
    pub fn finish(self, lab: &Lab) -> GapReport {
        let stopped = unix_now();
        signal("INT", self.pid);
        lab.wait_exit(self.pid, Duration::from_secs(3));
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        parse_gaps(&text, self.started, stopped)
    }
}

/// Reads `ping -D` output: reply timestamps and the closing statistics.
pub fn parse_gaps(text: &str, started: f64, stopped: f64) -> GapReport {
    let replies: Vec<f64> = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let (mut longest, mut gap_end, mut last) = (0.0_f64, stopped, started);
    for t in replies.iter().copied().chain([stopped]) {
        if t - last > longest {
            longest = t - last;
            gap_end = t;
        }
        last = t;
    }
    let sent = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    GapReport { sent, received: replies.len() as u64, longest_gap: Duration::from_secs_f64(longest.max(0.0)), gap_end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_from_start_to_stop() {
        let text = "PING 10.2.0.10 (10.2.0.10) 56(84) bytes of data.\n\
                    [100.010] 64 bytes from 10.2.0.10: icmp_seq=1 ttl=62 time=0.1 ms\n\
                    [100.020] 64 bytes from 10.2.0.10: icmp_seq=2 ttl=62 time=0.1 ms\n\
                    [100.420] 64 bytes from 10.2.0.10: icmp_seq=42 ttl=62 time=0.1 ms\n\
                    \n--- 10.2.0.10 ping statistics ---\n\
                    45 packets transmitted, 3 received, 93.3333% packet loss, time 450ms\n";
        let r = parse_gaps(text, 100.0, 100.45);
        assert_eq!((r.sent, r.received, r.lost()), (45, 3, 42));
        assert!((r.longest_gap.as_secs_f64() - 0.4).abs() < 1e-6, "{r:?}");
        assert!((r.gap_end - 100.42).abs() < 1e-9);
        // Nothing came back: the whole run is one gap.
        let r = parse_gaps("", 100.0, 101.0);
        assert!((r.longest_gap.as_secs_f64() - 1.0).abs() < 1e-6);
    }
}
