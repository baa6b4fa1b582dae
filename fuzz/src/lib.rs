//! The parts of the vpngw binary crate the `config` and `api_body` targets need, compiled here
//! from their files: vpngw has no library target, and these modules reach nothing of the daemon
//! but `ops::api` and `ops::control`, which the stand-ins below replace (only their names are
//! used on the validation path).
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../crates/vpngw/src/config/mod.rs"]
pub mod config;
#[path = "../../crates/vpngw/src/fuzz_inputs.rs"]
pub mod fuzz_inputs;
#[path = "../../crates/vpngw/src/runtime_connections.rs"]
pub mod runtime_connections;

/// Stand-ins for what `runtime_connections.rs` imports from the daemon's `ops`.
pub mod ops {
    pub mod api {
        use std::collections::BTreeMap;
        use std::path::Path;

        use crate::config::Api;

        /// Never built here: the validation path does not touch the token.
        pub struct ApiToken;

        impl ApiToken {
            pub fn reload(&self, _api: &Api) -> std::io::Result<bool> {
                Ok(false)
            }
        }

        /// Not called on the validation path (`runtime_connections::parse`).
        pub fn save_state(_path: &Path, _tables: &BTreeMap<String, toml::Table>) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub mod control {
        /// `ops::control::ProblemView`'s fields.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct ProblemView {
            pub key: String,
            pub value: String,
            pub reason: String,
        }
    }
}
