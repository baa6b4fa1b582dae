//! Traffic between the lab's hosts through the tunnel, checked end to end, and captures of the
//! outer link.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::netns::{Lab, wait_for};

pub const LEFT_HOST: &str = "10.1.0.10";
pub const RIGHT_HOST: &str = "10.2.0.10";
/// The marker `traffic.py` puts in its payloads.
pub const MARKER: &[u8] = b"VPNGW-PLAINTEXT-MARKER-7f3a";

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/traffic.py").to_string()
}

/// `count` pings from `ns` to `dst`; returns how many were answered.
pub fn ping(lab: &Lab, ns: &str, dst: &str, count: u32) -> u32 {
    let out = lab.exec(ns, "ping", &["-c", &count.to_string(), "-i", "0.2", "-W", "2", "-p", "766f6e6770696e67", dst]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" received")).and_then(|n| n.trim().parse().ok()))
        .unwrap_or(0)
}

/// Waits until a ping from `ns` to `dst` gets through (tunnels come up asynchronously).
pub fn wait_ping(lab: &Lab, ns: &str, dst: &str, timeout: Duration) -> bool {
    wait_for(timeout, || (ping(lab, ns, dst, 1) == 1).then_some(())).is_some()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("traffic.py said: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Sends `bytes` over TCP from the left host to the right host; returns (sent, received)
/// reports, each `{bytes, sha256}`.
pub fn tcp_transfer(lab: &Lab, bytes: usize) -> (Value, Value) {
    let log = lab.dir.join("tcp-server.out");
    let server = lab.spawn(&lab.right_host, "python3", &[&script(), "tcp-server", RIGHT_HOST, "5001"], &[], &log);
    std::thread::sleep(Duration::from_millis(300));
    let client =
        lab.exec(&lab.left_host, "python3", &[&script(), "tcp-client", RIGHT_HOST, "5001", &bytes.to_string()]);
    let sent = json(&client);
    let received = wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        serde_json::from_str::<Value>(text.trim()).ok()
    })
    .unwrap_or(Value::Null);
    lab.stop(server, Duration::from_secs(2));
    (sent, received)
}

/// Sends `count` numbered UDP datagrams from the right host to the left host; returns how many
/// distinct ones arrived intact.
pub fn udp_transfer(lab: &Lab, count: u32) -> u64 {
    let log = lab.dir.join("udp-server.out");
    let server = lab.spawn(&lab.left_host, "python3", &[&script(), "udp-server", LEFT_HOST, "5002", "4"], &[], &log);
    std::thread::sleep(Duration::from_millis(300));
    let _ = lab.exec(&lab.right_host, "python3", &[&script(), "udp-client", LEFT_HOST, "5002", &count.to_string()]);
    let received = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        serde_json::from_str::<Value>(text.trim()).ok()
    });
    lab.stop(server, Duration::from_secs(2));
    received.and_then(|v| v["received"].as_u64()).unwrap_or(0)
}

/// Sum of the original lengths of a classic pcap file's records (either byte order).
fn pcap_wire_bytes(pcap: &[u8]) -> u64 {
    let Some(magic) = pcap.get(..4) else { return 0 };
    let big_endian = magic == [0xa1, 0xb2, 0xc3, 0xd4] || magic == [0xa1, 0xb2, 0x3c, 0x4d];
    let word = |b: &[u8]| {
        let w = [b[0], b[1], b[2], b[3]];
        u64::from(if big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) })
    };
    let (mut at, mut total) = (24, 0);
    while let Some(record) = pcap.get(at..at + 16) {
        total += word(&record[12..16]);
        at += 16 + usize::try_from(word(&record[8..12])).unwrap_or(usize::MAX / 2);
    }
    total
}

/// Pings and a paced TCP stream running in the background between the hosts, for checks that
/// something (a rekey, a reauthentication) happens without loss.
#[derive(Debug)]
pub struct Background {
    ping: u32,
    ping_log: PathBuf,
    server: u32,
    server_log: PathBuf,
    client: u32,
    client_log: PathBuf,
}

/// What the background traffic saw.
#[derive(Debug)]
pub struct BackgroundReport {
    pub pings_sent: u64,
    pub pings_received: u64,
    /// Echo replies that came more than once (ping's "+N duplicates").
    pub pings_duplicated: u64,
    pub stream_sent: Value,
    pub stream_received: Value,
}

impl BackgroundReport {
    /// The longest wait between two arrivals of the TCP stream, in seconds.
    pub fn max_gap(&self) -> f64 {
        self.stream_received["max_gap"].as_f64().unwrap_or(f64::INFINITY)
    }

    /// Pings lost, the stream intact, the longest stall: a one-line summary for assertions.
    pub fn summary(&self) -> String {
        format!(
            "pings {}/{} answered; stream sent {} B, received {} B, longest gap {:.3} s",
            self.pings_received,
            self.pings_sent,
            self.stream_sent["bytes"],
            self.stream_received["bytes"],
            self.max_gap()
        )
    }
}

impl Background {
    /// `seconds` of pings every 10 ms from the left host to the right host, and a TCP stream
    /// of `kbps` KiB/s from the left host to the right host.
    pub fn start(lab: &Lab, seconds: u32, kbps: u32) -> Self {
        let server_log = lab.dir.join("stream-server.out");
        let server =
            lab.spawn(&lab.right_host, "python3", &[&script(), "stream-server", RIGHT_HOST, "5003"], &[], &server_log);
        std::thread::sleep(Duration::from_millis(300));
        let client_log = lab.dir.join("stream-client.out");
        let client = lab.spawn(
            &lab.left_host,
            "python3",
            &[&script(), "stream-client", RIGHT_HOST, "5003", &seconds.to_string(), &kbps.to_string()],
            &[],
            &client_log,
        );
        let ping_log = lab.dir.join("ping-flood.out");
        let count = (seconds * 100).to_string();
        let ping = lab.spawn(
            &lab.left_host,
            "ping",
            &["-q", "-c", &count, "-i", "0.01", "-W", "2", RIGHT_HOST],
            &[],
            &ping_log,
        );
        Self { ping, ping_log, server, server_log, client, client_log }
    }

    /// Waits for both to finish (up to `timeout`) and reads their reports.
    pub fn finish(self, lab: &Lab, timeout: Duration) -> BackgroundReport {
        let read_json = |p: &Path| {
            let text = std::fs::read_to_string(p).ok()?;
            serde_json::from_str::<Value>(text.trim()).ok()
        };
        let stream_received = wait_for(timeout, || read_json(&self.server_log)).unwrap_or(Value::Null);
        let stream_sent = wait_for(Duration::from_secs(5), || read_json(&self.client_log)).unwrap_or(Value::Null);
        // ping's 10 ms interval runs a little long on a busy machine: give it time to finish.
        let stats = wait_for(Duration::from_secs(90), || {
            let text = std::fs::read_to_string(&self.ping_log).ok()?;
            let line = text.lines().find(|l| l.contains("packets transmitted"))?.to_string();
            let mut parts = line.split(", ");
            let sent = parts.next()?.split(' ').next()?.parse::<u64>().ok()?;
            let received = parts.next()?.split(' ').next()?.parse::<u64>().ok()?;
            let duplicated = parts
                .find_map(|p| p.strip_prefix('+').and_then(|p| p.strip_suffix(" duplicates")))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            Some((sent, received, duplicated))
        })
        .unwrap_or((0, 0, 0));
        for pid in [self.ping, self.client, self.server] {
            lab.stop(pid, Duration::from_secs(1));
        }
        BackgroundReport {
            pings_sent: stats.0,
            pings_received: stats.1,
            pings_duplicated: stats.2,
            stream_sent,
            stream_received,
        }
    }
}

/// A packet capture running in a namespace.
#[derive(Debug)]
pub struct Capture {
    pub pid: u32,
    pub file: PathBuf,
    log: PathBuf,
}

impl Capture {
    pub fn start(lab: &Lab, ns: &str, iface: &str, name: &str) -> Self {
        let file = lab.dir.join(format!("{name}.pcap"));
        let f = file.display().to_string();
        let pid = lab.spawn(
            ns,
            "tcpdump",
            // A 32 MiB kernel buffer: on two busy cores tcpdump falls behind a TCP burst and the
            // kernel drops what it has not read (immediate mode would wake it per packet).
            &["-i", iface, "-n", "-s", "0", "-B", "32768", "-Z", "root", "-w", &f],
            &[],
            &lab.dir.join(format!("{name}.tcpdump.log")),
        );
        // tcpdump says "listening on" once it captures.
        let log = lab.dir.join(format!("{name}.tcpdump.log"));
        wait_for(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).ok().filter(|t| t.contains("listening on")).map(|_| ())
        });
        Self { pid, file, log }
    }

    /// tcpdump's closing report ("N packets dropped by kernel"), once stopped.
    pub fn report(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("packets"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn stop(&self, lab: &Lab) {
        std::thread::sleep(Duration::from_millis(300));
        lab.stop(self.pid, Duration::from_secs(3));
    }

    /// Outer packets matching a tcpdump filter expression.
    pub fn count(&self, filter: &str) -> usize {
        let out = Command::new("tcpdump")
            .args(["-r", &self.file.display().to_string(), "-n"])
            .arg(filter)
            .output()
            .unwrap_or_else(|e| panic!("tcpdump: {e}"));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Total wire length of the outer packets matching a tcpdump filter. Counting bytes rather
    /// than packets keeps the check meaningful when UDP GSO hands tcpdump one super-packet for
    /// many datagrams (veth passes GSO packets through unsegmented).
    pub fn bytes(&self, filter: &str) -> u64 {
        let out = Command::new("tcpdump")
            .args(["-r", &self.file.display().to_string(), "-w", "-"])
            .arg(filter)
            .output()
            .unwrap_or_else(|e| panic!("tcpdump: {e}"));
        pcap_wire_bytes(&out.stdout)
    }

    /// Whether the raw capture contains `needle` anywhere (e.g. a plaintext marker).
    pub fn contains(&self, needle: &[u8]) -> bool {
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// `tcpdump -E` decryption with a secrets file; returns tcpdump's text.
    pub fn decrypt(&self, secrets: &Path) -> String {
        let conf = secrets.with_extension("openssl.cnf");
        let _ = std::fs::write(
            &conf,
            "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n[provider_sect]\ndefault = default_sect\nlegacy = legacy_sect\n\
             [default_sect]\nactivate = 1\n[legacy_sect]\nactivate = 1\n",
        );
        let out = Command::new("tcpdump")
            .env("OPENSSL_CONF", &conf)
            .args([
                "-Z",
                "root",
                "-r",
                &self.file.display().to_string(),
                "-n",
                "-E",
                &format!("file {}", secrets.display()),
            ])
            .output()
            .unwrap_or_else(|e| panic!("tcpdump: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
