//! The VNF package's LCM script (`vnf-descriptor/Scripts/vpngw-lcm.sh`) run for real, with the
//! package's own sample Instantiate VNF requests (`vnf-descriptor/samples/`), in namespaces whose
//! addresses are the samples' own, against strongSwan 5.9.8 as the peer the sample names: the
//! configuration the script writes brings a tunnel up and carries a ping; `heal` on a healthy
//! gateway reloads without touching the tunnel; `terminate` stops vpngw, and the peer is told
//! (its SAs are gone at once, not after dead peer detection). `make vnf-check`
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
use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root, veth, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, esp_words, ike_words};
use vpngw_tests::traffic::{LEFT_HOST, RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> PathBuf {
    repo().join("vnf-descriptor/Scripts/vpngw-lcm.sh")
}

fn sample(name: &str) -> Value {
    let path = repo().join("vnf-descriptor/samples").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
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
        let original = std::fs::read_to_string(repo().join("vnf-descriptor/samples").join(sample_name)).unwrap();
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

    // branch-1's peer: strongSwan answers (aes128-sha1-dh14 with PFS, the sample's suite).
    let charon = Charon::start_with(&lab, &lab.right, true);
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
