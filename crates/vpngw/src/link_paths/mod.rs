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
//! ([`route_changes::RouteChanges`]): a route or policy-rule change that may concern a peer
//! forgets its route, which takes the peer off the link path (the raw IP socket follows the
//! kernel's routing at once) until it is looked up again, at the next refresh. Every route is also looked up again
//! every [`resolver::ROUTE_RECHECK_FOLLOWING`] (5 min), in case an announcement was lost, or
//! every [`resolver::ROUTE_RECHECK`] (30 s) when the announcements cannot be followed.
//!
//! Rooms: [`choice`] decides ([`choice::choose`], pure); [`resolver`] asks the kernel over
//! netlink; [`route_changes`] follows its announcements; [`driver`] runs both for the daemon and
//! publishes the outcome to the dataplane. This file only declares them and re-exports what the
//! daemon uses.

pub mod choice;
pub mod driver;
pub mod resolver;
pub mod route_changes;

pub use choice::MacAddr;
pub use driver::LinkPathDriver;
