//! Export and import of established state (the ground hot backup stands on): an established
//! IKE SA and its child SAs as plain data, which another [`crate::Endpoint`] imports and then
//! goes on talking to the peer as if nothing had changed. Times are relative to the `now` of
//! the export and of the import, so a snapshot may cross processes. Secrets stay in
//! [`SecretBytes`](vpngw_crypto::SecretBytes) (zeroized on drop, redacted in `Debug`).
//!
//! Exchanges under way travel too: a quick mode the peer started and we answered (our
//! inbound SA installed, QM3 awaited) goes on where it was; one of ours waiting for QM2 is
//! given up (its late answer dropped) and queued to start afresh after the import, as are the
//! queued ones; finished exchanges keep their last answer, so a lost QM3 or phase 1 answer
//! is resent as before. Not in a snapshot: the child SAs' ESP keys, sequence numbers and
//! volume, which the driver and the dataplane hold (the driver got the keys with
//! [`crate::Event::ChildSaEstablished`]).
//!
//! With the `serde` feature the types serialize; a request is known again by a 64-bit hash of
//! its bytes computed by this build (std's SipHash with fixed keys): read a snapshot with the
//! build that wrote it, as the two servers of a hot-backup pair run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vpngw_esp::Spi;

use crate::config::{ExchangeMode, SubnetPair};
use crate::event::{ChildSaState, IkeSaId, Role};
use crate::exchange::packet_hash;
use crate::keys::Phase1Keys;
use crate::proposal::{Phase1Choice, Phase2Choice};

/// An established IKE SA, with its child SAs.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IkeSaSnapshot {
    /// The connection (peer configuration) it belongs to.
    pub connection: String,
    pub role: Role,
    pub mode: ExchangeMode,
    pub initiator_cookie: [u8; 8],
    pub responder_cookie: [u8; 8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// NAT-T as negotiated: Some(false) = RFC 3947, Some(true) = a draft.
    pub nat_t: Option<bool>,
    pub nat_detected: bool,
    pub peer_supports_dpd: bool,
    pub choice: Phase1Choice,
    /// SKEYID, SKEYID_d/a/e and the phase 1 cipher key.
    pub keys: Phase1Keys,
    /// The last CBC block of phase 1: the base of every later exchange's IV.
    pub iv_base: Vec<u8>,
    /// How long ago it was established, and how long it has left.
    pub age: Duration,
    pub expires_in: Duration,
    /// When re-authentication starts (None: started or not ours to do).
    pub reauth_in: Option<Duration>,
    /// Dead peer detection: when we last heard from the peer, our next R-U-THERE sequence
    /// number, and when we last probed.
    pub last_heard_ago: Duration,
    pub dpd_sequence: u32,
    pub last_probe_ago: Option<Duration>,
    /// A newer IKE SA took over its child SAs.
    pub superseded: bool,
    /// Message IDs of quick modes of ours given up (their late answers are dropped).
    pub aborted_message_ids: Vec<u32>,
    /// Message IDs of the quick modes and informational exchanges the peer started (recent
    /// ones, oldest first): their replays are dropped.
    pub peer_quick_mode_ids: Vec<u32>,
    pub peer_informational_ids: Vec<u32>,
    /// The last phase 1 request we answered, to answer its duplicates.
    pub phase1_answer: Option<AnsweredRequest>,
    /// Quick modes the peer started that wait for QM3, and finished ones kept for duplicates.
    pub quick_modes: Vec<QuickModeSnapshot>,
    /// Quick modes of ours to start after the import (queued, or under way at the export).
    pub queued_quick_modes: Vec<QueuedQuickMode>,
    pub children: Vec<ChildSaSnapshot>,
}

/// A request we answered and our answer (resent, not recomputed, when the request comes again).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AnsweredRequest {
    pub request_hash: u64,
    pub answer: Vec<u8>,
}

impl AnsweredRequest {
    /// `answer`, sent to `request`.
    pub(crate) fn new(request: &[u8], answer: Vec<u8>) -> Self {
        Self { request_hash: packet_hash(request), answer }
    }

    /// Whether `request` is (a copy of) the one answered.
    pub(crate) fn answers(&self, request: &[u8]) -> bool {
        self.request_hash == packet_hash(request)
    }
}

/// A quick mode kept across the export: finished (kept to answer duplicates), or one the peer
/// started that waits for its QM3.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QuickModeSnapshot {
    pub message_id: u32,
    pub role: Role,
    pub selectors: SubnetPair,
    /// We sent QM2 and installed our inbound SA; QM3 switches the pair on.
    pub awaiting_qm3: bool,
    pub spi_in: Spi,
    /// The exchange's CBC IV chain (the last block of its latest message) and its nonces.
    pub iv: Vec<u8>,
    pub n_i: Vec<u8>,
    pub n_r: Vec<u8>,
    pub last_answer: Option<AnsweredRequest>,
}

/// A quick mode of ours to start: a pair's first SA, or the replacement of the pair with
/// this inbound SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QueuedQuickMode {
    pub selectors: SubnetPair,
    pub replaces: Option<Spi>,
}

/// One pair of child SAs.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ChildSaSnapshot {
    pub spi_in: Spi,
    pub spi_out: Spi,
    pub selectors: SubnetPair,
    pub choice: Phase2Choice,
    pub state: ChildSaState,
    pub age: Duration,
    pub expires_in: Duration,
    pub rekey_in: Option<Duration>,
    pub activate_in: Option<Duration>,
    pub retire_in: Option<Duration>,
    /// The pair (inbound SPI) this one replaces, and its rank in a rekey collision.
    pub predecessor: Option<Spi>,
    pub collision_rank: u64,
}

/// Why an IKE SA cannot be exported or imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("no IKE SA {0:?}")]
    UnknownIkeSa(IkeSaId),
    #[error("IKE SA {0:?} is not established")]
    NotEstablished(IkeSaId),
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("an IKE SA with these cookies exists already")]
    Duplicate,
    #[error("the phase 1 key does not fit the cipher: {0}")]
    BadKey(String),
    #[error("SPI {0} of the snapshot is in use here")]
    SpiInUse(Spi),
    #[error("a time in the snapshot is out of range: {0:?} from now")]
    TimeOutOfRange(Duration),
}

/// How long ago `t` was, seen at `now`.
pub(crate) fn ago(now: Instant, t: Instant) -> Duration {
    now.saturating_duration_since(t)
}

/// How long until `t`, seen at `now` (zero when past).
pub(crate) fn until(now: Instant, t: Instant) -> Duration {
    t.saturating_duration_since(now)
}

/// The instant `d` after `now`: an error, not a panic, when a snapshot's figure is absurd.
pub(crate) fn after(now: Instant, d: Duration) -> Result<Instant, SnapshotError> {
    now.checked_add(d).ok_or(SnapshotError::TimeOutOfRange(d))
}

/// [`after`] for an optional time.
pub(crate) fn after_opt(now: Instant, d: Option<Duration>) -> Result<Option<Instant>, SnapshotError> {
    d.map(|d| after(now, d)).transpose()
}

/// The instant `d` before `now` (`now` itself if the clock does not reach back that far).
pub(crate) fn before(now: Instant, d: Duration) -> Instant {
    now.checked_sub(d).unwrap_or(now)
}
