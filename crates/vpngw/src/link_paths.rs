//! Resolution of raw ESP's link path (see `vpngw_dataplane::link`): for each peer reached by
//! raw ESP, the interface, source MAC and next-hop MAC the kernel itself would use, read from
//! its route, link and neighbour tables over netlink, and published to the dataplane. A peer
//! is published only while the kernel holds a usable neighbour entry for its next hop:
//! - REACHABLE, DELAY, PROBE (the kernel is verifying it), PERMANENT, NOARP: published;
//! - STALE: held back for one refresh, so that the raw IP socket's packets make the kernel
//!   verify the neighbour again (our frames bypass its neighbour code, which would otherwise
//!   never learn that the hop moved); published again once the kernel is at DELAY/PROBE;
//! - INCOMPLETE, FAILED, no entry: not published; the raw IP socket's packets make the kernel
//!   resolve it (ARP), and the next refresh picks it up.
//!
//! A non-Ethernet uplink, a local or unreachable route, or any netlink error also leaves the
//! peer on the raw IP socket. Changes are logged once, with the reason.
//!
//! Routes are looked up once per peer and then followed through the kernel's announcements
//! ([`RouteChanges`]): a route or policy-rule change that may concern a peer forgets its route,
//! which takes the peer off the link path (the raw IP socket follows the kernel's routing at
//! once) until it is looked up again, at the next refresh. Every route is also looked up again
//! every [`ROUTE_RECHECK`], in case an announcement was lost.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use vpngw_dataplane::link::NextHop;

/// Lookups per refresh at most for peers whose route is unknown: new peers, and those whose
/// route a change announced by the kernel may have moved (see [`LinkPaths::resolve`]).
const NEW_ROUTE_CHECKS: usize = 256;
/// Lookups per refresh at most for peers whose route is known and old enough to be checked.
const ROUTE_CHECKS: usize = 64;
/// How old a known route gets before it is looked up again without an announcement.
pub const ROUTE_RECHECK: Duration = Duration::from_secs(30);

/// Why a peer's raw ESP does not take the link path (it takes the raw IP socket).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("no route to the peer: {0}")]
    NoRoute(String),
    #[error("the route to the peer is of type {0} (not unicast)")]
    NotUnicast(String),
    #[error("interface {0} is not Ethernet")]
    NotEthernet(String),
    #[error("interface {0} has no usable MAC address or MTU")]
    NoLinkAddress(String),
    #[error("no neighbour entry for next hop {0} yet (the kernel resolves it from the IP socket's packets)")]
    NoNeighbour(Ipv4Addr),
    #[error("neighbour entry for next hop {hop} is {state}")]
    Neighbour { hop: Ipv4Addr, state: String },
    #[error("the kernel re-verifies next hop {0} (its entry went stale)")]
    Stale(Ipv4Addr),
    #[error("netlink: {0}")]
    Netlink(String),
}

/// The kernel's route to a peer, as far as the link path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    pub unicast: Result<(), String>,
    pub ifindex: u32,
    /// The gateway, or none for a directly connected peer.
    pub gateway: Option<Ipv4Addr>,
}

/// The outgoing interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub ethernet: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
}

/// The next hop's neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourInfo {
    pub state: NeighbourState,
    pub mac: Option<[u8; 6]>,
}

/// Decides from what the kernel said whether `peer` takes the link path, and through what.
pub fn choose(
    peer: Ipv4Addr,
    route: &RouteInfo,
    link: &LinkInfo,
    neighbour: Option<&NeighbourInfo>,
) -> Result<NextHop, Unusable> {
    route.unicast.clone().map_err(Unusable::NotUnicast)?;
    if !link.ethernet {
        return Err(Unusable::NotEthernet(link.name.clone()));
    }
    let (Some(source_mac), Some(mtu)) = (link.mac, link.mtu) else {
        return Err(Unusable::NoLinkAddress(link.name.clone()));
    };
    let hop = route.gateway.unwrap_or(peer);
    let neighbour = neighbour.ok_or(Unusable::NoNeighbour(hop))?;
    match neighbour.state {
        NeighbourState::Reachable
        | NeighbourState::Delay
        | NeighbourState::Probe
        | NeighbourState::Permanent
        | NeighbourState::Noarp => {}
        NeighbourState::Stale => return Err(Unusable::Stale(hop)),
        other => return Err(Unusable::Neighbour { hop, state: format!("{other:?}").to_lowercase() }),
    }
    let destination_mac = neighbour.mac.ok_or(Unusable::Neighbour { hop, state: "without address".into() })?;
    Ok(NextHop { device: link.name.clone(), ifindex: route.ifindex, source_mac, destination_mac, mtu })
}

/// Resolves peers over netlink and remembers the last outcome of each (to log changes only).
pub struct LinkPaths {
    handle: rtnetlink::Handle,
    /// The last outcome logged per peer.
    last: BTreeMap<Ipv4Addr, Result<NextHop, Unusable>>,
    /// The kernel's route per peer, and when it was looked up.
    routes: BTreeMap<Ipv4Addr, (Result<RouteInfo, Unusable>, Instant)>,
}

impl std::fmt::Debug for LinkPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPaths").field("peers", &self.last.len()).finish()
    }
}

impl LinkPaths {
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
    /// NEW_ROUTE_CHECKS) or older than ROUTE_RECHECK (at most ROUTE_CHECKS). A peer whose
    /// route is unknown stays off the link path until it has been looked up.
    pub async fn resolve(&mut self, peers: &BTreeSet<Ipv4Addr>, source: Ipv4Addr) -> Vec<(Ipv4Addr, NextHop)> {
        self.routes.retain(|peer, _| peers.contains(peer));
        if peers.is_empty() {
            self.last.clear();
            return Vec::new();
        }
        let now = Instant::now();
        for peer in lookups_due(peers, &self.routes, now) {
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
                            let entry = neighbours
                                .iter()
                                .find(|(ifindex, address, _)| *ifindex == route.ifindex && *address == hop)
                                .map(|(_, _, n)| n);
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
                    %peer,
                    device = %hop.device,
                    next_hop_mac = %mac(&hop.destination_mac),
                    mtu = hop.mtu,
                    "raw ESP to this peer takes the link path"
                ),
                (Err(why), Some(Err(old))) if why == old => {}
                // Stale entries come and go every half minute by design: not news.
                (Err(Unusable::Stale(_)), Some(Ok(_))) => {}
                (Err(why), _) => tracing::info!(%peer, reason = %why, "raw ESP to this peer takes the IP socket"),
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
    async fn neighbours(&self) -> Result<Vec<(u32, Ipv4Addr, NeighbourInfo)>, Unusable> {
        let mut answers =
            self.handle.neighbours().get().set_address_family(rtnetlink::packet_route::AddressFamily::Inet).execute();
        let mut all = Vec::new();
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
                all.push((n.header.ifindex, address, NeighbourInfo { state: n.header.state, mac }));
            }
        }
        Ok(all)
    }
}

/// The peers whose route is looked up at this refresh: first those whose route is unknown (at
/// most NEW_ROUTE_CHECKS), then known routes older than ROUTE_RECHECK, oldest first (at most
/// ROUTE_CHECKS in all).
fn lookups_due(
    peers: &BTreeSet<Ipv4Addr>,
    routes: &BTreeMap<Ipv4Addr, (Result<RouteInfo, Unusable>, Instant)>,
    now: Instant,
) -> Vec<Ipv4Addr> {
    let mut due: Vec<Ipv4Addr> =
        peers.iter().filter(|p| !routes.contains_key(p)).take(NEW_ROUTE_CHECKS).copied().collect();
    let mut old: Vec<(Instant, Ipv4Addr)> = routes
        .iter()
        .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= ROUTE_RECHECK)
        .map(|(peer, (_, at))| (*at, *peer))
        .collect();
    old.sort_unstable();
    let room = ROUTE_CHECKS.saturating_sub(due.len());
    due.extend(old.into_iter().take(room).map(|(_, peer)| peer));
    due
}

/// What a change announced by the kernel may concern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Routes to destinations inside these prefixes (address, length): the peers inside them.
    Prefixes(Vec<(Ipv4Addr, u8)>),
    /// A policy rule, or a change that cannot be narrowed down: every peer.
    Everything,
}

impl Changed {
    /// Whether `peer`'s route may have changed: a route to a prefix decides only the lookups
    /// of the addresses inside it (the longest match among the routes that contain them). The
    /// rule [`forget`] applies with range lookups; this, one peer at a time, is what the tests
    /// hold it to.
    #[cfg(test)]
    fn concerns(&self, peer: Ipv4Addr) -> bool {
        match self {
            Changed::Everything => true,
            Changed::Prefixes(prefixes) => prefixes.iter().any(|(net, len)| within(peer, *net, *len)),
        }
    }

    fn merge(&mut self, other: Changed) {
        match (self, other) {
            (Changed::Everything, _) => {}
            (me, Changed::Everything) => *me = Changed::Everything,
            (Changed::Prefixes(mine), Changed::Prefixes(theirs)) => mine.extend(theirs),
        }
    }

    /// What an announcement concerns; none for what does not touch IPv4 unicast routing.
    fn from_message(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Changed> {
        match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r)) => {
                route_prefix(r).map(|p| Changed::Prefixes(vec![p]))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_)) => {
                Some(Changed::Everything)
            }
            // The kernel dropped announcements (its socket buffer overflowed): any may be lost.
            NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => Some(Changed::Everything),
            _ => None,
        }
    }
}

/// The destination prefix of an IPv4 route message; none for other families.
fn route_prefix(r: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    if r.header.address_family != rtnetlink::packet_route::AddressFamily::Inet {
        return None;
    }
    let net = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    Some((net, r.header.destination_prefix_length.min(32)))
}

/// Removes the entries of the peers `changed` concerns; returns how many.
fn forget<V>(routes: &mut BTreeMap<Ipv4Addr, V>, changed: &Changed) -> usize {
    let before = routes.len();
    match changed {
        Changed::Everything => routes.clear(),
        Changed::Prefixes(prefixes) => {
            for &(net, len) in prefixes {
                let (first, last) = span(net, len);
                let inside: Vec<Ipv4Addr> = routes.range(first..=last).map(|(peer, _)| *peer).collect();
                for peer in inside {
                    routes.remove(&peer);
                }
            }
        }
    }
    before - routes.len()
}

/// Whether `address` lies inside `net`/`len`.
#[cfg(test)]
fn within(address: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    // By mask, not through `span`: the tests hold `span` to this.
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    u32::from(address) & mask == u32::from(net) & mask
}

/// The first and last address of `net`/`len`.
fn span(net: Ipv4Addr, len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
    let first = u32::from(net) & mask;
    (Ipv4Addr::from(first), Ipv4Addr::from(first | !mask))
}

/// The kernel's announcements of IPv4 route and policy-rule changes (netlink multicast, as
/// `ip monitor route rule` shows them), on a connection of their own.
pub struct RouteChanges {
    messages:
        futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, rtnetlink::sys::SocketAddr)>,
}

impl RouteChanges {
    pub fn open() -> Result<Self, Unusable> {
        let (connection, _, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route, MulticastGroup::Ipv4Rule])
                .map_err(|e| Unusable::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Self { messages })
    }

    /// Waits for the next change that touches IPv4 routing, then takes the announcements
    /// already queued behind it (a burst, such as an interface going down, is one change).
    /// None once the connection is gone.
    pub async fn next(&mut self) -> Option<Changed> {
        let mut changed = loop {
            let (message, _) = self.messages.next().await?;
            if let Some(c) = Changed::from_message(&message) {
                break c;
            }
        };
        while let Ok((message, _)) = self.messages.try_recv() {
            if let Some(c) = Changed::from_message(&message) {
                changed.merge(c);
            }
        }
        Some(changed)
    }
}

/// A MAC address as `ip link` writes it.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn link() -> LinkInfo {
        LinkInfo { name: "wan0".into(), ethernet: true, mac: Some([2, 0, 0, 0, 0, 1]), mtu: Some(1500) }
    }

    fn neighbour(state: NeighbourState) -> NeighbourInfo {
        NeighbourInfo { state, mac: Some([2, 0, 0, 0, 0, 2]) }
    }

    fn direct() -> RouteInfo {
        RouteInfo { unicast: Ok(()), ifindex: 7, gateway: None }
    }

    #[test]
    fn a_verified_neighbour_gives_the_link_path_with_its_addresses() {
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
            NeighbourState::Noarp,
        ] {
            let hop = choose(PEER, &direct(), &link(), Some(&neighbour(state))).expect("link path");
            assert_eq!(
                hop,
                NextHop {
                    device: "wan0".into(),
                    ifindex: 7,
                    source_mac: [2, 0, 0, 0, 0, 1],
                    destination_mac: [2, 0, 0, 0, 0, 2],
                    mtu: 1500
                }
            );
        }
    }

    #[test]
    fn an_unverified_neighbour_leaves_the_peer_on_the_ip_socket() {
        assert_eq!(
            choose(PEER, &direct(), &link(), Some(&neighbour(NeighbourState::Stale))),
            Err(Unusable::Stale(PEER))
        );
        for state in [NeighbourState::Incomplete, NeighbourState::Failed, NeighbourState::None] {
            assert!(matches!(
                choose(PEER, &direct(), &link(), Some(&neighbour(state))),
                Err(Unusable::Neighbour { hop: PEER, .. })
            ));
        }
        assert_eq!(choose(PEER, &direct(), &link(), None), Err(Unusable::NoNeighbour(PEER)));
        let no_mac = NeighbourInfo { state: NeighbourState::Reachable, mac: None };
        assert!(choose(PEER, &direct(), &link(), Some(&no_mac)).is_err());
    }

    #[test]
    fn behind_a_router_the_gateway_is_the_hop() {
        let route = RouteInfo { unicast: Ok(()), ifindex: 7, gateway: Some(GATEWAY) };
        assert_eq!(choose(PEER, &route, &link(), None), Err(Unusable::NoNeighbour(GATEWAY)));
        assert!(choose(PEER, &route, &link(), Some(&neighbour(NeighbourState::Reachable))).is_ok());
    }

    #[test]
    fn other_links_and_routes_keep_the_ip_socket() {
        let n = neighbour(NeighbourState::Reachable);
        let tunnel = LinkInfo { ethernet: false, ..link() };
        assert_eq!(choose(PEER, &direct(), &tunnel, Some(&n)), Err(Unusable::NotEthernet("wan0".into())));
        let no_mac = LinkInfo { mac: None, ..link() };
        assert_eq!(choose(PEER, &direct(), &no_mac, Some(&n)), Err(Unusable::NoLinkAddress("wan0".into())));
        let local = RouteInfo { unicast: Err("Local".into()), ..direct() };
        assert_eq!(choose(PEER, &local, &link(), Some(&n)), Err(Unusable::NotUnicast("Local".into())));
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
        assert_eq!(lookups_due(&peers, &routes, now), vec![peer(4), peer(3), peer(2)]);
        // Everything known and fresh: no lookup (the steady state between announcements).
        let all_fresh: BTreeMap<_, _> = peers.iter().map(|p| (*p, known(fresh))).collect();
        assert!(lookups_due(&peers, &all_fresh, now).is_empty());
    }

    #[test]
    fn lookups_per_refresh_are_bounded() {
        let now = Instant::now();
        let old = now - ROUTE_RECHECK;
        let peers: BTreeSet<Ipv4Addr> = (0..10_000).map(peer).collect();
        // 10,000 peers after a change of the default route: 256 at a time.
        assert_eq!(lookups_due(&peers, &BTreeMap::new(), now).len(), NEW_ROUTE_CHECKS);
        // All known and old: 64 at a time.
        let routes: BTreeMap<_, _> = peers.iter().map(|p| (*p, known(old))).collect();
        assert_eq!(lookups_due(&peers, &routes, now).len(), ROUTE_CHECKS);
        // A few unknown among old ones: the unknown ones, and old ones up to 64 in all.
        let mut some_unknown = routes.clone();
        for n in 0..10 {
            some_unknown.remove(&peer(n * 1000));
        }
        let due = lookups_due(&peers, &some_unknown, now);
        assert_eq!(due.len(), ROUTE_CHECKS);
        assert_eq!(&due[..10], &(0..10).map(|n| peer(n * 1000)).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn a_route_change_concerns_the_peers_inside_its_prefix() {
        let change = Changed::Prefixes(vec![(Ipv4Addr::new(198, 51, 100, 0), 24)]);
        assert!(change.concerns(PEER));
        assert!(!change.concerns(Ipv4Addr::new(198, 51, 101, 2)));
        let host = Changed::Prefixes(vec![(PEER, 32)]);
        assert!(host.concerns(PEER));
        assert!(!host.concerns(Ipv4Addr::new(198, 51, 100, 3)));
        // The default route concerns every peer, as does a policy rule.
        let default = Changed::Prefixes(vec![(Ipv4Addr::UNSPECIFIED, 0)]);
        assert!(default.concerns(PEER) && default.concerns(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(Changed::Everything.concerns(PEER));
        let mut merged = host.clone();
        merged.merge(Changed::Prefixes(vec![(Ipv4Addr::new(203, 0, 113, 0), 24)]));
        assert!(merged.concerns(PEER) && merged.concerns(Ipv4Addr::new(203, 0, 113, 9)));
        merged.merge(Changed::Everything);
        assert_eq!(merged, Changed::Everything);
        // Prefix edges, /0 and /32.
        let edge = Changed::Prefixes(vec![(Ipv4Addr::new(198, 51, 100, 128), 25)]);
        assert!(edge.concerns(Ipv4Addr::new(198, 51, 100, 128)) && edge.concerns(Ipv4Addr::new(198, 51, 100, 255)));
        assert!(!edge.concerns(Ipv4Addr::new(198, 51, 100, 127)) && !edge.concerns(Ipv4Addr::new(198, 51, 101, 0)));
        assert_eq!(span(Ipv4Addr::new(9, 9, 9, 9), 0), (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST));
        assert_eq!(span(PEER, 32), (PEER, PEER));
    }

    #[test]
    fn forgetting_removes_exactly_the_peers_a_change_concerns() {
        let peers: Vec<Ipv4Addr> = (0..2000u32).map(|n| Ipv4Addr::from(0xc633_6000 + n * 37)).collect();
        let changes = [
            Changed::Prefixes(vec![(Ipv4Addr::new(198, 51, 100, 0), 24)]),
            Changed::Prefixes(vec![(PEER, 32), (Ipv4Addr::new(198, 51, 120, 0), 21), (Ipv4Addr::new(10, 0, 0, 0), 8)]),
            Changed::Prefixes(vec![(Ipv4Addr::UNSPECIFIED, 0)]),
            Changed::Prefixes(vec![]),
            Changed::Everything,
        ];
        for changed in changes {
            let mut routes: BTreeMap<Ipv4Addr, ()> = peers.iter().map(|p| (*p, ())).collect();
            let expected: Vec<Ipv4Addr> = peers.iter().filter(|p| !changed.concerns(**p)).copied().collect();
            let gone = forget(&mut routes, &changed);
            assert_eq!(routes.keys().copied().collect::<Vec<_>>(), expected, "{changed:?}");
            assert_eq!(gone, peers.len() - expected.len(), "{changed:?}");
        }
    }

    #[test]
    fn announcements_are_read_as_the_kernel_sends_them() {
        use rtnetlink::packet_route::AddressFamily;
        let route = |family: AddressFamily, dst: Option<Ipv4Addr>, len: u8| {
            let mut r = RouteMessage::default();
            r.header.address_family = family;
            r.header.destination_prefix_length = len;
            if let Some(d) = dst {
                r.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(d)));
            }
            r
        };
        let message = |m: RouteNetlinkMessage| NetlinkMessage::from(m);
        let host = route(AddressFamily::Inet, Some(PEER), 32);
        assert_eq!(
            Changed::from_message(&message(RouteNetlinkMessage::NewRoute(host.clone()))),
            Some(Changed::Prefixes(vec![(PEER, 32)]))
        );
        assert_eq!(
            Changed::from_message(&message(RouteNetlinkMessage::DelRoute(host))),
            Some(Changed::Prefixes(vec![(PEER, 32)]))
        );
        // The default route carries no destination attribute.
        assert_eq!(
            Changed::from_message(&message(RouteNetlinkMessage::NewRoute(route(AddressFamily::Inet, None, 0)))),
            Some(Changed::Prefixes(vec![(Ipv4Addr::UNSPECIFIED, 0)]))
        );
        assert_eq!(
            Changed::from_message(&message(RouteNetlinkMessage::NewRoute(route(AddressFamily::Inet6, None, 0)))),
            None
        );
        assert_eq!(
            Changed::from_message(&message(RouteNetlinkMessage::NewRule(Default::default()))),
            Some(Changed::Everything)
        );
        assert_eq!(Changed::from_message(&message(RouteNetlinkMessage::NewLink(Default::default()))), None);
    }
}
