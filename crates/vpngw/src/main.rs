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
mod client;
mod config;
mod daemon;
mod ha;
mod health;
mod history;
mod ike_driver;
mod keylog;
mod ledger;
mod link_paths;
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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, DEFAULT_CONTROL_SOCKET};
use crate::ops::control::{self, Request};

#[derive(Parser)]
#[command(name = "vpngw", version, about = "IPsec VPN gateway (IKEv1, ESP)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground (logs to stderr; SIGTERM stops, SIGHUP reloads).
    Run {
        #[arg(long, default_value = "/etc/vpngw/vpngw.toml")]
        config: PathBuf,
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
    /// Validate a configuration file: every problem with its key; weak algorithms are warned about.
    Check {
        #[arg(long, default_value = "/etc/vpngw/vpngw.toml")]
        config: PathBuf,
    },
    /// Show connections, IKE and child SAs.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Bring a connection up now. With --wait, return once it is up (exit 0), or print the
    /// diagnosis and exit 1 when the negotiation fails, 124 when --timeout passes first.
    /// Example: vpngw up to-branch --wait --timeout 30
    Up {
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
    /// Re-read the configuration file now, as SIGHUP does, and say whether it was applied
    /// (exit 0) or refused with its problems (exit 2; the running configuration stays).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Probe the daemon as an orchestrator does: GET /healthz (or /readyz with --ready) on the
    /// metrics listener; exit 0 on 200. For container HEALTHCHECKs (no curl needed).
    Healthcheck {
        /// The `[metrics] listen` address.
        #[arg(long, default_value = "127.0.0.1:9720")]
        address: std::net::SocketAddr,
        /// Readiness (/readyz) instead of liveness (/healthz).
        #[arg(long)]
        ready: bool,
        /// Seconds to wait for the answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 2)]
        timeout: u64,
    },
    /// Take a connection down (Deletes are sent to the peer).
    Down {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Why a connection is not up: its parameters next to the recent failures, each with what
    /// to check and do.
    Diagnose {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print the configuration of the other side of a connection (the customer's gateway), the
    /// mirror image of this one: strongSwan's swanctl.conf, a vpngw [[connection]] table, or a
    /// generic table in the seed's words. The pre-shared key is a placeholder the peer refuses
    /// to load, unless --include-key. Example: vpngw peer-config branch-1 --format strongswan
    PeerConfig {
        name: String,
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
    Connection {
        #[command(subcommand)]
        action: ConnectionCmd,
    },
    /// Hot backup with keepalived (docs/high-availability.md): its hooks, and handover.
    Ha {
        #[command(subcommand)]
        action: HaCmd,
    },
    /// Replace a connection's child SAs now (new keys; traffic keeps flowing).
    Rekey {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Stop the daemon: as SIGTERM (every SA deleted, the peers told), or with --save-tunnels
    /// without a word to the peers, its tunnels saved for `vpngw run --restore-tunnels`.
    Stop {
        /// Save the established tunnels (keys included: written mode 0600) to FILE and stop
        /// without deleting them.
        #[arg(long, value_name = "FILE")]
        save_tunnels: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ConnectionCmd {
    /// Create or replace a connection from a TOML file holding one connection's keys (those of
    /// a [[connection]] table: remote_address, pre_shared_key, local_subnets, [ike], ...).
    Add {
        name: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a runtime connection (its SAs are deleted first, the peer is told).
    Remove {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every connection with its source (file or api), parameters and state, as JSON.
    List {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum HaCmd {
    /// keepalived's notify hook: tell the daemon the VRRP state (MASTER, BACKUP, FAULT, STOP).
    /// Example (keepalived.conf): notify "/usr/sbin/vpngw ha notify" passes TYPE NAME STATE;
    /// deploy/ha/notify.sh picks STATE.
    Notify {
        state: String,
        #[command(flatten)]
        target: Target,
    },
    /// keepalived's health check (vrrp_script): exits 0 when the daemon's loop answers.
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Hand the active role to the standby now: the last changes are synced and acknowledged,
    /// then keepalived gives up the role (track_file). Refused unless the standby is in sync.
    Handover {
        #[command(flatten)]
        target: Target,
    },
}

/// How the CLI finds the daemon: `--socket`, or the control_socket of `--config`, or the default.
#[derive(clap::Args)]
struct Target {
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf, ConfigError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            Some(c) => Ok(Config::load(c)?.gateway.control_socket),
            None => Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { path, problems } => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  error: {p}");
            }
        }
        other => eprintln!("error: {other}"),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                println!("  warning: {w}");
            }
            println!("{}: OK ({} connection(s), {} warning(s))", path.display(), c.connections.len(), c.warnings.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn client(target: &Target, request: Request, json: bool) -> ExitCode {
    let socket = match target.socket() {
        Ok(s) => s,
        Err(e) => {
            print_config_error(&e);
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(control::request(&socket, &request)) {
        Ok(r) if r.ok => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            if let Some(text) = r.peer_config {
                print!("{text}");
            } else if let Some(d) = r.diagnosis {
                if json {
                    println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
                } else {
                    print!("{}", d.render(now));
                }
            } else if let Some(c) = r.connections {
                println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
            } else if let Some(status) = r.status {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
                } else {
                    print!("{}", status.render(now));
                }
            } else if let Some(m) = r.message {
                println!("{m}");
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("error: {}", r.error.unwrap_or_default());
            for p in &r.problems {
                if p.value.is_empty() {
                    eprintln!("  {}: {}", p.key, p.reason);
                } else {
                    eprintln!("  {} = {}: {}", p.key, p.value, p.reason);
                }
            }
            if r.kind == Some(control::ErrorKind::Invalid) { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config, log_format, esp_keylog, restore_tunnels } => {
            init_logging(log_format);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(daemon::run(&config, esp_keylog, restore_tunnels)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(daemon::DaemonError::Config(e)) => {
                    print_config_error(&e);
                    ExitCode::from(2)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { json, target } => client(&target, Request::Status, json),
        Cmd::Up { name, wait: false, target, .. } => client(&target, Request::Up { connection: name }, false),
        Cmd::Up { name, wait: true, timeout, target } => {
            let socket = match target.socket() {
                Ok(s) => s,
                Err(e) => {
                    print_config_error(&e);
                    return ExitCode::from(2);
                }
            };
            match runtime() {
                Ok(rt) => rt.block_on(client::up_and_wait(&socket, &name, std::time::Duration::from_secs(timeout))),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Reload { target } => client(&target, Request::Reload, false),
        Cmd::Healthcheck { address, ready, timeout } => {
            client::healthcheck(address, ready, std::time::Duration::from_secs(timeout.max(1)))
        }
        Cmd::Down { name, target } => client(&target, Request::Down { connection: name }, false),
        Cmd::Rekey { name, target } => client(&target, Request::Rekey { connection: name }, false),
        Cmd::Stop { save_tunnels, target } => {
            // The daemon writes the file: a relative path means the caller's directory.
            let save_tunnels = match save_tunnels.map(|p| std::path::absolute(&p)).transpose() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: --save-tunnels: {e}");
                    return ExitCode::from(2);
                }
            };
            client(&target, Request::Stop { save_tunnels }, false)
        }
        Cmd::Diagnose { name, json, target } => client(&target, Request::Diagnose { connection: name }, json),
        Cmd::PeerConfig { name, format, include_key, target } => {
            client(&target, Request::PeerConfig { connection: name, format, include_key }, false)
        }
        Cmd::Connection { action: ConnectionCmd::Add { name, file, target } } => {
            let table = match std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|t| t.parse::<toml::Table>().map_err(|e| e.to_string()))
            {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let connection = serde_json::to_value(table).unwrap_or_default();
            client(&target, Request::PutConnection { name, connection }, false)
        }
        Cmd::Connection { action: ConnectionCmd::Remove { name, target } } => {
            client(&target, Request::DeleteConnection { name }, false)
        }
        Cmd::Connection { action: ConnectionCmd::List { target } } => client(&target, Request::Connections, true),
        Cmd::Ha { action: HaCmd::Notify { state, target } } => client(&target, Request::HaNotify { state }, false),
        Cmd::Ha { action: HaCmd::Check { target } } => client(&target, Request::HaCheck, false),
        Cmd::Ha { action: HaCmd::Handover { target } } => client(&target, Request::HaHandover, false),
    }
}
