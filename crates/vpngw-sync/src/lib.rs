//! # vpngw-sync: the hot-backup state-sync channel between an active and a standby gateway
//!
//! **Owns:** the authenticated, encrypted channel between the two nodes (Noise
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` through snow, see docs/adr/0012-sync-channel.md),
//! its framing and message codec ([`wire`]), the active side's record store with bulk sync and
//! incremental updates, the standby's replica with its epoch rules, heartbeats, acknowledgements
//! and lag, the counters ([`SyncStats`]), and the tokio TCP driver that runs it all.
//!
//! **Must not touch:** IKE or ESP types, the dataplane, keepalived/VRRP, or the daemon's
//! configuration. Records are opaque bytes under string keys; the daemon decides what they mean
//! and which role this node has.
//!
//! **Data in and out:** the daemon calls [`start`] with a [`SyncConfig`] and gets a
//! [`SyncHandle`] and a receiver of [`Notice`]s. It tells the channel its role
//! ([`SyncHandle::set_role`]) and, while Active, the current body of every record
//! ([`SyncHandle::put`], [`SyncHandle::remove`]). On a Standby the partner's records land in the
//! replica, which the daemon takes at takeover ([`SyncHandle::replica`]). Nothing blocks the
//! caller: every call takes a short lock and at most queues a message.
//!
//! ## Protocol (vpngw-sync/1)
//!
//! - **Transport:** TCP with `TCP_NODELAY`. The node whose `node_name` sorts lower dials the
//!   partner (every 200 ms while there is no session); the other only accepts. One session at
//!   a time: a new authenticated session replaces the old one.
//! - **Framing:** `u16` big-endian length, then one Noise message (at most 65535 bytes). A
//!   message is postcard-encoded and split into chunks that each fit one Noise message; each
//!   chunk starts with a flag byte (more / last). A message is at most 16 MiB; more closes the
//!   session and counts a rejected frame.
//! - **Handshake:** `NNpsk0` with the 32-byte key at position 0 and the prologue `vpngw-sync/1`;
//!   each side's handshake payload is a `Hello { node, role, epoch, version }`. A failure (wrong
//!   key, garbage, 2 s timeout, a partner name other than `partner_name`, another version)
//!   closes the connection, counts `auth_failures` and changes nothing else.
//! - **Transport messages:** every later frame is a Noise transport message. One that fails
//!   decryption (tampered, replayed, reordered, injected: Noise's nonces are implicit and
//!   advance by one per frame) or decrypts to something that does not decode closes the session
//!   and counts `rejected_frames`; nothing from it is applied.
//! - **Messages:** `Role{role, epoch}`, `BulkBegin{epoch, count}`, `Put{n, key, body}`,
//!   `Remove{n, key}`, `BulkEnd{n}`, `Heartbeat{seq}`, `Ack{n}`. Updates carry the sender's update
//!   number `n` (a bulk is one update, numbered by its `BulkEnd`); the standby acknowledges the
//!   highest number it applied after each burst of reads; the active's lag is the age of the
//!   oldest unacknowledged update. Heartbeats go both ways every `heartbeat`; no frame for
//!   `dead_after` ends the session ("lost").
//! - **Roles:** records flow only from a node in role Active to a partner in role Standby, and a
//!   Standby applies only from an Active partner. When an Active node's partner becomes Standby
//!   (at connect or by a role change) the active sends its whole store as a bulk, then
//!   increments. Both Active: nothing flows, counted in `role_conflicts`.
//! - **Epochs:** a node remembers the highest epoch any authenticated partner announced; updates
//!   from a partner announcing a lower one are refused (`stale_refused`): a rejoining old active
//!   never overwrites newer state.
//! - **Bulk:** replaces the replica wholesale at `BulkEnd` (records not in it are gone); until
//!   then the previous replica stays in use and `complete` keeps its value. A session that ends
//!   mid-bulk leaves the replica as it was.
//! - **Bounds:** the store and the replica hold at most `max_records` (more: refused, counted);
//!   the queue to the partner holds 8192 messages (full: the session is dropped, counted in
//!   `queue_overflows`, and the next one starts with a bulk); notices are dropped, and counted,
//!   when the daemon does not read them.

#![forbid(unsafe_code)]

mod driver;
mod key;
mod state;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub use key::{KeyError, SyncKey};

/// The node's role as keepalived sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Active,
    Standby,
    /// keepalived FAULT, or starting.
    Fault,
}

/// A record: `key` like "tunnel/0011223344556677-8899aabbccddeeff", "sequences", "connections";
/// body opaque.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Ours.
    pub node_name: String,
    /// Expected partner (checked after the handshake; mismatch refused and counted).
    pub partner_name: String,
    /// We accept here (when our name sorts higher).
    pub listen: SocketAddr,
    /// We dial here (when our name sorts lower).
    pub partner: SocketAddr,
    pub key: SyncKey,
    /// Default 100 ms.
    pub heartbeat: Duration,
    /// No frame for this long => session closed, partner "lost" (default 1 s).
    pub dead_after: Duration,
    /// Bound on the store / replica (default 100_000); over it: refused + counted.
    pub max_records: usize,
}

impl SyncConfig {
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
    pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_RECORDS: usize = 100_000;

    /// A configuration with the default heartbeat, dead interval and record bound.
    pub fn new(node_name: String, partner_name: String, listen: SocketAddr, partner: SocketAddr, key: SyncKey) -> Self {
        SyncConfig {
            node_name,
            partner_name,
            listen,
            partner,
            key,
            heartbeat: Self::DEFAULT_HEARTBEAT,
            dead_after: Self::DEFAULT_DEAD_AFTER,
            max_records: Self::DEFAULT_MAX_RECORDS,
        }
    }
}

/// What the standby holds of the active's records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica {
    /// Epoch of the active the records came from.
    pub epoch: u64,
    pub records: BTreeMap<String, Vec<u8>>,
    /// A bulk finished and the session is alive or was alive until the partner was lost.
    pub complete: bool,
    /// Wall-clock time of the last change applied (bulk or increment), if any.
    pub applied_at_unix_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Connected {
        partner: String,
        role: Role,
        epoch: u64,
    },
    /// Partner announced a change.
    PartnerRole {
        role: Role,
        epoch: u64,
    },
    /// Standby: a bulk sync completed.
    BulkDone {
        records: usize,
        took: Duration,
    },
    /// Session ended.
    Lost {
        reason: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub connected: bool,
    pub partner_role: Option<Role>,
    pub partner_epoch: Option<u64>,
    /// Standby: bulk done and session alive (from a current Active). Active: the standby
    /// acknowledged the bulk and everything older than `dead_after`.
    pub in_sync: bool,
    /// Active: age of the oldest update not yet acknowledged by the standby (0 when all acked;
    /// None when not streaming to a standby). Standby: time since the last applied update or
    /// heartbeat.
    pub lag: Option<Duration>,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Store (active) or replica (standby, fault) size.
    pub records: usize,
    /// Handshakes that failed (wrong key, garbage, timeout), wrong partner name or version.
    pub auth_failures: u64,
    /// Transport frames that failed decryption (tampered, replayed, reordered) or did not decode.
    pub rejected_frames: u64,
    /// Updates refused because the sender's epoch is lower than one already seen.
    pub stale_refused: u64,
    /// Over `max_records`.
    pub records_refused: u64,
    /// Active: bulks sent. Standby: bulks applied.
    pub bulk_syncs: u64,
    /// Standby: how long the last applied bulk took, from `BulkBegin` to `BulkEnd`.
    pub last_bulk: Option<Duration>,
    /// Updates refused because of roles: we are not Standby, the partner is not Active, or an
    /// increment came before any bulk of the session.
    pub role_refused: u64,
    /// Times the partner was found Active while we were Active too.
    pub role_conflicts: u64,
    /// Sessions dropped because the queue to the partner was full (each resyncs with a bulk).
    pub queue_overflows: u64,
    /// Notices lost because the daemon's receiver was full.
    pub notices_dropped: u64,
}

/// Notices queued for the daemon before new ones are dropped (and counted).
pub const NOTICE_QUEUE: usize = 1024;

/// The daemon's handle. Cheap to clone; when the last clone is dropped the channel shuts down
/// (sockets closed, session ended).
#[derive(Clone, Debug)]
pub struct SyncHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    shared: Arc<driver::Shared>,
    // Dropping it tells every task to stop.
    _shutdown: watch::Sender<()>,
}

/// Started on the given tokio runtime handle; returns the daemon's handle and a receiver of
/// notifications.
pub fn start(config: SyncConfig, rt: &tokio::runtime::Handle) -> (SyncHandle, mpsc::Receiver<Notice>) {
    let (notice_tx, notice_rx) = mpsc::channel(NOTICE_QUEUE);
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let dials = config.node_name < config.partner_name;
    if config.node_name == config.partner_name {
        // Neither would dial: the pair never connects. The daemon's configuration check should
        // refuse this; here it is only loud.
        tracing::error!(name = config.node_name, "sync: node and partner have the same name; no session will form");
    }
    let shared = Arc::new(driver::Shared {
        state: Mutex::new(state::State::new(config.max_records, config.dead_after, notice_tx)),
        node_name: config.node_name,
        partner_name: config.partner_name,
        listen: config.listen,
        partner: config.partner,
        key: config.key,
        heartbeat: config.heartbeat.max(Duration::from_millis(1)),
        dead_after: config.dead_after,
    });
    if dials {
        rt.spawn(driver::dialer(shared.clone(), shutdown_rx));
    } else {
        rt.spawn(driver::acceptor(shared.clone(), shutdown_rx));
    }
    (SyncHandle { inner: Arc::new(HandleInner { shared, _shutdown: shutdown_tx }) }, notice_rx)
}

impl SyncHandle {
    /// Our role and epoch, announced to the partner. Only an Active node sends records; only a
    /// Standby applies them.
    pub fn set_role(&self, role: Role, epoch: u64) {
        self.inner.shared.lock().set_role(role, epoch);
    }

    /// Active side: the current body of a record (no-op if unchanged since last set).
    /// Non-blocking. Kept in the store: when a session (re)connects to a Standby partner, the
    /// whole store goes as a bulk sync (begin, records, end), then increments.
    pub fn put(&self, key: String, body: Vec<u8>) {
        self.inner.shared.lock().put(key, body);
    }

    /// Active side: a record's removal (no-op if absent). Non-blocking.
    pub fn remove(&self, key: &str) {
        self.inner.shared.lock().remove(key);
    }

    /// Removes every record from the store (each removal goes to a streaming partner).
    pub fn clear_store(&self) {
        self.inner.shared.lock().clear_store();
    }

    /// Standby side: everything the replica holds now (taken at takeover), with the epoch it
    /// came from.
    pub fn replica(&self) -> Replica {
        self.inner.shared.lock().replica()
    }

    /// Standby side: one record of the replica (without copying the others).
    pub fn replica_record(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.shared.lock().replica_record(key)
    }

    pub fn stats(&self) -> SyncStats {
        self.inner.shared.lock().stats()
    }
}
