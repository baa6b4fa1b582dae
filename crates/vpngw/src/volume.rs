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
