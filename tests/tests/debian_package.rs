//! The Debian package (`make deb`, docs/deployment.md "A VM or host: systemd and the Debian
//! package"), as an operator's machine sees it:
//! - built by `make deb` from the sources as they are (cargo-deb, `[package.metadata.deb]`);
//! - installed with `dpkg -i` into a clean Debian 12 minbase root (`tests/tools/debian-root.sh`),
//!   whose packages must satisfy its dependencies; `vpngw check` passes on the shipped
//!   configuration there; the unit is the one in `deploy/systemd/`, installed but not enabled,
//!   and `systemd-analyze verify` finds nothing wrong with it in that root (a copy whose
//!   command is missing is refused, so a verify that accepts anything cannot pass); its
//!   `systemd-analyze security` exposure is at most the figure the docs give;
//! - the configuration is a conffile: `dpkg -r` removes the binary and the unit and keeps it,
//!   `dpkg -P` removes it, and the daemon's state directory;
//! - lintian reports no error and no warning, and every override shipped is used.
//!
//! Needs root (chroot); the root is deleted afterwards, also when an assertion fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What docs/deployment.md gives as the unit's `systemd-analyze security` exposure.
const DOCUMENTED_EXPOSURE: f64 = 2.2;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs a command; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(out.status.success(), "{shown} failed ({}):\n{}", out.status, text(&out));
    out
}

/// The package, built once per test process by `make deb` (the path cargo-deb prints).
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        vpngw_tests::netns::require_root();
        let out = run(Command::new("make").arg("-C").arg(repo()).arg("--no-print-directory").arg("deb"));
        let said = text(&out);
        let path = said.lines().rev().find(|l| l.trim().ends_with(".deb")).map(|l| PathBuf::from(l.trim()));
        let path = path.unwrap_or_else(|| panic!("make deb printed no package path:\n{said}"));
        let wanted = format!("vpngw_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), wanted);
        assert!(path.is_file(), "{} does not exist", path.display());
        path
    })
}

/// A clean Debian 12 root, extracted from the minbase tarball into a directory of its own;
/// deleted on drop (nothing is mounted in it).
struct Root(PathBuf);

impl Root {
    fn new() -> Self {
        let tar = run(&mut Command::new(repo().join("tests/tools/debian-root.sh")));
        let tar = String::from_utf8_lossy(&tar.stdout).lines().last().unwrap().trim().to_string();
        let tar = if Path::new(&tar).is_absolute() { PathBuf::from(tar) } else { repo().join(tar) };
        let dir = repo().join(format!("target/debian-package-test.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = Root(dir);
        run(Command::new("tar").arg("-C").arg(&root.0).arg("-xf").arg(&tar));
        root
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.0.join(inside.trim_start_matches('/'))
    }

    /// A command run inside the root (chroot), with a plain PATH.
    fn chroot(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.0)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .output()
            .unwrap()
    }

    fn chroot_ok(&self, args: &[&str]) -> String {
        let out = self.chroot(args);
        assert!(out.status.success(), "chroot {args:?} failed ({}):\n{}", out.status, text(&out));
        text(&out)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// systemd-analyze on the host with the unit files of `root` (`--root`).
fn analyze(root: &Root, args: &[&str]) -> Output {
    Command::new("systemd-analyze").args(args).arg(format!("--root={}", root.0.display())).output().unwrap()
}

#[test]
fn the_package_installs_into_a_clean_debian_12_and_removes_cleanly() {
    let deb = package();
    vpngw_tests::tool::require("systemd-analyze", "apt-get install systemd");
    let root = Root::new();
    assert!(!root.path("/usr/bin/vpngw").exists());

    // Installed with dpkg alone: minbase must hold every dependency (libc6).
    std::fs::copy(deb, root.path("/tmp/vpngw.deb")).unwrap();
    root.chroot_ok(&["dpkg", "-i", "/tmp/vpngw.deb"]);
    let version = root.chroot_ok(&["vpngw", "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // The shipped configuration passes the check, and connects nothing.
    let check = root.chroot_ok(&["vpngw", "check", "--config", "/etc/vpngw/vpngw.toml"]);
    assert!(check.contains("OK (0 connection(s), 0 warning(s))"), "{check}");
    let config = root.path("/etc/vpngw/vpngw.toml");
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(repo().join("deploy/debian/vpngw.toml")).unwrap());
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o7777, 0o600);
    let conffiles = root.chroot_ok(&["dpkg-query", "-W", "-f=${Conffiles}", "vpngw"]);
    assert!(conffiles.lines().any(|l| l.trim().starts_with("/etc/vpngw/vpngw.toml ")), "conffiles: {conffiles:?}");

    // The unit: ours, installed, not enabled.
    let unit = root.path("/usr/lib/systemd/system/vpngw.service");
    assert_eq!(std::fs::read(&unit).unwrap(), std::fs::read(repo().join("deploy/systemd/vpngw.service")).unwrap());
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/vpngw.service");
    assert!(std::fs::symlink_metadata(&wants).is_err(), "installing enabled the unit");

    // systemd-analyze verify in that root. Minbase has no systemd: the units systemd itself
    // ships (sysinit.target, network-online.target, ...) come from this Debian 12 host's systemd.
    let units = root.path("/usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let to = units.join(entry.file_name());
        if std::fs::symlink_metadata(&to).is_err() {
            run(Command::new("cp").arg("-a").arg(entry.path()).arg(&to));
        }
    }
    let verify = analyze(&root, &["verify", "vpngw.service"]);
    assert!(verify.status.success() && text(&verify).trim().is_empty(), "verify:\n{}", text(&verify));
    let broken = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("ExecStart=/usr/bin/vpngw run", "ExecStart=/usr/bin/vpngw-absent run");
    std::fs::write(units.join("vpngw-broken.service"), broken).unwrap();
    let verify = analyze(&root, &["verify", "vpngw-broken.service"]);
    assert!(!verify.status.success(), "verify accepted a unit whose command is missing:\n{}", text(&verify));
    assert!(text(&verify).contains("/usr/bin/vpngw-absent"), "{}", text(&verify));
    std::fs::remove_file(units.join("vpngw-broken.service")).unwrap();

    let security = analyze(&root, &["security", "--offline=yes", "--no-pager", "vpngw.service"]);
    let said = text(&security);
    let exposure: f64 = said
        .lines()
        .find_map(|l| l.split("Overall exposure level for vpngw.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= DOCUMENTED_EXPOSURE,
        "exposure {exposure} > {DOCUMENTED_EXPOSURE} (docs/deployment.md):\n{said}"
    );

    // Removal keeps the configuration; purge takes it and the state directory.
    std::fs::create_dir_all(root.path("/var/lib/vpngw")).unwrap();
    std::fs::write(root.path("/var/lib/vpngw/connections.toml"), "").unwrap();
    root.chroot_ok(&["dpkg", "-r", "vpngw"]);
    assert!(!root.path("/usr/bin/vpngw").exists(), "dpkg -r left the binary");
    assert!(!unit.exists(), "dpkg -r left the unit");
    assert!(config.exists(), "dpkg -r removed the conffile");
    let status = root.chroot_ok(&["dpkg-query", "-W", "-f=${Status}", "vpngw"]);
    assert_eq!(status.trim(), "deinstall ok config-files");
    root.chroot_ok(&["dpkg", "-P", "vpngw"]);
    assert!(!config.exists(), "dpkg -P left the conffile");
    assert!(!root.path("/etc/vpngw").exists(), "dpkg -P left /etc/vpngw");
    assert!(!root.path("/var/lib/vpngw").exists(), "dpkg -P left /var/lib/vpngw");
    let gone = root.chroot(&["dpkg-query", "-W", "-f=${Status}", "vpngw"]);
    assert!(!gone.status.success() || text(&gone).contains("not-installed"), "{}", text(&gone));
}

#[test]
fn lintian_reports_no_error_or_warning_and_every_override_is_used() {
    let deb = package();
    run(Command::new(repo().join("tests/tools/install-deps.sh")).arg("lintian"));
    let lintian = |args: &[&str]| {
        let out = Command::new("lintian").args(args).arg(deb).output().unwrap();
        (out.status.success(), text(&out))
    };
    let (ok, said) = lintian(&["--fail-on", "error,warning"]);
    println!("{said}");
    let complaints: Vec<&str> = said.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(ok && complaints.is_empty(), "lintian:\n{said}");
    // Each override names a tag lintian still raises: a stale one would hide nothing and stay.
    let overrides = std::fs::read_to_string(repo().join("deploy/debian/vpngw.lintian-overrides")).unwrap();
    let tags: Vec<&str> = overrides
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_start_matches("vpngw: ").split_whitespace().next().unwrap())
        .collect();
    assert!(!tags.is_empty());
    // (With overrides shown, lintian 2.116 exits 2 for an overridden error: only the list counts.)
    let (_, said) = lintian(&["--show-overrides"]);
    for tag in tags {
        assert!(said.lines().any(|l| l.starts_with(&format!("O: vpngw: {tag}"))), "override {tag} not used:\n{said}");
    }
}
