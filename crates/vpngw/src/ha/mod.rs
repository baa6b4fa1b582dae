//! Dual-server hot backup, the daemon's side (docs/high-availability.md). keepalived elects the
//! active server and moves the public and LAN virtual addresses; this module follows the role
//! from the public address's presence ([`presence`]), keeps the state the standby needs flowing
//! to it through the sync channel (`vpngw-sync`: authenticated, encrypted, replay-protected),
//! and says what a takeover must import. What the records hold is in [`records`]; the engine
//! and the dataplane are changed by the daemon (`daemon/ha.rs`), not here.
//!
//! - Active: every sync interval, the IKE SAs the engine names as changed
//!   ([`vpngw_ike::Endpoint::take_changed`]) are exported again, removed ones are removed, and
//!   the sequence-number record is refreshed. The sync channel sends the whole store as a bulk
//!   when a standby connects, then only what changed.
//! - Standby: the channel keeps the replica; nothing is negotiated or installed here. When the
//!   public address arrives, the replica is imported (outbound sequence numbers jump past the
//!   last synced value, see [`records::auto_jump`]) and this server answers from then on.
//! - An active that loses the address drops its state without telling the peers (the other
//!   server serves them now) and becomes a standby.

pub mod presence;
pub mod records;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use vpngw_ike::IkeSaId;
use vpngw_sync::{Notice, Role, SyncConfig, SyncHandle, SyncKey, SyncStats};

use crate::config::Ha;
use records::Sequences;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha] key_file: {0}")]
    Key(#[from] vpngw_sync::KeyError),
    #[error(
        "[ha]: this host must let the standby bind the public address {0} before it holds it: \
         set net.ipv4.ip_nonlocal_bind=1 (sysctl; see docs/high-availability.md)"
    )]
    NonlocalBind(Ipv4Addr),
}

/// What keepalived's notify hook last said (`vpngw ha notify STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepalivedState {
    Master,
    Backup,
    Fault,
    Stop,
}

impl KeepalivedState {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "MASTER" => Some(Self::Master),
            "BACKUP" => Some(Self::Backup),
            "FAULT" => Some(Self::Fault),
            "STOP" | "DELETED" => Some(Self::Stop),
            _ => None,
        }
    }
}

/// The last takeover, for status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Takeover {
    pub at_unix_ms: u64,
    /// From the address's arrival to the imported state answering.
    pub took_ms: u64,
    pub ike_sas: usize,
    pub child_sas: usize,
    /// Tunnels not imported, with why (they negotiate anew).
    pub refused: Vec<String>,
    /// Whether the replica was complete (a bulk finished and the session was alive).
    pub replica_complete: bool,
    pub replica_epoch: u64,
    /// The replica was incomplete, or had heard nothing from the active for longer than
    /// twice the partner timeout (the sync link was down): every imported tunnel was rekeyed.
    #[serde(default)]
    pub replica_stale: bool,
}

pub struct HaDriver {
    pub config: Ha,
    pub public_address: Ipv4Addr,
    pub sync: SyncHandle,
    pub notices: tokio::sync::mpsc::Receiver<Notice>,
    pub role: Role,
    pub epoch: u64,
    pub keepalived: Option<KeepalivedState>,
    /// Active: the record key sent for each IKE SA.
    pub sent: BTreeMap<IkeSaId, String>,
    /// Active: the last numbers sampled, for rates.
    last_sample: Option<(Instant, Sequences)>,
    /// Active: the highest rate per outbound SPI over the last few intervals.
    peaks: BTreeMap<vpngw_esp::Spi, (u64, Instant)>,
    pub takeovers: u64,
    pub last_takeover: Option<Takeover>,
    pub last_sync: Instant,
    /// Active: the partner announced itself active too (split brain) and has not stood down.
    pub partner_was_active: bool,
    /// After a handover: when the track file goes back to 0 (keepalived may elect us again).
    pub track_reset_at: Option<Instant>,
}

/// A rate peak is forgotten after this long (the jump follows the recent rate).
const PEAK_KEPT: Duration = Duration::from_secs(10);

impl HaDriver {
    /// Opens the sync channel on `rt` (it dials or accepts the partner in the background).
    /// Starts as standby: the first presence check decides.
    pub fn start(config: Ha, public_address: Ipv4Addr, rt: &tokio::runtime::Handle) -> Result<Self, HaError> {
        let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").unwrap_or_default();
        if nonlocal.trim() != "1" && !presence::holds(public_address).unwrap_or(false) {
            return Err(HaError::NonlocalBind(public_address));
        }
        let key = SyncKey::from_file(&config.key_file)?;
        let sync_config = SyncConfig {
            node_name: config.node_name.clone(),
            partner_name: config.partner_name.clone(),
            listen: config.listen,
            partner: config.partner,
            key,
            heartbeat: config.sync_interval.min(Duration::from_millis(100)),
            dead_after: config.partner_timeout,
            max_records: MAX_RECORDS,
        };
        let (sync, notices) = vpngw_sync::start(sync_config, rt);
        sync.set_role(Role::Standby, 0);
        let driver = Self {
            config,
            public_address,
            sync,
            notices,
            role: Role::Standby,
            epoch: 0,
            keepalived: None,
            sent: BTreeMap::new(),
            last_sample: None,
            peaks: BTreeMap::new(),
            takeovers: 0,
            last_takeover: None,
            last_sync: Instant::now(),
            partner_was_active: false,
            track_reset_at: None,
        };
        // Running: keepalived may give this server the role.
        driver.write_track(false);
        Ok(driver)
    }

    /// Whether this server holds the public address now (an error reads as "no": a server that
    /// cannot tell must not claim the role).
    pub fn holds_address(&self) -> bool {
        match presence::holds(self.public_address) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this host's addresses: acting as standby");
                false
            }
        }
    }

    /// keepalived's track file: `give_up` makes it leave the role at once (FAULT); 0 lets it
    /// hold it. Written through a temporary file renamed into place (one inotify event, no
    /// half-written value).
    pub fn write_track(&self, give_up: bool) {
        let path = &self.config.track_file;
        let tmp = path.with_extension("tmp");
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            std::fs::write(&tmp, if give_up { "1\n" } else { "0\n" })?;
            std::fs::rename(&tmp, path)
        });
        if let Err(e) = written {
            tracing::error!(file = %path.display(), error = %e, "hot backup: cannot write keepalived's track file");
        }
    }

    pub fn is_active(&self) -> bool {
        self.role == Role::Active
    }

    /// An epoch above every one this pair has used: wall-clock milliseconds (so a server that
    /// restarted, and forgot, still picks a newer one), above what the partner announced.
    pub fn next_epoch(&self) -> u64 {
        let stats = self.sync.stats();
        let seen = [self.epoch, stats.partner_epoch.unwrap_or(0)].into_iter().max().unwrap_or(0);
        records::unix_ms(SystemTime::now()).max(seen + 1)
    }

    /// Active from now on, with this epoch; the store is emptied for the daemon to put what
    /// it holds, and [`HaDriver::announce_role`] then tells the partner.
    pub fn prepare_active(&mut self, epoch: u64) {
        self.role = Role::Active;
        self.epoch = epoch;
        self.sent.clear();
        self.last_sample = None;
        self.peaks.clear();
        self.partner_was_active = false;
        self.sync.clear_store();
    }

    pub fn announce_role(&self) {
        self.sync.set_role(self.role, self.epoch);
    }

    pub fn become_standby(&mut self) {
        self.role = Role::Standby;
        self.sent.clear();
        self.last_sample = None;
        self.peaks.clear();
        self.sync.set_role(Role::Standby, self.epoch);
        self.sync.clear_store();
    }

    /// The sequence-number record from the dataplane's numbers now, with each outbound SA's
    /// recent peak rate.
    pub fn sample(&mut self, mut now_numbers: Sequences, now: Instant) -> Sequences {
        if let Some((then, before)) = &self.last_sample {
            let dt = now.duration_since(*then).as_secs_f64();
            for (spi, n) in &now_numbers.outbound {
                if let Some(b) = before.outbound.get(spi)
                    && dt > 0.0
                {
                    let rate = (n.last_sequence.saturating_sub(b.last_sequence) as f64 / dt) as u64;
                    let e = self.peaks.entry(*spi).or_insert((0, now));
                    if rate >= e.0 || now.duration_since(e.1) > PEAK_KEPT {
                        *e = (rate, now);
                    }
                }
            }
        }
        self.peaks.retain(|spi, _| now_numbers.outbound.contains_key(spi));
        for (spi, n) in now_numbers.outbound.iter_mut() {
            n.peak_rate_pps = self.peaks.get(spi).map_or(0, |p| p.0);
        }
        self.last_sample = Some((now, now_numbers.clone()));
        now_numbers
    }

    pub fn stats(&self) -> SyncStats {
        self.sync.stats()
    }

    /// What status and metrics show.
    pub fn view(&self) -> HaView {
        let s = self.sync.stats();
        HaView {
            node: self.config.node_name.clone(),
            partner: self.config.partner_name.clone(),
            partner_address: self.config.partner.to_string(),
            role: role_word(self.role).into(),
            epoch: self.epoch,
            keepalived: self.keepalived,
            partner_connected: s.connected,
            partner_role: s.partner_role.map(|r| role_word(r).into()),
            in_sync: s.in_sync,
            lag_ms: s.lag.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            records: s.records,
            messages_sent: s.messages_sent,
            messages_received: s.messages_received,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            auth_failures: s.auth_failures,
            rejected_frames: s.rejected_frames,
            stale_refused: s.stale_refused,
            records_refused: s.records_refused,
            bulk_syncs: s.bulk_syncs,
            last_bulk_ms: s.last_bulk.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            takeovers: self.takeovers,
            last_takeover: self.last_takeover.clone(),
        }
    }
}

/// Records the store and the replica hold at most (tunnels, plus two).
pub const MAX_RECORDS: usize = 100_000;

pub fn role_word(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Standby => "standby",
        Role::Fault => "fault",
    }
}

/// Hot backup as status and metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaView {
    pub node: String,
    pub partner: String,
    pub partner_address: String,
    pub role: String,
    pub epoch: u64,
    pub keepalived: Option<KeepalivedState>,
    pub partner_connected: bool,
    pub partner_role: Option<String>,
    pub in_sync: bool,
    pub lag_ms: Option<u64>,
    pub records: usize,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub auth_failures: u64,
    pub rejected_frames: u64,
    pub stale_refused: u64,
    pub records_refused: u64,
    pub bulk_syncs: u64,
    pub last_bulk_ms: Option<u64>,
    pub takeovers: u64,
    pub last_takeover: Option<Takeover>,
}

impl HaView {
    /// The human form's lines (`vpngw status`).
    pub fn render(&self) -> String {
        let partner = match (&self.partner_role, self.partner_connected) {
            (Some(r), true) => format!("{} at {} ({r})", self.partner, self.partner_address),
            _ => format!("{} at {} (not connected)", self.partner, self.partner_address),
        };
        let sync = match (self.in_sync, self.lag_ms) {
            (true, Some(l)) => format!("in sync, lag {l} ms"),
            (true, None) => "in sync".into(),
            (false, _) => "OUT OF SYNC".into(),
        };
        let keepalived = self.keepalived.map_or("no notify yet".into(), |k| format!("{k:?}").to_uppercase());
        let mut o = format!(
            "hot backup: {} (node {}, epoch {}), partner {partner}, {sync}; keepalived {keepalived}; \
             {} records, sync messages {}/{} out/in, auth failures {}, rejected frames {}\n",
            self.role,
            self.node,
            self.epoch,
            self.records,
            self.messages_sent,
            self.messages_received,
            self.auth_failures,
            self.rejected_frames
        );
        if let Some(t) = &self.last_takeover {
            o.push_str(&format!(
                "last takeover: {} IKE SA(s), {} child SA(s) imported in {} ms, {} refused (replica {})\n",
                t.ike_sas,
                t.child_sas,
                t.took_ms,
                t.refused.len(),
                if t.replica_complete { "complete" } else { "INCOMPLETE" }
            ));
        }
        o
    }
}
