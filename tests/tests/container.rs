//! The container image (deploy/container/): two vpngw containers, each the gateway of a LAN,
//! negotiate a tunnel over an "internet" segment and carry the LAN hosts' pings, with only the
//! capabilities docs/deployment.md ("Container") gives them.
//!
//! Topology (lab style, tests/src/netns.rs):
//!
//! ```text
//! left host 10.1.0.10 - lan0 [container A] wan0 198.51.100.1 -- br0 (inet namespace) --
//!     198.51.100.2 wan0 [container B] lan0 - right host 10.2.0.10
//! ```
//!
//! The containers run with `--network none`: their network namespaces hold only loopback
//! until the test moves veth ends in (`ip link add ... netns PID`, configured with `nsenter`).
//! The image is built by deploy/container/build-image.sh (what `make image` runs; idempotent,
//! about a second when nothing changed), or taken as it is from `VPNGW_TEST_IMAGE`. A Docker
//! daemon that answers is used; if none does, deploy/container/dockerd.sh starts one, and the
//! test stops that one (and only that one) at the end, failed or not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root, wait_for};
use vpngw_tests::traffic::{Capture, LEFT_HOST, RIGHT_HOST, ping, wait_ping};

const PSK: &str = "container-psk-0123456789abcdef";

/// The capabilities the containers get after `--cap-drop ALL` (docs/deployment.md says why each).
const CAPS: [&str; 3] = ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"];
/// CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13): the daemon's effective set.
const CAP_MASK: u64 = (1 << 10) | (1 << 12) | (1 << 13);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("docker {args:?}: {e}"))
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn run_checked(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(out.status.success(), "{shown} failed ({}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The Docker daemon: stopped when dropped if this test started it.
struct Engine {
    started: bool,
}

impl Engine {
    fn start() -> Self {
        let said = run_checked(Command::new(repo().join("deploy/container/dockerd.sh")).arg("start"));
        Self { started: said.starts_with("started") }
    }

    /// The image under test: `VPNGW_TEST_IMAGE`, or what build-image.sh builds (and names).
    fn image(&self) -> String {
        if let Ok(image) = std::env::var("VPNGW_TEST_IMAGE") {
            return image;
        }
        let t = Instant::now();
        let image = run_checked(&mut Command::new(repo().join("deploy/container/build-image.sh")));
        eprintln!("image {image} ready in {:.1} s", t.elapsed().as_secs_f64());
        image
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new(repo().join("deploy/container/dockerd.sh")).arg("stop").status();
        }
    }
}

/// A running container; removed (with its network namespace and the veth ends in it) when
/// dropped.
struct Container {
    name: String,
}

impl Container {
    /// `docker run` with the documented flags; the configuration directory is mounted read-only
    /// at /etc/vpngw.
    ///
    /// The daemon binds its public address at start, but the container's network namespace
    /// exists only once the container runs, and the address comes with the veth the test moves
    /// in afterwards. `net.ipv4.ip_nonlocal_bind=1` lets vpngw bind it before it exists (what
    /// the hot-backup standby relies on, docs/high-availability.md); IKE's retransmissions and
    /// the link path, which follows route and neighbour changes, pick the address up when it
    /// appears. The alternatives need more: an entrypoint that waits for the interface needs a
    /// shell (the image is FROM scratch and has none), and `docker exec` of the daemon would
    /// need a first process to keep the container alive (none in the image either) and would
    /// run vpngw outside the container's main process (no HEALTHCHECK, `docker stop`, logs).
    fn run(name: &str, image: &str, config_dir: &Path) -> Self {
        let _ = docker(&["rm", "-f", name]);
        let volume = format!("{}:/etc/vpngw:ro", config_dir.display());
        let mut args = vec![
            "run",
            "--detach",
            "--name",
            name,
            "--label",
            "org.vpngw.test=container",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/run/vpngw:mode=0700",
            "--cap-drop",
            "ALL",
        ];
        for cap in CAPS {
            args.extend(["--cap-add", cap]);
        }
        args.extend([
            "--device",
            "/dev/net/tun",
            "--security-opt",
            "no-new-privileges",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--sysctl",
            "net.ipv4.ip_nonlocal_bind=1",
            "--volume",
            &volume,
            "--env",
            "RUST_LOG=info",
            image,
        ]);
        // The guard first: a container that `docker run` created but could not start is
        // removed too.
        let c = Self { name: name.to_string() };
        docker_ok(&args);
        // Up once the control socket answers inside.
        wait_for(Duration::from_secs(10), || c.exec(&["vpngw", "status"]).status.success().then_some(()))
            .unwrap_or_else(|| panic!("{name}: vpngw did not start:\n{}", c.logs()));
        c
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    fn pid(&self) -> String {
        self.inspect("{{.State.Pid}}")
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// `ip ARGS` in the container's network namespace (the image has no ip: the host's, by
    /// nsenter).
    fn ip(&self, args: &[&str]) {
        run_checked(Command::new("nsenter").args(["-t", &self.pid(), "-n", "ip"]).args(args));
    }

    fn logs(&self) -> String {
        text(&docker(&["logs", &self.name]))
    }

    fn connection(&self, name: &str) -> Option<Value> {
        let out = self.exec(&["vpngw", "status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        status["connections"].as_array()?.iter().find(|c| c["name"] == name).cloned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.name]);
    }
}

/// One gateway's configuration directory: vpngw.toml and the peer's key, both 0600.
fn config_dir(lab: &Lab, name: &str, public: &str, peer: &str, nets: (&str, &str), active: bool) -> PathBuf {
    let dir = lab.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = format!(
        "[gateway]\nname = \"{name}\"\npublic_address = \"{public}\"\n\n\
         [[connection]]\nname = \"peer\"\nremote_address = \"{peer}\"\npre_shared_key_file = \"peer.psk\"\n\
         local_subnets = [\"{}\"]\nremote_subnets = [\"{}\"]\nstart = \"{}\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\npfs = \"dh14\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:9720\"\n",
        nets.0,
        nets.1,
        if active { "active" } else { "passive" },
    );
    for (file, content) in [("vpngw.toml", config), ("peer.psk", format!("{PSK}\n"))] {
        let path = dir.join(file);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

/// Moves a new veth's ends into the container (as wan0 or lan0, addressed and up) and into
/// namespace `ns` (as `other`, up).
fn wire(lab: &Lab, c: &Container, dev: &str, address: &str, ns: &str, other: &str) {
    run_checked(Command::new("ip").args([
        "link",
        "add",
        dev,
        "netns",
        &c.pid(),
        "type",
        "veth",
        "peer",
        "name",
        other,
        "netns",
        ns,
    ]));
    c.ip(&["addr", "add", address, "dev", dev]);
    c.ip(&["link", "set", dev, "up"]);
    lab.ip(ns, &["link", "set", other, "up"]);
}

#[test]
fn two_containers_carry_a_tunnel() {
    require_root();
    // Dropped last: the containers are gone by then.
    let engine = Engine::start();
    let image = engine.image();

    // The image: FROM scratch (no shell), the health check the Dockerfile declares.
    let health = docker_ok(&["image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", &image]);
    assert_eq!(health, r#"["CMD","/usr/bin/vpngw","healthcheck"]"#);
    let shell = docker(&["run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", &image, "-c", "true"]);
    assert!(!shell.status.success(), "the image has a shell");

    // The lab's host namespaces and the internet segment; its gateway namespaces stay empty
    // (the containers are the gateways).
    let lab = Lab::namespaces("container");
    let inet = lab.add_namespace("inet");
    lab.ip(&inet, &["link", "add", "br0", "type", "bridge"]);
    lab.ip(&inet, &["link", "set", "br0", "up"]);

    let tag = std::process::id();
    let dir_a = config_dir(&lab, "gw-a", LEFT_WAN, RIGHT_WAN, (LEFT_NET, RIGHT_NET), true);
    let dir_b = config_dir(&lab, "gw-b", RIGHT_WAN, LEFT_WAN, (RIGHT_NET, LEFT_NET), false);
    let started = Instant::now();
    let a = Container::run(&format!("vpngw-test-{tag}-a"), &image, &dir_a);
    let b = Container::run(&format!("vpngw-test-{tag}-b"), &image, &dir_b);

    for (c, wan, lan, host, host_ns, port) in [
        (&a, LEFT_WAN, "10.1.0.1", LEFT_HOST, &lab.left_host, "port-a"),
        (&b, RIGHT_WAN, "10.2.0.1", RIGHT_HOST, &lab.right_host, "port-b"),
    ] {
        wire(&lab, c, "wan0", &format!("{wan}/24"), &inet, port);
        lab.ip(&inet, &["link", "set", port, "master", "br0"]);
        wire(&lab, c, "lan0", &format!("{lan}/24"), host_ns, "eth0");
        lab.ip(host_ns, &["addr", "add", &format!("{host}/24"), "dev", "eth0"]);
        lab.ip(host_ns, &["route", "add", "default", "via", lan]);
    }
    let logs = || format!("--- A:\n{}\n--- B:\n{}", a.logs(), b.logs());

    // The tunnel: A initiates (its first IKE packets went nowhere before wan0 existed).
    let up = wait_for(Duration::from_secs(30), || a.connection("peer").filter(|c| c["state"] == "up"))
        .unwrap_or_else(|| panic!("tunnel not up\n{}", logs()));
    eprintln!("tunnel up {:.1} s after the containers started", started.elapsed().as_secs_f64());
    assert_eq!(up["child_sas"][0]["encapsulation"], "esp", "{up}");
    assert!(b.connection("peer").is_some_and(|c| c["state"] == "up"), "B: {:?}", b.connection("peer"));

    // Pings cross it, and only ESP crosses the internet segment.
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "no ping through\n{}", logs());
    // On A's port of the bridge (br0 itself sees only what is flooded or for it).
    let cap = Capture::start(&lab, &inet, "port-a", "container-inet");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 5), 5, "left -> right\n{}", logs());
    assert_eq!(ping(&lab, &lab.right_host, LEFT_HOST, 5), 5, "right -> left\n{}", logs());
    // tcpdump hands over what the kernel captured in blocks, a block once full or after its
    // timeout (1 s): a few pings fill none, so wait for the timeout before stopping it.
    std::thread::sleep(Duration::from_millis(1500));
    cap.stop(&lab);
    let esp = cap.count("esp");
    assert!(esp >= 20, "{esp} ESP packets on the internet segment for 10 pings and their replies; {}", cap.report());
    assert_eq!(cap.count("icmp or net 10.0.0.0/8"), 0, "inner packets in clear on the internet segment");
    let child = &a.connection("peer").unwrap()["child_sas"][0];
    assert!(child["packets_out"].as_u64().unwrap_or(0) >= 10, "{child}");

    // The HEALTHCHECK (10 s interval: the first check runs 10 s after the start).
    let healthy = wait_for(Duration::from_secs(40), || {
        let s = a.inspect("{{.State.Health.Status}}");
        (s == "healthy").then_some(s)
    });
    assert!(
        healthy.is_some(),
        "A is {}: {}",
        a.inspect("{{.State.Health.Status}}"),
        a.inspect("{{json .State.Health.Log}}")
    );
    let ready = a.exec(&["vpngw", "healthcheck", "--ready"]);
    assert!(ready.status.success(), "readyz: {}", text(&ready));

    // The privileges: not privileged, every capability dropped but three, read-only root, and
    // the daemon's effective set is exactly those three.
    for c in [&a, &b] {
        let host: Value = serde_json::from_str(&c.inspect("{{json .HostConfig}}")).unwrap();
        assert_eq!(host["Privileged"], false);
        assert!(
            matches!(host["CapDrop"].as_array().map(Vec::as_slice), Some([d]) if d == "ALL" || d == "CAP_ALL"),
            "{host}"
        );
        // Docker 20.10 records them as given or with the CAP_ prefix (normalised).
        let mut added: Vec<&str> = host["CapAdd"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .map(|c| c.strip_prefix("CAP_").unwrap_or(c))
            .collect();
        added.sort_unstable();
        assert_eq!(added, CAPS);
        assert_eq!(host["NetworkMode"], "none");
        assert_eq!(host["ReadonlyRootfs"], true);
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        assert_eq!(u64::from_str_radix(&field("CapEff:"), 16).unwrap(), CAP_MASK, "{status}");
        assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16).unwrap(), CAP_MASK, "{status}");
        assert_eq!(field("NoNewPrivs:"), "1");
    }

    // docker stop: SIGTERM; A deletes its SAs (B hears it at once) and exits 0 well within
    // docker stop's 10 s.
    let t = Instant::now();
    docker_ok(&["stop", &a.name]);
    let stop_time = t.elapsed();
    assert_eq!(a.inspect("{{.State.ExitCode}}"), "0", "{}", a.logs());
    assert!(stop_time < Duration::from_secs(5), "docker stop took {stop_time:?}");
    let down = wait_for(Duration::from_secs(3), || b.connection("peer").filter(|c| c["state"] == "down"));
    assert!(down.is_some(), "B did not hear A's Delete: {:?}\n{}", b.connection("peer"), logs());
    assert!(b.logs().contains("deleted by peer"), "{}", b.logs());
    eprintln!("docker stop took {:.2} s; total {:.1} s", stop_time.as_secs_f64(), started.elapsed().as_secs_f64());
}
