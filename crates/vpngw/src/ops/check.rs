//! `vpngw check`: the configuration's problems and warnings, each where it is in the file
//! (`vpngw.toml:12:9: error: connection "to-branch".ike.dh_group = "dh3": ...`), as text or as
//! one JSON document (`--json`), and with `--host` what this host must provide too
//! (`host_check.rs`). Exit 0 when nothing is wrong, 2 otherwise (docs/configuration.md).

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::client::EXIT_INVALID;
use crate::config::{Config, ConfigError, Problem};
use crate::ops::host_check;

/// Where a finding comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The configuration file itself.
    Config,
    /// This host, for the configuration (`--host`).
    Host,
}

/// One problem or warning, as `--json` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub scope: Scope,
    /// The key's path in the file, connections by index (`connection[0].ike.dh_group`); a
    /// host's own name for what is not a key (`net.ipv4.ip_forward`, `/dev/net/tun`); empty
    /// for the file as a whole (unreadable, not TOML).
    pub key: String,
    /// The name of the connection the key is in (null: not in one, or it has no valid,
    /// unique name).
    pub connection: Option<String>,
    /// The value as written (strings quoted; keys never: `<redacted>`); may be empty.
    pub value: String,
    pub reason: String,
    /// Where in the file (from 1); null when the key is not in it (a required key, a host fact).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The line as the text output prints it (after the place and the severity).
    pub text: String,
}

impl Item {
    fn new(scope: Scope, p: &Problem) -> Self {
        Self {
            scope,
            key: p.key.clone(),
            connection: p.connection.clone(),
            value: p.value.clone(),
            reason: p.reason.clone(),
            line: p.at.map(|a| a.line),
            column: p.at.map(|a| a.column),
            text: p.to_string(),
        }
    }

    /// `FILE:LINE:COLUMN`, `FILE` for a configuration finding without a place, `host` for a
    /// host fact.
    fn place(&self, file: &str) -> String {
        match (self.line, self.column, self.scope) {
            (Some(l), Some(c), _) => format!("{file}:{l}:{c}"),
            (_, _, Scope::Config) => file.to_string(),
            (_, _, Scope::Host) => "host".to_string(),
        }
    }
}

/// The whole answer of `vpngw check` (`--json` prints it).
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    /// No problem (exit 0).
    pub ok: bool,
    /// Connections in the file (0 when it is invalid).
    pub connections: usize,
    pub problems: Vec<Item>,
    pub warnings: Vec<Item>,
    /// Whether the host was looked at: asked (`--host`) and the configuration valid.
    pub host_checked: bool,
    /// The text output's lines for an unreadable or non-TOML file (the parser's caret included).
    #[serde(skip)]
    fatal: Option<String>,
}

/// Checks the file at `path`, and with `host` this host for it.
pub fn report(path: &Path, host: bool) -> Report {
    let file = path.display().to_string();
    let mut r = Report {
        file,
        ok: false,
        connections: 0,
        problems: Vec::new(),
        warnings: Vec::new(),
        host_checked: false,
        fatal: None,
    };
    let whole = |reason: String, at: Option<crate::config::Position>| Item {
        scope: Scope::Config,
        key: String::new(),
        connection: None,
        value: String::new(),
        text: reason.clone(),
        reason,
        line: at.map(|a| a.line),
        column: at.map(|a| a.column),
    };
    match Config::load(path) {
        Ok(c) => {
            r.connections = c.connections.len();
            r.warnings = c.warnings.iter().map(|w| Item::new(Scope::Config, w)).collect();
            if host {
                let mut found = host_check::check(&c);
                // Findings keyed by configuration keys point into the file too.
                if let Ok(text) = std::fs::read_to_string(path) {
                    crate::config::locate(&text, &mut found.problems);
                    crate::config::locate(&text, &mut found.warnings);
                }
                r.problems.extend(found.problems.iter().map(|p| Item::new(Scope::Host, p)));
                r.warnings.extend(found.warnings.iter().map(|p| Item::new(Scope::Host, p)));
                r.host_checked = true;
            }
        }
        Err(e) => match &e {
            ConfigError::Invalid { problems, .. } => {
                r.problems = problems.iter().map(|p| Item::new(Scope::Config, p)).collect();
            }
            ConfigError::Syntax { error, .. } => {
                r.problems.push(whole(format!("not valid TOML: {}", error.message), error.at));
                r.fatal = Some(e.to_string());
            }
            ConfigError::Read { .. } => {
                r.problems.push(whole(e.to_string(), None));
                r.fatal = Some(e.to_string());
            }
        },
    }
    r.ok = r.problems.is_empty();
    r
}

impl Report {
    /// The exit code: 0 when nothing is wrong, 2 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID) }
    }

    /// The text output: warnings and the summary on stdout, problems on stderr.
    pub fn print(&self) {
        if let Some(fatal) = &self.fatal {
            eprintln!("error: {fatal}");
            return;
        }
        for w in &self.warnings {
            println!("{}: warning: {}", w.place(&self.file), w.text);
        }
        let config_problems = self.problems.iter().filter(|p| p.scope == Scope::Config).count();
        if config_problems > 0 {
            eprintln!("{}: {config_problems} problem(s):", self.file);
        } else {
            let host_warnings = self.warnings.iter().filter(|w| w.scope == Scope::Host).count();
            println!(
                "{}: OK ({} connection(s), {} warning(s))",
                self.file,
                self.connections,
                self.warnings.len() - host_warnings
            );
            if self.host_checked {
                let host_problems = self.problems.len();
                let verdict = if host_problems == 0 { "OK" } else { "NOT READY" };
                println!("host: {verdict} ({host_problems} problem(s), {host_warnings} warning(s))");
            }
        }
        for p in &self.problems {
            eprintln!("{}: error: {}", p.place(&self.file), p.text);
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A configuration refused at start (`vpngw run`) or when a client reads the control socket's
/// path from it: the same lines as `vpngw check` prints.
pub fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { path, problems } => {
            let file = path.display().to_string();
            eprintln!("{file}: {} problem(s):", problems.len());
            for p in problems {
                eprintln!("{}: error: {p}", Item::new(Scope::Config, p).place(&file));
            }
        }
        other => eprintln!("error: {other}"),
    }
}

/// `vpngw check [--json] [--host]`.
pub fn run(path: &Path, json: bool, host: bool) -> ExitCode {
    let r = report(path, host);
    if json {
        println!("{}", r.json());
    } else {
        r.print();
    }
    r.exit_code()
}
