//! The orchestrator's probes, unauthenticated, on the metrics listener: `GET /healthz` (the
//! process lives and its loop turns: the loop itself answers, so a hung loop fails it) and
//! `GET /readyz` (configuration loaded, dataplane up, and with `[ha]` the role known and a
//! standby in sync: `ReadState::readiness`). 200 with a one-line reason, or 503 with why not.
//! Kubernetes' liveness/readiness probes, Docker's HEALTHCHECK (`vpngw healthcheck`) and load
//! balancers read them; they reveal no configuration beyond the role and a connection count.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{mpsc, oneshot};

use super::control::{Command, Request};

/// A probe waits this long for its answer: under the probes' own timeouts (Kubernetes' default
/// is 1 s), so a slow answer is a 503 with a reason, not a client-side timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

pub fn routes(commands: mpsc::Sender<Command>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(commands)
}

async fn healthz(State(commands): State<mpsc::Sender<Command>>) -> Response {
    ask(&commands, Request::Health).await
}

async fn readyz(State(commands): State<mpsc::Sender<Command>>) -> Response {
    ask(&commands, Request::Ready).await
}

async fn ask(commands: &mpsc::Sender<Command>, request: Request) -> Response {
    let answer = async {
        let (tx, rx) = oneshot::channel();
        commands.send((request, tx)).await.ok()?;
        rx.await.ok()
    };
    let (status, text) = match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
        Ok(Some(r)) if r.ok => (StatusCode::OK, r.message.unwrap_or_default()),
        Ok(Some(r)) => (StatusCode::SERVICE_UNAVAILABLE, r.error.unwrap_or_default()),
        Ok(None) => (StatusCode::SERVICE_UNAVAILABLE, "stopping".to_string()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the daemon's loop did not answer within {} ms", PROBE_TIMEOUT.as_millis()),
        ),
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{text}\n")).into_response()
}
