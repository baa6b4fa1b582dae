//! An off-path attacker: ISAKMP (IKEv1) datagrams built by hand, independently of vpngw-ike's
//! codec, and sent from another host's address with a raw socket (`tools/spoof.py`, IP_HDRINCL:
//! any source address and port, no reply needed). For the spoofing tests and the flood
//! benchmarks.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};

/// Payload types (RFC 2408 s.3.1).
pub const SA: u8 = 1;
pub const KE: u8 = 4;
pub const ID: u8 = 5;
pub const NONCE: u8 = 10;
pub const NOTIFY: u8 = 11;
pub const DELETE: u8 = 12;
/// Exchange types.
pub const MAIN: u8 = 2;
pub const AGGRESSIVE: u8 = 4;
pub const INFORMATIONAL: u8 = 5;
/// Protocol IDs.
pub const PROTO_ISAKMP: u8 = 1;
pub const PROTO_ESP: u8 = 3;
/// Notify types (RFC 2408 s.3.14.1, RFC 2407 s.4.6.3).
pub const INVALID_COOKIE: u16 = 4;
pub const INVALID_SPI: u16 = 11;
pub const NO_PROPOSAL_CHOSEN: u16 = 14;
pub const PAYLOAD_MALFORMED: u16 = 16;
pub const INITIAL_CONTACT: u16 = 24578;
/// IKEv1 (major 1, minor 0).
pub const V1: u8 = 0x10;
pub const FLAG_ENCRYPTED: u8 = 1;

/// `n` random bytes (the kernel's).
pub fn random(n: usize) -> Vec<u8> {
    let mut f = std::fs::File::open("/dev/urandom").unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    let mut b = vec![0; n];
    std::io::Read::read_exact(&mut f, &mut b).unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    b
}

/// A random initiator cookie (never zero).
pub fn cookie() -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&random(8));
    c[0] |= 1;
    c
}

/// The 28-byte header; the length field is the header's and `body`'s.
pub fn header(cky_i: [u8; 8], cky_r: [u8; 8], first: u8, version: u8, exchange: u8, flags: u8, id: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(&cky_i);
    h.extend_from_slice(&cky_r);
    h.extend_from_slice(&[first, version, exchange, flags]);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&28u32.to_be_bytes());
    h
}

/// A message: header plus payloads `(type, body)` chained in order, lengths right.
pub fn message(
    cky_i: [u8; 8],
    cky_r: [u8; 8],
    exchange: u8,
    flags: u8,
    id: u32,
    payloads: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let first = payloads.first().map_or(0, |p| p.0);
    let mut m = header(cky_i, cky_r, first, V1, exchange, flags, id);
    for (i, (_, body)) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(0, |p| p.0);
        m.extend_from_slice(&[next, 0]);
        m.extend_from_slice(&u16::try_from(body.len() + 4).unwrap_or(u16::MAX).to_be_bytes());
        m.extend_from_slice(body);
    }
    set_length(&mut m);
    m
}

/// Writes the message's true length into its header.
pub fn set_length(m: &mut [u8]) {
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
    m[24..28].copy_from_slice(&len.to_be_bytes());
}

/// A phase-1 SA payload's body: one proposal with one transform that the lab's
/// configuration accepts (aes-128, sha1, pre-shared key, DH group 14, 8 hours).
pub fn phase1_sa() -> Vec<u8> {
    let attr = |t: u16, v: u16| {
        let mut a = (0x8000 | t).to_be_bytes().to_vec();
        a.extend_from_slice(&v.to_be_bytes());
        a
    };
    // encryption aes-cbc, key length 128, hash sha1, auth PSK, group 14, life type seconds, 28800 s
    let attrs: Vec<u8> = [(1, 7), (14, 128), (2, 2), (3, 1), (4, 14), (11, 1), (12, 28800)]
        .iter()
        .flat_map(|&(t, v)| attr(t, v))
        .collect();
    let mut transform = vec![0, 0, 0, 0, 1, 1, 0, 0]; // last, transform 1, KEY_IKE
    transform.extend_from_slice(&attrs);
    let tlen = u16::try_from(transform.len()).unwrap_or(0).to_be_bytes();
    transform[2..4].copy_from_slice(&tlen);
    let mut proposal = vec![0, 0, 0, 0, 1, PROTO_ISAKMP, 0, 1]; // last, #1, ISAKMP, no SPI, 1 transform
    proposal.extend_from_slice(&transform);
    let plen = u16::try_from(proposal.len()).unwrap_or(0).to_be_bytes();
    proposal[2..4].copy_from_slice(&plen);
    let mut sa = vec![0, 0, 0, 1, 0, 0, 0, 1]; // DOI IPsec, situation identity only
    sa.extend_from_slice(&proposal);
    sa
}

/// A main-mode first message: this initiator cookie, responder cookie zero.
pub fn main_mode_first(cky_i: [u8; 8]) -> Vec<u8> {
    message(cky_i, [0; 8], MAIN, 0, 0, &[(SA, phase1_sa())])
}

/// An aggressive-mode first message (SA, KE for group 14, nonce, ID of `id_addr`): a responder
/// that accepts it computes a Diffie-Hellman key pair and answers.
pub fn aggressive_first(cky_i: [u8; 8], id_addr: std::net::Ipv4Addr) -> Vec<u8> {
    let mut ke = random(256);
    ke[0] = (ke[0] & 0x7f) | 0x40; // within (1, p-1)
    let mut id = vec![1, 17, 1, 244]; // ID_IPV4_ADDR, UDP, port 500
    id.extend_from_slice(&id_addr.octets());
    message(cky_i, [0; 8], AGGRESSIVE, 0, 0, &[(SA, phase1_sa()), (KE, ke), (NONCE, random(32)), (ID, id)])
}

/// A notify payload's body.
pub fn notify(protocol: u8, spi: &[u8], kind: u16, data: &[u8]) -> Vec<u8> {
    let mut n = 1u32.to_be_bytes().to_vec();
    n.push(protocol);
    n.push(u8::try_from(spi.len()).unwrap_or(0));
    n.extend_from_slice(&kind.to_be_bytes());
    n.extend_from_slice(spi);
    n.extend_from_slice(data);
    n
}

/// A delete payload's body: `count` SPIs of `spi_size` bytes claimed, `spis` carried.
pub fn delete(protocol: u8, spi_size: u8, count: u16, spis: &[u8]) -> Vec<u8> {
    let mut d = 1u32.to_be_bytes().to_vec();
    d.push(protocol);
    d.push(spi_size);
    d.extend_from_slice(&count.to_be_bytes());
    d.extend_from_slice(spis);
    d
}

/// A cleartext informational (message ID random) with these cookies and payloads.
pub fn informational(cky_i: [u8; 8], cky_r: [u8; 8], payloads: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let id = u32::from_be_bytes(random(4).try_into().unwrap_or([1; 4])) | 1;
    message(cky_i, cky_r, INFORMATIONAL, 0, id, payloads)
}

/// The Delete-payload amplification: a main-mode first message carrying `n` Delete payloads
/// with SPI size 0, each claiming 65,535 SPIs (16 bytes of wire each).
pub fn delete_amplification(cky_i: [u8; 8], n: usize) -> Vec<u8> {
    let payloads: Vec<(u8, Vec<u8>)> = (0..n).map(|_| (DELETE, delete(PROTO_ISAKMP, 0, u16::MAX, &[]))).collect();
    message(cky_i, [0; 8], MAIN, 0, 0, &payloads)
}

/// The 4-byte non-ESP marker in front of IKE on UDP 4500 (RFC 3948).
pub fn with_marker(m: &[u8]) -> Vec<u8> {
    let mut v = vec![0; 4];
    v.extend_from_slice(m);
    v
}

/// Cookies as `vpngw status` prints them (hex) to bytes.
pub fn cookie_from_hex(s: &str) -> [u8; 8] {
    let mut c = [0u8; 8];
    for (i, b) in c.iter_mut().enumerate() {
        *b = s.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    c
}

/// One job of the sender: `count` copies of `payload` to `dport` from `sport`, `pps` a second
/// (0: at once), each with a fresh initiator cookie when `fresh`.
#[derive(Clone, Debug)]
pub struct Job {
    pub sport: u16,
    pub dport: u16,
    pub count: u32,
    pub pps: u32,
    pub fresh: bool,
    pub payload: Vec<u8>,
}

impl Job {
    /// One datagram, now; on UDP 4500 the caller adds the marker.
    pub fn once(sport: u16, dport: u16, payload: Vec<u8>) -> Self {
        Self { sport, dport, count: 1, pps: 0, fresh: false, payload }
    }

    fn line(&self) -> String {
        let hex: String = self.payload.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {} {} {hex}\n", self.sport, self.dport, self.count, self.pps, u8::from(self.fresh))
    }
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/spoof.py").to_string()
}

/// Starts the sender in namespace `ns` with these jobs; `wait_sent` collects it.
pub fn start(ns: &str, src: &str, dst: &str, jobs: &[Job]) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", &script(), src, dst])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spoof.py: {e}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("spoof.py: no stdin"));
    let text: String = jobs.iter().map(Job::line).collect();
    stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("spoof.py: {e}"));
    drop(stdin);
    child
}

/// Waits for a sender; returns how many datagrams it sent (panics if it failed).
pub fn wait_sent(child: Child) -> u64 {
    wait_report(child).0
}

/// Waits for a sender; returns how many datagrams it sent and in how many seconds.
pub fn wait_report(child: Child) -> (u64, f64) {
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("spoof.py: {e}"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "spoof.py failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(said.trim()).unwrap_or_else(|e| panic!("spoof.py said {said:?}: {e}"));
    assert_eq!(v["errors"], 0, "spoof.py: send errors: {said}");
    (v["sent"].as_u64().unwrap_or(0), v["seconds"].as_f64().unwrap_or(0.0))
}

/// Sends these jobs from `src` in `ns` to `dst` and waits until all are sent.
pub fn send(ns: &str, src: &str, dst: &str, jobs: &[Job]) -> u64 {
    wait_sent(start(ns, src, dst, jobs))
}
