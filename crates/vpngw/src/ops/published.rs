//! The operator's surfaces, served off the daemon's loop.
//!
//! The loop publishes what the read models are computed from ([`ReadState`]) through an
//! `ArcSwap` after its work, at most every [`PUBLISH_EVERY`] and at once after a command
//! (`daemon.rs`). The control socket, the management API and metrics run on a runtime of their
//! own, on a thread of its own ([`OpsThread`]); [`route`] answers their reads (status,
//! diagnose, the connection list, scrapes) from the latest published state, so a loop kept
//! busy by a flood of IKE datagrams does not delay them. Commands that change state (up,
//! down, rekey, runtime connections, stop) still go to the loop, over a bounded channel; a
//! loop that does not answer within the timeout gets an error answer, never a hang.
//!
//! Counters that move without the loop keep moving in a published state: the SA table's
//! and the workers' counters are read live (atomics), the health probes' statuses through
//! their `watch` receivers, and the traffic ledger is shared behind a mutex held only for a
//! table operation (`child_sas.rs`). What the loop alone changes (IKE SAs, history,
//! configuration, link paths) is at most one publication old.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use vpngw_dataplane::counters::WorkerCounters;
use vpngw_dataplane::link::NextHop;
use vpngw_dataplane::sa_table::SaTable;
use vpngw_ike::{DropCounters, IkeSaInfo, MessageCounters};

use super::control::{Command, ConnectionView, ErrorKind, Request, Response};
use super::metrics::{self, Snapshot};
use super::select::{Page, Selection, select};
use super::{Sources, diagnose, peer_config, status};
use crate::config::Config;
use crate::health::ProbeView;
use crate::history::ConnectionHistory;
use crate::ledger::Ledger;

/// The loop publishes at most this often while it works (and at once after a command).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// How long a command may wait for the loop before the surfaces answer with an error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands waiting for the loop (the control socket's and the API's together).
pub const COMMAND_QUEUE: usize = 64;

/// What the read models are built from, owned, as the loop last published it.
pub struct ReadState {
    pub config: Arc<Config>,
    /// Shared snapshots (the engine keeps them current; no copy per publication).
    pub ike_sas: Vec<Arc<IkeSaInfo>>,
    pub ike_drops: DropCounters,
    /// IKE messages by exchange type (the engine's counters, as of the publication).
    pub ike_messages: MessageCounters,
    /// Live: the dataplane's table, with the SAs' counters.
    pub table: Arc<SaTable>,
    /// Live: traffic of the SAs gone from the table (shared with the loop).
    pub ledger: Arc<Mutex<Ledger>>,
    /// When each child SA last carried a packet each way (the loop's last lifecycle tick).
    pub activity: Arc<crate::volume::SaActivity>,
    pub history: ConnectionHistory,
    /// When each active connection that is down tries again.
    pub retries: crate::retry::Retries,
    /// Live: each prober's latest status.
    pub probes: ProbeView,
    /// Live: the workers' counters (none without a dataplane).
    pub workers: Arc<[WorkerCounters]>,
    pub link_paths: Arc<[(Ipv4Addr, NextHop)]>,
    pub started: Instant,
    /// The connections created through the management API (the others are the file's).
    pub runtime_connections: BTreeSet<String>,
    /// Hot backup's view (None without `[ha]`).
    pub ha: Option<crate::ha::HaView>,
    /// Configuration reloads, counted by the loop (`Daemon::reload`).
    pub reloads: metrics::ReloadStats,
    /// The Diffie-Hellman pool's counters, as of the publication.
    pub dh: metrics::DhStats,
    /// Published by the loop; false for the placeholder the surfaces start with, before the
    /// loop has restored tunnels and started connections (reads then go to the loop, as
    /// commands do, and wait for it).
    pub from_loop: bool,
}

impl ReadState {
    /// The read models' view now.
    pub fn read<R>(&self, build: impl FnOnce(&Sources) -> R) -> R {
        let by_connection = super::IkeSaIndex::new(&self.ike_sas);
        build(&Sources {
            now: Instant::now(),
            wall: SystemTime::now(),
            config: &self.config,
            by_connection: &by_connection,
            ike_drops: &self.ike_drops,
            table: &self.table,
            activity: &self.activity,
            history: &self.history,
            retries: &self.retries,
            probes: &self.probes,
            workers: &self.workers,
            link_paths: &self.link_paths,
            uptime: self.started.elapsed(),
            ha: self.ha.as_ref(),
        })
    }

    /// What a Prometheus scrape reports (the ledger settled first, as the loop did).
    pub fn metrics(&self) -> Snapshot {
        let traffic = {
            let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
            ledger.settle();
            ledger.traffic(&self.table)
        };
        let mut snapshot = self.read(|s| metrics::snapshot(s, &traffic, self.reloads, &self.ike_messages));
        snapshot.dh = self.dh;
        snapshot
    }

    /// The answer to a read request (status, diagnose, the connection list, a peer's
    /// configuration); None for a command.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        Some(match request {
            Request::Status { connection, selection } => {
                let mut selection = selection.clone();
                if let Some(name) = connection {
                    if !self.config.connections.iter().any(|c| c.peer.name == *name) {
                        return Some(Response::failed(ErrorKind::NotFound, format!("no connection named {name:?}")));
                    }
                    selection.exact = Some(name.clone());
                }
                let status = self.read(|s| status::build(s, &selection));
                Response { status: Some(status), message: None, ..Response::ok("") }
            }
            Request::Diagnose { connection } => match self.read(|s| diagnose::for_connection(s, connection)) {
                Some(diagnosis) => Response { diagnosis: Some(Box::new(diagnosis)), message: None, ..Response::ok("") },
                None => Response::failed(ErrorKind::NotFound, format!("no connection named {connection:?}")),
            },
            Request::Connections { selection } => {
                let (views, page) = self.connection_views(selection);
                Response { connections: Some(views), page: Some(page), message: None, ..Response::ok("") }
            }
            Request::PeerConfig { connection, format, include_key } => {
                let Some(c) = self.config.connections.iter().find(|c| c.peer.name == *connection) else {
                    return Some(Response::failed(ErrorKind::NotFound, format!("no connection named {connection:?}")));
                };
                // A key handed out was logged where the request came in (`control::log_action`).
                match peer_config::render(c, *format, *include_key, SystemTime::now()) {
                    Ok(text) => Response { peer_config: Some(text), message: None, ..Response::ok("") },
                    Err(e) => Response::failed(ErrorKind::Invalid, e.to_string()),
                }
            }
            Request::Ready => match self.readiness() {
                Ok(why) => Response::ok(why),
                Err(why) => Response::error(why),
            },
            _ => return None,
        })
    }

    /// `/readyz`: whether this server should be given traffic, and why (not).
    /// The loop has published (configuration loaded, tunnels restored, connections started),
    /// the dataplane's workers run, and with `[ha]` the role is known: the active is ready, the
    /// standby once it is in sync (a takeover then keeps every tunnel), a fault never.
    pub fn readiness(&self) -> Result<String, String> {
        if !self.from_loop {
            return Err("not ready: starting".into());
        }
        if self.workers.is_empty() {
            return Err("not ready: the dataplane is not running".into());
        }
        let Some(ha) = &self.ha else {
            return Ok(format!("ready: {} connection(s)", self.config.connections.len()));
        };
        match ha.role.as_str() {
            "active" => Ok("ready: hot-backup active".into()),
            "standby" if ha.in_sync => Ok("ready: hot-backup standby, in sync".into()),
            "standby" if ha.partner_connected => Err("not ready: hot-backup standby, not yet in sync".into()),
            "standby" => Err("not ready: hot-backup standby, no active partner connected".into()),
            role => Err(format!("not ready: hot-backup role {role}")),
        }
    }

    /// The views of the connections `selection` picks (only those are built), in name order.
    fn connection_views(&self, selection: &Selection) -> (Vec<ConnectionView>, Page) {
        self.read(|s| {
            let (picked, page) =
                select(&s.config.connections, |c| c.peer.name.as_str(), |c| status::state(s, c), selection);
            let views = picked
                .into_iter()
                .map(|c| ConnectionView {
                    name: c.peer.name.clone(),
                    source: if self.runtime_connections.contains(&c.peer.name) { "api" } else { "file" }.into(),
                    configured: diagnose::Configured::of(c),
                    status: status::connection(s, c),
                })
                .collect();
            (views, page)
        })
    }
}

/// Answers the control socket's and the API's requests: reads from the latest published
/// state, commands by the loop (through `to_loop`) within `timeout`. Ends when every sender
/// of `requests` is gone.
pub async fn route(
    mut requests: mpsc::Receiver<Command>,
    published: Arc<ArcSwap<ReadState>>,
    to_loop: mpsc::Sender<Command>,
    timeout: Duration,
) {
    while let Some((request, reply)) = requests.recv().await {
        let state = published.load();
        if state.from_loop
            && let Some(answer) = state.answer(&request)
        {
            let _ = reply.send(answer);
            continue;
        }
        // One task per command: a command waiting for the loop holds up no read.
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let _ = reply.send(forward(&to_loop, request, timeout).await);
        });
    }
}

/// A command to the loop and its answer, or an error answer once `timeout` has passed.
pub async fn forward(to_loop: &mpsc::Sender<Command>, request: Request, timeout: Duration) -> Response {
    let deadline = tokio::time::Instant::now() + timeout;
    let busy = || {
        tracing::warn!(timeout_ms = timeout.as_millis() as u64, "the daemon's loop did not take a command in time");
        Response::error(format!(
            "the daemon did not answer within {} ms (busy); the command may still take effect",
            timeout.as_millis()
        ))
    };
    let (tx, rx) = oneshot::channel();
    match tokio::time::timeout_at(deadline, to_loop.send((request, tx))).await {
        Err(_) => return busy(),
        Ok(Err(_)) => return Response::error("daemon is shutting down"),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Err(_) => busy(),
        Ok(Err(_)) => Response::error("daemon is shutting down"),
        Ok(Ok(answer)) => answer,
    }
}

/// Answers metrics scrapes from the latest published state. Ends when `scrapes` closes.
pub async fn scrapes(mut scrapes: mpsc::Receiver<oneshot::Sender<Snapshot>>, published: Arc<ArcSwap<ReadState>>) {
    while let Some(reply) = scrapes.recv().await {
        let _ = reply.send(published.load().metrics());
    }
}

/// The surfaces' runtime (current-thread) on a thread of its own: stopped, and everything
/// on it dropped, by [`OpsThread::stop`] or when dropped.
pub struct OpsThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpsThread {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("vpngw-ops".into()).spawn(move || {
            let _ = runtime.block_on(stopped);
            // Dropping the runtime cancels the servers' tasks and closes their sockets.
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where the surfaces' tasks are spawned (and their sockets registered: enter it).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OpsThread {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::ops::control;

    // One connection, `branch-1`: the configuration tests' smallest valid file.
    use crate::config::tests::MINIMAL as CONFIG;

    fn state(config: &str) -> ReadState {
        ReadState {
            config: Arc::new(Config::parse(config, Path::new(".")).unwrap()),
            ike_sas: Vec::new(),
            ike_drops: DropCounters::default(),
            ike_messages: MessageCounters::default(),
            table: Arc::new(SaTable::new()),
            ledger: Arc::default(),
            activity: Arc::default(),
            history: ConnectionHistory::default(),
            retries: Default::default(),
            probes: ProbeView::default(),
            workers: Vec::new().into(),
            link_paths: Arc::new([]),
            started: Instant::now(),
            runtime_connections: BTreeSet::new(),
            ha: None,
            reloads: Default::default(),
            dh: Default::default(),
            from_loop: true,
        }
    }

    /// `n` connections named `branch-NNN`, written in reverse name order (the answers' order
    /// is the names', not the file's), each with subnets of its own.
    fn many(n: usize) -> String {
        let mut text = String::from("[gateway]\npublic_address = \"198.51.100.1\"\n");
        for i in (0..n).rev() {
            text.push_str(&format!(
                "[[connection]]\nname = \"branch-{i:03}\"\nremote_address = \"203.0.113.{}\"\n\
                 pre_shared_key = \"lab-psk-0123456789abcdef\"\nlocal_subnets = [\"10.1.{i}.0/24\"]\n\
                 remote_subnets = [\"10.2.{i}.0/24\"]\n",
                i + 2
            ));
        }
        text
    }

    /// Status and the connection list answer the page the selection asks for, with the
    /// counts of everything that matched and the cursor to the next page; `status NAME` still
    /// answers that one or "not found".
    #[test]
    fn reads_filter_and_page_in_the_daemon() {
        use crate::ops::select::{NamePattern, StateCounts};
        use crate::state::ConnectionState;
        let s = state(&many(25));
        let names = |r: &Response| -> Vec<String> {
            match (&r.status, &r.connections) {
                (Some(st), _) => st.connections.iter().map(|c| c.name.clone()).collect(),
                (None, Some(views)) => views.iter().map(|c| c.name.clone()).collect(),
                (None, None) => panic!("no listing: {r:?}"),
            }
        };
        let status = |selection: Selection| s.answer(&Request::Status { connection: None, selection }).unwrap();
        let list = |selection: Selection| s.answer(&Request::Connections { selection }).unwrap();

        // Unfiltered: every one, in name order, counted.
        let all = status(Selection::default());
        assert_eq!(names(&all).len(), 25);
        assert_eq!(names(&all)[..2], ["branch-000", "branch-001"]);
        let page = all.status.as_ref().unwrap().page.clone().unwrap();
        assert_eq!(
            (page.matched, page.by_state, page.next_after),
            (25, StateCounts { down: 25, ..StateCounts::default() }, None)
        );

        // Pages of 10 through both reads: the same names, the same cursors, then the end.
        let mut after = None;
        let mut seen = Vec::new();
        for want_next in [Some("branch-009"), Some("branch-019"), None] {
            let selection = Selection { limit: Some(10), after: after.clone(), ..Selection::default() };
            let (st, ls) = (status(selection.clone()), list(selection));
            assert_eq!(names(&st), names(&ls));
            seen.extend(names(&ls));
            let (sp, lp) = (st.status.unwrap().page.unwrap(), ls.page.unwrap());
            assert_eq!(sp, lp);
            assert_eq!((sp.matched, sp.next_after.as_deref()), (25, want_next));
            after = sp.next_after;
        }
        assert_eq!(seen, names(&all), "the pages, end to end, are the whole list once");

        // A glob and a state; nothing matching is an empty answer, not an error.
        let glob = |p: &str| Some(NamePattern::parse(p).unwrap());
        let ones = list(Selection { name: glob("branch-?1?"), ..Selection::default() });
        assert_eq!(names(&ones), (10..20).map(|i| format!("branch-{i:03}")).collect::<Vec<_>>());
        let up = list(Selection { states: vec![ConnectionState::Up], ..Selection::default() });
        assert!(up.ok && names(&up).is_empty() && up.page.unwrap().matched == 0);
        // limit 0: the counts alone.
        let counted = status(Selection { limit: Some(0), name: glob("branch-02*"), ..Selection::default() });
        let st = counted.status.unwrap();
        assert!(st.connections.is_empty());
        assert_eq!(st.page.map(|p| (p.matched, p.next_after)), Some((5, None)));

        // status NAME: that one (exit 3's "not found" when none).
        let one = s.answer(&Request::Status { connection: Some("branch-007".into()), selection: Selection::default() });
        assert_eq!(names(&one.unwrap()), ["branch-007"]);
        let none = s.answer(&Request::Status { connection: Some("branch-*".into()), selection: Selection::default() });
        assert_eq!(none.unwrap().kind, Some(ErrorKind::NotFound));
        assert_eq!(names(&list(Selection::exactly("branch-024"))), ["branch-024"]);
    }

    /// The surfaces as the daemon wires them: the router and the control socket on their own
    /// runtime and thread; `to_loop` is the loop's end of the command channel.
    struct Surfaces {
        ops: Option<OpsThread>,
        socket: PathBuf,
        published: Arc<ArcSwap<ReadState>>,
        client: tokio::runtime::Runtime,
    }

    impl Surfaces {
        fn start(name: &str, to_loop: mpsc::Sender<Command>, timeout: Duration) -> Self {
            let ops = OpsThread::start().unwrap();
            let published = Arc::new(ArcSwap::from_pointee(state(CONFIG)));
            let (requests_tx, requests) = mpsc::channel(COMMAND_QUEUE);
            ops.handle().spawn(route(requests, published.clone(), to_loop, timeout));
            let socket = std::env::temp_dir().join(format!("vpngw-published-{name}-{}.sock", std::process::id()));
            {
                let _on_ops = ops.handle().enter();
                control::serve(&socket, requests_tx).unwrap();
            }
            let client = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            Self { ops: Some(ops), socket, published, client }
        }

        fn request(&self, request: Request) -> (Response, Duration) {
            let t = Instant::now();
            let r = self.client.block_on(control::request(&self.socket, &request)).unwrap();
            (r, t.elapsed())
        }
    }

    impl Drop for Surfaces {
        fn drop(&mut self) {
            if let Some(ops) = self.ops.take() {
                ops.stop();
            }
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    /// The loop is busy (here: a thread that takes one command and then works for seconds, as
    /// under a flood, never reading the next): every read through the control socket is still
    /// answered within 100 ms, and a command gets an error answer once its timeout has passed,
    /// not a hang.
    #[test]
    fn readiness_needs_the_loop_the_dataplane_and_with_hot_backup_a_known_role_in_sync() {
        let mut s = state(CONFIG);
        s.workers = vec![vpngw_dataplane::counters::WorkerCounters::default()].into();
        assert_eq!(s.readiness(), Ok("ready: 1 connection(s)".to_string()));

        let placeholder = ReadState { from_loop: false, ..state(CONFIG) };
        assert!(placeholder.readiness().unwrap_err().contains("starting"));
        let no_dataplane = state(CONFIG);
        assert!(no_dataplane.readiness().unwrap_err().contains("dataplane"));

        let view = |role: &str, connected: bool, in_sync: bool| crate::ha::HaView {
            node: "a".into(),
            partner: "b".into(),
            partner_address: "192.0.2.2:9722".into(),
            role: role.into(),
            epoch: 1,
            keepalived: None,
            partner_connected: connected,
            partner_role: None,
            in_sync,
            lag_ms: None,
            records: 0,
            messages_sent: 0,
            messages_received: 0,
            bytes_sent: 0,
            bytes_received: 0,
            auth_failures: 0,
            rejected_frames: 0,
            stale_refused: 0,
            records_refused: 0,
            bulk_syncs: 0,
            last_bulk_ms: None,
            takeovers: 0,
            last_takeover: None,
        };
        for (role, connected, in_sync, ready) in [
            ("active", false, false, true),
            ("active", true, true, true),
            ("standby", true, true, true),
            ("standby", true, false, false),
            ("standby", false, false, false),
            ("fault", true, true, false),
        ] {
            s.ha = Some(view(role, connected, in_sync));
            assert_eq!(
                s.readiness().is_ok(),
                ready,
                "{role} connected={connected} in_sync={in_sync}: {:?}",
                s.readiness()
            );
        }
    }

    #[test]
    fn reads_are_answered_while_the_loop_is_busy_and_commands_time_out() {
        let (to_loop, mut commands) = mpsc::channel::<Command>(COMMAND_QUEUE);
        let busy = std::thread::spawn(move || {
            // Takes the first command and works on it for 3 s without answering.
            let first = commands.blocking_recv();
            std::thread::sleep(Duration::from_secs(3));
            drop((first, commands));
        });
        let s = Surfaces::start("busy", to_loop, Duration::from_millis(300));
        let (r, took) = s.request(Request::Up { connection: "branch-1".into() });
        assert!(!r.ok, "{r:?}");
        assert!(r.error.as_deref().unwrap_or_default().contains("did not answer within 300 ms"), "{r:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
        let mut worst = Duration::ZERO;
        for i in 0..60 {
            let (r, took) = match i % 3 {
                0 => s.request(Request::Status { connection: None, selection: Selection::default() }),
                1 => s.request(Request::Diagnose { connection: "branch-1".into() }),
                _ => s.request(Request::Connections { selection: Selection::default() }),
            };
            assert!(r.ok, "{r:?}");
            assert!(r.status.is_some() || r.diagnosis.is_some() || r.connections.is_some(), "{r:?}");
            worst = worst.max(took);
        }
        eprintln!("slowest of 60 reads while the loop was busy: {worst:?}");
        assert!(worst < Duration::from_millis(100), "{worst:?}");
        assert!(!busy.is_finished(), "the loop was busy throughout");
        let (r, _) = s.request(Request::Diagnose { connection: "nope".into() });
        assert_eq!(r.kind, Some(ErrorKind::NotFound));
        busy.join().unwrap();
    }

    /// Commands reach the loop and come back with its answer; reads show what was published
    /// last (and go to the loop before it published anything).
    #[test]
    fn commands_go_to_the_loop_and_reads_follow_what_it_publishes() {
        let (to_loop, mut commands) = mpsc::channel::<Command>(COMMAND_QUEUE);
        let looping = std::thread::spawn(move || {
            while let Some((request, reply)) = commands.blocking_recv() {
                let _ = reply.send(Response::ok(format!("loop got {request:?}")));
            }
        });
        let s = Surfaces::start("loop", to_loop, COMMAND_TIMEOUT);
        let (r, _) = s.request(Request::Rekey { connection: "branch-1".into(), ike: false });
        assert_eq!(r.message.as_deref(), Some("loop got Rekey { connection: \"branch-1\", ike: false }"));
        let names = |r: Response| r.status.unwrap().connections.into_iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(
            names(s.request(Request::Status { connection: None, selection: Selection::default() }).0),
            ["branch-1"]
        );
        s.published.store(Arc::new(state(&CONFIG.replace("branch-1", "branch-2"))));
        assert_eq!(
            names(s.request(Request::Status { connection: None, selection: Selection::default() }).0),
            ["branch-2"]
        );
        // Before the loop's first publication, reads wait for the loop too.
        s.published.store(Arc::new(ReadState { from_loop: false, ..state(CONFIG) }));
        assert_eq!(
            s.request(Request::Status { connection: None, selection: Selection::default() }).0.message.as_deref(),
            Some(
                "loop got Status { connection: None, selection: Selection { states: [], name: None, exact: None, after: None, limit: None } }"
            )
        );
        drop(s);
        looping.join().unwrap();
    }
}
