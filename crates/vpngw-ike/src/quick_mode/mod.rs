//! Quick mode (RFC 2409 s.5.5): one exchange per subnet pair, ESP in tunnel mode (or UDP-
//! encapsulated tunnel mode behind NAT), optional PFS, lifetimes with RESPONDER-LIFETIME.
//! [`QuickModes`] owns an established IKE SA's exchanges, the queue of ours waiting for their
//! turn and the message IDs of those given up; the exchanges install into a [`ChildSet`].

mod exchange;
mod initiator;
mod responder;

use std::collections::VecDeque;
use std::time::Instant;

use vpngw_crypto::rand_core::Rng;
use vpngw_esp::Spi;

use self::exchange::{QmState, QuickMode, install};
use crate::child::{self, ChildSet};
use crate::config::SubnetPair;
use crate::event::{DeleteReason, Event, FailReason, Role};
use crate::exchange::{Ctx, ProtocolError, Received, Retransmit, RetransmitDue};
use crate::info;
use crate::message::Secured;
use crate::seen::SeenIds;
use crate::snapshot::{QueuedQuickMode, QuickModeSnapshot};
use crate::wire::ProtocolId;

/// Finished exchanges kept to answer retransmissions of their last message.
const DONE_KEPT: usize = 8;
/// Message IDs of given-up exchanges remembered.
const ABORTED_KEPT: usize = 16;
/// A rekey that could not start (another exchange for the pair was under way) or whose quick
/// mode failed is tried again this much later.
const REKEY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Quick modes of ours under way at once on one IKE SA. strongSwan keeps the CBC IV of only
/// its last three exchanges (keymat_v1.c, MAX_IV): a fourth concurrent one makes it forget
/// the oldest's IV and fail to decrypt its last message. Two leave room for an informational
/// exchange (DPD, Delete) and a quick mode the peer starts.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Quick modes the peer may have open at once on one IKE SA (strongSwan runs at most three
/// of its own; see [`MAX_IN_FLIGHT`]).
const MAX_PEER_IN_FLIGHT: usize = 4;
/// Child SAs per subnet pair on one IKE SA, beyond which the peer's quick modes are dropped:
/// one carrying traffic, its replacement, and replaced ones retiring (10 s each).
const MAX_CHILD_SAS_PER_PAIR: usize = 6;

/// A quick mode waiting for its turn: a pair's first SA, or the replacement of the child SA
/// with this inbound SPI (a rekey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Queued {
    pair: SubnetPair,
    replaces: Option<Spi>,
}

/// The quick modes of one established IKE SA.
#[derive(Default)]
pub(crate) struct QuickModes {
    exchanges: Vec<QuickMode>,
    /// Subnet pairs waiting for a quick mode of ours (a few run at a time).
    queue: VecDeque<Queued>,
    /// Message IDs of quick modes of ours given up after a refusal (their late answers are
    /// dropped, not taken for new exchanges).
    aborted: VecDeque<u32>,
    /// Message IDs of the quick modes the peer started: a replayed QM1 is not a new exchange.
    peer_started: SeenIds,
}

/// What [`QuickModes::export`] keeps of the exchanges.
pub(crate) struct ExportedQuickModes {
    pub kept: Vec<QuickModeSnapshot>,
    pub queued: Vec<QueuedQuickMode>,
    pub aborted: Vec<u32>,
    pub peer_started: Vec<u32>,
}

impl QuickModes {
    /// As plain data: the peer's exchanges waiting for QM3 and the finished ones as they are;
    /// ours waiting for QM2 given up (their message IDs with the aborted ones, so their late
    /// answers are dropped) and queued again ahead of the queue.
    pub fn export(&self) -> ExportedQuickModes {
        let mut queued = Vec::new();
        let mut aborted: Vec<u32> = self.aborted.iter().copied().collect();
        let mut kept = Vec::new();
        for q in &self.exchanges {
            if q.state == QmState::I1 {
                queued.push(QueuedQuickMode { selectors: q.pair, replaces: q.replaces });
                aborted.push(q.message_id);
            } else {
                kept.push(q.snapshot());
            }
        }
        queued.extend(self.queue.iter().map(|q| QueuedQuickMode { selectors: q.pair, replaces: q.replaces }));
        let excess = aborted.len().saturating_sub(ABORTED_KEPT);
        aborted.drain(..excess);
        ExportedQuickModes { kept, queued, aborted, peer_started: self.peer_started.to_vec() }
    }

    /// From plain data ([`Self::export`]); [`Self::resume`] sets them going.
    pub fn import(exported: ExportedQuickModes) -> Self {
        Self {
            exchanges: exported.kept.into_iter().map(QuickMode::restore).collect(),
            queue: exported.queued.into_iter().map(|q| Queued { pair: q.selectors, replaces: q.replaces }).collect(),
            aborted: exported.aborted.into(),
            peer_started: SeenIds::from_ids(exported.peer_started),
        }
    }

    /// After an import: the peer's exchanges waiting for QM3 resend QM2 until it comes (as
    /// before the export), and the queued ones of ours start.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet) {
        for q in self.exchanges.iter_mut().filter(|q| q.state == QmState::R2 && q.retransmit.is_none()) {
            if let Some(a) = &q.last_answer {
                q.retransmit = Some(Retransmit::new(a.answer.clone(), ctx));
            }
        }
        self.pump(ctx, channel, children);
    }

    /// The SPIs our exchanges hold (the child SAs' aside).
    pub fn spis_in(&self) -> impl Iterator<Item = Spi> + '_ {
        self.exchanges.iter().filter(|q| q.is_open()).map(|q| q.spi_in)
    }

    /// Whether an exchange for `pair` is under way or queued.
    fn busy(&self, pair: &SubnetPair) -> bool {
        self.exchanges.iter().any(|q| q.pair == *pair && q.is_open()) || self.queue.iter().any(|q| q.pair == *pair)
    }

    /// Starts a quick mode for every configured pair that has neither an SA nor an exchange.
    /// They run [`MAX_IN_FLIGHT`] at a time, the rest queued.
    pub fn start_all(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet) {
        for pair in &channel.link.peer.subnets {
            if !children.has_pair(pair) && !self.busy(pair) {
                self.queue.push_back(Queued { pair: *pair, replaces: None });
            }
        }
        self.pump(ctx, channel, children);
    }

    /// Starts replacing the child SA with this SPI (ours or the peer's) unless a replacement
    /// is under way or done. Returns whether a quick mode started.
    pub fn rekey(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet, spi: Spi) -> bool {
        let Some((pair, old)) = children.rekey_candidate(spi) else { return false };
        if children.has_replacement(&pair, old) || self.busy(&pair) {
            // A replacement is under way (the peer's rekey, most likely): when it takes over,
            // this SA is replaced and nothing is left to do; if it fails, ours goes then.
            children.defer_rekey(old, ctx.now + REKEY_RETRY);
            return false;
        }
        children.rekey_started(old);
        tracing::info!(event = "child_sa_rekey", connection = %channel.link.peer.name, spi_in = %old, selectors = %pair, "rekeying child SA");
        // Through the queue: rekeys of many pairs at once (`vpngw rekey`) run a few at a time too.
        self.queue.push_back(Queued { pair, replaces: Some(old) });
        self.pump(ctx, channel, children);
        true
    }

    /// Starts queued quick modes while fewer than [`MAX_IN_FLIGHT`] of ours are under way.
    fn pump(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet) {
        loop {
            let in_flight = self.exchanges.iter().filter(|q| q.role == Role::Initiator && q.is_open()).count();
            if in_flight >= MAX_IN_FLIGHT {
                return;
            }
            let Some(q) = self.queue.pop_front() else { return };
            let pair = q.pair;
            let exchanging = self.exchanges.iter().any(|m| m.pair == pair && m.is_open());
            let wanted = match q.replaces {
                // A first SA: unless one came meanwhile (the peer's quick mode).
                None => !children.has_pair(&pair),
                // A rekey: while the SA to replace is still the one carrying the traffic.
                Some(old) => children.is_active(old),
            };
            if wanted && !exchanging {
                let message_id = self.new_message_id(ctx);
                let qm = initiator::start(ctx, channel, message_id, pair, q.replaces);
                self.exchanges.push(qm);
            } else if let (true, Some(old)) = (wanted, q.replaces) {
                // The peer started an exchange for the pair meanwhile: ours waits for it.
                children.defer_rekey(old, ctx.now + REKEY_RETRY);
            }
        }
    }

    fn new_message_id(&self, ctx: &mut Ctx<'_>) -> u32 {
        loop {
            let id = ctx.rng.next_u32();
            if id != 0 && !self.exchanges.iter().any(|q| q.message_id == id) {
                return id;
            }
        }
    }

    /// A quick mode message. Returns whether it was authentic (the peer is alive).
    pub fn handle(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: Secured<'_>,
        children: &mut ChildSet,
        rx: &Received<'_>,
    ) -> bool {
        let peer = &channel.link.peer.name;
        let mid = rx.header.message_id;
        if self.aborted.contains(&mid) {
            // The peer answering a quick mode we gave up on (its refusal of another one did not
            // say which): not a new exchange, nothing to decrypt with.
            tracing::debug!(connection = %peer, message_id = mid, "answer to an aborted quick mode: dropped");
            return false;
        }
        let Some(i) = self.exchanges.iter().position(|q| q.message_id == mid) else {
            if self.peer_started.contains(mid) {
                // A copy of a QM1 answered long ago (its exchange no longer kept): authentic,
                // but acting on it again would cost a DH and install a stray SA.
                tracing::debug!(connection = %peer, message_id = mid, "replayed quick mode dropped");
                return false;
            }
            return self.respond(ctx, channel, children, rx);
        };
        let qm = &mut self.exchanges[i];
        // Duplicate of a request we answered: resend the answer.
        if let Some(a) = qm.last_answer.as_ref().filter(|a| a.answers(rx.data)) {
            channel.link.retransmit(ctx, a.answer.clone());
            return false;
        }
        let result = match (qm.role, qm.state) {
            (Role::Initiator, QmState::I1) => initiator::on_qm2(ctx, channel, qm, rx).map(|()| {
                install(ctx, channel, children, qm);
                true
            }),
            (Role::Responder, QmState::R2) => responder::on_qm3(ctx, channel, children, qm, rx).map(|()| false),
            // Neither a duplicate we answered nor a step we expect: not read, so not a sign
            // that the peer is alive either (anyone on the path could replay it).
            _ => {
                tracing::debug!(connection = %peer, message_id = mid, "unexpected quick mode message: dropped");
                return false;
            }
        };
        match result {
            Err(f) if f.is_unauthenticated() => {
                // Not shown to come from the peer: our exchange goes on as if it never came.
                tracing::debug!(connection = %peer, message_id = mid, error = %f, "unauthenticated quick mode message dropped");
                false
            }
            Ok(installed) => {
                if installed {
                    self.prune_done();
                    self.pump(ctx, channel, children);
                }
                true
            }
            Err(f) => {
                self.fail(ctx, channel, children, i, f);
                false
            }
        }
    }

    /// A new exchange the peer starts (QM1).
    fn respond(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet, rx: &Received<'_>) -> bool {
        // An authenticated peer still gets bounded work and state: a few of its quick modes
        // open at once, and a few child SAs per subnet pair (the current one, its replacement,
        // and retiring ones).
        let open = self.exchanges.iter().filter(|q| q.role == Role::Responder && q.is_open()).count();
        let limit = MAX_CHILD_SAS_PER_PAIR * channel.link.peer.subnets.len().max(1);
        if open >= MAX_PEER_IN_FLIGHT || children.records().count() >= limit {
            tracing::debug!(connection = %channel.link.peer.name, open, child_sas = children.records().count(), "quick mode over the limits: dropped");
            return false;
        }
        let mut offered = None;
        match responder::on_qm1(ctx, channel, rx, &mut offered) {
            Ok(mut qm) => {
                self.peer_started.insert(qm.message_id);
                // Make-before-break: our inbound SA exists before the initiator, which
                // switches when it sends QM3, can use it.
                install(ctx, channel, children, &mut qm);
                self.exchanges.push(qm);
                self.prune_done();
                true
            }
            Err(f) if f.is_unauthenticated() => {
                tracing::debug!(connection = %channel.link.peer.name, error = %f, "unauthenticated quick mode message dropped");
                false
            }
            Err(f) => {
                tracing::debug!(connection = %channel.link.peer.name, reason = %f.reason(), "quick mode refused");
                // Its retransmissions are dropped, not refused again (with a DH each under PFS).
                self.remember_aborted(rx.header.message_id);
                report(ctx, channel, f, offered.unwrap_or(Spi::new(0)));
                false
            }
        }
    }

    fn fail(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: Secured<'_>,
        children: &mut ChildSet,
        index: usize,
        f: ProtocolError,
    ) {
        let qm = self.exchanges.remove(index);
        // The peer may go on with it (it does not know): its later messages are dropped, not
        // taken for a new exchange.
        self.remember_aborted(qm.message_id);
        if let (Role::Initiator, Some(old)) = (qm.role, qm.replaces) {
            children.defer_rekey(old, ctx.now + REKEY_RETRY);
        }
        if children.is_installing(qm.spi_in) {
            // A responder's inbound SA, installed at QM2: QM3 never came right. The initiator may
            // be sending with it already: the Delete sends it back to an older pair.
            child::send_delete(ctx, channel, qm.spi_in);
            children.remove(ctx, &channel.link.peer.name, qm.spi_in, DeleteReason::Abandoned);
        } else {
            ctx.spis.release(qm.spi_in);
        }
        report(ctx, channel, f, qm.spi_in);
        self.pump(ctx, channel, children);
    }

    fn remember_aborted(&mut self, message_id: u32) {
        self.aborted.push_back(message_id);
        while self.aborted.len() > ABORTED_KEPT {
            self.aborted.pop_front();
        }
    }

    fn prune_done(&mut self) {
        while self.exchanges.iter().filter(|q| q.state == QmState::Done).count() > DONE_KEPT {
            if let Some(i) = self.exchanges.iter().position(|q| q.state == QmState::Done) {
                self.exchanges.remove(i);
            }
        }
    }

    /// Finished exchanges are forgotten (the child SAs moved to another IKE SA).
    pub fn forget_finished(&mut self) {
        self.exchanges.retain(QuickMode::is_open);
    }

    /// When a message of ours is to be resent next.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.exchanges.iter().filter_map(|q| q.retransmit.as_ref().map(|r| r.next_at)).min()
    }

    /// Retransmissions of our quick mode messages.
    pub fn handle_timeouts(&mut self, ctx: &mut Ctx<'_>, channel: Secured<'_>, children: &mut ChildSet) {
        let mut i = 0;
        while i < self.exchanges.len() {
            let due = match self.exchanges[i].retransmit.as_mut() {
                Some(r) => r.poll(ctx.now, ctx.config.retransmit_factor),
                None => RetransmitDue::NotYet,
            };
            match due {
                RetransmitDue::Resend(p) => channel.link.retransmit(ctx, p),
                RetransmitDue::NotYet => {}
                RetransmitDue::GiveUp => {
                    let detail = format!(
                        "no answer to quick mode for {} after {} retransmissions",
                        self.exchanges[i].pair, ctx.config.retransmit_tries
                    );
                    let f = ProtocolError::unannounced(FailReason::PeerUnreachable, detail);
                    self.fail(ctx, channel, children, i, f);
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The peer refused a quick mode of ours with an error notify: drops that exchange when the
    /// notify's SPI names it, else every pending one of ours (IKEv1 notifies need not say
    /// which); the queued ones still start.
    pub fn abort_pending(
        &mut self,
        ctx: &mut Ctx<'_>,
        channel: Secured<'_>,
        children: &mut ChildSet,
        spi: Option<Spi>,
        reason: FailReason,
        detail: &str,
    ) {
        let pending = |q: &QuickMode| q.role == Role::Initiator && q.state == QmState::I1;
        let named = spi.filter(|s| self.exchanges.iter().any(|q| pending(q) && q.spi_in == *s));
        let dropped: Vec<Spi> = self
            .exchanges
            .iter()
            .filter(|q| pending(q) && named.is_none_or(|s| q.spi_in == s))
            .map(|q| q.spi_in)
            .collect();
        let aborted: Vec<(u32, Option<Spi>)> =
            self.exchanges.iter().filter(|q| dropped.contains(&q.spi_in)).map(|q| (q.message_id, q.replaces)).collect();
        for (message_id, replaces) in aborted {
            self.remember_aborted(message_id);
            if let Some(old) = replaces {
                children.defer_rekey(old, ctx.now + REKEY_RETRY);
            }
        }
        self.exchanges.retain(|q| !dropped.contains(&q.spi_in));
        for s in &dropped {
            ctx.spis.release(*s);
        }
        tracing::debug!(connection = %channel.link.peer.name, %reason, detail, aborted = dropped.len(), "pending quick modes aborted");
        self.pump(ctx, channel, children);
    }
}

/// Tells the peer (a notify naming `spi`, when the failure sends one) and the driver.
fn report(ctx: &mut Ctx<'_>, channel: Secured<'_>, f: ProtocolError, spi: Spi) {
    let link = channel.link;
    if let Some(n) = f.notify() {
        let refusal = info::notify(ProtocolId::ESP, n, spi.to_be_bytes().to_vec(), Vec::new());
        info::send_secured(ctx, channel, vec![refusal]);
    }
    ctx.events.push_back(Event::NegotiationFailed {
        peer: Some(link.peer.name.clone()),
        remote: link.remote,
        reason: f.reason(),
        detail: f.into_detail(),
        logged: false,
    });
}
