//! The life of an installed child SA pair: when to replace it, and make-before-break.
//!
//! A replacement (rekey) is a new quick mode for the same subnet pair. The order that loses no
//! packet:
//! 1. the new inbound SA is installed before the peer can use it (a quick mode responder
//!    installs it when it sends QM2, an initiator when it sends QM3);
//! 2. outbound switches to the new SA only once the peer has its inbound one: a responder
//!    switches on QM3, an initiator [`ACTIVATE_DELAY`] after QM3 when an older SA still carries
//!    the traffic, [`FIRST_ACTIVATE_DELAY`] when there is none;
//! 3. the old pair stays for [`RETIRE_GRACE`] (packets in flight under the old keys still
//!    open), then a Delete goes out and it is removed.
//!
//! Who replaces: both sides keep a soft deadline, the quick mode initiator's earlier than the
//! responder's, so the responder only rekeys when the initiator did not. Volume (kilobytes) and
//! sequence-number limits are watched by the driver, which calls [`crate::Endpoint::rekey_child`].
//!
//! Rekey collisions: both sides count the same traffic, so volume limits often make both start
//! a replacement of the same pair at once. IKEv1 has no rule for this; left alone, each side
//! would switch to a different new pair and later retire the one the other sends with. We use
//! IKEv2's rule (RFC 7296 s.2.8.1): of two pairs replacing the same pair, the one whose quick
//! mode had the lowest nonce is redundant. Both sides know all four nonces, so both pick the
//! same survivor; the redundant pair is never sent with and retires like a replaced one.

use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

use crate::config::SubnetPair;
use crate::event::{ChildSaInfo, ChildSaState, DeleteReason, Event, Role};
use crate::exchange::Ctx;
use crate::ikesa::IkeSa;
use crate::proposal::Phase2Choice;
use crate::wire::{DOI_IPSEC, DeletePayload, Payload, ProtocolId};

/// How long an initiator waits after QM3 before sending with a replacement SA (the responder
/// installs on QM3; this covers its processing and the network).
pub const ACTIVATE_DELAY: Duration = Duration::from_secs(1);
/// The same for a pair's first SA, when nothing else can carry its traffic: long enough for
/// the responder to install after QM3 (strongSwan drops ESP that overtakes its QM3 processing,
/// measured here: the first packet of an on-traffic start was lost at once), short enough not
/// to matter to a connection coming up. Packets held meanwhile (on-traffic) wait, not drop.
pub const FIRST_ACTIVATE_DELAY: Duration = Duration::from_millis(100);
/// How long a replaced pair stays after the switch, for packets already in flight.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// The replacement margin is a tenth of the lifetime, at least this (short lifetimes), ...
const MARGIN_MIN: Duration = Duration::from_secs(10);
/// ... at most this (strongSwan's default rekey margin).
const MARGIN_MAX: Duration = Duration::from_secs(540);

/// An installed (or, for a responder before QM3, half-installed) pair of child SAs.
#[derive(Clone, Debug)]
pub(crate) struct ChildRecord {
    pub spi_in: u32,
    pub spi_out: u32,
    pub pair: SubnetPair,
    pub choice: Phase2Choice,
    pub state: ChildSaState,
    pub established_at: Instant,
    pub expires_at: Instant,
    /// Start a replacement then (cleared once one is under way or done).
    pub rekey_at: Option<Instant>,
    /// Initiator: switch outbound to this SA then.
    pub activate_at: Option<Instant>,
    /// Replaced: Delete and remove then.
    pub retire_at: Option<Instant>,
    /// The pair (inbound SPI) this one replaces, if any.
    pub predecessor: Option<u32>,
    /// Orders two pairs that replace the same one: the lower rank is redundant
    /// ([`collision_rank`]).
    pub rank: u64,
}

impl ChildRecord {
    pub fn info(&self) -> ChildSaInfo {
        ChildSaInfo {
            spi_in: self.spi_in,
            spi_out: self.spi_out,
            selectors: self.pair,
            encryption: self.choice.encryption,
            integrity: self.choice.integrity,
            pfs: self.choice.pfs,
            encapsulation: self.choice.encapsulation,
            state: self.state,
            established_at: self.established_at,
            expires_at: self.expires_at,
            rekey_at: self.rekey_at,
            lifetime_kilobytes: self.choice.lifetime_kilobytes,
        }
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        [Some(self.expires_at), self.rekey_at, self.activate_at, self.retire_at].into_iter().flatten().min()
    }
}

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

/// Switches outbound traffic of `spi_in`'s pair to it; every other SA pair for the same
/// selectors is replaced and retires after the grace period. In a rekey collision, the pair
/// that loses is instead marked replaced itself, and traffic stays where it is until the
/// winner activates.
pub(crate) fn activate(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi_in: u32) {
    let Some(i) = sa.children.iter().position(|c| c.spi_in == spi_in) else { return };
    let c = &sa.children[i];
    let beaten = c.predecessor.is_some()
        && sa.children.iter().any(|o| {
            o.spi_in != spi_in
                && o.pair == c.pair
                && o.predecessor == c.predecessor
                && o.state != ChildSaState::Replaced
                && o.rank > c.rank
        });
    if beaten {
        let c = &mut sa.children[i];
        tracing::info!(
            peer = %sa.peer.name,
            spi_in = %format!("{spi_in:08x}"),
            selectors = %c.pair,
            "rekey collision: this pair is redundant (lower nonce); the other new pair will carry the traffic"
        );
        c.state = ChildSaState::Replaced;
        c.activate_at = None;
        c.rekey_at = None;
        c.retire_at = Some((ctx.now + RETIRE_GRACE).min(c.expires_at));
        return;
    }
    let c = &mut sa.children[i];
    c.state = ChildSaState::Active;
    c.activate_at = None;
    c.retire_at = None;
    let (pair, spi_out) = (c.pair, c.spi_out);
    ctx.events.push_back(Event::ChildSaActive { peer: sa.peer.name.clone(), spi_in, spi_out });
    for other in sa.children.iter_mut().filter(|o| o.pair == pair && o.spi_in != spi_in) {
        if other.state != ChildSaState::Replaced {
            tracing::debug!(peer = %sa.peer.name, old = %format!("{:08x}", other.spi_in), new = %format!("{spi_in:08x}"), "child SA replaced");
        }
        other.state = ChildSaState::Replaced;
        other.rekey_at = None;
        other.activate_at = None;
        other.retire_at = Some(other.retire_at.unwrap_or(ctx.now + RETIRE_GRACE).min(other.expires_at));
    }
}

/// Whether another SA pair for `pair` carries outbound traffic now.
pub(crate) fn has_active(sa: &IkeSa, pair: &SubnetPair) -> bool {
    sa.children.iter().any(|c| c.pair == *pair && c.state == ChildSaState::Active)
}

/// Sends a Delete for one of our child SAs (our inbound SPI: the one the peer sends to).
pub(crate) fn send_delete(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi_in: u32) {
    sa.send_informational(
        ctx,
        vec![Payload::Delete(DeletePayload {
            doi: DOI_IPSEC,
            protocol: ProtocolId::ESP,
            spi_size: 4,
            spis: vec![spi_in.to_be_bytes().to_vec()],
        })],
    );
}

/// Removes the child SA with this SPI (ours or the peer's). If it carried outbound traffic and
/// another pair for the same selectors remains, the newest of those takes over first: also a
/// replacement we initiated that is still waiting out its activation delay (the peer has had
/// our QM3; the alternative is a gap with no SA at all, e.g. at a hard volume limit reached
/// before the delay ran out), but not a responder's pair still waiting for QM3.
pub(crate) fn remove(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: u32, reason: DeleteReason) {
    let Some(i) = sa.children.iter().position(|c| c.spi_in == spi || c.spi_out == spi) else { return };
    let c = sa.children.remove(i);
    // A replaced pair deleted by the peer is the normal end of a rekey, not a loss.
    let reason = if reason == DeleteReason::PeerDeleted && c.state == ChildSaState::Replaced {
        DeleteReason::Rekeyed
    } else {
        reason
    };
    if c.state == ChildSaState::Active
        && let Some(next) = sa
            .children
            .iter()
            .filter(|o| o.pair == c.pair && (o.state != ChildSaState::Installing || o.activate_at.is_some()))
            .max_by_key(|o| o.established_at)
            .map(|o| o.spi_in)
    {
        activate(sa, ctx, next);
    }
    ctx.spis.release(c.spi_in);
    ctx.events.push_back(Event::ChildSaDeleted {
        peer: sa.peer.name.clone(),
        spi_in: c.spi_in,
        spi_out: c.spi_out,
        reason,
    });
}

/// Starts replacing the child SA with this SPI (ours or the peer's) unless a replacement is
/// under way or done. Returns whether a quick mode started.
pub(crate) fn rekey(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: u32) -> bool {
    let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == spi || c.spi_out == spi) else { return false };
    if c.state != ChildSaState::Active {
        return false;
    }
    c.rekey_at = None;
    let (pair, old) = (c.pair, c.spi_in);
    let busy = sa.quick_modes.iter().any(|q| q.pair == pair && q.state != crate::quick_mode::QmState::Done)
        || sa.qm_queue.iter().any(|q| q.pair == pair)
        || sa.children.iter().any(|o| o.pair == pair && o.spi_in != old && o.state != ChildSaState::Replaced);
    if busy {
        return false;
    }
    tracing::info!(peer = %sa.peer.name, spi_in = %format!("{old:08x}"), selectors = %pair, "rekeying child SA");
    // Through the queue: rekeys of many pairs at once (`vpngw rekey`) run a few at a time too.
    sa.qm_queue.push_back(crate::quick_mode::Queued { pair, replaces: Some(old) });
    crate::quick_mode::pump(sa, ctx);
    true
}

/// Child SA timers: activation, replacement, retirement and hard expiry.
pub(crate) fn handle_timeouts(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let now = ctx.now;
    let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
    let activate_now: Vec<u32> = sa.children.iter().filter(|c| due(c.activate_at)).map(|c| c.spi_in).collect();
    for spi in activate_now {
        activate(sa, ctx, spi);
    }
    let gone: Vec<(u32, DeleteReason)> = sa
        .children
        .iter()
        .filter_map(|c| {
            if now >= c.expires_at {
                Some((c.spi_in, DeleteReason::Expired))
            } else if due(c.retire_at) {
                Some((c.spi_in, DeleteReason::Rekeyed))
            } else {
                None
            }
        })
        .collect();
    for (spi, reason) in gone {
        send_delete(sa, ctx, spi);
        remove(sa, ctx, spi, reason);
    }
    let soft: Vec<u32> = sa.children.iter().filter(|c| due(c.rekey_at)).map(|c| c.spi_in).collect();
    for spi in soft {
        rekey(sa, ctx, spi);
    }
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
