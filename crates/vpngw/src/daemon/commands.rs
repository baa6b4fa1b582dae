//! Control requests (the control socket's and the management API's): the operator's verbs, the
//! read models, and runtime connections created or deleted.

use std::path::Path;
use std::time::Instant;

use super::{Daemon, Stop};
use crate::config::Connection;
use crate::ops::control::{ErrorKind, ProblemView, Request, Response};
use crate::{runtime_connections, saved_tunnels};

fn unknown(c: &str) -> Response {
    Response::failed(ErrorKind::NotFound, format!("no connection named {c:?}"))
}

impl Daemon {
    pub(super) async fn command(&mut self, request: Request) -> Response {
        let now = Instant::now();
        match request {
            // Answered by the surfaces from the published state (`ops/published.rs`); here
            // for completeness, from the state now.
            Request::Status { .. }
            | Request::Diagnose { .. }
            | Request::PeerConfig { .. }
            | Request::Connections { .. }
            | Request::Ready => self.read_state().answer(&request).unwrap_or_else(|| Response::error("not a read")),
            Request::Up { connection } if !self.negotiates() && self.connection(&connection).is_some() => {
                Response::error(format!(
                    "{connection}: this server is the hot-backup standby; the active one negotiates"
                ))
            }
            Request::Up { connection } => match self.ike.endpoint.initiate(now, &connection) {
                Ok(()) => {
                    self.retries.cancel(&connection);
                    Response::ok(format!("initiating {connection}"))
                }
                Err(_) => unknown(&connection),
            },
            Request::Down { connection } => match self.ike.endpoint.terminate(now, &connection) {
                Ok(()) => {
                    self.retries.hold(&connection);
                    self.child_sas.withdraw_connection(&connection);
                    Response::ok(format!("{connection} down"))
                }
                Err(_) => unknown(&connection),
            },
            Request::Rekey { connection, .. } if !self.negotiates() && self.connection(&connection).is_some() => {
                Response::failed(
                    ErrorKind::Conflict,
                    format!("{connection}: this server is the hot-backup standby; the active one negotiates"),
                )
            }
            Request::Rekey { connection, ike: true } => match self.ike.endpoint.reauthenticate(now, &connection) {
                Ok(true) => Response::ok(format!(
                    "{connection}: re-authenticating (a new main mode; the child SAs move to the new IKE SA)"
                )),
                Ok(false) => Response::failed(
                    ErrorKind::Conflict,
                    format!(
                        "{connection}: no IKE SA to re-authenticate (down, or a main mode with the peer is under way)"
                    ),
                ),
                Err(_) => unknown(&connection),
            },
            Request::Rekey { connection, ike: false } => match self.ike.endpoint.rekey_connection(now, &connection) {
                Ok(0) => Response::failed(
                    ErrorKind::Conflict,
                    format!("{connection}: no child SA to rekey (down, or a rekey is under way)"),
                ),
                Ok(n) => Response::ok(format!("{connection}: rekeying {n} child SA(s)")),
                Err(_) => unknown(&connection),
            },
            Request::HaNotify { state } => match crate::ha::KeepalivedState::parse(&state) {
                Some(_) if self.ha.is_none() => Response::error("no [ha] section in the configuration"),
                Some(k) => {
                    self.ha_notify(k);
                    Response::ok(format!("noted: keepalived {state}"))
                }
                None => Response::error(format!("{state:?}: keepalived's states are MASTER, BACKUP, FAULT, STOP")),
            },
            Request::HaCheck => match &self.ha {
                None => Response::error("no [ha] section in the configuration"),
                Some(ha) => Response::ok(format!("healthy: {}", crate::ha::role_word(ha.role))),
            },
            Request::HaHandover => match self.ha_hand_over(false).await {
                Ok(m) => Response::ok(m),
                Err(e) => Response::error(e),
            },
            Request::Health => Response::ok("alive"),
            Request::LogLevel { filter } => match crate::logging::set_filter(&filter) {
                Ok(before) => {
                    tracing::info!(filter = %filter, before = %before, "log filter changed");
                    Response::ok(format!("log filter: {filter} (was {before})"))
                }
                Err(e @ crate::logging::LogFilterError::Invalid { .. }) => {
                    Response::failed(ErrorKind::Invalid, e.to_string())
                }
                Err(e) => Response::failed(ErrorKind::Internal, e.to_string()),
            },
            Request::Reload => match self.reload().await {
                Ok(m) => Response::ok(m),
                Err(refused) => {
                    Response { problems: refused.problems, ..Response::failed(ErrorKind::Invalid, refused.why) }
                }
            },
            Request::PutConnection { name, connection } => self.put_connection(name, connection).await,
            Request::DeleteConnection { name } => self.delete_connection(&name).await,
            Request::Stop { save_tunnels: None } => {
                self.stopping = Some(Stop::DeleteTunnels);
                Response::ok("stopping: deleting every SA")
            }
            Request::Stop { save_tunnels: Some(path) } => {
                let saved = saved_tunnels::collect(&self.ike.endpoint, &self.child_sas, now);
                let (ike_sas, child_sas) =
                    (saved.tunnels.len(), saved.tunnels.iter().map(|t| t.child_sas.len()).sum::<usize>());
                match saved_tunnels::write(&path, &saved) {
                    Ok(()) => {
                        tracing::info!(file = %path.display(), ike_sas, child_sas, "tunnels saved: stopping without deleting them");
                        self.stopping = Some(Stop::KeepTunnels);
                        Response::ok(format!(
                            "saved {ike_sas} IKE SA(s) with {child_sas} child SA(s) to {}; stopping (restart with --restore-tunnels)",
                            path.display()
                        ))
                    }
                    Err(e) => Response::failed(ErrorKind::Internal, format!("not stopping: {e}")),
                }
            }
        }
    }

    /// Creates or replaces a runtime connection: the configuration file's keys and checks,
    /// applied like a reload of that one connection, then persisted.
    async fn put_connection(&mut self, name: String, body: serde_json::Value) -> Response {
        let Some(api) = self.config.api.clone() else {
            return Response::error(
                "runtime connections need an [api] section: its state_file keeps them across restarts",
            );
        };
        let file_owned = self.connection(&name).is_some() && !self.runtime.contains(&name);
        if file_owned {
            return Response::failed(
                ErrorKind::Conflict,
                format!("{name:?} is defined in the configuration file: change it there"),
            );
        }
        let base = self.config_path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let public = self.config.gateway.public_address;
        let (connection, table) = match runtime_connections::parse(&name, body, public, &base, &self.config.connections)
        {
            Ok(parsed) => parsed,
            Err(problems) => return invalid(problems),
        };
        let mut connections: Vec<Connection> =
            self.config.connections.iter().filter(|c| c.peer.name != name).cloned().collect();
        connections.push(connection);
        let created = match self.runtime.put(&api, &name, table) {
            Ok(created) => created,
            Err(e) => {
                tracing::error!(file = %api.state_file.display(), error = %e, "cannot save runtime connections");
                return Response::failed(ErrorKind::Internal, format!("cannot save it: {e}"));
            }
        };
        self.apply_connections(connections).await;
        tracing::info!(connection = %name, created, "runtime connection saved");
        Response { created: Some(created), ..Response::ok(format!("{name} saved")) }
    }

    async fn delete_connection(&mut self, name: &str) -> Response {
        if !self.runtime.contains(name) {
            return if self.connection(name).is_some() {
                Response::failed(
                    ErrorKind::Conflict,
                    format!("{name:?} is defined in the configuration file: remove it there"),
                )
            } else {
                unknown(name)
            };
        }
        if let Err(e) = self.runtime.delete(self.config.api.as_ref(), name) {
            return Response::failed(ErrorKind::Internal, format!("cannot save the change: {e}"));
        }
        let connections = self.config.connections.iter().filter(|c| c.peer.name != name).cloned().collect();
        self.apply_connections(connections).await;
        tracing::info!(connection = %name, "runtime connection deleted");
        Response::ok(format!("{name} deleted"))
    }
}

fn invalid(problems: Vec<ProblemView>) -> Response {
    Response { problems, ..Response::failed(ErrorKind::Invalid, "invalid connection (each problem names its key)") }
}
