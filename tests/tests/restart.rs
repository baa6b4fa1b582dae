//! A restart without renegotiation, against strongSwan 5.9.8: vpngw stops with its tunnels
//! saved (`vpngw stop --save-tunnels`), a new process goes on from the file (`vpngw run
//! --restore-tunnels`), and strongSwan keeps the same IKE SA and child SA SPIs while its dead
//! peer detection is answered, traffic flows, and quick-mode rekeys started by either side
//! succeed on the restored IKE SA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, SwSas, SwTimers, esp_words, ike_words};
use vpngw_tests::traffic::{RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "lab-psk-0123456789abcdef";

fn config(lab: &Lab, name: &str) -> String {
    let connection = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"active\"\n\
         [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n"
    );
    config_text(LEFT_WAN, &Vpngw::socket_for(lab, name), false, &connection)
}

/// The child SA SPIs vpngw shows for the connection, sorted.
fn vpngw_spis(v: &Vpngw) -> Vec<(String, String)> {
    let c = v.connection("to-right").unwrap();
    let mut spis: Vec<(String, String)> = c["child_sas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| (ch["spi_in"].as_str().unwrap().to_string(), ch["spi_out"].as_str().unwrap().to_string()))
        .collect();
    spis.sort();
    spis
}

fn sw_child_spis(sas: &SwSas) -> Vec<(String, String)> {
    let mut spis: Vec<(String, String)> = sas.children.iter().map(|c| (c.spi_in.clone(), c.spi_out.clone())).collect();
    spis.sort();
    spis
}

/// Waits until strongSwan shows one child SA whose SPIs differ from `old` (a rekey is done and
/// the old pair deleted), and vpngw the mirror image of it.
fn wait_rekeyed(charon: &Charon, v: &Vpngw, old: &[(String, String)], who: &str) -> Vec<(String, String)> {
    let sw = wait_for(Duration::from_secs(30), || {
        let sas = charon.list_sas();
        let spis = sw_child_spis(&sas);
        (spis.len() == 1 && spis != old).then_some(spis)
    })
    .unwrap_or_else(|| panic!("{who}: no rekey: {:?}\n{}\n{}", charon.list_sas(), v.log_text(), charon.log()));
    let mirrored: Vec<(String, String)> = sw.iter().map(|(i, o)| (o.clone(), i.clone())).collect();
    wait_for(Duration::from_secs(15), || (vpngw_spis(v) == mirrored).then_some(()))
        .unwrap_or_else(|| panic!("{who}: vpngw shows {:?}, strongSwan {sw:?}\n{}", vpngw_spis(v), v.log_text()));
    sw
}

#[test]
fn a_restart_from_saved_tunnels_keeps_strongswans_ike_sa_and_spis() {
    let lab = Lab::gateways("restart");
    let charon = Charon::start_with(&lab, &lab.right, true);
    // strongSwan probes every 3 s when idle and gives up after 20 s without an answer.
    let timers = SwTimers { dpd_delay: "3s".into(), dpd_timeout: "20s".into(), ..SwTimers::default() };
    let sw_conn = SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "disable"), PSK);
    charon.load_with(&sw_conn, &timers);
    let first = Vpngw::start(&lab, &lab.left, "restart-1", &config(&lab, "restart-1"), &[]);
    first.wait_up("to-right", Duration::from_secs(20)).unwrap_or_else(|| panic!("not up\n{}", first.log_text()));
    // The control socket is private (created so, not chmod-ed afterwards).
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&first.socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)));
    // Sequence numbers well past the peer's replay window (strongSwan's libipsec: 32), so
    // that a restored SA numbering from 1 again would be heard as replays.
    let burst = lab.exec(&lab.left_host, "ping", &["-c", "100", "-i", "0.01", "-W", "2", "-q", RIGHT_HOST]);
    assert!(String::from_utf8_lossy(&burst.stdout).contains(" 100 received"), "{burst:?}");
    let sw_before = charon.list_sas();
    assert_eq!((sw_before.ike_sas.len(), sw_before.children.len()), (1, 1), "{sw_before:?}");
    let spis_before = vpngw_spis(&first);

    // Stop with the tunnels saved: no Delete reaches strongSwan.
    let saved = lab.dir.join("tunnels.json");
    let out = first.cli(&["stop", "--save-tunnels", &saved.display().to_string()]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("saved 1 IKE SA(s) with 1 child SA(s)"), "{said}");
    assert_eq!(lab.wait_exit(first.pid, Duration::from_secs(10)), Some(0), "{}", first.log_text());
    assert!(first.log_text().contains("the tunnels stay (saved)"), "{}", first.log_text());
    let log_mark = charon.log().len();

    // A new process from the file.
    let second = Vpngw::start(
        &lab,
        &lab.left,
        "restart-2",
        &config(&lab, "restart-2"),
        &["--restore-tunnels", &saved.display().to_string()],
    );
    let up = second.wait_up("to-right", Duration::from_secs(5)).unwrap_or_else(|| panic!("{}", second.log_text()));
    assert_eq!(vpngw_spis(&second), spis_before, "{up}");
    // Both directions go on at once: every ping answered.
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 5), 5, "{}", second.log_text());
    let log = second.log_text();
    assert!(log.contains("tunnels restored") && !log.contains("IKE SA established"), "{log}");

    // strongSwan: the same IKE SA and child SA; its DPD probes to the new process answered.
    let sw_log = wait_for(Duration::from_secs(20), || {
        let l = charon.log()[log_mark..].to_string();
        (l.matches("N(DPD_ACK)").count() >= 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("strongSwan's DPD unanswered:\n{}\n{}", &charon.log()[log_mark..], second.log_text()));
    assert!(!sw_log.contains("deleting IKE_SA"), "{sw_log}");
    let sw_after = charon.list_sas();
    assert_eq!(sw_after.ike_sas, sw_before.ike_sas, "strongSwan has another IKE SA");
    assert_eq!(sw_child_spis(&sw_after), sw_child_spis(&sw_before));

    // Rekeys on the restored IKE SA: ours, then strongSwan's.
    let out = second.cli(&["rekey", "to-right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after_ours = wait_rekeyed(&charon, &second, &sw_child_spis(&sw_after), "vpngw's rekey");
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
    charon.rekey_child();
    wait_rekeyed(&charon, &second, &after_ours, "strongSwan's rekey");
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(5)));
    assert_eq!(charon.list_sas().ike_sas, sw_before.ike_sas, "the rekeys ran on the same IKE SA");
    let log = second.log_text();
    assert!(!log.contains("negotiation failed") && !log.contains("IKE SA established"), "{log}");
    assert_eq!(second.stop(&lab), Some(0));
}
