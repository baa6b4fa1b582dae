//! The kernel's announcements of route and policy-rule changes, and what each may concern:
//! the peers inside a changed prefix (found by a range lookup), or every peer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use ipnet::Ipv4Net;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

use super::choice::Unusable;

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
pub(super) fn forget<V>(routes: &mut BTreeMap<Ipv4Addr, V>, changed: &Changed) -> usize {
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
    // By containment, not through `span`: the tests hold `span` to this.
    Ipv4Net::new(net, len.min(32)).is_ok_and(|n| n.contains(&address))
}

/// The first and last address of `net`/`len`.
fn span(net: Ipv4Addr, len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let net = Ipv4Net::new(net, len.min(32)).map_or(Ipv4Net::default(), |n| n.trunc());
    (net.network(), net.broadcast())
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

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

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
