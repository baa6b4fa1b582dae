//! The walker's primitives (ADR 0006): each reads one value of a `toml::Table`, checks its type
//! and range, and on a mismatch records a [`Problem`] under the value's key and goes on, so that
//! one pass lists every problem of a file. The section parsers in the sibling files build on
//! these.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    /// The key's path in the document, connections by their place in the file:
    /// `connection[0].ike.dh_group` (stable and unambiguous, for programs).
    pub key: String,
    pub value: String,
    pub reason: String,
    /// The name of the `[[connection]]` the key is in, when it has a valid one that no other
    /// connection of the file has too: people read the key with it ([`Problem::shown_key`]).
    pub connection: Option<String>,
    /// Where in the file the key (or its value) is, when it is there (`spans.rs`).
    pub at: Option<Position>,
}

/// A place in a file: line and column, both from 1 (the column counts characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Problem {
    /// The key as people read it: `connection "to-branch".ike.dh_group` for
    /// `connection[0].ike.dh_group` when the connection has a name of its own, else the key.
    pub fn shown_key(&self) -> String {
        match (&self.connection, self.key.strip_prefix("connection[")) {
            (Some(name), Some(rest)) => match rest.split_once(']') {
                Some((_, tail)) => format!("connection {name:?}{tail}"),
                None => self.key.clone(),
            },
            _ => self.key.clone(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.shown_key();
        if self.value.is_empty() {
            write!(f, "{key}: {}", self.reason)
        } else {
            write!(f, "{key} = {}: {}", self.value, self.reason)
        }
    }
}

/// Walks a document, collecting problems and warnings instead of stopping at the first.
pub(super) struct Walker {
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    /// Where relative paths (`pre_shared_key_file`, `api.token_file`) are taken from.
    pub(super) base: PathBuf,
}

/// Why a file holding a secret (a pre-shared key, the API token, the API's TLS key) is refused:
/// group or others have any access to it. Names the file, its mode and the fix; None when
/// only its owner may read it.
pub fn loose_secret_mode(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} has mode {mode:04o}: group or others can read it, and it holds a secret; run chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// The characters a gateway or connection name may hold, as problems name them.
pub(super) const NAME_CHARS: &str = "letters, digits, '-', '_' and '.'";

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl Walker {
    pub(super) fn new(base: &Path) -> Self {
        Self { problems: Vec::new(), warnings: Vec::new(), base: base.to_path_buf() }
    }

    pub(super) fn problem(&mut self, key: &str, value: Option<&Value>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            value: value.map(show).unwrap_or_default(),
            reason: reason.into(),
            ..Problem::default()
        });
    }

    pub(super) fn warn(&mut self, key: &str, value: &str, reason: &str) {
        self.warnings.push(Problem {
            key: key.into(),
            value: format!("{value:?}"),
            reason: reason.into(),
            ..Problem::default()
        });
    }

    /// A file named by `key` that holds a secret: a problem if others may read it. A file that
    /// cannot be examined is left to whoever reads it (a problem there, an error at start).
    pub(super) fn secret_file(&mut self, key: &str, value: Option<&Value>, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path)
            && let Some(reason) = loose_secret_mode(path, &meta)
        {
            self.problem(key, value, reason);
        }
    }

    pub(super) fn unknown_keys(&mut self, prefix: &str, table: &Table, known: &[&str]) {
        for k in table.keys() {
            if !known.contains(&k.as_str()) {
                self.problem(&format!("{prefix}{k}"), None, format!("unknown key (known here: {})", known.join(", ")));
            }
        }
    }

    pub(super) fn table<'t>(&mut self, key: &str, parent: &'t Table, name: &str) -> Option<&'t Table> {
        match parent.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => {
                self.problem(key, Some(v), "must be a table");
                None
            }
        }
    }

    pub(super) fn string(&mut self, key: &str, t: &Table, name: &str) -> Option<String> {
        match t.get(name) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.problem(key, Some(v), "must be a string");
                None
            }
        }
    }

    pub(super) fn integer(&mut self, key: &str, t: &Table, name: &str, min: i64, max: i64) -> Option<i64> {
        match t.get(name) {
            None => None,
            Some(Value::Integer(i)) if (min..=max).contains(i) => Some(*i),
            Some(v @ Value::Integer(_)) => {
                self.problem(key, Some(v), format!("must be between {min} and {max}"));
                None
            }
            Some(v) => {
                self.problem(key, Some(v), "must be an integer");
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, key: &str, t: &Table, name: &str, default: bool) -> bool {
        match t.get(name) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.problem(key, Some(v), "must be true or false");
                default
            }
        }
    }

    /// A string from a closed set of words, with a default.
    pub(super) fn word<T: Copy>(&mut self, key: &str, t: &Table, name: &str, default: T, words: &[(&str, T)]) -> T {
        let Some(s) = self.string(key, t, name) else { return default };
        match words.iter().find(|(w, _)| w.eq_ignore_ascii_case(&s)) {
            Some((_, v)) => *v,
            None => {
                let allowed: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                self.problem(key, t.get(name), format!("must be one of: {}", allowed.join(", ")));
                default
            }
        }
    }

    pub(super) fn ipv4(&mut self, key: &str, t: &Table, name: &str, required: bool) -> Option<Ipv4Addr> {
        let s = self.string(key, t, name);
        match s {
            None if required => {
                self.problem(key, None, "required (an IPv4 address)");
                None
            }
            None => None,
            Some(s) => match s.parse::<Ipv4Addr>() {
                Ok(a) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => Some(a),
                Ok(_) => {
                    self.problem(key, t.get(name), "must be a unicast address");
                    None
                }
                Err(_) => {
                    self.problem(key, t.get(name), "must be an IPv4 address");
                    None
                }
            },
        }
    }
}
