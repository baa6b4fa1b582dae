//! strongSwan 5.9.8 (Debian) as the independent peer: one charon per namespace with its own
//! configuration, plugin list and vici socket; `/run` is bind-mounted privately because charon
//! hard-codes its PID file there (the trick of the reference lab).

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
    pub children: Vec<SwChild>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwChild {
    pub state: String,
    pub mode: String,
    /// e.g. "ESP:AES_CBC-256/HMAC_SHA1_96/MODP_2048"
    pub algorithms: String,
    pub spi_in: String,
    pub spi_out: String,
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
        let conf = format!(
            "connections {{\n  lab {{\n    version = {version}\n    aggressive = {aggr}\n    local_addrs = {la}\n    remote_addrs = {ra}\n    \
             proposals = {ike}\n    rekey_time = {ike_rekey}\n    over_time = {ike_over}\n    dpd_delay = {dpd_delay}\n    dpd_timeout = {dpd_timeout}\n    \
             local {{\n      auth = psk\n      id = {lid}\n    }}\n    remote {{\n      auth = psk\n      id = {rid}\n    }}\n    \
             children {{\n      net {{\n        mode = tunnel\n        local_ts = {lts}\n        remote_ts = {rts}\n        \
             esp_proposals = {esp}\n        life_time = {child_life}\n        rekey_time = {child_rekey}\n        rand_time = {child_rand}\n        \
             start_action = {start_action}\n        dpd_action = {dpd_action}\n      }}\n    }}\n  }}\n}}\n\
             secrets {{\n  ike-lab {{\n    id-l = {lid}\n    id-r = {rid}\n    secret = \"{psk}\"\n  }}\n}}\n",
            aggr = if c.aggressive { "yes" } else { "no" },
            la = c.local_addr,
            ra = c.remote_addr,
            ike = c.ike,
            esp = c.esp,
            lid = c.local_id,
            rid = c.remote_id,
            lts = c.local_ts.join(","),
            rts = c.remote_ts.join(","),
            psk = c.psk,
            ike_rekey = t.ike_rekey,
            ike_over = t.ike_over,
            dpd_delay = t.dpd_delay,
            dpd_timeout = t.dpd_timeout,
            child_life = t.child_life,
            child_rekey = t.child_rekey,
            child_rand = t.child_rand,
            start_action = t.start_action,
            dpd_action = t.dpd_action,
        );
        let path = self.dir.join("swanctl.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
        let out = self.swanctl(&["--load-all", "--noprompt", "--file", &path.display().to_string()]);
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

/// Parses the default `swanctl --list-sas` output.
pub fn parse_list_sas(text: &str) -> SwSas {
    let mut sas = SwSas::default();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if !l.starts_with(' ') && l.contains(", ESTABLISHED, IKEv1") {
            sas.ike_established += 1;
            let unique = l.split(": ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("");
            let spis = l.split(", ESTABLISHED, IKEv1, ").nth(1).unwrap_or("").trim();
            sas.ike_sas.push(format!("{unique} {spis}"));
            // The algorithm line is the first one that looks like ALG/ALG/...
            if let Some(a) =
                lines[i + 1..].iter().take(4).map(|l| l.trim()).find(|l| l.contains('/') && !l.contains(' '))
            {
                sas.ike_algorithms.push(a.to_string());
            }
        }
        if l.starts_with("  ") && l.contains(": #") && l.contains("reqid") {
            let parts: Vec<&str> = l.split(", ").map(str::trim).collect();
            let state = parts.get(2).copied().unwrap_or("").to_string();
            let mode = parts.get(3).copied().unwrap_or("").to_string();
            let algorithms = parts.get(4).copied().unwrap_or("").to_string();
            let mut spi_in = String::new();
            let mut spi_out = String::new();
            for l in lines[i + 1..].iter().take(8) {
                let t = l.trim();
                if let Some(rest) = t.strip_prefix("in ") {
                    spi_in = rest.trim().split(',').next().unwrap_or("").trim().to_string();
                }
                if let Some(rest) = t.strip_prefix("out ") {
                    spi_out = rest.trim().split(',').next().unwrap_or("").trim().to_string();
                }
            }
            sas.children.push(SwChild { state, mode, algorithms, spi_in, spi_out });
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
                spi_out: "52cacf04".into()
            }]
        );
    }
}
