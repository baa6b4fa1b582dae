//! An established IKE SA's own state: the keys (the only place they live after phase 1), the
//! phase 1 choice and lifetime, liveness, quick modes and child SAs; and how it becomes plain
//! data and back ([`crate::snapshot`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vpngw_crypto::CbcCipher;

use crate::child::{ChildRecord, ChildSet};
use crate::config::{DpdPolicy, PeerConfig};
use crate::event::{Event, IkeSaId};
use crate::exchange::Ctx;
use crate::lifetime::{PEER_FLOOR_SECONDS, bounded};
use crate::liveness::Liveness;
use crate::message::{Link, MessageCrypto};
use crate::nat_t::NatT;
use crate::phase1::Phase1Done;
use crate::proposal::Phase1Choice;
use crate::quick_mode::{ExportedQuickModes, QuickModes};
use crate::seen::SeenIds;
use crate::snapshot::{IkeSaSnapshot, SnapshotError, after, after_opt, ago, before, until};
use crate::timer::Timer;

/// An established IKE SA: the only owner of its keys.
pub(crate) struct Established {
    pub crypto: MessageCrypto,
    pub choice: Phase1Choice,
    pub established_at: Instant,
    pub expires_at: Instant,
    pub liveness: Liveness,
    pub quick_modes: QuickModes,
    pub children: ChildSet,
    /// A newer IKE SA with the same peer took over its child SAs: no DPD, no
    /// re-authentication; it goes when the peer deletes it or soon after.
    pub superseded: bool,
    /// Message IDs of the peer's informational exchanges: a replayed one (a DPD probe, a
    /// Delete) is not acted on, nor taken as a sign of life.
    pub informational_ids: SeenIds,
}

impl Established {
    /// Phase 1 of `link` is done: the lifetime is the shorter of ours and the peer's, and the
    /// driver hears of it.
    pub fn start(ctx: &mut Ctx<'_>, link: &Link, done: Phase1Done) -> Self {
        let Phase1Done { crypto, choice, .. } = done;
        let ours = link.peer.phase1.lifetime.as_secs();
        let lifetime = bounded(ours, choice.lifetime_seconds, PEER_FLOOR_SECONDS).max(1);
        if choice.lifetime_seconds.is_some_and(|t| t != ours) {
            tracing::info!(connection = %link.peer.name, offered = ?choice.lifetime_seconds, configured = ours, used = lifetime, "IKE SA lifetimes differ: the shorter is used");
        }
        let liveness = Liveness::start(ctx.now, ctx.rng, Duration::from_secs(lifetime), link.role);
        ctx.events.push_back(Event::IkeSaEstablished {
            peer: link.peer.name.clone(),
            ike_sa: link.id,
            role: link.role,
            mode: link.mode,
            local: link.local,
            remote: link.remote,
            encryption: choice.encryption,
            hash: choice.hash,
            dh_group: choice.dh_group,
            lifetime_seconds: lifetime,
            nat_detected: link.nat.detected,
        });
        Self {
            crypto,
            choice,
            established_at: ctx.now,
            expires_at: ctx.now + Duration::from_secs(lifetime),
            liveness,
            quick_modes: QuickModes::default(),
            children: ChildSet::default(),
            superseded: false,
            informational_ids: SeenIds::default(),
        }
    }

    /// The DPD policy in force: configured, supported by the peer, not superseded.
    pub fn dpd_policy(&self, link: &Link) -> Option<DpdPolicy> {
        link.peer.dpd.filter(|_| link.peer_supports_dpd && !self.superseded)
    }

    /// When one of this SA's own timers is due next (None: not armed, or not one of its own).
    pub fn deadline(&self, timer: Timer, link: &Link) -> Option<Instant> {
        match timer {
            Timer::QuickMode => self.quick_modes.next_timeout(),
            Timer::ChildSa => self.children.next_timeout(),
            Timer::Reauth => self.liveness.reauth_deadline().filter(|_| !self.superseded),
            Timer::Dpd => self.liveness.dpd_deadline(self.dpd_policy(link)),
            Timer::Expiry => Some(self.expires_at),
            Timer::Retransmit | Timer::HalfOpen => None,
        }
    }

    /// The link of a snapshot's SA, as handle `id` of connection `peer`.
    pub fn restore_link(id: IkeSaId, peer: Arc<PeerConfig>, s: &IkeSaSnapshot) -> Link {
        let mut link = Link::new(id, peer, s.role, s.mode, s.local, s.remote);
        link.cky_i = s.initiator_cookie;
        link.cky_r = s.responder_cookie;
        link.nat = NatT { variant: s.nat_t, detected: s.nat_detected };
        link.peer_supports_dpd = s.peer_supports_dpd;
        link.last_answer = s.phase1_answer.clone();
        link
    }

    /// The SA as plain data, times relative to `now`.
    pub fn export(&self, link: &Link, now: Instant) -> IkeSaSnapshot {
        let (last_heard, dpd_sequence, last_probe, reauth_at) = self.liveness.parts();
        let quick_modes = self.quick_modes.export();
        IkeSaSnapshot {
            connection: link.peer.name.clone(),
            role: link.role,
            mode: link.mode,
            initiator_cookie: link.cky_i,
            responder_cookie: link.cky_r,
            local: link.local,
            remote: link.remote,
            nat_t: link.nat.variant,
            nat_detected: link.nat.detected,
            peer_supports_dpd: link.peer_supports_dpd,
            choice: self.choice.clone(),
            keys: self.crypto.keys.clone(),
            iv_base: self.crypto.iv().to_vec(),
            age: ago(now, self.established_at),
            expires_in: until(now, self.expires_at),
            reauth_in: reauth_at.map(|t| until(now, t)),
            last_heard_ago: ago(now, last_heard),
            dpd_sequence,
            last_probe_ago: last_probe.map(|t| ago(now, t)),
            superseded: self.superseded,
            aborted_message_ids: quick_modes.aborted,
            peer_quick_mode_ids: quick_modes.peer_started,
            peer_informational_ids: self.informational_ids.to_vec(),
            phase1_answer: link.last_answer.clone(),
            quick_modes: quick_modes.kept,
            queued_quick_modes: quick_modes.queued,
            children: self.children.records().map(|c| c.snapshot(now)).collect(),
        }
    }

    /// The SA of a snapshot, times relative to `now`.
    pub fn import(snapshot: IkeSaSnapshot, now: Instant) -> Result<Self, SnapshotError> {
        let s = snapshot;
        let cipher = CbcCipher::new(s.choice.encryption, s.keys.encryption_key.expose())
            .map_err(|e| SnapshotError::BadKey(e.to_string()))?;
        let mut children = ChildSet::default();
        children.adopt(s.children.iter().map(|c| ChildRecord::restore(c, now)).collect::<Result<_, _>>()?);
        let liveness = Liveness::restore(
            before(now, s.last_heard_ago),
            s.dpd_sequence,
            s.last_probe_ago.map(|d| before(now, d)),
            after_opt(now, s.reauth_in)?,
        );
        Ok(Self {
            crypto: MessageCrypto::new(s.keys, cipher, s.iv_base),
            choice: s.choice,
            established_at: before(now, s.age),
            expires_at: after(now, s.expires_in)?,
            liveness,
            quick_modes: QuickModes::import(ExportedQuickModes {
                kept: s.quick_modes,
                queued: s.queued_quick_modes,
                aborted: s.aborted_message_ids,
                peer_started: s.peer_quick_mode_ids,
            }),
            informational_ids: SeenIds::from_ids(s.peer_informational_ids),
            children,
            superseded: s.superseded,
        })
    }
}
