//! The operator's surfaces: the control socket (`vpngw status`, `up`, ...), the management
//! API, Prometheus metrics, and the read models they show. The read models (`status::build`,
//! `metrics::snapshot`, `diagnose::for_connection`) are pure functions over [`Sources`], a
//! borrowed view of the state the daemon loop last published ([`published::ReadState`]); none
//! of them changes anything or derives from another. The surfaces run on a runtime and a
//! thread of their own and answer reads without waiting for the loop (see [`published`]).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vpngw_dataplane::counters::WorkerCounters;
use vpngw_dataplane::link::NextHop;
use vpngw_dataplane::sa_table::SaTable;
use vpngw_ike::{DropCounters, IkeSaInfo};

use crate::config::{Config, Connection};
use crate::health::ProbeView;
use crate::history::ConnectionHistory;

pub mod api;
pub mod check;
pub mod control;
pub mod diagnose;
pub mod host_check;
pub mod metrics;
pub mod peer_config;
pub mod probes;
pub mod published;
pub mod select;
pub mod status;

/// What the read models are built from: the daemon loop's last published state, read now.
pub struct Sources<'a> {
    pub now: Instant,
    pub wall: SystemTime,
    pub config: &'a Config,
    /// The engine's IKE SAs and their child SAs (`Endpoint::ike_sa_infos`) by connection
    /// ([`IkeSaIndex`]): a status of thousands of connections must not scan every IKE SA for
    /// each.
    pub by_connection: &'a IkeSaIndex<'a>,
    pub ike_drops: &'a DropCounters,
    /// The SAs the dataplane uses, with their counters.
    pub table: &'a SaTable,
    /// When each child SA last carried a packet each way.
    pub activity: &'a crate::volume::SaActivity,
    pub history: &'a ConnectionHistory,
    /// The retries scheduled for active connections that are down.
    pub retries: &'a crate::retry::Retries,
    pub probes: &'a ProbeView,
    /// The dataplane's workers' counters (none once it stopped).
    pub workers: &'a [WorkerCounters],
    /// Peers whose raw ESP takes the link path, and through what.
    pub link_paths: &'a [(Ipv4Addr, NextHop)],
    pub uptime: Duration,
    /// Hot backup (None without `[ha]`).
    pub ha: Option<&'a crate::ha::HaView>,
}

/// The IKE SAs of each connection, in the engine's order.
#[derive(Default)]
pub struct IkeSaIndex<'a>(std::collections::HashMap<&'a str, Vec<&'a IkeSaInfo>>);

impl<'a> IkeSaIndex<'a> {
    pub fn new(sas: &'a [std::sync::Arc<IkeSaInfo>]) -> Self {
        let mut index: std::collections::HashMap<&'a str, Vec<&'a IkeSaInfo>> = std::collections::HashMap::new();
        for sa in sas {
            index.entry(sa.peer.as_str()).or_default().push(sa);
        }
        Self(index)
    }

    /// The IKE SAs of connection `name` (none: empty).
    pub fn of(&self, name: &str) -> &[&'a IkeSaInfo] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }
}

impl Sources<'_> {
    /// The configured connection named `name`.
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.config.connections.iter().find(|c| c.peer.name == name)
    }

    /// Unix time of a moment of the monotonic clock (in the past).
    pub fn unix_at(&self, t: Instant) -> u64 {
        unix(self.wall - self.now.saturating_duration_since(t))
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
