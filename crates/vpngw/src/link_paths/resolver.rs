//! The netlink side of the link path: the kernel's route to each peer (looked up once, then
//! kept until an announced change or [`ROUTE_RECHECK`] makes it stale), the outgoing
//! interface and the neighbour table, turned into a [`NextHop`] per peer by [`choose`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use vpngw_dataplane::link::NextHop;

use super::choice::{LinkInfo, MacAddr, NeighbourInfo, RouteInfo, Unusable, choose};
use super::route_changes::{Changed, forget};

/// Lookups per refresh at most for peers whose route is unknown: new peers, and those whose
/// route a change announced by the kernel may have moved (see [`LinkPathResolver::resolve`]).
const NEW_ROUTE_CHECKS: usize = 256;
/// Lookups per refresh at most for peers whose route is known and old enough to be checked.
const ROUTE_CHECKS: usize = 64;
/// How old a known route gets before it is looked up again, when the kernel's route
/// announcements are not followed.
pub const ROUTE_RECHECK: Duration = Duration::from_secs(30);
/// The same while they are followed: an announced change makes the routes it may concern
/// be looked up at once, so the look-up by age only guards against a lost announcement. At
/// thousands of peers the shorter period would keep ROUTE_CHECKS lookups going every refresh.
pub const ROUTE_RECHECK_FOLLOWING: Duration = Duration::from_secs(300);

/// Resolves peers over netlink and remembers the last outcome of each (to log changes only).
pub struct LinkPathResolver {
    handle: rtnetlink::Handle,
    /// The last outcome logged per peer.
    last: BTreeMap<Ipv4Addr, Result<NextHop, Unusable>>,
    /// The kernel's route per peer, and when it was looked up.
    routes: BTreeMap<Ipv4Addr, (Result<RouteInfo, Unusable>, Instant)>,
}

impl std::fmt::Debug for LinkPathResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPathResolver").field("peers", &self.last.len()).finish()
    }
}

impl LinkPathResolver {
    pub fn new() -> Result<Self, Unusable> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| Unusable::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Self { handle, last: BTreeMap::new(), routes: BTreeMap::new() })
    }

    /// Forgets the routes of the peers a change may concern (the addresses inside a changed
    /// route's prefix; every peer for a rule or a lost announcement); they
    /// leave the link path at the next [`Self::resolve`], which looks them up first. Returns how
    /// many were forgotten.
    ///
    /// Each prefix costs a range lookup among the known peers, not a pass over all of them: a
    /// routing daemon loading a full table announces hundreds of thousands of prefixes.
    pub fn forget_routes(&mut self, changed: &Changed) -> usize {
        forget(&mut self.routes, changed)
    }

    /// Resolves every peer (ESP from `source`); returns those that take the link path.
    ///
    /// Cost per call, whatever the number of peers: one neighbour dump (which is what notices
    /// a hop going stale or failing), one link query per interface, and route lookups only for
    /// peers whose route is unknown (new, or forgotten after an announced change; at most
    /// NEW_ROUTE_CHECKS) or older than `recheck` (at most ROUTE_CHECKS). A peer whose
    /// route is unknown stays off the link path until it has been looked up.
    pub async fn resolve(
        &mut self,
        peers: &BTreeSet<Ipv4Addr>,
        source: Ipv4Addr,
        recheck: Duration,
    ) -> Vec<(Ipv4Addr, NextHop)> {
        self.routes.retain(|peer, _| peers.contains(peer));
        if peers.is_empty() {
            self.last.clear();
            return Vec::new();
        }
        let now = Instant::now();
        for peer in lookups_due(peers, &self.routes, now, recheck) {
            let route = self.route(peer, source).await;
            self.routes.insert(peer, (route, Instant::now()));
        }
        let neighbours = self.neighbours().await;
        let mut links: BTreeMap<u32, Result<LinkInfo, Unusable>> = BTreeMap::new();
        let mut chosen = Vec::new();
        let mut outcomes = BTreeMap::new();
        for &peer in peers {
            let outcome = match (self.routes.get(&peer).map(|(route, _)| route), &neighbours) {
                // Not looked up yet: off the link path, and nothing to log before it is.
                (None, _) => {
                    if let Some(old) = self.last.get(&peer) {
                        outcomes.insert(peer, old.clone());
                    }
                    continue;
                }
                (Some(Err(e)), _) | (_, Err(e)) => Err(e.clone()),
                (Some(Ok(route)), Ok(neighbours)) => {
                    if let std::collections::btree_map::Entry::Vacant(slot) = links.entry(route.ifindex) {
                        slot.insert(self.link(route.ifindex).await);
                    }
                    match links.get(&route.ifindex) {
                        Some(Ok(link)) => {
                            let hop = route.gateway.unwrap_or(peer);
                            let entry = neighbours.get(&(route.ifindex, hop));
                            choose(peer, route, link, entry)
                        }
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(Unusable::Netlink("interface vanished".into())),
                    }
                }
            };
            match (&outcome, self.last.get(&peer)) {
                (Ok(hop), Some(Ok(old))) if hop == old => {}
                (Ok(hop), _) => tracing::info!(
                    remote = %peer,
                    device = %hop.device,
                    next_hop_mac = %MacAddr(&hop.destination_mac),
                    mtu = hop.mtu,
                    "raw ESP to this peer takes the link path"
                ),
                (Err(why), Some(Err(old))) if why == old => {}
                // Stale entries come and go every half minute by design: not news.
                (Err(Unusable::Stale(_)), Some(Ok(_))) => {}
                (Err(why), _) => {
                    tracing::info!(remote = %peer, reason = %why, "raw ESP to this peer takes the IP socket")
                }
            }
            // What was last logged: a stale pause keeps the path it interrupts, so that its
            // end is not logged as news either.
            let remembered = match (&outcome, self.last.get(&peer)) {
                (Err(Unusable::Stale(_)), Some(Ok(old))) => Ok(old.clone()),
                _ => outcome.clone(),
            };
            if let Ok(hop) = outcome {
                chosen.push((peer, hop));
            }
            outcomes.insert(peer, remembered);
        }
        self.last = outcomes;
        chosen
    }

    /// The kernel's own route lookup for ESP from `source` to `peer` (policy rules included).
    async fn route(&self, peer: Ipv4Addr, source: Ipv4Addr) -> Result<RouteInfo, Unusable> {
        let message =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(peer, 32).source_prefix(source, 32).build();
        let mut answers = self.handle.route().get(message).execute();
        let answer = answers
            .try_next()
            .await
            .map_err(|e| Unusable::NoRoute(e.to_string()))?
            .ok_or_else(|| Unusable::NoRoute("empty answer".into()))?;
        let unicast =
            if answer.header.kind == RouteType::Unicast { Ok(()) } else { Err(format!("{:?}", answer.header.kind)) };
        let mut info = RouteInfo { unicast, ifindex: 0, gateway: None };
        for attribute in &answer.attributes {
            match attribute {
                RouteAttribute::Oif(i) => info.ifindex = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => info.gateway = Some(*g),
                _ => {}
            }
        }
        if info.ifindex == 0 {
            return Err(Unusable::NoRoute("no outgoing interface".into()));
        }
        Ok(info)
    }

    async fn link(&self, ifindex: u32) -> Result<LinkInfo, Unusable> {
        let mut answers = self.handle.link().get().match_index(ifindex).execute();
        let answer = answers
            .try_next()
            .await
            .map_err(|e| Unusable::Netlink(e.to_string()))?
            .ok_or_else(|| Unusable::Netlink(format!("no interface {ifindex}")))?;
        let mut info = LinkInfo {
            name: ifindex.to_string(),
            ethernet: answer.header.link_layer_type == LinkLayerType::Ether,
            mac: None,
            mtu: None,
        };
        for attribute in &answer.attributes {
            match attribute {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) => info.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => info.mtu = u16::try_from(*m).ok().or(Some(u16::MAX)),
                _ => {}
            }
        }
        Ok(info)
    }

    /// Every IPv4 neighbour entry: (interface, address, state and MAC).
    /// The neighbour table, by interface and address (thousands of peers on a link: one
    /// lookup each, not a scan each).
    async fn neighbours(&self) -> Result<HashMap<(u32, Ipv4Addr), NeighbourInfo>, Unusable> {
        let mut answers =
            self.handle.neighbours().get().set_address_family(rtnetlink::packet_route::AddressFamily::Inet).execute();
        let mut all = HashMap::new();
        while let Some(n) = answers.try_next().await.map_err(|e| Unusable::Netlink(e.to_string()))? {
            let mut address = None;
            let mut mac = None;
            for attribute in &n.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
                    _ => {}
                }
            }
            if let Some(address) = address {
                all.insert((n.header.ifindex, address), NeighbourInfo { state: n.header.state, mac });
            }
        }
        Ok(all)
    }
}

/// The peers whose route is looked up at this refresh: first those whose route is unknown (at
/// most NEW_ROUTE_CHECKS), then known routes older than `recheck`, oldest first (at most
/// ROUTE_CHECKS in all).
fn lookups_due(
    peers: &BTreeSet<Ipv4Addr>,
    routes: &BTreeMap<Ipv4Addr, (Result<RouteInfo, Unusable>, Instant)>,
    now: Instant,
    recheck: Duration,
) -> Vec<Ipv4Addr> {
    let mut due: Vec<Ipv4Addr> =
        peers.iter().filter(|p| !routes.contains_key(p)).take(NEW_ROUTE_CHECKS).copied().collect();
    let mut old: Vec<(Instant, Ipv4Addr)> = routes
        .iter()
        .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= recheck)
        .map(|(peer, (_, at))| (*at, *peer))
        .collect();
    old.sort_unstable();
    let room = ROUTE_CHECKS.saturating_sub(due.len());
    due.extend(old.into_iter().take(room).map(|(_, peer)| peer));
    due
}

/// What a change announced by the kernel may concern.
#[cfg(test)]
mod tests {
    use super::*;

    fn direct() -> RouteInfo {
        RouteInfo { unicast: Ok(()), ifindex: 7, gateway: None }
    }

    fn known(at: Instant) -> (Result<RouteInfo, Unusable>, Instant) {
        (Ok(direct()), at)
    }

    fn peer(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + n)
    }

    #[test]
    fn routes_are_looked_up_when_unknown_or_old_and_not_otherwise() {
        let now = Instant::now();
        let fresh = now - Duration::from_secs(1);
        let old = now - ROUTE_RECHECK - Duration::from_secs(1);
        let older = now - ROUTE_RECHECK - Duration::from_secs(5);
        let peers: BTreeSet<Ipv4Addr> = (1..=4).map(peer).collect();
        let routes = BTreeMap::from([(peer(1), known(fresh)), (peer(2), known(old)), (peer(3), known(older))]);
        // The unknown one first, then the old ones, oldest first; the fresh one not at all.
        assert_eq!(lookups_due(&peers, &routes, now, ROUTE_RECHECK), vec![peer(4), peer(3), peer(2)]);
        // Everything known and fresh: no lookup (the steady state between announcements).
        let all_fresh: BTreeMap<_, _> = peers.iter().map(|p| (*p, known(fresh))).collect();
        assert!(lookups_due(&peers, &all_fresh, now, ROUTE_RECHECK).is_empty());
    }

    #[test]
    fn lookups_per_refresh_are_bounded() {
        let now = Instant::now();
        let old = now - ROUTE_RECHECK;
        let peers: BTreeSet<Ipv4Addr> = (0..10_000).map(peer).collect();
        // 10,000 peers after a change of the default route: 256 at a time.
        assert_eq!(lookups_due(&peers, &BTreeMap::new(), now, ROUTE_RECHECK).len(), NEW_ROUTE_CHECKS);
        // All known and old: 64 at a time.
        let routes: BTreeMap<_, _> = peers.iter().map(|p| (*p, known(old))).collect();
        assert_eq!(lookups_due(&peers, &routes, now, ROUTE_RECHECK).len(), ROUTE_CHECKS);
        // A few unknown among old ones: the unknown ones, and old ones up to 64 in all.
        let mut some_unknown = routes.clone();
        for n in 0..10 {
            some_unknown.remove(&peer(n * 1000));
        }
        let due = lookups_due(&peers, &some_unknown, now, ROUTE_RECHECK);
        assert_eq!(due.len(), ROUTE_CHECKS);
        assert_eq!(&due[..10], &(0..10).map(|n| peer(n * 1000)).collect::<Vec<_>>()[..]);
    }
}
