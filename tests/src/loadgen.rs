//! A load generator for vpngw, built on vpngw's own sans-IO IKE engine (strongSwan's
//! load-tester plugin is not in Debian): thousands of initiators, each an [`Endpoint`] with one
//! connection, each from its own address (an AnyIP route, `ip route add local ADDRS dev lo`,
//! makes a whole range local without one `ip addr` per address), each on a UDP socket of its
//! own, completing main mode and quick mode against a real vpngw daemon. Then one ICMP echo
//! through each tunnel, sealed here with the tunnel's keys (`vpngw-esp`) and sent as raw ESP;
//! the answer is opened and checked. The initiators keep running until the hold time ends
//! (answering dead peer detection and rekeys), so a benchmark can watch an idle gateway or a
//! rekey storm.
//!
//! The report: tunnels established, failures by reason, setup latency percentiles (first
//! message to child SA established), the establishment rate, and the ESP echoes answered.
//!
//! Cost on this side: each initiator computes its own Diffie-Hellman (a key pair and the shared
//! secret: two exponentiations per tunnel), as vpngw does; on a shared machine the generator
//! takes about as much CPU as the daemon for DH.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, FastRng, HashAlgorithm, IntegrityAlgorithm, SecretBytes};
use vpngw_esp::{InboundSa, NextHeader, OutboundSa, SaKeys, Spi};
use vpngw_ike::{
    DpdAction, DpdPolicy, Endpoint, EngineConfig, Event, ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy,
    Phase2Policy, SubnetPair,
};

use crate::packet::{PROTO_ESP, checksum, ipv4};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Plan {
    /// vpngw's public address.
    pub gateway: Ipv4Addr,
    /// The first initiator's address; initiator i uses `first + i`.
    pub first_address: Ipv4Addr,
    pub tunnels: u32,
    pub psk: String,
    pub ike_encryption: EncryptionAlgorithm,
    pub ike_hash: HashAlgorithm,
    pub dh_group: DhGroup,
    pub esp_encryption: EncryptionAlgorithm,
    pub esp_integrity: IntegrityAlgorithm,
    /// Initiator i protects `inner_base + i` (a /32).
    pub inner_base: Ipv4Addr,
    /// The subnet behind vpngw each tunnel reaches.
    pub gateway_subnet: Ipv4Subnet,
    /// A host in `gateway_subnet` that answers pings.
    pub echo_target: Ipv4Addr,
    /// Initiations in flight at once (as strongSwan load-tester's `initiators`).
    pub concurrency: usize,
    /// Give up on the establishment phase after this long.
    pub timeout: Duration,
    /// Keep the tunnels (DPD and rekeys answered) this long after the ESP check.
    pub hold: Duration,
    /// Dead peer detection on the initiators (a 30 s timeout: probes after 10 s of silence), as
    /// a customer's gateway would run it.
    pub dpd: bool,
    /// Child SA lifetime the initiators propose (vpngw's own decides its rekeys).
    pub child_lifetime_seconds: u32,
}

impl Plan {
    /// The seed-like default for `tunnels` initiators: aes-128/sha1/dh14, no PFS.
    pub fn new(gateway: Ipv4Addr, tunnels: u32) -> Self {
        Self {
            gateway,
            first_address: Ipv4Addr::new(198, 18, 0, 1),
            tunnels,
            psk: "loadgen-psk-0123456789abcdef".into(),
            ike_encryption: EncryptionAlgorithm::Aes128,
            ike_hash: HashAlgorithm::Sha1,
            dh_group: DhGroup::Modp2048,
            esp_encryption: EncryptionAlgorithm::Aes128,
            esp_integrity: IntegrityAlgorithm::HmacSha1_96,
            inner_base: Ipv4Addr::new(10, 200, 0, 0),
            gateway_subnet: "10.1.0.0/24".parse().unwrap_or_else(|_| unreachable!()),
            echo_target: Ipv4Addr::new(10, 1, 0, 10),
            concurrency: 256,
            timeout: Duration::from_secs(120),
            hold: Duration::ZERO,
            dpd: true,
            child_lifetime_seconds: 3600,
        }
    }

    pub fn address(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first_address) + i)
    }

    pub fn inner(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.inner_base) + i)
    }

    /// The range `ip route add local ... dev lo` must make local for the initiators (a /16
    /// holds 65,534).
    pub fn address_range(&self) -> String {
        let o = self.first_address.octets();
        format!("{}.{}.0.0/16", o[0], o[1])
    }

    /// The range of inner addresses, for vpngw's side to route (it routes each /32 itself).
    pub fn inner_range(&self) -> String {
        let o = self.inner_base.octets();
        format!("{}.{}.0.0/16", o[0], o[1])
    }

    pub fn name(i: u32) -> String {
        format!("lg-{i}")
    }

    /// vpngw's `[[connection]]` tables for these initiators (passive: they initiate), with
    /// `extra` appended to each (e.g. `[connection.dpd]` settings).
    pub fn gateway_connections(&self, extra: &str) -> String {
        let mut out = String::new();
        for i in 0..self.tunnels {
            out.push_str(&format!(
                "[[connection]]\nname = \"{}\"\nremote_address = \"{}\"\npre_shared_key = \"{}\"\n\
                 local_subnets = [\"{}\"]\nremote_subnets = [\"{}/32\"]\nstart = \"passive\"\n\
                 [connection.ike]\nencryption = \"{}\"\nauthentication = \"{}\"\ndh_group = \"{}\"\n\
                 [connection.ipsec]\nencryption = \"{}\"\nauthentication = \"{}\"\n{extra}",
                Self::name(i),
                self.address(i),
                self.psk,
                self.gateway_subnet,
                self.inner(i),
                self.ike_encryption.name(),
                self.ike_hash.name(),
                self.dh_group.name(),
                self.esp_encryption.name(),
                self.esp_integrity.name(),
            ));
        }
        out
    }

    /// The gateway's side of tunnel i as an engine configuration (what
    /// [`Plan::gateway_connections`] configures vpngw with), for an in-memory ceiling.
    pub fn gateway_peer(&self, i: u32) -> PeerConfig {
        let mut p = self.peer(i);
        std::mem::swap(&mut p.local_address, &mut p.remote_address);
        std::mem::swap(&mut p.local_id, &mut p.remote_id);
        for pair in &mut p.subnets {
            std::mem::swap(&mut pair.local, &mut pair.remote);
        }
        p.phase2.lifetime_seconds = 3600;
        p
    }

    /// Initiator i's engine configuration.
    pub fn peer(&self, i: u32) -> PeerConfig {
        let local = self.address(i);
        PeerConfig {
            name: Self::name(i),
            local_address: IpAddr::V4(local),
            remote_address: IpAddr::V4(self.gateway),
            psk: SecretBytes::from_slice(self.psk.as_bytes()),
            local_id: Identity::Ipv4(local),
            remote_id: Identity::Ipv4(self.gateway),
            mode: ExchangeMode::Main,
            phase1: Phase1Policy {
                encryption: self.ike_encryption,
                hash: self.ike_hash,
                dh_group: self.dh_group,
                lifetime: Duration::from_secs(86_400),
            },
            phase2: Phase2Policy {
                encryption: self.esp_encryption,
                integrity: self.esp_integrity,
                pfs: None,
                lifetime_seconds: self.child_lifetime_seconds,
                lifetime_kilobytes: 0,
            },
            subnets: vec![SubnetPair {
                local: Ipv4Subnet::new(self.inner(i), 32).unwrap_or_else(|| unreachable!()),
                remote: self.gateway_subnet,
            }],
            force_udp_encapsulation: false,
            dpd: self.dpd.then_some(DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Restart }),
        }
    }
}

/// A tunnel's child SA as the generator uses it for the echo.
struct Tunnel {
    index: u32,
    spi_out: Spi,
    keys_out: SaKeys,
    spi_in: Spi,
    keys_in: SaKeys,
}

#[derive(Default)]
struct Tally {
    established: u32,
    latencies: Vec<Duration>,
    failures: BTreeMap<String, u64>,
    tunnels: Vec<Tunnel>,
    last_established: Option<Instant>,
    /// Child SAs established after the first one of each tunnel (rekeys), and deleted.
    rekeys: u64,
    deleted: u64,
}

/// What happened, for the report.
#[derive(Debug)]
pub struct Report {
    pub tunnels: u32,
    pub established: u32,
    pub failures: BTreeMap<String, u64>,
    /// First initiation to the last tunnel established.
    pub setup: Duration,
    pub latency_p50: Duration,
    pub latency_p90: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    pub echo_sent: u32,
    pub echo_answered: u32,
    /// During the hold: child SAs replaced, and deleted.
    pub rekeys: u64,
    pub deleted: u64,
}

impl Report {
    pub fn rate(&self) -> f64 {
        f64::from(self.established) / self.setup.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
        json!({
            "tunnels": self.tunnels,
            "established": self.established,
            "failures": self.failures,
            "setup_seconds": (self.setup.as_secs_f64() * 1000.0).round() / 1000.0,
            "setups_per_second": (self.rate() * 10.0).round() / 10.0,
            "latency_ms": {"p50": ms(self.latency_p50), "p90": ms(self.latency_p90), "p99": ms(self.latency_p99), "max": ms(self.latency_max)},
            "echo": {"sent": self.echo_sent, "answered": self.echo_answered},
            "hold": {"child_sa_rekeys": self.rekeys, "child_sas_deleted": self.deleted},
        })
    }
}

/// Full handshakes (main mode and quick mode, both sides' crypto) per second between two
/// engines in memory, on this thread: no sockets, no daemon, the plan's algorithms. The
/// gateway does half of each handshake's work, so its ceiling per core is about twice this.
pub fn in_memory_handshakes_per_second(plan: &Plan, handshakes: u32) -> std::io::Result<f64> {
    let started = Instant::now();
    let now = Instant::now();
    for i in 0..handshakes {
        let rng = || FastRng::from_os().map_err(std::io::Error::other);
        let mut a = Endpoint::new(EngineConfig::default(), rng()?);
        let mut b = Endpoint::new(EngineConfig::default(), rng()?);
        a.add_peer(plan.peer(i)).map_err(std::io::Error::other)?;
        b.add_peer(plan.gateway_peer(i)).map_err(std::io::Error::other)?;
        a.initiate(now, &Plan::name(i)).map_err(std::io::Error::other)?;
        let (a_addr, b_addr) = (
            SocketAddr::V4(SocketAddrV4::new(plan.address(i), 500)),
            SocketAddr::V4(SocketAddrV4::new(plan.gateway, 500)),
        );
        let mut done = false;
        for _ in 0..32 {
            while let Some(t) = a.poll_transmit() {
                b.handle(now, b_addr, a_addr, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                a.handle(now, a_addr, b_addr, &t.payload);
            }
            while let Some(e) = a.poll_event() {
                done |= matches!(e, Event::ChildSaEstablished { .. });
            }
            while b.poll_event().is_some() {}
            if done {
                break;
            }
        }
        if !done {
            return Err(std::io::Error::other(format!("in-memory handshake {i} did not complete")));
        }
    }
    Ok(f64::from(handshakes) / started.elapsed().as_secs_f64())
}

/// The `p` quantile (0-1) of sorted durations, nearest rank; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the plan: establishment, the ESP echo through each tunnel, the hold. Needs the
/// initiators' addresses local (see [`Plan::address_range`]) and enough file descriptors (one
/// socket per tunnel; the limit is raised to fit).
/// Fails when the runtime or the raw ESP socket cannot be had (failures of single initiators are
/// in the report).
pub fn run(plan: &Plan) -> std::io::Result<Report> {
    raise_fd_limit(u64::from(plan.tunnels) + 256);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let (setup_done_tx, setup_done_rx) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(tokio::sync::Notify::new());
    let plan_arc = Arc::new(plan.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let outstanding = Arc::new(std::sync::atomic::AtomicU32::new(plan.tunnels));
    let handles: Vec<_> = (0..plan.tunnels)
        .map(|i| {
            let (plan, tally, permits, stop, outstanding, done) = (
                plan_arc.clone(),
                tally.clone(),
                permits.clone(),
                stop.clone(),
                outstanding.clone(),
                setup_done_tx.clone(),
            );
            runtime.spawn(async move {
                initiator(&plan, i, &tally, &permits, &stop, &outstanding, &done).await;
            })
        })
        .collect();
    drop(setup_done_tx);
    // The establishment phase ends when every initiator is up or failed, or at the timeout.
    let _ = setup_done_rx.recv_timeout(plan.timeout);
    let setup_end = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last_established;
    let setup = setup_end.map_or(start.elapsed(), |t| t.duration_since(start));
    let tunnels = std::mem::take(&mut tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).tunnels);
    let (echo_sent, echo_answered) = echo_through(plan, &tunnels)?;
    std::thread::sleep(plan.hold);
    stop.notify_waiters();
    runtime.block_on(async {
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    t.latencies.sort_unstable();
    Ok(Report {
        tunnels: plan.tunnels,
        established: t.established,
        failures: t.failures,
        setup,
        latency_p50: percentile(&t.latencies, 0.5),
        latency_p90: percentile(&t.latencies, 0.9),
        latency_p99: percentile(&t.latencies, 0.99),
        latency_max: t.latencies.last().copied().unwrap_or_default(),
        echo_sent,
        echo_answered,
        rekeys: t.rekeys,
        deleted: t.deleted,
    })
}

/// One initiator: waits for a permit, negotiates, reports, then keeps its endpoint running
/// (DPD, rekeys) until `stop`.
#[allow(clippy::too_many_arguments)] // one task's whole context
async fn initiator(
    plan: &Plan,
    i: u32,
    tally: &Mutex<Tally>,
    permits: &tokio::sync::Semaphore,
    stop: &tokio::sync::Notify,
    outstanding: &std::sync::atomic::AtomicU32,
    done: &std::sync::mpsc::Sender<()>,
) {
    let finish_setup = || {
        if outstanding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = done.send(());
        }
    };
    let fail = |reason: String| {
        tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .failures
            .entry(reason)
            .and_modify(|n| *n += 1)
            .or_insert(1);
    };
    let local = SocketAddr::V4(SocketAddrV4::new(plan.address(i), 500));
    let socket = match tokio::net::UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            fail(format!("bind {local}: {}", e.kind()));
            finish_setup();
            return;
        }
    };
    let engine = EngineConfig { retransmit_initial: Duration::from_secs(2), ..EngineConfig::default() };
    let Ok(rng) = FastRng::from_os() else {
        fail("no randomness from the OS".into());
        finish_setup();
        return;
    };
    let mut endpoint = Endpoint::new(engine, rng);
    if let Err(e) = endpoint.add_peer(plan.peer(i)) {
        fail(format!("configuration: {e}"));
        finish_setup();
        return;
    }
    let permit = permits.acquire().await.ok();
    let began = Instant::now();
    let _ = endpoint.initiate(began, &Plan::name(i));
    let mut set_up = false;
    let mut permit = permit;
    let mut buf = vec![0u8; 65_535];
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        while let Some(t) = endpoint.poll_transmit() {
            let _ = socket.send_to(&t.payload, t.remote).await;
        }
        while let Some(event) = endpoint.poll_event() {
            match event {
                Event::ChildSaEstablished { child, .. } => {
                    let mut t = tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if set_up {
                        t.rekeys += 1;
                        continue;
                    }
                    set_up = true;
                    let now = Instant::now();
                    t.established += 1;
                    t.latencies.push(now.duration_since(began));
                    t.last_established = Some(t.last_established.map_or(now, |l| l.max(now)));
                    t.tunnels.push(Tunnel {
                        index: i,
                        spi_out: child.spi_out,
                        keys_out: child.keys_out.clone(),
                        spi_in: child.spi_in,
                        keys_in: child.keys_in.clone(),
                    });
                    drop(t);
                    permit.take();
                    finish_setup();
                }
                Event::ChildSaDeleted { .. } => {
                    tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).deleted += 1;
                }
                Event::NegotiationFailed { reason, .. } if !set_up => {
                    fail(reason.to_string());
                    permit.take();
                    finish_setup();
                    // One attempt per tunnel: a failure is reported, not retried.
                    set_up = true;
                }
                _ => {}
            }
        }
        let deadline = endpoint.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = received {
                    endpoint.handle(Instant::now(), local, from, &buf[..n]);
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => endpoint.handle_timeout(Instant::now()),
            () = &mut stopped => return,
        }
    }
}

/// Sends one ICMP echo through each tunnel as raw ESP and counts the answers that open with the
/// tunnel's inbound SA and carry the echo's identifier back from the target.
fn echo_through(plan: &Plan, tunnels: &[Tunnel]) -> std::io::Result<(u32, u32)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if tunnels.is_empty() {
        return Ok((0, 0));
    }
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(PROTO_ESP))))?;
    socket.set_header_included_v4(true)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let mut rng = FastRng::from_os().map_err(std::io::Error::other)?;
    let mut inbound: BTreeMap<u32, (u32, InboundSa)> = BTreeMap::new();
    let mut answered = std::collections::BTreeSet::new();
    let mut sent = 0;
    let gateway = SocketAddr::V4(SocketAddrV4::new(plan.gateway, 0));
    let receive =
        |socket: &Socket, inbound: &BTreeMap<u32, (u32, InboundSa)>, answered: &mut std::collections::BTreeSet<u32>| {
            use std::io::Read as _;
            let mut data = [0u8; 2048];
            let mut reader = socket;
            while let Ok(n) = reader.read(&mut data) {
                // A raw IPv4 socket hands over the IP header too (20 bytes: no options here).
                let Some(esp) = data[..n].get(20..) else { continue };
                let Some(spi) = esp.get(..4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])) else { continue };
                let Some((index, sa)) = inbound.get(&spi) else { continue };
                let mut room = vec![0u8; esp.len()];
                let Ok(opened) = sa.open(esp, &mut room) else { continue };
                let inner = &room[opened.payload];
                // An echo reply (type 0) from the target to this tunnel's inner address, id = index.
                if inner.len() >= 28
                    && inner[9] == 1
                    && inner[20] == 0
                    && u16::from_be_bytes([inner[24], inner[25]]) == (*index & 0xffff) as u16
                {
                    answered.insert(*index);
                }
            }
        };
    for t in tunnels {
        let (Ok(out), Ok(inb)) = (OutboundSa::new(t.spi_out, &t.keys_out), InboundSa::new(t.spi_in, &t.keys_in, 64))
        else {
            continue;
        };
        inbound.insert(t.spi_in.get(), (t.index, inb));
        let inner = icmp_echo(plan.inner(t.index), plan.echo_target, (t.index & 0xffff) as u16);
        let mut room = vec![0u8; out.sealed_len(inner.len()) + 64];
        let Ok(sealed) = out.seal(&mut rng, &inner, NextHeader::IPV4, &mut room) else { continue };
        let packet = ipv4(plan.address(t.index), plan.gateway, PROTO_ESP, 0, &room[sealed.range]);
        if socket.send_to(&packet, &gateway.into()).is_ok() {
            sent += 1;
        }
        // Drain answers as they come: the socket's buffer holds only so many.
        if sent % 64 == 0 {
            let _ = socket.set_read_timeout(Some(Duration::from_millis(1)));
            receive(&socket, &inbound, &mut answered);
            let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && answered.len() < sent as usize {
        receive(&socket, &inbound, &mut answered);
    }
    Ok((sent, answered.len() as u32))
}

/// An ICMP echo request from `src` to `dst` with identifier `id`, in an IPv4 header.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"vpngw-loadgen echo");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, 1, id, &icmp)
}

/// A process's resident memory (VmRSS), in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the open-file limit to at least `wanted` (root may raise the hard limit too).
fn raise_fd_limit(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < wanted
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted));
    }
}
