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

use vpngw_esp::Spi;

use crate::config::SubnetPair;
use crate::event::{ChildSaInfo, ChildSaState, DeleteReason, Event};
use crate::exchange::Ctx;
use crate::info;
use crate::message::Secured;
use crate::proposal::Phase2Choice;
use crate::snapshot::{ChildSaSnapshot, SnapshotError, after, after_opt, ago, before, until};

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
/// An installed (or, for a responder before QM3, half-installed) pair of child SAs.
#[derive(Clone, Debug)]
pub(crate) struct ChildRecord {
    pub spi_in: Spi,
    pub spi_out: Spi,
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
    pub predecessor: Option<Spi>,
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
        [Some(self.expires_at), self.rekey_deadline(), self.activate_at, self.retire_at].into_iter().flatten().min()
    }

    /// The soft deadline counts only while the SA carries the traffic: a pair still being
    /// installed (a responder waiting for QM3) rekeys once it is active, and a replaced one
    /// never. (A due deadline that nothing acts on would wake the engine at once, forever.)
    fn rekey_deadline(&self) -> Option<Instant> {
        self.rekey_at.filter(|_| self.state == ChildSaState::Active)
    }
}

impl ChildRecord {
    /// As plain data, times relative to `now`.
    pub fn snapshot(&self, now: Instant) -> ChildSaSnapshot {
        ChildSaSnapshot {
            spi_in: self.spi_in,
            spi_out: self.spi_out,
            selectors: self.pair,
            choice: self.choice.clone(),
            state: self.state,
            age: ago(now, self.established_at),
            expires_in: until(now, self.expires_at),
            rekey_in: self.rekey_at.map(|t| until(now, t)),
            activate_in: self.activate_at.map(|t| until(now, t)),
            retire_in: self.retire_at.map(|t| until(now, t)),
            predecessor: self.predecessor,
            collision_rank: self.rank,
        }
    }

    /// From plain data, times relative to `now`.
    pub fn restore(s: &ChildSaSnapshot, now: Instant) -> Result<Self, SnapshotError> {
        Ok(Self {
            spi_in: s.spi_in,
            spi_out: s.spi_out,
            pair: s.selectors,
            choice: s.choice.clone(),
            state: s.state,
            established_at: before(now, s.age),
            expires_at: after(now, s.expires_in)?,
            rekey_at: after_opt(now, s.rekey_in)?,
            activate_at: after_opt(now, s.activate_in)?,
            retire_at: after_opt(now, s.retire_in)?,
            predecessor: s.predecessor,
            rank: s.collision_rank,
        })
    }
}

/// The child SAs of one IKE SA.
#[derive(Debug, Default)]
pub(crate) struct ChildSet {
    records: Vec<ChildRecord>,
}

impl ChildSet {
    /// The child SA with this SPI, ours (inbound) or the peer's (outbound).
    pub fn find(&self, spi: Spi) -> Option<&ChildRecord> {
        self.records.iter().find(|c| c.spi_in == spi || c.spi_out == spi)
    }

    pub fn records(&self) -> impl Iterator<Item = &ChildRecord> {
        self.records.iter()
    }

    pub fn has_inbound(&self, spi_in: Spi) -> bool {
        self.records.iter().any(|c| c.spi_in == spi_in)
    }

    pub fn has_pair(&self, pair: &SubnetPair) -> bool {
        self.records.iter().any(|c| c.pair == *pair)
    }

    /// Whether an SA pair for `pair` carries outbound traffic now.
    pub fn has_active(&self, pair: &SubnetPair) -> bool {
        self.records.iter().any(|c| c.pair == *pair && c.state == ChildSaState::Active)
    }

    /// Whether the SA with this inbound SPI is a responder's, waiting for QM3.
    pub fn is_installing(&self, spi_in: Spi) -> bool {
        self.records.iter().any(|c| c.spi_in == spi_in && c.state == ChildSaState::Installing)
    }

    /// Whether the SA with inbound SPI `old` still carries the traffic (a rekey of it is wanted).
    pub fn is_active(&self, spi_in: Spi) -> bool {
        self.records.iter().any(|c| c.spi_in == spi_in && c.state == ChildSaState::Active)
    }

    /// Whether another SA pair than `old` for `pair` is installed and not replaced: a
    /// replacement is under way or done.
    pub fn has_replacement(&self, pair: &SubnetPair, old: Spi) -> bool {
        self.records.iter().any(|o| o.pair == *pair && o.spi_in != old && o.state != ChildSaState::Replaced)
    }

    /// The inbound SPIs of the SAs that carry traffic.
    pub fn active(&self) -> Vec<Spi> {
        self.records.iter().filter(|c| c.state == ChildSaState::Active).map(|c| c.spi_in).collect()
    }

    pub fn inbound_spis(&self) -> Vec<Spi> {
        self.records.iter().map(|c| c.spi_in).collect()
    }

    /// What a new pair for `pair` replaces when the peer started its quick mode: the newest
    /// pair not yet replaced.
    pub fn newest_unreplaced(&self, pair: &SubnetPair) -> Option<Spi> {
        self.records
            .iter()
            .filter(|c| c.pair == *pair && c.state != ChildSaState::Replaced)
            .max_by_key(|c| c.established_at)
            .map(|c| c.spi_in)
    }

    pub fn insert(&mut self, record: ChildRecord) {
        self.records.push(record);
    }

    /// Hands every child SA over (to a newer IKE SA with the same peer).
    pub fn take_all(&mut self) -> Vec<ChildRecord> {
        std::mem::take(&mut self.records)
    }

    pub fn adopt(&mut self, records: Vec<ChildRecord>) {
        self.records.extend(records);
    }

    pub fn infos(&self) -> Vec<ChildSaInfo> {
        self.records.iter().map(ChildRecord::info).collect()
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        self.records.iter().filter_map(ChildRecord::next_timeout).min()
    }

    /// The pair and inbound SPI of the SA with this SPI (ours or the peer's) while it carries
    /// the traffic: one a replacement may be started for.
    pub fn rekey_candidate(&self, spi: Spi) -> Option<(SubnetPair, Spi)> {
        let c = self.records.iter().find(|c| c.spi_in == spi || c.spi_out == spi)?;
        (c.state == ChildSaState::Active).then_some((c.pair, c.spi_in))
    }

    /// A replacement of the SA with inbound SPI `spi_in` is under way or done: it stops
    /// waiting for its soft deadline.
    pub fn rekey_started(&mut self, spi_in: Spi) {
        if let Some(c) = self.records.iter_mut().find(|c| c.spi_in == spi_in) {
            c.rekey_at = None;
        }
    }

    /// The replacement of the SA with inbound SPI `spi_in` could not start or failed: try
    /// again at `at` (if it still carries the traffic then), so that a rekey is never lost to
    /// an exchange that was in the way.
    pub fn defer_rekey(&mut self, spi_in: Spi, at: Instant) {
        if let Some(c) = self.records.iter_mut().find(|c| c.spi_in == spi_in && c.state == ChildSaState::Active) {
            c.rekey_at = Some(at.min(c.expires_at));
        }
    }

    /// Switches outbound traffic of `spi_in`'s pair to it; every other SA pair for the same
    /// selectors is replaced and retires after the grace period. In a rekey collision, the pair
    /// that loses is instead marked replaced itself, and traffic stays where it is until the
    /// winner activates.
    pub fn activate(&mut self, ctx: &mut Ctx<'_>, peer: &str, spi_in: Spi) {
        let Some(i) = self.records.iter().position(|c| c.spi_in == spi_in) else { return };
        let c = &self.records[i];
        let beaten = c.predecessor.is_some()
            && self.records.iter().any(|o| {
                o.spi_in != spi_in
                    && o.pair == c.pair
                    && o.predecessor == c.predecessor
                    && o.state != ChildSaState::Replaced
                    && o.rank > c.rank
            });
        if beaten {
            let c = &mut self.records[i];
            tracing::info!(
                connection = %peer,
                %spi_in,
                selectors = %c.pair,
                "rekey collision: this pair is redundant (lower nonce); the other new pair will carry the traffic"
            );
            c.state = ChildSaState::Replaced;
            c.activate_at = None;
            c.rekey_at = None;
            c.retire_at = Some((ctx.now + RETIRE_GRACE).min(c.expires_at));
            return;
        }
        let c = &mut self.records[i];
        c.state = ChildSaState::Active;
        c.activate_at = None;
        c.retire_at = None;
        let (pair, spi_out) = (c.pair, c.spi_out);
        ctx.events.push_back(Event::ChildSaActive { peer: peer.to_string(), spi_in, spi_out });
        for other in self.records.iter_mut().filter(|o| o.pair == pair && o.spi_in != spi_in) {
            if other.state != ChildSaState::Replaced {
                tracing::debug!(connection = %peer, old = %other.spi_in, new = %spi_in, "child SA replaced");
            }
            other.state = ChildSaState::Replaced;
            other.rekey_at = None;
            other.activate_at = None;
            other.retire_at = Some(other.retire_at.unwrap_or(ctx.now + RETIRE_GRACE).min(other.expires_at));
        }
    }

    /// Removes the child SA with this SPI (ours or the peer's). If it carried outbound traffic and
    /// another pair for the same selectors remains, the newest of those takes over first: also a
    /// replacement we initiated that is still waiting out its activation delay (the peer has had
    /// our QM3; the alternative is a gap with no SA at all, e.g. at a hard volume limit reached
    /// before the delay ran out), but not a responder's pair still waiting for QM3.
    pub fn remove(&mut self, ctx: &mut Ctx<'_>, peer: &str, spi: Spi, reason: DeleteReason) {
        let Some(i) = self.records.iter().position(|c| c.spi_in == spi || c.spi_out == spi) else { return };
        let c = self.records.remove(i);
        // A replaced pair deleted by the peer is the normal end of a rekey, not a loss.
        let reason = if reason == DeleteReason::PeerDeleted && c.state == ChildSaState::Replaced {
            DeleteReason::Rekeyed
        } else {
            reason
        };
        if c.state == ChildSaState::Active
            && let Some(next) = self
                .records
                .iter()
                .filter(|o| o.pair == c.pair && (o.state != ChildSaState::Installing || o.activate_at.is_some()))
                .max_by_key(|o| o.established_at)
                .map(|o| o.spi_in)
        {
            self.activate(ctx, peer, next);
        }
        ctx.spis.release(c.spi_in);
        ctx.events.push_back(Event::ChildSaDeleted {
            peer: peer.to_string(),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            reason,
        });
    }

    /// Child SA timers: activation, retirement and hard expiry. Returns the inbound SPIs whose
    /// soft deadline passed (their replacement is for quick mode to start).
    pub fn handle_timeouts(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>) -> Vec<Spi> {
        let now = ctx.now;
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t);
        let activate_now: Vec<Spi> = self.records.iter().filter(|c| due(c.activate_at)).map(|c| c.spi_in).collect();
        for spi in activate_now {
            self.activate(ctx, &channel.link.peer.name, spi);
        }
        let gone: Vec<(Spi, DeleteReason)> = self
            .records
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
            send_delete(ctx, channel, spi);
            self.remove(ctx, &channel.link.peer.name, spi, reason);
        }
        self.records.iter().filter(|c| due(c.rekey_deadline())).map(|c| c.spi_in).collect()
    }
}

/// Sends a Delete for one of our child SAs (our inbound SPI: the one the peer sends to).
pub(crate) fn send_delete(ctx: &mut Ctx<'_>, channel: Secured<'_>, spi_in: Spi) {
    info::send_secured(ctx, channel, vec![info::delete_esp(spi_in)]);
}
