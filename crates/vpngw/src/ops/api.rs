//! The management API: HTTP + JSON as described by `docs/api/openapi.yaml`, for operators and
//! MANO systems that never log into the gateway.
//!
//! Thin on purpose: each handler checks the bearer token, turns the request into the same
//! [`Request`] the CLI sends over the control socket, and maps the daemon's [`Response`] to a
//! status code; refusals are RFC 9457 problem documents ([`Problem`]), the framework's own
//! refusals (405, 413, ...) made so too. Validation, persistence and the SA work happen once,
//! in the daemon, for both.
//! Runtime connections are kept in the state file (`[api] state_file`, mode 0600: it holds
//! their keys), read at start; keys are write-only in every answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, Path as UrlPath, RawQuery, Request as HttpRequest, State,
};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use toml::Table;

use crate::config::{Api, ApiTls, Connection, loose_secret_mode, overlap, parse_connection};
use crate::ops::control::{self, Command, ErrorKind, Origin, ProblemView, Request, Response};
use crate::ops::peer_config::Format;
use crate::ops::select::{NamePattern, SelectError, Selection, parse_after, parse_limit, parse_state};

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
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
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
        // The client's address for the handlers, as axum::serve's connect info gives it.
        let (acceptor, app) = (acceptor.clone(), app.clone().layer(axum::Extension(ConnectInfo(peer))));
        connections.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(TLS_CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "management API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "management API: TLS handshake timed out");
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
                tracing::debug!(client = %peer, error = %e, "management API: connection ended");
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
        .route("/api/v1/connections/{name}/rekey", post(rekey))
        .route("/api/v1/connections/{name}/diagnosis", get(diagnosis))
        .route("/api/v1/connections/{name}/peer-config", get(peer_config))
        .fallback(|| async {
            Problem::new(ProblemType::Blank, StatusCode::NOT_FOUND, "no such resource (see docs/api/openapi.yaml)")
        })
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        // Outermost, so that it also sees what the framework answers on its own (405, 413).
        .layer(middleware::map_response(problem_for_bare_errors))
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

/// Where the API's problem types live: the workspace's `repository` URL (Cargo.toml) and
/// `/problems/<type>`. The URIs identify; they need not resolve (RFC 9457 §3.1.1).
const PROBLEM_TYPE_BASE: &str = "https://example.invalid/vpngw/problems/";

/// The media type of every error answer (RFC 9457 §3).
const PROBLEM_JSON: &str = "application/problem+json";

/// What an error answer means beyond its status code, as RFC 9457's `type`. A type of its own
/// only where a client would act on the difference (two 409s that call for different
/// remedies, a 422 with a `problems` list to show); everything else is `about:blank`, titled
/// with the status code's phrase (§4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProblemType {
    /// `about:blank`: nothing beyond the status code.
    Blank,
    /// 404: no connection has the name in the path.
    UnknownConnection,
    /// 409: the connection is defined in the configuration file; change it there.
    FileConnection,
    /// 409: the connection has no established child SA (or, for `ike=true`, IKE SA) to rekey
    /// (down, or a rekey is under way).
    NothingToRekey,
    /// 422: the connection's keys were refused; `problems` names each.
    InvalidConnection,
    /// 400, 413, 415, 422: the body is not a JSON document sent as `application/json`.
    InvalidBody,
    /// 400: a query parameter the operation does not take, or a value it does not know.
    InvalidQuery,
}

impl ProblemType {
    /// The last segment of the type's URI; none for `about:blank`.
    fn name(self) -> Option<&'static str> {
        match self {
            Self::Blank => None,
            Self::UnknownConnection => Some("unknown-connection"),
            Self::FileConnection => Some("file-connection"),
            Self::NothingToRekey => Some("nothing-to-rekey"),
            Self::InvalidConnection => Some("invalid-connection"),
            Self::InvalidBody => Some("invalid-body"),
            Self::InvalidQuery => Some("invalid-query"),
        }
    }

    /// The same for every occurrence of the type (RFC 9457 §3.1.3).
    fn title(self, status: StatusCode) -> &'static str {
        match self {
            Self::Blank => status.canonical_reason().unwrap_or("Error"),
            Self::UnknownConnection => "No such connection",
            Self::FileConnection => "Connection defined in the configuration file",
            Self::NothingToRekey => "Nothing to rekey",
            Self::InvalidConnection => "Invalid connection",
            Self::InvalidBody => "Request body not accepted",
            Self::InvalidQuery => "Query not accepted",
        }
    }

    fn uri(self) -> String {
        self.name().map_or_else(|| "about:blank".to_string(), |name| format!("{PROBLEM_TYPE_BASE}{name}"))
    }
}

/// An error answer: an RFC 9457 problem document, with vpngw's `problems` list (each refused
/// input by its key) as an extension member.
#[derive(Debug)]
struct Problem {
    kind: ProblemType,
    status: StatusCode,
    detail: String,
    problems: Vec<ProblemView>,
}

impl Problem {
    fn new(kind: ProblemType, status: StatusCode, detail: impl Into<String>) -> Self {
        Self { kind, status, detail: detail.into(), problems: Vec::new() }
    }

    fn with_problems(self, problems: Vec<ProblemView>) -> Self {
        Self { problems, ..self }
    }

    fn document(&self) -> Value {
        let mut body = json!({
            "type": self.kind.uri(),
            "title": self.kind.title(self.status),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.problems.is_empty() {
            body["problems"] = json!(self.problems);
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> HttpResponse {
        let body = self.document().to_string();
        (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}

/// The longest framework-written error text kept as a problem's detail.
const BARE_ERROR_TEXT_LIMIT: usize = 4096;

/// Error answers the handlers did not write (axum's 405, a body over the size limit, ...)
/// made problem documents too, their text as the detail and their headers (`Allow`) kept.
/// The framework's texts name what was wrong with the request, never a value from its body.
async fn problem_for_bare_errors(response: HttpResponse) -> HttpResponse {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, BARE_ERROR_TEXT_LIMIT).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let problem = Problem::new(ProblemType::Blank, status, detail).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let (_, body) = problem.into_parts();
    HttpResponse::from_parts(parts, body)
}

/// The `{name}` of a connection's path, its rejection (not UTF-8 once percent-decoded) a
/// problem document.
struct ConnectionName(String);

impl<S: Send + Sync> FromRequestParts<S> for ConnectionName {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        UrlPath::<String>::from_request_parts(parts, state)
            .await
            .map(|UrlPath(name)| Self(name))
            .map_err(|e| Problem::new(ProblemType::Blank, e.status(), e.body_text()))
    }
}

/// A JSON body, refused as a problem document: 415 when not sent as `application/json`, 400
/// when not JSON, the framework's code otherwise (413 over the size limit).
struct JsonBody(Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Problem;

    async fn from_request(req: HttpRequest, state: &S) -> Result<Self, Problem> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(e) => {
                let status = match e {
                    JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
                    ref other => other.status(),
                };
                // serde_json's messages name the place (line, column), never the text there:
                // a key in a broken body stays out of the answer.
                let problem = ProblemView { key: "body".into(), value: String::new(), reason: e.body_text() };
                Err(Problem::new(
                    ProblemType::InvalidBody,
                    status,
                    "the body must be a JSON object of connection keys (Content-Type: application/json)",
                )
                .with_problems(vec![problem]))
            }
        }
    }
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
        let mut r =
            Problem::new(ProblemType::Blank, StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// The API client's address, when the server knows it (the connection's `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
struct Client(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

/// A request that changes something: logged once here, where the API accepts it, then asked.
async fn act(ctx: &Ctx, request: Request, client: Client) -> Response {
    control::log_action(&request, Origin::Api(client.0));
    ask(ctx, request).await
}

async fn ask(ctx: &Ctx, request: Request) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx.commands.send((request, tx)).await.is_err() {
        return Response::error("the daemon is shutting down");
    }
    rx.await.unwrap_or_else(|_| Response::error("the daemon is shutting down"))
}

/// A refused answer as a problem document: the kind picks the code and the type; problems
/// name the fields.
fn refused(r: Response) -> HttpResponse {
    refused_as(r, |kind| kind)
}

/// As [`refused`], with `refine` giving the problem type where an operation knows more about
/// its refusals than the kind says (a conflict on rekey is not a file's connection).
fn refused_as(r: Response, refine: impl FnOnce(ProblemType) -> ProblemType) -> HttpResponse {
    let (status, kind) = match r.kind {
        Some(ErrorKind::NotFound) => (StatusCode::NOT_FOUND, ProblemType::UnknownConnection),
        Some(ErrorKind::Conflict) => (StatusCode::CONFLICT, ProblemType::FileConnection),
        Some(ErrorKind::Invalid) => (StatusCode::UNPROCESSABLE_ENTITY, ProblemType::InvalidConnection),
        Some(ErrorKind::Internal) => (StatusCode::INTERNAL_SERVER_ERROR, ProblemType::Blank),
        // No kind: the daemon is going away (or answered something the API does not expect).
        None => (StatusCode::SERVICE_UNAVAILABLE, ProblemType::Blank),
    };
    Problem::new(refine(kind), status, r.error.unwrap_or_default()).with_problems(r.problems).into_response()
}

/// `GET /status[?state=&name=&limit=&after=]`: the page is in the body (`page`: how many
/// matched, by state, and `next_after`).
async fn status(State(ctx): State<Ctx>, RawQuery(query): RawQuery) -> HttpResponse {
    let selection = match selection_query(query.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(problem) => return invalid_query(problem),
    };
    match ask(&ctx, Request::Status { connection: None, selection }).await {
        Response { ok: true, status: Some(s), .. } => axum::Json(s).into_response(),
        r => refused(r),
    }
}

/// `GET /connections[?state=&name=&limit=&after=]`: the body stays the array it always was;
/// how many matched is `X-Total-Count`, and the next page is the `Link` header's `rel="next"`
/// (RFC 8288), the same query with `after` set.
async fn list(State(ctx): State<Ctx>, RawQuery(query): RawQuery) -> HttpResponse {
    let selection = match selection_query(query.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(problem) => return invalid_query(problem),
    };
    match ask(&ctx, Request::Connections { selection: selection.clone() }).await {
        Response { ok: true, connections: Some(c), page, .. } => {
            let mut r = axum::Json(c).into_response();
            if let Some(page) = page {
                r.headers_mut().insert(TOTAL_COUNT, HeaderValue::from(page.matched));
                let next = page.next_after.map(|after| Selection { after: Some(after), ..selection });
                // Every part was validated to URL-safe characters, so the header value is one.
                if let Some(link) = next.and_then(|n| HeaderValue::from_str(&next_link(&n)).ok()) {
                    r.headers_mut().insert(header::LINK, link);
                }
            }
            r
        }
        r => refused(r),
    }
}

/// How many connections matched a list's filters (before paging).
const TOTAL_COUNT: &str = "x-total-count";

/// The `Link` header of a list's next page.
fn next_link(next: &Selection) -> String {
    let mut query = Vec::new();
    if !next.states.is_empty() {
        let words: Vec<&str> = next.states.iter().map(|s| s.as_str()).collect();
        query.push(format!("state={}", words.join(",")));
    }
    if let Some(name) = &next.name {
        // '?' would read as a second query's start to a careless parser.
        query.push(format!("name={}", name.as_str().replace('?', "%3F")));
    }
    if let Some(limit) = next.limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(after) = &next.after {
        query.push(format!("after={after}"));
    }
    format!("</api/v1/connections?{}>; rel=\"next\"", query.join("&"))
}

/// `state` (comma-separated states), `name` (a pattern), `limit`, `after` from a query string
/// (percent-encoded or not); a refusal names the parameter.
fn selection_query(query: &str) -> Result<Selection, ProblemView> {
    let refused =
        |key: &str, value: &str, reason: String| ProblemView { key: key.to_string(), value: value.to_string(), reason };
    let mut selection = Selection::default();
    let mut given = std::collections::BTreeSet::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key =
            percent_decode(raw_key).ok_or_else(|| refused(raw_key, raw_value, "not percent-encoded UTF-8".into()))?;
        let value =
            percent_decode(raw_value).ok_or_else(|| refused(&key, raw_value, "not percent-encoded UTF-8".into()))?;
        let known = ["state", "name", "limit", "after"];
        if !known.contains(&key.as_str()) {
            return Err(refused(&key, &value, "not a parameter of this operation (state, name, limit, after)".into()));
        }
        if !given.insert(key.clone()) {
            return Err(refused(&key, &value, "given more than once".into()));
        }
        let why = |e: SelectError| refused(&key, &value, e.to_string());
        match key.as_str() {
            "state" => {
                selection.states = value.split(',').map(parse_state).collect::<Result<_, _>>().map_err(why)?;
            }
            "name" => selection.name = Some(NamePattern::parse(&value).map_err(why)?),
            "limit" => selection.limit = Some(parse_limit(&value).map_err(why)?),
            _ => selection.after = Some(parse_after(&value).map_err(why)?),
        }
    }
    Ok(selection)
}

/// A query string's component decoded (`%XX`, and `+` for a space as forms send it); None when
/// an escape is broken or the bytes are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn unknown_connection(name: &str) -> Problem {
    Problem::new(ProblemType::UnknownConnection, StatusCode::NOT_FOUND, format!("no connection named {name:?}"))
}

async fn get_one(State(ctx): State<Ctx>, ConnectionName(name): ConnectionName) -> HttpResponse {
    match ask(&ctx, Request::Connections { selection: Selection::exactly(&name) }).await {
        Response { ok: true, connections: Some(c), .. } => match c.into_iter().find(|c| c.name == name) {
            Some(c) => axum::Json(c).into_response(),
            None => unknown_connection(&name).into_response(),
        },
        r => refused(r),
    }
}

async fn put(
    State(ctx): State<Ctx>,
    client: Client,
    ConnectionName(name): ConnectionName,
    JsonBody(body): JsonBody,
) -> HttpResponse {
    match act(&ctx, Request::PutConnection { name: name.clone(), connection: body }, client).await {
        Response { ok: true, created, .. } => {
            let created = created == Some(true);
            match ask(&ctx, Request::Connections { selection: Selection::exactly(&name) }).await {
                Response { ok: true, connections: Some(c), .. } => match c.into_iter().find(|c| c.name == name) {
                    Some(c) if created => {
                        let mut r = (StatusCode::CREATED, axum::Json(c)).into_response();
                        // The daemon accepted the name, so it is of URL-safe characters;
                        // should one not make a header value, the answer goes without.
                        if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/connections/{name}")) {
                            r.headers_mut().insert(header::LOCATION, location);
                        }
                        r
                    }
                    Some(c) => axum::Json(c).into_response(),
                    None => Problem::new(
                        ProblemType::Blank,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the connection vanished meanwhile",
                    )
                    .into_response(),
                },
                r => refused(r),
            }
        }
        r => refused(r),
    }
}

async fn delete(State(ctx): State<Ctx>, client: Client, ConnectionName(name): ConnectionName) -> HttpResponse {
    match act(&ctx, Request::DeleteConnection { name }, client).await {
        Response { ok: true, .. } => StatusCode::NO_CONTENT.into_response(),
        r => refused(r),
    }
}

async fn initiate(State(ctx): State<Ctx>, client: Client, ConnectionName(name): ConnectionName) -> HttpResponse {
    accepted(act(&ctx, Request::Up { connection: name }, client).await)
}

async fn terminate(State(ctx): State<Ctx>, client: Client, ConnectionName(name): ConnectionName) -> HttpResponse {
    accepted(act(&ctx, Request::Down { connection: name }, client).await)
}

/// As `vpngw rekey [--ike]`: new child SAs for the connection's established ones, on its IKE
/// SA; with `?ike=true` a new IKE SA instead (re-authentication), which takes the child SAs
/// over. 202: the exchanges are started, not done. 409 when there is nothing to rekey (down, or
/// a rekey already under way).
async fn rekey(
    State(ctx): State<Ctx>,
    client: Client,
    ConnectionName(name): ConnectionName,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    let ike = match rekey_query(query.as_deref().unwrap_or("")) {
        Ok(ike) => ike,
        Err(problem) => return invalid_query(problem),
    };
    let r = act(&ctx, Request::Rekey { connection: name, ike }, client).await;
    if r.ok {
        return accepted(r);
    }
    refused_as(r, |kind| if kind == ProblemType::FileConnection { ProblemType::NothingToRekey } else { kind })
}

/// 400 for a query parameter the operation does not take or a value it does not know, naming it.
fn invalid_query(problem: ProblemView) -> HttpResponse {
    let detail = format!("query parameter {}: {}", problem.key, problem.reason);
    Problem::new(ProblemType::InvalidQuery, StatusCode::BAD_REQUEST, detail)
        .with_problems(vec![problem])
        .into_response()
}

fn accepted(r: Response) -> HttpResponse {
    if r.ok {
        (StatusCode::ACCEPTED, axum::Json(json!({ "message": r.message.unwrap_or_default() }))).into_response()
    } else {
        refused(r)
    }
}

async fn diagnosis(State(ctx): State<Ctx>, ConnectionName(name): ConnectionName) -> HttpResponse {
    match ask(&ctx, Request::Diagnose { connection: name }).await {
        Response { ok: true, diagnosis: Some(d), .. } => axum::Json(d).into_response(),
        r => refused(r),
    }
}

/// `GET .../peer-config?format=strongswan|vpngw|generic&include_key=true|false`: the other
/// side's configuration as text. The query is read by hand so that every refusal names the
/// parameter in a problem document.
async fn peer_config(
    State(ctx): State<Ctx>,
    client: Client,
    ConnectionName(name): ConnectionName,
    RawQuery(query): RawQuery,
) -> HttpResponse {
    let (format, include_key) = match peer_config_query(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(problem) => return invalid_query(problem),
    };
    match act(&ctx, Request::PeerConfig { connection: name, format, include_key }, client).await {
        Response { ok: true, peer_config: Some(text), .. } => {
            // A key in the answer: no cache along the way may keep it.
            let cache = if include_key { "no-store" } else { "no-cache" };
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, cache)], text)
                .into_response()
        }
        // The key cannot be written in this format: nothing about the connection is invalid.
        r => refused_as(r, |kind| if kind == ProblemType::InvalidConnection { ProblemType::Blank } else { kind }),
    }
}

/// `format` (default `generic`) and `include_key` (default false) from a query string; a
/// refusal names the parameter.
fn peer_config_query(query: &str) -> Result<(Format, bool), ProblemView> {
    let refused = |key: &str, value: &str, reason: &str| ProblemView {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let mut format = Format::Generic;
    let mut include_key = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "format" => {
                format = Format::parse(value)
                    .ok_or_else(|| refused(key, value, "must be one of strongswan, vpngw, generic"))?;
            }
            "include_key" => {
                include_key = match value {
                    "true" => true,
                    "false" => false,
                    other => return Err(refused(key, other, "must be true or false")),
                };
            }
            other => return Err(refused(other, value, "not a parameter of this operation (format, include_key)")),
        }
    }
    Ok((format, include_key))
}

/// `ike` (default false) from a rekey's query string; a refusal names the parameter.
fn rekey_query(query: &str) -> Result<bool, ProblemView> {
    let mut ike = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let refused = |key: &str, reason: &str| ProblemView {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        match (key, value) {
            ("ike", "true") => ike = true,
            ("ike", "false") => ike = false,
            ("ike", _) => return Err(refused(key, "must be true or false")),
            (other, _) => return Err(refused(other, "not a parameter of this operation (ike)")),
        }
    }
    Ok(ike)
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
        for (bad, key) in
            [("format=cisco", "format"), ("include_key=yes", "include_key"), ("key=1", "key"), ("format", "format")]
        {
            assert_eq!(peer_config_query(bad).map_err(|p| p.key), Err(key.to_string()), "{bad}");
        }
    }

    #[test]
    fn the_list_query_filters_and_pages_and_names_what_it_refuses() {
        use crate::state::ConnectionState::{Connecting, Down};
        assert_eq!(selection_query(""), Ok(Selection::default()));
        let s = selection_query("state=down,connecting&name=branch-*&limit=20&after=branch-0020").unwrap();
        assert_eq!(s.states, [Down, Connecting]);
        assert_eq!(s.name.as_ref().map(NamePattern::as_str), Some("branch-*"));
        assert_eq!((s.limit, s.after.as_deref()), (Some(20), Some("branch-0020")));
        // Percent-encoded as clients send wildcards and commas.
        let encoded = selection_query("name=br%3Fnch-%2A&state=down%2Cconnecting").unwrap();
        assert_eq!(encoded.name.as_ref().map(NamePattern::as_str), Some("br?nch-*"));
        assert_eq!(encoded.states, [Down, Connecting]);
        assert_eq!(selection_query("limit=0").map(|s| s.limit), Ok(Some(0)));
        for (bad, key) in [
            ("state=established", "state"),
            ("state=", "state"),
            ("state=up,,down", "state"),
            ("name=", "name"),
            ("name=a%20b", "name"),
            ("name=%zz", "name"),
            ("name=%C3", "name"),
            ("limit=-1", "limit"),
            ("limit=100001", "limit"),
            ("limit=many", "limit"),
            ("after=branch-*", "after"),
            ("after=", "after"),
            ("limit=1&limit=2", "limit"),
            ("offset=20", "offset"),
            ("format=vpngw", "format"),
        ] {
            let refused = selection_query(bad).expect_err(bad);
            assert_eq!(refused.key, key, "{bad}");
            assert!(!refused.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn the_next_link_repeats_the_query_with_the_cursor() {
        use crate::state::ConnectionState::{Down, Up};
        let next = Selection {
            states: vec![Down, Up],
            name: Some(NamePattern::parse("b?-*").unwrap()),
            exact: None,
            after: Some("b1-x".into()),
            limit: Some(2),
        };
        let link = next_link(&next);
        assert_eq!(link, "</api/v1/connections?state=down,up&name=b%3F-*&limit=2&after=b1-x>; rel=\"next\"");
        // What the link says is what was asked, read back.
        let query = link.trim_start_matches("</api/v1/connections?").split('>').next().unwrap();
        assert_eq!(selection_query(query), Ok(next));
        assert!(HeaderValue::from_str(&link).is_ok());
    }

    #[test]
    fn refusals_are_problem_documents_typed_where_a_client_would_act_on_the_type() {
        let gone = Response::failed(ErrorKind::NotFound, "no connection named \"x\"");
        let doc = |r: HttpResponse| {
            let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
            assert_eq!(content_type, Some(HeaderValue::from_static(PROBLEM_JSON)));
            r.status()
        };
        assert_eq!(doc(refused(gone)), StatusCode::NOT_FOUND);
        let problem =
            Problem::new(ProblemType::InvalidConnection, StatusCode::UNPROCESSABLE_ENTITY, "refused").with_problems(
                vec![ProblemView { key: "connection.start".into(), value: "x".into(), reason: "no".into() }],
            );
        assert_eq!(
            problem.document(),
            json!({
                "type": "https://example.invalid/vpngw/problems/invalid-connection",
                "title": "Invalid connection",
                "status": 422,
                "detail": "refused",
                "problems": [{"key": "connection.start", "value": "x", "reason": "no"}],
            })
        );
        // about:blank: titled with the status code's phrase, no problems member when empty.
        let blank = Problem::new(ProblemType::Blank, StatusCode::SERVICE_UNAVAILABLE, "stopping").document();
        assert_eq!(
            blank,
            json!({"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "stopping"})
        );
    }

    #[test]
    fn the_frameworks_own_error_answers_become_problem_documents_keeping_their_headers() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bare = (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET,HEAD")], "").into_response();
        let r = runtime.block_on(problem_for_bare_errors(bare));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers().get(header::ALLOW), Some(&HeaderValue::from_static("GET,HEAD")));
        assert_eq!(r.headers().get(header::CONTENT_TYPE), Some(&HeaderValue::from_static(PROBLEM_JSON)));
        let body = runtime.block_on(axum::body::to_bytes(r.into_body(), 4096)).unwrap();
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["type"], "about:blank");
        assert_eq!(doc["detail"], "Method Not Allowed");
        // Success answers go through untouched.
        let ok = runtime.block_on(problem_for_bare_errors(StatusCode::NO_CONTENT.into_response()));
        assert!(ok.headers().get(header::CONTENT_TYPE).is_none());
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
