//! `vpngw generate`: the shell completions and the man pages, generated from the clap
//! definition of the command line, so they cannot drift from `--help`.
//!
//! A hidden subcommand of the built binary rather than a build script: the `Cli` type lives in
//! `main.rs` next to types of the daemon (`ops::peer_config::Format`, the configuration's
//! defaults), which a build script could only `include!` by compiling half the crate twice.
//! `make deb` runs it on the binary it packages (the package is built for the host), and what it
//! writes lands in `target/assets/`, which `[package.metadata.deb]` installs.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot create {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write into {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

fn create_dir(dir: &Path) -> Result<(), GenerateError> {
    std::fs::create_dir_all(dir).map_err(|source| GenerateError::CreateDir { path: dir.to_path_buf(), source })
}

/// Writes the completion script for `shell` into `dir` (vpngw.bash, _vpngw, vpngw.fish, ...);
/// returns its path.
pub fn completions(mut command: clap::Command, shell: Shell, dir: &Path) -> Result<PathBuf, GenerateError> {
    create_dir(dir)?;
    clap_complete::generate_to(shell, &mut command, "vpngw", dir)
        .map_err(|source| GenerateError::Write { path: dir.to_path_buf(), source })
}

/// Writes vpngw.1 and a page per subcommand (vpngw-status.1, vpngw-ha-notify.1, ...) into `dir`.
pub fn man_pages(command: clap::Command, dir: &Path) -> Result<(), GenerateError> {
    create_dir(dir)?;
    clap_mangen::generate_to(command, dir).map_err(|source| GenerateError::Write { path: dir.to_path_buf(), source })
}
