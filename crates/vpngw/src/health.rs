//! Tunnel quality probes, like the cloud gateway's health check (NQA): ICMP echo through the
//! tunnel every 1-5 s from an address of this gateway inside the local subnets to a host
//! inside the remote subnets; round-trip time, jitter, loss; unhealthy after 3-8 consecutive
//! losses.
//!
//! [`Prober`] is the sans-IO part (what to send, what a reply or a timeout means); [`spawn`]
//! drives it on a thread with a raw ICMP socket bound to the local address. The kernel routes the echo
//! into the TUN like any other packet for the remote subnet, so it travels exactly the path
//! user traffic takes (SPD, SA, ESP) and its reply comes back through the tunnel. [`Probes`]
//! keeps one prober per configured health check.

use std::collections::{HashMap, VecDeque};
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::{Connection, HealthCheck};

/// Probes the loss ratio is computed over.
const WINDOW: usize = 20;

/// What `vpngw status` and the metrics show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthStatus {
    pub local_address: String,
    pub remote_address: String,
    /// None until the first probe is answered or lost for good.
    pub healthy: Option<bool>,
    /// The last answered probe's round trip.
    pub rtt_ms: Option<f64>,
    /// Smoothed variation of the round trip (RFC 3550 style: 1/16 of each change).
    pub jitter_ms: Option<f64>,
    /// Lost probes among the last 20.
    pub loss_ratio: f64,
    pub probes_sent: u64,
    pub probes_answered: u64,
    pub probes_lost: u64,
    /// Why probing is not possible (e.g. the local address is not on this gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unhealthy,
    Healthy,
}

#[derive(Debug)]
pub struct Prober {
    check: HealthCheck,
    pub id: u16,
    next_seq: u16,
    outstanding: VecDeque<(u16, Instant)>,
    window: VecDeque<bool>,
    consecutive_losses: u32,
    rtt: Option<Duration>,
    jitter: Option<f64>,
    status: HealthStatus,
}

impl Prober {
    pub fn new(check: HealthCheck, id: u16) -> Self {
        let status = HealthStatus {
            local_address: check.local_address.to_string(),
            remote_address: check.remote_address.to_string(),
            ..HealthStatus::default()
        };
        Self {
            check,
            id,
            next_seq: 0,
            outstanding: VecDeque::new(),
            window: VecDeque::new(),
            consecutive_losses: 0,
            rtt: None,
            jitter: None,
            status,
        }
    }

    /// A reply later than this is a loss (the next probe is due anyway).
    fn timeout(&self) -> Duration {
        self.check.interval.max(Duration::from_secs(1))
    }

    /// The next echo request to send now (ICMP message, without IP header).
    pub fn probe(&mut self, now: Instant) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.outstanding.push_back((seq, now));
        self.status.probes_sent += 1;
        echo_request(self.id, seq)
    }

    /// Probes unanswered for too long count as lost.
    pub fn expire(&mut self, now: Instant) -> Option<Transition> {
        let mut change = None;
        while let Some(&(_, sent)) = self.outstanding.front() {
            if now.saturating_duration_since(sent) < self.timeout() {
                break;
            }
            self.outstanding.pop_front();
            change = self.record(false).or(change);
        }
        change
    }

    /// An echo reply with our identifier and this sequence number arrived.
    pub fn reply(&mut self, now: Instant, seq: u16) -> Option<Transition> {
        let i = self.outstanding.iter().position(|(s, _)| *s == seq)?;
        let (_, sent) = self.outstanding.remove(i)?;
        let rtt = now.saturating_duration_since(sent);
        if let Some(prev) = self.rtt {
            let d = (rtt.as_secs_f64() - prev.as_secs_f64()).abs();
            let j = self.jitter.unwrap_or(0.0);
            self.jitter = Some(j + (d - j) / 16.0);
        }
        self.rtt = Some(rtt);
        self.record(true)
    }

    fn record(&mut self, answered: bool) -> Option<Transition> {
        self.window.push_back(answered);
        while self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if answered {
            self.status.probes_answered += 1;
            self.consecutive_losses = 0;
        } else {
            self.status.probes_lost += 1;
            self.consecutive_losses += 1;
        }
        let was = self.status.healthy;
        let now_healthy = if answered {
            Some(true)
        } else if self.consecutive_losses >= self.check.unhealthy_after {
            Some(false)
        } else {
            was
        };
        self.status.healthy = now_healthy;
        match (was, now_healthy) {
            (Some(true) | None, Some(false)) => Some(Transition::Unhealthy),
            (Some(false), Some(true)) => Some(Transition::Healthy),
            _ => None,
        }
    }

    pub fn status(&self) -> HealthStatus {
        let lost = self.window.iter().filter(|a| !**a).count();
        HealthStatus {
            rtt_ms: self.rtt.map(|r| r.as_secs_f64() * 1000.0),
            jitter_ms: self.jitter.map(|j| j * 1000.0),
            loss_ratio: if self.window.is_empty() { 0.0 } else { lost as f64 / self.window.len() as f64 },
            ..self.status.clone()
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// ICMP echo request: type 8, our identifier and sequence, 16 bytes of payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"vpngw-healthchk!");
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// From a raw ICMP socket's datagram (IP header included): the sequence number if it is an
/// echo reply from `from` with identifier `id`.
pub fn echo_reply(datagram: &[u8], from: Ipv4Addr, id: u16) -> Option<u16> {
    let ihl = usize::from(*datagram.first()? & 0x0f) * 4;
    if datagram.len() < ihl + 8
        || datagram[9] != 1
        || Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]) != from
    {
        return None;
    }
    let icmp = &datagram[ihl..];
    (icmp[0] == 0 && icmp[1] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn open(check: &HealthCheck) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.bind(&SocketAddrV4::new(check.local_address, 0).into())?;
    Ok(s)
}

/// A running prober: its thread stops (within one interval) when this is dropped.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    pub status: watch::Receiver<HealthStatus>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The probers the configuration asks for, by connection.
#[derive(Default)]
pub struct Probes {
    running: HashMap<String, Probe>,
}

struct Probe {
    check: HealthCheck,
    /// Stops the prober when dropped.
    running: Running,
}

impl Probes {
    /// Starts, restarts or stops probers to match the configured connections' health checks.
    pub fn sync(&mut self, connections: &[Connection]) {
        let wanted: HashMap<String, HealthCheck> =
            connections.iter().filter_map(|c| c.health_check.clone().map(|h| (c.peer.name.clone(), h))).collect();
        self.running.retain(|name, p| wanted.get(name) == Some(&p.check));
        for (name, check) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            // ICMP identifiers tell our probers' replies apart (raw sockets see them all).
            let id = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (std::process::id(), &name).hash(&mut h);
                h.finish() as u16
            };
            match spawn(name.clone(), check.clone(), id) {
                Ok(running) => {
                    self.running.insert(name, Probe { check, running });
                }
                Err(e) => tracing::error!(connection = %name, error = %e, "cannot start the health check"),
            }
        }
    }

    /// The probers' statuses as they change, to read off the daemon's loop.
    pub fn view(&self) -> ProbeView {
        ProbeView(self.running.iter().map(|(name, p)| (name.clone(), p.running.status.clone())).collect())
    }

    /// Stops every prober.
    pub fn stop(&mut self) {
        self.running.clear();
    }
}

/// The probers' statuses, by connection: each follows its prober live (a `watch` receiver),
/// so a published snapshot of the daemon's state still shows the latest probe results.
#[derive(Clone, Debug, Default)]
pub struct ProbeView(HashMap<String, watch::Receiver<HealthStatus>>);

impl ProbeView {
    /// The connection's probe status, when it has a health check.
    pub fn status(&self, name: &str) -> Option<HealthStatus> {
        self.0.get(name).map(|r| r.borrow().clone())
    }
}

/// Starts probing on a thread of its own (a blocking raw socket: probes are rare, and the
/// daemon crate keeps no `unsafe` for async raw sockets). Publishes the status after every
/// event.
pub fn spawn(connection: String, check: HealthCheck, id: u16) -> std::io::Result<Running> {
    let mut prober = Prober::new(check.clone(), id);
    let (tx, rx) = watch::channel(prober.status());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new().name(format!("vpngw-health-{connection}")).spawn(move || {
        let socket = loop {
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            match open(&check) {
                Ok(s) => break s,
                Err(e) => {
                    let error = format!(
                        "cannot send probes from {}: {e} (health_check.local_address must be an address of this gateway)",
                        check.local_address
                    );
                    tracing::error!(connection = %connection, "{error}");
                    let _ = tx.send(HealthStatus { error: Some(error), ..prober.status() });
                    std::thread::sleep(Duration::from_secs(5));
                }
            }
        };
        let to = SocketAddrV4::new(check.remote_address, 0).into();
        let mut buf = [0u8; 1500];
        let mut next = Instant::now();
        while !stopped.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut change = None;
            if now >= next {
                change = prober.expire(now);
                if let Err(e) = socket.send_to(&prober.probe(now), &to) {
                    tracing::debug!(connection = %connection, error = %e, "health probe not sent");
                }
                next = now + check.interval;
            } else {
                let wait = next.saturating_duration_since(now).max(Duration::from_millis(1));
                let _ = socket.set_read_timeout(Some(wait));
                if let Ok(n) = (&socket).read(&mut buf)
                    && let Some(seq) = echo_reply(&buf[..n], check.remote_address, prober.id)
                {
                    change = prober.reply(Instant::now(), seq);
                }
            }
            let status = prober.status();
            match change {
                Some(Transition::Unhealthy) => tracing::warn!(
                    connection = %connection,
                    remote = %check.remote_address,
                    losses = check.unhealthy_after,
                    loss_ratio = status.loss_ratio,
                    "tunnel unhealthy: health probes lost"
                ),
                Some(Transition::Healthy) => tracing::info!(
                    connection = %connection,
                    remote = %check.remote_address,
                    rtt_ms = status.rtt_ms.unwrap_or_default(),
                    "tunnel healthy: health probes answered"
                ),
                None => {}
            }
            tx.send_if_modified(|s| {
                let modified = *s != status;
                *s = status;
                modified
            });
        }
    })?;
    Ok(Running { stop, status: rx })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(after: u32) -> HealthCheck {
        HealthCheck {
            local_address: Ipv4Addr::new(10, 1, 0, 1),
            remote_address: Ipv4Addr::new(10, 2, 0, 10),
            interval: Duration::from_secs(1),
            unhealthy_after: after,
        }
    }

    #[test]
    fn echo_request_checksum_verifies() {
        let m = echo_request(0x1234, 7);
        assert_eq!(checksum(&m), 0, "a correct checksum sums to zero");
        assert_eq!(&m[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_are_matched_by_source_and_identifier() {
        let mut d = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 2, 0, 10, 10, 1, 0, 1];
        d.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 9]);
        assert_eq!(echo_reply(&d, Ipv4Addr::new(10, 2, 0, 10), 0x1234), Some(9));
        assert_eq!(echo_reply(&d, Ipv4Addr::new(10, 2, 0, 11), 0x1234), None, "other source");
        assert_eq!(echo_reply(&d, Ipv4Addr::new(10, 2, 0, 10), 0x1235), None, "other prober");
        d[20] = 8;
        assert_eq!(echo_reply(&d, Ipv4Addr::new(10, 2, 0, 10), 0x1234), None, "a request, not a reply");
        assert_eq!(echo_reply(&d[..25], Ipv4Addr::new(10, 2, 0, 10), 0x1234), None, "truncated");
    }

    #[test]
    fn unhealthy_after_n_consecutive_losses_and_back_on_the_first_answer() {
        let mut p = Prober::new(check(3), 1);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        p.probe(s(0));
        assert_eq!(p.reply(s(0) + Duration::from_millis(20), 0), None, "unknown -> healthy is not a transition to log");
        assert_eq!(p.status().healthy, Some(true));
        p.probe(s(1));
        assert_eq!(p.reply(s(1) + Duration::from_millis(30), 1), None);
        // RTTs 20 ms then 30 ms: jitter moves 1/16 of the 10 ms change.
        let st = p.status();
        assert!((st.rtt_ms.unwrap() - 30.0).abs() < 0.5 && (st.jitter_ms.unwrap() - 0.625).abs() < 0.05, "{st:?}");
        // Three probes lost: unhealthy at the third, logged once.
        let mut changes = Vec::new();
        for n in 2..6 {
            changes.push(p.expire(s(n)));
            p.probe(s(n));
        }
        assert_eq!(changes, vec![None, None, None, Some(Transition::Unhealthy)]);
        assert_eq!(p.status().healthy, Some(false));
        assert!((p.status().loss_ratio - 3.0 / 5.0).abs() < 1e-9, "{:?}", p.status());
        // A late reply to an expired probe does not count; a fresh one does.
        assert_eq!(p.reply(s(6), 2), None);
        assert_eq!(p.reply(s(5) + Duration::from_millis(25), 5), Some(Transition::Healthy));
        assert_eq!((p.status().probes_sent, p.status().probes_answered, p.status().probes_lost), (6, 3, 3));
    }
}
