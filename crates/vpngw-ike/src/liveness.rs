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

use vpngw_crypto::rand_core::Rng;

use crate::config::DpdAction;
use crate::event::{DeleteReason, Event, FailReason};
use crate::exchange::Ctx;
use crate::ikesa::IkeSa;
use crate::wire::{NotifyPayload, NotifyType, ProtocolId};

/// Liveness state of an established IKE SA.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    /// When we last heard from the peer on this IKE SA or its child SAs.
    pub last_heard: Option<Instant>,
    /// Sequence number of our next (or repeated) R-U-THERE.
    pub dpd_seq: u32,
    pub last_probe: Option<Instant>,
    /// Start a new main mode then.
    pub reauth_at: Option<Instant>,
    /// For the endpoint: start a re-authentication now / negotiate again after DPD restart.
    pub reauth_due: bool,
    pub restart_due: bool,
}

/// Called when the IKE SA is established.
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>, lifetime: Duration) {
    sa.liveness.last_heard = Some(ctx.now);
    sa.liveness.dpd_seq = ctx.rng.next_u32() & 0x7fff_ffff;
    sa.liveness.reauth_at = Some(crate::child::rekey_time(ctx.now, lifetime, sa.role, ctx.rng));
}

/// The peer showed signs of life.
pub(crate) fn heard(sa: &mut IkeSa, now: Instant) {
    if sa.is_established() {
        sa.liveness.last_heard = Some(now);
    }
}

/// An R-U-THERE-ACK: counts only with the sequence number we sent.
pub(crate) fn on_ack(sa: &mut IkeSa, now: Instant, data: &[u8]) {
    let Ok(seq) = <[u8; 4]>::try_from(data).map(u32::from_be_bytes) else { return };
    if seq == sa.liveness.dpd_seq {
        sa.liveness.dpd_seq = sa.liveness.dpd_seq.wrapping_add(1) & 0x7fff_ffff;
        heard(sa, now);
    } else {
        tracing::debug!(peer = %sa.peer.name, seq, expected = sa.liveness.dpd_seq, "R-U-THERE-ACK with another sequence number ignored");
    }
}

fn dpd_active(sa: &IkeSa) -> bool {
    sa.is_established() && sa.peer_supports_dpd && sa.peer.dpd.is_some() && !sa.superseded
}

/// When to start re-authenticating.
pub(crate) fn reauth_deadline(sa: &IkeSa) -> Option<Instant> {
    sa.liveness.reauth_at.filter(|_| sa.is_established() && !sa.superseded)
}

/// When to probe the peer or declare it dead.
pub(crate) fn dpd_deadline(sa: &IkeSa) -> Option<Instant> {
    if !sa.is_established() || sa.superseded {
        return None;
    }
    sa.peer.dpd.filter(|_| dpd_active(sa)).and_then(|p| {
        let heard = sa.liveness.last_heard?;
        let probe = match sa.liveness.last_probe {
            Some(t) if t > heard => t + p.delay(),
            _ => heard + p.delay(),
        };
        Some(probe.min(heard + p.timeout))
    })
}

/// The re-authentication deadline passed: the endpoint starts a new main mode.
pub(crate) fn on_reauth_timer(sa: &mut IkeSa, now: Instant) {
    if !sa.is_established() || sa.superseded {
        return;
    }
    if sa.liveness.reauth_at.is_some_and(|t| now >= t) {
        sa.liveness.reauth_at = None;
        sa.liveness.reauth_due = true;
        tracing::info!(peer = %sa.peer.name, "IKE SA lifetime nearly over: re-authenticating");
    }
}

/// Probes the silent peer, or declares it dead.
pub(crate) fn on_dpd_timer(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    if !sa.is_established() || sa.superseded {
        return;
    }
    let Some(policy) = sa.peer.dpd.filter(|_| dpd_active(sa)) else { return };
    let Some(heard) = sa.liveness.last_heard else { return };
    let silent = ctx.now.saturating_duration_since(heard);
    if silent >= policy.timeout {
        tracing::warn!(peer = %sa.peer.name, silent_seconds = silent.as_secs(), action = %policy.action, "dead peer detected");
        ctx.events.push_back(Event::NegotiationFailed {
            peer: Some(sa.peer.name.clone()),
            remote: sa.remote,
            reason: FailReason::PeerUnreachable,
            detail: format!(
                "dead peer detection: nothing heard from {} for {} s (dpd action {})",
                sa.remote.ip(),
                silent.as_secs(),
                policy.action
            ),
        });
        sa.liveness.restart_due = policy.action == DpdAction::Restart;
        sa.delete(ctx, DeleteReason::DeadPeer);
        return;
    }
    let probe_due = match sa.liveness.last_probe {
        Some(t) if t > heard => ctx.now >= t + policy.delay(),
        _ => silent >= policy.delay(),
    };
    if probe_due {
        sa.liveness.last_probe = Some(ctx.now);
        let seq = sa.liveness.dpd_seq;
        tracing::debug!(peer = %sa.peer.name, seq, "R-U-THERE");
        let cookies = sa.cookies();
        sa.send_informational(
            ctx,
            vec![crate::wire::Payload::Notify(NotifyPayload::new(
                ProtocolId::ISAKMP,
                NotifyType::R_U_THERE,
                cookies,
                seq.to_be_bytes().to_vec(),
            ))],
        );
    }
}
