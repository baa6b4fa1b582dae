//! Volume lifetimes (RFC 2407 s.4.5, kilobytes): when to start replacing a child SA, and
//! when it must go.
//!
//! A fixed percentage is not enough at high rates: the seed's default of 1,843,200 KB lasts
//! about 9 s at 1.6 Gbit/s, and the last 6 % of it under a second, while a replacement needs a
//! look (one lifecycle tick), a quick mode and, for the initiator, the activation delay before
//! traffic moves. Measured before this module existed: under `make bench-e2e` traffic, SAs
//! reached their hard limit before the replacement carried traffic, and a few hundred packets
//! were dropped (`no_sa` on one side, `unknown_spi` on the other) at each such rekey. So the
//! soft point is also pulled forward by what the SA carried in the last tick, times
//! [`LEAD_TICKS`]: the replacement starts early enough for the traffic it actually carries.
//!
//! [`SaWatch`] applies this every lifecycle tick, and also tells the engine which child SAs
//! received ESP (dead peer detection counts that as a sign of life) and records when each
//! child SA last carried a packet each way ([`SaActivity`], for `vpngw status`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use vpngw_dataplane::sa_table::SaTable;
use vpngw_esp::Spi;
use vpngw_ike::{ChildSaState, Endpoint};

/// How many lifecycle ticks' worth of traffic must still fit under the hard limit when a
/// replacement starts: one tick until the next look, one second of initiator activation delay
/// (`vpngw_ike::child::ACTIVATE_DELAY`), and one for the quick mode and a margin.
pub const LEAD_TICKS: u64 = 3;

/// What to do with a child SA after `used` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volume {
    Fine,
    /// Start a replacement now.
    Soft,
    /// The limit is reached: delete the pair.
    Hard,
}

/// The byte count at which a replacement starts for an SA with `limit` bytes that carried
/// `last_tick` bytes in the last tick. `spread` (0-9, from the SPI) spreads tunnels set up
/// together over 85-94 % of the limit, so they do not all rekey at once. Never below half
/// the limit: an SA whose traffic would use it up in a few ticks has a lifetime too short for
/// its rate, and rekeying it at once would only make that worse.
pub fn soft_point(limit: u64, spread: u32, last_tick: u64) -> u64 {
    let spread = u64::from(spread % 10);
    let by_share = limit / 100 * (85 + spread);
    // The spread also shifts the rate-based point (by up to 1.5 ticks' worth): both ends of a
    // pair see the same traffic, and without it they would reach the point in the same tick
    // and start colliding quick modes.
    let lead = last_tick.saturating_mul(LEAD_TICKS).saturating_add((last_tick / 6).saturating_mul(9 - spread));
    let by_rate = limit.saturating_sub(lead);
    by_share.min(by_rate).max(limit / 2)
}

/// Classifies an SA with `limit` bytes that has carried `used` bytes, `last_tick` of them in
/// the last tick.
pub fn classify(limit: u64, spread: u32, used: u64, last_tick: u64) -> Volume {
    if used >= limit {
        Volume::Hard
    } else if used >= soft_point(limit, spread, last_tick) {
        Volume::Soft
    } else {
        Volume::Fine
    }
}

/// When a child SA last carried a packet in each direction, as the lifecycle ticks saw its
/// counters move: the packet came at most one tick (a second) before. None: not since it was
/// installed (or since the daemon started).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LastPackets {
    pub inbound: Option<Instant>,
    pub outbound: Option<Instant>,
}

/// [`LastPackets`] of every child SA, by inbound SPI; rebuilt when a tick changed it (an SA
/// came, went or carried a packet) and published whole (an `Arc`), so the read models share it
/// without a lock. The dataplane keeps no timestamps: a clock read per packet would cost the hot
/// path what one look a second gives for free.
#[derive(Debug, Default)]
pub struct SaActivity {
    by_spi_in: HashMap<Spi, LastPackets>,
}

impl SaActivity {
    pub fn of(&self, spi_in: Spi) -> LastPackets {
        self.by_spi_in.get(&spi_in).copied().unwrap_or_default()
    }
}

/// What the lifecycle tick remembers of one child SA, by inbound SPI.
#[derive(Default, Clone, Copy)]
struct Watched {
    /// Packets in and out at the last look: inbound growth tells the engine (dead peer
    /// detection) that the peer is alive; either tells [`SaActivity`].
    packets_in: u64,
    packets_out: u64,
    /// Bytes carried at the last look, the larger direction (the rate pulls a volume rekey
    /// forward, see [`soft_point`]).
    bytes: u64,
    last: LastPackets,
    /// The tick that last saw the SA (SAs gone since are forgotten).
    tick: u64,
}

/// What the child SAs' counters were at the last look. Kept in place from tick to tick:
/// with thousands of idle tunnels a tick allocates nothing.
#[derive(Default)]
pub struct SaWatch {
    watched: HashMap<Spi, Watched>,
    /// When each child SA last carried a packet each way.
    activity: Arc<SaActivity>,
    tick: u64,
}

impl SaWatch {
    /// One lifecycle tick, one pass over the child SAs (each looked up in the table once a
    /// second, not once per concern): traffic noted (inbound traffic reported to the engine,
    /// for dead peer detection), volumes checked; then the rekeys and deletes the volumes call
    /// for.
    pub fn tick(&mut self, endpoint: &mut Endpoint, table: &SaTable, now: Instant) {
        self.tick += 1;
        let tick = self.tick;
        let mut activity_changed = false;
        let mut heard = Vec::new();
        let mut soft = Vec::new();
        let mut hard = Vec::new();
        // One snapshot of each direction for the pass: no reference count touched per SA.
        let (inbound_map, outbound_map) = (table.inbound_view(), table.outbound_view());
        for s in endpoint.ike_sa_infos() {
            for c in &s.children {
                let inbound = inbound_map.get(&c.spi_in);
                let outbound = outbound_map.by_spi(c.spi_out);
                let w = self.watched.entry(c.spi_in).or_insert_with(|| {
                    activity_changed = true;
                    Watched::default()
                });
                let packets_in = inbound.map_or(0, |e| e.counters.packets());
                let packets_out = outbound.map_or(0, |e| e.counters.packets());
                if packets_in > w.packets_in {
                    heard.push(c.spi_in);
                    w.last.inbound = Some(now);
                    activity_changed = true;
                }
                if packets_out > w.packets_out {
                    w.last.outbound = Some(now);
                    activity_changed = true;
                }
                (w.packets_in, w.packets_out, w.tick) = (packets_in, packets_out, tick);

                // Volume lifetimes (RFC 2407 s.4.5, kilobytes): each SA of a pair is measured
                // on its own; a replacement is negotiated from 85-94 % of the limit (spread by
                // SPI, so that tunnels set up together do not all rekey together), earlier when
                // the traffic of the last tick would not leave time for it ([`soft_point`]);
                // at 100 % the pair is deleted.
                let Some(kb) = c.lifetime_kilobytes.filter(|kb| *kb > 0) else { continue };
                let limit = kb.saturating_mul(1024);
                let bytes_in = inbound.map_or(0, |e| e.counters.bytes());
                let bytes_out = outbound.map_or(0, |e| e.counters.bytes());
                let used = bytes_in.max(bytes_out);
                let last_tick = used.saturating_sub(w.bytes);
                w.bytes = used;
                match classify(limit, c.spi_in.get() % 10, used, last_tick) {
                    Volume::Hard => hard.push((s.peer.clone(), c.spi_in)),
                    Volume::Soft if c.state == ChildSaState::Active => {
                        soft.push((s.peer.clone(), c.spi_in, used / (limit / 100).max(1), last_tick));
                    }
                    _ => {}
                }
            }
        }
        drop((inbound_map, outbound_map));
        let before = self.watched.len();
        self.watched.retain(|_, w| w.tick == tick);
        if activity_changed || self.watched.len() != before {
            let by_spi_in = self.watched.iter().map(|(spi, w)| (*spi, w.last)).collect();
            self.activity = Arc::new(SaActivity { by_spi_in });
        }
        for spi_in in heard {
            endpoint.traffic_received(now, spi_in);
        }
        for (connection, spi, percent, last_tick) in soft {
            if endpoint.rekey_child(now, spi) {
                tracing::info!(%connection, spi_in = %spi, used_percent = percent, bytes_last_second = last_tick, "child SA near its volume lifetime: rekeying");
            }
        }
        for (connection, spi) in hard {
            tracing::info!(%connection, spi_in = %spi, "child SA reached its volume lifetime: deleted");
            endpoint.expire_child(now, spi);
        }
    }

    /// When each child SA last carried a packet each way (as of the last tick).
    pub fn activity(&self) -> Arc<SaActivity> {
        self.activity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1_843_200 * 1024;

    #[test]
    fn slow_traffic_uses_the_spread_share() {
        for spread in 0..10 {
            let p = soft_point(LIMIT, spread, 1000);
            assert_eq!(p, LIMIT / 100 * (85 + u64::from(spread)));
        }
        assert_eq!(soft_point(LIMIT, 13, 0), LIMIT / 100 * 88);
    }

    #[test]
    fn fast_traffic_leaves_room_for_lead_ticks() {
        // 200 MB per tick (1.6 Gbit/s): 600 MB must still fit when the replacement starts.
        let tick = 200_000_000;
        let p = soft_point(LIMIT, 9, tick);
        assert_eq!(p, LIMIT - LEAD_TICKS * tick);
        assert!(LIMIT - p >= LEAD_TICKS * tick);
        // Lower spreads start earlier: the two ends of a pair (different SPIs) do not start
        // their replacements in the same tick.
        let slower = 100_000_000;
        assert_eq!(soft_point(LIMIT, 0, slower), LIMIT - LEAD_TICKS * slower - slower / 6 * 9);
        assert!((1..10).all(|s| soft_point(LIMIT, s - 1, slower) < soft_point(LIMIT, s, slower)));
        assert_eq!(classify(LIMIT, 9, p - 1, tick), Volume::Fine);
        assert_eq!(classify(LIMIT, 9, p, tick), Volume::Soft);
        assert_eq!(classify(LIMIT, 9, LIMIT - 1, tick), Volume::Soft);
        assert_eq!(classify(LIMIT, 9, LIMIT, tick), Volume::Hard);
    }

    #[test]
    fn a_lifetime_too_short_for_the_rate_still_lives_half_of_it() {
        assert_eq!(soft_point(LIMIT, 0, LIMIT), LIMIT / 2);
        assert_eq!(soft_point(LIMIT, 0, u64::MAX), LIMIT / 2);
        assert_eq!(classify(LIMIT, 0, LIMIT / 2 - 1, u64::MAX), Volume::Fine);
    }

    #[test]
    fn tiny_limits_do_not_underflow() {
        for limit in 0..300 {
            let p = soft_point(limit, 5, 7);
            assert!(p <= limit && p >= limit / 2, "limit {limit}: {p}");
        }
    }
}
