//! Running external tools from tests, with failures that say what to install.

use std::path::Path;
use std::process::{Command, Output};

/// Finds `name` on PATH (or an absolute path) or fails the test with an install hint.
pub fn require(name: &str, hint: &str) -> String {
    if Path::new(name).is_absolute() && Path::new(name).exists() {
        return name.to_string();
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => p.to_string_lossy().into_owned(),
        None => panic!("`{name}` not found: {hint} (`make test` installs it)"),
    }
}

/// Runs a command and returns its output; panics with stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    if !out.status.success() {
        panic!("{shown} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// The Python that has the `cryptography` package: Debian's (python3-cryptography) by default,
/// `VPNGW_TEST_PYTHON` to override.
pub fn python() -> String {
    if let Ok(p) = std::env::var("VPNGW_TEST_PYTHON") {
        return p;
    }
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_string()
    } else {
        require("python3", "apt-get install python3")
    }
}
