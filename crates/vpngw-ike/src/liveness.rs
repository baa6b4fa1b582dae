//! An established IKE SA over time: dead peer detection (RFC 3706) and re-authentication.
//!
//! DPD, as strongSwan does it: a probe (R-U-THERE) only after `delay` without hearing from the
//! peer (any authenticated IKE message, or ESP on one of its child SAs, which the driver
//! reports with [`crate::Endpoint::traffic_received`]); the sequence number starts random and
//! moves on only when acknowledged, so unanswered probes repeat it; silence for `timeout`
//! declares the peer dead.
//!
//! Re-authentication: IKEv1 cannot rekey an ISAKMP SA, so before its lifetime ends a new main
//! mode runs (without INITIAL-CONTACT, so that the peer keeps our child SAs) and, once it is
//! established, the child SAs move to it and the old ISAKMP SA is deleted. The IKE SA's
//! initiator does it at lifetime - margin, the responder only later, like child SA rekeys.

use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;
use vpngw_crypto::rand_core::Rng;

use crate::config::{DpdAction, DpdPolicy};
use crate::event::{Event, FailReason, Role};
use crate::exchange::Ctx;
use crate::info;
use crate::lifetime::rekey_time;
use crate::message::Secured;
use crate::wire::{NotifyType, ProtocolId};

/// Liveness state of an established IKE SA.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// When we last heard from the peer on this IKE SA or its child SAs.
    last_heard: Instant,
    /// Sequence number of our next (or repeated) R-U-THERE.
    dpd_seq: u32,
    last_probe: Option<Instant>,
    /// Start a new main mode then.
    reauth_at: Option<Instant>,
}

/// What a DPD timer found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DpdOutcome {
    /// Not yet dead (a probe may have gone out).
    Alive,
    /// Silent for the whole timeout: the IKE SA is to be deleted, and with action restart
    /// negotiated again.
    Dead { restart: bool },
}

impl Liveness {
    /// The IKE SA is established `now`, for `lifetime`, in `role`.
    pub fn start(now: Instant, rng: &mut FastRng, lifetime: Duration, role: Role) -> Self {
        let dpd_seq = rng.next_u32() & 0x7fff_ffff;
        Self { last_heard: now, dpd_seq, last_probe: None, reauth_at: Some(rekey_time(now, lifetime, role, rng)) }
    }

    /// A liveness state from its parts (an imported IKE SA).
    pub fn restore(last_heard: Instant, dpd_seq: u32, last_probe: Option<Instant>, reauth_at: Option<Instant>) -> Self {
        Self { last_heard, dpd_seq, last_probe, reauth_at }
    }

    /// Its parts: when we last heard, the next R-U-THERE sequence number, the last probe and
    /// the re-authentication time.
    pub fn parts(&self) -> (Instant, u32, Option<Instant>, Option<Instant>) {
        (self.last_heard, self.dpd_seq, self.last_probe, self.reauth_at)
    }

    /// The peer showed signs of life.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// An R-U-THERE-ACK: counts only with the sequence number we sent.
    pub fn on_ack(&mut self, now: Instant, data: &[u8], peer: &str) {
        let Ok(seq) = <[u8; 4]>::try_from(data).map(u32::from_be_bytes) else { return };
        if seq == self.dpd_seq {
            self.dpd_seq = self.dpd_seq.wrapping_add(1) & 0x7fff_ffff;
            self.heard(now);
        } else {
            tracing::debug!(connection = %peer, seq, expected = self.dpd_seq, "R-U-THERE-ACK with another sequence number ignored");
        }
    }

    /// How long a silence makes us probe: the policy's delay, shortened by 0-15 % as the
    /// sequence number (random, moved on by each acknowledgement) picks. Two sides that probe
    /// on the same delay would otherwise both probe at the same moment, every time, each
    /// probe crossing the other's; staggered, the first probe is the other side's proof of
    /// life, so an idle tunnel costs one probe and one acknowledgement per delay instead of
    /// two of each (thousands of idle tunnels: half the DPD messages).
    fn probe_delay(&self, policy: DpdPolicy) -> Duration {
        let delay = policy.delay();
        delay - delay * (self.dpd_seq % 16) / 100
    }

    /// When to start re-authenticating.
    pub fn reauth_deadline(&self) -> Option<Instant> {
        self.reauth_at
    }

    /// When to probe the peer or declare it dead, under `dpd` (None: DPD is off).
    pub fn dpd_deadline(&self, dpd: Option<DpdPolicy>) -> Option<Instant> {
        let p = dpd?;
        let heard = self.last_heard;
        let delay = self.probe_delay(p);
        let probe = match self.last_probe {
            Some(t) if t > heard => t + delay,
            _ => heard + delay,
        };
        Some(probe.min(heard + p.timeout))
    }

    /// Whether the re-authentication deadline passed (then the endpoint starts a new main
    /// mode; asked once).
    #[must_use]
    pub fn on_reauth_timer(&mut self, now: Instant, peer: &str) -> bool {
        if self.reauth_at.is_some_and(|t| now >= t) {
            self.reauth_at = None;
            tracing::info!(connection = %peer, "IKE SA lifetime nearly over: re-authenticating");
            return true;
        }
        false
    }

    /// Probes the silent peer, or declares it dead.
    #[must_use]
    pub fn on_dpd_timer(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, dpd: Option<DpdPolicy>) -> DpdOutcome {
        let Some(policy) = dpd else { return DpdOutcome::Alive };
        let link = channel.link;
        let heard = self.last_heard;
        let silent = ctx.now.saturating_duration_since(heard);
        if silent >= policy.timeout {
            let detail = format!(
                "dead peer detection: nothing heard from {} for {} s (dpd action {})",
                link.remote.ip(),
                silent.as_secs(),
                policy.action
            );
            let reason = FailReason::PeerUnreachable;
            // The one line for this event: the gateway records the failure without another.
            tracing::warn!(
                event = "dpd_timeout",
                connection = %link.peer.name,
                remote = %link.remote,
                silent_seconds = silent.as_secs(),
                action = %policy.action,
                %reason,
                "dead peer detected"
            );
            ctx.events.push_back(Event::NegotiationFailed {
                peer: Some(link.peer.name.clone()),
                remote: link.remote,
                reason,
                detail,
                logged: true,
            });
            return DpdOutcome::Dead { restart: policy.action == DpdAction::Restart };
        }
        let delay = self.probe_delay(policy);
        let probe_due = match self.last_probe {
            Some(t) if t > heard => ctx.now >= t + delay,
            _ => silent >= delay,
        };
        if probe_due {
            self.last_probe = Some(ctx.now);
            let seq = self.dpd_seq;
            tracing::debug!(connection = %link.peer.name, seq, "R-U-THERE");
            let probe =
                info::notify(ProtocolId::ISAKMP, NotifyType::R_U_THERE, link.cookies(), seq.to_be_bytes().to_vec());
            info::send_secured(ctx, channel, vec![probe]);
        }
        DpdOutcome::Alive
    }
}
