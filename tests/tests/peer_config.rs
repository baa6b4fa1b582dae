//! `vpngw peer-config`: the other side's configuration, loaded as it is, brings the tunnel up.
//!
//! For a seeded random sample of suites from the seed's tables (both negotiation modes, both
//! identity types, every `start`, random lifetimes), vpngw in the left namespace prints
//! `peer-config NAME --format strongswan --include-key`; that text goes into strongSwan's
//! swanctl.conf in the right namespace unchanged; the tunnel must come up with the algorithms
//! and lifetimes of the connection and carry a ping. Without `--include-key` the key must be
//! absent and swanctl must refuse the file (the placeholder). Then `--format vpngw`, with a
//! `[gateway]` section added, configures a second vpngw on the right: up, and a ping. A second
//! test takes the API's route through its answers for a runtime connection.
//!
//! The seed is printed; `PEER_CONFIG_SEED=N` repeats a run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, require_root, wait_for};
use vpngw_tests::strongswan::{Charon, sw_cipher_name, sw_group_name};
use vpngw_tests::traffic::{RIGHT_HOST, wait_ping};
use vpngw_tests::vpngw::{Vpngw, config_text};

const PSK: &str = "peer-config-psk-4f0c2a9e";
const CIPHERS: [&str; 5] = ["des", "3des", "aes-128", "aes-192", "aes-256"];
const HASHES: [&str; 2] = ["md5", "sha1"];
const GROUPS: [&str; 5] = ["dh1", "dh2", "dh5", "dh14", "dh24"];
const PFS: [&str; 6] = ["disable", "dh1", "dh2", "dh5", "dh14", "dh24"];

/// splitmix64: enough randomness for a sample, repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    aggressive: bool,
    fqdn: bool,
    /// vpngw's `start`: `active` (vpngw initiates), `passive` (strongSwan does, at load),
    /// `on-traffic` (strongSwan is told to initiate).
    start: &'static str,
    ike: (&'static str, &'static str, &'static str),
    esp: (&'static str, &'static str, &'static str),
    ike_lifetime: u64,
    child_lifetime: u64,
    kilobytes: u64,
}

impl Case {
    /// The i-th case: modes, identities and roles cycle so that the first six hold every mode
    /// with both roles and both identity types, the seventh is `on-traffic` at vpngw; the
    /// suites and lifetimes are random.
    fn sample(i: usize, rng: &mut Rng) -> Self {
        Self {
            // A dot in the name: swanctl.conf gets it as '_' (peer_config.rs, swan_name).
            name: if i % 2 == 0 { format!("branch-{i}") } else { format!("site.{i}") },
            aggressive: i & 1 == 1,
            fqdn: (i >> 1) & 1 == 1,
            start: match i {
                6.. => "on-traffic",
                _ if ((i >> 2) ^ i) & 1 == 1 => "active",
                _ => "passive",
            },
            ike: (rng.pick(&CIPHERS), rng.pick(&HASHES), rng.pick(&GROUPS)),
            esp: (rng.pick(&CIPHERS), rng.pick(&HASHES), rng.pick(&PFS)),
            ike_lifetime: rng.between(3600, 86_400),
            child_lifetime: rng.between(600, 3600),
            kilobytes: rng.pick(&[0, 1_843_200, 4_000_000]),
        }
    }

    fn vpngw_toml(&self) -> String {
        let (lid, rid) = if self.fqdn { ("fqdn:left.lab.example", "fqdn:right.lab.example") } else { ("ip", "ip") };
        format!(
            "[[connection]]\nname = \"{name}\"\nremote_address = \"{RIGHT_WAN}\"\npre_shared_key = \"{PSK}\"\n\
             local_subnets = [\"{LEFT_NET}\"]\nremote_subnets = [\"{RIGHT_NET}\"]\nstart = \"{start}\"\n\
             [connection.ike]\nmode = \"{mode}\"\nlocal_id = \"{lid}\"\nremote_id = \"{rid}\"\n\
             encryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\nlifetime_seconds = {}\n\
             [connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\npfs = \"{}\"\n\
             lifetime_seconds = {}\nlifetime_kilobytes = {}\n",
            self.ike.0,
            self.ike.1,
            self.ike.2,
            self.ike_lifetime,
            self.esp.0,
            self.esp.1,
            self.esp.2,
            self.child_lifetime,
            self.kilobytes,
            name = self.name,
            start = self.start,
            mode = if self.aggressive { "aggressive" } else { "main" },
        )
    }

    /// What strongSwan's `--list-sas` shows for this suite: the IKE SA, the child SA.
    fn strongswan_algorithms(&self) -> (String, String) {
        let hash = self.ike.1.to_uppercase();
        let ike =
            format!("{}/HMAC_{hash}_96/PRF_HMAC_{hash}/{}", sw_cipher_name(self.ike.0), sw_group_name(self.ike.2));
        let mut esp = format!("ESP:{}/HMAC_{}_96", sw_cipher_name(self.esp.0), self.esp.1.to_uppercase());
        if self.esp.2 != "disable" {
            esp.push('/');
            esp.push_str(sw_group_name(self.esp.2));
        }
        (ike, esp)
    }
}

fn seed() -> u64 {
    std::env::var("PEER_CONFIG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn peer_config(v: &Vpngw, name: &str, format: &str, include_key: bool) -> String {
    let mut args = vec!["peer-config", name, "--format", format];
    if include_key {
        args.push("--include-key");
    }
    let out = v.cli(&args);
    assert!(out.status.success(), "vpngw {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Without the key: none in any format, and swanctl refuses the strongSwan file as it is.
fn check_placeholder(v: &Vpngw, charon: &Charon, case: &Case) {
    for format in ["strongswan", "vpngw", "generic"] {
        let text = peer_config(v, &case.name, format, false);
        assert!(!text.contains(PSK), "{format} without --include-key shows the key:\n{text}");
        assert!(!text.starts_with("# SECRET"), "{format}:\n{text}");
        assert!(text.contains(&format!("<PRE-SHARED KEY of connection {}>", case.name)), "{format}:\n{text}");
    }
    let text = peer_config(v, &case.name, "strongswan", false);
    let out = charon.load_raw(&text);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // swanctl exits 0 even then: what it says, and what it did not load, are the verdict.
    assert!(
        said.contains("syntax error") && said.contains("invalid config file"),
        "swanctl took the placeholder:\n{said}"
    );
    assert!(!said.contains("loaded connection"), "{said}");
    let verdict: Vec<&str> = said.lines().filter(|l| l.contains("syntax error")).collect();
    eprintln!("swanctl on the placeholder: {}", verdict.join("; "));
}

/// One case: vpngw's strongSwan output into strongSwan, the tunnel up with the case's
/// algorithms, a ping through it.
fn run_case(lab: &Lab, charon: &Charon, case: &Case, n: usize) -> Result<(), String> {
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(lab, &format!("c{n}")), true, &case.vpngw_toml());
    let v = Vpngw::start(lab, &lab.left, &format!("c{n}"), &config, &[]);
    if n == 0 {
        check_placeholder(&v, charon, case);
    }
    let conf = peer_config(&v, &case.name, "strongswan", true);
    let result = (|| {
        if !conf.starts_with("# SECRET:") || !conf.contains(PSK) {
            return Err(format!("--include-key: no secret line or no key:\n{conf}"));
        }
        let out = charon.load_raw(&conf);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let swan_name = case.name.replace('.', "_");
        let loaded = [format!("loaded ike secret 'ike-{swan_name}'"), format!("loaded connection '{swan_name}'")];
        if !out.status.success() || said.contains("invalid config file") || !loaded.iter().all(|l| said.contains(l)) {
            return Err(format!("swanctl did not load the generated file: {said}"));
        }
        // vpngw active: it initiates; passive: strongSwan does (start_action = start at load);
        // on-traffic: strongSwan is told to (`swanctl --initiate`). Its trap (start_action =
        // trap) would do it on the right host's traffic with the kernel's IPsec, but the lab's
        // kernel-libipsec has no acquires ("could not find an outbound IPsec SA ... dropping").
        if case.start == "on-traffic" {
            let said = charon.initiate_child(&swan_name, &swan_name, 10);
            if !said.contains("initiate completed successfully") {
                return Err(format!("swanctl --initiate: {said}"));
            }
        }
        let up = v
            .wait_up(&case.name, Duration::from_secs(20))
            .ok_or_else(|| format!("vpngw never came up: {}", v.status_text()))?;
        // The lifetimes strongSwan proposes (as initiator) are vpngw's own: the smaller one
        // would have won.
        let ike_left = up["ike_sa"]["expires_in_seconds"].as_u64().unwrap_or(0);
        let child = &up["child_sas"][0];
        let child_left = child["expires_in_seconds"].as_u64().unwrap_or(0);
        let kilobytes = child["lifetime_kilobytes"].as_u64().unwrap_or(0);
        if !(case.ike_lifetime - 30..=case.ike_lifetime).contains(&ike_left)
            || !(case.child_lifetime - 30..=case.child_lifetime).contains(&child_left)
            || kilobytes != case.kilobytes
        {
            return Err(format!(
                "lifetimes differ: IKE SA expires in {ike_left} s, child SA in {child_left} s, {kilobytes} KB"
            ));
        }
        let (want_ike, want_esp) = case.strongswan_algorithms();
        let sas = wait_for(Duration::from_secs(5), || {
            let s = charon.list_sas();
            s.children.iter().any(|c| c.state == "INSTALLED").then_some(s)
        })
        .ok_or_else(|| format!("strongSwan has no installed child SA: {:?}", charon.list_sas()))?;
        if !sas.ike_algorithms.contains(&want_ike) {
            return Err(format!("strongSwan's IKE SA {:?}, expected {want_ike}", sas.ike_algorithms));
        }
        if !sas.children.iter().any(|c| c.algorithms == want_esp) {
            return Err(format!("strongSwan's child SAs {:?}, expected {want_esp}", sas.children));
        }
        if !wait_ping(lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)) {
            return Err("no ping crossed the tunnel".into());
        }
        Ok(())
    })();
    let code = v.stop(lab);
    // vpngw's Deletes end strongSwan's SAs; the next load replaces the connection.
    let gone = wait_for(Duration::from_secs(5), || {
        let s = charon.list_sas();
        (s.ike_established == 0 && s.children.is_empty()).then_some(())
    });
    if gone.is_none() {
        charon.terminate_all();
    }
    result
        .and_then(|()| if code == Some(0) { Ok(()) } else { Err(format!("vpngw exited with {code:?} on SIGTERM")) })
        .map_err(|e| {
            format!(
                "{case:?}: {e}\n--- generated swanctl.conf ---\n{conf}\n--- vpngw log ---\n{}\n--- charon log ---\n{}",
                tail(&v.log_text(), 25),
                tail(&charon.log(), 40)
            )
        })
}

/// Two vpngw: the right one configured from the left one's `--format vpngw` output and a
/// `[gateway]` section of its own.
fn run_vpngw_pair(lab: &Lab, case: &Case, n: usize) -> Result<(), String> {
    let left_config = config_text(LEFT_WAN, &Vpngw::socket_for(lab, &format!("l{n}")), true, &case.vpngw_toml());
    let left = Vpngw::start(lab, &lab.left, &format!("l{n}"), &left_config, &[]);
    let theirs = peer_config(&left, &case.name, "vpngw", true);
    let right_config = config_text(RIGHT_WAN, &Vpngw::socket_for(lab, &format!("r{n}")), true, &theirs);
    let checked = lab.dir.join(format!("right-{n}.toml"));
    std::fs::write(&checked, &right_config).unwrap();
    // Inline key: a file others may read is only warned about, but keep it private anyway.
    std::fs::set_permissions(&checked, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let check = std::process::Command::new(vpngw_tests::vpngw::binary())
        .args(["check", "--config", &checked.display().to_string()])
        .output()
        .unwrap();
    if !check.status.success() {
        return Err(format!(
            "vpngw check refused the generated table: {}{}\n{right_config}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let right = Vpngw::start(lab, &lab.right, &format!("r{n}"), &right_config, &[]);
    let result = (|| {
        for (side, v) in [("left", &left), ("right", &right)] {
            v.wait_up(&case.name, Duration::from_secs(20))
                .ok_or_else(|| format!("{side} vpngw never came up: {}", v.status_text()))?;
        }
        if !wait_ping(lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)) {
            return Err("no ping crossed the tunnel".into());
        }
        Ok(())
    })();
    let codes = (left.stop(lab), right.stop(lab));
    result.and_then(|()| if codes == (Some(0), Some(0)) { Ok(()) } else { Err(format!("exit codes {codes:?}")) }).map_err(
        |e| {
            format!(
                "{case:?} (vpngw pair): {e}\n--- generated table ---\n{theirs}\n--- left log ---\n{}\n--- right log ---\n{}",
                tail(&left.log_text(), 25),
                tail(&right.log_text(), 25)
            )
        },
    )
}

#[test]
fn the_generated_peer_configuration_brings_the_tunnel_up() {
    require_root();
    let seed = seed();
    eprintln!("peer_config: seed {seed} (PEER_CONFIG_SEED={seed} repeats this sample)");
    let mut rng = Rng(seed);
    let cases: Vec<Case> = (0..7).map(|i| Case::sample(i, &mut rng)).collect();
    for c in &cases {
        eprintln!("  {c:?}");
    }
    let lab = Lab::gateways("peer-config");
    let charon = Charon::start_with(&lab, &lab.right, true);
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        if let Err(e) = run_case(&lab, &charon, case, n) {
            failures.push(e);
        }
    }
    // The right namespace's ports go to a vpngw now.
    charon.crash(&lab);
    for (n, case) in [&cases[0], &cases[3]].into_iter().enumerate() {
        if let Err(e) = run_vpngw_pair(&lab, case, n) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "seed {seed}: {} failure(s):\n{}", failures.len(), failures.join("\n\n"));
}

/// One HTTP request to the API from inside `ns`: (status, Content-Type, Cache-Control, body).
fn http(lab: &Lab, ns: &str, method: &str, url: &str, token: &str, body: &str) -> (u16, String, String, String) {
    let code = r#"
import sys, urllib.request, urllib.error
method, url, token, body = sys.argv[1:5]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
if token:
    req.add_header("Authorization", "Bearer " + token)
if body:
    req.add_header("Content-Type", "application/json")
try:
    r = urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print(r.status)
print(r.headers.get("Content-Type", ""))
print(r.headers.get("Cache-Control", ""))
print(r.read().decode(), end="")
"#;
    let out = lab.exec(ns, "python3", &["-c", code, method, url, token, body]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.splitn(4, '\n');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let status =
        next().trim().parse().unwrap_or_else(|_| panic!("no answer: {}", String::from_utf8_lossy(&out.stderr)));
    (status, next(), next(), next())
}

/// The API serves a runtime connection's other side too: the key only when asked, then with
/// `Cache-Control: no-store` and a log line that names the connection, never the key.
#[test]
fn the_api_serves_runtime_connections_and_the_key_only_when_asked() {
    require_root();
    const TOKEN: &str = "peer-config-token-8d2f61";
    const RUNTIME_PSK: &str = "runtime-psk-93be0c4a71";
    let lab = Lab::gateways("peer-config-api");
    let dir = lab.dir.join("api");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("api.token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let api = format!(
        "[api]\ntoken_file = \"{}\"\nstate_file = \"{}\"\n",
        token.display(),
        dir.join("connections.toml").display()
    );
    let config = config_text(LEFT_WAN, &Vpngw::socket_for(&lab, "api"), true, &api);
    let v = Vpngw::start(&lab, &lab.left, "api", &config, &[]);
    let base = "http://127.0.0.1:9721/api/v1/connections";
    let runtime = format!(
        r#"{{"remote_address": "{RIGHT_WAN}", "pre_shared_key": "{RUNTIME_PSK}", "local_subnets": ["{LEFT_NET}"],
            "remote_subnets": ["{RIGHT_NET}"], "start": "passive",
            "ike": {{"mode": "aggressive", "remote_id": "fqdn:right.lab.example", "encryption": "aes-256", "authentication": "sha1", "dh_group": "dh14"}},
            "ipsec": {{"encryption": "aes-128", "authentication": "sha1", "pfs": "dh14"}}}}"#
    );
    let created = wait_for(Duration::from_secs(10), || {
        let (code, _, _, body) = http(&lab, &lab.left, "PUT", &format!("{base}/rt-1"), TOKEN, &runtime);
        (code == 201).then_some(body)
    });
    assert!(created.is_some(), "PUT refused\n{}", v.log_text());

    let get =
        |query: &str, token: &str| http(&lab, &lab.left, "GET", &format!("{base}/rt-1/peer-config{query}"), token, "");
    let (code, content_type, cache, text) = get("?format=strongswan", TOKEN);
    assert_eq!(code, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(cache, "no-cache");
    assert!(text.contains("aggressive = yes") && text.contains("proposals = aes256-sha1-modp2048"), "{text}");
    assert!(text.contains("id = @right.lab.example") && text.contains("start_action = start"), "{text}");
    assert!(!text.contains(RUNTIME_PSK) && text.contains("<PRE-SHARED KEY of connection rt-1>"), "{text}");

    let (code, _, cache, text) = get("?format=vpngw&include_key=true", TOKEN);
    assert_eq!(code, 200, "{text}");
    assert_eq!(cache, "no-store");
    assert!(text.starts_with("# SECRET:") && text.contains(&format!("pre_shared_key = \"{RUNTIME_PSK}\"")), "{text}");

    let (code, _, _, text) = get("", TOKEN);
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("Negotiation mode") && text.contains("Aggressive") && !text.contains(RUNTIME_PSK), "{text}");

    for (query, want) in [("?format=cisco", 400), ("?include_key=yes", 400), ("?colour=blue", 400)] {
        let (code, content_type, _, body) = get(query, TOKEN);
        assert_eq!(code, want, "{query}: {body}");
        assert!(
            content_type == "application/problem+json" && body.contains("problems/invalid-query"),
            "{query}: {body}"
        );
    }
    assert_eq!(get("", "wrong-token").0, 401);
    assert_eq!(http(&lab, &lab.left, "GET", &format!("{base}/nope/peer-config"), TOKEN, "").0, 404);

    // The CLI reaches runtime connections through the control socket alike.
    let text = peer_config(&v, "rt-1", "strongswan", false);
    assert!(text.contains("proposals = aes256-sha1-modp2048") && !text.contains(RUNTIME_PSK), "{text}");

    let log = v.log_text();
    let handed: Vec<&str> = log.lines().filter(|l| l.contains("pre-shared key handed out")).collect();
    assert_eq!(handed.len(), 1, "{log}");
    assert!(handed[0].contains("rt-1") && handed[0].contains("vpngw"), "{}", handed[0]);
    assert!(!log.contains(RUNTIME_PSK), "the key is in the log:\n{log}");
    assert_eq!(v.stop(&lab), Some(0));
}
