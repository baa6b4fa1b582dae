//! Raw ESP's link path: ESP to a peer leaves through an AF_PACKET socket on the uplink, with the
//! outer IPv4 and Ethernet headers written by the worker, instead of through the raw IP socket
//! and the kernel's IP output (route lookup, output hooks, neighbour output, per packet). The
//! kernel stays the authority on where a peer is: the control plane resolves each raw-ESP peer
//! from the kernel's own route and neighbour tables and publishes the result here; a peer with
//! no published path (no usable neighbour entry yet, a non-Ethernet uplink, the link path
//! turned off) keeps using the raw IP socket, as does any packet larger than the link's MTU.
//! Inbound ESP is unchanged (the raw IP socket). See docs/adr/0011-raw-esp-link-path.md.
//!
//! Workers read the table once per batch through an `ArcSwap` (no lock); the control plane
//! replaces it whole.

use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use socket2::Socket;

/// What the control plane resolved for one peer: the interface ESP to it leaves from and the
/// Ethernet addresses of the hop (the peer itself, or the gateway of its route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub device: String,
    pub ifindex: u32,
    pub source_mac: [u8; 6],
    pub destination_mac: [u8; 6],
    /// The interface's MTU: larger packets take the raw IP socket (which may fragment).
    pub mtu: u16,
}

/// Length of the Ethernet header the worker writes before the outer IPv4 header.
pub const ETHERNET_LEN: usize = 14;

/// One peer's published link path.
#[derive(Debug)]
pub struct LinkPath {
    pub hop: NextHop,
    /// Destination, source, EtherType IPv4: copied before every packet.
    pub ethernet: [u8; ETHERNET_LEN],
    pub socket: Arc<Socket>,
}

impl LinkPath {
    fn new(hop: NextHop, socket: Arc<Socket>) -> Self {
        let mut ethernet = [0u8; ETHERNET_LEN];
        ethernet[..6].copy_from_slice(&hop.destination_mac);
        ethernet[6..12].copy_from_slice(&hop.source_mac);
        ethernet[12..].copy_from_slice(&0x0800u16.to_be_bytes());
        Self { hop, ethernet, socket }
    }
}

/// The published paths by peer address, and the sockets behind them (one per interface).
#[derive(Debug, Default)]
pub(crate) struct LinkPaths {
    pub paths: ArcSwap<FxHashMap<Ipv4Addr, Arc<LinkPath>>>,
    sockets: Mutex<FxHashMap<u32, Arc<Socket>>>,
}

impl LinkPaths {
    /// Publishes exactly these paths (peers left out go back to the raw IP socket). A peer whose
    /// interface's socket cannot be opened is left out and returned with the error.
    pub fn publish(&self, hops: &[(Ipv4Addr, NextHop)]) -> Vec<(Ipv4Addr, io::Error)> {
        let mut failed = Vec::new();
        let mut map = FxHashMap::default();
        let mut changed = false;
        let old_paths = self.paths.load();
        let mut sockets = self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (peer, hop) in hops {
            let socket = match sockets.get(&hop.ifindex) {
                Some(s) => s.clone(),
                None => match crate::sys::link_socket(hop.ifindex) {
                    Ok(s) => {
                        let s = Arc::new(s);
                        sockets.insert(hop.ifindex, s.clone());
                        s
                    }
                    Err(e) => {
                        failed.push((*peer, e));
                        continue;
                    }
                },
            };
            // Unchanged paths keep their Arc: nothing for a worker to notice.
            let path = match old_paths.get(peer) {
                Some(old) if old.hop == *hop => old.clone(),
                _ => {
                    changed = true;
                    Arc::new(LinkPath::new(hop.clone(), socket))
                }
            };
            map.insert(*peer, path);
        }
        // The same paths as before (the steady state, refreshed twice a second): the map in
        // use stays, so that readers that copy it on change (the daemon's status) do not.
        if !changed && map.len() == old_paths.len() {
            return failed;
        }
        drop(old_paths);
        // Sockets of interfaces no path uses any more are closed once the last worker batch
        // holding the old table is done (the Arc).
        sockets.retain(|ifindex, _| map.values().any(|p| p.hop.ifindex == *ifindex));
        self.paths.store(Arc::new(map));
        failed
    }
}
