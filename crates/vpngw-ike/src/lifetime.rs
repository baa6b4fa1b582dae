//! How long SAs live and when they are replaced: the lifetimes a peer may impose, the margin
//! before a hard lifetime, the jittered rekey time (the initiator's earlier than the
//! responder's), and the rank that settles rekey collisions. Pure functions.

use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

use crate::config::Phase2Policy;
use crate::event::Role;
use crate::proposal::Phase2Choice;

/// The shortest lifetime a peer may impose on an SA of ours (unless ours is shorter still): a
/// peer's 1 s or 1 KB would otherwise have us rekey without pause.
pub(crate) const PEER_FLOOR_SECONDS: u64 = 30;
pub(crate) const PEER_FLOOR_KILOBYTES: u64 = 1024;

/// The lifetime we use when we configured `ours` and the peer chose `theirs` (offered, answered,
/// or in a RESPONDER-LIFETIME): never longer than ours (a peer may only shorten it, RFC 2407
/// s.4.6.3.1; so no peer value reaches a clock unbounded), never below `floor` unless ours is.
pub(crate) fn bounded(ours: u64, theirs: Option<u64>, floor: u64) -> u64 {
    theirs.map_or(ours, |t| t.min(ours)).max(floor.min(ours))
}

/// A child SA's (seconds, kilobytes) from ours (`ours_kb` None: no volume limit configured)
/// and the peer's choice: [`bounded`] each; a volume limit only the peer set still has the floor.
pub(crate) fn phase2_lifetimes(
    ours_s: u64,
    ours_kb: Option<u64>,
    theirs_s: Option<u64>,
    theirs_kb: Option<u64>,
) -> (u64, Option<u64>) {
    let seconds = bounded(ours_s, theirs_s, PEER_FLOOR_SECONDS);
    let kilobytes = match ours_kb {
        Some(o) => Some(bounded(o, theirs_kb, PEER_FLOOR_KILOBYTES)),
        None => theirs_kb.map(|t| t.max(PEER_FLOOR_KILOBYTES)),
    };
    (seconds, kilobytes)
}

/// Bounds the lifetimes of a quick mode's `choice` (what the peer offered or answered) by our
/// `policy` ([`phase2_lifetimes`]).
pub(crate) fn bound_phase2(policy: &Phase2Policy, choice: &mut Phase2Choice) {
    let (seconds, kilobytes) = phase2_lifetimes(
        u64::from(policy.lifetime_seconds),
        policy.volume_limit(),
        choice.lifetime_seconds,
        choice.lifetime_kilobytes,
    );
    choice.lifetime_seconds = Some(seconds);
    choice.lifetime_kilobytes = kilobytes;
}

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
    fn a_peer_may_shorten_our_lifetimes_down_to_the_floor_and_never_lengthen_them() {
        assert_eq!(bounded(3600, None, 30), 3600);
        assert_eq!(bounded(3600, Some(1800), 30), 1800);
        assert_eq!(bounded(3600, Some(u64::MAX), 30), 3600, "no longer than ours, so no overflow");
        assert_eq!(bounded(3600, Some(1), 30), 30, "the floor");
        assert_eq!(bounded(3600, Some(0), 30), 30);
        assert_eq!(bounded(10, Some(1), 30), 10, "ours below the floor is ours");
        assert_eq!(phase2_lifetimes(3600, None, Some(5), Some(1)), (30, Some(PEER_FLOOR_KILOBYTES)));
        assert_eq!(phase2_lifetimes(3600, Some(100_000), None, Some(u64::MAX)), (3600, Some(100_000)));
        assert_eq!(phase2_lifetimes(3600, Some(500), Some(60), Some(2)), (60, Some(500)));
        assert_eq!(phase2_lifetimes(3600, None, None, None), (3600, None));
    }

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
