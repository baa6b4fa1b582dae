//! vpngw's ESP packets checked by implementations no one here wrote:
//! - Python's `cryptography` (OpenSSL) verifies every ICV, decrypts, checks padding, next
//!   header and sequence numbers, and compares each inner packet byte for byte;
//! - `tcpdump -E` decrypts the same capture (it does not check ICVs) and must show each inner
//!   DNS query by name, for raw ESP (IP protocol 50) and ESP-in-UDP (port 4500, RFC 3948).
//!
//! Every cipher x integrity suite, IPv4 and IPv6 inner packets, lengths spanning every padding.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use vpngw_crypto::{EncryptionAlgorithm, FastRng, IntegrityAlgorithm, SecretBytes};
use vpngw_esp::{NextHeader, OutboundSa, SaKeys, Spi};
use vpngw_tests::packet::{PROTO_ESP, PROTO_UDP, dns_query, ipv4, ipv6, udp, udp6};
use vpngw_tests::pcap::PcapWriter;
use vpngw_tests::tool;

const GW_LEFT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GW_RIGHT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_LEFT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const HOST_RIGHT: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const PACKETS_PER_SA: usize = 18;

struct Capture {
    dir: PathBuf,
    /// The inner DNS query name of every packet, in capture order.
    names: Vec<String>,
}

fn tcpdump_name(e: EncryptionAlgorithm) -> &'static str {
    match e {
        EncryptionAlgorithm::Des => "des-cbc",
        EncryptionAlgorithm::TripleDes => "3des-cbc",
        EncryptionAlgorithm::Aes128 => "aes128-cbc",
        EncryptionAlgorithm::Aes192 => "aes192-cbc",
        EncryptionAlgorithm::Aes256 => "aes256-cbc",
    }
}

/// Seals DNS queries with every suite into one capture, with the SA file for Python and the
/// secrets file for tcpdump.
fn build_capture(tag: &str) -> Capture {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("esp_independent_{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut os_rng = FastRng::from_os().unwrap();
    let mut pcap = PcapWriter::new(std::fs::File::create(dir.join("esp.pcap")).unwrap()).unwrap();
    let mut sa_file = serde_json::Map::new();
    let mut secrets = String::new();
    let mut names = Vec::new();
    let mut suite_index = 0u32;
    for e in EncryptionAlgorithm::ALL {
        for i in IntegrityAlgorithm::ALL {
            suite_index += 1;
            let spi = 0x5ec0_0000 + suite_index;
            let mut ek = vec![0u8; e.spec().key_len];
            let mut ik = vec![0u8; i.spec().key_len];
            vpngw_crypto::rand_core::Rng::fill_bytes(&mut os_rng, &mut ek);
            vpngw_crypto::rand_core::Rng::fill_bytes(&mut os_rng, &mut ik);
            let keys = SaKeys {
                encryption: e,
                encryption_key: SecretBytes::from_slice(&ek),
                integrity: i,
                integrity_key: SecretBytes::from_slice(&ik),
            };
            let out = OutboundSa::new(Spi::new(spi), &keys).unwrap();
            let udp_encap = suite_index % 2 == 0;
            let mut expected = Vec::new();
            for n in 0..PACKETS_PER_SA {
                // Label lengths 1..=18 move the inner length through every padding length.
                let name = format!("s{suite_index}p{n}{}.{}.vpngw.test", "x".repeat(n), e.name());
                let dns = dns_query(0x4000 + n as u16, &name);
                let inner = if n % 3 == 2 {
                    let (src, dst) = (
                        [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                        [0xfd, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                    );
                    ipv6(src, dst, PROTO_UDP, &udp6(src, dst, 5353, 53, &dns))
                } else {
                    ipv4(HOST_LEFT, HOST_RIGHT, PROTO_UDP, n as u16, &udp(5353, 53, &dns))
                };
                let nh = NextHeader::for_inner_packet(&inner).unwrap();
                let mut buf = vec![0u8; 2048];
                let sealed = out.seal(&mut os_rng, &inner, nh, &mut buf).unwrap();
                let esp = &buf[sealed.range];
                let outer = if udp_encap {
                    ipv4(GW_LEFT, GW_RIGHT, PROTO_UDP, 1, &udp(4500, 4500, esp))
                } else {
                    ipv4(GW_LEFT, GW_RIGHT, PROTO_ESP, 1, esp)
                };
                pcap.write_packet(&outer).unwrap();
                expected.push(hex::encode(&inner));
                names.push(name);
            }
            sa_file.insert(
                format!("{spi:08x}"),
                json!({
                    "encryption": e.name(),
                    "encryption_key": hex::encode(&ek),
                    "integrity": i.name(),
                    "integrity_key": hex::encode(&ik),
                    "expected_inner": expected,
                }),
            );
            writeln!(secrets, "0x{spi:08x}@{GW_RIGHT} {}-hmac96:0x{}", tcpdump_name(e), hex::encode(&ek)).unwrap();
        }
    }
    pcap.finish().unwrap();
    std::fs::write(dir.join("sas.json"), serde_json::to_vec_pretty(&sa_file).unwrap()).unwrap();
    std::fs::write(dir.join("secrets"), secrets).unwrap();
    // Single DES lives in OpenSSL 3's legacy provider.
    std::fs::write(
        dir.join("openssl-legacy.cnf"),
        "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n[provider_sect]\n\
         default = default_sect\nlegacy = legacy_sect\n[default_sect]\nactivate = 1\n[legacy_sect]\nactivate = 1\n",
    )
    .unwrap();
    Capture { dir, names }
}

#[test]
fn python_cryptography_verifies_and_decrypts_every_packet() {
    let cap = build_capture("python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/esp_check.py");
    let out = Command::new(tool::python())
        .arg(script)
        .arg(cap.dir.join("esp.pcap"))
        .arg(cap.dir.join("sas.json"))
        .output()
        .expect("run python3 (apt-get install python3-cryptography)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "esp_check.py: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["sas"], 10);
    assert_eq!(v["packets"], 10 * PACKETS_PER_SA as u64);
}

#[test]
fn tcpdump_decrypts_every_packet() {
    let tcpdump = tool::require("tcpdump", "apt-get install tcpdump");
    let cap = build_capture("tcpdump");
    let out = tool::run(
        Command::new(tcpdump)
            .env("OPENSSL_CONF", cap.dir.join("openssl-legacy.cnf"))
            .arg("-n")
            .arg("-vv")
            .arg("-r")
            .arg(cap.dir.join("esp.pcap"))
            .arg("-E")
            .arg(format!("file {}", cap.dir.join("secrets").display())),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut missing = Vec::new();
    for name in &cap.names {
        // tcpdump prints the decrypted inner DNS query as "A? <name>."
        if !text.contains(&format!("A? {name}.")) {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "tcpdump did not decrypt {} of {} packets, e.g. {:?}\n--- tcpdump output (head) ---\n{}",
        missing.len(),
        cap.names.len(),
        &missing[..missing.len().min(5)],
        text.lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(text.contains("UDP-encap"), "no ESP-in-UDP seen by tcpdump");
}
