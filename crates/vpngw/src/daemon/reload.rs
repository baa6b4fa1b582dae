//! SIGHUP and runtime connection changes: a new set of connections applied to a running
//! gateway (unchanged connections keep their SAs), and what the set implies for the dataplane
//! (policies) and the kernel (routes into the TUN).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use vpngw_dataplane::sa_table::Selectors;
use vpngw_dataplane::spd::{PendingQueue, Policy, Spd};

use super::Daemon;
use crate::child_sas::table_net;
use crate::config::{Config, ConfigError, Connection, Start};

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
            let selectors = Selectors { local: table_net(p.local), remote: table_net(p.remote) };
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

/// The keys whose change a reload cannot apply (they need a restart).
fn restart_only(was: &Config, new: &Config) -> Vec<&'static str> {
    let (old, now) = (&was.gateway, &new.gateway);
    [
        ("gateway.public_address", old.public_address != now.public_address),
        ("gateway.control_socket", old.control_socket != now.control_socket),
        ("gateway.tun", old.tun != now.tun),
        ("gateway.tun_mtu", old.tun_mtu != now.tun_mtu),
        ("gateway.path_mtu", old.path_mtu != now.path_mtu),
        ("gateway.workers", old.workers != now.workers),
        ("gateway.worker_cores", old.worker_cores != now.worker_cores),
        ("metrics", was.metrics != new.metrics),
        (
            "api.listen, api.state_file",
            was.api.as_ref().map(|a| (a.listen, &a.state_file)) != new.api.as_ref().map(|a| (a.listen, &a.state_file)),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Daemon {
    /// SIGHUP: re-read the file. Unchanged connections keep their SAs; removed ones are deleted;
    /// new and changed ones (re)start. An invalid file changes nothing.
    pub(super) async fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    tracing::error!(problem = %p, "reload refused: configuration invalid");
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused");
                return;
            }
        };
        let restart = restart_only(&self.config, &new);
        if !restart.is_empty() {
            tracing::warn!(keys = %restart.join(", "), "these changes need a restart; other changes applied");
        }
        self.runtime.reload_token(new.api.as_ref());
        self.config.warnings = new.warnings;
        // Runtime connections stay, unless the file now defines one with the same name.
        let mut connections = new.connections;
        let file_names: Vec<String> = connections.iter().map(|c| c.peer.name.clone()).collect();
        for c in &self.config.connections {
            if self.runtime.contains(&c.peer.name) && !file_names.contains(&c.peer.name) {
                connections.push(c.clone());
            }
        }
        self.runtime.yield_to_file(&file_names);
        let (kept, removed, added) = self.apply_connections(connections).await;
        tracing::info!(kept, removed_or_changed = removed, added, "configuration reloaded");
    }

    /// Makes `new` the set of connections: unchanged ones keep their SAs; removed and changed
    /// ones are deleted (the peer is told); new and changed ones start. Returns (kept,
    /// removed or changed, added).
    pub(super) async fn apply_connections(&mut self, new: Vec<Connection>) -> (usize, usize, usize) {
        let now = Instant::now();
        let (mut kept, mut removed, mut added) = (0, 0, 0);
        for old in self.config.connections.clone() {
            let same = new.iter().find(|c| c.peer.name == old.peer.name).is_some_and(|c| c.same_as(&old));
            if same {
                kept += 1;
            } else {
                let _ = self.ike.endpoint.remove_peer(now, &old.peer.name);
                self.child_sas.withdraw_connection(&old.peer.name);
                self.retries.cancel(&old.peer.name);
                removed += 1;
            }
        }
        for c in &new {
            if self.ike.endpoint.peer(&c.peer.name).is_none() {
                let _ = self.ike.endpoint.add_peer(c.peer.clone());
                added += 1;
            }
        }
        // Series of connections that are gone go with them (changed ones keep counting).
        for old in &self.config.connections {
            if !new.iter().any(|c| c.peer.name == old.peer.name) {
                self.child_sas.forget(&old.peer.name);
                self.history.forget(&old.peer.name);
            }
        }
        self.config.connections = new;
        for c in self.config.connections.clone() {
            if c.start == Start::Active && !self.ike.endpoint.ike_sas().iter().any(|s| s.peer == c.peer.name) {
                self.initiate(now, &c.peer.name);
            }
        }
        let previous = self.spd.load_full();
        self.spd.store(Arc::new(policies(&self.config, Some(&previous))));
        self.probes.sync(&self.config.connections);
        if let Err(e) = self.routes.sync(&wanted_routes(&self.config)).await {
            tracing::error!(error = %e, "routes after a configuration change");
        }
        (kept, removed, added)
    }
}

#[cfg(test)]
mod tests {
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
