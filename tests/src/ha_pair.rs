//! The hot-backup pair on the [`crate::ha`] lab, shared by the HA tests (`tests/ha*.rs`): vpngw
//! on A and B with keepalived (the deploy/ha samples) and strongSwan on R as the peer, plus the
//! checks a takeover must pass (strongSwan keeps its IKE SA and child SAs, short gaps, rekeys by
//! both sides on the synced IKE SA).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;

use crate::ha::{GapMeter, GapReport, HaLab, Node, R_WAN, WAN_VIP};
use crate::netns::{LEFT_NET, RIGHT_NET, wait_for};
use crate::strongswan::{Charon, SwConn, SwSas, SwTimers, esp_words, ike_words};
use crate::traffic::{LEFT_HOST, RIGHT_HOST, wait_ping};
use crate::vpngw::{Vpngw, binary, config_text};

pub const PSK: &str = "lab-psk-0123456789abcdef";
const SYNC_KEY: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A and B (vpngw and keepalived) and strongSwan on R.
#[derive(Debug)]
pub struct Pair {
    pub ha: HaLab,
    pub nodes: [Option<Vpngw>; 2],
    pub charon: Charon,
    /// How many times each node's vpngw was started (names its directory).
    generations: [u32; 2],
}

/// The node's sync address.
pub fn sync_address(node: Node) -> &'static str {
    match node {
        Node::A => "192.0.2.1:9722",
        Node::B => "192.0.2.2:9722",
    }
}

/// The node's vpngw configuration: one passive connection to R, and `[ha]`.
pub fn config(ha: &HaLab, node: Node, name: &str) -> String {
    let connection = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{R_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"passive\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n"
    );
    format!("{}{}", config_text(WAN_VIP, &Vpngw::socket_for(&ha.lab, name), true, &connection), ha_section(ha, node))
}

/// The `[ha]` section of `node`'s configuration (the public address is the WAN virtual address;
/// the pair's sync key is written into the lab, mode 0600), starting with a blank line.
pub fn ha_section(ha: &HaLab, node: Node) -> String {
    let key = ha.lab.dir.join(format!("sync-{}.key", node.letter()));
    std::fs::write(&key, SYNC_KEY).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let partner = node.other();
    format!(
        "\n[ha]\nnode_name = \"node-{}\"\npartner_name = \"node-{}\"\nlisten = \"{}\"\npartner = \"{}\"\n\
         key_file = \"{}\"\ntrack_file = \"{}\"\n",
        node.letter(),
        partner.letter(),
        sync_address(node),
        sync_address(partner),
        key.display(),
        ha.track_file(node).display()
    )
}

/// Starts vpngw named `name` on `node` with `config`, then keepalived calling its `ha notify`
/// and `ha check`.
pub fn start_vpngw_and_keepalived(ha: &HaLab, node: Node, name: &str, config: &str) -> Vpngw {
    let v = Vpngw::start(&ha.lab, ha.ns(node), name, config, &[]);
    ha.register_vpngw(node, v.pid);
    let (bin, socket) = (binary().display().to_string(), v.socket.display().to_string());
    ha.start_keepalived(
        node,
        &format!("{bin} ha notify --socket {socket}"),
        &format!("{bin} ha check --socket {socket}"),
    );
    v
}

pub fn slot(node: Node) -> usize {
    match node {
        Node::A => 0,
        Node::B => 1,
    }
}

impl Pair {
    /// A and B running vpngw and keepalived, A active; strongSwan on R with DPD every 2 s.
    pub fn start(name: &str) -> Self {
        let ha = HaLab::new(name);
        let charon = Charon::start_with(&ha.lab, &ha.r, true);
        let mut p = Self { ha, nodes: [None, None], charon, generations: [0, 0] };
        for node in Node::BOTH {
            p.start_node(node);
            if node == Node::A {
                assert!(p.ha.wait_vips(Node::A, Duration::from_secs(5)).is_some(), "{}", p.ha.keepalived_log(Node::A));
            }
        }
        let timers = SwTimers { dpd_delay: "2s".into(), dpd_timeout: "20s".into(), ..SwTimers::default() };
        let sw = SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "disable"), PSK);
        p.charon.load_with(&sw, &timers);
        p
    }

    /// Starts vpngw (a new generation: a fresh directory and log) then keepalived on `node`.
    pub fn start_node(&mut self, node: Node) {
        self.generations[slot(node)] += 1;
        let name = format!("gw-{}{}", node.letter(), self.generations[slot(node)]);
        let v = start_vpngw_and_keepalived(&self.ha, node, &name, &config(&self.ha, node, &name));
        self.nodes[slot(node)] = Some(v);
    }

    /// strongSwan initiates; waits for A's tunnel, a ping through it and the pair in sync.
    /// Returns strongSwan's SAs (one IKE SA, one child SA).
    pub fn establish(&self) -> SwSas {
        self.charon.initiate(10);
        self.node(Node::A)
            .wait_up("to-right", Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{}", self.node(Node::A).log_text()));
        assert!(wait_ping(&self.ha.lab, &self.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
        // The tunnel's record (beside the sequence numbers and the connections) reached B.
        wait_for(Duration::from_secs(5), || (self.ha_status(Node::B)["records"].as_u64() >= Some(3)).then_some(()))
            .unwrap_or_else(|| panic!("the tunnel did not reach the standby: {}", self.ha_status(Node::B)));
        self.wait_in_sync(Node::A);
        let sas = self.charon.list_sas();
        assert_eq!((sas.ike_sas.len(), sas.children.len()), (1, 1), "{sas:?}");
        sas
    }

    pub fn node(&self, node: Node) -> &Vpngw {
        self.nodes[slot(node)].as_ref().unwrap_or_else(|| panic!("no vpngw on {node:?}"))
    }

    /// The `ha` object of the node's `vpngw status --json` (Null when it does not answer).
    pub fn ha_status(&self, node: Node) -> Value {
        self.nodes[slot(node)].as_ref().and_then(Vpngw::status).map(|s| s["ha"].clone()).unwrap_or(Value::Null)
    }

    /// Waits until `node` is active and its partner a standby in sync with as many records in
    /// its replica as the active has in its store. (`in_sync` alone is true as soon as the bulk
    /// is acknowledged, before a change of the last sync interval has reached the standby.)
    pub fn wait_in_sync(&self, active: Node) {
        wait_for(Duration::from_secs(15), || {
            let a = self.ha_status(active);
            let s = self.ha_status(active.other());
            (a["role"] == "active"
                && s["role"] == "standby"
                && s["in_sync"] == true
                && a["in_sync"] == true
                && a["records"] == s["records"])
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "not in sync:\n{}\n{}\n{}\n{}",
                self.ha_status(active),
                self.ha_status(active.other()),
                self.node(active).log_text(),
                self.node(active.other()).log_text()
            )
        });
    }

    /// Pings every 10 ms both ways (left->right, right->left).
    pub fn gap_meters(&self, tag: &str) -> [GapMeter; 2] {
        [
            GapMeter::start(&self.ha.lab, &self.ha.lab.left_host, RIGHT_HOST, &format!("{tag}-lr")),
            GapMeter::start(&self.ha.lab, &self.ha.lab.right_host, LEFT_HOST, &format!("{tag}-rl")),
        ]
    }

    /// Stops both meters: the left->right and right->left reports.
    pub fn finish_gaps(&self, gaps: [GapMeter; 2]) -> [GapReport; 2] {
        let [lr, rl] = gaps;
        [lr.finish(&self.ha.lab), rl.finish(&self.ha.lab)]
    }

    /// A takeover by `to`: strongSwan keeps its IKE SA and child SAs, the gap stays under a
    /// second, DPD is answered, and nothing is renegotiated.
    pub fn check_takeover(&self, to: Node, before: &SwSas, gaps: [GapMeter; 2], log_mark: usize) {
        // The daemon follows the address within its 10 ms poll.
        let took = wait_for(Duration::from_secs(2), || {
            let s = self.ha_status(to);
            (s["role"] == "active").then_some(s)
        })
        .unwrap_or_else(|| panic!("{} not active: {}\n{}", to.letter(), self.ha_status(to), self.node(to).log_text()));
        let last = &took["last_takeover"];
        assert_eq!((last["ike_sas"].as_u64(), last["refused"].as_array().map(Vec::len)), (Some(1), Some(0)), "{took}");
        assert!(
            wait_ping(&self.ha.lab, &self.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(3)),
            "{}",
            self.node(to).log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
        for (report, dir) in self.finish_gaps(gaps).iter().zip(["left->right", "right->left"]) {
            eprintln!("takeover by {to:?}, {dir}: {}", report.summary());
            assert!(
                report.longest_gap <= Duration::from_secs(1),
                "{dir}: {}\n{}",
                report.summary(),
                self.node(to).log_text()
            );
        }
        // strongSwan's DPD probes reach the new active and are answered; nothing was renegotiated.
        let sw_log = wait_for(Duration::from_secs(15), || {
            let l = self.charon.log()[log_mark..].to_string();
            (l.matches("N(DPD_ACK)").count() >= 2).then_some(l)
        })
        .unwrap_or_else(|| panic!("DPD unanswered:\n{}\n{}", &self.charon.log()[log_mark..], self.node(to).log_text()));
        assert!(!sw_log.contains("deleting IKE_SA"), "{sw_log}");
        let after = self.charon.list_sas();
        assert_eq!(after.ike_sas, before.ike_sas, "strongSwan has another IKE SA");
        assert_eq!(sw_child_spis(&after), sw_child_spis(before), "strongSwan's child SAs changed");
        // Since this takeover (the node may have negotiated the tunnel itself before).
        let log = self.node(to).log_text();
        let since = &log[log.rfind("took over as active").unwrap_or(0)..];
        assert!(!since.contains("IKE SA established") && !since.contains("negotiation failed"), "{log}");
    }

    /// Rekeys by vpngw then by strongSwan on the current IKE SA; returns strongSwan's SAs after.
    pub fn rekey_both_ways(&self, on: Node) -> SwSas {
        let ike_before = self.charon.list_sas().ike_sas;
        let old = sw_child_spis(&self.charon.list_sas());
        let out = self.node(on).cli(&["rekey", "to-right"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mid = wait_for(Duration::from_secs(30), || {
            let spis = sw_child_spis(&self.charon.list_sas());
            (spis.len() == 1 && spis != old).then_some(spis)
        })
        .unwrap_or_else(|| panic!("vpngw's rekey: {:?}\n{}", self.charon.list_sas(), self.node(on).log_text()));
        assert!(wait_ping(&self.ha.lab, &self.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
        self.charon.rekey_child();
        wait_for(Duration::from_secs(30), || {
            let spis = sw_child_spis(&self.charon.list_sas());
            (spis.len() == 1 && spis != mid).then_some(())
        })
        .unwrap_or_else(|| panic!("strongSwan's rekey: {:?}\n{}", self.charon.list_sas(), self.node(on).log_text()));
        assert!(wait_ping(&self.ha.lab, &self.ha.lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
        let after = self.charon.list_sas();
        assert_eq!(after.ike_sas, ike_before, "the rekeys ran on the same IKE SA");
        after
    }
}

/// strongSwan's child SAs as (SPI in, SPI out), sorted.
pub fn sw_child_spis(sas: &SwSas) -> Vec<(String, String)> {
    let mut spis: Vec<(String, String)> = sas.children.iter().map(|c| (c.spi_in.clone(), c.spi_out.clone())).collect();
    spis.sort();
    spis
}

/// The `took_ms` of each "hot backup: bulk sync received" line of a vpngw log.
pub fn bulk_sync_ms(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("hot backup: bulk sync received"))
        .filter_map(|l| l.split("took_ms=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// Traffic that runs until told to stop, across any number of takeovers: a paced TCP stream
/// from the left host to the right host (SHA-256 of the bytes at both ends) and numbered UDP
/// datagrams every 5 ms from the right host to the left host.
#[derive(Debug)]
pub struct LongTraffic {
    stop: std::path::PathBuf,
    pids: Vec<u32>,
    logs: [std::path::PathBuf; 4],
}

/// What [`LongTraffic`] saw: the TCP stream as sent and as received (`{bytes, sha256, ...}`),
/// and the UDP datagrams (`{sent}`, `{received, bad, duplicates}`).
#[derive(Debug)]
pub struct LongTrafficReport {
    pub tcp_sent: Value,
    pub tcp_received: Value,
    pub udp_sent: Value,
    pub udp_received: Value,
}

impl LongTraffic {
    /// Starts the stream at `kbps` KiB/s and the datagrams (200 a second).
    pub fn start(lab: &crate::netns::Lab, kbps: u32) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/traffic.py");
        let stop = lab.dir.join("long-traffic.stop");
        let _ = std::fs::remove_file(&stop);
        let s = stop.display().to_string();
        let logs = ["long-tcp-server", "long-tcp-client", "long-udp-server", "long-udp-client"]
            .map(|n| lab.dir.join(format!("{n}.out")));
        let mut pids = Vec::new();
        pids.push(lab.spawn(&lab.right_host, "python3", &[script, "stream-server", RIGHT_HOST, "5011"], &[], &logs[0]));
        pids.push(lab.spawn(
            &lab.left_host,
            "python3",
            &[script, "udp-stream-server", LEFT_HOST, "5012", &s],
            &[],
            &logs[2],
        ));
        std::thread::sleep(Duration::from_millis(300));
        pids.push(lab.spawn(
            &lab.left_host,
            "python3",
            &[script, "stream-client", RIGHT_HOST, "5011", "100000", &kbps.to_string(), &s],
            &[],
            &logs[1],
        ));
        pids.push(lab.spawn(
            &lab.right_host,
            "python3",
            &[script, "udp-stream-client", LEFT_HOST, "5012", &s],
            &[],
            &logs[3],
        ));
        Self { stop, pids, logs }
    }

    /// Stops the senders and waits (up to `timeout`) for every report.
    pub fn finish(self, lab: &crate::netns::Lab, timeout: Duration) -> LongTrafficReport {
        std::fs::write(&self.stop, "stop\n").unwrap_or_else(|e| panic!("{}: {e}", self.stop.display()));
        let read = |p: &std::path::Path| {
            wait_for(timeout, || serde_json::from_str::<Value>(std::fs::read_to_string(p).ok()?.trim()).ok())
                .unwrap_or(Value::Null)
        };
        let report = LongTrafficReport {
            tcp_received: read(&self.logs[0]),
            tcp_sent: read(&self.logs[1]),
            udp_received: read(&self.logs[2]),
            udp_sent: read(&self.logs[3]),
        };
        for pid in self.pids {
            lab.stop(pid, Duration::from_secs(1));
        }
        report
    }
}

/// The `took` of each "sync: bulk applied" line of a vpngw log, as logged (e.g. `23.495µs`):
/// finer than [`bulk_sync_ms`].
pub fn bulk_applied_took(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("sync: bulk applied"))
        .filter_map(|l| Some(l.split("took=").nth(1)?.split_whitespace().next()?.to_string()))
        .collect()
}
