//! The CLI verbs that are more than one request to the control socket: `vpngw up --wait`
//! (initiate, then follow the connection until it is up, fails or times out) and `vpngw
//! healthcheck` (the orchestrator's probe over HTTP, for images without curl).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ops::control::{self, Request, Response};
use crate::ops::status::{ConnectionStatus, FailureStatus};
use crate::state::ConnectionState;

/// `vpngw up NAME --wait` exits with this when the timeout passes first (as timeout(1) does).
pub const EXIT_TIMED_OUT: u8 = 124;
/// How often `up --wait` looks at the connection.
const POLL: Duration = Duration::from_millis(200);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn ask(socket: &Path, request: Request) -> Result<Response, String> {
    match control::request(socket, &request).await {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(r.error.unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

async fn connection(socket: &Path, name: &str) -> Result<ConnectionStatus, String> {
    let status = ask(socket, Request::Status).await?.status.ok_or("the daemon sent no status")?;
    status.connections.into_iter().find(|c| c.name == name).ok_or_else(|| format!("no connection named {name:?}"))
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
/// diagnosis when `timeout` passes first.
pub async fn up_and_wait(socket: &Path, name: &str, timeout: Duration) -> ExitCode {
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let before = match connection(socket, name).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if before.state == ConnectionState::Up {
        println!("{name} is up");
        return ExitCode::SUCCESS;
    }
    match ask(socket, Request::Up { connection: name.to_string() }).await {
        Ok(r) => println!("{}", r.message.unwrap_or_default()),
        Err(e) => return fail(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        tokio::time::sleep(POLL).await;
        let now = match connection(socket, name).await {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        if now.state == ConnectionState::Up {
            let sas = now.child_sas.len();
            println!("{name} is up ({sas} child SA(s))");
            return ExitCode::SUCCESS;
        }
        let failed = !same_failure(&before.last_failure, &now.last_failure) && now.last_failure.is_some();
        let timed_out = Instant::now() >= deadline;
        if failed || timed_out {
            if failed {
                eprintln!("{name}: the negotiation failed");
            } else {
                eprintln!("{name}: not up after {} s", timeout.as_secs());
            }
            if let Ok(r) = ask(socket, Request::Diagnose { connection: name.to_string() }).await
                && let Some(d) = r.diagnosis
            {
                eprint!("{}", d.render(unix_now()));
            }
            return if failed { ExitCode::FAILURE } else { ExitCode::from(EXIT_TIMED_OUT) };
        }
    }
}

/// `vpngw healthcheck`: GET /healthz (or /readyz) on the metrics listener; 0 on 200.
pub fn healthcheck(address: SocketAddr, ready: bool, timeout: Duration) -> ExitCode {
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
