//! # vpngw-dataplane: the ESP packet path
//!
//! **Owns:** the TUN device (one queue per worker), the ESP sockets (UDP 4500 in a
//! SO_REUSEPORT group, raw IP protocol 50, the link path's AF_PACKET sockets: [`link`]), the
//! worker threads pinned to cores, the security policy database ([`spd`]), the SA table the
//! control plane publishes ([`sa_table`]), the counters by worker, SA and drop reason
//! ([`counters`]), and the MSS clamping of TCP SYNs crossing the tunnel ([`mss`]).
//!
//! **Must not touch:** IKE (SAs arrive fully keyed as `vpngw-esp` objects; IKE datagrams that
//! arrive on port 4500 are handed over untouched), configuration files, routes (the daemon
//! installs them), the management API.
//!
//! **Data in and out:** the control plane calls [`sa_table::SaTable::install`]/`remove` and
//! swaps the [`spd::Spd`]; workers read both per packet without locks. Plaintext enters from
//! the TUN and leaves as ESP; ESP enters from the sockets and leaves as plaintext into the TUN.
//! Events for the control plane (IKE datagrams from port 4500, acquires, rekey hints) go out
//! through the callback given to [`Dataplane::start`].
//!
//! ```text
//! out: TUN queue -> ipv4 -> SA table (longest prefix) | SPD (no SA: hold or drop, acquire) -> MTU/ICMP
//!      -> seal_batch (multi-buffer CBC) -> UDP 4500 (ESP in UDP, GSO)
//!         | raw ESP: link path (AF_PACKET, own IPv4+Ethernet headers; [`link`]) or raw IP socket
//! in:  UDP 4500 (GRO) -> keepalive | IKE (to control) | ESP ;  raw ESP (recvmmsg; BPF: this worker's SPIs)
//!      -> SA by SPI -> open (replay check, ICV, decrypt, replay commit) -> selectors -> TUN
//! ```
//!
//! In the tree: `worker/mod.rs` (the loop, one wake-up), `worker/base.rs` and `worker/ctx.rs`
//! (the worker, its batch sizes and its scratch), `worker/outbound.rs` (TUN to sealed runs, the
//! ICMP step), `worker/tx.rs` (the transport of a run), `worker/inbound.rs` (sockets to the
//! TUN); every system call of that path is in `sys/worker_io.rs`, behind the traits
//! [`sys::Tun`], [`sys::UdpLink`] and [`sys::RawLink`] the worker is generic over.

#![deny(unsafe_code)]

pub mod counters;
pub mod link;
pub mod mss;
pub mod packet;
pub mod sa_table;
mod shared;
pub mod spd;
pub mod sys;
mod worker;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use vpngw_crypto::FastRng;

use crate::counters::WorkerCounters;
use crate::sa_table::SaTable;
use crate::shared::Shared;
pub use crate::shared::{ControlSink, ToControl};
use crate::spd::Spd;

#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub tun_name: String,
    pub tun_mtu: u16,
    /// Worker threads; 0 = one per core in `worker_cores` (or, without it, one per core this
    /// process may use).
    pub workers: usize,
    pub public_address: Ipv4Addr,
    pub nat_t_port: u16,
    /// MTU of the outer path, for the too-big check (ICMP fragmentation needed).
    pub path_mtu: u16,
    /// Open raw IP protocol 50 sockets (ESP without UDP).
    pub raw_esp: bool,
    /// Pin each worker to one core (worker i to the i-th core of the list, wrapping).
    pub pin_workers: bool,
    /// The cores to pin to; empty = the cores of this process's affinity mask (`taskset`,
    /// cgroup cpusets), so a gateway started on a subset of the machine stays inside it.
    pub worker_cores: Vec<usize>,
    /// TCP MSS clamping of SYNs crossing the tunnel, both ways (see [`mss`]).
    pub tcp_mss_clamp: mss::MssClamp,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot create TUN device {name}: {source} (is /dev/net/tun available, and are we root?)")]
    Tun { name: String, source: io::Error },
    #[error("cannot open UDP {addr}: {source}")]
    Udp { addr: SocketAddr, source: io::Error },
    #[error("cannot open a raw ESP socket: {0} (needs root / CAP_NET_RAW)")]
    Raw(io::Error),
    #[error("cannot seed a worker's random generator: {0}")]
    Rng(String),
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot read the cores this process may use: {0}")]
    Affinity(io::Error),
    #[error("gateway.worker_cores: core {core} is not one this process may use (allowed: {allowed:?})")]
    CoreNotAllowed { core: usize, allowed: Vec<usize> },
}

/// The running dataplane. Dropping it without [`Dataplane::stop`] leaves the threads running
/// until the process exits.
/// The last copy [`Dataplane::link_paths_cached`] made, and of which map.
#[derive(Default)]
pub struct LinkPathsCache(Option<(Arc<LinkPathMap>, LinkPathList)>);

impl std::fmt::Debug for LinkPathsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPathsCache").field("paths", &self.0.as_ref().map_or(0, |(_, c)| c.len())).finish()
    }
}

type LinkPathMap = rustc_hash::FxHashMap<Ipv4Addr, Arc<link::LinkPath>>;
/// Peers and the next hop their raw ESP leaves through.
pub type LinkPathList = Arc<[(Ipv4Addr, link::NextHop)]>;

pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    ike_socket: UdpSocket,
    tun_name: String,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").field("tun", &self.tun_name).field("workers", &self.threads.len()).finish()
    }
}

impl Dataplane {
    pub fn start(
        config: &DataplaneConfig,
        table: Arc<SaTable>,
        spd: Arc<ArcSwap<Spd>>,
        to_control: ControlSink,
    ) -> Result<Self, DataplaneError> {
        let cores = worker_cores(config)?;
        let workers = match (config.workers, config.worker_cores.is_empty()) {
            (0, true) => sys::cpu_count(),
            (0, false) => cores.len(),
            (n, _) => n,
        };
        let tuns = sys::tun_queues(&config.tun_name, config.tun_mtu, workers)
            .map_err(|source| DataplaneError::Tun { name: config.tun_name.clone(), source })?;
        let addr = SocketAddr::new(config.public_address.into(), config.nat_t_port);
        // Bound in worker order: socket k is index k of the group, which the SPI steering needs.
        let udps = sys::udp_group(addr, workers).map_err(|source| DataplaneError::Udp { addr, source })?;
        let ike_socket = udps[0].try_clone().map_err(|source| DataplaneError::Udp { addr, source })?;
        let shared = Arc::new(Shared {
            table,
            spd,
            stop: AtomicBool::new(false),
            pending_ready: AtomicBool::new(false),
            waker: sys::Waker::new().map_err(DataplaneError::Thread)?,
            counters: (0..workers).map(|_| WorkerCounters::default()).collect(),
            to_control,
            path_mtu: config.path_mtu,
            tun_mtu: config.tun_mtu,
            tcp_mss_clamp: config.tcp_mss_clamp,
            public_address: config.public_address,
            links: link::LinkPaths::default(),
        });
        let mut threads = Vec::with_capacity(workers);
        for (id, (tun, udp)) in tuns.into_iter().zip(udps).enumerate() {
            let raw = if config.raw_esp {
                Some(
                    sys::raw_esp_socket(config.public_address, id as u32, workers as u32)
                        .map_err(DataplaneError::Raw)?,
                )
            } else {
                None
            };
            let udp = sys::UdpPort::new(udp).map_err(|source| DataplaneError::Udp { addr, source })?;
            let rng = FastRng::from_os().map_err(|e| DataplaneError::Rng(e.to_string()))?;
            let tun = sys::TunQueue::new(tun);
            let shared = shared.clone();
            let pin = if config.pin_workers && !cores.is_empty() { Some(cores[id % cores.len()]) } else { None };
            let handle = std::thread::Builder::new()
                .name(format!("vpngw-worker-{id}"))
                .spawn(move || {
                    if let Some(cpu) = pin {
                        match sys::pin_to_cpu(cpu) {
                            Ok(()) => shared.counters[id].set_core(cpu),
                            Err(e) => tracing::warn!(worker = id, cpu, error = %e, "cannot pin worker"),
                        }
                    }
                    // Built on its thread: the raw socket's recvmmsg headers hold pointers
                    // (not `Send`).
                    let raw = raw.map(sys::RawSocket::new);
                    worker::Worker { id, shared, tun, udp, raw, rng, ip_id: 0 }.run();
                })
                .map_err(DataplaneError::Thread)?;
            threads.push(handle);
        }
        tracing::info!(
            tun = %config.tun_name,
            mtu = config.tun_mtu,
            workers,
            cores = ?cores,
            pinned = config.pin_workers,
            raw_esp = config.raw_esp,
            "dataplane started"
        );
        Ok(Self { shared, threads, ike_socket, tun_name: config.tun_name.clone() })
    }

    /// A socket bound to the NAT-T port, for the control plane's IKE sends (receiving is the
    /// workers' job: they hand IKE datagrams over through the control sink).
    pub fn ike_socket(&self) -> io::Result<UdpSocket> {
        self.ike_socket.try_clone()
    }

    /// Publishes the link paths of raw ESP (see [`link`]): exactly these peers send through
    /// them, every other peer through the raw IP socket. Returns the peers whose interface's
    /// socket could not be opened (they keep the raw IP socket).
    pub fn set_link_paths(&self, hops: &[(Ipv4Addr, link::NextHop)]) -> Vec<(Ipv4Addr, io::Error)> {
        self.shared.links.publish(hops)
    }

    /// The link paths in use, by peer.
    pub fn link_paths(&self) -> Vec<(Ipv4Addr, link::NextHop)> {
        self.shared.links.paths.load().iter().map(|(peer, path)| (*peer, path.hop.clone())).collect()
    }

    /// [`Dataplane::link_paths`], copied only when the set changed since `cache` was made (the
    /// workers' map is replaced whole on each change; holding the old one rules out a new map
    /// at the same address). The daemon publishes its read state many times a second; copying
    /// thousands of next hops each time was a third of an idle gateway's CPU.
    pub fn link_paths_cached(&self, cache: &mut LinkPathsCache) -> LinkPathList {
        let now = self.shared.links.paths.load_full();
        if let Some((map, copy)) = &cache.0
            && Arc::ptr_eq(map, &now)
        {
            return copy.clone();
        }
        let copy: LinkPathList = now.iter().map(|(peer, path)| (*peer, path.hop.clone())).collect();
        cache.0 = Some((now, copy.clone()));
        copy
    }

    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    pub fn counters(&self) -> &[WorkerCounters] {
        &self.shared.counters
    }

    /// The workers' counters, to read from another thread (the daemon's read models are
    /// served off its loop); they stay readable after [`Dataplane::stop`].
    pub fn shared_counters(&self) -> Arc<[WorkerCounters]> {
        self.shared.counters.clone()
    }

    /// Waits until every worker has passed a point where it holds no SA reference taken
    /// before this call (idle in poll, or finished a batch): after removing an SA from the
    /// table, nothing can seal with it any more. Returns false on timeout.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let start: Vec<u64> = self.shared.counters.iter().map(|c| c.epoch.load(Ordering::Acquire)).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .shared
                .counters
                .iter()
                .zip(&start)
                .all(|(c, e)| !c.busy.load(Ordering::Acquire) || c.epoch.load(Ordering::Acquire) != *e);
            if done {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// Call after installing an outbound SA: packets held for it (on-traffic start) are sent.
    pub fn release_pending(&self) {
        self.shared.pending_ready.store(true, Ordering::Release);
        self.shared.waker.wake();
    }

    /// Stops and joins the workers (each finishes its batch first).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.waker.wake();
        for t in self.threads {
            let _ = t.join();
        }
        tracing::info!("dataplane stopped");
    }
}

/// The cores workers are pinned to, in order: the configured list, every one of which must be
/// in the process's affinity mask (pinning outside it fails, or escapes a cpuset someone set on
/// purpose), or else the mask itself.
fn worker_cores(config: &DataplaneConfig) -> Result<Vec<usize>, DataplaneError> {
    if !config.pin_workers {
        return Ok(Vec::new());
    }
    let allowed = sys::allowed_cpus().map_err(DataplaneError::Affinity)?;
    if config.worker_cores.is_empty() {
        return Ok(allowed);
    }
    if let Some(&core) = config.worker_cores.iter().find(|c| !allowed.contains(c)) {
        return Err(DataplaneError::CoreNotAllowed { core, allowed });
    }
    Ok(config.worker_cores.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pin_workers: bool, worker_cores: Vec<usize>) -> DataplaneConfig {
        DataplaneConfig {
            tun_name: "t".into(),
            tun_mtu: 1400,
            workers: 0,
            public_address: Ipv4Addr::LOCALHOST,
            nat_t_port: 4500,
            path_mtu: 1500,
            raw_esp: false,
            pin_workers,
            worker_cores,
            tcp_mss_clamp: mss::MssClamp::Auto,
        }
    }

    #[test]
    fn workers_are_placed_inside_the_processs_cores() {
        let allowed = sys::allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        assert_eq!(worker_cores(&config(true, vec![])).unwrap(), allowed, "default: the affinity mask");
        assert_eq!(worker_cores(&config(false, vec![allowed[0]])).unwrap(), Vec::<usize>::new(), "not pinned");
        let last = *allowed.last().unwrap();
        assert_eq!(worker_cores(&config(true, vec![last, allowed[0]])).unwrap(), [last, allowed[0]]);
        // A core outside the mask (one past the highest allowed) is refused and named.
        let outside = last + 1;
        match worker_cores(&config(true, vec![allowed[0], outside])) {
            Err(e @ DataplaneError::CoreNotAllowed { core, .. }) => {
                assert_eq!(core, outside);
                assert!(e.to_string().contains("gateway.worker_cores"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
