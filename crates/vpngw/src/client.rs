//! The CLI's side of the daemon: the exit codes every client command shares, how an answer is
//! printed (for people, or JSON with `--json`), and the verbs that are more than one request to
//! the control socket: `vpngw up --wait` (initiate, then follow the connection until it is up,
//! fails or times out) and `vpngw healthcheck` (the orchestrator's probe over HTTP, for images
//! without curl).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::ops::control::{self, ConnectionView, ControlError, ErrorKind, Request, Response};
use crate::ops::select::Page;
use crate::ops::status::{ConnectionStatus, Counts, FailureStatus};
use crate::state::ConnectionState;

/// The daemon refused the request, or the operation failed (also: no answer in time).
pub const EXIT_FAILED: u8 = 1;
/// Invalid input or configuration (a refused reload, a bad connection file, bad arguments).
pub const EXIT_INVALID: u8 = 2;
/// The daemon has no connection of that name.
pub const EXIT_NO_SUCH_CONNECTION: u8 = 3;
/// Nothing listens on the control socket: it does not exist, or the connection is refused.
pub const EXIT_DAEMON_NOT_RUNNING: u8 = 4;
/// `vpngw up NAME --wait` exits with this when the timeout passes first (as timeout(1) does).
pub const EXIT_TIMED_OUT: u8 = 124;

/// The exit codes as `--help` and the man page list them (docs/operations.md has the table).
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0    ok
  1    failed (refused, or no answer within --control-timeout)
  2    invalid input or configuration
  3    no such connection
  4    the daemon is not running (no socket, or refused)
  124  timed out (up --wait --timeout)";

/// The exit code for an error answer of the daemon.
pub fn exit_for_refusal(kind: Option<ErrorKind>) -> ExitCode {
    ExitCode::from(match kind {
        Some(ErrorKind::Invalid) => EXIT_INVALID,
        Some(ErrorKind::NotFound) => EXIT_NO_SUCH_CONNECTION,
        Some(ErrorKind::Conflict | ErrorKind::Internal) | None => EXIT_FAILED,
    })
}

/// The exit code when no answer came: 4 when no daemon listens, else 1.
pub fn exit_for_control_error(e: &ControlError) -> ExitCode {
    match e {
        ControlError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            ExitCode::from(EXIT_DAEMON_NOT_RUNNING)
        }
        _ => ExitCode::from(EXIT_FAILED),
    }
}

/// Prints a control request's answer (or why there is none) for people or, with `json`, for
/// programs, and gives the exit code.
pub fn print_answer(result: Result<Response, ControlError>, json: bool) -> ExitCode {
    let r = match result {
        Ok(r) => r,
        Err(e) => return fail(json, &e.to_string(), None, exit_for_control_error(&e)),
    };
    if !r.ok {
        let exit = exit_for_refusal(r.kind);
        if json {
            print_json(&json!({ "ok": false, "error": r.error, "kind": r.kind, "problems": r.problems }));
            return exit;
        }
        eprintln!("error: {}", r.error.unwrap_or_default());
        for p in &r.problems {
            if p.value.is_empty() {
                eprintln!("  {}: {}", p.key, p.reason);
            } else {
                eprintln!("  {} = {}: {}", p.key, p.value, p.reason);
            }
        }
        return exit;
    }
    let now = unix_now();
    match (json, r) {
        (false, Response { peer_config: Some(text), .. }) => print!("{text}"),
        (true, Response { peer_config: Some(text), .. }) => print_json(&json!({ "ok": true, "text": text })),
        (false, Response { diagnosis: Some(d), .. }) => print!("{}", d.render(now)),
        (true, Response { diagnosis: Some(d), .. }) => print_json(&d),
        (false, Response { connections: Some(c), .. }) => print!("{}", connection_table(&c)),
        (true, Response { connections: Some(c), .. }) => print_json(&c),
        (false, Response { status: Some(status), .. }) => print!("{}", status.render(now)),
        (true, Response { status: Some(status), .. }) => print_json(&status),
        (false, Response { message: Some(m), .. }) => println!("{m}"),
        (false, _) => {}
        (true, Response { message, created, .. }) => {
            let mut doc = json!({ "ok": true, "message": message.unwrap_or_default() });
            if let Some(created) = created {
                doc["created"] = created.into();
            }
            print_json(&doc);
        }
    }
    ExitCode::SUCCESS
}

/// How `status` and `connection list` print a selection's answer.
pub struct Listing<'a> {
    /// The line counting the connections by state.
    pub counts: Counts<'a>,
    /// The command that shows the page after a name.
    pub next_page: &'a dyn Fn(&str) -> String,
}

/// Prints the answer to a status or a connection list (or the refusal, as [`print_answer`]):
/// for people the counts and, when there is a next page, the command that shows it; with
/// `json` the document as before (status's has the page in it; the list stays an array, the
/// next page's command goes to stderr).
pub fn print_listing(result: Result<Response, ControlError>, json: bool, listing: &Listing) -> ExitCode {
    let r = match result {
        Ok(r) if r.ok && (r.status.is_some() || r.connections.is_some()) => r,
        other => return print_answer(other, json),
    };
    let next = |page: Option<&Page>| page.and_then(|p| p.next_after.as_deref()).map(|after| (listing.next_page)(after));
    if let Some(status) = &r.status {
        if json {
            print_json(status);
        } else {
            print!("{}", status.render_counting(unix_now(), listing.counts));
            if let Some(command) = next(status.page.as_ref()) {
                println!("\nnext page: {command}");
            }
        }
    } else if let Some(connections) = &r.connections {
        if json {
            print_json(connections);
            if let Some(command) = next(r.page.as_ref()) {
                eprintln!("next page: {command}");
            }
        } else {
            print!("{}", connection_table(connections));
            if let Some(page) = &r.page {
                match listing.counts {
                    Counts::Hide => {}
                    Counts::All => println!("\nconnections: {}", page.counts_text()),
                    Counts::Matching(words) => println!("\nconnections matching {words}: {}", page.counts_text()),
                }
            }
            if let Some(command) = next(r.page.as_ref()) {
                println!("next page: {command}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// Refuses before (or without) an answer of the daemon: the message on stderr, or with `json`
/// the same document as a refusal's on stdout.
pub fn fail(json: bool, message: &str, kind: Option<ErrorKind>, exit: ExitCode) -> ExitCode {
    if json {
        print_json(&json!({ "ok": false, "error": message, "kind": kind, "problems": [] }));
    } else {
        eprintln!("error: {message}");
    }
    exit
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot write the answer as JSON: {e}"),
    }
}

/// `vpngw connection list`: a line per connection, what an operator scans for first.
pub fn connection_table(connections: &[ConnectionView]) -> String {
    if connections.is_empty() {
        return "no connections\n".into();
    }
    let rows: Vec<[String; 8]> = connections
        .iter()
        .map(|c| {
            let (ike, esp) = (&c.configured.ike, &c.configured.ipsec);
            let children = c.status.child_sas.iter().filter(|ch| ch.state == vpngw_ike::ChildSaState::Active).count();
            [
                c.name.clone(),
                c.source.clone(),
                c.status.state.as_str().into(),
                c.configured.remote_address.clone(),
                format!("{}/{}", c.configured.start, ike.mode),
                format!("{}/{}/{}", ike.encryption, ike.authentication, ike.dh_group),
                format!("{}/{}/pfs {}", esp.encryption, esp.authentication, esp.pfs),
                format!("{children}/{}", esp.local_subnets.len() * esp.remote_subnets.len()),
            ]
        })
        .collect();
    const HEADER: [&str; 8] = ["NAME", "SOURCE", "STATE", "REMOTE", "START/MODE", "IKE", "ESP", "CHILD SAS"];
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&HEADER);
    for row in &rows {
        out.push_str(&line(&row.each_ref().map(String::as_str)));
    }
    out
}

/// Why a request brought no good answer: what to print, and the exit code.
struct NoGoodAnswer {
    message: String,
    exit: ExitCode,
}

impl NoGoodAnswer {
    fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), exit: ExitCode::from(EXIT_FAILED) }
    }
}
/// How often `up --wait` looks at the connection.
const POLL: Duration = Duration::from_millis(200);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The control socket and how long to wait for each answer.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub socket: std::path::PathBuf,
    pub answer_timeout: Duration,
}

async fn ask(daemon: &Daemon, request: Request) -> Result<Response, NoGoodAnswer> {
    match control::request_within(&daemon.socket, &request, daemon.answer_timeout).await {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(NoGoodAnswer { exit: exit_for_refusal(r.kind), message: r.error.unwrap_or_default() }),
        Err(e) => Err(NoGoodAnswer { exit: exit_for_control_error(&e), message: e.to_string() }),
    }
}

async fn connection(daemon: &Daemon, name: &str) -> Result<ConnectionStatus, NoGoodAnswer> {
    let status = ask(daemon, Request::Status { connection: Some(name.to_string()), selection: Default::default() })
        .await?
        .status
        .ok_or_else(|| NoGoodAnswer::failed("the daemon sent no status"))?;
    status.connections.into_iter().find(|c| c.name == name).ok_or_else(|| NoGoodAnswer {
        message: format!("no connection named {name:?}"),
        exit: ExitCode::from(EXIT_NO_SUCH_CONNECTION),
    })
}

fn same_failure(a: &Option<FailureStatus>, b: &Option<FailureStatus>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.at_unix == b.at_unix && a.count == b.count && a.reason == b.reason,
        _ => false,
    }
}

/// Brings `name` up and waits: 0 when every child SA is up, 1 with the diagnosis when a
/// negotiation fails (a failure recorded after the request), [`EXIT_TIMED_OUT`] with the
/// diagnosis when `timeout` passes first; 3 for no such connection, 4 without a daemon.
pub async fn up_and_wait(daemon: &Daemon, name: &str, timeout: Duration, json: bool) -> ExitCode {
    let fail = |e: NoGoodAnswer| {
        let kind = (e.exit == ExitCode::from(EXIT_NO_SUCH_CONNECTION)).then_some(ErrorKind::NotFound);
        self::fail(json, &e.message, kind, e.exit)
    };
    let up = |c: &ConnectionStatus| {
        if json {
            print_json(&json!({ "ok": true, "connection": name, "outcome": "up", "child_sas": c.child_sas.len() }));
        } else {
            println!("{name} is up ({} child SA(s))", c.child_sas.len());
        }
        ExitCode::SUCCESS
    };
    let before = match connection(daemon, name).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if before.state == ConnectionState::Up {
        return up(&before);
    }
    match ask(daemon, Request::Up { connection: name.to_string() }).await {
        Ok(r) if !json => println!("{}", r.message.unwrap_or_default()),
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        tokio::time::sleep(POLL).await;
        let now = match connection(daemon, name).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        if now.state == ConnectionState::Up {
            return up(&now);
        }
        let failed = !same_failure(&before.last_failure, &now.last_failure) && now.last_failure.is_some();
        let timed_out = Instant::now() >= deadline;
        if failed || timed_out {
            let (outcome, said) = if failed {
                ("failed", format!("{name}: the negotiation failed"))
            } else {
                ("timed-out", format!("{name}: not up after {} s", timeout.as_secs()))
            };
            let diagnosis = match ask(daemon, Request::Diagnose { connection: name.to_string() }).await {
                Ok(r) => r.diagnosis,
                Err(_) => None,
            };
            if json {
                print_json(
                    &json!({ "ok": false, "connection": name, "outcome": outcome, "error": said, "diagnosis": diagnosis }),
                );
            } else {
                eprintln!("{said}");
                if let Some(d) = diagnosis {
                    eprint!("{}", d.render(unix_now()));
                }
            }
            return if failed { ExitCode::FAILURE } else { ExitCode::from(EXIT_TIMED_OUT) };
        }
    }
}

/// `vpngw healthcheck`: GET /healthz (or /readyz) on the metrics listener; 0 on 200.
pub fn healthcheck(address: SocketAddr, ready: bool, timeout: Duration, json: bool) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        // The answer is one short line; anything longer is cut, never buffered without end.
        stream.take(64 * 1024).read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(text) if json => {
            let status: Option<u16> = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("");
            let ok = status == Some(200);
            print_json(&json!({ "ok": ok, "probe": path, "status": status, "body": body }));
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) if json => {
            print_json(&json!({ "ok": false, "probe": path, "status": null, "error": format!("{address}: {e}") }));
            ExitCode::FAILURE
        }
        Ok(text) => {
            let ok = text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200");
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("");
            if ok {
                println!("{body}");
                ExitCode::SUCCESS
            } else {
                let status = text.lines().next().unwrap_or("no answer");
                eprintln!("{path}: {status}: {body}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{path} at {address}: {e}");
            ExitCode::FAILURE
        }
    }
}
