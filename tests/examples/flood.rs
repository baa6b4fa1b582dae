//! `make bench-flood`: an established vpngw under a flood of spoofed IKE first messages from its
//! peer's address (issue 16), in network namespaces. vpngw (left, active) and strongSwan 5.9.8
//! (right; DPD every 2 s), pings from host to host through the tunnel all along. Three floods:
//!
//! - `main`: main-mode first messages with fresh initiator cookies (20,000 at 2,000/s);
//! - `aggressive`: aggressive-mode first messages (the tunnel in aggressive mode too), each of
//!   which makes the responder compute a Diffie-Hellman key pair (20,000 at 2,000/s);
//! - `delete-amplification`: main-mode first messages carrying 64 Delete payloads of 65,535
//!   SPIs of size 0 each (400 at 200/s).
//!
//! During each: the daemon's resident memory (before, peak, 5 s after), `vpngw status` latency
//! percentiles (called back to back), strongSwan's DPD probes answered, a child SA rekey started
//! by strongSwan and one by vpngw, pings lost. Targets: memory growth <= 8 MiB, status < 100 ms,
//! DPD and rekeys succeed, no ping lost. Prints a Markdown table.
//!
//! Options (environment): FLOOD=main,aggressive,delete-amplification (which ones),
//! FLOOD_COUNT=20000 FLOOD_PPS=2000, AMP_COUNT=400 AMP_PPS=200, VPNGW_BIN (the vpngw to run;
//! default: the one built next to this example).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)] // a benchmark

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vpngw_tests::loadgen::{percentile, rss_kib};
use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::spoof::{self, Job};
use vpngw_tests::strongswan::{Charon, SwConn, SwTimers, esp_words, ike_words};
use vpngw_tests::traffic::{RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "bench-psk-0123456789abcdef";

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Counts what vpngw sends to the peer's address from its IKE ports (nftables in its namespace):
/// its answers to the spoofed first messages go there.
fn count_answers(lab: &Lab) {
    let rules = format!(
        "table inet floodcount {{\n  chain out {{ type filter hook output priority 0; policy accept;\n    \
         ip daddr {RIGHT_WAN} udp sport {{ 500, 4500 }} counter\n  }}\n}}\n"
    );
    let path = lab.dir.join("floodcount.nft");
    std::fs::write(&path, rules).unwrap();
    let out = lab.exec(&lab.left, "nft", &["-f", &path.display().to_string()]);
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
}

fn answers(lab: &Lab) -> u64 {
    let out = lab.exec(&lab.left, "nft", &["list", "table", "inet", "floodcount"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(0)
}

fn child_spis(v: &Vpngw) -> Vec<String> {
    let mut s: Vec<String> = v
        .connection("to-right")
        .map(|c| {
            c["child_sas"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|c| c["state"] == "active")
                        .filter_map(|c| c["spi_in"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    s.sort();
    s
}

/// Waits up to `within` for the active child SA to change from `old`; returns how long it took.
fn rekeyed(v: &Vpngw, old: &[String], within: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(within, || {
        let now = child_spis(v);
        (!now.is_empty() && now != old).then_some(())
    })
    .map(|()| t.elapsed())
}

#[derive(Default)]
struct Row {
    flood: String,
    sent: u64,
    seconds: f64,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    status: Vec<Duration>,
    /// strongSwan's DPD probes sent and answers received in the flood's idle second half.
    dpd: (usize, usize),
    sw_rekey: Option<Duration>,
    vg_rekey: Option<Duration>,
    pings: (u64, u64),
    /// IKE datagrams vpngw sent to the peer's address from the flood's start to 5 s after it.
    answers: u64,
    up_after: bool,
    drops: String,
}

fn run(kind: &str) -> Row {
    let aggressive = kind == "aggressive";
    let lab = Lab::gateways(&format!("flood-{kind}"));
    let charon = Charon::start_with(&lab, &lab.right, true);
    let mut sw = SwConn::lab_right(ike_words("aes-128", "sha1", "dh14"), esp_words("aes-128", "sha1", "disable"), PSK);
    sw.aggressive = aggressive;
    let timers = SwTimers { dpd_delay: "2s".into(), dpd_timeout: "60s".into(), ..SwTimers::default() };
    charon.load_with(&sw, &timers);
    let mode = if aggressive { "aggressive" } else { "main" };
    let conn = format!(
        "[[connection]]\nname = \"to-right\"\nremote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"active\"\n\
         [connection.ike]\nmode = \"{mode}\"\nencryption = \"aes-128\"\nauthentication = \"sha1\"\ndh_group = \"dh14\"\n\
         [connection.ipsec]\nencryption = \"aes-128\"\nauthentication = \"sha1\"\n"
    );
    let name = format!("flood-{kind}");
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, &name), false, &conn);
    let v = Vpngw::start(&lab, &lab.left, &name, &config, &[]);
    v.wait_up("to-right", Duration::from_secs(30)).unwrap_or_else(|| panic!("not up\n{}", v.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "no ping through the tunnel");
    std::thread::sleep(Duration::from_secs(3)); // settle: the first DPD exchanges, allocator warm
    let (count, pps, payload) = match kind {
        "delete-amplification" => {
            (env("AMP_COUNT", 400), env("AMP_PPS", 200), spoof::delete_amplification(spoof::cookie(), 64))
        }
        "aggressive" => (
            env("FLOOD_COUNT", 20_000),
            env("FLOOD_PPS", 2_000),
            spoof::aggressive_first(spoof::cookie(), RIGHT_WAN.parse().unwrap()),
        ),
        _ => (env("FLOOD_COUNT", 20_000), env("FLOOD_PPS", 2_000), spoof::main_mode_first(spoof::cookie())),
    };
    count_answers(&lab);
    let flood_secs = f64::from(count) / f64::from(pps.max(1));
    let mut row = Row { flood: kind.into(), rss_before: rss_kib(v.pid), ..Row::default() };

    // Pings (20 a second) through the first half of the flood, when the rekeys happen too; the
    // second half leaves the tunnel idle, so that strongSwan's DPD probes (every 2 s of
    // silence) go out and must be answered through the flood.
    let ping_secs = (flood_secs / 2.0).ceil().max(1.0) as u64;
    let ping_log = lab.dir.join("ping.out");
    let ping_count = (ping_secs * 20).to_string();
    let ping =
        lab.spawn(&lab.left_host, "ping", &["-i", "0.05", "-c", &ping_count, "-W", "2", RIGHT_HOST], &[], &ping_log);

    // Status back to back, and memory every 100 ms, while the flood runs.
    let stop = Arc::new(AtomicBool::new(false));
    let status_thread = {
        let stop = stop.clone();
        let socket = v.socket.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _ = std::process::Command::new(vpngw_tests::vpngw::binary())
                    .args(["status", "--json", "--socket", &socket.display().to_string()])
                    .output();
                took.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            took
        })
    };
    let flood = spoof::start(
        &lab.right,
        RIGHT_WAN,
        LEFT_WAN,
        &[Job { sport: 500, dport: 500, count, pps, fresh: true, payload }],
    );
    let started = Instant::now();
    let old = child_spis(&v);
    let mut peak = row.rss_before;
    let mut sw_rekey_at = None;
    let mut vg_rekey_at = None;
    let mut vg_old = Vec::new();
    let mut dpd_before = None;
    // strongSwan rekeys at 10 % of the flood, vpngw at 25 %; DPD is counted from 50 % to the end.
    while started.elapsed().as_secs_f64() < flood_secs + 1.0 {
        peak = peak.max(rss_kib(v.pid));
        let f = started.elapsed().as_secs_f64() / flood_secs;
        if sw_rekey_at.is_none() && f >= 0.1 {
            let t = Instant::now();
            sw_rekey_at = Some(t);
            charon.rekey_child();
            row.sw_rekey = rekeyed(&v, &old, Duration::from_secs(10)).map(|_| t.elapsed());
            vg_old = child_spis(&v);
        }
        if vg_rekey_at.is_none() && f >= 0.25 && sw_rekey_at.is_some() {
            vg_rekey_at = Some(Instant::now());
            let _ = v.cli(&["rekey", "to-right"]);
            row.vg_rekey = rekeyed(&v, &vg_old, Duration::from_secs(10));
        }
        if dpd_before.is_none() && f >= 0.5 {
            let log = charon.log();
            dpd_before = Some((log.matches("[ HASH N(DPD) ]").count(), log.matches("N(DPD_ACK)").count()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (row.sent, row.seconds) = spoof::wait_report(flood);
    stop.store(true, Ordering::Relaxed);
    let mut took = status_thread.join().unwrap();
    took.sort();
    row.status = took;
    let log = charon.log();
    let (probes, acks) = dpd_before.unwrap_or_default();
    row.dpd = (log.matches("[ HASH N(DPD) ]").count() - probes, log.matches("N(DPD_ACK)").count() - acks);
    // 5 s after the flood (and the rest of the ping run).
    for _ in 0..50 {
        peak = peak.max(rss_kib(v.pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    row.rss_peak = peak;
    row.answers = answers(&lab);
    row.rss_after = rss_kib(v.pid);
    lab.wait_exit(ping, Duration::from_secs(ping_secs + 30));
    let text = std::fs::read_to_string(&ping_log).unwrap_or_default();
    let stats = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let num = |what: &str| -> u64 {
        stats
            .split(", ")
            .find(|p| p.contains(what))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    row.pings = (num("transmitted"), num("received"));
    row.up_after = v.connection("to-right").is_some_and(|c| c["state"] == "up");
    row.drops = v.status().map(|s| s["dropped"].to_string()).unwrap_or_else(|| "no status".into());
    eprintln!("--- {kind}: vpngw log tail\n{}", v.log_text().lines().rev().take(15).collect::<Vec<_>>().join("\n"));
    let _ = v.stop(&lab);
    row
}

fn main() {
    vpngw_tests::netns::require_root();
    let which = std::env::var("FLOOD").unwrap_or_else(|_| "main,aggressive,delete-amplification".into());
    let mut rows = Vec::new();
    for kind in which.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        eprintln!("flood {kind} ...");
        let row = run(kind);
        print_row(&row, rows.is_empty());
        rows.push(row);
    }
}

fn print_row(r: &Row, header: bool) {
    if header {
        println!(
            "| flood | sent | seconds | RSS before MiB | peak growth MiB | growth 5 s after MiB | status p50 / p90 / p99 / max ms (n) | DPD probes answered (2nd half) | strongSwan rekey | vpngw rekey | pings lost (1st half) | IKE datagrams to the peer's address | up after |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let mib = |k: u64| k as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rekey = |d: Option<Duration>| d.map_or("failed (10 s)".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "| {} | {} | {:.1} | {:.1} | {:+.1} | {:+.1} | {:.0} / {:.0} / {:.0} / {:.0} ({}) | {} of {} | {} | {} | {} of {} | {} | {} |",
        r.flood,
        r.sent,
        r.seconds,
        mib(r.rss_before),
        mib(r.rss_peak) - mib(r.rss_before),
        mib(r.rss_after) - mib(r.rss_before),
        ms(percentile(&r.status, 0.5)),
        ms(percentile(&r.status, 0.9)),
        ms(percentile(&r.status, 0.99)),
        ms(r.status.last().copied().unwrap_or_default()),
        r.status.len(),
        r.dpd.1,
        r.dpd.0,
        rekey(r.sw_rekey),
        rekey(r.vg_rekey),
        r.pings.0 - r.pings.1.min(r.pings.0),
        r.pings.0,
        r.answers,
        if r.up_after { "yes" } else { "no" },
    );
    eprintln!("  drops after the {} flood: {}", r.flood, r.drops);
}
