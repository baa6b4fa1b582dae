//! `vpngw peer-config`: the other side's configuration, loaded as it is, brings the tunnel up.
//!
//! For a seeded random sample of suites from the seed's tables (both negotiation modes, both
//! identity types, vpngw initiating and answering, random lifetimes), vpngw in the left
//! namespace prints `peer-config NAME --format strongswan --include-key`; that text goes into
//! strongSwan's swanctl.conf in the right namespace unchanged; the tunnel must come up with the
//! algorithms of the connection and carry a ping. Without `--include-key` the key must be
//! absent and swanctl must refuse the file (the placeholder). Then `--format vpngw`, with a
//! `[gateway]` section added, configures a second vpngw on the right: up, and a ping.
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
    vpngw_initiates: bool,
    ike: (&'static str, &'static str, &'static str),
    esp: (&'static str, &'static str, &'static str),
    ike_lifetime: u64,
    child_lifetime: u64,
    kilobytes: u64,
}

impl Case {
    /// The i-th case: modes, identities and roles cycle so that six cases hold every mode
    /// with both roles and both identity types; the suites and lifetimes are random.
    fn sample(i: usize, rng: &mut Rng) -> Self {
        Self {
            // A dot in the name: swanctl.conf gets it as '_' (peer_config.rs, swan_name).
            name: if i % 2 == 0 { format!("branch-{i}") } else { format!("site.{i}") },
            aggressive: i & 1 == 1,
            fqdn: (i >> 1) & 1 == 1,
            vpngw_initiates: ((i >> 2) ^ i) & 1 == 1,
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
            start = if self.vpngw_initiates { "active" } else { "passive" },
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
        // vpngw active: it initiates; passive: strongSwan does (start_action = start at load).
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
    let cases: Vec<Case> = (0..6).map(|i| Case::sample(i, &mut rng)).collect();
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
