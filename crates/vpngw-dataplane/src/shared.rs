//! What the workers and the control side share: the state every worker reads ([`Shared`]:
//! the SA table, the policies, the stop flag, counters, the link paths) and what workers tell
//! the control plane ([`ToControl`]). A leaf: `lib.rs` builds it, the workers read it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use vpngw_esp::Spi;

use crate::counters::WorkerCounters;
use crate::sa_table::SaTable;
use crate::spd::Spd;
use crate::{link, sys};

/// What workers tell the control plane.
#[derive(Debug, Clone)]
pub enum ToControl {
    /// An IKE datagram received on port 4500 (non-ESP marker removed).
    Ike { from: SocketAddr, data: Vec<u8> },
    /// A packet matched this connection's policy but no SA: negotiate if on-traffic.
    Acquire { connection: Arc<str> },
    /// The outbound SA crossed its soft sequence limit.
    RekeyDue { spi_out: Spi },
}

/// Where workers send [`ToControl`] messages: a bounded queue; false when it is full (the
/// worker counts the message as [`crate::counters::DropReason::ControlQueueFull`]).
pub type ControlSink = Arc<dyn Fn(ToControl) -> bool + Send + Sync>;

pub(crate) struct Shared {
    pub table: Arc<SaTable>,
    pub spd: Arc<ArcSwap<Spd>>,
    pub stop: AtomicBool,
    /// An SA arrived: a worker drains the pending queues (on-traffic start) through it.
    pub pending_ready: AtomicBool,
    pub waker: sys::Waker,
    pub counters: std::sync::Arc<[WorkerCounters]>,
    pub to_control: ControlSink,
    pub path_mtu: u16,
    /// The TUN device's MTU: the largest inner packet, one bound of the MSS clamp.
    pub tun_mtu: u16,
    pub tcp_mss_clamp: crate::mss::MssClamp,
    /// Source of the outer header of raw ESP sent through the link path.
    pub public_address: Ipv4Addr,
    pub links: link::LinkPaths,
}
