//! `vpngw run`: the daemon. One tokio task owns the IKE engine and drives it (quinn's
//! `ConnectionDriver` shape): receive datagrams, feed them in, send what comes out, sleep until
//! the engine's next timer; control requests and signals arrive on the same loop. Child SAs go
//! into the SA table the dataplane reads.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use vpngw_crypto::FastRng;
use vpngw_dataplane::counters::DropReason;
use vpngw_dataplane::sa_table::{
    InboundEntry, Ipv4Net, OutboundCounters, OutboundEntry, SaCounters, SaTable, Selectors, Transport,
};
use vpngw_dataplane::spd::{PendingQueue, Policy, Spd};
use vpngw_dataplane::{Dataplane, DataplaneConfig, ToControl};
use vpngw_esp::{DEFAULT_WINDOW, InboundSa, OutboundSa};
use vpngw_ike::{
    ChildSa, DeleteReason, Encapsulation, Endpoint, EngineConfig, Event, FailReason, IKE_PORT, Ipv4Subnet, NAT_T_PORT,
};

use crate::config::{Config, ConfigError, Connection, EspOutput, Start};
use crate::control::{self, Command, ConnectionView, ErrorKind, ProblemView, Request, Response};
use crate::diagnose::{Diagnosis, FailureReport};
use crate::ledger::Ledger;
use crate::link_paths::{Changed, LinkPaths, ROUTE_RECHECK, RouteChanges};
use crate::metrics::{self, ConnectionEvents, ConnectionMetrics, Snapshot, WorkerMetrics};
use crate::routes::Routes;
use crate::status::{
    ChildSaStatus, ConnectionStatus, FailureStatus, IkeSaStatus, LinkPathStatus, Status, WorkerStatus,
};
use crate::volume::{self, Volume};

/// The 4-byte non-ESP marker in front of IKE on port 4500 (RFC 3948 s.2.2).
const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Retry backoff for active connections after a failure.
/// Distinct failures remembered per connection for `vpngw diagnose`.
const FAILURES_KEPT: usize = 10;
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// NAT keepalive interval (RFC 3948 s.4; strongSwan uses 20 s too).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// How often raw ESP's link path is resolved again: also how long a peer whose neighbour entry
/// went stale stays on the raw IP socket while the kernel verifies it again.
const LINK_REFRESH: Duration = Duration::from_millis(500);
/// How often a route change at most makes the link paths be resolved at once.
const ROUTE_CHANGE_REFRESH: Duration = Duration::from_millis(100);
/// How often SA byte counters are compared with volume lifetimes.
const LIFECYCLE_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind UDP {addr}: {source} (is the address configured on an interface, and are we root?)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot seed the random generator: {0}")]
    Rng(String),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Dataplane(#[from] vpngw_dataplane::DataplaneError),
    #[error("routes: {0}")]
    Routes(#[from] crate::routes::RouteError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

struct Failure {
    reason: FailReason,
    detail: String,
    at: SystemTime,
    count: u64,
}

struct Retry {
    at: Instant,
    backoff: Duration,
}

struct Daemon {
    config_path: PathBuf,
    config: Config,
    endpoint: Endpoint,
    table: Arc<SaTable>,
    spd: Arc<ArcSwap<Spd>>,
    dataplane: Option<Dataplane>,
    routes: Routes,
    sock_ike: UdpSocket,
    /// Bound to the NAT-T port for sending IKE; the dataplane's workers receive on it.
    sock_natt: UdpSocket,
    /// Recent distinct negotiation failures per connection, most recent first.
    failures: HashMap<String, VecDeque<Failure>>,
    retries: HashMap<String, Retry>,
    started: Instant,
    /// `--esp-keylog`: ESP keys in tcpdump's `-E` secrets format, for debugging only.
    keylog: Option<PathBuf>,
    /// Outbound SAs negotiated but not yet sending (make-before-break), by SPI.
    ready_outbound: HashMap<u32, OutboundEntry>,
    /// Inbound packet counts at the last look, by SPI: growth tells the engine (dead peer
    /// detection) that the peer is alive.
    inbound_seen: HashMap<u32, u64>,
    /// Bytes each child SA had carried at the last volume check, by inbound SPI (the rate
    /// pulls the rekey forward, see `volume`).
    volume_seen: HashMap<u32, u64>,
    /// ESP traffic per connection across SAs (for metrics).
    ledger: Ledger,
    /// Failures, rekeys, re-authentications, DPD timeouts per connection (for metrics).
    events: HashMap<String, ConnectionEvents>,
    unknown_peer_negotiations: u64,
    /// Health probes per connection: the task and its latest status.
    probes: HashMap<String, Probe>,
    /// Connections created through the management API: their tables as given (persisted).
    api_tables: std::collections::BTreeMap<String, toml::Table>,
    /// The API's bearer token, re-read from its file on reload.
    api_token: Option<crate::api::ApiToken>,
    /// Resolves raw ESP's link path per peer (None: netlink unavailable, IP socket only).
    link_paths: Option<LinkPaths>,
    /// Peers whose link-path socket failed to open (logged once).
    link_failed: BTreeSet<Ipv4Addr>,
    /// When a route change last made the link paths be resolved at once.
    route_change_refresh: Option<Instant>,
}

struct Probe {
    check: crate::config::HealthCheck,
    /// Stops the prober when dropped.
    running: crate::health::Running,
}

fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        retransmit_initial: config.tuning.retransmit_initial,
        retransmit_tries: config.tuning.retransmit_tries,
        ..EngineConfig::default()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn net(s: Ipv4Subnet) -> Ipv4Net {
    Ipv4Net { addr: s.addr(), prefix: s.prefix() }
}

/// The policies of every configured subnet pair. An on-traffic policy that `previous` has too
/// (same connection, same subnets) keeps its pending queue: packets held while its SA is being
/// negotiated survive a reload.
fn policies(config: &Config, previous: Option<&Spd>) -> Spd {
    let held: HashMap<(Arc<str>, Selectors), Arc<PendingQueue>> = previous
        .into_iter()
        .flat_map(|spd| spd.policies())
        .filter_map(|old| old.pending.clone().map(|q| ((old.connection.clone(), old.selectors), q)))
        .collect();
    Spd::new(config.connections.iter().flat_map(|c| {
        let name: Arc<str> = c.peer.name.as_str().into();
        let on_traffic = c.start == Start::OnTraffic;
        let held = &held;
        c.peer.subnets.iter().map(move |p| {
            let selectors = Selectors { local: net(p.local), remote: net(p.remote) };
            let kept = held.get(&(name.clone(), selectors)).cloned();
            Policy {
                selectors,
                connection: name.clone(),
                // Traffic that starts the tunnel waits for it instead of being lost.
                pending: on_traffic.then(|| {
                    kept.unwrap_or_else(|| {
                        Arc::new(PendingQueue::new(PendingQueue::DEFAULT_PACKETS, PendingQueue::DEFAULT_MAX_AGE))
                    })
                }),
            }
        })
    }))
}

/// Routes into the TUN: every remote subnet.
fn wanted_routes(config: &Config) -> BTreeSet<(Ipv4Addr, u8)> {
    config
        .connections
        .iter()
        .flat_map(|c| c.peer.subnets.iter().map(|p| (p.remote.addr(), p.remote.prefix())))
        .collect()
}

pub async fn run(config_path: &Path, keylog: Option<PathBuf>) -> Result<(), DaemonError> {
    let mut config = Config::load(config_path)?;
    // Connections created through the API in earlier runs.
    let mut api_tables = std::collections::BTreeMap::new();
    if let Some(api) = &config.api {
        let taken: Vec<String> = config.connections.iter().map(|c| c.peer.name.clone()).collect();
        let base = config_path.parent().unwrap_or(Path::new("/"));
        let (restored, tables) = crate::api::load_state(&api.state_file, config.gateway.public_address, base, &taken);
        if !restored.is_empty() {
            tracing::info!(count = restored.len(), file = %api.state_file.display(), "runtime connections restored");
        }
        config.connections.extend(restored);
        api_tables = tables;
    }
    for w in &config.warnings {
        tracing::warn!(key = %w.key, value = %w.value, "{}", w.reason);
    }
    let public = IpAddr::V4(config.gateway.public_address);
    let bind = |port| async move {
        let addr = SocketAddr::new(public, port);
        UdpSocket::bind(addr).await.map_err(|source| DaemonError::Bind { addr, source })
    };
    let sock_ike = bind(IKE_PORT).await?;
    let table = Arc::new(SaTable::new());
    let spd = Arc::new(ArcSwap::from_pointee(policies(&config, None)));
    let (dp_tx, mut dp_rx) = mpsc::unbounded_channel::<ToControl>();
    let sink: vpngw_dataplane::ControlSink = Arc::new(move |m| {
        let _ = dp_tx.send(m);
    });
    let dataplane = Dataplane::start(
        &DataplaneConfig {
            tun_name: config.gateway.tun.clone(),
            tun_mtu: config.gateway.tun_mtu,
            workers: config.gateway.workers,
            public_address: config.gateway.public_address,
            nat_t_port: NAT_T_PORT,
            path_mtu: config.gateway.path_mtu,
            raw_esp: true,
            pin_workers: true,
            worker_cores: config.gateway.worker_cores.clone(),
        },
        table.clone(),
        spd.clone(),
        sink,
    )?;
    let natt = dataplane
        .ike_socket()
        .map_err(|source| DaemonError::Bind { addr: SocketAddr::new(public, NAT_T_PORT), source })?;
    let sock_natt = UdpSocket::from_std(natt)
        .map_err(|source| DaemonError::Bind { addr: SocketAddr::new(public, NAT_T_PORT), source })?;
    let mut routes = Routes::new(dataplane.tun_name())?;
    routes.sync(&wanted_routes(&config)).await?;
    let rng = FastRng::from_os().map_err(|e| DaemonError::Rng(e.to_string()))?;
    let mut endpoint = Endpoint::new(engine_config(&config), rng);
    for c in &config.connections {
        // Names are unique: validated with the configuration.
        let _ = endpoint.add_peer(c.peer.clone());
    }
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let (api_task, api_token) = match &config.api {
        Some(api) => {
            let (task, token) = crate::api::serve(api, cmd_tx.clone()).await?;
            tracing::info!(listen = %api.listen, "management API at http://{}/api/v1/", api.listen);
            (Some(task), Some(token))
        }
        None => (None, None),
    };
    let control_task = control::serve(&config.gateway.control_socket, cmd_tx)?;
    let (metrics_tx, mut metrics_rx) = mpsc::channel::<oneshot::Sender<Snapshot>>(16);
    let metrics_task = match config.metrics.listen {
        Some(addr) => {
            let task = metrics::serve(addr, metrics_tx).await?;
            tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
            Some(task)
        }
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        config,
        endpoint,
        table,
        spd,
        dataplane: Some(dataplane),
        routes,
        sock_ike,
        sock_natt,
        failures: HashMap::new(),
        retries: HashMap::new(),
        started: Instant::now(),
        keylog,
        ready_outbound: HashMap::new(),
        inbound_seen: HashMap::new(),
        volume_seen: HashMap::new(),
        ledger: Ledger::default(),
        events: HashMap::new(),
        unknown_peer_negotiations: 0,
        probes: HashMap::new(),
        api_tables,
        api_token,
        link_paths: LinkPaths::new()
            .inspect_err(|e| tracing::warn!(error = %e, "no link path for raw ESP (the raw IP socket carries it)"))
            .ok(),
        link_failed: BTreeSet::new(),
        route_change_refresh: None,
    };
    d.sync_probes();
    if let Some(k) = &d.keylog {
        tracing::warn!(file = %k.display(), "ESP keys are written to this file (--esp-keylog): for debugging only, remove it when done");
    }
    tracing::info!(
        gateway = %d.config.gateway.name,
        public_address = %public,
        connections = d.config.connections.len(),
        control_socket = %d.config.gateway.control_socket.display(),
        tun = %d.config.gateway.tun,
        "vpngw {} running",
        env!("CARGO_PKG_VERSION")
    );
    let now = Instant::now();
    for c in d.config.connections.clone() {
        if c.start == Start::Active {
            d.initiate(now, &c.peer.name);
        }
    }
    d.flush().await;
    let mut buf_ike = vec![0u8; 65536];
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut link_refresh = tokio::time::interval(LINK_REFRESH);
    link_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lifecycle = tokio::time::interval(LIFECYCLE_TICK);
    // Route and rule changes, followed at once (see `link_paths`); without them, within
    // ROUTE_RECHECK.
    let mut route_changes = match &d.link_paths {
        Some(_) => RouteChanges::open()
            .inspect_err(|e| {
                tracing::warn!(
                    error = %e,
                    "cannot follow route changes as the kernel announces them: raw ESP's link path looks routes up again every {}s",
                    ROUTE_RECHECK.as_secs()
                )
            })
            .ok(),
        None => None,
    };
    loop {
        let wake = d.next_wake();
        tokio::select! {
            r = d.sock_ike.recv_from(&mut buf_ike) => {
                if let Ok((n, from)) = r {
                    let local = SocketAddr::new(public, IKE_PORT);
                    d.endpoint.handle(Instant::now(), local, from, &buf_ike[..n]);
                }
            }
            Some(m) = dp_rx.recv() => d.on_dataplane(m),
            _ = sleep_until(wake) => {
                let now = Instant::now();
                d.endpoint.handle_timeout(now);
                d.run_retries(now);
            }
            _ = keepalive.tick() => d.send_keepalives().await,
            _ = link_refresh.tick() => d.refresh_link_paths().await,
            changed = next_route_change(&mut route_changes) => match changed {
                Some(changed) => d.on_route_change(&changed).await,
                None => {
                    tracing::warn!("route change announcements stopped: raw ESP's link path looks routes up again every {}s", ROUTE_RECHECK.as_secs());
                    route_changes = None;
                }
            },
            _ = lifecycle.tick() => {
                let now = Instant::now();
                d.report_inbound_traffic(now);
                d.check_volumes(now);
                d.ledger.settle();
                // A packet held by a worker that still saw the table from before an SA arrived
                // would otherwise wait for the next SA: look again every second.
                if let Some(dp) = &d.dataplane {
                    dp.release_pending();
                }
            }
            Some(reply) = metrics_rx.recv() => {
                let _ = reply.send(d.metrics_snapshot());
            }
            Some((request, reply)) = cmd_rx.recv() => {
                let response = d.command(request).await;
                let _ = reply.send(response);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => d.reload().await,
        }
        d.flush().await;
    }
    tracing::info!("shutting down: deleting SAs");
    let now = Instant::now();
    for name in d.endpoint.peer_names() {
        let _ = d.endpoint.terminate(now, &name);
    }
    d.flush().await;
    control_task.abort();
    if let Some(t) = api_task {
        t.abort();
    }
    d.probes.clear();
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(dp) = d.dataplane.take() {
        dp.stop();
    }
    let _ = std::fs::remove_file(&d.config.gateway.control_socket);
    tracing::info!("stopped");
    Ok(())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether a connection is up: an established IKE SA and an active child SA for each of its
/// subnet pairs, among the engine's IKE SAs (`Endpoint::ike_sas`).
fn connection_up(sas: &[vpngw_ike::IkeSaInfo], name: &str, subnet_pairs: usize) -> bool {
    let established = sas.iter().any(|s| s.peer == name && s.state == vpngw_ike::IkeSaState::Established);
    let active = sas
        .iter()
        .filter(|s| s.peer == name)
        .flat_map(|s| s.children.iter())
        .filter(|c| c.state == vpngw_ike::ChildSaState::Active)
        .count();
    established && active >= subnet_pairs
}

/// The next route change, or never without announcements.
async fn next_route_change(changes: &mut Option<RouteChanges>) -> Option<Changed> {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn next_wake(&self) -> Option<Instant> {
        let retry = self.retries.values().map(|r| r.at).min();
        [self.endpoint.poll_timeout(), retry].into_iter().flatten().min()
    }

    fn initiate(&mut self, now: Instant, name: &str) {
        if let Err(e) = self.endpoint.initiate(now, name) {
            tracing::warn!(connection = name, error = %e, "cannot initiate");
        }
    }

    fn run_retries(&mut self, now: Instant) {
        let due: Vec<String> = self.retries.iter().filter(|(_, r)| r.at <= now).map(|(n, _)| n.clone()).collect();
        for name in due {
            if let Some(r) = self.retries.get_mut(&name) {
                r.at = now + RETRY_MAX * 1000; // parked until the next failure reschedules it
            }
            let Some(subnet_pairs) =
                self.connection(&name).filter(|c| c.start == Start::Active).map(|c| c.peer.subnets.len())
            else {
                continue;
            };
            // A retry scheduled by an event that did not take the connection down (an IKE SA
            // that expired after another took over its child SAs) has nothing to do.
            if self.is_up(&name, subnet_pairs) {
                self.retries.remove(&name);
                continue;
            }
            tracing::info!(connection = %name, "retrying");
            self.initiate(now, &name);
        }
    }

    /// An established IKE SA and an active child SA for each of the connection's subnet pairs
    /// (what `vpngw status` shows as `up`).
    fn is_up(&self, name: &str, subnet_pairs: usize) -> bool {
        connection_up(&self.endpoint.ike_sas(), name, subnet_pairs)
    }

    fn schedule_retry(&mut self, name: &str) {
        if !self.connection(name).is_some_and(|c| c.start == Start::Active) {
            return;
        }
        let now = Instant::now();
        let r = self.retries.entry(name.to_string()).or_insert(Retry { at: now, backoff: RETRY_FIRST / 2 });
        r.backoff = (r.backoff * 2).min(RETRY_MAX);
        r.at = now + r.backoff;
    }

    fn connection(&self, name: &str) -> Option<&Connection> {
        self.config.connections.iter().find(|c| c.peer.name == name)
    }

    /// Acts on the engine's events, then sends what it queued. Events go first: a Delete
    /// leaves only after its SA is out of the table and every worker has let go of it, so no
    /// packet is sealed with a deleted SA's keys after the peer was told.
    async fn flush(&mut self) {
        let transmits: Vec<vpngw_ike::Transmit> = std::iter::from_fn(|| self.endpoint.poll_transmit()).collect();
        let mut removed = false;
        while let Some(e) = self.endpoint.poll_event() {
            removed |= matches!(e, Event::ChildSaDeleted { .. });
            self.event(e);
        }
        if removed && let Some(dp) = &self.dataplane {
            dp.quiesce(Duration::from_millis(200));
        }
        for t in transmits {
            let result = if t.local.port() == NAT_T_PORT {
                let mut framed = Vec::with_capacity(t.payload.len() + 4);
                framed.extend_from_slice(&NON_ESP_MARKER);
                framed.extend_from_slice(&t.payload);
                self.sock_natt.send_to(&framed, t.remote).await
            } else {
                self.sock_ike.send_to(&t.payload, t.remote).await
            };
            if let Err(e) = result {
                tracing::debug!(remote = %t.remote, error = %e, "send failed");
            }
        }
        // Handling events may have queued more (a retry initiating at once).
        if self.endpoint.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            self.endpoint.handle_timeout(Instant::now());
        }
    }

    fn on_dataplane(&mut self, m: ToControl) {
        match m {
            ToControl::Ike { from, data } => {
                let local = SocketAddr::new(IpAddr::V4(self.config.gateway.public_address), NAT_T_PORT);
                self.endpoint.handle(Instant::now(), local, from, &data);
            }
            ToControl::Acquire { connection } => {
                // At most once a second per subnet pair (the dataplane's pending queue
                // throttles): phase 1 if there is no IKE SA, else the quick modes missing.
                let on_traffic = self.connection(&connection).is_some_and(|c| c.start == Start::OnTraffic);
                if on_traffic {
                    let has_sa = self.endpoint.ike_sas().iter().any(|s| s.peer == *connection);
                    if !has_sa {
                        tracing::info!(connection = %connection, "traffic for the tunnel: negotiating");
                    }
                    self.initiate(Instant::now(), &connection);
                }
            }
            ToControl::RekeyDue { spi_out } => {
                tracing::info!(spi_out = %format!("{spi_out:08x}"), "outbound SA near its sequence-number limit: rekeying");
                self.endpoint.rekey_child(Instant::now(), spi_out);
            }
        }
    }

    /// Tells the engine which child SAs received ESP since the last look.
    fn report_inbound_traffic(&mut self, now: Instant) {
        let mut seen = HashMap::with_capacity(self.inbound_seen.len());
        for s in self.endpoint.ike_sas() {
            for c in &s.children {
                let packets = self.table.inbound(c.spi_in).map_or(0, |e| e.counters.packets());
                if packets > self.inbound_seen.get(&c.spi_in).copied().unwrap_or(0) {
                    self.endpoint.traffic_received(now, c.spi_in);
                }
                seen.insert(c.spi_in, packets);
            }
        }
        self.inbound_seen = seen;
    }

    /// Volume lifetimes (RFC 2407 s.4.5, kilobytes): each SA of a pair is measured on its own;
    /// a replacement is negotiated from 85-94 % of the limit (spread by SPI, so that tunnels
    /// set up together do not all rekey together), earlier when the traffic of the last tick
    /// would not leave time for it (`volume::soft_point`); at 100 % the pair is deleted.
    fn check_volumes(&mut self, now: Instant) {
        let mut soft = Vec::new();
        let mut hard = Vec::new();
        let mut seen = HashMap::with_capacity(self.volume_seen.len());
        for s in self.endpoint.ike_sas() {
            for c in &s.children {
                let Some(kb) = c.lifetime_kilobytes.filter(|kb| *kb > 0) else { continue };
                let limit = kb.saturating_mul(1024);
                let bytes_in = self.table.inbound(c.spi_in).map_or(0, |e| e.counters.bytes());
                let bytes_out = self.table.outbound_by_spi(c.spi_out).map_or(0, |e| e.counters.bytes());
                let used = bytes_in.max(bytes_out);
                let last_tick = used.saturating_sub(self.volume_seen.get(&c.spi_in).copied().unwrap_or(0));
                seen.insert(c.spi_in, used);
                match volume::classify(limit, c.spi_in % 10, used, last_tick) {
                    Volume::Hard => hard.push(c.spi_in),
                    Volume::Soft if c.state == vpngw_ike::ChildSaState::Active => {
                        soft.push((c.spi_in, used / (limit / 100).max(1), last_tick));
                    }
                    _ => {}
                }
            }
        }
        self.volume_seen = seen;
        for (spi, percent, last_tick) in soft {
            if self.endpoint.rekey_child(now, spi) {
                tracing::info!(spi_in = %format!("{spi:08x}"), used_percent = percent, bytes_last_second = last_tick, "child SA near its volume lifetime: rekeying");
            }
        }
        for spi in hard {
            tracing::info!(spi_in = %format!("{spi:08x}"), "child SA reached its volume lifetime: deleted");
            self.endpoint.expire_child(now, spi);
        }
    }

    /// Resolves the link path of every peer reached by raw ESP (see `link_paths`) and
    /// publishes the outcome to the dataplane; with `gateway.esp_output = "ip"`, publishes none.
    async fn refresh_link_paths(&mut self) {
        let Some(dp) = &self.dataplane else { return };
        let peers: BTreeSet<Ipv4Addr> = if self.config.gateway.esp_output == EspOutput::Link {
            self.table
                .outbound_all()
                .iter()
                .filter(|e| !e.transport.udp)
                .filter_map(|e| match e.transport.remote.ip() {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect()
        } else {
            BTreeSet::new()
        };
        let hops = match &mut self.link_paths {
            Some(resolver) => resolver.resolve(&peers, self.config.gateway.public_address).await,
            None => Vec::new(),
        };
        let failed = dp.set_link_paths(&hops);
        let now_failed: BTreeSet<Ipv4Addr> = failed.iter().map(|(peer, _)| *peer).collect();
        for (peer, e) in failed {
            if !self.link_failed.contains(&peer) {
                tracing::warn!(%peer, error = %e, "cannot open the link path's socket: raw ESP to this peer takes the IP socket");
            }
        }
        self.link_failed = now_failed;
    }

    /// A route or rule change the kernel announced: the peers it may concern leave the link
    /// path now (the raw IP socket follows the kernel's routing) and are looked up again. At
    /// most every ROUTE_CHANGE_REFRESH: while routes churn (a routing daemon converging), the
    /// regular refresh, at most LINK_REFRESH later, does it.
    async fn on_route_change(&mut self, changed: &Changed) {
        let forgotten = self.link_paths.as_mut().map_or(0, |resolver| resolver.forget_routes(changed));
        let now = Instant::now();
        if forgotten > 0 && self.route_change_refresh.is_none_or(|t| now.duration_since(t) >= ROUTE_CHANGE_REFRESH) {
            tracing::debug!(peers = forgotten, "route change: looking the peers' routes up again");
            self.route_change_refresh = Some(now);
            self.refresh_link_paths().await;
        }
    }

    /// NAT keepalives (one 0xFF byte, RFC 3948 s.2.3) to every peer we reach through UDP.
    async fn send_keepalives(&self) {
        let peers: BTreeSet<SocketAddr> =
            self.table.outbound_all().iter().filter(|e| e.transport.udp).map(|e| e.transport.remote).collect();
        for p in peers {
            let _ = self.sock_natt.send_to(&[0xff], p).await;
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::IkeSaEstablished {
                peer,
                role,
                mode,
                remote,
                encryption,
                hash,
                dh_group,
                lifetime_seconds,
                nat_detected,
                ..
            } => {
                tracing::info!(connection = %peer, %role, %mode, %remote, encryption = %encryption, authentication = %hash, dh_group = %dh_group, lifetime_seconds, nat_detected, "IKE SA established");
            }
            Event::ChildSaEstablished { peer, child, .. } => {
                tracing::info!(
                    connection = %peer,
                    spi_in = %format!("{:08x}", child.spi_in),
                    spi_out = %format!("{:08x}", child.spi_out),
                    selectors = %child.selectors,
                    encryption = %child.encryption,
                    authentication = %child.integrity.name(),
                    pfs = %child.pfs.map_or("disable".to_string(), |g| g.name().to_string()),
                    lifetime_seconds = child.lifetime_seconds,
                    encapsulation = %child.encapsulation,
                    quick_mode = %child.role,
                    "child SA established"
                );
                self.retries.remove(&peer);
                self.install(&peer, &child);
                self.log_keys(&child);
            }
            Event::ChildSaActive { peer, spi_in, spi_out } => {
                tracing::debug!(connection = %peer, spi_in = %format!("{spi_in:08x}"), spi_out = %format!("{spi_out:08x}"), "child SA sending");
                if let Some(out) = self.ready_outbound.remove(&spi_out) {
                    let replaced = self.table.install_outbound(out);
                    self.ledger.retire(replaced);
                    if let Some(dp) = &self.dataplane {
                        dp.release_pending();
                    }
                }
            }
            Event::ChildSaDeleted { peer, spi_in, spi_out, reason } => {
                tracing::info!(connection = %peer, spi_in = %format!("{spi_in:08x}"), spi_out = %format!("{spi_out:08x}"), %reason, "child SA deleted");
                let gone = self.table.remove(spi_in, spi_out);
                self.ledger.retire(gone);
                self.ready_outbound.remove(&spi_out);
                if reason == DeleteReason::Rekeyed {
                    self.events.entry(peer.clone()).or_default().rekeys += 1;
                }
                if !matches!(reason, DeleteReason::Local | DeleteReason::Rekeyed | DeleteReason::Reauthenticated) {
                    self.schedule_retry(&peer);
                }
            }
            Event::IkeSaDeleted { peer, reason, .. } => {
                tracing::info!(connection = %peer, %reason, "IKE SA deleted");
                match reason {
                    DeleteReason::DeadPeer => self.events.entry(peer.clone()).or_default().dpd_timeouts += 1,
                    DeleteReason::Reauthenticated => {
                        self.events.entry(peer.clone()).or_default().reauthentications += 1;
                    }
                    _ => {}
                }
                if !matches!(reason, DeleteReason::Local | DeleteReason::Reauthenticated) {
                    self.schedule_retry(&peer);
                }
            }
            Event::NegotiationFailed { peer, remote, reason, detail } => {
                match peer.as_deref().filter(|p| self.connection(p).is_some()) {
                    Some(p) => self.events.entry(p.to_string()).or_default().failed(reason),
                    None => self.unknown_peer_negotiations += 1,
                }
                let name = peer.clone().unwrap_or_else(|| format!("(unknown peer {})", remote.ip()));
                let now = SystemTime::now();
                let history = self.failures.entry(name.clone()).or_default();
                match history.iter().position(|f| f.reason == reason && f.detail == detail) {
                    Some(i) => {
                        // Seen recently: counted, moved to the front, logged at debug only.
                        if let Some(mut f) = history.remove(i) {
                            f.count += 1;
                            f.at = now;
                            history.push_front(f);
                        }
                        tracing::debug!(connection = %name, %reason, %detail, "negotiation failed again");
                    }
                    None => {
                        // Logged once per distinct failure, not once per retransmission or retry.
                        tracing::warn!(connection = %name, %remote, %reason, %detail, "negotiation failed");
                        history.push_front(Failure { reason, detail, at: now, count: 1 });
                        history.truncate(FAILURES_KEPT);
                    }
                }
                if let Some(p) = peer {
                    self.schedule_retry(&p);
                }
            }
        }
    }

    fn install(&mut self, connection: &str, c: &ChildSa) {
        let selectors = Selectors { local: net(c.selectors.local), remote: net(c.selectors.remote) };
        let transport = Transport {
            local: c.local,
            remote: c.remote,
            udp: matches!(c.encapsulation, Encapsulation::UdpTunnel { .. }),
        };
        let inbound = InboundSa::new(c.spi_in, &c.keys_in, DEFAULT_WINDOW);
        let outbound = OutboundSa::new(c.spi_out, &c.keys_out);
        match (inbound, outbound) {
            (Ok(inb), Ok(out)) => {
                // Inbound now; outbound when the engine says the peer can open it.
                let name: Arc<str> = connection.into();
                self.table.install_inbound(InboundEntry {
                    connection: name.clone(),
                    sa: inb,
                    selectors,
                    transport,
                    counters: SaCounters::default(),
                });
                self.ready_outbound.insert(
                    c.spi_out,
                    OutboundEntry {
                        connection: name,
                        sa: out,
                        selectors,
                        transport,
                        counters: OutboundCounters::default(),
                    },
                );
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!(connection, error = %e, "cannot install child SA"),
        }
    }

    /// Appends the child SA's keys to the key log, as `tcpdump -E file:FILE` reads them.
    fn log_keys(&self, c: &ChildSa) {
        let Some(path) = &self.keylog else { return };
        let alg = match c.encryption {
            vpngw_crypto::EncryptionAlgorithm::Des => "des-cbc",
            vpngw_crypto::EncryptionAlgorithm::TripleDes => "3des-cbc",
            vpngw_crypto::EncryptionAlgorithm::Aes128 => "aes128-cbc",
            vpngw_crypto::EncryptionAlgorithm::Aes192 => "aes192-cbc",
            vpngw_crypto::EncryptionAlgorithm::Aes256 => "aes256-cbc",
        };
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let lines = format!(
            "0x{:08x}@{} {alg}-hmac96:0x{}\n0x{:08x}@{} {alg}-hmac96:0x{}\n",
            c.spi_out,
            c.remote.ip(),
            hex(c.keys_out.encryption_key.expose()),
            c.spi_in,
            c.local.ip(),
            hex(c.keys_in.encryption_key.expose()),
        );
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(lines.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the ESP key log");
        }
    }

    /// Starts, restarts or stops health probes to match the configuration.
    fn sync_probes(&mut self) {
        let wanted: HashMap<String, crate::config::HealthCheck> = self
            .config
            .connections
            .iter()
            .filter_map(|c| c.health_check.clone().map(|h| (c.peer.name.clone(), h)))
            .collect();
        self.probes.retain(|name, p| wanted.get(name) == Some(&p.check));
        for (name, check) in wanted {
            if self.probes.contains_key(&name) {
                continue;
            }
            // ICMP identifiers tell our probers' replies apart (raw sockets see them all).
            let id = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (std::process::id(), &name).hash(&mut h);
                h.finish() as u16
            };
            match crate::health::spawn(name.clone(), check.clone(), id) {
                Ok(running) => {
                    self.probes.insert(name, Probe { check, running });
                }
                Err(e) => tracing::error!(connection = %name, error = %e, "cannot start the health check"),
            }
        }
    }

    /// What a Prometheus scrape reports (see `metrics.rs`).
    fn metrics_snapshot(&mut self) -> Snapshot {
        self.ledger.settle();
        let traffic = self.ledger.traffic(&self.table);
        let status = self.status();
        let connections = status
            .connections
            .iter()
            .map(|c| {
                let events = self.events.get(&c.name).cloned().unwrap_or_default();
                let mut child_sas = [0u64; 3];
                for ch in &c.child_sas {
                    if let Some(i) = metrics::CHILD_STATES.iter().position(|s| *s == ch.state) {
                        child_sas[i] += 1;
                    }
                }
                let established = c.ike_sa.as_ref().filter(|s| s.state == "established");
                ConnectionMetrics {
                    name: c.name.clone(),
                    up: c.state == "up",
                    ike_state: match (&c.ike_sa, established) {
                        (None, _) => "none",
                        (Some(_), None) => "negotiating",
                        (Some(_), Some(_)) => "established",
                    },
                    ike_established_unix: established.and_then(|s| s.established_at_unix),
                    child_sas,
                    traffic: traffic.get(&c.name).cloned().unwrap_or_default(),
                    failures: events.failures.to_vec(),
                    rekeys: events.rekeys,
                    reauthentications: events.reauthentications,
                    dpd_timeouts: events.dpd_timeouts,
                    health: c.health.clone(),
                }
            })
            .collect();
        let workers = self.dataplane.as_ref().map(|dp| dp.counters()).unwrap_or_default();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Snapshot {
            gateway: self.config.gateway.name.clone(),
            connections,
            dataplane_drops: DropReason::all()
                .into_iter()
                .map(|r| (r.as_str(), workers.iter().map(|c| c.dropped(r)).sum()))
                .collect(),
            ike_drops: self.endpoint.drops().by_reason.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            unknown_peer_negotiations: self.unknown_peer_negotiations,
            workers: workers
                .iter()
                .map(|c| WorkerMetrics {
                    packets_in: load(&c.in_packets),
                    packets_out: load(&c.out_packets),
                    bytes_in: load(&c.in_bytes),
                    bytes_out: load(&c.out_bytes),
                    busy_seconds: load(&c.busy_ns) as f64 / 1e9,
                })
                .collect(),
        }
    }

    fn diagnose(&self, name: &str) -> Option<Diagnosis> {
        let connection = self.connection(name)?;
        let status = self.status().connections.into_iter().find(|c| c.name == name)?;
        let failures = self
            .failures
            .get(name)
            .map(|h| {
                h.iter()
                    .map(|f| FailureReport {
                        reason: f.reason.to_string(),
                        detail: f.detail.clone(),
                        at_unix: unix(f.at),
                        count: f.count,
                        hint: crate::diagnose::hint(f.reason).into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Diagnosis::new(connection, status, failures, unix(SystemTime::now())))
    }

    async fn command(&mut self, request: Request) -> Response {
        let now = Instant::now();
        let unknown = |c: &str| Response::failed(ErrorKind::NotFound, format!("no connection named {c:?}"));
        match request {
            Request::Status => Response { status: Some(self.status()), message: None, ..Response::ok("") },
            Request::Up { connection } => match self.endpoint.initiate(now, &connection) {
                Ok(()) => {
                    self.retries.remove(&connection);
                    Response::ok(format!("initiating {connection}"))
                }
                Err(_) => unknown(&connection),
            },
            Request::Down { connection } => match self.endpoint.terminate(now, &connection) {
                Ok(()) => {
                    self.retries.remove(&connection);
                    let gone = self.table.remove_connection(&connection);
                    self.ledger.retire(gone);
                    self.ready_outbound.retain(|_, e| &*e.connection != connection.as_str());
                    Response::ok(format!("{connection} down"))
                }
                Err(_) => unknown(&connection),
            },
            Request::Diagnose { connection } => match self.diagnose(&connection) {
                Some(d) => Response { diagnosis: Some(Box::new(d)), message: None, ..Response::ok("") },
                None => unknown(&connection),
            },
            Request::Rekey { connection } => match self.endpoint.rekey_connection(now, &connection) {
                Ok(0) => Response::error(format!("{connection}: no child SA to rekey (down, or a rekey is under way)")),
                Ok(n) => Response::ok(format!("{connection}: rekeying {n} child SA(s)")),
                Err(_) => unknown(&connection),
            },
            Request::Connections => {
                Response { connections: Some(self.connection_views()), message: None, ..Response::ok("") }
            }
            Request::PutConnection { name, connection } => self.put_connection(name, connection).await,
            Request::DeleteConnection { name } => self.delete_connection(&name).await,
        }
    }

    fn connection_views(&self) -> Vec<ConnectionView> {
        let status = self.status();
        self.config
            .connections
            .iter()
            .filter_map(|c| {
                let st = status.connections.iter().find(|s| s.name == c.peer.name)?.clone();
                Some(ConnectionView {
                    name: c.peer.name.clone(),
                    source: if self.api_tables.contains_key(&c.peer.name) { "api" } else { "file" }.into(),
                    configured: crate::diagnose::Configured::of(c),
                    status: st,
                })
            })
            .collect()
    }

    /// Creates or replaces a runtime connection: the configuration file's keys and checks,
    /// applied like a reload of that one connection, then persisted.
    async fn put_connection(&mut self, name: String, body: serde_json::Value) -> Response {
        let invalid = |problems: Vec<ProblemView>| Response {
            problems,
            ..Response::failed(ErrorKind::Invalid, "invalid connection (each problem names its key)")
        };
        if self.config.api.is_none() {
            return Response::error(
                "runtime connections need an [api] section: its state_file keeps them across restarts",
            );
        }
        let file_owned =
            self.config.connections.iter().any(|c| c.peer.name == name) && !self.api_tables.contains_key(&name);
        if file_owned {
            return Response::failed(
                ErrorKind::Conflict,
                format!("{name:?} is defined in the configuration file: change it there"),
            );
        }
        let mut table = match body {
            serde_json::Value::Object(_) => match toml::Value::try_from(&body) {
                Ok(toml::Value::Table(t)) => t,
                _ => {
                    return invalid(vec![ProblemView {
                        key: "connection".into(),
                        value: String::new(),
                        reason: "values must be strings, numbers, booleans, arrays or objects (no null)".into(),
                    }]);
                }
            },
            _ => {
                return invalid(vec![ProblemView {
                    key: "connection".into(),
                    value: String::new(),
                    reason: "must be a JSON object of connection keys".into(),
                }]);
            }
        };
        if table.contains_key("pre_shared_key_file") {
            // Through the API a key file would let a client probe which files root can read.
            return invalid(vec![ProblemView {
                key: "connection.pre_shared_key_file".into(),
                value: String::new(),
                reason: "not taken through the API: send pre_shared_key (write-only); key files belong in the configuration file".into(),
            }]);
        }
        match table.get("name") {
            Some(toml::Value::String(n)) if *n != name => {
                return invalid(vec![ProblemView {
                    key: "connection.name".into(),
                    value: format!("{n:?}"),
                    reason: format!("differs from the name in the path ({name:?})"),
                }]);
            }
            _ => {
                table.insert("name".into(), toml::Value::String(name.clone()));
            }
        }
        let base = self.config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let connection =
            match crate::config::parse_connection(&table, self.config.gateway.public_address, &base, "connection") {
                Ok(c) => c,
                Err(problems) => {
                    return invalid(
                        problems
                            .into_iter()
                            .map(|p| ProblemView { key: p.key, value: p.value, reason: p.reason })
                            .collect(),
                    );
                }
            };
        // The checks across connections of the configuration file.
        if let Some(other) = self.config.connections.iter().find(|c| {
            c.peer.name != name
                && c.peer.remote_address == connection.peer.remote_address
                && c.peer.psk != connection.peer.psk
        }) {
            return invalid(vec![ProblemView {
                key: "connection.pre_shared_key".into(),
                value: String::new(),
                reason: format!(
                    "connection {:?} has the same remote_address but another key; main mode selects the key by address, so they must be equal",
                    other.peer.name
                ),
            }]);
        }
        let created = !self.api_tables.contains_key(&name);
        let mut connections: Vec<Connection> =
            self.config.connections.iter().filter(|c| c.peer.name != name).cloned().collect();
        connections.push(connection);
        let mut tables = self.api_tables.clone();
        tables.insert(name.clone(), table);
        if let Some(api) = &self.config.api
            && let Err(e) = crate::api::save_state(&api.state_file, &tables)
        {
            tracing::error!(file = %api.state_file.display(), error = %e, "cannot save runtime connections");
            return Response::failed(ErrorKind::Internal, format!("cannot save it: {e}"));
        }
        self.api_tables = tables;
        self.apply_connections(connections).await;
        tracing::info!(connection = %name, created, "runtime connection saved");
        Response { created: Some(created), ..Response::ok(format!("{name} saved")) }
    }

    async fn delete_connection(&mut self, name: &str) -> Response {
        if !self.api_tables.contains_key(name) {
            return if self.config.connections.iter().any(|c| c.peer.name == name) {
                Response::failed(
                    ErrorKind::Conflict,
                    format!("{name:?} is defined in the configuration file: remove it there"),
                )
            } else {
                Response::failed(ErrorKind::NotFound, format!("no connection named {name:?}"))
            };
        }
        let mut tables = self.api_tables.clone();
        tables.remove(name);
        if let Some(api) = &self.config.api
            && let Err(e) = crate::api::save_state(&api.state_file, &tables)
        {
            return Response::failed(ErrorKind::Internal, format!("cannot save the change: {e}"));
        }
        self.api_tables = tables;
        let connections = self.config.connections.iter().filter(|c| c.peer.name != name).cloned().collect();
        self.apply_connections(connections).await;
        tracing::info!(connection = %name, "runtime connection deleted");
        Response::ok(format!("{name} deleted"))
    }

    /// SIGHUP: re-read the file. Unchanged connections keep their SAs; removed ones are deleted;
    /// new and changed ones (re)start. An invalid file changes nothing.
    async fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    tracing::error!(problem = %p, "reload refused: configuration invalid");
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused");
                return;
            }
        };
        let (was, now) = (&self.config.gateway, &new.gateway);
        let restart_only: Vec<&str> = [
            ("gateway.public_address", was.public_address != now.public_address),
            ("gateway.control_socket", was.control_socket != now.control_socket),
            ("gateway.tun", was.tun != now.tun),
            ("gateway.tun_mtu", was.tun_mtu != now.tun_mtu),
            ("gateway.path_mtu", was.path_mtu != now.path_mtu),
            ("gateway.workers", was.workers != now.workers),
            ("gateway.worker_cores", was.worker_cores != now.worker_cores),
            ("metrics", self.config.metrics != new.metrics),
            (
                "api.listen, api.state_file",
                self.config.api.as_ref().map(|a| (a.listen, &a.state_file))
                    != new.api.as_ref().map(|a| (a.listen, &a.state_file)),
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !restart_only.is_empty() {
            tracing::warn!(keys = %restart_only.join(", "), "these changes need a restart; other changes applied");
        }
        // A rotated API token takes effect now (the listener itself stays).
        if let (Some(token), Some(api)) = (&self.api_token, &new.api) {
            match token.reload(api) {
                Ok(true) => {
                    tracing::info!(file = %api.token_file.display(), "API token re-read: the new one is in use")
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "API token not re-read: the previous one stays in use"),
            }
        }
        self.config.warnings = new.warnings;
        // Runtime connections stay, unless the file now defines one with the same name.
        let mut connections = new.connections;
        let file_names: Vec<String> = connections.iter().map(|c| c.peer.name.clone()).collect();
        for c in &self.config.connections {
            if self.api_tables.contains_key(&c.peer.name) && !file_names.contains(&c.peer.name) {
                connections.push(c.clone());
            }
        }
        self.api_tables.retain(|n, _| !file_names.contains(n));
        let (kept, removed, added) = self.apply_connections(connections).await;
        tracing::info!(kept, removed_or_changed = removed, added, "configuration reloaded");
    }

    /// Makes `new` the set of connections: unchanged ones keep their SAs; removed and changed
    /// ones are deleted (the peer is told); new and changed ones start. Returns (kept,
    /// removed or changed, added).
    async fn apply_connections(&mut self, new: Vec<Connection>) -> (usize, usize, usize) {
        let now = Instant::now();
        let (mut kept, mut removed, mut added) = (0, 0, 0);
        for old in self.config.connections.clone() {
            let same = new.iter().find(|c| c.peer.name == old.peer.name).is_some_and(|c| c.same_as(&old));
            if same {
                kept += 1;
            } else {
                let _ = self.endpoint.remove_peer(now, &old.peer.name);
                let gone = self.table.remove_connection(&old.peer.name);
                self.ledger.retire(gone);
                self.ready_outbound.retain(|_, e| *e.connection != *old.peer.name);
                self.retries.remove(&old.peer.name);
                removed += 1;
            }
        }
        for c in &new {
            if self.endpoint.peer(&c.peer.name).is_none() {
                let _ = self.endpoint.add_peer(c.peer.clone());
                added += 1;
            }
        }
        // Series of connections that are gone go with them (changed ones keep counting).
        for old in &self.config.connections {
            if !new.iter().any(|c| c.peer.name == old.peer.name) {
                self.ledger.forget(&old.peer.name);
                self.events.remove(&old.peer.name);
                self.failures.remove(&old.peer.name);
            }
        }
        self.config.connections = new;
        for c in self.config.connections.clone() {
            if c.start == Start::Active && !self.endpoint.ike_sas().iter().any(|s| s.peer == c.peer.name) {
                self.initiate(now, &c.peer.name);
            }
        }
        let previous = self.spd.load_full();
        self.spd.store(Arc::new(policies(&self.config, Some(&previous))));
        self.sync_probes();
        if let Err(e) = self.routes.sync(&wanted_routes(&self.config)).await {
            tracing::error!(error = %e, "routes after a configuration change");
        }
        (kept, removed, added)
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let wall = SystemTime::now();
        let at = |t: Instant| unix(wall - now.saturating_duration_since(t));
        let sas = self.endpoint.ike_sas();
        let connections = self
            .config
            .connections
            .iter()
            .map(|c| {
                let p = &c.peer;
                // The newest established IKE SA, else the newest negotiating one.
                let ike = sas.iter().filter(|s| s.peer == p.name).max_by_key(|s| (s.established_at.is_some(), s.id));
                let children: Vec<ChildSaStatus> = sas
                    .iter()
                    .filter(|s| s.peer == p.name)
                    .flat_map(|s| s.children.iter())
                    .map(|ch| {
                        let inb = self.table.inbound(ch.spi_in);
                        let out = self.table.outbound_by_spi(ch.spi_out);
                        ChildSaStatus {
                            spi_in: format!("{:08x}", ch.spi_in),
                            spi_out: format!("{:08x}", ch.spi_out),
                            local_subnet: ch.selectors.local.to_string(),
                            remote_subnet: ch.selectors.remote.to_string(),
                            encryption: ch.encryption.name().into(),
                            authentication: ch.integrity.name().into(),
                            pfs: ch.pfs.map_or("disable".into(), |g| g.name().into()),
                            encapsulation: ch.encapsulation.to_string(),
                            state: ch.state.to_string(),
                            established_at_unix: at(ch.established_at),
                            expires_in_seconds: ch.expires_at.saturating_duration_since(now).as_secs(),
                            rekey_in_seconds: ch.rekey_at.map(|t| t.saturating_duration_since(now).as_secs()),
                            lifetime_kilobytes: ch.lifetime_kilobytes,
                            packets_in: inb.as_ref().map_or(0, |e| e.counters.packets()),
                            bytes_in: inb.as_ref().map_or(0, |e| e.counters.bytes()),
                            packets_out: out.as_ref().map_or(0, |e| e.counters.packets()),
                            bytes_out: out.as_ref().map_or(0, |e| e.counters.bytes()),
                        }
                    })
                    .collect();
                let up = connection_up(&sas, &p.name, p.subnets.len());
                ConnectionStatus {
                    name: p.name.clone(),
                    pre_shared_key: c.psk_source.clone(),
                    remote_address: p.remote_address.to_string(),
                    start: c.start.as_str().into(),
                    mode: p.mode.to_string(),
                    local_id: p.local_id.to_string(),
                    remote_id: p.remote_id.to_string(),
                    state: if up {
                        "up".into()
                    } else if ike.is_some() {
                        "connecting".into()
                    } else {
                        "down".into()
                    },
                    ike_sa: ike.map(|s| IkeSaStatus {
                        state: s.state.as_str().into(),
                        role: s.role.to_string(),
                        local: s.local.to_string(),
                        remote: s.remote.to_string(),
                        encryption: s.encryption.map(|a| a.name().into()),
                        authentication: s.hash.map(|h| h.name().into()),
                        dh_group: s.dh_group.map(|g| g.name().into()),
                        nat_detected: s.nat_detected,
                        established_at_unix: s.established_at.map(at),
                        expires_in_seconds: s.expires_at.map(|t| t.saturating_duration_since(now).as_secs()),
                    }),
                    child_sas: children,
                    last_failure: self.failures.get(&p.name).and_then(VecDeque::front).map(|f| FailureStatus {
                        reason: f.reason.to_string(),
                        detail: f.detail.clone(),
                        at_unix: unix(f.at),
                        count: f.count,
                    }),
                    health: self.probes.get(&p.name).map(|h| h.running.status.borrow().clone()),
                }
            })
            .collect();
        Status {
            gateway: self.config.gateway.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            public_address: self.config.gateway.public_address.to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            dropped: {
                let mut d: std::collections::BTreeMap<String, u64> =
                    self.endpoint.drops().by_reason.iter().map(|(k, v)| (format!("ike_{k}"), *v)).collect();
                if let Some(dp) = &self.dataplane {
                    for r in DropReason::all() {
                        let n: u64 = dp.counters().iter().map(|c| c.dropped(r)).sum();
                        if n > 0 {
                            d.insert(format!("esp_{}", r.as_str()), n);
                        }
                    }
                }
                d
            },
            workers: self
                .dataplane
                .iter()
                .flat_map(|dp| dp.counters())
                .map(|c| WorkerStatus {
                    core: c.core(),
                    packets_out: c.out_packets.load(std::sync::atomic::Ordering::Relaxed),
                    packets_out_link: c.out_link_packets.load(std::sync::atomic::Ordering::Relaxed),
                    packets_in: c.in_packets.load(std::sync::atomic::Ordering::Relaxed),
                    busy_seconds: c.busy_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
                })
                .collect(),
            link_paths: self
                .dataplane
                .iter()
                .flat_map(|dp| dp.link_paths())
                .map(|(peer, hop)| LinkPathStatus {
                    peer: peer.to_string(),
                    device: hop.device,
                    next_hop_mac: crate::link_paths::mac(&hop.destination_mac),
                    mtu: hop.mtu,
                })
                .collect(),
            connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(start: &str, remote_subnets: &str) -> Config {
        let text = format!(
            "[gateway]\npublic_address = \"198.51.100.1\"\n[[connection]]\nname = \"branch\"\n\
             remote_address = \"198.51.100.2\"\npre_shared_key = \"lab-psk-0123456789abcdef\"\n\
             local_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [{remote_subnets}]\nstart = \"{start}\"\n"
        );
        Config::parse(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn queue(spd: &Spd, remote: &str) -> Option<Arc<PendingQueue>> {
        spd.policies().find(|p| p.selectors.remote.to_string() == remote).and_then(|p| p.pending.clone())
    }

    #[test]
    fn a_reload_keeps_the_packets_held_for_an_unchanged_policy() {
        let before = policies(&config("on-traffic", "\"10.2.0.0/24\", \"10.3.0.0/24\""), None);
        let held = queue(&before, "10.2.0.0/24").unwrap();
        held.push(Instant::now(), &[0x45; 20]);
        // The same policy after a reload that dropped the other pair: the same queue, with its
        // packet.
        let after = policies(&config("on-traffic", "\"10.2.0.0/24\""), Some(&before));
        let kept = queue(&after, "10.2.0.0/24").unwrap();
        assert!(Arc::ptr_eq(&held, &kept));
        assert_eq!(kept.len(), 1);
        // A new pair gets a new, empty queue; a connection no longer started by traffic, none.
        let grown = policies(&config("on-traffic", "\"10.2.0.0/24\", \"10.4.0.0/24\""), Some(&after));
        assert!(queue(&grown, "10.4.0.0/24").is_some_and(|q| q.is_empty()));
        let active = policies(&config("active", "\"10.2.0.0/24\""), Some(&after));
        assert!(queue(&active, "10.2.0.0/24").is_none());
        // Without a previous SPD (the start): fresh queues.
        assert!(queue(&policies(&config("on-traffic", "\"10.2.0.0/24\""), None), "10.2.0.0/24").unwrap().is_empty());
    }
}
