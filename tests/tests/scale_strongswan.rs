//! Fifty peers, each its own strongSwan connection from its own address, against one vpngw
//! (issue 20, scaled down for `make test`; the load generator's 200 tunnels are `scale.rs`).
//!
//! A hub and its sites: vpngw (left) has 50 connections, `site-01`..`site-50`, each to its own
//! peer address (198.51.100.101..150) with its own key and its own remote subnet (10.2.N.0/24),
//! all protecting the same hub network (10.1.0.0/24): overlapping on the local side only, as
//! `check` allows. One charon (right) plays the 50 sites: 50 addresses on its interface and 50
//! connections, each bound to its own address with `local_addrs`.
//!
//! First all 50 sites initiate at once (strongSwan's `start_action = start`), vpngw answers;
//! then vpngw takes half of them down and brings them up itself (`vpngw up`), strongSwan
//! answers, while the other half keep their tunnels. Each time both sides must list exactly the
//! 50 tunnels, with the same SPIs and selectors, and one ping from the hub host to a host in
//! each site's subnet must cross its own tunnel, moving that tunnel's ESP counters (and no
//! other's) on both sides. Stopping vpngw must delete all 50 at strongSwan. Every failure names
//! the connections concerned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, wait_for};
use vpngw_tests::strongswan::{Charon, SwConn, SwEntry, SwSas, SwTimers};
use vpngw_tests::vpngw::{Vpngw, config_text};

const SITES: u32 = 50;
/// Sites brought up again by vpngw, the initiator (the last ones); the others keep their
/// first tunnels meanwhile.
const VPNGW_INITIATES: u32 = 25;

fn name(i: u32) -> String {
    format!("site-{i:02}")
}
fn address(i: u32) -> String {
    format!("198.51.100.{}", 100 + i)
}
fn subnet(i: u32) -> String {
    format!("10.2.{i}.0/24")
}
fn host(i: u32) -> String {
    format!("10.2.{i}.10")
}
/// Each site its own key: vpngw must pick the key by the peer's address.
fn psk(i: u32) -> String {
    format!("site-{i:02}-psk-0123456789abcdef")
}

fn vpngw_connections() -> String {
    (1..=SITES)
        .map(|i| {
            format!(
                "[[connection]]\nname = \"{}\"\nremote_address = \"{}\"\npre_shared_key = \"{}\"\n\
                 local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{}\"]\nstart = \"passive\"\n\
                 [connection.ike]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
                 [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n",
                name(i),
                address(i),
                psk(i),
                subnet(i)
            )
        })
        .collect()
}

fn strongswan_connections() -> Vec<SwEntry> {
    let timers = SwTimers { start_action: "start".into(), ..SwTimers::default() };
    (1..=SITES)
        .map(|i| SwEntry {
            name: name(i),
            conn: SwConn {
                aggressive: false,
                local_addr: address(i),
                remote_addr: LEFT_WAN.into(),
                local_id: address(i),
                remote_id: LEFT_WAN.into(),
                ike: "aes128-sha1-modp2048".into(),
                esp: "aes128-sha1".into(),
                local_ts: vec![subnet(i)],
                remote_ts: vec![LEFT_NET.into()],
                psk: psk(i),
            },
            timers: timers.clone(),
        })
        .collect()
}

/// vpngw's connections by name.
fn vpngw_view(v: &Vpngw) -> BTreeMap<String, Value> {
    let status = v.status().unwrap_or(Value::Null);
    let list = status["connections"].as_array().cloned().unwrap_or_default();
    list.into_iter().map(|c| (c["name"].as_str().unwrap_or("").to_string(), c)).collect()
}

/// Whether both sides show all the sites up: every vpngw connection up, and at strongSwan
/// exactly one established IKE SA and one installed child SA per site.
fn all_up(v: &Vpngw, charon: &Charon) -> bool {
    let up = vpngw_view(v).values().filter(|c| c["state"] == "up").count();
    let sw = charon.list_sas();
    let installed = sw.children.iter().filter(|c| c.state == "INSTALLED").count();
    up == SITES as usize && sw.ike_established == SITES as usize && installed == SITES as usize
}

/// What is wrong with site `i` on either side: its vpngw connection (state, role, the one child
/// SA's selectors) and strongSwan's view of it (one IKE SA, one installed child with the crossed
/// SPIs and the mirrored selectors). Empty when all agree.
fn site_problems(i: u32, vpngw: &BTreeMap<String, Value>, sw: &SwSas, role: &str) -> Vec<String> {
    let n = name(i);
    let mut problems = Vec::new();
    let Some(c) = vpngw.get(&n) else { return vec![format!("{n}: not in vpngw's status")] };
    if c["state"] != "up" {
        problems.push(format!("{n}: vpngw says {}", c["state"]));
    }
    if c["ike_sa"]["role"] != role {
        problems.push(format!("{n}: vpngw's IKE SA role {}, expected {role}", c["ike_sa"]["role"]));
    }
    if !c["last_failure"].is_null() {
        problems.push(format!("{n}: vpngw recorded a failure: {}", c["last_failure"]));
    }
    let children = c["child_sas"].as_array().cloned().unwrap_or_default();
    let [child] = children.as_slice() else {
        problems.push(format!("{n}: vpngw has {} child SAs", children.len()));
        return problems;
    };
    let selectors = (child["local_subnet"].as_str().unwrap_or(""), child["remote_subnet"].as_str().unwrap_or(""));
    if selectors != (LEFT_NET, subnet(i).as_str()) {
        problems.push(format!("{n}: vpngw's child SA selectors {selectors:?}"));
    }
    let ike_sas = sw.ike_connections.iter().filter(|c| **c == n).count();
    if ike_sas != 1 {
        problems.push(format!("{n}: strongSwan has {ike_sas} established IKE SAs"));
    }
    let sw_children: Vec<_> = sw.children.iter().filter(|c| c.connection == n && c.state == "INSTALLED").collect();
    let [sw_child] = sw_children.as_slice() else {
        problems.push(format!("{n}: strongSwan has {} installed child SAs", sw_children.len()));
        return problems;
    };
    if child["spi_in"] != sw_child.spi_out.as_str() || child["spi_out"] != sw_child.spi_in.as_str() {
        problems.push(format!(
            "{n}: SPIs differ: vpngw in {} out {}, strongSwan in {} out {}",
            child["spi_in"], child["spi_out"], sw_child.spi_in, sw_child.spi_out
        ));
    }
    if (sw_child.local_ts.as_str(), sw_child.remote_ts.as_str()) != (subnet(i).as_str(), LEFT_NET) {
        problems.push(format!("{n}: strongSwan's selectors {} === {}", sw_child.local_ts, sw_child.remote_ts));
    }
    problems
}

/// Checks every site on both sides (`initiators`: the sites vpngw initiated); returns the
/// problems, each naming its site.
fn check_sites(v: &Vpngw, charon: &Charon, initiators: &[u32]) -> Vec<String> {
    let vpngw = vpngw_view(v);
    let sw = charon.list_sas();
    let mut problems = Vec::new();
    if vpngw.len() != SITES as usize {
        problems.push(format!("vpngw lists {} connections, expected {SITES}", vpngw.len()));
    }
    if sw.ike_established != SITES as usize || sw.children.len() != SITES as usize {
        problems.push(format!(
            "strongSwan lists {} established IKE SAs and {} child SAs, expected {SITES} of each",
            sw.ike_established,
            sw.children.len()
        ));
    }
    for i in 1..=SITES {
        let role = if initiators.contains(&i) { "initiator" } else { "responder" };
        problems.extend(site_problems(i, &vpngw, &sw, role));
    }
    problems
}

/// One ping from the hub host to the host of each site in `sites`, all from one shell; returns
/// a line for each site whose ping was not answered.
fn ping_sites(lab: &Lab, sites: std::ops::RangeInclusive<u32>) -> Vec<String> {
    let hosts: Vec<String> = sites.clone().map(host).collect();
    let script = format!(
        "for h in {}; do ping -n -q -c 1 -W 2 $h >/dev/null 2>&1 && echo \"ok $h\" || echo \"lost $h\"; done",
        hosts.join(" ")
    );
    let out = lab.exec(&lab.left_host, "sh", &["-c", &script]);
    let said = String::from_utf8_lossy(&out.stdout);
    sites
        .filter(|i| !said.lines().any(|l| l == format!("ok {}", host(*i))))
        .map(|i| format!("{}: no answer from {}", name(i), host(i)))
        .collect()
}

/// Sites in `sites` whose child SA did not carry exactly `expected` packets each way, on
/// vpngw's side and on strongSwan's (by the vpngw child's outbound SPI, strongSwan's inbound).
fn counter_problems(v: &Vpngw, charon: &Charon, sites: std::ops::RangeInclusive<u32>, expected: u64) -> Vec<String> {
    let vpngw = vpngw_view(v);
    let sw = charon.list_sas();
    let mut problems = Vec::new();
    for i in sites {
        let n = name(i);
        let child = &vpngw.get(&n).map(|c| c["child_sas"][0].clone()).unwrap_or(Value::Null);
        let ours = (child["packets_in"].as_u64().unwrap_or(0), child["packets_out"].as_u64().unwrap_or(0));
        if ours != (expected, expected) {
            problems.push(format!("{n}: vpngw's child SA counted {} in, {} out", ours.0, ours.1));
        }
        let spi = child["spi_out"].as_str().unwrap_or("");
        let theirs = sw.child_packets.get(spi).copied().unwrap_or((0, 0));
        if theirs != (expected, expected) {
            problems.push(format!("{n}: strongSwan's child SA {spi} counted {} in, {} out", theirs.0, theirs.1));
        }
    }
    problems
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn fail_with(what: &str, problems: &[String], v: &Vpngw, charon: &Charon) -> String {
    format!(
        "{what}: {} problem(s):\n{}\n--- vpngw log ---\n{}\n--- charon log ---\n{}",
        problems.len(),
        problems.join("\n"),
        tail(&v.log_text(), 30),
        tail(&charon.log(), 40)
    )
}

#[test]
fn fifty_strongswan_peers_from_fifty_addresses_come_up_and_carry_a_ping_each() {
    let started = Instant::now();
    let lab = Lab::gateways("sswan50");
    // The sites' public addresses on strongSwan's interface; each site's subnet on the right
    // gateway's LAN (kernel-libipsec routes a child only when the gateway has an address in
    // its local subnet: "error installing route with policy" otherwise) and a host in each.
    let addresses: Vec<String> = (1..=SITES).map(|i| format!("{}/24", address(i))).collect();
    lab.add_addresses(&lab.right, "wan0", &addresses);
    let gateways: Vec<String> = (1..=SITES).map(|i| format!("10.2.{i}.1/24")).collect();
    lab.add_addresses(&lab.right, "lan0", &gateways);
    let hosts: Vec<String> = (1..=SITES).map(|i| format!("{}/24", host(i))).collect();
    lab.add_addresses(&lab.right_host, "eth0", &hosts);

    // kernel-libipsec routes each child's remote subnet into its TUN (table 220), but all 50
    // children share the hub network: one route stands for all, and by its source goes when
    // the child that installed it goes. So the hub network also gets a route of its own into
    // the TUN; libipsec picks each packet's SA by the selectors its source matches.
    let charon = Charon::start_with(&lab, &lab.right, false);
    wait_for(Duration::from_secs(5), || {
        lab.exec(&lab.right, "ip", &["link", "show", "ipsec0"]).status.success().then_some(())
    })
    .expect("charon's kernel-libipsec TUN ipsec0 did not appear");
    lab.ip(&lab.right, &["route", "add", LEFT_NET, "dev", "ipsec0"]);

    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "hub"), true, &vpngw_connections());
    let v = Vpngw::start(&lab, &lab.left, "hub", &config, &[]);
    let setup = started.elapsed();

    // 1. All sites initiate at once; vpngw answers.
    let t = Instant::now();
    charon.load_many(&strongswan_connections());
    let up = wait_for(Duration::from_secs(30), || all_up(&v, &charon).then_some(()));
    let took = t.elapsed();
    let problems = check_sites(&v, &charon, &[]);
    assert!(up.is_some() && problems.is_empty(), "{}", fail_with("strongSwan's initiations", &problems, &v, &charon));
    eprintln!("{SITES} sites initiated by strongSwan: all up on both sides in {took:?} (lab set up in {setup:?})");

    let t = Instant::now();
    let lost = ping_sites(&lab, 1..=SITES);
    assert!(lost.is_empty(), "{}", fail_with("pings through strongSwan's tunnels", &lost, &v, &charon));
    let problems = counter_problems(&v, &charon, 1..=SITES, 1);
    assert!(problems.is_empty(), "{}", fail_with("ESP counters after one ping each", &problems, &v, &charon));
    eprintln!("{SITES} pings, each through its own tunnel, in {:?}", t.elapsed());

    // 2. vpngw takes the last sites down (its Deletes clear them at strongSwan) and brings them
    // up itself; strongSwan answers, each connection on its own address.
    let t = Instant::now();
    let again = SITES - VPNGW_INITIATES + 1..=SITES;
    for i in again.clone() {
        let out = v.cli(&["down", &name(i)]);
        assert!(out.status.success(), "vpngw down {}: {}", name(i), String::from_utf8_lossy(&out.stderr));
    }
    let remaining = (SITES - VPNGW_INITIATES) as usize;
    let down = wait_for(Duration::from_secs(10), || {
        let sw = charon.list_sas();
        (sw.ike_established == remaining && sw.children.len() == remaining).then_some(())
    });
    assert!(
        down.is_some(),
        "strongSwan kept SAs of the sites vpngw took down: {:?}",
        charon.list_sas().ike_connections
    );
    for i in again.clone() {
        let out = v.cli(&["up", &name(i)]);
        assert!(out.status.success(), "vpngw up {}: {}", name(i), String::from_utf8_lossy(&out.stderr));
    }
    let up = wait_for(Duration::from_secs(30), || all_up(&v, &charon).then_some(()));
    let problems = check_sites(&v, &charon, &again.clone().collect::<Vec<_>>());
    assert!(up.is_some() && problems.is_empty(), "{}", fail_with("vpngw's initiations", &problems, &v, &charon));
    let lost = ping_sites(&lab, 1..=SITES);
    assert!(lost.is_empty(), "{}", fail_with("pings after vpngw's initiations", &lost, &v, &charon));
    // The new SAs carried one ping; the tunnels that stayed, their second.
    let mut problems = counter_problems(&v, &charon, again, 1);
    problems.extend(counter_problems(&v, &charon, 1..=SITES - VPNGW_INITIATES, 2));
    assert!(problems.is_empty(), "{}", fail_with("ESP counters after vpngw's initiations", &problems, &v, &charon));
    eprintln!("{VPNGW_INITIATES} sites down and up again, initiated by vpngw; {SITES} pings: {:?}", t.elapsed());

    // 3. Stopping vpngw deletes every tunnel at strongSwan.
    assert_eq!(v.stop(&lab), Some(0), "{}", tail(&v.log_text(), 30));
    let gone = wait_for(Duration::from_secs(10), || {
        let sw = charon.list_sas();
        (sw.ike_established == 0 && sw.children.is_empty()).then_some(())
    });
    assert!(gone.is_some(), "strongSwan still has SAs after vpngw stopped: {:?}", charon.list_sas().ike_connections);
    eprintln!("whole test: {:?}", started.elapsed());
}
