//! When SAs are replaced: the margin before a hard lifetime, the jittered rekey time (the
//! initiator's earlier than the responder's), and the rank that settles rekey collisions. Pure
//! functions.

use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

use crate::event::Role;

/// The replacement margin is a tenth of the lifetime, at least this (short lifetimes), ...
const MARGIN_MIN: Duration = Duration::from_secs(10);
/// ... at most this (strongSwan's default rekey margin).
const MARGIN_MAX: Duration = Duration::from_secs(540);

/// The margin before the hard lifetime at which a replacement starts.
pub(crate) fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MARGIN_MIN.min(lifetime / 3)).min(MARGIN_MAX)
}

/// When to start replacing a child SA established `now` with `lifetime`: the quick mode
/// initiator at lifetime - margin - up to a third of the margin (jitter, so that many tunnels
/// do not rekey at once), the responder only at lifetime - margin/2 - up to a sixth.
pub(crate) fn rekey_time(now: Instant, lifetime: Duration, role: Role, rng: &mut FastRng) -> Instant {
    let m = margin(lifetime);
    let (base, spread) = match role {
        Role::Initiator => (m, m / 3),
        Role::Responder => (m / 2, m / 6),
    };
    let jitter_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
    let jitter = Duration::from_millis(if jitter_ms == 0 { 0 } else { rng.next_u64() % (jitter_ms + 1) });
    now + lifetime.saturating_sub(base + jitter)
}

/// A quick mode's place in a rekey collision: its lowest nonce, read as a big-endian number
/// (the first 8 bytes; nonces are at least 8 bytes, RFC 2409 s.5). Equal ranks (a 2^-64
/// chance) leave both pairs in place, as before this rule.
pub(crate) fn collision_rank(n_i: &[u8], n_r: &[u8]) -> u64 {
    let first8 = |n: &[u8]| {
        let mut b = [0u8; 8];
        let k = n.len().min(8);
        b[..k].copy_from_slice(&n[..k]);
        u64::from_be_bytes(b)
    };
    first8(n_i).min(first8(n_r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_scale_with_the_lifetime() {
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(360));
        assert_eq!(margin(Duration::from_secs(86_400)), MARGIN_MAX);
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(10));
        assert_eq!(margin(Duration::from_secs(12)), Duration::from_secs(4));
    }

    #[test]
    fn the_initiator_rekeys_before_the_responder() {
        let mut rng = FastRng::from_seed_for_tests(7);
        let now = Instant::now();
        for lifetime in [30u64, 300, 3600, 28_800] {
            let l = Duration::from_secs(lifetime);
            for _ in 0..200 {
                let i = rekey_time(now, l, Role::Initiator, &mut rng);
                let r = rekey_time(now, l, Role::Responder, &mut rng);
                assert!(i < r, "{lifetime}: initiator {:?} responder {:?}", i - now, r - now);
                assert!(r < now + l);
                // The responder's deadline still leaves a quarter of the margin for its own
                // quick mode and the grace period.
                assert!(now + l - r >= margin(l) / 3);
            }
        }
    }
}
