//! Drives the link path for the daemon: every LINK_REFRESH (and at once, at most every
//! ROUTE_CHANGE_REFRESH, after an announced route change) resolves the peers reached by raw
//! ESP and publishes their next hops to the dataplane.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpngw_dataplane::Dataplane;
use vpngw_dataplane::sa_table::{Outbound, SaTable};

use super::resolver::{LinkPathResolver, ROUTE_RECHECK, ROUTE_RECHECK_FOLLOWING};
use super::route_changes::{Changed, RouteChanges};

/// How often raw ESP's link path is resolved again: also how long a peer whose neighbour entry
/// went stale stays on the raw IP socket while the kernel verifies it again.
pub const LINK_REFRESH: Duration = Duration::from_millis(500);
/// How often a route change at most makes the link paths be resolved at once.
const ROUTE_CHANGE_REFRESH: Duration = Duration::from_millis(100);

pub struct LinkPathDriver {
    /// Resolves raw ESP's link path per peer (None: netlink unavailable, IP socket only).
    resolver: Option<LinkPathResolver>,
    /// Route and rule changes, followed at once (and routes looked up again by age every
    /// ROUTE_RECHECK_FOLLOWING); without them, within ROUTE_RECHECK.
    route_changes: Option<RouteChanges>,
    /// Peers whose link-path socket failed to open (logged once).
    failed: BTreeSet<Ipv4Addr>,
    /// When a route change last made the link paths be resolved at once.
    route_change_refresh: Option<Instant>,
    /// The raw-ESP peers of the outbound table last looked at, with that table (held, so that a
    /// new table cannot come at its address): at thousands of tunnels, collecting them twice a
    /// second from an unchanged table was a good part of an idle gateway's CPU.
    peers_of: Option<(Arc<Outbound>, BTreeSet<Ipv4Addr>)>,
}

impl LinkPathDriver {
    /// Opens the netlink connection; without it raw ESP takes the IP socket (logged).
    pub fn open() -> Self {
        let resolver = LinkPathResolver::new()
            .inspect_err(|e| tracing::warn!(error = %e, "no link path for raw ESP (the raw IP socket carries it)"))
            .ok();
        Self { resolver, route_changes: None, failed: BTreeSet::new(), route_change_refresh: None, peers_of: None }
    }

    /// Starts following the kernel's route announcements (with a resolver only); without them,
    /// routes are looked up again every ROUTE_RECHECK (logged).
    pub fn follow_route_changes(&mut self) {
        if self.resolver.is_none() {
            return;
        }
        self.route_changes = RouteChanges::open()
            .inspect_err(|e| {
                tracing::warn!(
                    error = %e,
                    "cannot follow route changes as the kernel announces them: raw ESP's link path looks routes up again every {}s",
                    ROUTE_RECHECK.as_secs()
                )
            })
            .ok();
    }

    /// The next route change, or never without announcements. When the announcements stop,
    /// says so and waits for none any more.
    pub async fn next_route_change(&mut self) -> Option<Changed> {
        let Some(changes) = &mut self.route_changes else { return std::future::pending().await };
        let changed = changes.next().await;
        if changed.is_none() {
            tracing::warn!(
                "route change announcements stopped: raw ESP's link path looks routes up again every {}s",
                ROUTE_RECHECK.as_secs()
            );
            self.route_changes = None;
        }
        changed
    }

    /// Resolves the link path of every peer reached by raw ESP (see `link_paths`) and
    /// publishes the outcome to the dataplane; with `gateway.esp_output = "ip"` (`link` false),
    /// publishes none.
    pub async fn refresh(&mut self, dp: &Dataplane, table: &SaTable, link: bool, public: Ipv4Addr) {
        if link {
            let outbound = arc_swap::Guard::into_inner(table.outbound_view());
            if !self.peers_of.as_ref().is_some_and(|(seen, _)| Arc::ptr_eq(seen, &outbound)) {
                let peers = outbound
                    .all()
                    .filter(|e| !e.transport.udp)
                    .filter_map(|e| match e.transport.remote.ip() {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                self.peers_of = Some((outbound, peers));
            }
        }
        static NO_PEERS: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let peers = match (&self.peers_of, link) {
            (Some((_, peers)), true) => peers,
            _ => &NO_PEERS,
        };
        let hops = match &mut self.resolver {
            Some(resolver) => {
                let recheck = if self.route_changes.is_some() { ROUTE_RECHECK_FOLLOWING } else { ROUTE_RECHECK };
                resolver.resolve(peers, public, recheck).await
            }
            None => Vec::new(),
        };
        let failed = dp.set_link_paths(&hops);
        let now_failed: BTreeSet<Ipv4Addr> = failed.iter().map(|(peer, _)| *peer).collect();
        for (peer, e) in failed {
            if !self.failed.contains(&peer) {
                tracing::warn!(remote = %peer, error = %e, "cannot open the link path's socket: raw ESP to this peer takes the IP socket");
            }
        }
        self.failed = now_failed;
    }

    /// A route or rule change the kernel announced: the peers it may concern leave the link
    /// path now (the raw IP socket follows the kernel's routing) and are looked up again. At
    /// most every ROUTE_CHANGE_REFRESH: while routes churn (a routing daemon converging), the
    /// regular refresh, at most LINK_REFRESH later, does it.
    pub async fn on_route_change(
        &mut self,
        changed: &Changed,
        dp: &Dataplane,
        table: &SaTable,
        link: bool,
        public: Ipv4Addr,
    ) {
        let forgotten = self.resolver.as_mut().map_or(0, |resolver| resolver.forget_routes(changed));
        let now = Instant::now();
        if forgotten > 0 && self.route_change_refresh.is_none_or(|t| now.duration_since(t) >= ROUTE_CHANGE_REFRESH) {
            tracing::debug!(peers = forgotten, "route change: looking the peers' routes up again");
            self.route_change_refresh = Some(now);
            self.refresh(dp, table, link, public).await;
        }
    }
}
