//! What a set of connections implies for the dataplane (its policies) and for the kernel (routes
//! into the TUN): at the start and after every change of the set (`reload.rs`).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use vpngw_dataplane::sa_table::Selectors;
use vpngw_dataplane::spd::{PendingQueue, Policy, Spd};

use crate::config::{Config, Start};

/// The policies of every configured subnet pair. An on-traffic policy that `previous` has too
/// (same connection, same subnets) keeps its pending queue: packets held while its SA is being
/// negotiated survive a reload.
pub(super) fn policies(config: &Config, previous: Option<&Spd>) -> Spd {
    let held: HashMap<(Arc<str>, Selectors), Arc<PendingQueue>> = previous
        .into_iter()
        .flat_map(|spd| spd.policies())
        .filter_map(|old| old.pending.clone().map(|q| ((old.connection.clone(), old.selectors), q)))
        .collect();
    Spd::new(config.connections.iter().flat_map(|c| {
        let name: Arc<str> = c.peer.name.as_str().into();
        let on_traffic = c.start == Start::OnTraffic;
        let held = &held;
        c.peer.subnets.iter().map(move |p| {
            let selectors = Selectors { local: p.local.net(), remote: p.remote.net() };
            let kept = held.get(&(name.clone(), selectors)).cloned();
            Policy {
                selectors,
                connection: name.clone(),
                // Traffic that starts the tunnel waits for it instead of being lost.
                pending: on_traffic.then(|| {
                    kept.unwrap_or_else(|| {
                        Arc::new(PendingQueue::new(PendingQueue::DEFAULT_PACKETS, PendingQueue::DEFAULT_MAX_AGE))
                    })
                }),
            }
        })
    }))
}

/// Routes into the TUN: every remote subnet.
pub(super) fn wanted_routes(config: &Config) -> BTreeSet<(Ipv4Addr, u8)> {
    config
        .connections
        .iter()
        .flat_map(|c| c.peer.subnets.iter().map(|p| (p.remote.addr(), p.remote.prefix())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn config(start: &str, remote_subnets: &str) -> Config {
        let text = format!(
            "[gateway]\npublic_address = \"198.51.100.1\"\n[[connection]]\nname = \"branch\"\n\
             remote_address = \"198.51.100.2\"\npre_shared_key = \"lab-psk-0123456789abcdef\"\n\
             local_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [{remote_subnets}]\nstart = \"{start}\"\n"
        );
        Config::parse(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn queue(spd: &Spd, remote: &str) -> Option<Arc<PendingQueue>> {
        spd.policies().find(|p| p.selectors.remote.to_string() == remote).and_then(|p| p.pending.clone())
    }

    #[test]
    fn a_reload_keeps_the_packets_held_for_an_unchanged_policy() {
        let before = policies(&config("on-traffic", "\"10.2.0.0/24\", \"10.3.0.0/24\""), None);
        let held = queue(&before, "10.2.0.0/24").unwrap();
        held.push(Instant::now(), &[0x45; 20]);
        // The same policy after a reload that dropped the other pair: the same queue, with its
        // packet.
        let after = policies(&config("on-traffic", "\"10.2.0.0/24\""), Some(&before));
        let kept = queue(&after, "10.2.0.0/24").unwrap();
        assert!(Arc::ptr_eq(&held, &kept));
        assert_eq!(kept.len(), 1);
        // A new pair gets a new, empty queue; a connection no longer started by traffic, none.
        let grown = policies(&config("on-traffic", "\"10.2.0.0/24\", \"10.4.0.0/24\""), Some(&after));
        assert!(queue(&grown, "10.4.0.0/24").is_some_and(|q| q.is_empty()));
        let active = policies(&config("active", "\"10.2.0.0/24\""), Some(&after));
        assert!(queue(&active, "10.2.0.0/24").is_none());
        // Without a previous SPD (the start): fresh queues.
        assert!(queue(&policies(&config("on-traffic", "\"10.2.0.0/24\""), None), "10.2.0.0/24").unwrap().is_empty());
    }
}
