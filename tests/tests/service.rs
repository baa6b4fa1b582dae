//! What service managers, orchestrators and LCM scripts see of the daemon, between two vpngw
//! in namespaces: systemd's sd_notify protocol (READY once the control socket and the probes
//! answer, RELOADING and READY around a SIGHUP, STOPPING at SIGTERM), read from a notify socket
//! of the test's own as systemd would; `/healthz` and `/readyz` through `vpngw healthcheck`;
//! `vpngw up --wait` returning when the tunnel is up, failing with the diagnosis when the peer
//! does not answer, and timing out with 124; `vpngw reload` refusing a broken file with its
//! problems (the tunnel untouched) and applying a good one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::net::UnixDatagram;
use std::process::Output;
use std::time::{Duration, Instant};

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root, wait_for};
use vpngw_tests::traffic::{RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, binary, config_text};

const PSK: &str = "service-psk-0123456789abcdef";
/// A peer address on the internet segment that nobody holds: negotiations to it time out.
const NOBODY: &str = "198.51.100.99";

fn connection(name: &str, remote: &str, local_net: &str, remote_net: &str, start: &str) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local_net}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{start}\"\n"
    )
}

const METRICS: &str = "\n[metrics]\nlisten = \"127.0.0.1:9720\"\n";

fn left_config(lab: &Lab, with_nowhere: bool, broken: bool) -> String {
    let mut connections = connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, "passive");
    if with_nowhere {
        connections.push_str(&connection("to-nowhere", NOBODY, LEFT_NET, "10.9.0.0/24", "passive"));
    }
    if broken {
        connections.push_str("[connection.ike]\nencryption = \"rot13\"\n");
    }
    // Short retransmissions (tuning): a silent peer is a failure within seconds.
    config_text(LEFT_WAN, &Vpngw::socket_for(lab, "left"), true, &connections) + METRICS
}

/// The notify messages received so far (each datagram one string), waiting up to `timeout`
/// for one that contains `wanted`.
fn wait_notify(socket: &UnixDatagram, seen: &mut Vec<String>, wanted: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        if seen.iter().any(|m| m.lines().any(|l| l == wanted)) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => seen.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => return false,
        }
    }
}

fn healthcheck(lab: &Lab, ns: &str, ready: bool) -> Output {
    let bin = binary().display().to_string();
    let mut args = vec!["healthcheck"];
    if ready {
        args.push("--ready");
    }
    lab.exec(ns, &bin, &args)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rekeys `name` and waits for a log line at DEBUG written after `from` (bytes of the log).
fn rekey_logs_debug(v: &Vpngw, name: &str, from: usize) -> bool {
    let rekey = v.cli(&["rekey", name]);
    assert!(rekey.status.success(), "rekey: {}", text(&rekey));
    wait_for(Duration::from_secs(10), || v.log_text().get(from..)?.contains(" DEBUG ").then_some(())).is_some()
}

/// The inbound SPI of `name`'s first child SA.
fn spi_in(v: &Vpngw, name: &str) -> Option<String> {
    v.connection(name)?["child_sas"][0]["spi_in"].as_str().map(str::to_string)
}

#[test]
fn systemd_notify_probes_up_wait_and_reload() {
    require_root();
    let lab = Lab::gateways("service");

    // The right gateway: passive, waits for the left's `up`.
    let right = Vpngw::start(
        &lab,
        &lab.right,
        "right",
        &config_text(
            RIGHT_WAN,
            &Vpngw::socket_for(&lab, "right"),
            false,
            &connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive"),
        ),
        &[],
    );

    // The left gateway, started as systemd starts a Type=notify unit: NOTIFY_SOCKET names a
    // datagram socket the manager (here, this test) reads.
    let dir = lab.dir.join("vpngw-left");
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let notify_env = notify_path.display().to_string();
    let left = Vpngw::spawn(
        &lab,
        &lab.left,
        "left",
        &left_config(&lab, true, false),
        &[],
        &[("RUST_LOG", "info"), ("NOTIFY_SOCKET", &notify_env)],
    );
    let (config, pid) = (left.config.clone(), left.pid);

    // READY=1 only once the daemon can be used: at that moment the control socket answers
    // and /healthz and /readyz say 200.
    let mut seen = Vec::new();
    assert!(
        wait_notify(&notify, &mut seen, "READY=1", Duration::from_secs(15)),
        "no READY=1: {seen:?}\n{}",
        left.log_text()
    );
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l.starts_with("STATUS=running: 2 connection(s)"))),
        "READY without the STATUS line: {seen:?}"
    );
    assert!(left.status().is_some(), "READY=1 before the control socket answers:\n{}", left.log_text());
    let live = healthcheck(&lab, &lab.left, false);
    assert!(live.status.success() && String::from_utf8_lossy(&live.stdout).contains("alive"), "{}", text(&live));
    let ready = healthcheck(&lab, &lab.left, true);
    assert!(
        ready.status.success() && String::from_utf8_lossy(&ready.stdout).contains("ready: 2 connection(s)"),
        "{}",
        text(&ready)
    );
    // No daemon listening: the probe fails (it is not a constant 0).
    let nothing = lab.exec(&lab.right_host, &binary().display().to_string(), &["healthcheck", "--timeout", "1"]);
    assert!(!nothing.status.success(), "healthcheck succeeded with no daemon: {}", text(&nothing));

    // up --wait: returns 0 once the tunnel is up, and traffic crosses it at once.
    let started = Instant::now();
    let up = left.cli(&["up", "to-right", "--wait", "--timeout", "30"]);
    assert!(up.status.success(), "up --wait: {}\n{}", text(&up), left.log_text());
    assert!(String::from_utf8_lossy(&up.stdout).contains("to-right is up"), "{}", text(&up));
    assert_eq!(left.connection("to-right").unwrap()["state"], "up", "up --wait returned before the tunnel was up");
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(5)), "no traffic after up --wait");
    println!("up --wait returned after {:?}", started.elapsed());
    let cookies = left.connection("to-right").unwrap()["ike_sa"]["initiator_cookie"].clone();

    // A peer that never answers: the negotiation fails (retransmissions exhausted) and up
    // --wait says so with the diagnosis, exit 1.
    let failed = left.cli(&["up", "to-nowhere", "--wait", "--timeout", "60"]);
    assert_eq!(failed.status.code(), Some(1), "up --wait to a silent peer: {}", text(&failed));
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("the negotiation failed") && said.contains("to-nowhere"), "no diagnosis: {}", text(&failed));
    // And with a timeout shorter than the retransmissions: 124, with the diagnosis.
    let timed_out = left.cli(&["up", "to-nowhere", "--wait", "--timeout", "1"]);
    assert_eq!(timed_out.status.code(), Some(124), "up --wait --timeout 1: {}", text(&timed_out));
    assert!(String::from_utf8_lossy(&timed_out.stderr).contains("not up after 1 s"), "{}", text(&timed_out));
    // No such connection: exit 3, at once.
    let unknown = left.cli(&["up", "no-such", "--wait"]);
    assert_eq!(unknown.status.code(), Some(3), "{}", text(&unknown));

    // vpngw log-level: DEBUG lines at once (the daemon started with RUST_LOG=info), the change
    // logged at INFO; a filter that does not parse is refused with exit 2.
    let bad = left.cli(&["log-level", "info,vpngw=loud"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let from = left.log_text().len();
    let debug = left.cli(&["log-level", "debug"]);
    assert!(debug.status.success(), "log-level debug: {}", text(&debug));
    assert!(left.log_text()[from..].contains("log filter changed"), "{}", left.log_text());
    assert!(rekey_logs_debug(&left, "to-right", from), "no DEBUG line after log-level debug:\n{}", left.log_text());

    // vpngw reload with a broken file: refused, exit 2, the problem named by its key; the
    // tunnel keeps its IKE SA.
    std::fs::write(&config, left_config(&lab, true, true)).unwrap();
    let refused = left.cli(&["reload"]);
    assert_eq!(refused.status.code(), Some(2), "reload of a broken file: {}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ike.encryption"),
        "problem not named: {}",
        text(&refused)
    );
    assert_eq!(
        left.connection("to-right").unwrap()["ike_sa"]["initiator_cookie"],
        cookies,
        "a refused reload touched the tunnel"
    );
    assert_eq!(left.connection("to-right").unwrap()["state"], "up");

    // A good file without to-nowhere: applied, and said so.
    std::fs::write(&config, left_config(&lab, false, false)).unwrap();
    let applied = left.cli(&["reload"]);
    assert!(applied.status.success(), "reload: {}", text(&applied));
    assert!(
        String::from_utf8_lossy(&applied.stdout).contains("1 connection(s) kept, 1 removed or changed, 0 added"),
        "{}",
        text(&applied)
    );
    assert!(left.connection("to-nowhere").is_none(), "to-nowhere still configured after the reload");
    // The reload kept the log filter: still DEBUG; after `log-level info`, no more.
    let from = left.log_text().len();
    assert!(rekey_logs_debug(&left, "to-right", from), "the reload reset the log filter:\n{}", left.log_text());
    let info = left.cli(&["log-level", "info"]);
    assert!(info.status.success(), "log-level info: {}", text(&info));
    let from = left.log_text().len();
    let before = spi_in(&left, "to-right");
    let rekey = left.cli(&["rekey", "to-right"]);
    assert!(rekey.status.success(), "rekey: {}", text(&rekey));
    assert!(
        wait_for(Duration::from_secs(10), || (spi_in(&left, "to-right") != before).then_some(())).is_some(),
        "the rekey did not finish"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!left.log_text()[from..].contains(" DEBUG "), "DEBUG after log-level info:\n{}", &left.log_text()[from..]);
    assert_eq!(
        left.connection("to-right").unwrap()["ike_sa"]["initiator_cookie"],
        cookies,
        "reload renegotiated to-right"
    );

    // SIGHUP, as systemd's ExecReload sends it: RELOADING=1, then READY=1 again.
    seen.clear();
    lab.exec(&lab.left, "kill", &["-HUP", &pid.to_string()]);
    assert!(wait_notify(&notify, &mut seen, "RELOADING=1", Duration::from_secs(10)), "no RELOADING=1: {seen:?}");
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "RELOADING without MONOTONIC_USEC: {seen:?}"
    );
    seen.retain(|m| !m.contains("RELOADING=1"));
    assert!(
        wait_notify(&notify, &mut seen, "READY=1", Duration::from_secs(10)),
        "no READY=1 after the reload: {seen:?}"
    );

    // SIGTERM: STOPPING=1, and the peer is told (its tunnel goes down at once).
    seen.clear();
    assert_eq!(left.stop(&lab), Some(0), "{}", left.log_text());
    assert!(wait_notify(&notify, &mut seen, "STOPPING=1", Duration::from_secs(1)), "no STOPPING=1: {seen:?}");
    assert!(
        wait_for(Duration::from_secs(5), || (right.connection("to-left")?["state"] == "down").then_some(())).is_some(),
        "the peer was not told of the stop: {:?}",
        right.connection("to-left")
    );
    // Stopped: the probes fail.
    assert!(!healthcheck(&lab, &lab.left, false).status.success(), "healthz answered after the stop");
}
