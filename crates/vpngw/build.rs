//! Puts the git revision the binary is built from into `VPNGW_REVISION` (for `--version`,
//! `vpngw status` and the `vpngw_build_info` metric): `git rev-parse --short=12 HEAD`, with
//! `-dirty` when the work tree has changes, "unknown" when there is no git or no repository
//! (a source tarball): a build never fails for want of it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let revision = match git(&dir, &["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{commit}-dirty") } else { commit }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=VPNGW_REVISION={revision}");

    // Run again when HEAD moves (a checkout, a commit: the branch's ref, or packed-refs) or the
    // index changes (staging, committing). Edits to tracked files that are not staged do not
    // rerun it, so `-dirty` can lag behind them until then; a build from a clean checkout, as
    // a release is, is always right. Without a repository this prints nothing further, and
    // cargo then reruns it only when the package changes.
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watched = vec![git_dir.join("HEAD"), git_dir.join("index"), git_dir.join("packed-refs")];
        if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git_dir.join(branch));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
