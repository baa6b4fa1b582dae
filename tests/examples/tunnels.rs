//! `make bench-tunnels`: thousands of tunnels against one vpngw (issue 20's targets), in
//! network namespaces. The load generator (`vpngw-loadgen`, vpngw's own IKE engine, one address
//! and socket per initiator) negotiates TUNNELS tunnels with one vpngw (release build), sends an
//! ICMP echo through each as raw ESP, then holds them (DPD on both sides) while this measures:
//!
//! - establishment: tunnels per second, latency percentiles, failures by reason; and the
//!   ceiling measured in the same run: the in-memory handshake rate of `benches/handshake.rs`'s
//!   kind (two engines, no sockets) on one core;
//! - idle: the daemon's CPU over IDLE_SECONDS (share of one core), and its resident memory
//!   against the same daemon with one tunnel (KiB per tunnel);
//! - surfaces at scale: `vpngw status` latency (median of 5) and the `/metrics` scrape (time
//!   and size).
//!
//! With STORM=gateway or STORM=peer it measures a rekey storm instead of the idle gateway: every
//! child SA gets the same short lifetime (STORM_LIFETIME, default 90 s, on both sides), so all
//! tunnels rekey within their jitter window after establishment. `gateway`: vpngw initiates
//! every tunnel (`start = "active"`, the generator answers), so it is each child SA's
//! quick-mode initiator and rekeys all of them; `peer`: the generator's initiators rekey and
//! vpngw answers 5,000 quick modes. The generator checks each tunnel's first rekey (new SPIs
//! both ways, the old pair deleted, the delay against the window) and pings through
//! PING_SAMPLE tunnels (default 50) every 200 ms across the storm; this samples `vpngw status`
//! (text, the CLI included) every 200 ms from just before the first rekeys until the end.
//!
//! Environment: TUNNELS=5000, DH=dh14 (dh2 ...), CONCURRENCY=256, IDLE_SECONDS=30,
//! DPD=0 (dead peer detection off on both sides), DH_PER_SECOND and DH_THREADS (vpngw's `tuning.dh_per_second` and `tuning.dh_threads`; unset:
//! vpngw's defaults), STORM, STORM_LIFETIME, PING_SAMPLE,
//! VPNGW_BIN (default: the release vpngw next to this example). Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)] // a benchmark

use std::time::{Duration, Instant};

use serde_json::Value;
use vpngw_tests::loadgen::{Plan, WINDOW_EARLY_SLACK, WINDOW_LATE_SLACK, percentile, rekey_window, rss_kib};
use vpngw_tests::netns::{LEFT_WAN, Lab, RIGHT_WAN, wait_for};
use vpngw_tests::vpngw::{Vpngw, config_text};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The process's user + system CPU time so far, in clock ticks (100 per second here).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, may hold spaces): fields 14 and 15 are utime, stime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

fn http_get(lab: &Lab, ns: &str, url: &str) -> Option<(String, Duration)> {
    let code = "import sys, time, urllib.request\nt=time.monotonic()\nb=urllib.request.urlopen(sys.argv[1], timeout=30).read()\n\
                sys.stderr.write(str(time.monotonic()-t))\nsys.stdout.write(b.decode())";
    let out = lab.exec(ns, "python3", &["-c", code, url]);
    let took: f64 = String::from_utf8_lossy(&out.stderr).trim().parse().ok()?;
    out.status.success().then(|| (String::from_utf8_lossy(&out.stdout).into_owned(), Duration::from_secs_f64(took)))
}

/// A gateway with the plan's connections, DPD on, metrics on.
fn gateway(lab: &Lab, name: &str, plan: &Plan) -> Vpngw {
    // DPD=0: off on both sides (what the idle figure costs without dead peer detection).
    let dpd = if env("DPD", 1) == 0 {
        "[connection.dpd]\nenabled = false\n"
    } else {
        "[connection.dpd]\ntimeout_seconds = 30\naction = \"clear\"\n"
    };
    let mut tuning = String::new();
    for (var, key) in [("DH_PER_SECOND", "dh_per_second"), ("DH_THREADS", "dh_threads")] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse::<u32>().ok()) {
            tuning.push_str(&format!("{key} = {n}\n"));
        }
    }
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(lab, name), false, &plan.gateway_connections(dpd))
        .replacen("\n[[connection]]", &format!("\n[tuning]\n{tuning}\n[[connection]]"), 1)
        .replacen("[[connection]]", "[metrics]\nlisten = \"127.0.0.1:9720\"\n\n[[connection]]", 1);
    let v = Vpngw::start(lab, &lab.left, name, &config, &[]);
    // Started: its status answers (5,000 connections take a moment to load).
    wait_for(Duration::from_secs(60), || v.status()).unwrap_or_else(|| panic!("no status:\n{}", v.log_text()));
    v
}

/// target/<profile>/examples/tunnels -> target/<profile>/vpngw-loadgen (make bench-tunnels
/// builds it).
fn loadgen_bin() -> String {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join("vpngw-loadgen");
    assert!(bin.exists(), "{} missing: cargo build --release -p vpngw-tests --bins", bin.display());
    bin.display().to_string()
}

/// The generator's JSON report, once it has written it.
fn loadgen_report(lab: &Lab) -> Option<Value> {
    let text = std::fs::read_to_string(lab.dir.join("loadgen.json")).ok()?;
    text.lines().find_map(|l| serde_json::from_str::<Value>(l).ok())
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// STORM=gateway|peer: establishment, then every tunnel's first rekey at once (see the top).
fn storm(lab: &Lab, mut plan: Plan, mode: &str) {
    let lifetime: u32 = env("STORM_LIFETIME", 90);
    let sample: u32 = env("PING_SAMPLE", 50);
    assert!(mode == "gateway" || mode == "peer", "STORM: gateway or peer");
    plan.child_lifetime_seconds = lifetime;
    plan.gateway_initiates = mode == "gateway";
    let (lo, hi) = rekey_window(lifetime);
    // Long enough for the last tunnel's rekey (even the responder's later deadline, lifetime -
    // margin/2) and its old pair's deletion (1 s activation delay, 10 s grace).
    let hold = lifetime + 20;
    let bin = loadgen_bin();
    let (tunnels, dh, concurrency) = (plan.tunnels.to_string(), plan.dh_group.name(), plan.concurrency.to_string());
    let (hold_s, lifetime_s, sample_s) = (hold.to_string(), lifetime.to_string(), sample.to_string());
    let mut args = vec![
        "--gateway",
        LEFT_WAN,
        "--tunnels",
        &tunnels,
        "--dh-group",
        dh,
        "--concurrency",
        &concurrency,
        "--timeout",
        "300",
        "--hold",
        &hold_s,
        "--child-lifetime",
        &lifetime_s,
        "--storm",
        "--ping-sample",
        &sample_s,
    ];
    if plan.gateway_initiates {
        args.push("--gateway-initiates");
    }
    let log = lab.dir.join("loadgen.json");
    // Answering, the generator listens before vpngw's first messages go out.
    let (v, loadgen, started) = if plan.gateway_initiates {
        let loadgen = lab.spawn(&lab.right, &bin, &args, &[], &log);
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        (gateway(lab, "storm", &plan), loadgen, started)
    } else {
        let v = gateway(lab, "storm", &plan);
        (v, lab.spawn(&lab.right, &bin, &args, &[], &log), Instant::now())
    };
    // `vpngw status` from a little before the first tunnels' window until the report; until
    // then, when vpngw shows every tunnel up (a tunnel that failed never shows: stop waiting).
    let sample_from = (started + lo).checked_sub(Duration::from_secs(3)).unwrap_or(started);
    let up = wait_for(sample_from.saturating_duration_since(Instant::now()), || {
        let s = v.status()?;
        let n = s["connections"].as_array()?.iter().filter(|c| c["state"] == "up").count();
        (n == plan.tunnels as usize).then_some(n)
    });
    let setup_seen = started.elapsed();
    eprintln!("up: {up:?} after {setup_seen:?}");
    std::thread::sleep(sample_from.saturating_duration_since(Instant::now()));
    let mut samples: Vec<(u128, Duration)> = Vec::new();
    let report = loop {
        if let Some(r) = loadgen_report(lab) {
            break r;
        }
        if started.elapsed() > Duration::from_secs(u64::from(hold) + 600) {
            break Value::Null;
        }
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let t = Instant::now();
        let _ = v.status_text();
        samples.push((at, t.elapsed()));
        std::thread::sleep(Duration::from_millis(200));
    };
    let storm = &report["storm"];
    // The storm: from the first rekey to the last one's old pair deleted (10 s grace, 1 s switch).
    let (first, last) = (storm["first_epoch_ms"].as_u64().unwrap_or(0), storm["last_epoch_ms"].as_u64().unwrap_or(0));
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at >= u128::from(first) && *at <= u128::from(last) + 11_000)
        .map(|(_, d)| *d)
        .collect();
    during.sort_unstable();
    let pings = &report["pings"];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("| measure | value |\n|---|---|");
    println!(
        "| storm | {} ({tunnels} tunnels, {dh}, aes-128/sha1, no PFS; {}) |",
        if plan.gateway_initiates {
            "vpngw initiated every tunnel, so it is each child SA's quick-mode initiator and rekeys them"
        } else {
            "the generator's initiators rekey; vpngw answers every quick mode"
        },
        tuning_label()
    );
    println!(
        "| established | {} in {} s, failures {}; vpngw shows all up after {} |",
        report["established"],
        report["setup_seconds"],
        report["failures"],
        if up.is_some() { format!("{:.1} s", setup_seen.as_secs_f64()) } else { "- (not all up)".into() }
    );
    println!(
        "| child SA lifetime; quick-mode initiator's window | {lifetime} s; {:.1}-{:.1} s after establishment (counted in it: -{} ms/+{} ms) |",
        lo.as_secs_f64(),
        hi.as_secs_f64(),
        WINDOW_EARLY_SLACK.as_millis(),
        WINDOW_LATE_SLACK.as_millis()
    );
    println!(
        "| tunnels rekeyed | {} of {}: by vpngw {}, by the peer {}; new SPIs both ways {}; old pair deleted {} (after the new one: p50 {} s, max {} s) |",
        storm["rekeyed"],
        report["established"],
        storm["by_gateway"],
        storm["by_peer"],
        storm["new_spis_both_ways"],
        storm["old_deleted"],
        storm["old_deleted_after_s"]["p50"],
        storm["old_deleted_after_s"]["max"]
    );
    println!(
        "| rekey after establishment min/p50/max | {}/{}/{} s; in the window {}, early {}, late {} (latest {} s after the window) |",
        storm["delay_s"]["min"],
        storm["delay_s"]["p50"],
        storm["delay_s"]["max"],
        storm["in_window"],
        storm["early"],
        storm["late"],
        storm["max_late_s"]
    );
    println!(
        "| storm spread (first to last rekey) | {} s (establishment: {} s) |",
        storm["spread_s"], storm["establishment_spread_s"]
    );
    println!("| failures during the storm | {} |", storm["failures"]);
    println!("| later rekeys (second round, started before the end) | {} |", storm["later_rekeys"]);
    println!(
        "| pings through {} tunnels every 200 ms | {} sent, {} answered, {} lost ({} with no outbound SA); lossy tunnels {} |",
        pings["tunnels"], pings["sent"], pings["answered"], pings["lost"], pings["no_sa"], pings["lost_by_tunnel"]
    );
    println!(
        "| `vpngw status` (text, CLI included) during the storm p50/p99/max | {}/{}/{} ms ({} samples, {} over 100 ms; all samples: {}) |",
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        ms(during.last().copied().unwrap_or_default()),
        during.len(),
        during.iter().filter(|d| **d > Duration::from_millis(100)).count(),
        samples.len()
    );
    println!(
        "| load average at the end (1/5/15 min) | {} |",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = lab.stop(loadgen, Duration::from_secs(5));
    let _ = v.stop(lab);
}

fn main() {
    let tunnels: u32 = env("TUNNELS", 5000);
    let dh: String = env("DH", "dh14".to_string());
    let concurrency: usize = env("CONCURRENCY", 256);
    let idle = Duration::from_secs(env("IDLE_SECONDS", 30));
    let lab = Lab::gateways("bench-tunnels");
    let mut plan = Plan::new(LEFT_WAN.parse().unwrap(), tunnels);
    plan.dh_group = vpngw_crypto::DhGroup::from_name(&dh).expect("DH: dh1, dh2, dh5, dh14, dh24");
    plan.concurrency = concurrency;
    lab.ip(&lab.right, &["route", "add", "local", &plan.address_range(), "dev", "lo"]);
    lab.ip(&lab.left, &["route", "add", &plan.address_range(), "via", RIGHT_WAN]);
    if let Ok(mode) = std::env::var("STORM") {
        storm(&lab, plan, &mode);
        return;
    }

    // The one-tunnel figure first: the same daemon, one connection, up and idle.
    let mut one = plan.clone();
    one.tunnels = 1;
    let v1 = gateway(&lab, "one", &one);
    // target/<profile>/examples/tunnels -> target/<profile>/vpngw-loadgen (make bench-tunnels
    // builds it).
    let loadgen_bin = loadgen_bin();
    let bin = loadgen_bin.as_str();
    let out = lab.exec(&lab.right, bin, &["--gateway", LEFT_WAN, "--tunnels", "1", "--dh-group", &dh]);
    assert!(out.status.success(), "one tunnel: {}", String::from_utf8_lossy(&out.stdout));
    std::thread::sleep(Duration::from_secs(2));
    let rss_one = rss_kib(v1.pid);
    let _ = v1.stop(&lab);

    let v = gateway(&lab, "many", &plan);
    let rss_configured = rss_kib(v.pid);
    let hold = idle.as_secs() + 30;
    let (tunnels_arg, concurrency_arg, hold_arg) = (tunnels.to_string(), concurrency.to_string(), hold.to_string());
    let mut args = vec![
        "--gateway",
        LEFT_WAN,
        "--tunnels",
        &tunnels_arg,
        "--dh-group",
        &dh,
        "--concurrency",
        &concurrency_arg,
        "--timeout",
        "300",
        "--hold",
        &hold_arg,
    ];
    if env("DPD", 1) == 0 {
        args.push("--no-dpd");
    }
    let loadgen = lab.spawn(&lab.right, bin, &args, &[], &lab.dir.join("loadgen.json"));
    // Established when vpngw shows every connection up.
    let started = Instant::now();
    let up = wait_for(Duration::from_secs(300), || {
        let s = v.status()?;
        let n = s["connections"].as_array()?.iter().filter(|c| c["state"] == "up").count();
        (n == tunnels as usize).then_some(n)
    });
    let setup_seen = started.elapsed();
    eprintln!("up: {up:?} after {setup_seen:?}");
    std::thread::sleep(Duration::from_secs(5));
    // Idle: CPU and memory.
    let (t0, c0) = (Instant::now(), cpu_ticks(v.pid));
    std::thread::sleep(idle);
    let cpu_share = (cpu_ticks(v.pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    let rss_many = rss_kib(v.pid);
    // Surfaces at scale.
    let mut status_times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let _ = v.status_text();
            t.elapsed()
        })
        .collect();
    status_times.sort_unstable();
    let scrape = http_get(&lab, &lab.left, "http://127.0.0.1:9720/metrics");
    let report: Value = wait_for(Duration::from_secs(u64::from(hold as u32) + 60), || {
        let text = std::fs::read_to_string(lab.dir.join("loadgen.json")).ok()?;
        text.lines().find_map(|l| serde_json::from_str::<Value>(l).ok())
    })
    .unwrap_or(Value::Null);
    // The ceiling, measured now (the same machine, the same moment's noise), on one core.
    let ceiling = vpngw_tests::loadgen::in_memory_handshakes_per_second(&plan, 100).unwrap();
    let rate: f64 = report["setups_per_second"].as_f64().unwrap_or(0.0);
    println!("| measure | value |\n|---|---|");
    println!("| tunnels | {tunnels} ({dh}, aes-128/sha1, no PFS; concurrency {concurrency}; {}) |", tuning_label());
    println!(
        "| established (load generator) | {} in {} s = {} /s |",
        report["established"], report["setup_seconds"], report["setups_per_second"]
    );
    println!("| failures | {} |", report["failures"]);
    println!(
        "| setup latency p50/p90/p99/max ms | {}/{}/{}/{} |",
        report["latency_ms"]["p50"],
        report["latency_ms"]["p90"],
        report["latency_ms"]["p99"],
        report["latency_ms"]["max"]
    );
    println!("| echo through each tunnel | {} of {} |", report["echo"]["answered"], report["echo"]["sent"]);
    println!("| vpngw shows all up after | {:.1} s |", setup_seen.as_secs_f64());
    println!(
        "| in-memory ceiling (both sides on one core) | {ceiling:.0} handshakes/s: the run reached {:.2}x of it per core (2 cores) |",
        rate / 2.0 / ceiling
    );
    println!("| idle CPU over {} s | {:.2} % of one core |", idle.as_secs(), cpu_share * 100.0);
    println!(
        "| RSS: one tunnel / {tunnels} configured / {tunnels} up | {rss_one} / {rss_configured} / {rss_many} KiB = {:.1} KiB per tunnel over one |",
        (rss_many.saturating_sub(rss_one)) as f64 / f64::from(tunnels.max(2) - 1)
    );
    println!("| vpngw status (text), median of 5 | {:.0} ms |", status_times[2].as_secs_f64() * 1000.0);
    match scrape {
        Some((text, took)) => println!(
            "| /metrics scrape | {:.0} ms, {:.2} MiB, {} series |",
            took.as_secs_f64() * 1000.0,
            text.len() as f64 / (1 << 20) as f64,
            text.lines().filter(|l| !l.starts_with('#')).count()
        ),
        None => println!("| /metrics scrape | failed |"),
    }
    let _ = lab.stop(loadgen, Duration::from_secs(5));
    let _ = v.stop(&lab);
}

/// The `[tuning]` the run set, for the tables ("defaults" when none).
fn tuning_label() -> String {
    let set: Vec<String> = [("DH_PER_SECOND", "dh_per_second"), ("DH_THREADS", "dh_threads")]
        .into_iter()
        .filter_map(|(var, key)| std::env::var(var).ok().map(|v| format!("{key} {v}")))
        .collect();
    if set.is_empty() { "vpngw's default tuning".into() } else { set.join(", ") }
}
