//! The peer's informational exchanges for one IKE SA: deletes, notifies (errors, INITIAL-CONTACT,
//! RESPONDER-LIFETIME) and dead peer detection. What counts only when authenticated (inside the
//! phase 1 encryption or an encrypted informational with a valid HASH) is decided here.

use vpngw_esp::Spi;

use super::{IkeSa, Phase};
use crate::event::{DeleteReason, Event, FailReason};
use crate::exchange::{Ctx, ProtocolError, Received};
use crate::info::{self, RefusalContext, Unopened};
use crate::message::{Secured, plain_payloads};
use crate::wire::{DeletePayload, NotifyPayload, NotifyType, Payload, ProtocolId};

impl IkeSa {
    /// Sends an informational exchange: encrypted with a HASH once keys exist, in the clear
    /// before (RFC 2409 s.5.7).
    fn send_informational(&self, ctx: &mut Ctx<'_>, payloads: Vec<Payload>) {
        info::send(ctx, &self.link, self.crypto(), payloads);
    }

    /// An informational exchange from the peer: deletes, notifies, DPD. Returns why it was
    /// dropped, if it was (for the endpoint's drop counters).
    pub fn handle_informational(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Option<&'static str> {
        let chain = if rx.header.is_encrypted() {
            let crypto = self.crypto()?;
            match info::open(crypto, rx, &self.link.peer.name) {
                Ok(chain) => chain,
                Err(Unopened::Undecryptable) => {
                    if self.awaits_mm6() {
                        self.fail(
                            ctx,
                            ProtocolError::unannounced(
                                FailReason::AuthenticationFailed,
                                "the peer's answer to main mode message 5 does not decrypt: likely pre-shared key mismatch",
                            ),
                        );
                        return None;
                    }
                    tracing::debug!(connection = %self.link.peer.name, "undecryptable informational message dropped");
                    return Some("undecryptable_informational");
                }
                Err(Unopened::Dropped) => return Some("unauthenticated_informational"),
            }
        } else {
            if self.is_established() {
                tracing::debug!(connection = %self.link.peer.name, "unprotected informational after phase 1 dropped");
                return Some("unprotected_informational");
            }
            match plain_payloads(rx) {
                Ok(c) => c,
                Err(_) => return Some("malformed_informational"),
            }
        };
        let authenticated = rx.header.is_encrypted();
        if authenticated {
            if let Phase::Established(est) = &mut self.phase
                && !est.informational_ids.insert(rx.header.message_id)
            {
                tracing::debug!(connection = %self.link.peer.name, message_id = rx.header.message_id, "replayed informational dropped");
                return Some("replayed_informational");
            }
            self.heard(ctx.now);
        }
        for p in chain.iter() {
            match p {
                Payload::Delete(d) => self.on_delete(ctx, d),
                Payload::Notify(n) => self.on_notify(ctx, n, authenticated),
                _ => {}
            }
        }
        None
    }

    fn awaits_mm6(&self) -> bool {
        matches!(&self.phase, Phase::Negotiating(p1) if p1.awaits_mm6())
    }

    /// A notify; `authenticated`: it came encrypted with a valid HASH (anyone on the path can
    /// send a cleartext one).
    fn on_notify(&mut self, ctx: &mut Ctx<'_>, n: &NotifyPayload, authenticated: bool) {
        match n.notify_type {
            NotifyType::R_U_THERE if n.data.len() == 4 => {
                // Answered in a new exchange with the same sequence number (RFC 3706 s.5.2).
                let ack =
                    info::notify(ProtocolId::ISAKMP, NotifyType::R_U_THERE_ACK, self.link.cookies(), n.data.clone());
                self.send_informational(ctx, vec![ack]);
            }
            NotifyType::R_U_THERE_ACK => {
                if let Some((est, link)) = self.established() {
                    est.liveness.on_ack(ctx.now, &n.data, &link.peer.name);
                }
            }
            // It drops every other SA with the peer: only the peer itself may say so.
            NotifyType::INITIAL_CONTACT if authenticated => self.initial_contact_received = true,
            t if t.is_error() => self.on_refusal(ctx, n),
            _ => tracing::debug!(connection = %self.link.peer.name, notify = %n.notify_type, "notify ignored"),
        }
    }

    /// An error notify: the peer refused something of ours.
    fn on_refusal(&mut self, ctx: &mut Ctx<'_>, n: &NotifyPayload) {
        let at = RefusalContext {
            peer: &self.link.peer,
            mode: self.link.mode,
            established: self.is_established(),
            awaiting_mm6: self.awaits_mm6(),
        };
        let (reason, detail) = info::describe_refusal(n, &at);
        if let Some((est, link)) = self.established() {
            // The notify's SPI, when it carries one, names the quick mode refused.
            let spi = <[u8; 4]>::try_from(n.spi.as_slice()).ok().map(Spi::from_be_bytes);
            let channel = Secured { link, crypto: &est.crypto };
            est.quick_modes.abort_pending(ctx, channel, &mut est.children, spi, reason, &detail);
        }
        ctx.events.push_back(Event::NegotiationFailed {
            peer: Some(self.link.peer.name.clone()),
            remote: self.link.remote,
            reason,
            detail,
            logged: false,
        });
        if !self.is_established() {
            self.die();
        }
    }

    fn on_delete(&mut self, ctx: &mut Ctx<'_>, d: &DeletePayload) {
        match d.protocol {
            ProtocolId::ISAKMP if d.spis.iter().any(|s| s.as_slice() == self.link.cookies().as_slice()) => {
                self.drop_all(ctx, DeleteReason::PeerDeleted);
            }
            ProtocolId::ESP => {
                let Some((est, link)) = self.established() else { return };
                for spi in &d.spis {
                    let Ok(b) = <[u8; 4]>::try_from(spi.as_slice()) else { continue };
                    est.children.remove(ctx, &link.peer.name, Spi::from_be_bytes(b), DeleteReason::PeerDeleted);
                }
            }
            _ => {}
        }
    }
}
