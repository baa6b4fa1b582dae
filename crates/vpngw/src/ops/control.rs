//! The local control socket: one JSON request per connection, one JSON answer. Root only (the
//! socket is created with mode 0600). `vpngw status/up/down/rekey/diagnose/peer-config` are its
//! clients.

use std::path::Path;
use std::time::Duration;

use nix::sys::stat::{Mode, umask};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::ops::diagnose::Diagnosis;
use crate::ops::select::{Page, Selection};
use crate::ops::status::Status;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The gateway's status; with `connection`, only that connection's (not found if none has
    /// the name); `selection` filters and pages the connections (`ops/select.rs`).
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection: Option<String>,
        /// Absent (an older client): every connection.
        #[serde(default, skip_serializing_if = "Selection::is_everything")]
        selection: Selection,
    },
    Up {
        connection: String,
    },
    Down {
        connection: String,
    },
    /// New child SAs for the connection's established ones; with `ike`, a new IKE SA instead
    /// (re-authentication, as `swanctl --rekey --reauth`), which takes the child SAs over.
    Rekey {
        connection: String,
        #[serde(default)]
        ike: bool,
    },
    Diagnose {
        connection: String,
    },
    /// The other side's configuration of a connection (`ops/peer_config.rs`); the key only
    /// with `include_key`.
    PeerConfig {
        connection: String,
        format: crate::ops::peer_config::Format,
        #[serde(default)]
        include_key: bool,
    },
    /// Every connection (or those `selection` picks): where it is defined, its parameters
    /// (never the key), its state.
    Connections {
        #[serde(default, skip_serializing_if = "Selection::is_everything")]
        selection: Selection,
    },
    /// Creates or replaces a runtime connection (configuration-file keys, as JSON); persisted.
    PutConnection {
        name: String,
        connection: serde_json::Value,
    },
    /// Deletes a runtime connection (its SAs first).
    DeleteConnection {
        name: String,
    },
    /// Stops the daemon: its SAs deleted, or (with a file) saved there and left to the
    /// restarted daemon (`saved_tunnels`).
    Stop {
        #[serde(default)]
        save_tunnels: Option<std::path::PathBuf>,
    },
    /// Hot backup: keepalived's notify hook (MASTER, BACKUP, FAULT, STOP).
    HaNotify {
        state: String,
    },
    /// Hot backup: keepalived's health check; answered by the daemon's loop, so a hung loop
    /// fails it.
    HaCheck,
    /// Hot backup: hand the role to the standby (graceful switchover).
    HaHandover,
    /// Re-read the configuration file, as SIGHUP; the answer says whether it was applied or
    /// refused (with the problems).
    Reload,
    /// Replaces the process's log filter (an EnvFilter directive, as RUST_LOG); kept across
    /// configuration reloads (`logging.rs`).
    LogLevel {
        filter: String,
    },
    /// `/healthz`: answered by the loop itself, so a hung loop fails it.
    Health,
    /// `/readyz`: configuration loaded, dataplane up, and with `[ha]` the role known (and a
    /// standby in sync). Answered from the published state.
    Ready,
}

/// What kind of failure an error answer is (the HTTP API maps it to a status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    NotFound,
    /// The connection's state does not allow it: it is defined in the configuration file
    /// (change it there), or it has no child SA to rekey.
    Conflict,
    Invalid,
    /// The request was right; the gateway failed (e.g. cannot write its state file).
    Internal,
}

/// One problem of a refused request, named by its configuration key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemView {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// A connection as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionView {
    pub name: String,
    /// "file" (the configuration file; read-only here) or "api" (created at runtime).
    pub source: String,
    pub configured: crate::ops::diagnose::Configured,
    pub status: crate::ops::status::ConnectionStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Box<Diagnosis>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<ConnectionView>>,
    /// For Connections: how many matched, by state, and the next page's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Page>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
    /// For PutConnection: whether it was new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// For PeerConfig: the text for the other side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_config: Option<String>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            error: None,
            message: Some(message.into()),
            status: None,
            diagnosis: None,
            connections: None,
            page: None,
            kind: None,
            problems: Vec::new(),
            created: None,
            peer_config: None,
        }
    }

    pub fn error(error: impl Into<String>) -> Self {
        Self { ok: false, error: Some(error.into()), message: None, ..Self::ok("") }
    }

    pub fn failed(kind: ErrorKind, error: impl Into<String>) -> Self {
        Self { kind: Some(kind), ..Self::error(error) }
    }
}

pub type Command = (Request, oneshot::Sender<Response>);

/// Who asked for a request: the control socket (the CLI, keepalived's hooks) or the management
/// API (with its client's address when known).
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    Cli,
    Api(Option<std::net::SocketAddr>),
}

impl Request {
    /// The action's name and its connection, for a request that changes something (or hands
    /// out a key); None for a read.
    pub fn action(&self) -> Option<(&'static str, Option<&str>)> {
        Some(match self {
            Self::Up { connection } => ("up", Some(connection)),
            Self::Down { connection } => ("down", Some(connection)),
            Self::Rekey { connection, ike: false } => ("rekey", Some(connection)),
            Self::Rekey { connection, ike: true } => ("rekey-ike", Some(connection)),
            Self::PeerConfig { connection, include_key: true, .. } => ("peer-config-with-key", Some(connection)),
            Self::PutConnection { name, .. } => ("connection-add", Some(name)),
            Self::DeleteConnection { name } => ("connection-remove", Some(name)),
            Self::Stop { .. } => ("stop", None),
            Self::HaNotify { .. } => ("ha-notify", None),
            Self::HaHandover => ("ha-handover", None),
            Self::Reload => ("reload", None),
            Self::LogLevel { .. } => ("log-level", None),
            Self::Status { .. }
            | Self::Diagnose { .. }
            | Self::PeerConfig { .. }
            | Self::Connections { .. }
            | Self::HaCheck
            | Self::Health
            | Self::Ready => return None,
        })
    }

    /// What else an action's line says: the filter, the keepalived state, the file tunnels are
    /// saved to, the format of a peer configuration. Never a secret (a connection's body, with
    /// its key, is not named).
    fn action_detail(&self) -> Option<String> {
        match self {
            Self::LogLevel { filter } => Some(format!("filter {filter}")),
            Self::HaNotify { state } => Some(format!("keepalived {state}")),
            Self::Stop { save_tunnels: Some(path) } => Some(format!("save tunnels to {}", path.display())),
            Self::PeerConfig { format, .. } => Some(format!("format {}", format.as_str())),
            _ => None,
        }
    }
}

/// The one INFO line for an action an operator asked for (`event=action`), written where the
/// request is accepted: its name, its connection if any, where it came from (`origin` cli or
/// api, and the API client's address). Reads are not logged.
pub fn log_action(request: &Request, origin: Origin) {
    let Some((action, connection)) = request.action() else { return };
    let (origin, client) = match origin {
        Origin::Cli => ("cli", None),
        Origin::Api(client) => ("api", client),
    };
    let detail = request.action_detail();
    let message = if matches!(request, Request::PeerConfig { .. }) {
        // Who asked for a key is worth a line; the key never is.
        "peer configuration with the pre-shared key handed out"
    } else {
        "operator action"
    };
    tracing::info!(
        event = "action",
        action,
        connection,
        origin,
        client = client.map(tracing::field::display),
        detail,
        "{message}"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create control socket {path}: {source}")]
    Bind { path: String, source: std::io::Error },
    #[error("cannot reach the daemon at {path}: {source} (is `vpngw run` running?)")]
    Connect { path: String, source: std::io::Error },
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from the daemon: {0}")]
    Protocol(String),
    /// A daemon that accepts but does not answer (its loop stuck, or an impostor on the path).
    #[error("the daemon did not answer within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
}

/// How long a client waits for the daemon's answer (connect, request and answer together)
/// unless told otherwise: twice the daemon's own command timeout
/// ([`crate::ops::published::COMMAND_TIMEOUT`]), so a slow command is answered with the
/// daemon's error rather than cut off here.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket (replacing a stale one) and serves requests into `commands`.
pub fn serve(path: &Path, commands: mpsc::Sender<Command>) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let bind_error = |source| ControlError::Bind { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    // Created private (the umask decides a socket's mode at bind), so it is never open to
    // other users, not even between bind and a chmod. The umask is process-wide: for this
    // instant other threads' new files can only come out more private.
    let old_umask = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old_umask);
    let listener = bound.map_err(bind_error)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let commands = commands.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, commands).await {
                    tracing::debug!(error = %e, "control request failed");
                }
            });
        }
    }))
}

async fn answer(stream: UnixStream, commands: mpsc::Sender<Command>) -> Result<(), ControlError> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).take(64 * 1024).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            log_action(&request, Origin::Cli);
            let (tx, rx) = oneshot::channel();
            if commands.send((request, tx)).await.is_err() {
                Response::error("daemon is shutting down")
            } else {
                rx.await.unwrap_or_else(|_| Response::error("daemon is shutting down"))
            }
        }
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).map_err(|e| ControlError::Protocol(e.to_string()))?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Client side: sends one request, returns the answer; gives up after
/// [`DEFAULT_ANSWER_TIMEOUT`]. The tests' shorthand (the CLI passes its --control-timeout).
#[cfg(test)]
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    request_within(path, request, DEFAULT_ANSWER_TIMEOUT).await
}

/// Client side: sends one request, returns the answer, or [`ControlError::TimedOut`] when
/// connecting, sending and the answer together take longer than `timeout`.
pub async fn request_within(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ControlError> {
    tokio::time::timeout(timeout, exchange(path, request)).await.map_err(|_| ControlError::TimedOut(timeout))?
}

async fn exchange(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect { path: path.display().to_string(), source })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::Protocol(e.to_string()))
}

trait TakeExt: Sized {
    fn take(self, limit: u64) -> tokio::io::Take<Self>;
}

impl<R: tokio::io::AsyncRead> TakeExt for BufReader<R> {
    fn take(self, limit: u64) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, limit)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::time::{Duration, Instant};

    use super::*;

    /// What changes something (or hands out a key) is an action with its connection; reads
    /// are not; a connection's body (with its key) is never part of the line.
    #[test]
    fn actions_are_the_requests_that_change_something() {
        let c = || "branch".to_string();
        let format = crate::ops::peer_config::Format::Generic;
        for (request, want) in [
            (Request::Up { connection: c() }, Some(("up", Some("branch")))),
            (Request::Down { connection: c() }, Some(("down", Some("branch")))),
            (Request::Rekey { connection: c(), ike: false }, Some(("rekey", Some("branch")))),
            (Request::Rekey { connection: c(), ike: true }, Some(("rekey-ike", Some("branch")))),
            (Request::Reload, Some(("reload", None))),
            (Request::Stop { save_tunnels: None }, Some(("stop", None))),
            (Request::LogLevel { filter: "debug".into() }, Some(("log-level", None))),
            (Request::HaNotify { state: "MASTER".into() }, Some(("ha-notify", None))),
            (Request::HaHandover, Some(("ha-handover", None))),
            (Request::DeleteConnection { name: c() }, Some(("connection-remove", Some("branch")))),
            (
                Request::PeerConfig { connection: c(), format, include_key: true },
                Some(("peer-config-with-key", Some("branch"))),
            ),
            (Request::PeerConfig { connection: c(), format, include_key: false }, None),
            (Request::Status { connection: None, selection: Selection::default() }, None),
            (Request::Status { connection: Some(c()), selection: Selection::default() }, None),
            (Request::Diagnose { connection: c() }, None),
            (Request::Connections { selection: Selection::default() }, None),
            (Request::HaCheck, None),
            (Request::Health, None),
            (Request::Ready, None),
        ] {
            assert_eq!(request.action(), want, "{request:?}");
        }
        let put = Request::PutConnection {
            name: c(),
            connection: serde_json::json!({ "pre_shared_key": "very-secret-key-123" }),
        };
        assert_eq!(put.action(), Some(("connection-add", Some("branch"))));
        assert_eq!(put.action_detail(), None);
    }

    /// Requests of clients from before paging read as "everything"; a selection travels as
    /// one member and is left out when it selects everything, so older daemons read ours.
    #[test]
    fn reads_without_a_selection_are_the_old_requests() {
        let old: Request = serde_json::from_str(r#"{"command":"connections"}"#).unwrap();
        assert!(matches!(old, Request::Connections { selection } if selection.is_everything()));
        let old: Request = serde_json::from_str(r#"{"command":"status","connection":"branch"}"#).unwrap();
        assert!(
            matches!(old, Request::Status { connection: Some(c), selection } if c == "branch" && selection.is_everything())
        );
        let plain = Request::Status { connection: None, selection: Selection::default() };
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"command":"status"}"#);
        let paged = Request::Connections { selection: Selection { limit: Some(20), ..Selection::default() } };
        let json = serde_json::to_string(&paged).unwrap();
        assert_eq!(json, r#"{"command":"connections","selection":{"limit":20}}"#);
        assert!(
            matches!(serde_json::from_str(&json).unwrap(), Request::Connections { selection } if selection.limit == Some(20))
        );
        // A pattern the CLI would refuse is refused by the daemon too.
        assert!(serde_json::from_str::<Request>(r#"{"command":"status","selection":{"name":"a b"}}"#).is_err());
    }

    /// A daemon that accepts and never answers: the client gives up after its timeout, with
    /// an error that says so, instead of hanging.
    #[tokio::test]
    async fn a_client_gives_up_on_a_daemon_that_never_answers() {
        let dir = std::env::temp_dir().join(format!("vpngw-control-timeout.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stuck.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let stuck = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream); // kept open, never answered
            }
        });
        let started = Instant::now();
        let answer = request_within(
            &path,
            &Request::Status { connection: None, selection: Selection::default() },
            Duration::from_millis(300),
        )
        .await;
        let took = started.elapsed();
        stuck.abort();
        let _ = std::fs::remove_dir_all(&dir);
        let e = answer.expect_err("an answer from a daemon that never answers");
        assert!(matches!(e, ControlError::TimedOut(_)), "{e:?}");
        assert_eq!(e.to_string(), "the daemon did not answer within 0.3 s");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }
}
