//! IKEv1 interoperability with strongSwan 5.9.8 (Debian) in network namespaces.
//!
//! Each case: strongSwan in the right namespace, vpngw in the left, configured alike; one side
//! initiates; then both must agree: strongSwan's `swanctl --list-sas` and `vpngw status --json`
//! show the IKE SA established and the child SA installed with the same SPIs (crossed) and
//! algorithms. Stopping vpngw must delete the SAs at strongSwan too.
//!
//! The whole matrix runs every time (about 20 s): all 50 phase 1 and 60 phase 2 combinations,
//! each with vpngw as initiator and as responder.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, SwTimers, esp_words, ike_words, sw_cipher_name, sw_group_name};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";
const CIPHERS: [&str; 5] = ["des", "3des", "aes-128", "aes-192", "aes-256"];
const HASHES: [&str; 2] = ["md5", "sha1"];
const GROUPS: [&str; 5] = ["dh1", "dh2", "dh5", "dh14", "dh24"];
const PFS: [&str; 6] = ["disable", "dh1", "dh2", "dh5", "dh14", "dh24"];

#[derive(Clone, Debug)]
struct Case {
    vpngw_initiates: bool,
    aggressive: bool,
    fqdn: bool,
    ike: (&'static str, &'static str, &'static str),
    esp: (&'static str, &'static str, &'static str),
}

impl Case {
    fn defaults() -> Self {
        Self {
            vpngw_initiates: true,
            aggressive: false,
            fqdn: false,
            ike: ("3des", "md5", "dh1"),
            esp: ("3des", "md5", "disable"),
        }
    }

    fn vpngw_toml(&self) -> String {
        let (lid, rid) = if self.fqdn { ("fqdn:left.lab.example", "fqdn:right.lab.example") } else { ("ip", "ip") };
        format!(
            "[[connection]]\nname = \"to-right\"\nremote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\nlocal_subnets = [\"{LEFT_NET}\"]\n\
             remote_subnets = [\"{RIGHT_NET}\"]\nstart = \"{start}\"\n[connection.ike]\nmode = \"{mode}\"\nlocal_id = \"{lid}\"\nremote_id = \"{rid}\"\n\
             encryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\n[connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\npfs = \"{}\"\n",
            self.ike.0,
            self.ike.1,
            self.ike.2,
            self.esp.0,
            self.esp.1,
            self.esp.2,
            start = if self.vpngw_initiates { "active" } else { "passive" },
            mode = if self.aggressive { "aggressive" } else { "main" },
        )
    }

    fn strongswan(&self) -> SwConn {
        let (lid, rid) = if self.fqdn { ("right.lab.example", "left.lab.example") } else { (RIGHT_WAN, LEFT_WAN) };
        SwConn {
            aggressive: self.aggressive,
            local_addr: RIGHT_WAN.into(),
            remote_addr: LEFT_WAN.into(),
            local_id: lid.into(),
            remote_id: rid.into(),
            ike: ike_words(self.ike.0, self.ike.1, self.ike.2),
            esp: esp_words(self.esp.0, self.esp.1, self.esp.2),
            local_ts: vec![RIGHT_NET.into()],
            remote_ts: vec![LEFT_NET.into()],
            psk: PSK.into(),
        }
    }
}

fn diagnostics(v: &Vpngw, charon: &Charon) -> String {
    let log = v.log_text();
    let sw = charon.log();
    let tail = |s: &str, n: usize| {
        s.lines().rev().take(n).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    format!("--- vpngw log ---\n{}\n--- charon log ---\n{}", tail(&log, 30), tail(&sw, 40))
}

/// Runs one case against a running charon; returns a description of what went wrong.
fn run_case(lab: &Lab, charon: &Charon, case: &Case, n: usize) -> Result<(), String> {
    charon.load(&case.strongswan());
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(lab, &format!("c{n}")), true, &case.vpngw_toml());
    let v = Vpngw::start(lab, &lab.left, &format!("c{n}"), &config, &[]);
    if !case.vpngw_initiates {
        charon.initiate(10);
    }
    let result = check_agreement(&v, charon, case);
    let code = v.stop(lab);
    let result = result
        .and_then(|()| if code == Some(0) { Ok(()) } else { Err(format!("vpngw exited with {code:?} on SIGTERM")) });
    // vpngw's Deletes must remove the SAs at strongSwan.
    let gone = wait_for(Duration::from_secs(5), || {
        let s = charon.list_sas();
        (s.ike_established == 0 && s.children.is_empty()).then_some(())
    });
    if gone.is_none() {
        charon.terminate_all();
        result?;
        return Err(format!("strongSwan still has SAs after vpngw stopped:\n{}", diagnostics(&v, charon)));
    }
    result.map_err(|e| format!("{e}\n{}", diagnostics(&v, charon)))
}

fn check_agreement(v: &Vpngw, charon: &Charon, case: &Case) -> Result<(), String> {
    let conn = v
        .wait_up("to-right", Duration::from_secs(15))
        .ok_or_else(|| format!("{case:?}: vpngw never came up: {}", v.status_text()))?;
    // strongSwan as responder installs its child SA when QM3 arrives: wait for it.
    let sas = wait_for(Duration::from_secs(5), || {
        let s = charon.list_sas();
        (s.ike_established == 1 && s.children.iter().any(|c| c.state == "INSTALLED")).then_some(s)
    })
    .ok_or_else(|| format!("{case:?}: strongSwan has no installed child SA: {:?}", charon.list_sas()))?;
    let ike = &conn["ike_sa"];
    let expect_ike = (case.ike.0, case.ike.1, case.ike.2);
    let got_ike = (
        ike["encryption"].as_str().unwrap_or(""),
        ike["authentication"].as_str().unwrap_or(""),
        ike["dh_group"].as_str().unwrap_or(""),
    );
    if got_ike != expect_ike {
        return Err(format!("{case:?}: vpngw IKE SA {got_ike:?}"));
    }
    let sw_ike = &sas.ike_algorithms[0];
    let want_sw_ike = format!(
        "{}/HMAC_{}_96/PRF_HMAC_{}/{}",
        sw_cipher_name(case.ike.0),
        case.ike.1.to_uppercase(),
        case.ike.1.to_uppercase(),
        sw_group_name(case.ike.2)
    );
    if *sw_ike != want_sw_ike {
        return Err(format!("{case:?}: strongSwan IKE SA {sw_ike}, expected {want_sw_ike}"));
    }
    let children = conn["child_sas"].as_array().cloned().unwrap_or_default();
    let [child] = children.as_slice() else { return Err(format!("{case:?}: vpngw has {} child SAs", children.len())) };
    let sw = sas.children.iter().find(|c| c.state == "INSTALLED").ok_or("no installed child")?;
    if child["spi_in"] != Value::String(sw.spi_out.clone()) || child["spi_out"] != Value::String(sw.spi_in.clone()) {
        return Err(format!(
            "{case:?}: SPIs differ: vpngw in {} out {}, strongSwan in {} out {}",
            child["spi_in"], child["spi_out"], sw.spi_in, sw.spi_out
        ));
    }
    let mut want_esp = format!("ESP:{}/HMAC_{}_96", sw_cipher_name(case.esp.0), case.esp.1.to_uppercase());
    if case.esp.2 != "disable" {
        want_esp.push('/');
        want_esp.push_str(sw_group_name(case.esp.2));
    }
    if sw.algorithms != want_esp {
        return Err(format!("{case:?}: strongSwan child SA {}, expected {want_esp}", sw.algorithms));
    }
    let got_esp = (
        child["encryption"].as_str().unwrap_or(""),
        child["authentication"].as_str().unwrap_or(""),
        child["pfs"].as_str().unwrap_or(""),
    );
    if got_esp != case.esp {
        return Err(format!("{case:?}: vpngw child SA {got_esp:?}"));
    }
    // strongSwan's userspace ESP forces NAT-T: ESP in UDP on both sides.
    if child["encapsulation"] != "esp-in-udp" || sw.mode != "TUNNEL-in-UDP" {
        return Err(format!("{case:?}: encapsulation {} / {}", child["encapsulation"], sw.mode));
    }
    Ok(())
}

fn run_all(name: &str, cases: Vec<Case>) {
    let lab = Lab::gateways(name);
    let charon = Charon::start(&lab, &lab.right);
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        if let Err(e) = run_case(&lab, &charon, case, n) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn modes_identities_and_roles() {
    let mut cases = Vec::new();
    for aggressive in [false, true] {
        for fqdn in [false, true] {
            for vpngw_initiates in [true, false] {
                cases.push(Case { aggressive, fqdn, vpngw_initiates, ..Case::defaults() });
            }
        }
    }
    run_all("modes", cases);
}

#[test]
fn phase1_matrix() {
    let mut cases = Vec::new();
    for enc in CIPHERS {
        for hash in HASHES {
            for group in GROUPS {
                for vpngw_initiates in [true, false] {
                    cases.push(Case { vpngw_initiates, ike: (enc, hash, group), ..Case::defaults() });
                }
            }
        }
    }
    assert_eq!(cases.len(), 100);
    run_all("p1", cases);
}

#[test]
fn phase2_matrix() {
    let mut cases = Vec::new();
    for enc in CIPHERS {
        for hash in HASHES {
            for pfs in PFS {
                for vpngw_initiates in [true, false] {
                    cases.push(Case { vpngw_initiates, esp: (enc, hash, pfs), ..Case::defaults() });
                }
            }
        }
    }
    assert_eq!(cases.len(), 120);
    run_all("p2", cases);
}

// --------------------------------------------------------------------------------------------
// Negative cases: no SA, a clear reason, no crash, no leaked state.

/// Runs a mismatched configuration; returns vpngw's recorded failure.
fn mismatch(
    lab: &Lab,
    charon: &Charon,
    n: usize,
    ours: &Case,
    theirs: &Case,
    psk_theirs: Option<&str>,
) -> (String, String) {
    let mut sw = theirs.strongswan();
    if let Some(p) = psk_theirs {
        sw.psk = p.into();
    }
    mismatch_with(lab, charon, n, ours, &sw, 1)
}

/// [`mismatch`] against this strongSwan connection, speaking this IKE version.
fn mismatch_with(lab: &Lab, charon: &Charon, n: usize, ours: &Case, sw: &SwConn, version: u8) -> (String, String) {
    charon.load_version(sw, &SwTimers::default(), version);
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(lab, &format!("m{n}")), true, &ours.vpngw_toml());
    let v = Vpngw::start(lab, &lab.left, &format!("m{n}"), &config, &[]);
    if !ours.vpngw_initiates {
        charon.initiate(4);
    }
    let failure = v
        .wait_failure("to-right", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no failure recorded for {ours:?} vs {sw:?}\n{}", diagnostics(&v, charon)));
    // No child SA anywhere (no IKE SA either when phase 1 failed), and vpngw still answers.
    let status = v.connection("to-right").expect("vpngw still answers status");
    assert!(status["child_sas"].as_array().is_some_and(Vec::is_empty), "{status}");
    let sw_sas = charon.list_sas();
    assert!(sw_sas.children.iter().all(|c| c.state != "INSTALLED"), "strongSwan installed a child SA: {sw_sas:?}");
    let reason = failure["reason"].as_str().unwrap_or("");
    let phase1_failed = !matches!(reason, "phase2-proposal-mismatch" | "pfs-mismatch" | "traffic-selector-mismatch");
    if phase1_failed {
        assert_ne!(status["ike_sa"]["state"], "established", "{status}");
        assert_eq!(sw_sas.ike_established, 0, "strongSwan established an IKE SA");
    }
    let log = v.log_text();
    assert!(!log.contains(PSK) && !log.contains("wrong-key-9876"), "a pre-shared key appeared in the log");
    assert_eq!(v.stop(lab), Some(0), "vpngw did not exit cleanly\n{log}");
    charon.terminate_all();
    (failure["reason"].as_str().unwrap_or("").to_string(), failure["detail"].as_str().unwrap_or("").to_string())
}

#[test]
fn mismatches_give_a_clear_reason() {
    let lab = Lab::gateways("neg");
    let charon = Charon::start(&lab, &lab.right);
    let base = Case::defaults();
    let responder = Case { vpngw_initiates: false, ..Case::defaults() };
    let mut n = 0;
    let mut check = |ours: &Case, theirs: &Case, psk: Option<&str>, reason: &str, detail_has: &[&str]| {
        n += 1;
        let (r, d) = mismatch(&lab, &charon, n, ours, theirs, psk);
        assert_eq!(r, reason, "{ours:?} vs {theirs:?}: {d}");
        for part in detail_has {
            assert!(d.contains(part), "{ours:?} vs {theirs:?}: detail {d:?} lacks {part:?}");
        }
    };
    // Pre-shared key mismatch, both roles.
    check(&responder, &responder, Some("wrong-key-9876"), "authentication-failed", &["pre-shared key"]);
    check(&base, &base, Some("wrong-key-9876"), "authentication-failed", &["pre-shared key"]);
    // Phase 1 parameters, vpngw as responder: each differing parameter named with both values.
    check(
        &responder,
        &Case { ike: ("aes-256", "md5", "dh1"), ..responder.clone() },
        None,
        "phase1-proposal-mismatch",
        &["encryption: peer offered aes-256, configured 3des"],
    );
    check(
        &responder,
        &Case { ike: ("3des", "sha1", "dh1"), ..responder.clone() },
        None,
        "phase1-proposal-mismatch",
        &["authentication: peer offered sha1, configured md5"],
    );
    check(
        &responder,
        &Case { ike: ("3des", "md5", "dh14"), ..responder.clone() },
        None,
        "phase1-proposal-mismatch",
        &["dh_group: peer offered dh14, configured dh1"],
    );
    // ... and as initiator: the peer only says NO-PROPOSAL-CHOSEN; we say what we offered.
    check(
        &base,
        &Case { ike: ("aes-128", "sha1", "dh2"), ..base.clone() },
        None,
        "phase1-proposal-mismatch",
        &["refused", "3des"],
    );
    // Phase 2.
    check(
        &responder,
        &Case { esp: ("aes-128", "md5", "disable"), ..responder.clone() },
        None,
        "phase2-proposal-mismatch",
        &["encryption: peer offered aes-128, configured 3des"],
    );
    check(
        &responder,
        &Case { esp: ("3des", "sha1", "disable"), ..responder.clone() },
        None,
        "phase2-proposal-mismatch",
        &["authentication: peer offered sha1, configured md5"],
    );
    check(
        &responder,
        &Case { esp: ("3des", "md5", "dh2"), ..responder.clone() },
        None,
        "pfs-mismatch",
        &["pfs: peer offered dh2, configured disable"],
    );
    check(
        &base,
        &Case { esp: ("aes-256", "sha1", "disable"), ..base.clone() },
        None,
        "phase2-proposal-mismatch",
        &["refused"],
    );
    // Identity.
    let mut other_id = responder.clone();
    other_id.fqdn = true;
    check(
        &responder,
        &other_id,
        None,
        "id-mismatch",
        &["remote_id: peer sent fqdn:right.lab.example, configured ip:198.51.100.2"],
    );
    // Main versus aggressive.
    check(
        &responder,
        &Case { aggressive: true, ..responder.clone() },
        None,
        "mode-mismatch",
        &["mode: peer uses aggressive mode, configured main"],
    );
}

/// The diagnosis reasons `mismatches_give_a_clear_reason` does not cover, each produced by
/// strongSwan (or its absence) and checked in `vpngw diagnose`.
#[test]
fn traffic_selectors_version_silence_and_garbage_give_a_clear_reason() {
    let lab = Lab::gateways("neg2");
    let charon = Charon::start(&lab, &lab.right);
    let base = Case::defaults();
    let responder = Case { vpngw_initiates: false, ..Case::defaults() };
    // Traffic selectors: strongSwan protects 10.9.0.0/24 instead of 10.2.0.0/24.
    let mut other_net = base.strongswan();
    other_net.local_ts = vec!["10.9.0.0/24".into()];
    let (r, d) = mismatch_with(&lab, &charon, 1, &responder, &other_net, 1);
    assert_eq!(r, "traffic-selector-mismatch", "{d}");
    assert!(
        d.contains("peer offered 10.1.0.0/24 <=> 10.9.0.0/24") && d.contains("configured 10.1.0.0/24 <=> 10.2.0.0/24"),
        "{d}"
    );
    let (r, d) = mismatch_with(&lab, &charon, 2, &base, &other_net, 1);
    assert_eq!(r, "traffic-selector-mismatch", "{d}");
    assert!(d.contains("the peer refused ours, offered 10.1.0.0/24 <=> 10.2.0.0/24"), "{d}");
    // IKE version: strongSwan configured for IKEv2 initiates.
    let (r, d) = mismatch_with(&lab, &charon, 3, &responder, &base.strongswan(), 2);
    assert_eq!(r, "version-mismatch", "{d}");
    assert!(d.contains("peer speaks IKEv2, configured v1"), "{d}");
    // Nobody at the remote address.
    let silent = base.vpngw_toml().replace(RIGHT_WAN, "198.51.100.9");
    let v =
        Vpngw::start(&lab, &lab.left, "n4", &config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "n4"), true, &silent), &[]);
    let f = v.wait_failure("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("{}", v.log_text()));
    assert_eq!(f["reason"], "peer-unreachable", "{f}");
    assert!(f["detail"].as_str().unwrap().contains("no answer"), "{f}");
    // Status says when it tries again (the first retry: 5 s after the failure).
    let c = v.connection("to-right").unwrap();
    assert!(c["next_attempt_in_seconds"].as_u64().is_some_and(|s| s <= 5), "{c}");
    // The active connection retries (after 5 s): the same failure again is counted, not
    // logged again.
    let again = wait_for(Duration::from_secs(30), || {
        v.connection("to-right").filter(|c| c["last_failure"]["count"].as_u64() >= Some(2))
    })
    .unwrap_or_else(|| panic!("no retry\n{}", v.log_text()));
    let warned = v.log_text().lines().filter(|l| l.contains("negotiation failed") && l.contains("WARN")).count();
    assert_eq!(warned, 1, "{again}\n{}", v.log_text());
    // The report: configuration in the seed's words, the failure, what to do.
    let out = v.cli(&["diagnose", "to-right"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "connection to-right: down: peer-unreachable",
        "remote_address     198.51.100.9",
        "encryption       3des",
        "dh_group         dh1",
        "pfs              disable",
        "what to do: Check that remote_address is right",
    ] {
        assert!(text.contains(line), "diagnose lacks {line:?}:\n{text}");
    }
    assert!(!text.contains(PSK), "{text}");
    let out = v.cli(&["diagnose", "to-right", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failures"][0]["reason"], "peer-unreachable", "{json}");
    assert_eq!(json["configured"]["ike"]["authentication"], "md5", "{json}");
    assert!(!out.stdout.windows(PSK.len()).any(|w| w == PSK.as_bytes()));
    let out = v.cli(&["diagnose", "nonexistent"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no connection named"));
    assert_eq!(v.stop(&lab), Some(0));
    // Garbage from the peer's address: a main mode message 1 whose SA payload claims more
    // bytes than the datagram has.
    let ours = responder.vpngw_toml();
    let v =
        Vpngw::start(&lab, &lab.left, "n5", &config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "n5"), true, &ours), &[]);
    let header = format!("{}{}01100200{:08x}{:08x}", "11".repeat(8), "00".repeat(8), 0, 36);
    let garbage = format!("{header}0000004000000001");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/inject.py");
    let out = lab.exec(&lab.right, "python3", &[script, "udp", LEFT_WAN, "500", &garbage]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let f = v.wait_failure("to-right", Duration::from_secs(10)).unwrap_or_else(|| panic!("{}", v.log_text()));
    assert_eq!(f["reason"], "malformed-message", "{f}");
    assert!(v.status().is_some(), "vpngw still answers");
    assert_eq!(v.stop(&lab), Some(0));
}

// --------------------------------------------------------------------------------------------
// The daemon's life: up/down, reload, logs, shutdown.

fn spis(conn: &Value) -> Vec<(String, String)> {
    conn["child_sas"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (c["spi_in"].as_str().unwrap_or("").to_string(), c["spi_out"].as_str().unwrap_or("").to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn daemon_up_down_reload_and_shutdown() {
    let lab = Lab::gateways("life");
    let charon = Charon::start(&lab, &lab.right);
    let case = Case::defaults();
    charon.load(&case.strongswan());
    let socket = Vpngw::socket_for(&lab, "life");
    let config = config_text(LEFT_WAN, &socket, true, &case.vpngw_toml());
    let v = Vpngw::start(&lab, &lab.left, "life", &config, &["--log-format", "json"]);
    let first = v
        .wait_up("to-right", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("not up\n{}", diagnostics(&v, &charon)));
    let first_spis = spis(&first);

    // `vpngw down`: Deletes reach strongSwan.
    let out = v.cli(&["down", "to-right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_for(Duration::from_secs(5), || (charon.list_sas().ike_established == 0).then_some(())).is_some(),
        "strongSwan kept its SAs after vpngw down"
    );
    assert_eq!(v.connection("to-right").unwrap()["state"], "down");

    // `vpngw up`: back, with new SPIs.
    assert!(v.cli(&["up", "to-right"]).status.success());
    let second = v.wait_up("to-right", Duration::from_secs(15)).expect("up again");
    assert_ne!(spis(&second), first_spis);
    // Unknown connection: a clear error, exit 3 (no such connection).
    let out = v.cli(&["up", "no-such"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection named \"no-such\""));

    // SIGHUP with an unchanged file: the SAs stay.
    let kill = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &v.pid.to_string()]).status().unwrap().success())
    };
    kill("-HUP");
    std::thread::sleep(Duration::from_millis(500));
    let after = v.wait_up("to-right", Duration::from_secs(5)).expect("still up");
    assert_eq!(spis(&after), spis(&second), "an unchanged connection was renegotiated by a reload");

    // SIGHUP with an invalid file: refused, nothing changes.
    std::fs::write(&v.config, "[gateway]\npublic_address = \"nope\"\n").unwrap();
    kill("-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spis(&v.wait_up("to-right", Duration::from_secs(5)).expect("still up")), spis(&second));

    // SIGHUP with a changed connection: renegotiated with the new parameters.
    let changed = Case { esp: ("aes-128", "sha1", "disable"), ..Case::defaults() };
    charon.load(&changed.strongswan());
    std::fs::write(&v.config, config_text(LEFT_WAN, &socket, true, &changed.vpngw_toml())).unwrap();
    kill("-HUP");
    let third = wait_for(Duration::from_secs(15), || {
        v.connection("to-right").filter(|c| c["state"] == "up" && c["child_sas"][0]["encryption"] == "aes-128")
    })
    .unwrap_or_else(|| panic!("not renegotiated after reload\n{}", diagnostics(&v, &charon)));
    assert_ne!(spis(&third), spis(&second));

    // Logs are JSON lines with no key material; SIGTERM sends Deletes and exits 0.
    assert_eq!(v.stop(&lab), Some(0));
    assert!(wait_for(Duration::from_secs(5), || (charon.list_sas().ike_established == 0).then_some(())).is_some());
    let log = v.log_text();
    assert!(!log.contains(PSK));
    let mut lines = 0;
    for line in log.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
        lines += 1;
    }
    assert!(lines > 5);
    assert!(log.contains("configuration reloaded") && log.contains("reload refused"), "{log}");
}
