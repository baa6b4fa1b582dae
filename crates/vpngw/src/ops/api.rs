//! The management API: HTTP + JSON as described by `docs/api/openapi.yaml`, for operators and
//! MANO systems that never log into the gateway.
//!
//! Thin on purpose: each handler checks the bearer token, turns the request into the same
//! [`Request`] the CLI sends over the control socket, and maps the daemon's [`Response`] to a
//! status code. Validation, persistence and the SA work happen once, in the daemon, for both.
//! Runtime connections are kept in the state file (`[api] state_file`, mode 0600: it holds
//! their keys), read at start; keys are write-only in every answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, RawQuery, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use toml::Table;

use crate::config::{Api, ApiTls, Connection, loose_secret_mode, overlap, parse_connection};
use crate::ops::control::{Command, ErrorKind, Request, Response};
use crate::ops::peer_config::Format;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read the API token file {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("the API token file {0} is empty")]
    EmptyToken(String),
    #[error("the API token file {path}: {reason}")]
    TokenMode { path: String, reason: String },
    #[error("cannot listen for the API on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the API's TLS {what} {path}: {reason}")]
    Tls { what: &'static str, path: String, reason: String },
}

#[derive(Clone)]
struct Ctx {
    commands: mpsc::Sender<Command>,
    token: ApiToken,
}

/// The bearer token the API accepts; the daemon re-reads its file on reload (SIGHUP), so a
/// token is rotated without a restart. Requests read it without a lock.
#[derive(Clone)]
pub struct ApiToken(std::sync::Arc<arc_swap::ArcSwap<zeroize::Zeroizing<Vec<u8>>>>);

impl ApiToken {
    fn read(api: &Api) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiError> {
        let path = api.token_file.display().to_string();
        let text = zeroize::Zeroizing::new(
            read_secret(&api.token_file)
                .map_err(|e| match e {
                    SecretError::Io(source) => ApiError::Token { path: path.clone(), source },
                    SecretError::Mode(reason) => ApiError::TokenMode { path: path.clone(), reason },
                })
                .and_then(|bytes| {
                    String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::Token {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
                    })
                })?,
        );
        let token = zeroize::Zeroizing::new(text.trim().as_bytes().to_vec());
        if token.is_empty() {
            return Err(ApiError::EmptyToken(path));
        }
        Ok(token)
    }

    /// Reads the token file again. On an error the token in use stays (an API locked out by
    /// a half-written file helps nobody); the error names the file, never its content.
    /// Returns whether the token changed.
    pub fn reload(&self, api: &Api) -> Result<bool, ApiError> {
        let token = Self::read(api)?;
        let changed = self.0.load().as_slice() != token.as_slice();
        if changed {
            self.0.store(std::sync::Arc::new(token));
        }
        Ok(changed)
    }
}

enum SecretError {
    Io(std::io::Error),
    /// Group or others may read it (the reason names the file, its mode and the fix).
    Mode(String),
}

/// A file that holds a secret: refused if anyone but its owner may read it (the mode of the
/// file opened, so no swap in between).
fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(SecretError::Io)?;
    let meta = file.metadata().map_err(SecretError::Io)?;
    if let Some(reason) = loose_secret_mode(path, &meta) {
        return Err(SecretError::Mode(reason));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).map_err(SecretError::Io)?;
    Ok(bytes)
}

/// The API's TLS server configuration from its PEM files (read once, at start).
fn tls_acceptor(tls: &ApiTls) -> Result<tokio_rustls::TlsAcceptor, ApiError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = tls.cert_file.display().to_string();
    let key_path = tls.key_file.display().to_string();
    let cert_err = |reason: String| ApiError::Tls { what: "certificate file", path: cert_path.clone(), reason };
    let key_err = |reason: String| ApiError::Tls { what: "key file", path: key_path.clone(), reason };
    let pem = std::fs::read(&tls.cert_file).map_err(|e| cert_err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err("holds no certificate (PEM, BEGIN CERTIFICATE)".into()));
    }
    let key_pem = read_secret(&tls.key_file).map_err(|e| match e {
        SecretError::Io(e) => key_err(e.to_string()),
        SecretError::Mode(reason) => key_err(reason),
    })?;
    // The PEM parser's errors may quote a line of the file: not for a key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| key_err("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| key_err(format!("does not go with the certificate or is not usable: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// TLS connections served at once; more wait in the kernel's backlog.
const MAX_TLS_CONNECTIONS: usize = 64;
/// A client has this long to finish the TLS handshake, and then to send a request's headers.
const TLS_CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener`: HTTPS through `tls` when given, plain HTTP otherwise. Runs until
/// the task is aborted (the connections' tasks go with it).
async fn serve_listener(listener: tokio::net::TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>) {
    let Some(acceptor) = tls else {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "management API stopped");
        }
        return;
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_TLS_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: as axum::serve does, wait and go on.
                tracing::warn!(error = %e, "management API: accept failed");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, app) = (acceptor.clone(), app.clone());
        connections.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(TLS_CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "management API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "management API: TLS handshake timed out");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TLS_CLIENT_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "management API: connection ended");
            }
        });
    }
}

/// Reads the token and serves the API until the task is aborted.
pub async fn serve(
    api: &Api,
    commands: mpsc::Sender<Command>,
) -> Result<(tokio::task::JoinHandle<()>, ApiToken), ApiError> {
    let token = ApiToken(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(ApiToken::read(api)?)));
    let ctx = Ctx { commands, token: token.clone() };
    let app = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/connections", get(list))
        .route("/api/v1/connections/{name}", get(get_one).put(put).delete(delete))
        .route("/api/v1/connections/{name}/initiate", post(initiate))
        .route("/api/v1/connections/{name}/terminate", post(terminate))
        .route("/api/v1/connections/{name}/diagnosis", get(diagnosis))
        .route("/api/v1/connections/{name}/peer-config", get(peer_config))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such resource (see docs/api/openapi.yaml)") })
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .with_state(ctx);
    let tls = api.tls.as_ref().map(tls_acceptor).transpose()?;
    if tls.is_none() && !api.listen.ip().is_loopback() {
        // Only with insecure_plaintext = true (the configuration check refuses it otherwise).
        tracing::warn!(listen = %api.listen, "management API over plain HTTP on a non-loopback address (insecure_plaintext = true): the bearer token crosses the network in the clear");
    }
    let listener = tokio::net::TcpListener::bind(api.listen)
        .await
        .map_err(|source| ApiError::Bind { addr: api.listen, source })?;
    let task = tokio::spawn(serve_listener(listener, app, tls));
    Ok((task, token))
}

fn error(code: StatusCode, message: &str) -> HttpResponse {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// `Authorization: Bearer TOKEN`, compared in constant time.
async fn authorize(State(ctx): State<Ctx>, req: HttpRequest, next: Next) -> HttpResponse {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let token = ctx.token.0.load();
    let ok = presented.is_some_and(|p| p.len() == token.len() && bool::from(p.ct_eq(token.as_slice())));
    if !ok {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn ask(ctx: &Ctx, request: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx.commands.send((request, tx)).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    rx.await.unwrap_or_else(|_| Response::error("the daemon is shutting down"))
}

/// A refused answer as HTTP: the kind picks the code; problems name the fields.
fn refused(r: Response) -> HttpResponse {
    let code = match r.kind {
        Some(ErrorKind::NotFound) => StatusCode::NOT_FOUND,
        Some(ErrorKind::Conflict) => StatusCode::CONFLICT,
        Some(ErrorKind::Invalid) => StatusCode::UNPROCESSABLE_ENTITY,
        Some(ErrorKind::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
        None => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = json!({ "error": r.error.unwrap_or_default() });
    if !r.problems.is_empty() {
        body["problems"] = json!(r.problems);
    }
    (code, axum::Json(body)).into_response()
}

async fn status(State(ctx): State<Ctx>) -> HttpResponse {
    match ask(&ctx, Request::Status).await {
        Response { ok: true, status: Some(s), .. } => axum::Json(s).into_response(),
        r => refused(r),
    }
}

async fn list(State(ctx): State<Ctx>) -> HttpResponse {
    match ask(&ctx, Request::Connections).await {
        Response { ok: true, connections: Some(c), .. } => axum::Json(c).into_response(),
        r => refused(r),
    }
}

async fn get_one(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> HttpResponse {
    match ask(&ctx, Request::Connections).await {
        Response { ok: true, connections: Some(c), .. } => match c.into_iter().find(|c| c.name == name) {
            Some(c) => axum::Json(c).into_response(),
            None => error(StatusCode::NOT_FOUND, &format!("no connection named {name:?}")),
        },
        r => refused(r),
    }
}

async fn put(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    body: Result<axum::Json<Value>, JsonRejection>,
) -> HttpResponse {
    let body = match body {
        Ok(axum::Json(v)) => v,
        Err(e) => {
            let code = match e {
                JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let body = json!({
                "error": "the body must be a JSON object of connection keys (Content-Type: application/json)",
                "problems": [{ "key": "body", "value": "", "reason": e.body_text() }],
            });
            return (code, axum::Json(body)).into_response();
        }
    };
    match ask(&ctx, Request::PutConnection { name: name.clone(), connection: body }).await {
        Response { ok: true, created, .. } => {
            let code = if created == Some(true) { StatusCode::CREATED } else { StatusCode::OK };
            match ask(&ctx, Request::Connections).await {
                Response { ok: true, connections: Some(c), .. } => match c.into_iter().find(|c| c.name == name) {
                    Some(c) => (code, axum::Json(c)).into_response(),
                    None => error(StatusCode::SERVICE_UNAVAILABLE, "the connection vanished meanwhile"),
                },
                r => refused(r),
            }
        }
        r => refused(r),
    }
}

async fn delete(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> HttpResponse {
    match ask(&ctx, Request::DeleteConnection { name }).await {
        Response { ok: true, .. } => StatusCode::NO_CONTENT.into_response(),
        r => refused(r),
    }
}

async fn initiate(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> HttpResponse {
    accepted(ask(&ctx, Request::Up { connection: name }).await)
}

async fn terminate(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> HttpResponse {
    accepted(ask(&ctx, Request::Down { connection: name }).await)
}

fn accepted(r: Response) -> HttpResponse {
    if r.ok {
        (StatusCode::ACCEPTED, axum::Json(json!({ "message": r.message.unwrap_or_default() }))).into_response()
    } else {
        refused(r)
    }
}

async fn diagnosis(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> HttpResponse {
    match ask(&ctx, Request::Diagnose { connection: name }).await {
        Response { ok: true, diagnosis: Some(d), .. } => axum::Json(d).into_response(),
        r => refused(r),
    }
}

/// `GET .../peer-config?format=strongswan|vpngw|generic&include_key=true|false`: the other
/// side's configuration as text. The query is read by hand so that every refusal is the API's
/// JSON error, never a framework's plain-text one.
async fn peer_config(
    State(ctx): State<Ctx>,
    UrlPath(name): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    let (format, include_key) = match peer_config_query(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(problem) => return error(StatusCode::BAD_REQUEST, &problem),
    };
    match ask(&ctx, Request::PeerConfig { connection: name, format, include_key }).await {
        Response { ok: true, peer_config: Some(text), .. } => {
            // A key in the answer: no cache along the way may keep it.
            let cache = if include_key { "no-store" } else { "no-cache" };
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, cache)], text)
                .into_response()
        }
        r => refused(r),
    }
}

/// `format` (default `generic`) and `include_key` (default false) from a query string.
fn peer_config_query(query: &str) -> Result<(Format, bool), String> {
    let mut format = Format::Generic;
    let mut include_key = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "format" => {
                format = Format::parse(value)
                    .ok_or_else(|| format!("format must be one of strongswan, vpngw, generic (got {value:?})"))?;
            }
            "include_key" => {
                include_key = match value {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("include_key must be true or false (got {other:?})")),
                };
            }
            other => return Err(format!("unknown query parameter {other:?} (format, include_key)")),
        }
    }
    Ok((format, include_key))
}

// ------------------------------------------------------------------------------------------
// The state file: runtime connections across restarts.

/// Reads the runtime connections saved by earlier runs. Entries that no longer validate, whose
/// name the configuration file now uses, or whose subnets overlap those of another connection
/// (`file`'s or one restored before), are skipped and logged: the daemon starts. Every entry's
/// table comes back, the skipped ones too: a later save keeps them.
pub fn load_state(
    path: &Path,
    public: std::net::Ipv4Addr,
    base: &Path,
    file: &[Connection],
) -> (Vec<Connection>, BTreeMap<String, Table>) {
    let taken: Vec<&str> = file.iter().map(|c| c.peer.name.as_str()).collect();
    let mut connections = Vec::new();
    let mut tables = BTreeMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (connections, tables),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read the API state file; runtime connections not restored");
            return (connections, tables);
        }
    };
    let root: Table = match text.parse() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "API state file unreadable; runtime connections not restored");
            return (connections, tables);
        }
    };
    for item in root.get("connection").and_then(toml::Value::as_array).into_iter().flatten() {
        let Some(t) = item.as_table() else { continue };
        let name = t.get("name").and_then(toml::Value::as_str).unwrap_or_default().to_string();
        if taken.contains(&name.as_str()) {
            tracing::warn!(connection = %name, "runtime connection skipped: the configuration file defines one with this name");
            continue;
        }
        match parse_connection(t, public, base, "connection") {
            Ok(c) => match file.iter().chain(&connections).find_map(|d| overlap(&c, d).map(|o| (d, o))) {
                Some((d, o)) => {
                    let reason = o.reason(&format!("{:?}", d.peer.name));
                    tracing::error!(connection = %name, problem = %reason, "runtime connection skipped (kept in the state file)");
                }
                None => connections.push(c),
            },
            Err(problems) => {
                for p in problems {
                    tracing::error!(connection = %name, problem = %p, "runtime connection skipped (kept in the state file)");
                }
            }
        }
        tables.insert(name, t.clone());
    }
    (connections, tables)
}

/// Writes the runtime connections (atomically; mode 0600: the keys are in it).
pub fn save_state(path: &Path, tables: &BTreeMap<String, Table>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let list: Vec<toml::Value> = tables.values().cloned().map(toml::Value::Table).collect();
    let mut root = Table::new();
    root.insert("connection".into(), toml::Value::Array(list));
    let text = format!(
        "# Connections created through vpngw's management API. Written by the daemon: edit\n\
         # through the API (or remove the file while vpngw is stopped).\n{}",
        toml::to_string(&root).map_err(std::io::Error::other)?
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    use super::*;
    use crate::config::Config;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vpngw-api-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entry(name: &str, local: &str, remote: &str) -> String {
        format!(
            "[[connection]]\nname = \"{name}\"\nremote_address = \"198.51.100.2\"\npre_shared_key = \"api-psk-0123456789\"\n\
             local_subnets = [\"{local}\"]\nremote_subnets = [\"{remote}\"]\n"
        )
    }

    #[test]
    fn the_peer_config_query_takes_its_two_words_and_refuses_the_rest() {
        assert_eq!(peer_config_query(""), Ok((Format::Generic, false)));
        assert_eq!(peer_config_query("format=strongswan&include_key=true"), Ok((Format::Strongswan, true)));
        assert_eq!(peer_config_query("include_key=false&format=vpngw"), Ok((Format::Vpngw, false)));
        for bad in ["format=cisco", "include_key=yes", "key=1", "format"] {
            assert!(peer_config_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn saved_connections_that_overlap_another_are_skipped_at_start_and_kept_in_the_file() {
        let dir = temp_dir("state");
        let file = format!(
            "[gateway]\npublic_address = \"198.51.100.1\"\n{}",
            entry("from-file", "10.1.1.0/24", "10.9.0.0/24")
        );
        let file = Config::parse(&file, &dir).unwrap().connections;
        let state = dir.join("connections.toml");
        let saved = [
            entry("over-file", "10.1.0.0/16", "10.9.0.0/24"),  // overlaps the file's
            entry("first", "10.1.2.0/24", "10.8.0.0/24"),      // disjoint: restored
            entry("over-first", "10.1.2.0/24", "10.8.0.0/16"), // overlaps the one restored before
            entry("second", "10.1.3.0/24", "10.8.0.0/24"),     // disjoint: restored
        ]
        .concat();
        std::fs::write(&state, saved).unwrap();
        let public = std::net::Ipv4Addr::new(198, 51, 100, 1);
        let (restored, tables) = load_state(&state, public, &dir, &file);
        let names: Vec<&str> = restored.iter().map(|c| c.peer.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        assert_eq!(tables.len(), 4, "a skipped entry is dropped from the file at the next save");
        std::fs::remove_dir_all(dir).ok();
    }

    /// A self-signed certificate and its key (openssl CLI), the key 0600.
    fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", "/CN=vpngw-test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (apt install openssl)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }

    #[test]
    fn the_tls_files_are_checked_and_the_key_never_shown() {
        let dir = temp_dir("tls");
        let (cert_file, key_file) = certificate(&dir);
        let tls = ApiTls { cert_file: cert_file.clone(), key_file: key_file.clone() };
        assert!(tls_acceptor(&tls).is_ok());
        // A key others can read: refused, naming the file, its mode and the fix.
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = tls_acceptor(&tls).err().unwrap().to_string();
        assert!(e.contains("has mode 0640") && e.contains(&format!("chmod 600 {}", key_file.display())), "{e}");
        // A damaged key: refused without a word of it.
        let damaged = "-----BEGIN PRIVATE KEY-----\nsecret-key-material-1234\n";
        std::fs::write(&key_file, damaged).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = tls_acceptor(&tls).err().unwrap().to_string();
        assert!(e.contains("holds no PEM private key") && !e.contains("secret-key-material"), "{e}");
        // Another certificate's key: refused.
        let other = temp_dir("tls-other");
        let (_, other_key) = certificate(&other);
        let e = tls_acceptor(&ApiTls { cert_file, key_file: other_key }).err().unwrap().to_string();
        assert!(e.contains("does not go with the certificate"), "{e}");
        // Not a certificate.
        std::fs::write(dir.join("api.crt"), "not a certificate").unwrap();
        let e = tls_acceptor(&tls).err().unwrap().to_string();
        assert!(e.contains("certificate file") && e.contains("holds no certificate"), "{e}");
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(other).ok();
    }
}
