//! The link path's decision, pure: from what the kernel said about a peer's route, its outgoing
//! interface and the next hop's neighbour entry, the link path ([`choose`]) or why not
//! ([`Unusable`]).

use std::net::Ipv4Addr;

use rtnetlink::packet_route::neighbour::NeighbourState;
use vpngw_dataplane::link::NextHop;

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

/// A MAC address, displayed as `ip link` writes it.
pub struct MacAddr<'a>(pub &'a [u8; 6]);

impl std::fmt::Display for MacAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
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

    #[test]
    fn a_mac_address_reads_as_ip_link_writes_it() {
        assert_eq!(MacAddr(&[2, 0, 0, 0xab, 0, 0x1f]).to_string(), "02:00:00:ab:00:1f");
    }
}
