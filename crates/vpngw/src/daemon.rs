//! `vpngw run`: the daemon's wiring and its loop. One tokio task owns the IKE engine and drives
//! it (quinn's `ConnectionDriver` shape): receive datagrams, feed them in, send what comes out,
//! sleep until the engine's next timer; commands and signals arrive on the same loop. The
//! operator's surfaces (control socket, management API, metrics) run on a runtime and thread of
//! their own and answer reads from the state the loop publishes after its work (at most every
//! 50 ms, and at once after a command or a reload): a loop kept busy by a flood delays no
//! `vpngw status` and no scrape (`ops/published.rs`). Each job belongs to a small owner (one
//! file each):
//! - [`IkeDriver`]: the engine and its sockets;
//! - [`ChildSaPublisher`]: child SAs into the SA table the dataplane reads, the traffic ledger,
//!   the key log;
//! - [`Retries`], [`SaWatch`] (volume lifetimes, inbound traffic for DPD), [`LinkPathDriver`],
//!   [`Probes`] (health checks), [`ConnectionHistory`] (failures and events),
//!   [`RuntimeConnections`] (the management API's);
//! - the read models in `ops/`.
//!
//! The daemon's own methods are split by job too: `daemon/events.rs` (what the engine's events
//! mean), `daemon/commands.rs` (control requests), `daemon/reload.rs` (SIGHUP and applying a
//! new set of connections), `daemon/wanted.rs` (the policies and routes a set of connections
//! implies).

mod commands;
mod events;
mod ha;
mod reload;
mod wanted;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use vpngw_crypto::FastRng;
use vpngw_dataplane::mss::MssClamp;
use vpngw_dataplane::sa_table::SaTable;
use vpngw_dataplane::spd::Spd;
use vpngw_dataplane::{Dataplane, DataplaneConfig, ToControl};
use vpngw_ike::{Endpoint, EngineConfig, IKE_PORT, NAT_T_PORT};

use crate::child_sas::ChildSaPublisher;
use crate::config::{Config, ConfigError, Connection, EspOutput, Start, TcpMssClamp};
use crate::ha::HaDriver;
use crate::health::Probes;
use crate::history::ConnectionHistory;
use crate::ike_driver::IkeDriver;
use crate::keylog::KeyLog;
use crate::link_paths::LinkPathDriver;
use crate::link_paths::driver::LINK_REFRESH;
use crate::ops::api;
use crate::ops::control::{self, Command};
use crate::ops::metrics::{self, Snapshot};
use crate::ops::published::{self, COMMAND_QUEUE, COMMAND_TIMEOUT, OpsThread, PUBLISH_EVERY, ReadState};
use crate::retry::Retries;
use crate::routes::Routes;
use crate::runtime_connections::RuntimeConnections;
use crate::saved_tunnels;
use crate::state::{ConnectionState, connection_up};
use crate::volume::SaWatch;

/// NAT keepalive interval (RFC 3948 s.4; strongSwan uses 20 s too).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// How often SA byte counters are compared with volume lifetimes.
const LIFECYCLE_TICK: Duration = Duration::from_secs(1);
/// The workers' queue to the control plane (IKE on UDP 4500, acquires, rekey notices): a
/// flood fills it and is dropped there, counted, instead of growing memory without bound.
const CONTROL_QUEUE: usize = 1024;

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
    Api(#[from] api::ApiError),
    #[error("cannot restore tunnels: {0}")]
    SavedTunnels(#[from] saved_tunnels::SavedTunnelsError),
    #[error("cannot start the Diffie-Hellman threads: {0}")]
    DhPool(std::io::Error),
    #[error("cannot start the operator's surfaces' thread: {0}")]
    Ops(std::io::Error),
    #[error("the operator's surfaces' thread failed while starting: {0}")]
    OpsStart(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Ha(#[from] crate::ha::HaError),
}

/// How the daemon was asked to stop (`vpngw stop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// As SIGTERM: every SA deleted, the peers told.
    DeleteTunnels,
    /// The tunnels were saved for the next start, or handed over to the hot-backup partner:
    /// nothing is deleted.
    KeepTunnels,
}

struct Daemon {
    config_path: PathBuf,
    /// Shared with the published read state (copied on change: `Arc::make_mut`).
    config: Arc<Config>,
    ike: IkeDriver,
    /// Results of the Diffie-Hellman pool (none without one).
    dh_results: Option<crate::dh_pool::DhResults>,
    spd: Arc<ArcSwap<Spd>>,
    dataplane: Option<Dataplane>,
    routes: Routes,
    child_sas: ChildSaPublisher,
    history: ConnectionHistory,
    retries: Retries,
    sa_watch: SaWatch,
    /// The link paths as last published (copied again only when they change).
    link_paths_copy: std::cell::RefCell<vpngw_dataplane::LinkPathsCache>,
    probes: Probes,
    runtime: RuntimeConnections,
    link_paths: LinkPathDriver,
    started: Instant,
    stopping: Option<Stop>,
    /// What the surfaces answer reads from (see `ops/published.rs`).
    published: Arc<ArcSwap<ReadState>>,
    /// When `published` was last replaced, and whether the loop has worked since.
    published_at: Instant,
    publish_pending: bool,
    /// Hot backup (`[ha]`); None: this server is alone and always active.
    ha: Option<HaDriver>,
    /// Reloads counted for metrics (`daemon/reload.rs`).
    reloads: metrics::ReloadStats,
}

/// The operator's ways in: their runtime and thread (the servers' tasks run there), and the
/// commands they pass to the loop.
struct Surfaces {
    ops: OpsThread,
    commands: mpsc::Receiver<Command>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

pub async fn run(config_path: &Path, keylog: Option<PathBuf>, restore: Option<PathBuf>) -> Result<(), DaemonError> {
    let (config, api_tables) = load(config_path)?;
    let saved = restore.map(|path| saved_tunnels::read(&path)).transpose()?;
    let (dp_tx, mut from_dataplane) = mpsc::channel::<ToControl>(CONTROL_QUEUE);
    let (mut daemon, mut surfaces) = Daemon::start(config_path, config, api_tables, keylog, dp_tx).await?;
    if let Some(saved) = saved {
        daemon.restore_tunnels(saved);
    }
    let mut signals = Signals {
        term: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
        int: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
        hup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
    };
    daemon.begin().await;
    let mut buf_ike = vec![0u8; 65536];
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let mut link_refresh = tokio::time::interval(LINK_REFRESH);
    link_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lifecycle = tokio::time::interval(LIFECYCLE_TICK);
    let mut ha_poll = tokio::time::interval(crate::ha::presence::POLL);
    ha_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // systemd's watchdog (WatchdogSec=): kept alive by the loop itself, so a hung loop is
    // restarted; never ticks without it.
    let watchdog_every = crate::systemd::watchdog_every();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    daemon.publish();
    crate::systemd::ready(&format!(
        "running: {} connection(s) on {}",
        daemon.config.connections.len(),
        daemon.config.gateway.public_address
    ));
    loop {
        let wake = daemon.next_wake();
        let publish_due = daemon.publish_pending.then(|| daemon.published_at + PUBLISH_EVERY);
        // Commands and reloads publish at once: a read right after their answer sees them.
        let mut publish_now = false;
        tokio::select! {
            () = daemon.ike.receive(&mut buf_ike) => {}
            Some(done) = next_dh_done(&mut daemon.dh_results) => daemon.ike.on_dh_done(done),
            Some(m) = from_dataplane.recv() => daemon.on_dataplane(m),
            () = sleep_until(wake) => {
                let now = Instant::now();
                daemon.ike.endpoint.handle_timeout(now);
                daemon.run_retries(now);
            }
            _ = keepalive.tick() => daemon.ike.send_keepalives(daemon.child_sas.table()).await,
            _ = link_refresh.tick() => daemon.refresh_link_paths().await,
            Some(changed) = daemon.link_paths.next_route_change() => {
                if let Some(dp) = &daemon.dataplane {
                    let (link, public) = (daemon.config.gateway.esp_output == EspOutput::Link, daemon.config.gateway.public_address);
                    daemon.link_paths.on_route_change(&changed, dp, daemon.child_sas.table(), link, public).await;
                }
            }
            _ = lifecycle.tick() => {
                daemon.lifecycle_tick();
                daemon.ha_follow_connections().await;
            }
            _ = ha_poll.tick(), if daemon.ha.is_some() => daemon.ha_tick(),
            _ = watchdog.tick(), if watchdog_every.is_some() => crate::systemd::watchdog(),
            Some(notice) = next_notice(&mut daemon.ha) => daemon.ha_notice(notice),
            () = sleep_until(publish_due) => {}
            Some((request, reply)) = surfaces.commands.recv() => {
                let response = daemon.command(request).await;
                daemon.flush().await;
                daemon.publish();
                let _ = reply.send(response);
                if daemon.stopping.is_some() {
                    break;
                }
                continue;
            }
            _ = signals.term.recv() => {
                // The standby takes the tunnels over instead of the peers losing them.
                if daemon.ha_hand_over(true).await.is_ok() {
                    daemon.stopping = Some(Stop::KeepTunnels);
                }
                break;
            }
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => {
                // Logged and told to systemd either way; nobody waits for an answer.
                let _ = daemon.reload().await;
                publish_now = true;
            }
        }
        daemon.flush().await;
        daemon.publish_pending = true;
        if publish_now || daemon.published_at.elapsed() >= PUBLISH_EVERY {
            daemon.publish();
        }
    }
    daemon.shutdown(surfaces).await;
    Ok(())
}

/// The configuration file, plus the connections created through the API in earlier runs
/// (and their tables as given).
fn load(config_path: &Path) -> Result<(Config, BTreeMap<String, toml::Table>), DaemonError> {
    let mut config = Config::load(config_path)?;
    let mut api_tables = BTreeMap::new();
    if let Some(api) = &config.api {
        let base = config_path.parent().unwrap_or(Path::new("/"));
        let (restored, tables) =
            api::load_state(&api.state_file, config.gateway.public_address, base, &config.connections);
        if !restored.is_empty() {
            tracing::info!(count = restored.len(), file = %api.state_file.display(), "runtime connections restored");
        }
        config.connections.extend(restored);
        api_tables = tables;
    }
    for w in &config.warnings {
        tracing::warn!(key = %w.shown_key(), value = %w.value, "{}", w.reason);
    }
    Ok((config, api_tables))
}

fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        retransmit_initial: config.tuning.retransmit_initial,
        retransmit_tries: config.tuning.retransmit_tries,
        dh_total_per_second: config.tuning.dh_per_second,
        half_open_total: config.tuning.half_open,
        dh_offload: config.tuning.dh_threads > 0,
        ..EngineConfig::default()
    }
}

/// Starts the dataplane's workers on the TUN, reading `table` and `spd`.
fn start_dataplane(
    config: &Config,
    table: Arc<SaTable>,
    spd: Arc<ArcSwap<Spd>>,
    to_control: mpsc::Sender<ToControl>,
) -> Result<Dataplane, DaemonError> {
    // Full: the worker drops and counts it (`control_queue_full`); it never waits.
    let sink: vpngw_dataplane::ControlSink = Arc::new(move |m| to_control.try_send(m).is_ok());
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
            tcp_mss_clamp: match config.gateway.tcp_mss_clamp {
                TcpMssClamp::Off => MssClamp::Off,
                TcpMssClamp::Auto => MssClamp::Auto,
                TcpMssClamp::Fixed(mss) => MssClamp::Fixed(mss),
            },
        },
        table,
        spd,
        sink,
    )?;
    Ok(dataplane)
}

/// Serves the management API (if configured), the control socket and metrics (if configured)
/// on a runtime and thread of their own: reads are answered from `published`, commands sent
/// to the loop (the returned receiver).
async fn serve_surfaces(
    config: &Config,
    published: Arc<ArcSwap<ReadState>>,
) -> Result<(Surfaces, Option<api::ApiToken>), DaemonError> {
    let ops = OpsThread::start().map_err(DaemonError::Ops)?;
    let (to_loop, commands) = mpsc::channel::<Command>(COMMAND_QUEUE);
    let (requests_tx, requests) = mpsc::channel::<Command>(COMMAND_QUEUE);
    ops.handle().spawn(published::route(requests, published.clone(), to_loop, COMMAND_TIMEOUT));
    let token = match &config.api {
        Some(api) => {
            let (api_config, tx) = (api.clone(), requests_tx.clone());
            let (_task, token) = ops.handle().spawn(async move { api::serve(&api_config, tx).await }).await??;
            tracing::info!(listen = %api.listen, "management API at {}://{}/api/v1/", api.scheme(), api.listen);
            Some(token)
        }
        None => None,
    };
    {
        // Bound and spawned on the surfaces' runtime.
        let _on_ops = ops.handle().enter();
        control::serve(&config.gateway.control_socket, requests_tx.clone())?;
    }
    if let Some(addr) = config.metrics.listen {
        let (metrics_tx, scrapes) = mpsc::channel::<oneshot::Sender<Snapshot>>(16);
        ops.handle().spawn(published::scrapes(scrapes, published));
        ops.handle().spawn(async move { metrics::serve(addr, metrics_tx, requests_tx).await }).await??;
        tracing::info!(listen = %addr, "metrics at http://{addr}/metrics; probes at /healthz and /readyz");
    }
    Ok((Surfaces { ops, commands }, token))
}

/// The sync channel's next notice (never, without `[ha]`).
/// The Diffie-Hellman pool's next result (pending forever without a pool).
async fn next_dh_done(results: &mut Option<crate::dh_pool::DhResults>) -> Option<(u64, vpngw_ike::DhDone)> {
    match results {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_notice(ha: &mut Option<HaDriver>) -> Option<vpngw_sync::Notice> {
    match ha {
        Some(ha) => ha.notices.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Binds the IKE sockets, starts the dataplane, the routes into the TUN, the engine with
    /// every configured peer, and the operator's surfaces.
    async fn start(
        config_path: &Path,
        config: Config,
        api_tables: BTreeMap<String, toml::Table>,
        keylog: Option<PathBuf>,
        to_control: mpsc::Sender<ToControl>,
    ) -> Result<(Self, Surfaces), DaemonError> {
        let public = IpAddr::V4(config.gateway.public_address);
        let ike_addr = SocketAddr::new(public, IKE_PORT);
        let sock_ike =
            UdpSocket::bind(ike_addr).await.map_err(|source| DaemonError::Bind { addr: ike_addr, source })?;
        let table = Arc::new(SaTable::new());
        let spd = Arc::new(ArcSwap::from_pointee(wanted::policies(&config, None)));
        let dataplane = start_dataplane(&config, table.clone(), spd.clone(), to_control)?;
        let natt_bind = |source| DaemonError::Bind { addr: SocketAddr::new(public, NAT_T_PORT), source };
        let sock_natt = UdpSocket::from_std(dataplane.ike_socket().map_err(natt_bind)?).map_err(natt_bind)?;
        let mut routes = Routes::new(dataplane.tun_name())?;
        routes.sync(&wanted::wanted_routes(&config)).await?;
        let rng = FastRng::from_os().map_err(|e| DaemonError::Rng(e.to_string()))?;
        let mut endpoint = Endpoint::new(engine_config(&config), rng);
        for c in &config.connections {
            // Names are unique: validated with the configuration.
            let _ = endpoint.add_peer(c.peer.clone());
        }
        let published = Arc::new(ArcSwap::from_pointee(ReadState {
            config: Arc::new(config.clone()),
            ike_sas: Vec::new(),
            ike_drops: Default::default(),
            ike_messages: Default::default(),
            table: table.clone(),
            ledger: Default::default(),
            activity: Default::default(),
            history: ConnectionHistory::default(),
            retries: Default::default(),
            probes: Default::default(),
            workers: Vec::new().into(),
            link_paths: Arc::new([]),
            started: Instant::now(),
            runtime_connections: BTreeSet::new(),
            ha: None,
            reloads: metrics::ReloadStats::started(std::time::SystemTime::now()),
            dh: Default::default(),
            from_loop: false,
        }));
        let (surfaces, api_token) = serve_surfaces(&config, published.clone()).await?;
        let ha = match &config.ha {
            Some(h) => Some(HaDriver::start(h.clone(), config.gateway.public_address, surfaces.ops.handle())?),
            None => None,
        };
        let link_paths = LinkPathDriver::open();
        let mut ike = IkeDriver::new(endpoint, sock_ike, sock_natt, config.gateway.public_address);
        let dh_results = match std::num::NonZeroUsize::new(config.tuning.dh_threads) {
            Some(threads) => {
                let (pool, results) = crate::dh_pool::DhPool::start(threads).map_err(DaemonError::DhPool)?;
                ike.dh_pool = Some(pool);
                Some(results)
            }
            None => None,
        };
        let mut probes = Probes::default();
        probes.sync(&config.connections);
        let daemon = Daemon {
            config_path: config_path.to_path_buf(),
            ike,
            dh_results,
            config: Arc::new(config),
            spd,
            dataplane: Some(dataplane),
            routes,
            child_sas: ChildSaPublisher::new(table, keylog.map(KeyLog::new)),
            history: ConnectionHistory::default(),
            retries: Retries::default(),
            sa_watch: SaWatch::default(),
            link_paths_copy: Default::default(),
            probes,
            runtime: RuntimeConnections::new(api_tables, api_token),
            link_paths,
            started: Instant::now(),
            stopping: None,
            published,
            published_at: Instant::now(),
            publish_pending: true,
            ha,
            reloads: metrics::ReloadStats::started(std::time::SystemTime::now()),
        };
        Ok((daemon, surfaces))
    }

    /// Says the gateway runs, starts the active connections, and follows route changes.
    async fn begin(&mut self) {
        tracing::info!(
            gateway = %self.config.gateway.name,
            public_address = %self.config.gateway.public_address,
            connections = self.config.connections.len(),
            control_socket = %self.config.gateway.control_socket.display(),
            tun = %self.config.gateway.tun,
            "vpngw {} running",
            env!("CARGO_PKG_VERSION")
        );
        let now = Instant::now();
        for c in self.config.connections.clone() {
            if c.start == Start::Active {
                self.initiate(now, &c.peer.name);
            }
        }
        self.flush().await;
        self.link_paths.follow_route_changes();
    }

    /// SIGTERM or SIGINT: every IKE SA deleted (the peers told), then the surfaces and the
    /// dataplane stopped.
    async fn shutdown(mut self, surfaces: Surfaces) {
        crate::systemd::stopping();
        if self.stopping == Some(Stop::KeepTunnels) {
            // Saved: no Delete goes out, and nothing more is sent with the saved SAs.
            tracing::info!("shutting down: the tunnels stay (saved)");
            if let Some(dp) = self.dataplane.take() {
                dp.stop();
            }
        } else {
            tracing::info!("shutting down: deleting SAs");
            let now = Instant::now();
            for name in self.ike.endpoint.peer_names() {
                let _ = self.ike.endpoint.terminate(now, &name);
            }
            self.flush().await;
        }
        if self.stopping.is_some() {
            // The answer to `vpngw stop` is still on its way out of the control socket.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        surfaces.ops.stop();
        self.probes.stop();
        if let Some(dp) = self.dataplane.take() {
            dp.stop();
        }
        let _ = std::fs::remove_file(&self.config.gateway.control_socket);
        tracing::info!("stopped");
    }

    /// Goes on with saved tunnels (`saved_tunnels`), before any connection starts.
    fn restore_tunnels(&mut self, saved: saved_tunnels::SavedTunnels) {
        let restored = saved_tunnels::restore(saved, &mut self.ike.endpoint, &mut self.child_sas);
        for (connection, why) in &restored.refused {
            tracing::warn!(connection, reason = %why, "saved IKE SA not restored: the connection negotiates anew");
        }
        tracing::info!(ike_sas = restored.ike_sas, child_sas = restored.child_sas, "tunnels restored");
    }

    fn next_wake(&self) -> Option<Instant> {
        [self.ike.endpoint.poll_timeout(), self.retries.next()].into_iter().flatten().min()
    }

    /// Whether this server negotiates: alone, or the active one of a hot-backup pair.
    fn negotiates(&self) -> bool {
        self.ha.as_ref().is_none_or(HaDriver::is_active)
    }

    fn initiate(&mut self, now: Instant, name: &str) {
        if !self.negotiates() {
            return; // the active server does
        }
        if let Err(e) = self.ike.endpoint.initiate(now, name) {
            tracing::warn!(connection = name, error = %e, "cannot initiate");
        }
    }

    fn connection(&self, name: &str) -> Option<&Connection> {
        self.config.connections.iter().find(|c| c.peer.name == name)
    }

    fn run_retries(&mut self, now: Instant) {
        for name in self.retries.take_due(now) {
            let Some(subnet_pairs) =
                self.connection(&name).filter(|c| c.start == Start::Active).map(|c| c.peer.subnets.len())
            else {
                continue;
            };
            // A retry scheduled by an event that did not take the connection down (an IKE SA
            // that expired after another took over its child SAs) has nothing to do.
            if connection_up(&self.ike.endpoint.ike_sa_infos(), &name, subnet_pairs) {
                self.retries.cancel(&name);
                continue;
            }
            tracing::info!(connection = %name, "retrying");
            self.initiate(now, &name);
        }
    }

    /// Every active connection that is down has its next attempt scheduled, whatever took it
    /// down (an exchange dropped without a failure, a lost event): the engine's events schedule
    /// retries, and this makes sure none is missed.
    fn ensure_attempts(&mut self, now: Instant) {
        if !self.negotiates() {
            return;
        }
        let sas = self.ike.endpoint.ike_sa_infos();
        for c in self.config.connections.iter().filter(|c| c.start == Start::Active) {
            let name = &c.peer.name;
            if ConnectionState::of(&sas, name, c.peer.subnets.len()) == ConnectionState::Down
                && self.retries.ensure(name, now)
            {
                tracing::info!(connection = %name, "down with no attempt scheduled: retry scheduled");
            }
        }
    }

    /// Schedules a retry if the connection is active (started by this side).
    fn schedule_retry(&mut self, name: &str) {
        if self.connection(name).is_some_and(|c| c.start == Start::Active) {
            self.retries.schedule(name, Instant::now());
        }
    }

    /// Once a second: SA counters against the engine (DPD, volume lifetimes), the ledger, and
    /// held packets.
    fn lifecycle_tick(&mut self) {
        let now = Instant::now();
        self.history.tick(now);
        self.sa_watch.tick(&mut self.ike.endpoint, self.child_sas.table(), now);
        self.ensure_attempts(now);
        self.child_sas.settle();
        // A packet held by a worker that still saw the table from before an SA arrived
        // would otherwise wait for the next SA: look again every second.
        if let Some(dp) = &self.dataplane {
            dp.release_pending();
        }
    }

    async fn refresh_link_paths(&mut self) {
        let Some(dp) = &self.dataplane else { return };
        let (link, public) = (self.config.gateway.esp_output == EspOutput::Link, self.config.gateway.public_address);
        self.link_paths.refresh(dp, self.child_sas.table(), link, public).await;
    }

    /// What the read models are computed from, now (see `ops/published.rs`).
    fn read_state(&self) -> ReadState {
        let (table, ledger) = self.child_sas.shared();
        ReadState {
            config: self.config.clone(),
            ike_sas: self.ike.endpoint.ike_sa_infos(),
            ike_drops: {
                let mut drops = self.ike.endpoint.drops().clone();
                if self.ike.receive_buffer_full() > 0 {
                    drops.by_reason.insert("receive_buffer_full", self.ike.receive_buffer_full());
                }
                drops
            },
            ike_messages: self.ike.endpoint.messages().clone(),
            table,
            ledger,
            activity: self.sa_watch.activity(),
            history: self.history.clone(),
            retries: self.retries.clone(),
            probes: self.probes.view(),
            workers: self.dataplane.as_ref().map_or_else(|| Vec::new().into(), |dp| dp.shared_counters()),
            link_paths: match &self.dataplane {
                Some(dp) => dp.link_paths_cached(&mut self.link_paths_copy.borrow_mut()),
                None => Arc::new([]),
            },
            started: self.started,
            runtime_connections: self.runtime.names(),
            ha: self.ha.as_ref().map(HaDriver::view),
            reloads: self.reloads,
            dh: self.ike.dh_stats(),
            from_loop: true,
        }
    }

    /// Replaces the state the surfaces answer reads from.
    fn publish(&mut self) {
        self.published.store(Arc::new(self.read_state()));
        self.published_at = Instant::now();
        self.publish_pending = false;
    }
}
