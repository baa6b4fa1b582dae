//! strongSwan 5.9.8 (Debian) as the independent peer: one charon per namespace with its own
//! configuration, plugin list and vici socket; `/run` is bind-mounted privately because charon
//! hard-codes its PID file there (the trick of the reference lab).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::netns::{Lab, wait_for};

pub const CHARON: &str = "/usr/lib/ipsec/charon";
const PLUGINS: &str = "random nonce openssl aes sha1 sha2 md5 hmac gmp kdf pem pkcs1 pubkey x509 kernel-libipsec kernel-netlink socket-default vici";

/// One IKEv1 PSK connection as strongSwan sees it, named "lab" with child "net".
#[derive(Clone, Debug)]
pub struct SwConn {
    pub aggressive: bool,
    pub local_addr: String,
    pub remote_addr: String,
    pub local_id: String,
    pub remote_id: String,
    /// IKE proposal, e.g. "3des-md5-modp768".
    pub ike: String,
    /// ESP proposal, e.g. "3des-md5" or "aes256-sha1-modp2048" (a group = PFS).
    pub esp: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub psk: String,
}

impl SwConn {
    /// strongSwan on the right gateway of a [`Lab`], facing vpngw on the left: the lab's
    /// addresses as identities, the right network against the left one.
    pub fn lab_right(ike: String, esp: String, psk: &str) -> Self {
        use crate::netns::{LEFT_NET, LEFT_WAN, RIGHT_NET, RIGHT_WAN};
        Self {
            aggressive: false,
            local_addr: RIGHT_WAN.into(),
            remote_addr: LEFT_WAN.into(),
            local_id: RIGHT_WAN.into(),
            remote_id: LEFT_WAN.into(),
            ike,
            esp,
            local_ts: vec![RIGHT_NET.into()],
            remote_ts: vec![LEFT_NET.into()],
            psk: psk.into(),
        }
    }
}

/// strongSwan's timers for a connection (swanctl words). The defaults keep it from rekeying
/// or probing on its own during a test.
#[derive(Clone, Debug)]
pub struct SwTimers {
    /// IKE SA reauthentication (`rekey_time`, IKEv1) and its `over_time`.
    pub ike_rekey: String,
    pub ike_over: String,
    /// Child SA `rekey_time`, `life_time`, `rand_time`.
    pub child_rekey: String,
    pub child_life: String,
    pub child_rand: String,
    pub dpd_delay: String,
    pub dpd_timeout: String,
    /// `dpd_action` and `start_action` of the child.
    pub dpd_action: String,
    pub start_action: String,
}

impl Default for SwTimers {
    fn default() -> Self {
        Self {
            ike_rekey: "77760s".into(),
            ike_over: "8640s".into(),
            child_rekey: "3240s".into(),
            child_life: "3600s".into(),
            child_rand: "0s".into(),
            dpd_delay: "0s".into(),
            dpd_timeout: "0s".into(),
            dpd_action: "clear".into(),
            start_action: "none".into(),
        }
    }
}

/// SAs as `swanctl --list-sas` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwSas {
    pub ike_established: usize,
    /// Each established IKE SA's unique ID and SPIs (cookies), e.g. "#1 7b49d8a53d575e67_i afa843d7bd09156a_r*".
    pub ike_sas: Vec<String>,
    /// The IKE SA's algorithm line, e.g. "3DES_CBC/HMAC_MD5_96/PRF_HMAC_MD5/MODP_768".
    pub ike_algorithms: Vec<String>,
    /// The connection name of each established IKE SA, in the order of `ike_sas`.
    pub ike_connections: Vec<String>,
    pub children: Vec<SwChild>,
    /// Packets (in, out) of each child SA, by its inbound SPI: kept out of [`SwChild`] so that
    /// comparing children before and after an event ignores the traffic in between.
    pub child_packets: BTreeMap<String, (u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwChild {
    pub state: String,
    pub mode: String,
    /// e.g. "ESP:AES_CBC-256/HMAC_SHA1_96/MODP_2048"
    pub algorithms: String,
    pub spi_in: String,
    pub spi_out: String,
    /// The connection whose IKE SA the child SA belongs to (e.g. "lab").
    pub connection: String,
    /// The child's traffic selectors as listed, e.g. "10.2.0.0/24".
    pub local_ts: String,
    pub remote_ts: String,
}

#[derive(Debug)]
pub struct Charon {
    pub ns: String,
    pub dir: PathBuf,
    pub pid: u32,
}

/// Names strongSwan uses for our configuration words.
pub fn ike_words(encryption: &str, hash: &str, group: &str) -> String {
    format!("{}-{}-{}", cipher(encryption), hash, modp(group))
}

pub fn esp_words(encryption: &str, hash: &str, pfs: &str) -> String {
    if pfs == "disable" {
        format!("{}-{hash}", cipher(encryption))
    } else {
        format!("{}-{hash}-{}", cipher(encryption), modp(pfs))
    }
}

fn cipher(c: &str) -> String {
    c.replace("aes-", "aes")
}

fn modp(g: &str) -> &'static str {
    match g {
        "dh1" => "modp768",
        "dh2" => "modp1024",
        "dh5" => "modp1536",
        "dh14" => "modp2048",
        "dh24" => "modp2048s256",
        other => panic!("unknown group {other}"),
    }
}

/// What strongSwan prints for an algorithm of ours, for comparisons.
pub fn sw_cipher_name(c: &str) -> &'static str {
    match c {
        "des" => "DES_CBC",
        "3des" => "3DES_CBC",
        "aes-128" => "AES_CBC-128",
        "aes-192" => "AES_CBC-192",
        "aes-256" => "AES_CBC-256",
        other => panic!("unknown cipher {other}"),
    }
}

pub fn sw_group_name(g: &str) -> &'static str {
    match g {
        "dh1" => "MODP_768",
        "dh2" => "MODP_1024",
        "dh5" => "MODP_1536",
        "dh14" => "MODP_2048",
        "dh24" => "MODP_2048_256",
        other => panic!("unknown group {other}"),
    }
}

impl Charon {
    /// Starts charon in `ns` (no routes installed: for IKE-only tests); waits for its vici socket.
    pub fn start(lab: &Lab, ns: &str) -> Self {
        Self::start_with(lab, ns, false)
    }

    /// Starts charon in `ns`; with `routes`, kernel-libipsec routes the remote subnets into its
    /// TUN (ipsec0), so traffic flows.
    pub fn start_with(lab: &Lab, ns: &str, routes: bool) -> Self {
        crate::tool::require(
            CHARON,
            "apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins",
        );
        let dir = lab.dir.join(format!("charon-{ns}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let conf = format!(
            "charon {{\n  load = {PLUGINS}\n  install_routes = {routes}\n  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n  \
             retransmit_timeout = 1.0\n  retransmit_tries = 3\n  plugins {{\n    vici {{ socket = unix://{d}/charon.vici }}\n    \
             openssl {{ load_legacy = yes }}\n  }}\n  filelog {{\n    lab {{\n      path = {d}/charon.log\n      time_format = %H:%M:%S\n      \
             ike_name = yes\n      append = no\n      flush_line = yes\n      default = 1\n      ike = 2\n      chd = 4\n      enc = 1\n    }}\n  }}\n  \
             syslog {{ daemon {{ default = -1 }} }}\n}}\n",
            d = dir.display(),
            routes = if routes { "yes" } else { "no" },
        );
        std::fs::write(dir.join("strongswan.conf"), conf).unwrap_or_else(|e| panic!("{e}"));
        // A charon that crashed leaves its socket behind: the new one's is awaited below.
        let _ = std::fs::remove_file(dir.join("charon.vici"));
        let script = "mount --bind \"$1\" /run && exec \"$2\"";
        let d = dir.display().to_string();
        let conf_path = dir.join("strongswan.conf").display().to_string();
        let pid = lab.spawn(
            ns,
            "sh",
            &["-c", script, "sh", &d, CHARON],
            &[("STRONGSWAN_CONF", &conf_path)],
            &dir.join("charon.out"),
        );
        let vici = dir.join("charon.vici");
        wait_for(Duration::from_secs(10), || vici.exists().then_some(())).unwrap_or_else(|| {
            panic!("charon did not start: {}", std::fs::read_to_string(dir.join("charon.out")).unwrap_or_default())
        });
        Self { ns: ns.to_string(), dir, pid }
    }

    fn swanctl(&self, args: &[&str]) -> std::process::Output {
        let uri = format!("unix://{}/charon.vici", self.dir.display());
        Command::new("swanctl").args(args).args(["--uri", &uri]).output().unwrap_or_else(|e| panic!("swanctl: {e}"))
    }

    /// Replaces the loaded configuration with this one connection.
    pub fn load(&self, c: &SwConn) {
        self.load_with(c, &SwTimers::default());
    }

    /// [`Charon::load`] with these timers.
    pub fn load_with(&self, c: &SwConn, t: &SwTimers) {
        self.load_version(c, t, 1);
    }

    /// [`Charon::load_with`] with this IKE version (2: a peer that does not speak IKEv1).
    pub fn load_version(&self, c: &SwConn, t: &SwTimers, version: u8) {
        let entry = SwEntry { name: "lab".into(), conn: c.clone(), timers: t.clone() };
        self.load_conf(&swanctl_conf(std::slice::from_ref(&entry), version));
    }

    /// Replaces the loaded configuration with these IKEv1 connections, all at once (one
    /// `swanctl --load-all`): one charon plays many peers, each connection bound to its own
    /// `local_addr`. Those whose timers say `start_action = start` are initiated at once.
    pub fn load_many(&self, entries: &[SwEntry]) {
        self.load_conf(&swanctl_conf(entries, 1));
    }

    fn load_conf(&self, conf: &str) {
        let out = self.load_raw(conf);
        assert!(
            out.status.success(),
            "swanctl --load-all: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Loads `conf`, a whole swanctl.conf written elsewhere (`vpngw peer-config`), as it is:
    /// `swanctl --load-all` with it as the file, which also unloads what an earlier load left.
    /// Returns swanctl's output; the caller judges it (a refused file is a result too).
    pub fn load_raw(&self, conf: &str) -> std::process::Output {
        let path = self.dir.join("swanctl.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
        self.swanctl(&["--load-all", "--noprompt", "--file", &path.display().to_string()])
    }

    /// `swanctl --initiate` of one child of one connection (blocks until done or
    /// `timeout_s`); returns its output.
    pub fn initiate_child(&self, ike: &str, child: &str, timeout_s: u32) -> String {
        let out = self.swanctl(&["--initiate", "--ike", ike, "--child", child, "--timeout", &timeout_s.to_string()]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// `swanctl --initiate` (blocks until done or `timeout_s`); returns its output.
    pub fn initiate(&self, timeout_s: u32) -> String {
        let out = self.swanctl(&["--initiate", "--ike", "lab", "--child", "net", "--timeout", &timeout_s.to_string()]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Starts an initiation without waiting for it.
    pub fn initiate_async(&self) {
        let _ = self.swanctl(&["--initiate", "--ike", "lab", "--child", "net", "--timeout", "-1"]);
    }

    /// `swanctl --rekey --child net`: strongSwan starts a quick mode replacing the child SA.
    pub fn rekey_child(&self) -> String {
        let out = self.swanctl(&["--rekey", "--child", "net"]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    pub fn terminate_all(&self) {
        let _ = self.swanctl(&["--terminate", "--ike", "lab", "--force", "--timeout", "2"]);
    }

    pub fn list_sas(&self) -> SwSas {
        let out = self.swanctl(&["--list-sas"]);
        parse_list_sas(&String::from_utf8_lossy(&out.stdout))
    }

    /// Kills charon with SIGKILL: no Delete is sent, its SAs and TUN vanish (a crash or power
    /// loss as the peer sees it).
    pub fn crash(&self, lab: &Lab) {
        lab.kill(self.pid);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }
}

/// One connection of a swanctl.conf with several: its name (also of its secret, "ike-NAME";
/// its child is "net"), what it negotiates, and its timers.
#[derive(Clone, Debug)]
pub struct SwEntry {
    pub name: String,
    pub conn: SwConn,
    pub timers: SwTimers,
}

/// A swanctl.conf with these connections and their pre-shared keys (by both identities, so
/// each connection may have its own key).
pub fn swanctl_conf(entries: &[SwEntry], version: u8) -> String {
    let mut connections = String::new();
    let mut secrets = String::new();
    for SwEntry { name, conn: c, timers: t } in entries {
        connections.push_str(&format!(
            "  {name} {{\n    version = {version}\n    aggressive = {aggr}\n    local_addrs = {la}\n    remote_addrs = {ra}\n    \
             proposals = {ike}\n    rekey_time = {ike_rekey}\n    over_time = {ike_over}\n    dpd_delay = {dpd_delay}\n    dpd_timeout = {dpd_timeout}\n    \
             local {{\n      auth = psk\n      id = {lid}\n    }}\n    remote {{\n      auth = psk\n      id = {rid}\n    }}\n    \
             children {{\n      net {{\n        mode = tunnel\n        local_ts = {lts}\n        remote_ts = {rts}\n        \
             esp_proposals = {esp}\n        life_time = {child_life}\n        rekey_time = {child_rekey}\n        rand_time = {child_rand}\n        \
             start_action = {start_action}\n        dpd_action = {dpd_action}\n      }}\n    }}\n  }}\n",
            aggr = if c.aggressive { "yes" } else { "no" },
            la = c.local_addr,
            ra = c.remote_addr,
            ike = c.ike,
            esp = c.esp,
            lid = c.local_id,
            rid = c.remote_id,
            lts = c.local_ts.join(","),
            rts = c.remote_ts.join(","),
            ike_rekey = t.ike_rekey,
            ike_over = t.ike_over,
            dpd_delay = t.dpd_delay,
            dpd_timeout = t.dpd_timeout,
            child_life = t.child_life,
            child_rekey = t.child_rekey,
            child_rand = t.child_rand,
            start_action = t.start_action,
            dpd_action = t.dpd_action,
        ));
        secrets.push_str(&format!(
            "  ike-{name} {{\n    id-l = {lid}\n    id-r = {rid}\n    secret = \"{psk}\"\n  }}\n",
            lid = c.local_id,
            rid = c.remote_id,
            psk = c.psk,
        ));
    }
    format!("connections {{\n{connections}}}\nsecrets {{\n{secrets}}}\n")
}

/// Parses the default `swanctl --list-sas` output.
pub fn parse_list_sas(text: &str) -> SwSas {
    let mut sas = SwSas::default();
    let lines: Vec<&str> = text.lines().collect();
    // The connection of the IKE SA being read: its child SAs follow it, indented.
    let mut connection = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if !l.starts_with(' ') && l.contains(": #") {
            connection = l.split(": ").next().unwrap_or("").to_string();
        }
        if !l.starts_with(' ') && l.contains(", ESTABLISHED, IKEv1") {
            sas.ike_established += 1;
            let unique = l.split(": ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("");
            let spis = l.split(", ESTABLISHED, IKEv1, ").nth(1).unwrap_or("").trim();
            sas.ike_sas.push(format!("{unique} {spis}"));
            sas.ike_connections.push(connection.clone());
            // The algorithm line is the first one that looks like ALG/ALG/...
            if let Some(a) =
                lines[i + 1..].iter().take(4).map(|l| l.trim()).find(|l| l.contains('/') && !l.contains(' '))
            {
                sas.ike_algorithms.push(a.to_string());
            }
        }
        if l.starts_with("  ") && l.contains(": #") && l.contains("reqid") {
            let parts: Vec<&str> = l.split(", ").map(str::trim).collect();
            let mut child = SwChild {
                state: parts.get(2).copied().unwrap_or("").to_string(),
                mode: parts.get(3).copied().unwrap_or("").to_string(),
                algorithms: parts.get(4).copied().unwrap_or("").to_string(),
                spi_in: String::new(),
                spi_out: String::new(),
                connection: connection.clone(),
                local_ts: String::new(),
                remote_ts: String::new(),
            };
            let (mut packets_in, mut packets_out) = (0, 0);
            // The child's own lines are indented deeper than the child line: stop at the next
            // child or IKE SA, so that one child's lines are never read as another's.
            for l in lines[i + 1..].iter().take_while(|l| l.starts_with("    ")) {
                let t = l.trim();
                // "in  9c57499a,     84 bytes,     1 packets,     0s ago"
                let spi_and_packets = |rest: &str| {
                    let fields: Vec<&str> = rest.split(',').map(str::trim).collect();
                    let packets = fields
                        .get(2)
                        .and_then(|f| f.strip_suffix(" packets"))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    (fields.first().copied().unwrap_or("").to_string(), packets)
                };
                if let Some(rest) = t.strip_prefix("in ") {
                    (child.spi_in, packets_in) = spi_and_packets(rest);
                } else if let Some(rest) = t.strip_prefix("out ") {
                    (child.spi_out, packets_out) = spi_and_packets(rest);
                } else if let Some(rest) = t.strip_prefix("local ") {
                    child.local_ts = rest.trim().to_string();
                } else if let Some(rest) = t.strip_prefix("remote ") {
                    child.remote_ts = rest.trim().to_string();
                }
            }
            sas.child_packets.insert(child.spi_in.clone(), (packets_in, packets_out));
            sas.children.push(child);
        }
        i += 1;
    }
    sas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_sas() {
        let text = "lab: #1, ESTABLISHED, IKEv1, 7b49d8a53d575e67_i afa843d7bd09156a_r*\n  local  '198.51.100.2' @ 198.51.100.2[4500]\n  \
                    remote '198.51.100.1' @ 198.51.100.1[4500]\n  3DES_CBC/HMAC_MD5_96/PRF_HMAC_MD5/MODP_768\n  established 4s ago, rekeying in 69566s\n  \
                    net: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:3DES_CBC/HMAC_MD5_96\n    installed 4s ago, rekeying in 2947s, expires in 3596s\n    \
                    in  9c57499a,      0 bytes,     0 packets\n    out 52cacf04,      0 bytes,     0 packets\n    local  10.2.0.0/24\n    remote 10.1.0.0/24\n";
        let s = parse_list_sas(text);
        assert_eq!(s.ike_established, 1);
        assert_eq!(s.ike_sas, ["#1 7b49d8a53d575e67_i afa843d7bd09156a_r*"]);
        assert_eq!(s.ike_algorithms, ["3DES_CBC/HMAC_MD5_96/PRF_HMAC_MD5/MODP_768"]);
        assert_eq!(
            s.children,
            [SwChild {
                state: "INSTALLED".into(),
                mode: "TUNNEL-in-UDP".into(),
                algorithms: "ESP:3DES_CBC/HMAC_MD5_96".into(),
                spi_in: "9c57499a".into(),
                spi_out: "52cacf04".into(),
                connection: "lab".into(),
                local_ts: "10.2.0.0/24".into(),
                remote_ts: "10.1.0.0/24".into(),
            }]
        );
        assert_eq!(s.ike_connections, ["lab"]);
        assert_eq!(s.child_packets, BTreeMap::from([("9c57499a".to_string(), (0, 0))]));
    }

    /// Several connections, one with two child SAs and traffic: each child keeps its own
    /// SPIs, selectors, counters and connection.
    #[test]
    fn parses_list_sas_of_many_connections() {
        let text = "site-01: #2, ESTABLISHED, IKEv1, 1111111111111111_i* 2222222222222222_r\n  \
                    local  '198.51.100.101' @ 198.51.100.101[4500]\n  remote '198.51.100.1' @ 198.51.100.1[4500]\n  \
                    AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048\n  established 2s ago, rekeying in 77000s\n  \
                    net: #3, reqid 3, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA1_96\n    \
                    installed 2s ago, rekeying in 3000s, expires in 3598s\n    \
                    in  c0000001,     84 bytes,     1 packets,     0s ago\n    out c0000002,     84 bytes,     2 packets,     0s ago\n    \
                    local  10.2.1.0/24\n    remote 10.1.0.0/24\n  \
                    net: #4, reqid 4, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA1_96\n    \
                    installed 2s ago, rekeying in 3000s, expires in 3598s\n    \
                    in  c0000003,      0 bytes,     0 packets\n    out c0000004,      0 bytes,     0 packets\n    \
                    local  10.2.9.0/24\n    remote 10.1.0.0/24\n\
                    site-02: #1, CONNECTING, IKEv1, 3333333333333333_i* 0000000000000000_r\n  \
                    local  '198.51.100.102' @ 198.51.100.102[500]\n  remote '198.51.100.1' @ 198.51.100.1[500]\n";
        let s = parse_list_sas(text);
        assert_eq!((s.ike_established, s.ike_connections.as_slice()), (1, ["site-01".to_string()].as_slice()));
        let summary: Vec<_> = s
            .children
            .iter()
            .map(|c| (c.connection.as_str(), c.spi_in.as_str(), c.spi_out.as_str(), c.local_ts.as_str()))
            .collect();
        assert_eq!(
            summary,
            [("site-01", "c0000001", "c0000002", "10.2.1.0/24"), ("site-01", "c0000003", "c0000004", "10.2.9.0/24")]
        );
        assert_eq!(s.child_packets["c0000001"], (1, 2));
        assert_eq!(s.child_packets["c0000003"], (0, 0));
    }
}
