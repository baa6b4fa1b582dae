//! The daemon's logging: tracing to stderr (text or JSON), filtered by an EnvFilter
//! (RUST_LOG, else `info`) that `vpngw log-level` replaces at run time.
//!
//! The filter is process-global, like the subscriber it belongs to, so its reload handle is
//! kept here rather than in the daemon's state: the loop answers the control request, and a
//! configuration reload (which rebuilds the daemon's own state) never touches it.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people and journald.
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("{directive:?} is not a log filter: {reason} (examples: debug, info,vpngw_ike=debug)")]
    Invalid { directive: String, reason: String },
    #[error("this process does not log through a reloadable filter")]
    NotReloadable,
    #[error("cannot apply the log filter: {0}")]
    Reload(#[from] reload::Error),
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Parses an EnvFilter directive (`debug`, `info,vpngw_ike=debug`); the CLI checks with it
/// before asking the daemon, so a typo is refused with exit 2 at once.
pub fn parse_filter(directive: &str) -> Result<EnvFilter, LogFilterError> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| LogFilterError::Invalid { directive: directive.to_string(), reason: e.to_string() })
}

/// Installs the subscriber: stderr, RUST_LOG's filter (else `info`), reloadable.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only on a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let subscriber = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => subscriber.with(lines).init(),
        LogFormat::Json => subscriber.with(lines.json()).init(),
    }
    // init() runs once per process (a second would have panicked above): the handle is new.
    let _ = FILTER.set(handle);
}

/// Replaces the log filter with `directive`; says which filter was in force before.
pub fn set_filter(directive: &str) -> Result<String, LogFilterError> {
    let filter = parse_filter(directive)?;
    let handle = FILTER.get().ok_or(LogFilterError::NotReloadable)?;
    let before = handle.with_current(|f| f.to_string())?;
    handle.reload(filter)?;
    Ok(before)
}
