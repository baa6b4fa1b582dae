//! Export and import of established state (the ground hot backup stands on): an established
//! IKE SA and its child SAs as plain data, which another [`crate::Endpoint`] imports and then
//! goes on talking to the peer as if nothing had changed. Times are relative to the `now` of
//! the export and of the import, so a snapshot may cross processes. Secrets stay in
//! [`SecretBytes`](vpngw_crypto::SecretBytes) (zeroized on drop, redacted in `Debug`).
//!
//! Not in a snapshot: exchanges under way (an SA with a quick mode in flight is not exported:
//! export when it is quiet) and the child SAs' ESP keys and volume, which the driver holds
//! (it got them with [`crate::Event::ChildSaEstablished`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{ExchangeMode, SubnetPair};
use crate::event::{ChildSaState, IkeSaId, Role};
use crate::keys::Phase1Keys;
use crate::proposal::{Phase1Choice, Phase2Choice};

/// An established IKE SA, with its child SAs.
#[derive(Clone, Debug)]
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
    pub children: Vec<ChildSaSnapshot>,
}

/// One pair of child SAs.
#[derive(Clone, Debug)]
pub struct ChildSaSnapshot {
    pub spi_in: u32,
    pub spi_out: u32,
    pub selectors: SubnetPair,
    pub choice: Phase2Choice,
    pub state: ChildSaState,
    pub age: Duration,
    pub expires_in: Duration,
    pub rekey_in: Option<Duration>,
    pub activate_in: Option<Duration>,
    pub retire_in: Option<Duration>,
    /// The pair (inbound SPI) this one replaces, and its rank in a rekey collision.
    pub predecessor: Option<u32>,
    pub collision_rank: u64,
}

/// Why an IKE SA cannot be exported or imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("no IKE SA {0:?}")]
    UnknownIkeSa(IkeSaId),
    #[error("IKE SA {0:?} is not established")]
    NotEstablished(IkeSaId),
    #[error("IKE SA {0:?} has an exchange under way: export it once that is done")]
    Busy(IkeSaId),
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("an IKE SA with these cookies exists already")]
    Duplicate,
    #[error("the phase 1 key does not fit the cipher: {0}")]
    BadKey(String),
}

/// How long ago `t` was, seen at `now`.
pub(crate) fn ago(now: Instant, t: Instant) -> Duration {
    now.saturating_duration_since(t)
}

/// How long until `t`, seen at `now` (zero when past).
pub(crate) fn until(now: Instant, t: Instant) -> Duration {
    t.saturating_duration_since(now)
}

/// The instant `d` before `now` (`now` itself if the clock does not reach back that far).
pub(crate) fn before(now: Instant, d: Duration) -> Instant {
    now.checked_sub(d).unwrap_or(now)
}
