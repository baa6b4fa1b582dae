//! The VNF package's LCM script (`vnf-descriptor/Scripts/vpngw-lcm.sh`) run for real, with the
//! package's own sample Instantiate VNF requests (`vnf-descriptor/samples/`), in namespaces whose
//! addresses are the samples' own, against strongSwan 5.9.8 as the peer the sample names. The
//! script fails (exit 1), with the reason, when vpngw cannot get ready or, with `--wait-up`, when
//! the peer refuses; the configuration it writes brings a tunnel up and carries a ping; `heal` on
//! a healthy gateway reloads without touching the tunnel; `terminate` stops vpngw, and the peer is
//! told (its SAs are gone at once, not after dead peer detection). hot_standby: both nodes, the
//! handover at terminate, heal bringing a node back. `make vnf-check`
//! (tests/nfv/check_package.py) checks the package itself; this is the part that runs in
//! `make test`.
//!
//! The script runs as the VNFM would run it on a VNFC, with its environment knobs pointing into
//! the lab's directory instead of the host's `/etc`, `/var/lib` and `/etc/sysctl.d`
//! (`VPNGW_ETC`, `VPNGW_LCM_STATE`, `KEEPALIVED_ETC`, `VPNGW_SYSCTL_DIR`), no systemd
//! (`VPNGW_LCM_SYSTEMD=0`: vpngw runs in the background with a PID file) and this build's vpngw
//! (`VPNGW_BIN`). `/run` is a directory of the lab's, bind-mounted in the script's private mount
//! namespace (as `strongswan.rs` does for charon): the daemon's default control socket
//! (`/run/vpngw/vpngw.sock`), which the samples do not set, and the script's PID files and log
//! stay out of the host's `/run`, and each gateway has its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::ha::{self, HaLab, Node};
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root, veth, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The VNF package (`make package`'s packager), unpacked: the scripts and samples as a VNFM gets
/// them (keepalived's notify script is in Scripts/ only there). Built once per test process.
fn package() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("vpngw-tests").join(format!("vnf-lcm-package-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("python3")
            .arg(repo().join("vnf-descriptor/tools/build_package.py"))
            .arg("--out")
            .arg(&dir)
            // The scripts are what is tested here (vpngw is this build's, VPNGW_BIN); a .deb that
            // `make deb` may be rewriting meanwhile has no part in it.
            .arg("--no-deb")
            .output()
            .unwrap();
        assert!(out.status.success(), "build_package.py: {}", text(&out));
        let csar = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let unpacked = dir.join("unpacked");
        let out = Command::new("python3").args(["-m", "zipfile", "-e", &csar]).arg(&unpacked).output().unwrap();
        assert!(out.status.success(), "unzip {csar}: {}", text(&out));
        for script in ["vpngw-lcm.sh", "vpngw-notify.sh", "vpngw_render.py"] {
            let path = unpacked.join("Scripts").join(script);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        unpacked
    })
}

fn script() -> PathBuf {
    package().join("Scripts/vpngw-lcm.sh")
}

fn sample_path(name: &str) -> PathBuf {
    package().join("Files/Samples").join(name)
}

fn sample(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(sample_path(name)).unwrap()).unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// One VNFC of the lab: its namespace and the directories the script's knobs point to.
struct Vnfc {
    ns: String,
    /// `VPNGW_ETC` (the VNFC's /etc/vpngw: vpngw.toml, and the key files the operator put there).
    etc: PathBuf,
    /// Bind-mounted on `/run` while the script (and what it starts) runs.
    run: PathBuf,
    root: PathBuf,
}

impl Vnfc {
    fn new(lab: &Lab, ns: &str, name: &str) -> Self {
        let root = lab.dir.join(format!("vnfc-{name}"));
        let (etc, run) = (root.join("etc"), root.join("run"));
        for d in [&etc, &run] {
            std::fs::create_dir_all(d).unwrap();
        }
        Self { ns: ns.into(), etc, run, root }
    }

    /// Puts a key file in the VNFC's /etc/vpngw as the operator would (cloud-init, a secrets
    /// agent): mode 0600.
    fn put_key(&self, relative: &str, content: &str) {
        let path = self.etc.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{content}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The sample as the VNFC gets it, with one change: the key files' paths. The samples name
    /// them under /etc/vpngw/; this VNFC's /etc/vpngw is `etc` (the test must not write keys
    /// into the host's /etc, which every namespace shares). Nothing else is changed.
    fn params(&self, sample_name: &str) -> PathBuf {
        let original = std::fs::read_to_string(sample_path(sample_name)).unwrap();
        let rewritten = original.replace("\"/etc/vpngw/", &format!("\"{}/", self.etc.display()));
        assert_ne!(original, rewritten, "{sample_name} names no key file under /etc/vpngw/");
        let path = self.root.join(sample_name);
        std::fs::write(&path, rewritten).unwrap();
        path
    }

    /// `vpngw-lcm.sh ARGS` in the VNFC's namespace, `/run` being `run`.
    fn lcm(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "sh", "-c", "mount --bind \"$1\" /run && shift && exec \"$@\"", "sh"])
            .arg(&self.run)
            .arg(script())
            .args(args)
            .env("VPNGW_BIN", binary())
            .env("VPNGW_ETC", &self.etc)
            .env("VPNGW_LCM_STATE", self.root.join("state"))
            .env("KEEPALIVED_ETC", self.root.join("keepalived"))
            .env("VPNGW_SYSCTL_DIR", self.root.join("sysctl.d"))
            .env("VPNGW_LCM_SYSTEMD", "0")
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    /// The control socket at the daemon's default path, /run/vpngw/vpngw.sock, seen from here.
    fn socket(&self) -> PathBuf {
        self.run.join("vpngw/vpngw.sock")
    }

    fn vpngw_pid(&self) -> Option<u32> {
        read_pid(&self.run.join("vpngw/vpngw.pid"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("vpngw/vpngw.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out = Command::new(binary()).args(["status", "--json", "--socket"]).arg(self.socket()).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn connection(&self, name: &str) -> Value {
        self.status()["connections"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A process that runs (a zombie does not: the script's daemons are orphans once it exits).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// What the script started, killed by PID (from its PID files) if the test ends before
/// `terminate` did it: declared after the lab, so it runs before the namespaces go.
struct Leftovers(Vec<PathBuf>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for run in &self.0 {
            for file in ["vpngw.pid", "keepalived.pid", "keepalived-vrrp.pid", "keepalived-checkers.pid"] {
                let Some(pid) = read_pid(&run.join("vpngw").join(file)) else { continue };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if alive(pid) && (cmdline.contains("vpngw") || cmdline.contains("keepalived")) {
                    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// The single flavour's sample, instantiated by the script on the left gateway of the lab
/// (its addresses are the sample's), strongSwan on the right as `branch-1`'s peer.
#[test]
fn single_flavour_sample_brings_a_tunnel_up_and_terminate_tells_the_peer() {
    require_root();
    let params = sample("instantiate-single.json");
    assert_eq!(params["flavourId"], "single");
    let vpngw = &params["additionalParams"]["vpngw"];
    // The lab's addresses are the sample's: if the sample changes, this says where.
    assert_eq!(vpngw["gateway"]["public_address"], LEFT_WAN);
    let branch = vpngw["connections"].as_array().unwrap().iter().find(|c| c["name"] == "branch-1").unwrap();
    assert_eq!(
        (&branch["remote_address"], &branch["local_subnets"][0], &branch["remote_subnets"][0], &branch["suite"]),
        (&Value::from(RIGHT_WAN), &Value::from(LEFT_NET), &Value::from(RIGHT_NET), &Value::from("aes128-sha1-dh14")),
        "{branch}"
    );
    assert_eq!(branch["start"], "active");
    let metrics = vpngw["metrics"]["listen"].as_str().unwrap();
    assert_eq!(metrics, "192.0.2.130:9720", "the lab puts the management address on mgmt0");

    let lab = Lab::gateways("vnf-lcm-single");
    let gw = Vnfc::new(&lab, &lab.left, "gw");
    let _leftovers = Leftovers(vec![gw.run.clone()]);
    // The management network (mgmt_vl): the gateway's mgmt0 has the sample's metrics address,
    // the NFVO's side probes /readyz from there.
    let nfvo = lab.add_namespace("mgmt");
    veth(&lab.left, "mgmt0", &nfvo, "eth0");
    lab.ip(&nfvo, &["addr", "add", "192.0.2.129/25", "dev", "eth0"]);
    lab.ip(&lab.left, &["link", "set", "mgmt0", "up"]);
    lab.ip(&nfvo, &["link", "set", "eth0", "up"]);

    // The operator's key files, where the parameters say.
    let psk = "vnf-lcm-branch-1-psk-0123456789";
    gw.put_key("psk/branch-1.psk", psk);
    gw.put_key("psk/legacy-site.psk", "vnf-lcm-legacy-site-psk-not-used");
    let copy = gw.params("instantiate-single.json");

    // Before the management address is configured, vpngw cannot serve its probes there:
    // instantiate must fail (exit 1) and say why, not report a gateway that never got ready.
    let out = gw.lcm(&["instantiate", "--params", &copy.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "instantiate without the metrics address: {}", text(&out));
    assert!(text(&out).contains("not ready") && text(&out).contains("the end of vpngw's log"), "{}", text(&out));
    eprintln!("instantiate without the management address:\n{}", text(&out));
    lab.ip(&lab.left, &["addr", "add", "192.0.2.130/25", "dev", "mgmt0"]);

    // branch-1's peer: strongSwan, at first with no connection for us (it answers
    // NO_PROPOSAL_CHOSEN): instantiate --wait-up must fail and say why.
    let charon = Charon::start_with(&lab, &lab.right, true);
    let t0 = Instant::now();
    let out = gw.lcm(&["instantiate", "--params", &copy.display().to_string(), "--wait-up", "20"]);
    eprintln!("instantiate --wait-up, the peer refusing: {:?}\n{}", t0.elapsed(), text(&out));
    assert_eq!(out.status.code(), Some(1), "instantiate --wait-up with a refusing peer: {}", text(&out));
    assert!(
        text(&out).contains("connection branch-1 did not come up") && text(&out).contains("phase1-proposal-mismatch"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(psk), "a key was printed");
    // Now as the sample says: aes128-sha1-dh14 with PFS.
    charon.load(&SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "dh14"), psk));

    // instantiate: exit 0 only once vpngw is ready (/readyz) and, with --wait-up, branch-1 up.
    let t0 = Instant::now();
    let out = gw.lcm(&["instantiate", "--params", &copy.display().to_string(), "--wait-up", "20"]);
    let took = t0.elapsed();
    eprintln!("instantiate: {took:?}\n{}", text(&out));
    assert!(out.status.success(), "instantiate: {}\n{}", text(&out), gw.log());
    assert!(!text(&out).contains(psk), "a key was printed");
    let pid = gw.vpngw_pid().expect("no PID file");
    assert!(alive(pid));
    assert_eq!(gw.connection("branch-1")["state"], "up", "{}", gw.status());
    let conf = std::fs::read_to_string(gw.etc.join("vpngw.toml")).unwrap();
    assert!(!conf.contains(psk) && conf.contains("name = \"legacy-site\""), "{conf}");
    let sas = charon.list_sas();
    assert_eq!((sas.ike_established, sas.children.len()), (1, 1), "{sas:?}");
    assert!(sas.ike_algorithms[0].contains("AES_CBC-128") && sas.ike_algorithms[0].contains("MODP_2048"), "{sas:?}");

    // The NFVO's view on the management network.
    let probe = lab.exec(&nfvo, &binary().display().to_string(), &["healthcheck", "--ready", "--address", metrics]);
    assert!(probe.status.success(), "/readyz from the management network: {}", text(&probe));

    // Traffic crosses the tunnel.
    assert!(
        wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)),
        "no ping through the tunnel\n{}",
        gw.log()
    );
    assert_eq!(ping(&lab, &lab.right_host, LEFT_HOST, 3), 3, "pings right -> left");

    // heal on a live gateway: a reload, no restart; the tunnel keeps its IKE SA and child SA.
    let out = gw.lcm(&["heal"]);
    assert!(out.status.success(), "heal: {}", text(&out));
    assert!(text(&out).contains("reloaded its configuration (no restart)"), "{}", text(&out));
    assert_eq!(gw.vpngw_pid(), Some(pid), "heal restarted vpngw");
    let after = charon.list_sas();
    assert_eq!((after.ike_sas, after.children), (sas.ike_sas.clone(), sas.children.clone()), "heal renegotiated");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 2), 2);

    // terminate: vpngw stops (SIGTERM: a Delete to every peer), strongSwan's SAs go at once
    // (its dead peer detection is off here: only a Delete can remove them).
    let t0 = Instant::now();
    let out = gw.lcm(&["terminate"]);
    assert!(out.status.success(), "terminate: {}", text(&out));
    assert!(!alive(pid), "vpngw (PID {pid}) still runs after terminate");
    let gone = wait_for(Duration::from_secs(3), || {
        let s = charon.list_sas();
        (s.ike_established == 0 && s.children.is_empty()).then(|| t0.elapsed())
    });
    let gone = gone.unwrap_or_else(|| panic!("strongSwan still has SAs: {:?}\n{}", charon.list_sas(), charon.log()));
    eprintln!("terminate: strongSwan's SAs gone {gone:?} after terminate began");
    assert!(charon.log().contains("received DELETE"), "no Delete reached strongSwan:\n{}", charon.log());
    assert!(!gw.etc.join("vpngw.toml").exists(), "terminate left vpngw.toml");
    assert!(gw.etc.join("psk/branch-1.psk").exists(), "terminate removed a key file");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 1), 0, "traffic without the tunnel");
}

/// The hot_standby flavour's sample: the script instantiated on both gateways of the `ha.rs` lab
/// (whose addresses are the sample's), each finding which node it is from its sync address;
/// keepalived gives A the virtual addresses, strongSwan (the sample's peer, 203.0.113.2) sees
/// one gateway at the public virtual address. terminate on the active hands over to B (the
/// tunnel stays, strongSwan keeps its SAs); terminate on B then tells the peer.
#[test]
fn hot_standby_sample_pair_through_the_virtual_address() {
    require_root();
    let params = sample("instantiate-hot-standby.json");
    assert_eq!(params["flavourId"], "hot_standby");
    let v = &params["additionalParams"]["vpngw"];
    let h = &v["ha"];
    assert_eq!((h["public_vip"].as_str(), h["lan_vip"].as_str()), (Some("198.51.100.1/24"), Some("10.1.0.1/24")));
    assert_eq!((ha::WAN_VIP, ha::LAN_VIP), ("198.51.100.1", "10.1.0.1"));
    assert_eq!(
        (&h["interfaces"]["untrusted"], &h["interfaces"]["trusted"]),
        (&Value::from("wan0"), &Value::from("lan0"))
    );
    for node in Node::BOTH {
        let n = &h["nodes"][node.letter()];
        assert_eq!(
            (n["sync_address"].as_str(), n["untrusted_address"].as_str(), n["trusted_address"].as_str()),
            (Some(node.sync()), Some(node.wan()), Some(node.lan())),
            "the lab's addresses of node {node:?} are the sample's"
        );
    }
    let branch = &v["connections"][0];
    let peer = branch["remote_address"].as_str().unwrap();
    assert_eq!((peer, &branch["suite"]), ("203.0.113.2", &Value::from("aes128-sha1-dh14")));
    assert_eq!(
        (&branch["local_subnets"][0], &branch["remote_subnets"][0]),
        (&Value::from(LEFT_NET), &Value::from(RIGHT_NET))
    );

    let lab = HaLab::new("vnf-lcm-pair");
    let vnfc = Node::BOTH.map(|n| Vnfc::new(&lab.lab, lab.ns(n), n.letter()));
    let _leftovers = Leftovers(vnfc.iter().map(|v| v.run.clone()).collect());
    // The sample's peer is on another network than the public virtual address; the lab has no
    // router, so R holds it on the WAN link too and both sides reach each other on-link.
    lab.lab.ip(&lab.r, &["addr", "add", &format!("{peer}/24"), "dev", "wan0"]);
    for node in Node::BOTH {
        lab.lab.ip(lab.ns(node), &["route", "add", "203.0.113.0/24", "dev", "wan0"]);
    }
    let psk = "vnf-lcm-pair-psk-0123456789abcdef";
    for v in &vnfc {
        v.put_key("psk/branch-1.psk", psk);
        v.put_key("ha.key", "4f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0");
    }
    let charon = Charon::start_with(&lab.lab, &lab.r, true);
    charon.load(&SwConn {
        local_addr: peer.into(),
        local_id: peer.into(),
        remote_addr: ha::WAN_VIP.into(),
        remote_id: ha::WAN_VIP.into(),
        ..SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "dh14"), psk)
    });

    // A first (no --node: the script finds 192.0.2.1 here), up with --wait-up: it is the
    // active, so branch-1 is up when the script returns.
    let [a, b] = &vnfc;
    let t0 = Instant::now();
    let out = a.lcm(&[
        "instantiate",
        "--params",
        &a.params("instantiate-hot-standby.json").display().to_string(),
        "--wait-up",
        "20",
    ]);
    eprintln!("instantiate A: {:?}\n{}", t0.elapsed(), text(&out));
    assert!(out.status.success(), "instantiate A: {}\n{}", text(&out), a.log());
    assert!(text(&out).contains("ready: hot-backup active"), "{}", text(&out));
    assert!(lab.holds(Node::A, ha::WAN_VIP) && lab.holds(Node::A, ha::LAN_VIP));
    assert_eq!(a.connection("branch-1")["state"], "up", "{}", a.status());
    let t0 = Instant::now();
    let out = b.lcm(&[
        "instantiate",
        "--params",
        &b.params("instantiate-hot-standby.json").display().to_string(),
        "--wait-up",
        "20",
    ]);
    eprintln!("instantiate B: {:?}\n{}", t0.elapsed(), text(&out));
    assert!(out.status.success(), "instantiate B: {}\n{}", text(&out), b.log());
    assert!(text(&out).contains("ready: hot-backup standby, in sync"), "{}", text(&out));
    assert_eq!(lab.vip_holders(), [Node::A]);
    assert!(wait_ping(&lab.lab, &lab.lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "{}", a.log());
    let sas = charon.list_sas();
    assert_eq!((sas.ike_established, sas.children.len()), (1, 1), "{sas:?}");

    // terminate on the active: a handover (B in sync), not Deletes: strongSwan keeps its SAs.
    let pid_a = a.vpngw_pid().unwrap();
    let t0 = Instant::now();
    let out = a.lcm(&["terminate"]);
    eprintln!("terminate A: {:?}\n{}", t0.elapsed(), text(&out));
    assert!(out.status.success(), "terminate A: {}", text(&out));
    assert!(!alive(pid_a));
    assert!(lab.wait_vips(Node::B, Duration::from_secs(3)).is_some(), "B did not take over\n{}", b.log());
    assert!(wait_ping(&lab.lab, &lab.lab.left_host, RIGHT_HOST, Duration::from_secs(5)), "{}", b.log());
    assert_eq!(b.status()["ha"]["role"], "active", "{}", b.status());
    let after = charon.list_sas();
    assert_eq!((&after.ike_sas, &after.children), (&sas.ike_sas, &sas.children), "the handover renegotiated");

    assert!(!a.root.join("keepalived/keepalived.conf").exists() && !a.etc.join("vpngw.toml").exists());

    // heal on A (its VNFC comes back): from the parameters kept at instantiation, A rejoins as
    // the standby and is ready once in sync; B keeps the role (nopreempt).
    let t0 = Instant::now();
    let out = a.lcm(&["heal"]);
    eprintln!("heal A: {:?}\n{}", t0.elapsed(), text(&out));
    assert!(out.status.success(), "heal A: {}\n{}", text(&out), a.log());
    assert!(text(&out).contains("ready: hot-backup standby, in sync"), "{}", text(&out));
    assert_eq!(lab.vip_holders(), [Node::B]);

    // terminate on B: the handover back to A.
    let out = b.lcm(&["terminate"]);
    assert!(out.status.success(), "terminate B: {}", text(&out));
    assert!(lab.wait_vips(Node::A, Duration::from_secs(3)).is_some(), "A did not take over\n{}", a.log());
    assert!(wait_ping(&lab.lab, &lab.lab.left_host, RIGHT_HOST, Duration::from_secs(5)), "{}", a.log());
    let after = charon.list_sas();
    assert_eq!((&after.ike_sas, &after.children), (&sas.ike_sas, &sas.children), "the handover back renegotiated");

    // terminate on A, now the active and alone: Deletes, strongSwan's SAs go.
    let t0 = Instant::now();
    let out = a.lcm(&["terminate"]);
    assert!(out.status.success(), "terminate A: {}", text(&out));
    let gone = wait_for(Duration::from_secs(3), || {
        let s = charon.list_sas();
        (s.ike_established == 0 && s.children.is_empty()).then(|| t0.elapsed())
    });
    let gone = gone.unwrap_or_else(|| panic!("strongSwan still has SAs: {:?}\n{}", charon.list_sas(), a.log()));
    eprintln!("terminate of the last node: strongSwan's SAs gone {gone:?} after terminate began");
    assert!(lab.vip_holders().is_empty(), "keepalived left an address: {:?}", lab.vip_holders());
}
