//! Connections created through the management API: their tables as the client gave them,
//! persisted in the API's state file, and the API's bearer token. Whether a request makes a
//! valid connection is decided here ([`parse`]); applying it is the daemon's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::config::{Api, Connection};
use crate::ops::api::{self, ApiToken};
use crate::ops::control::ProblemView;

pub struct RuntimeConnections {
    /// By name, as given (persisted).
    tables: BTreeMap<String, toml::Table>,
    /// The API's bearer token, re-read from its file on reload.
    token: Option<ApiToken>,
}

impl RuntimeConnections {
    pub fn new(tables: BTreeMap<String, toml::Table>, token: Option<ApiToken>) -> Self {
        Self { tables, token }
    }

    /// Whether `name` was created through the API.
    pub fn contains(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// The runtime connections' tables, by name (hot backup sends them to the standby).
    pub fn tables(&self) -> &BTreeMap<String, toml::Table> {
        &self.tables
    }

    /// The names of the runtime connections (the others are the configuration file's).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.tables.keys().cloned().collect()
    }

    /// Saves the connection's table (state file first, then here). Returns whether it is new.
    pub fn put(&mut self, api: &Api, name: &str, table: toml::Table) -> std::io::Result<bool> {
        let mut tables = self.tables.clone();
        let created = tables.insert(name.to_string(), table).is_none();
        api::save_state(&api.state_file, &tables)?;
        self.tables = tables;
        Ok(created)
    }

    /// Deletes the connection (state file first, when the API keeps one, then here). Without
    /// `[api]` (removed by a reload while its listener still runs) it is forgotten all the same.
    pub fn delete(&mut self, api: Option<&Api>, name: &str) -> std::io::Result<()> {
        let mut tables = self.tables.clone();
        tables.remove(name);
        if let Some(api) = api {
            api::save_state(&api.state_file, &tables)?;
        }
        self.tables = tables;
        Ok(())
    }

    /// The configuration file now defines these names: theirs win.
    pub fn yield_to_file(&mut self, file_names: &[String]) {
        self.tables.retain(|n, _| !file_names.contains(n));
    }

    /// A rotated API token takes effect now (the listener itself stays).
    pub fn reload_token(&self, api: Option<&Api>) {
        let (Some(token), Some(api)) = (&self.token, api) else { return };
        match token.reload(api) {
            Ok(true) => tracing::info!(file = %api.token_file.display(), "API token re-read: the new one is in use"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "API token not re-read: the previous one stays in use"),
        }
    }
}

fn problem(key: &str, value: String, reason: impl Into<String>) -> Vec<ProblemView> {
    vec![ProblemView { key: key.into(), value, reason: reason.into() }]
}

/// The connection a PUT of `name` with `body` asks for, with the configuration file's keys and
/// checks (`others`: the connections it must agree with), and its table as it will be kept.
pub fn parse(
    name: &str,
    body: serde_json::Value,
    public: Ipv4Addr,
    base: &Path,
    others: &[Connection],
) -> Result<(Connection, toml::Table), Vec<ProblemView>> {
    let mut table = match body {
        serde_json::Value::Object(_) => match toml::Value::try_from(&body) {
            Ok(toml::Value::Table(t)) => t,
            _ => {
                return Err(problem(
                    "connection",
                    String::new(),
                    "values must be strings, numbers, booleans, arrays or objects (no null)",
                ));
            }
        },
        _ => return Err(problem("connection", String::new(), "must be a JSON object of connection keys")),
    };
    if table.contains_key("pre_shared_key_file") {
        // Through the API a key file would let a client probe which files root can read.
        return Err(problem(
            "connection.pre_shared_key_file",
            String::new(),
            "not taken through the API: send pre_shared_key (write-only); key files belong in the configuration file",
        ));
    }
    match table.get("name") {
        Some(toml::Value::String(n)) if *n != name => {
            return Err(problem(
                "connection.name",
                format!("{n:?}"),
                format!("differs from the name in the path ({name:?})"),
            ));
        }
        _ => {
            table.insert("name".into(), toml::Value::String(name.to_string()));
        }
    }
    let connection = crate::config::parse_connection(&table, public, base, "connection").map_err(|problems| {
        problems.into_iter().map(|p| ProblemView { key: p.key, value: p.value, reason: p.reason }).collect::<Vec<_>>()
    })?;
    // The checks across connections of the configuration file.
    if let Some(other) = others.iter().find(|c| {
        c.peer.name != name
            && c.peer.remote_address == connection.peer.remote_address
            && c.peer.psk != connection.peer.psk
    }) {
        return Err(problem(
            "connection.pre_shared_key",
            String::new(),
            format!(
                "connection {:?} has the same remote_address but another key; main mode selects the key by address, so they must be equal",
                other.peer.name
            ),
        ));
    }
    // Overlapping subnets would let one connection's SA carry the other's traffic.
    for other in others.iter().filter(|c| c.peer.name != name) {
        if let Some(o) = crate::config::overlap(&connection, other) {
            return Err(problem(
                "connection.remote_subnets",
                format!("{:?}", o.ours.remote.to_string()),
                o.reason(&format!("{:?}", other.peer.name)),
            ));
        }
    }
    Ok((connection, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_whose_subnets_overlap_another_is_refused_naming_it() {
        let file = "[gateway]\npublic_address = \"198.51.100.1\"\n[[connection]]\nname = \"from-file\"\n\
                    remote_address = \"198.51.100.9\"\npre_shared_key = \"file-psk-abcdef\"\n\
                    local_subnets = [\"10.1.1.0/24\"]\nremote_subnets = [\"10.9.0.0/24\"]\n";
        let others = crate::config::Config::parse(file, Path::new(".")).unwrap().connections;
        let public = Ipv4Addr::new(198, 51, 100, 1);
        let body = |local: &str| {
            serde_json::json!({
                "remote_address": "198.51.100.2",
                "pre_shared_key": "api-psk-0123456789",
                "local_subnets": [local],
                "remote_subnets": ["10.9.0.0/16"],
            })
        };
        let Err(problems) = parse("to-b", body("10.1.0.0/16"), public, Path::new("."), &others) else {
            panic!("an overlapping connection accepted")
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "connection.remote_subnets");
        assert!(problems[0].reason.contains("\"from-file\""), "{}", problems[0].reason);
        assert!(!format!("{problems:?}").contains("api-psk"), "the key in a problem");
        assert!(parse("to-b", body("10.1.2.0/24"), public, Path::new("."), &others).is_ok(), "disjoint refused");
        // Replacing a connection does not conflict with its own earlier version.
        let (me, _) = parse("to-b", body("10.1.2.0/24"), public, Path::new("."), &others).unwrap();
        let with_me = [others.clone(), vec![me]].concat();
        assert!(parse("to-b", body("10.1.2.0/24"), public, Path::new("."), &with_me).is_ok(), "refused against itself");
    }

    #[test]
    fn a_deleted_connection_is_forgotten_without_an_api_section_too() {
        let tables = BTreeMap::from([("to-b".to_string(), toml::Table::new())]);
        let mut runtime = RuntimeConnections::new(tables, None);
        assert!(runtime.contains("to-b"));
        assert!(runtime.delete(None, "to-b").is_ok());
        assert!(!runtime.contains("to-b"), "kept after its DELETE");
    }
}
