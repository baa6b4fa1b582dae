//! What the active server sends its standby, as records of the sync channel (`vpngw-sync`
//! carries them as opaque bytes): one per established IKE SA (the engine's snapshot and the
//! dataplane's side of its child SAs, as `saved_tunnels` writes them), one with every SA's
//! sequence numbers and counters (sent every sync interval), and one with the connections
//! created through the management API. Bodies are JSON.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpngw_esp::Spi;

use crate::saved_tunnels::SavedTunnel;

pub const TUNNEL_PREFIX: &str = "tunnel/";
pub const SEQUENCES: &str = "sequences";
pub const CONNECTIONS: &str = "connections";

/// The record key of an IKE SA: its cookies (public: they are in every IKE header).
pub fn tunnel_key(initiator_cookie: [u8; 8], responder_cookie: [u8; 8]) -> String {
    let hex = |c: [u8; 8]| c.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{TUNNEL_PREFIX}{}-{}", hex(initiator_cookie), hex(responder_cookie))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One IKE SA with its child SAs, exported at `exported_at_unix_ms` (its times are relative
/// to that moment).
#[derive(Serialize, Deserialize)]
pub struct SyncedTunnel {
    pub exported_at_unix_ms: u64,
    pub tunnel: SavedTunnel,
}

/// Every installed SA's numbers at `at_unix_ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sequences {
    pub at_unix_ms: u64,
    /// By outbound SPI: the last sequence number sent, the highest rate seen lately (packets
    /// per second, over the last few sync intervals), and the counters.
    pub outbound: BTreeMap<Spi, OutboundNumbers>,
    /// By inbound SPI: the highest sequence number received, and the counters.
    pub inbound: BTreeMap<Spi, InboundNumbers>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboundNumbers {
    pub last_sequence: u64,
    pub peak_rate_pps: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundNumbers {
    pub highest: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// The connections created through the API, by name, as their tables were given.
pub type RuntimeTables = BTreeMap<String, toml::Table>;

/// How far past the last synced sequence number an outbound SA resumes after a takeover, for
/// [`crate::config::SequenceJump::Auto`]: what it could have sent since that sync (its peak
/// rate times the time since, plus one sync interval for a sync in flight), doubled; never
/// less than `floor`. Saturates below 2^31 (the SA then rekeys early, see `volume.rs`).
pub fn auto_jump(peak_rate_pps: u64, since_sync: Duration, sync_interval: Duration, floor: u32) -> u32 {
    let window_ms = since_sync.saturating_add(sync_interval).as_millis();
    let could_send = u128::from(peak_rate_pps).saturating_mul(window_ms) / 1000;
    let jump = could_send.saturating_mul(2).max(u128::from(floor));
    u32::try_from(jump.min(1 << 31)).unwrap_or(1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auto_jump_covers_what_could_have_been_sent_twice_over() {
        let floor = 1 << 16;
        // Idle: the floor.
        assert_eq!(auto_jump(0, Duration::from_millis(50), Duration::from_millis(100), floor), floor);
        // 1 Mpps, 400 ms since the last sync + 100 ms interval: 500,000 could have left.
        assert_eq!(auto_jump(1_000_000, Duration::from_millis(400), Duration::from_millis(100), floor), 1_000_000);
        // Absurd inputs saturate instead of wrapping.
        assert_eq!(auto_jump(u64::MAX, Duration::MAX, Duration::MAX, floor), 1 << 31);
    }

    #[test]
    fn tunnel_keys_name_both_cookies() {
        let k = tunnel_key([0, 1, 2, 3, 4, 5, 6, 0xff], [0xaa; 8]);
        assert_eq!(k, "tunnel/00010203040506ff-aaaaaaaaaaaaaaaa");
    }
}
