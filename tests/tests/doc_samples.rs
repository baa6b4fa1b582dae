//! The samples of command output in the documentation are real output: this test runs the
//! scenarios they show between two vpngw in namespaces, captures `vpngw status` and
//! `vpngw diagnose NAME`, and compares each marked block of the docs with it. The error line
//! of a second vpngw that finds UDP 500 taken must appear verbatim in troubleshooting.md's
//! "Failures to start". It also checks that `vpngw check` accepts `deploy/examples/vpngw.toml`
//! (with the key files its header says to create).
//!
//! A sample is marked by an HTML comment on the line before its fence:
//!
//! ````text
//! <!-- sample: status-up -->
//! ```text
//! ...
//! ```
//! ````
//!
//! What varies from run to run (times and ages, counters, SPIs, MAC addresses, the drop counts,
//! the repeat count of a failure) is replaced by placeholders on both sides before comparing
//! ([`normalize`]); words, structure, addresses and algorithm names must match. Changing the
//! output format of a command therefore fails this test until the docs follow:
//!
//! ```sh
//! sudo VPNGW_BLESS_DOCS=1 cargo test -p vpngw-tests --test doc_samples
//! ```
//!
//! rewrites every marked block from the real output (SPIs and MAC addresses replaced by fixed
//! example values, so that a re-run does not churn them); review the diff and commit it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vpngw_tests::netns::{LEFT_NET, LEFT_WAN, Lab, RIGHT_NET, RIGHT_WAN, wait_for};
use vpngw_tests::traffic::{RIGHT_HOST, ping, wait_ping};
use vpngw_tests::vpngw::{Vpngw, binary};

const PSK: &str = "docs-psk-0123456789abcdef";

/// The repository's root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A gateway with two pinned-count workers (the `dataplane:` line does not depend on the
/// machine's cores) and one connection.
fn config(lab: &Lab, gw: &str, public: &str, connection: &str) -> String {
    format!(
        "[gateway]\nname = \"{gw}\"\npublic_address = \"{public}\"\nworkers = 2\ncontrol_socket = \"{}\"\n\n{connection}",
        Vpngw::socket_for(lab, gw).display()
    )
}

#[allow(clippy::too_many_arguments)]
fn connection(
    name: &str,
    remote: &str,
    local_net: &str,
    remote_net: &str,
    start: &str,
    ike: (&str, &str, &str),
    esp: (&str, &str),
) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\nremote_address = \"{remote}\"\npre_shared_key = \"{PSK}\"\n\
         local_subnets = [\"{local_net}\"]\nremote_subnets = [\"{remote_net}\"]\nstart = \"{start}\"\n\
         [connection.ike]\nencryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\n\
         [connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\n",
        ike.0, ike.1, ike.2, esp.0, esp.1
    )
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tunnel up between the seed's defaults on both sides, pings through it: the left
/// gateway's `vpngw status`.
fn up_scenario() -> Vec<(&'static str, String)> {
    let lab = Lab::gateways("doc-up");
    let suite = (("3des", "md5", "dh1"), ("3des", "md5"));
    let left_conn = connection("to-right", RIGHT_WAN, LEFT_NET, RIGHT_NET, "active", suite.0, suite.1);
    let right_conn = connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive", suite.0, suite.1);
    let right = Vpngw::start(&lab, &lab.right, "gw-right", &config(&lab, "gw-right", RIGHT_WAN, &right_conn), &[]);
    let left = Vpngw::start(&lab, &lab.left, "gw-left", &config(&lab, "gw-left", LEFT_WAN, &left_conn), &[]);
    left.wait_up("to-right", Duration::from_secs(15)).unwrap_or_else(|| panic!("not up:\n{}", left.log_text()));
    assert!(wait_ping(&lab, &lab.left_host, RIGHT_HOST, Duration::from_secs(10)), "no ping through the tunnel");
    assert_eq!(ping(&lab, &lab.left_host, RIGHT_HOST, 4), 4);
    // Raw ESP takes the link path once the kernel's neighbour entry is verified (ADR 0011).
    let status = wait_for(Duration::from_secs(5), || {
        let s = left.status_text();
        s.contains("raw ESP to").then_some(s)
    })
    .unwrap_or_else(|| panic!("no link path in status:\n{}", left.status_text()));
    let _ = right;
    vec![("status-up", status)]
}

/// The left gateway offers aes-256/sha1/dh14 to a right gateway configured with the seed's
/// defaults: the right one (responder) sees both sides' values. Its `vpngw status` and
/// `vpngw diagnose to-left`.
fn mismatch_scenario() -> Vec<(&'static str, String)> {
    let lab = Lab::gateways("doc-mismatch");
    let left_conn = connection(
        "to-right",
        RIGHT_WAN,
        LEFT_NET,
        RIGHT_NET,
        "active",
        ("aes-256", "sha1", "dh14"),
        ("aes-256", "sha1"),
    );
    let right_conn =
        connection("to-left", LEFT_WAN, RIGHT_NET, LEFT_NET, "passive", ("3des", "md5", "dh1"), ("3des", "md5"));
    let right = Vpngw::start(&lab, &lab.right, "gw-right", &config(&lab, "gw-right", RIGHT_WAN, &right_conn), &[]);
    let left = Vpngw::start(&lab, &lab.left, "gw-left", &config(&lab, "gw-left", LEFT_WAN, &left_conn), &[]);
    let failure = right
        .wait_failure("to-left", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no failure recorded:\n{}", right.log_text()));
    assert_eq!(failure["reason"], "phase1-proposal-mismatch", "{failure}");
    let status = right.status_text();
    let diagnose = right.cli(&["diagnose", "to-left"]);
    let udp_500_held = second_instance_error(&lab, &left);
    vec![("status-down", status), ("diagnose-mismatch", stdout(&diagnose)), ("start-udp-500-in-use", udp_500_held)]
}

/// A second vpngw started next to a running one (UDP 500 held, as another IKE daemon would):
/// the error line it ends with, without `error: `.
fn second_instance_error(lab: &Lab, running: &Vpngw) -> String {
    let dir = lab.dir.join("second");
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(&running.config)
        .unwrap()
        .replace(&running.socket.display().to_string(), &dir.join("vpngw.sock").display().to_string());
    let path = dir.join("vpngw.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = lab.exec(&running.ns, &binary().display().to_string(), &["run", "--config", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or_else(|| panic!("{stderr}"));
    line.to_string()
}

/// Error lines the docs quote (in backticks, in a table): each must appear verbatim.
fn check_quoted(samples: &[(&'static str, String)]) -> Vec<&'static str> {
    let doc = std::fs::read_to_string(root().join("docs/troubleshooting.md")).unwrap();
    let mut quoted = Vec::new();
    for (name, line) in samples.iter().filter(|(n, _)| n.starts_with("start-")) {
        assert!(
            doc.contains(&format!("`{line}`")),
            "docs/troubleshooting.md, \"Failures to start\", no longer quotes the daemon's error ({name}): `{line}`"
        );
        quoted.push(*name);
    }
    quoted
}

/// What varies from run to run, replaced by placeholders (applied to the doc and to the real
/// output alike).
fn normalize(text: &str) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        // Which datagrams were dropped depends on timing (crossed initiations, retransmissions).
        if let Some(rest) = line.strip_prefix("dropped datagrams:") {
            let _ = rest;
            lines.push("dropped datagrams: <drops>".to_string());
            continue;
        }
        let mut out = String::new();
        let mut token = String::new();
        for ch in line.chars() {
            if ch.is_ascii_alphanumeric() || "_.:/-".contains(ch) {
                token.push(ch);
            } else {
                out.push_str(&classify(&token));
                token.clear();
                out.push(ch);
            }
        }
        out.push_str(&classify(&token));
        lines.push(out);
    }
    let mut text = lines.join("\n");
    // Lists of numbers (the workers' cores), parts that appear only with some traffic.
    while text.contains("N, N") {
        text = text.replace("N, N", "N");
    }
    for (from, to) in [
        (" (N through the link path)", ""),
        (", N times)", ")"),
        ("; TCP MSS clamped in N SYNs", ""),
        ("(revision unknown)", "(revision <hex>)"),
    ] {
        text = text.replace(from, to);
    }
    text.trim().to_string()
}

fn is_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hex_value(s: &str) -> bool {
    s.len() >= 6
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// One token (letters, digits and `_.:/-`) with what varies replaced.
fn classify(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    // Trailing punctuation of the sentence is not part of the value.
    let body = token.trim_end_matches([':', '.']);
    let tail = &token[body.len()..];
    if body.is_empty() {
        return token.to_string();
    }
    if is_mac(body) {
        return format!("<mac>{tail}");
    }
    // Addresses, networks and address:port stay: the lab uses the docs' addresses.
    let addr = body.split(['/', ':']).next().unwrap_or("");
    if is_ipv4(addr) {
        return token.to_string();
    }
    if body.contains('/') {
        let parts: Vec<String> = body.split('/').map(classify).collect();
        return format!("{}{tail}", parts.join("/"));
    }
    // SPIs, cookies, the build's git revision (`-dirty` when built from a changed tree).
    if is_hex_value(body.strip_suffix("-dirty").unwrap_or(body)) {
        return format!("<hex>{tail}");
    }
    // ISAKMP cookies as strongSwan prints them: `<cookie>_i` and `<cookie>_r`.
    if let Some((cookie, side @ ("i" | "r"))) = body.rsplit_once('_')
        && is_hex_value(cookie)
    {
        return format!("<hex>_{side}{tail}");
    }
    let digits = body.trim_start_matches(|c: char| c.is_ascii_digit());
    let has_digits = digits.len() < body.len();
    if has_digits && (digits.is_empty() || digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')) {
        return format!("N{tail}");
    }
    if has_digits && ["s", "m", "h", "ms"].contains(&digits) {
        return format!("<t>{tail}");
    }
    if has_digits && digits == "x" {
        return format!("Nx{tail}");
    }
    token.to_string()
}

/// For a blessed doc: SPIs, cookies and MAC addresses replaced by fixed example values in
/// order of appearance, so that blessing again changes only what the format changed.
fn example_values(text: &str) -> String {
    const HEX: [&str; 6] = ["c1a5e0d2", "c7f3b2a9", "d4e8a1c3", "e2b9f407", "a6c1d3e5", "b8d2f6a4"];
    const COOKIES: [&str; 2] = ["8f3c2a71d9e04b56", "2b7e151628aed2a6"];
    let mut n = 0;
    let mut cookies = 0;
    let mut out = String::new();
    let mut token = String::new();
    let mut flush = |token: &mut String, out: &mut String| {
        if is_mac(token) {
            out.push_str("52:54:00:6b:3a:10");
        } else if is_hex_value(token) && token.len() == 8 {
            out.push_str(HEX[n % HEX.len()]);
            n += 1;
        } else if is_hex_value(token) && token.len() == 12 {
            out.push_str("3f9a1c7e20b4");
        } else if is_hex_value(token) && token.len() == 16 {
            out.push_str(COOKIES[cookies % COOKIES.len()]);
            cookies += 1;
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == ':' {
            token.push(ch);
        } else {
            flush(&mut token, &mut out);
            out.push(ch);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// The marked blocks of a doc: (name, range of the block's body in the text).
fn blocks(doc: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = doc[at..].find("<!-- sample: ") {
        let start = at + i;
        let name_end = start + doc[start..].find(" -->").expect("unterminated sample marker");
        let name = doc[start + "<!-- sample: ".len()..name_end].to_string();
        let fence = name_end + doc[name_end..].find("```").expect("no fence after a sample marker");
        let body = fence + doc[fence..].find('\n').expect("fence line") + 1;
        let end = body + doc[body..].find("```").expect("unterminated sample block");
        found.push((name, body..end));
        at = end + 3;
    }
    found
}

const DOCS: [&str; 1] = ["docs/troubleshooting.md"];

fn check_or_bless(samples: &[(&'static str, String)]) {
    let bless = std::env::var_os("VPNGW_BLESS_DOCS").is_some_and(|v| v == "1");
    let mut used = Vec::new();
    let mut drift = Vec::new();
    for doc in DOCS {
        let path = root().join(doc);
        let mut text = std::fs::read_to_string(&path).unwrap();
        // From the end, so that earlier ranges stay valid while blessing.
        for (name, range) in blocks(&text).into_iter().rev() {
            let (_, real) = samples
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{doc}: sample {name:?} is not produced by this test"));
            used.push(name.clone());
            let documented = &text[range.clone()];
            if normalize(documented) == normalize(real) {
                continue;
            }
            if bless {
                let mut new = example_values(real.trim_end()).replace("-dirty)", ")");
                new.push('\n');
                text.replace_range(range, &new);
            } else {
                drift.push(format!(
                    "{doc}, sample {name}:\n--- documented (normalized)\n{}\n--- real (normalized)\n{}\n--- real\n{real}",
                    normalize(documented),
                    normalize(real)
                ));
            }
        }
        if bless {
            std::fs::write(&path, text).unwrap();
        }
    }
    let quoted = check_quoted(samples);
    for (name, _) in samples.iter().filter(|(n, _)| !quoted.contains(n)) {
        assert!(used.iter().any(|u| u == name), "sample {name} is in no doc ({DOCS:?})");
    }
    assert!(
        drift.is_empty(),
        "doc samples differ from the real output; update them with `sudo VPNGW_BLESS_DOCS=1 cargo test -p vpngw-tests \
         --test doc_samples` and review the diff:\n\n{}",
        drift.join("\n\n")
    );
}

#[test]
fn doc_samples_are_real_output() {
    let up = std::thread::spawn(up_scenario);
    let mut samples = mismatch_scenario();
    samples.extend(up.join().expect("the up scenario failed"));
    check_or_bless(&samples);
}

#[test]
fn normalizing_keeps_words_and_addresses_and_drops_what_varies() {
    let a = "gateway gw-left (198.51.100.1), vpngw 0.1.0, up 4s\n  child SA 10.1.0.0/24 <=> 10.2.0.0/24 \
             (active): SPIs in c1a5e0d2 out c7f3b2a9, 3des/md5 pfs disable, esp, established 3s ago, in 4 pkts/336 B\n\
             raw ESP to 198.51.100.2: link path on wan0 (next hop 52:54:00:6b:3a:10, mtu 1500)";
    let b = "gateway gw-left (198.51.100.1), vpngw 0.2.0, up 2m\n  child SA 10.1.0.0/24 <=> 10.2.0.0/24 \
             (active): SPIs in 0a0b0c0d out fe001234, 3des/md5 pfs disable, esp, established 1h ago, in 90 pkts/7560 B\n\
             raw ESP to 198.51.100.2: link path on wan0 (next hop 0a:11:22:33:44:55, mtu 9000)";
    assert_eq!(normalize(a), normalize(b));
    for changed in
        [a.replace("esp,", "esp-in-udp,"), a.replace("3des", "aes-256"), a.replace("198.51.100.2", "198.51.100.9")]
    {
        assert_ne!(normalize(a), normalize(&changed), "{changed}");
    }
}

/// `deploy/examples/vpngw.toml` passes `vpngw check`, once the key files its header names exist
/// with mode 0600 (it holds no key itself, so it may stay world-readable).
#[test]
fn the_example_configuration_passes_check() {
    let dir = std::env::temp_dir().join(format!("vpngw-doc-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(root().join("deploy/examples/vpngw.toml")).unwrap();
    let config = dir.join("vpngw.toml");
    std::fs::write(&config, &example).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let check = || Command::new(binary()).args(["check", "--config", &config.display().to_string()]).output().unwrap();
    // Without its key files it is refused, naming them.
    let refused = check();
    assert!(!refused.status.success(), "accepted without key files: {}", stdout(&refused));
    for key in ["branch-1.psk", "branch-2.psk"] {
        assert!(example.contains(&format!("\"{key}\"")), "the example no longer names {key}");
        let path = dir.join(key);
        std::fs::write(&path, "example-key-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let out = check();
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vpngw check refused deploy/examples/vpngw.toml:\n{all}");
    assert!(all.contains("OK (2 connection(s)"), "{all}");
    assert!(!all.contains("error:"), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}
