//! # vpngw: the gateway daemon and its command-line interface
//!
//! **Owns:** the configuration file, the daemon's event loop (driving the IKE engine over UDP
//! 500/4500 and publishing SAs to the dataplane's table), raw ESP's link-path resolution over
//! netlink, health probes, the control socket, the management API (HTTP, runtime
//! connections), Prometheus metrics, signals, logging, saved tunnels (a restart without
//! renegotiation), hot backup's daemon side (the role from the public address, the records sent
//! to and imported from the partner through `vpngw-sync`), and the CLI (`run`, `check`,
//! `status`, `up [--wait]`, `down`, `rekey`, `diagnose`, `peer-config`, `reload`,
//! `connection add/remove/list`, `stop`, `ha notify/check/handover`, `healthcheck`), and what
//! systemd is told (sd_notify).
//!
//! **Threads:** the daemon's loop (one current-thread tokio runtime) owns the IKE engine and
//! every change of state; the control socket, the management API and metrics run on a second
//! runtime on a thread of their own (`vpngw-ops`) and answer reads from the state the loop
//! publishes through an `ArcSwap` (at most every 50 ms, at once after a command), so a flood
//! that keeps the loop busy does not delay them; commands go to the loop over a bounded
//! channel and time out with an error answer (`ops/published.rs`). The dataplane's workers and
//! the health probes have threads of their own.
//!
//! **Must not touch:** protocol logic (that is `vpngw-ike`) or packet crypto (`vpngw-esp`).
//!
//! **Data in and out:** TOML in; UDP datagrams through the engine; SAs out to the SA table;
//! netlink (routes into the TUN, link-path lookups); ICMP health probes through the tunnel;
//! JSON over the control socket and the management API; Prometheus text on `/metrics`; sync
//! records to and from the hot-backup partner (through `vpngw-sync`); logs to stderr.

#![forbid(unsafe_code)]

// The daemon's loop and wiring, and the owners it drives.
mod child_sas;
mod cli_docs;
mod client;
mod config;
mod daemon;
mod dh_pool;
mod ha;
mod health;
mod history;
mod ike_driver;
mod keylog;
mod ledger;
mod link_paths;
mod logging;
mod retry;
mod routes;
mod runtime_connections;
mod saved_tunnels;
mod state;
mod systemd;
mod volume;
// The operator's surfaces and read models.
mod ops;
// What one fuzz input does (fuzz/ compiles it too); replayed by its tests.
#[cfg(test)]
mod fuzz_inputs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONTROL_SOCKET};
use crate::logging::LogFormat;
use crate::ops::control::{self, ErrorKind, Request};

/// The version and the git revision it was built from (build.rs), as `--version` shows them.
const VERSION_AND_REVISION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VPNGW_REVISION"), ")");

#[derive(Parser)]
#[command(
    name = "vpngw",
    version = VERSION_AND_REVISION,
    about = "IPsec VPN gateway (IKEv1, ESP)",
    long_about = "vpngw: a site-to-site IPsec VPN gateway (IKEv1, ESP). `vpngw run` is the daemon; the \
                  other commands talk to it over its control socket (root only).\n\n\
                  Example: vpngw check && vpngw status",
    after_help = client::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground (logs to stderr; SIGTERM stops, SIGHUP reloads).
    #[command(after_help = "Example: vpngw run --config /etc/vpngw/vpngw.toml --log-format json")]
    Run {
        /// The configuration file (docs/configuration.md).
        #[arg(long, value_name = "FILE", default_value = "/etc/vpngw/vpngw.toml")]
        config: PathBuf,
        /// How log lines look on stderr: text for people, json for log shippers. RUST_LOG (an
        /// EnvFilter directive) picks what is logged; `vpngw log-level` changes it at run time.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Debugging only: append every ESP SA's encryption key to FILE in tcpdump's `-E`
        /// secrets format (like SSLKEYLOGFILE). Anyone who reads FILE can decrypt the traffic.
        #[arg(long, value_name = "FILE")]
        esp_keylog: Option<PathBuf>,
        /// Go on with the tunnels `vpngw stop --save-tunnels FILE` saved: the same IKE SAs and
        /// SPIs, no renegotiation with the peers.
        #[arg(long, value_name = "FILE")]
        restore_tunnels: Option<PathBuf>,
    },
    /// Validate a configuration file: every problem with its key and place; weak algorithms are
    /// warned about.
    ///
    /// Each line starts with FILE:LINE:COLUMN of the key it is about, connections named by
    /// their `name`. With --host, also what this host must provide: the public address on an
    /// interface, UDP 500 and 4500 free on it, /dev/net/tun, net.ipv4.ip_forward, rp_filter,
    /// the capabilities, and the secret files. Exit 0 when nothing is wrong, 2 otherwise.
    #[command(
        after_help = "Examples:\n  vpngw check --config /etc/vpngw/vpngw.toml\n  vpngw check --host --json | jq '.problems[] | .text'"
    )]
    Check {
        /// The configuration file to check.
        #[arg(long, value_name = "FILE", default_value = "/etc/vpngw/vpngw.toml")]
        config: PathBuf,
        /// One JSON document for programs (docs/configuration.md, "Checking a file") instead of
        /// the text.
        #[arg(long)]
        json: bool,
        /// Check this host too: addresses, ports, /dev/net/tun, sysctls, capabilities and the
        /// secret files (run it as the user the daemon runs as; it changes nothing).
        #[arg(long)]
        host: bool,
    },
    /// Show the gateway, its connections, IKE and child SAs.
    ///
    /// Byte counts are scaled for people (exact with --json); each child SA says when it last
    /// carried a packet each way (within a second). With CONNECTION, only that one (exit 3 when
    /// there is none). Connections come in name order, after a line counting them by state;
    /// --state, --name, --limit and --after pick and page them (the daemon does the filtering),
    /// --summary prints the counts alone.
    #[command(
        after_help = "Examples:\n  vpngw status\n  vpngw status to-branch\n  vpngw status --summary\n  vpngw status --state connecting,down --name 'branch-*' --limit 20\n  vpngw status --limit 20 --after branch-0020\n  vpngw status --json | jq '.connections[] | {name, state}'"
    )]
    Status {
        /// Only this connection (`name` of its [[connection]] table).
        #[arg(value_name = "CONNECTION", conflicts_with_all = ["state", "name_pattern", "limit", "after", "summary"])]
        name: Option<String>,
        #[command(flatten)]
        filters: Filters,
        /// Only the counts of the connections (matching the filters) by state, no connection
        /// (as --limit 0).
        #[arg(long, conflicts_with_all = ["limit", "after"])]
        summary: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Bring a connection up now.
    ///
    /// With --wait, return once it is up (exit 0), or print the
    /// diagnosis and exit 1 when the negotiation fails, 124 when --timeout passes first.
    #[command(after_help = "Example: vpngw up to-branch --wait --timeout 30")]
    Up {
        /// The connection's name (`name` of its [[connection]] table).
        #[arg(value_name = "CONNECTION")]
        name: String,
        /// Wait until every child SA of the connection is up (or it fails).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60, requires = "wait")]
        timeout: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Re-read the configuration file now, as SIGHUP does.
    ///
    /// Says whether it was applied
    /// (exit 0) or refused with its problems (exit 2; the running configuration stays).
    #[command(after_help = "Example: vpngw reload --config /etc/vpngw/vpngw.toml")]
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Probe the daemon as an orchestrator does (liveness or readiness).
    ///
    /// GET /healthz (or /readyz with --ready) on the
    /// metrics listener; exit 0 on 200. For container HEALTHCHECKs (no curl needed).
    #[command(after_help = "Example (Dockerfile): HEALTHCHECK CMD [\"vpngw\", \"healthcheck\", \"--ready\"]")]
    Healthcheck {
        /// The `[metrics] listen` address.
        #[arg(long, default_value = "127.0.0.1:9720")]
        address: std::net::SocketAddr,
        /// Readiness (/readyz) instead of liveness (/healthz).
        #[arg(long)]
        ready: bool,
        /// `{"ok", "probe", "status", "body"}` in JSON instead of the body's text.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 2)]
        timeout: u64,
    },
    /// Take a connection down (Deletes are sent to the peer).
    #[command(after_help = "Example: vpngw down to-branch")]
    Down {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Why a connection is not up.
    ///
    /// Its parameters next to the recent failures, each with what
    /// to check and do.
    #[command(after_help = "Example: vpngw diagnose to-branch")]
    Diagnose {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print the configuration of the other side of a connection (the customer's gateway).
    ///
    /// The mirror image of this one: strongSwan's swanctl.conf, a vpngw [[connection]] table, or a
    /// generic table in the seed's words. The pre-shared key is a placeholder the peer refuses
    /// to load, unless --include-key.
    #[command(after_help = "Example: vpngw peer-config branch-1 --format strongswan > swanctl.conf")]
    PeerConfig {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        /// strongswan (swanctl.conf), vpngw (a [[connection]] table) or generic (every parameter
        /// in words).
        #[arg(long, value_enum, default_value = "generic")]
        format: ops::peer_config::Format,
        /// Print the pre-shared key too (the output then opens with a line saying it holds a
        /// secret; the daemon logs that the key was handed out).
        #[arg(long)]
        include_key: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Runtime connections (the management API's, persisted in its state file).
    #[command(after_help = "Example: vpngw connection add branch-7 --file branch-7.toml")]
    Connection {
        #[command(subcommand)]
        action: ConnectionCmd,
    },
    /// Hot backup with keepalived (docs/high-availability.md): its hooks, and handover.
    #[command(after_help = "Example: vpngw ha handover")]
    Ha {
        #[command(subcommand)]
        action: HaCmd,
    },
    /// Replace a connection's child SAs now (new keys; traffic keeps flowing).
    ///
    /// With --ike, re-authenticate instead (as `swanctl --rekey --reauth`): a new main mode
    /// with the peer, whose IKE SA then takes the child SAs over (their SPIs and keys stay) and
    /// the old IKE SA is deleted.
    #[command(after_help = "Examples:\n  vpngw rekey to-branch\n  vpngw rekey to-branch --ike")]
    Rekey {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        /// Replace the IKE SA (a new main mode, pre-shared key checked again), not the child SAs.
        #[arg(long)]
        ike: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Stop the daemon.
    ///
    /// As SIGTERM (every SA deleted, the peers told), or with --save-tunnels
    /// without a word to the peers, its tunnels saved for `vpngw run --restore-tunnels`.
    #[command(
        after_help = "Example (an upgrade without renegotiation):\n  vpngw stop --save-tunnels /run/vpngw/tunnels\n  vpngw run --restore-tunnels /run/vpngw/tunnels"
    )]
    Stop {
        /// Save the established tunnels (keys included: written mode 0600) to FILE and stop
        /// without deleting them.
        #[arg(long, value_name = "FILE")]
        save_tunnels: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Change what the daemon logs, now: an EnvFilter directive, as RUST_LOG takes.
    ///
    /// Lasts until the daemon stops (a reload of the configuration keeps it); the change is
    /// logged at INFO. An invalid filter is refused with exit 2.
    #[command(
        after_help = "Examples:\n  vpngw log-level debug\n  vpngw log-level info,vpngw_ike=debug\n  vpngw log-level info"
    )]
    LogLevel {
        /// The filter: a level (error, warn, info, debug, trace) and/or target=level pairs.
        #[arg(value_name = "FILTER")]
        filter: String,
        #[command(flatten)]
        target: Target,
    },
    /// Write the shell completions or the man pages (for packagers: `make deb` runs it).
    #[command(hide = true, after_help = "Example: vpngw generate completions bash target/assets")]
    Generate {
        #[command(subcommand)]
        what: GenerateCmd,
    },
}

#[derive(Subcommand)]
enum GenerateCmd {
    /// The completion script for SHELL, written into DIR (vpngw.bash, _vpngw, vpngw.fish).
    Completions {
        /// The shell the script is for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
        /// Where to write it (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// vpngw.1 and a page per subcommand, written into DIR.
    Man {
        /// Where to write them (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConnectionCmd {
    /// Create or replace a connection from a TOML file holding one connection's keys (those of
    /// a [[connection]] table: remote_address, pre_shared_key, local_subnets, [ike], ...).
    #[command(after_help = "Example: vpngw connection add branch-7 --file branch-7.toml")]
    Add {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        /// The TOML file with the connection's keys (no [[connection]] header).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a runtime connection (its SAs are deleted first, the peer is told).
    #[command(after_help = "Example: vpngw connection remove branch-7")]
    Remove {
        /// The connection's name.
        #[arg(value_name = "CONNECTION")]
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every connection: its source (file or api), peer, algorithms and state.
    ///
    /// A table in name order; with --json every parameter (never the key) and the status, as
    /// the management API lists them. --state, --name, --limit and --after pick and page them
    /// as for `vpngw status`: the table then ends with how many matched and the next page's
    /// command (with --json, an array as before; the next page's command on stderr, and the
    /// last name of a page is the cursor for the next).
    #[command(
        after_help = "Examples:\n  vpngw connection list\n  vpngw connection list --state down --name 'branch-*' --limit 50\n  vpngw connection list --json | jq '.[] | select(.source == \"api\") | .name'"
    )]
    List {
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum HaCmd {
    /// keepalived's notify hook: tell the daemon the VRRP state (MASTER, BACKUP, FAULT, STOP).
    #[command(
        after_help = "Example (keepalived.conf): notify \"/etc/keepalived/vpngw-notify.sh /usr/bin/vpngw ha notify\"\n(keepalived passes TYPE NAME STATE; the script, deploy/ha/notify.sh, passes STATE on)"
    )]
    Notify {
        /// keepalived's VRRP state: MASTER, BACKUP, FAULT or STOP.
        #[arg(value_name = "STATE")]
        state: String,
        #[command(flatten)]
        target: Target,
    },
    /// keepalived's health check (vrrp_script): exits 0 when the daemon's loop answers.
    #[command(after_help = "Example (keepalived.conf): vrrp_script vpngw_check { script \"/usr/bin/vpngw ha check\" }")]
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Hand the active role to the standby now: the last changes are synced and acknowledged,
    /// then keepalived gives up the role (track_file). Refused unless the standby is in sync.
    #[command(after_help = "Example: vpngw ha handover")]
    Handover {
        #[command(flatten)]
        target: Target,
    },
}

/// Which connections `status` and `connection list` show (`ops/select.rs`); the daemon applies
/// them.
#[derive(clap::Args, Clone)]
struct Filters {
    /// Only connections in these states: up, connecting, down (comma-separated, or repeated).
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = ops::select::parse_state)]
    state: Vec<state::ConnectionState>,
    /// Only connections whose name matches PATTERN: `*` any run of characters, `?` one (quote it
    /// for the shell: --name 'branch-*').
    #[arg(long = "name", value_name = "PATTERN", value_parser = ops::select::NamePattern::parse)]
    name_pattern: Option<ops::select::NamePattern>,
    /// At most N connections (in name order), from 0 to 100000; 0 counts them without listing.
    /// Default: all.
    #[arg(long, value_name = "N", value_parser = ops::select::parse_limit)]
    limit: Option<usize>,
    /// Only connections whose names sort after NAME: the cursor of the next page (the last name
    /// of the one before; it need not exist any more).
    #[arg(long, value_name = "NAME", value_parser = ops::select::parse_after)]
    after: Option<String>,
}

impl Filters {
    fn selection(&self) -> ops::select::Selection {
        ops::select::Selection {
            states: self.state.clone(),
            name: self.name_pattern.clone(),
            exact: None,
            after: self.after.clone(),
            limit: self.limit,
        }
    }

    /// The filters as typed (without the paging), for "connections matching ...": None when
    /// there are none.
    fn words(&self) -> Option<String> {
        let mut words = Vec::new();
        if !self.state.is_empty() {
            let states: Vec<&str> = self.state.iter().map(|s| s.as_str()).collect();
            words.push(format!("--state {}", states.join(",")));
        }
        if let Some(p) = &self.name_pattern {
            words.push(format!("--name '{}'", p.as_str()));
        }
        (!words.is_empty()).then(|| words.join(" "))
    }

    /// The command that shows the page after `after`: `command` with the same filters and limit.
    fn next_page(&self, command: &str, after: &str) -> String {
        let mut line = format!("vpngw {command}");
        if let Some(words) = self.words() {
            line = format!("{line} {words}");
        }
        if let Some(limit) = self.limit {
            line = format!("{line} --limit {limit}");
        }
        format!("{line} --after {after}")
    }
}

/// How the CLI finds the daemon: `--socket`, or the control_socket of `--config`, or the default.
#[derive(clap::Args)]
struct Target {
    /// The daemon's control socket (default: the control_socket of --config, else
    /// /run/vpngw/vpngw.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Find the control socket in this configuration file's [gateway] control_socket.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Give up on an answer of the daemon after this many seconds (exit 1): a stuck daemon
    /// does not hang the caller (a script, keepalived's check).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = control::DEFAULT_ANSWER_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    control_timeout: u64,
    /// Answer in JSON, for programs: the document itself for reads (status, diagnose,
    /// connection list), `{"ok": true, "message": ...}` for commands, and
    /// `{"ok": false, "error": ..., "kind": ..., "problems": [...]}` on stdout when refused
    /// (the exit code as without it).
    #[arg(long)]
    json: bool,
}

impl Target {
    fn daemon(&self) -> Result<client::Daemon, ConfigError> {
        let socket = match (&self.socket, &self.config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => Config::load(c)?.gateway.control_socket,
            (None, None) => PathBuf::from(DEFAULT_CONTROL_SOCKET),
        };
        Ok(client::Daemon { socket, answer_timeout: std::time::Duration::from_secs(self.control_timeout) })
    }
}

/// Why `run` could not start, once: `error: ...` for people (text), one ERROR line of the
/// log for collectors (json, where every line must be JSON).
fn fatal(format: LogFormat, e: &dyn std::fmt::Display) {
    match format {
        LogFormat::Text => eprintln!("error: {e}"),
        LogFormat::Json => tracing::error!("{e}"),
    }
}

/// A configuration `run` refused, as log lines (for --log-format json): one ERROR line per
/// problem, each with the file, the key, the value and the reason as fields.
fn log_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { path, problems } => {
            for p in problems {
                tracing::error!(
                    event = "config_refused",
                    file = %path.display(),
                    key = %p.key,
                    value = %p.value,
                    problem = %p.reason,
                    "configuration refused: {p}"
                );
            }
        }
        other => tracing::error!(event = "config_refused", "{other}"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Finds the daemon `target` names and a runtime to talk to it with, then runs `talk`: exit 2
/// when the configuration cannot name the socket, 1 when no runtime can be built.
fn with_daemon(target: &Target, talk: impl FnOnce(&tokio::runtime::Runtime, &client::Daemon) -> ExitCode) -> ExitCode {
    let daemon = match target.daemon() {
        Ok(d) => d,
        Err(e) if target.json => {
            return client::fail(true, &e.to_string(), Some(ErrorKind::Invalid), ExitCode::from(client::EXIT_INVALID));
        }
        Err(e) => {
            ops::check::print_config_error(&e);
            return ExitCode::from(client::EXIT_INVALID);
        }
    };
    match runtime() {
        Ok(rt) => talk(&rt, &daemon),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client(target: &Target, request: Request) -> ExitCode {
    with_daemon(target, |rt, daemon| {
        let answer = rt.block_on(control::request_within(&daemon.socket, &request, daemon.answer_timeout));
        client::print_answer(answer, target.json)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config, json, host } => ops::check::run(&config, json, host),
        Cmd::Run { config, log_format, esp_keylog, restore_tunnels } => {
            logging::init(log_format);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    fatal(log_format, &e);
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(daemon::run(&config, esp_keylog, restore_tunnels)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(daemon::DaemonError::Config(e)) => {
                    match log_format {
                        // For people: as `vpngw check` prints it.
                        LogFormat::Text => ops::check::print_config_error(&e),
                        LogFormat::Json => log_config_error(&e),
                    }
                    ExitCode::from(2)
                }
                Err(e) => {
                    fatal(log_format, &e);
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { name, filters, summary, target } => {
            let mut selection = filters.selection();
            if summary {
                selection.limit = Some(0);
            }
            let counts_words = filters.words();
            let counts = match (&name, &counts_words) {
                (Some(_), _) => ops::status::Counts::Hide,
                (None, Some(words)) => ops::status::Counts::Matching(words),
                (None, None) => ops::status::Counts::All,
            };
            let listing = client::Listing { counts, next_page: &|after| filters.next_page("status", after) };
            with_daemon(&target, |rt, daemon| {
                let request = Request::Status { connection: name, selection };
                let answer = rt.block_on(control::request_within(&daemon.socket, &request, daemon.answer_timeout));
                client::print_listing(answer, target.json, &listing)
            })
        }
        Cmd::Up { name, wait: false, target, .. } => client(&target, Request::Up { connection: name }),
        Cmd::Up { name, wait: true, timeout, target } => with_daemon(&target, |rt, daemon| {
            rt.block_on(client::up_and_wait(daemon, &name, std::time::Duration::from_secs(timeout), target.json))
        }),
        Cmd::Reload { target } => client(&target, Request::Reload),
        Cmd::Healthcheck { address, ready, json, timeout } => {
            client::healthcheck(address, ready, std::time::Duration::from_secs(timeout.max(1)), json)
        }
        Cmd::Down { name, target } => client(&target, Request::Down { connection: name }),
        Cmd::Rekey { name, ike, target } => client(&target, Request::Rekey { connection: name, ike }),
        Cmd::Stop { save_tunnels, target } => {
            // The daemon writes the file: a relative path means the caller's directory.
            let save_tunnels = match save_tunnels.map(|p| std::path::absolute(&p)).transpose() {
                Ok(p) => p,
                Err(e) => {
                    let message = format!("--save-tunnels: {e}");
                    let exit = ExitCode::from(client::EXIT_INVALID);
                    return client::fail(target.json, &message, Some(ErrorKind::Invalid), exit);
                }
            };
            client(&target, Request::Stop { save_tunnels })
        }
        Cmd::Diagnose { name, target } => client(&target, Request::Diagnose { connection: name }),
        Cmd::PeerConfig { name, format, include_key, target } => {
            client(&target, Request::PeerConfig { connection: name, format, include_key })
        }
        Cmd::Connection { action: ConnectionCmd::Add { name, file, target } } => {
            let table = match std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()))
            {
                Ok(t) => t,
                Err(e) => {
                    let message = format!("{}: {e}", file.display());
                    let exit = ExitCode::from(client::EXIT_INVALID);
                    return client::fail(target.json, &message, Some(ErrorKind::Invalid), exit);
                }
            };
            let connection = serde_json::to_value(table).unwrap_or_default();
            client(&target, Request::PutConnection { name, connection })
        }
        Cmd::Connection { action: ConnectionCmd::Remove { name, target } } => {
            client(&target, Request::DeleteConnection { name })
        }
        Cmd::Connection { action: ConnectionCmd::List { filters, target } } => {
            let selection = filters.selection();
            let words = filters.words();
            // The unfiltered table stays as it was; a filtered or paged one says what it holds.
            let counts = match (&words, selection.is_everything()) {
                (_, true) => ops::status::Counts::Hide,
                (Some(words), false) => ops::status::Counts::Matching(words),
                (None, false) => ops::status::Counts::All,
            };
            let listing = client::Listing { counts, next_page: &|after| filters.next_page("connection list", after) };
            with_daemon(&target, |rt, daemon| {
                let request = Request::Connections { selection };
                let answer = rt.block_on(control::request_within(&daemon.socket, &request, daemon.answer_timeout));
                client::print_listing(answer, target.json, &listing)
            })
        }
        Cmd::Ha { action: HaCmd::Notify { state, target } } => client(&target, Request::HaNotify { state }),
        Cmd::Ha { action: HaCmd::Check { target } } => client(&target, Request::HaCheck),
        Cmd::Ha { action: HaCmd::Handover { target } } => client(&target, Request::HaHandover),
        Cmd::LogLevel { filter, target } => match logging::parse_filter(&filter) {
            Ok(_) => client(&target, Request::LogLevel { filter }),
            Err(e) => client::fail(
                target.json,
                &e.to_string(),
                Some(ErrorKind::Invalid),
                ExitCode::from(client::EXIT_INVALID),
            ),
        },
        Cmd::Generate { what } => {
            let written = match what {
                GenerateCmd::Completions { shell, dir } => {
                    cli_docs::completions(Cli::command(), shell, &dir).map(|p| println!("{}", p.display()))
                }
                GenerateCmd::Man { dir } => cli_docs::man_pages(Cli::command(), &dir),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every argument and subcommand, at every depth, says what it is: `--help` and the man
    /// page are generated from these, so a missing text would be a hole in both.
    #[test]
    fn every_argument_and_subcommand_has_help_and_every_subcommand_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let built_in = matches!(arg.get_id().as_str(), "help" | "version");
                if !built_in && !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {} has no help", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{sub_path}: no help"));
                }
                // Commands that only group others (connection, ha) carry their example too.
                let example = sub.get_after_help().or(sub.get_after_long_help()).map(|h| h.to_string());
                if !example.is_some_and(|h| h.contains("Example")) {
                    missing.push(format!("{sub_path}: no example (after_help)"));
                }
                walk(sub, &sub_path, missing);
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "vpngw", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
