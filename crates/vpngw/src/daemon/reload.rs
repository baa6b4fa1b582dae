//! SIGHUP and runtime connection changes: a new set of connections applied to a running
//! gateway (unchanged connections keep their SAs). What the set implies for the dataplane
//! (policies) and the kernel (routes into the TUN) is in `wanted.rs`.

use std::sync::Arc;
use std::time::Instant;

use super::Daemon;
use super::wanted::{policies, wanted_routes};
use crate::config::{Config, ConfigError, Connection, Start, overlap};
use crate::ops::control::ProblemView;

/// A reload that changed nothing, and why.
pub(super) struct ReloadRefused {
    pub why: String,
    pub problems: Vec<ProblemView>,
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
        // The workers read it from the dataplane's start, as they do both MTUs.
        ("gateway.tcp_mss_clamp", old.tcp_mss_clamp != now.tcp_mss_clamp),
        ("gateway.workers", old.workers != now.workers),
        ("gateway.worker_cores", old.worker_cores != now.worker_cores),
        ("metrics", was.metrics != new.metrics),
        // The engine's bounds and the Diffie-Hellman pool are made at start.
        ("tuning", was.tuning != new.tuning),
        // The sync channel and the role follow the [ha] read at start.
        ("ha", was.ha != new.ha),
        (
            "api.listen, api.state_file, api.tls_cert_file, api.tls_key_file, api.insecure_plaintext",
            was.api.as_ref().map(|a| (a.listen, &a.state_file, &a.tls, a.insecure_plaintext))
                != new.api.as_ref().map(|a| (a.listen, &a.state_file, &a.tls, a.insecure_plaintext)),
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Daemon {
    /// SIGHUP and `vpngw reload`: re-read the file. Unchanged connections keep their SAs;
    /// removed ones are deleted; new and changed ones (re)start. An invalid file changes
    /// nothing. Logged either way; the answer says what happened.
    pub(super) async fn reload(&mut self) -> Result<String, ReloadRefused> {
        crate::systemd::reloading();
        let outcome = self.reload_file().await;
        self.reloads.count(outcome.is_ok(), std::time::SystemTime::now());
        match &outcome {
            Ok(applied) => tracing::info!(event = "config_reloaded", "configuration reloaded: {applied}"),
            Err(refused) => {
                for p in &refused.problems {
                    tracing::error!(event = "config_refused", key = %p.key, value = %p.value, problem = %p.reason, "reload refused: {}", refused.why);
                }
                if refused.problems.is_empty() {
                    tracing::error!(event = "config_refused", "reload refused: {}", refused.why);
                }
            }
        }
        crate::systemd::ready(&match &outcome {
            Ok(applied) => format!("reloaded: {applied}"),
            Err(refused) => format!("reload refused ({}): running on the previous configuration", refused.why),
        });
        outcome
    }

    async fn reload_file(&mut self) -> Result<String, ReloadRefused> {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(ConfigError::Invalid { problems, .. }) => {
                return Err(ReloadRefused {
                    why: format!(
                        "configuration invalid ({} problem(s) in {})",
                        problems.len(),
                        self.config_path.display()
                    ),
                    problems: problems
                        .into_iter()
                        .map(|p| ProblemView { key: p.shown_key(), value: p.value, reason: p.reason })
                        .collect(),
                });
            }
            Err(e) => return Err(ReloadRefused { why: e.to_string(), problems: Vec::new() }),
        };
        let restart = restart_only(&self.config, &new);
        // Runtime connections stay, unless the file now defines one with the same name.
        let mut connections = new.connections;
        let file_names: Vec<String> = connections.iter().map(|c| c.peer.name.clone()).collect();
        let file_count = connections.len();
        for c in &self.config.connections {
            if self.runtime.contains(&c.peer.name) && !file_names.contains(&c.peer.name) {
                connections.push(c.clone());
            }
        }
        // The file's connections are disjoint (Config::load); those that stay from the API
        // must be disjoint from them too, or one would carry the other's traffic.
        let mut overlapping = Vec::new();
        for api_made in &connections[file_count..] {
            for file_made in &connections[..file_count] {
                if let Some(o) = overlap(file_made, api_made) {
                    overlapping.push(ProblemView {
                        key: format!("connection {:?}.remote_subnets", file_made.peer.name),
                        value: file_made.peer.name.clone(),
                        reason: o.reason(&format!("{:?} (created through the API)", api_made.peer.name)),
                    });
                }
            }
        }
        if !overlapping.is_empty() {
            return Err(ReloadRefused {
                why: "subnets overlap a connection created through the API".into(),
                problems: overlapping,
            });
        }
        if !restart.is_empty() {
            tracing::warn!(keys = %restart.join(", "), "these changes need a restart; other changes applied");
        }
        self.runtime.reload_token(new.api.as_ref());
        Arc::make_mut(&mut self.config).warnings = new.warnings;
        self.runtime.yield_to_file(&file_names);
        let (kept, removed, added) = self.apply_connections(connections).await;
        let mut applied = format!("{kept} connection(s) kept, {removed} removed or changed, {added} added");
        if !restart.is_empty() {
            applied.push_str(&format!("; need a restart to take effect: {}", restart.join(", ")));
        }
        Ok(applied)
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
        // Copied if a published state still holds the old one.
        Arc::make_mut(&mut self.config).connections = new;
        for c in self.config.connections.clone() {
            if c.start == Start::Active && !self.ike.endpoint.ike_sa_infos().iter().any(|s| s.peer == c.peer.name) {
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
    use std::path::Path;

    use super::restart_only;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    /// The workers read the MTUs and the MSS clamp once, at the dataplane's start: a reload
    /// that changes them names them and applies nothing.
    #[test]
    fn mtus_and_the_mss_clamp_need_a_restart() {
        let with = |line: &str| {
            Config::parse(&MINIMAL.replace("[[connection]]", &format!("{line}\n\n[[connection]]")), Path::new("."))
                .unwrap()
        };
        let was = with("");
        assert!(restart_only(&was, &with("")).is_empty());
        assert_eq!(restart_only(&was, &with("tcp_mss_clamp = \"off\"")), ["gateway.tcp_mss_clamp"]);
        assert_eq!(restart_only(&was, &with("tcp_mss_clamp = 1200")), ["gateway.tcp_mss_clamp"]);
        assert!(restart_only(&was, &with("tcp_mss_clamp = \"auto\"")).is_empty(), "auto is the default");
        assert_eq!(restart_only(&was, &with("tun_mtu = 1300")), ["gateway.tun_mtu"]);
    }
}
