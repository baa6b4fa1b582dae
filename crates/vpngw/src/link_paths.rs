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

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use vpngw_dataplane::link::NextHop;

/// Route lookups per refresh at most (see [`LinkPaths::resolve`]).
const ROUTE_CHECKS: usize = 64;

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
    /// The kernel's route per peer, as last looked up.
    routes: BTreeMap<Ipv4Addr, Result<RouteInfo, Unusable>>,
    /// Where the next round of route lookups starts (peers in address order).
    route_cursor: Ipv4Addr,
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
        Ok(Self { handle, last: BTreeMap::new(), routes: BTreeMap::new(), route_cursor: Ipv4Addr::UNSPECIFIED })
    }

    /// Resolves every peer (ESP from `source`); returns those that take the link path.
    ///
    /// Cost per call, whatever the number of peers: one neighbour dump (which is what notices
    /// a hop going stale or failing), one link query per interface, and at most
    /// ROUTE_CHECKS route lookups: new peers first, then the others in turn, so that with
    /// thousands of peers each route is looked at again every few tens of seconds while the
    /// control plane stays responsive.
    pub async fn resolve(&mut self, peers: &BTreeSet<Ipv4Addr>, source: Ipv4Addr) -> Vec<(Ipv4Addr, NextHop)> {
        self.routes.retain(|peer, _| peers.contains(peer));
        if peers.is_empty() {
            self.last.clear();
            return Vec::new();
        }
        let mut due: Vec<Ipv4Addr> = peers.iter().filter(|p| !self.routes.contains_key(p)).copied().collect();
        let known: Vec<Ipv4Addr> = peers.iter().filter(|p| self.routes.contains_key(p)).copied().collect();
        if !known.is_empty() {
            let from = known.partition_point(|p| *p < self.route_cursor);
            let budget = ROUTE_CHECKS.saturating_sub(due.len()).min(known.len());
            due.extend(known.iter().cycle().skip(from).take(budget).copied());
            if let Some(last) = due.last() {
                self.route_cursor = Ipv4Addr::from(u32::from(*last).wrapping_add(1));
            }
        }
        for peer in due.into_iter().take(ROUTE_CHECKS) {
            let route = self.route(peer, source).await;
            self.routes.insert(peer, route);
        }
        let neighbours = self.neighbours().await;
        let mut links: BTreeMap<u32, Result<LinkInfo, Unusable>> = BTreeMap::new();
        let mut chosen = Vec::new();
        let mut outcomes = BTreeMap::new();
        for &peer in peers {
            let outcome = match (self.routes.get(&peer), &neighbours) {
                (None, _) => continue,
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
}
