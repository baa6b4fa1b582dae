//! What one fuzz input does for the configuration file and the management API's request bodies,
//! shared by the `cargo fuzz` targets in `fuzz/` and the tests below that replay their corpora.
//!
//! vpngw is a binary crate (no library target): this file is compiled here only under
//! `cfg(test)`, and by the fuzz package (`fuzz/src/lib.rs`), which compiles `config/` and
//! `runtime_connections.rs` from their files too (so it goes through `crate::` paths only).
//! Every function takes arbitrary bytes and must never panic.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::config::{Config, parse_connection};

/// Where relative key files would be read from: nowhere (see [`config_text`]).
const BASE: &str = "/nonexistent/vpngw-fuzz";

/// `vpngw check` on a file of these bytes (UTF-8, as `Config::load` reads it). An accepted file
/// names each connection once.
///
/// Files with a `pre_shared_key_file` key anywhere are skipped: reading the named file is the
/// point of that key, and a fuzzer that found `/dev/zero` would only measure the disk.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(table) = text.parse::<toml::Table>()
        && mentions_key_file(&toml::Value::Table(table))
    {
        return;
    }
    let Ok(config) = Config::parse(text, Path::new(BASE)) else { return };
    let mut names: Vec<&str> = config.connections.iter().map(|c| c.peer.name.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "an accepted file names each connection once");
}

fn mentions_key_file(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => t.iter().any(|(k, v)| k == "pre_shared_key_file" || mentions_key_file(v)),
        toml::Value::Array(a) => a.iter().any(mentions_key_file),
        _ => false,
    }
}

/// The configuration file an API request is checked against: one connection, to 198.51.100.2.
const FILE: &str = r#"
[gateway]
public_address = "198.51.100.1"

[[connection]]
name = "branch-1"
remote_address = "198.51.100.2"
pre_shared_key = "lab-psk-0123456789abcdef"
local_subnets = ["10.1.0.0/24"]
remote_subnets = ["10.2.0.0/24"]
"#;

/// The connection name in the request's path.
pub const API_NAME: &str = "fuzz-1";

/// A `PUT /v1/connections/fuzz-1` with these bytes as its JSON body, as the API decides it
/// (`runtime_connections::parse`, after axum's JSON extractor). An accepted connection has the
/// path's name, and its table, written to the state file and read back as on a restart, gives
/// the same connection.
pub fn api_body(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(file) = Config::parse(FILE, Path::new(BASE)) else { panic!("the fixed file is valid") };
    let public = Ipv4Addr::new(198, 51, 100, 1);
    let Ok((connection, table)) =
        crate::runtime_connections::parse(API_NAME, body, public, Path::new(BASE), &file.connections)
    else {
        return;
    };
    assert_eq!(connection.peer.name, API_NAME);
    // The state file's form (`ops::api::save_state` and `load_state`), without the file.
    let mut root = toml::Table::new();
    root.insert("connection".into(), toml::Value::Array(vec![toml::Value::Table(table)]));
    let text = match toml::to_string(&root) {
        Ok(t) => t,
        Err(e) => panic!("an accepted connection cannot be saved: {e}"),
    };
    let reread = text.parse::<toml::Table>().ok().and_then(|mut r| match r.remove("connection") {
        Some(toml::Value::Array(mut a)) if a.len() == 1 => match a.pop() {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None,
        },
        _ => None,
    });
    let Some(reread) = reread else { panic!("the saved connection does not read back:\n{text}") };
    match parse_connection(&reread, public, Path::new(BASE), "connection") {
        Ok(again) => assert!(again.same_as(&connection), "the connection read back differs:\n{text}"),
        Err(problems) => panic!("the saved connection is refused on restart: {problems:?}\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    //! Replays the committed corpora and regression inputs of the `config` and `api_body` fuzz
    //! targets (fuzz/corpus/<target>, fuzz/regressions/<target>).

    use std::path::PathBuf;

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let fuzz = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz"));
        let mut files = Vec::new();
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
            for entry in dir.flatten() {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
        assert!(!files.is_empty(), "{target}: the seed corpus is committed");
        files
    }

    #[test]
    fn config_inputs_replay() {
        for (path, bytes) in inputs("config") {
            eprintln!("{}", path.display());
            super::config_text(&bytes);
        }
    }

    #[test]
    fn api_body_inputs_replay() {
        for (path, bytes) in inputs("api_body") {
            eprintln!("{}", path.display());
            super::api_body(&bytes);
        }
    }

    /// The seeds get past parsing: the sample files are accepted, the sample body too.
    #[test]
    fn seeds_are_accepted() {
        for name in ["minimal.toml", "full.toml"] {
            let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/config")).join(name);
            let parsed =
                super::Config::parse(&std::fs::read_to_string(path).unwrap(), std::path::Path::new(super::BASE));
            assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
        }
        let body = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/api_body/full.json")).unwrap();
        let body = serde_json::from_slice(&body).unwrap();
        let file = super::Config::parse(super::FILE, std::path::Path::new(super::BASE)).unwrap();
        let public = std::net::Ipv4Addr::new(198, 51, 100, 1);
        let parsed = crate::runtime_connections::parse(
            super::API_NAME,
            body,
            public,
            std::path::Path::new(super::BASE),
            &file.connections,
        );
        assert!(parsed.is_ok(), "{:?}", parsed.err());
    }
}
