//! One IKE SA: its link to the peer, phase 1 (typestates in `phase1/`) and, once established,
//! its keys with the quick modes, child SAs and liveness they protect. This is the one room
//! that composes the others: it routes each message and timer of the SA to the part that owns
//! it, and turns what they report into the SA's own transitions.

mod informational;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use vpngw_esp::Spi;

use crate::child::{self, ChildRecord};
use crate::config::{ExchangeMode, PeerConfig};
use crate::dh_work::DhResult;
use crate::established::Established;
use crate::event::{DeleteReason, Event, FailReason, IkeSaId, IkeSaInfo, IkeSaState, Role};
use crate::exchange::{Ctx, IKE_PORT, ProtocolError, Received, RetransmitDue, nonzero_cookie};
use crate::info;
use crate::liveness::DpdOutcome;
use crate::message::{Link, MessageCrypto, Secured};
use crate::phase1::{Failed, Phase1, Phase1Done, Phase1Outcome};
use crate::snapshot::{IkeSaSnapshot, SnapshotError};
use crate::timer::Timer;
use crate::wire::ExchangeType;

enum Phase {
    Negotiating(Box<Phase1>),
    Established(Box<Established>),
    /// Gone: the endpoint removes it.
    Dead,
}

pub(crate) struct IkeSa {
    link: Link,
    phase: Phase,
    /// The peer sent INITIAL-CONTACT: the endpoint drops older SAs with it.
    pub initial_contact_received: bool,
    /// The initiator cookie of the peer's exchange dropped for this one when both sides
    /// initiated at once, and how many copies of its first message were dropped (see
    /// `Endpoint::settle_crossed_initiation`).
    pub crossed_dropped: Option<([u8; 8], u32)>,
    /// Our first message yielded to the peer's crossing exchange: unsent until then, and
    /// dropped if that exchange authenticates first. An SA yields once: a spoofed first
    /// message (no one completes it) delays our initiation once, never stops it.
    paused_until: Option<Instant>,
    yielded: bool,
    /// A responder that is not established by then is dropped.
    half_open_deadline: Option<Instant>,
    /// The endpoint has looked at this SA since it was established (adoption of child SAs).
    pub settled: bool,
    /// This SA re-authenticates that one: once established, it takes over.
    pub replaces: Option<IkeSaId>,
    /// For the endpoint: start a re-authentication now / negotiate again after DPD restart.
    reauth_due: bool,
    restart_due: bool,
}

impl IkeSa {
    fn new(link: Link) -> Self {
        Self {
            link,
            phase: Phase::Dead,
            initial_contact_received: false,
            crossed_dropped: None,
            paused_until: None,
            yielded: false,
            half_open_deadline: None,
            settled: false,
            replaces: None,
            reauth_due: false,
            restart_due: false,
        }
    }

    /// Starts phase 1 with `peer`.
    pub fn initiate(id: IkeSaId, peer: Arc<PeerConfig>, ctx: &mut Ctx<'_>, initial_contact: bool) -> Self {
        let local = SocketAddr::new(peer.local_address, IKE_PORT);
        let remote = SocketAddr::new(peer.remote_address, IKE_PORT);
        let mode = peer.mode;
        let mut link = Link::new(id, peer, Role::Initiator, mode, local, remote);
        link.cky_i = nonzero_cookie(ctx.rng);
        let phase1 = Phase1::initiate(ctx, &mut link, initial_contact);
        let mut sa = Self::new(link);
        sa.phase = Phase::Negotiating(Box::new(phase1));
        sa
    }

    /// Answers MM1 or AM1 for `peer`. A refused first message is reported (and the peer told,
    /// with our cookies) here, and no SA comes back.
    pub fn respond(id: IkeSaId, peer: Arc<PeerConfig>, ctx: &mut Ctx<'_>, rx: &Received<'_>) -> Option<Self> {
        let mode =
            if rx.header.exchange == ExchangeType::AGGRESSIVE { ExchangeMode::Aggressive } else { ExchangeMode::Main };
        let mut link = Link::new(id, peer, Role::Responder, mode, rx.local, rx.remote);
        link.cky_i = rx.header.initiator_cookie;
        link.cky_r = nonzero_cookie(ctx.rng);
        let half_open_deadline = Some(ctx.now + ctx.config.half_open_timeout);
        match Phase1::respond(ctx, &mut link, rx) {
            Ok(phase1) => {
                let mut sa = Self::new(link);
                sa.half_open_deadline = half_open_deadline;
                sa.phase = Phase::Negotiating(Box::new(phase1));
                Some(sa)
            }
            Err(Failed { error, crypto }) => {
                info::announce_failure(ctx, &link, crypto.as_deref(), error);
                None
            }
        }
    }

    pub fn peer(&self) -> &Arc<PeerConfig> {
        &self.link.peer
    }

    pub fn role(&self) -> Role {
        self.link.role
    }

    pub fn cky_i(&self) -> [u8; 8] {
        self.link.cky_i
    }

    pub fn cky_r(&self) -> [u8; 8] {
        self.link.cky_r
    }

    pub fn remote(&self) -> SocketAddr {
        self.link.remote
    }

    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established(_))
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead)
    }

    pub fn is_superseded(&self) -> bool {
        matches!(&self.phase, Phase::Established(est) if est.superseded)
    }

    /// Our phase 1 whose first message has no answer yet.
    pub fn awaits_first_reply(&self) -> bool {
        self.link.role == Role::Initiator && self.link.cky_r == [0; 8] && matches!(self.phase, Phase::Negotiating(_))
    }

    /// Whether the peer's next phase 1 message makes us compute Diffie-Hellman.
    pub fn awaits_ke(&self) -> bool {
        matches!(&self.phase, Phase::Negotiating(p1) if p1.awaits_ke())
    }

    /// Whether this SA has yielded to a crossing exchange once already.
    pub fn has_yielded(&self) -> bool {
        self.yielded
    }

    /// Yields to the peer's crossing exchange: our first message waits until `until`, then
    /// goes out again with all its retransmissions left.
    pub fn pause(&mut self, ctx: &Ctx<'_>, until: Instant) {
        self.paused_until = Some(until);
        self.yielded = true;
        if let Some(r) = self.link.retransmit.as_mut() {
            r.restart_at(until, ctx.config);
        }
    }

    /// Waiting, unsent, for the peer's crossing exchange (see [`IkeSa::pause`]).
    pub fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| now < t)
    }

    /// The keys phase 1 has derived so far, or the established SA's.
    fn crypto(&self) -> Option<&MessageCrypto> {
        match &self.phase {
            Phase::Negotiating(p1) => p1.crypto(),
            Phase::Established(est) => Some(&est.crypto),
            Phase::Dead => None,
        }
    }

    /// The established SA and its way to the peer, lent together.
    fn established(&mut self) -> Option<(&mut Established, &Link)> {
        match &mut self.phase {
            Phase::Established(est) => Some((&mut **est, &self.link)),
            _ => None,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Child SAs, for the endpoint

    /// Whether a child SA of this IKE SA has this SPI (inbound or outbound).
    pub fn has_child(&self, spi: Spi) -> bool {
        matches!(&self.phase, Phase::Established(est) if est.children.find(spi).is_some())
    }

    pub fn has_inbound_child(&self, spi_in: Spi) -> bool {
        matches!(&self.phase, Phase::Established(est) if est.children.has_inbound(spi_in))
    }

    /// The inbound SPIs of the child SAs that carry traffic.
    pub fn active_children(&self) -> Vec<Spi> {
        match &self.phase {
            Phase::Established(est) => est.children.active(),
            _ => Vec::new(),
        }
    }

    pub fn child_spis(&self) -> Vec<Spi> {
        match &self.phase {
            Phase::Established(est) => est.children.inbound_spis(),
            _ => Vec::new(),
        }
    }

    /// Our inbound SPIs: the child SAs' and those of the quick modes under way.
    pub fn spis_in(&self) -> Vec<Spi> {
        match &self.phase {
            Phase::Established(est) => {
                let mut spis = est.children.inbound_spis();
                spis.extend(est.quick_modes.spis_in().filter(|s| est.children.find(*s).is_none()));
                spis
            }
            _ => Vec::new(),
        }
    }

    /// After an import: exchanges carried over go on, queued quick modes start.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((est, link)) = self.established() {
            let channel = Secured { link, crypto: &est.crypto };
            est.quick_modes.resume(ctx, channel, &mut est.children);
        }
    }

    /// A newer IKE SA with the peer takes over: hands over the child SAs, keeps only the
    /// quick modes under way, and stops DPD and re-authentication.
    pub fn supersede(&mut self) -> Vec<ChildRecord> {
        let Some((est, _)) = self.established() else { return Vec::new() };
        est.superseded = true;
        est.quick_modes.forget_finished();
        est.children.take_all()
    }

    pub fn adopt_children(&mut self, children: Vec<ChildRecord>) {
        if let Some((est, _)) = self.established() {
            est.children.adopt(children);
        }
    }

    /// Ends this IKE SA by `deadline` at the latest.
    pub fn expire_by(&mut self, deadline: Instant) {
        if let Some((est, _)) = self.established() {
            est.expires_at = est.expires_at.min(deadline);
        }
    }

    /// Negotiates the configured pairs that have no child SA yet.
    pub fn start_quick_modes(&mut self, ctx: &mut Ctx<'_>) {
        if let Some((est, link)) = self.established() {
            let channel = Secured { link, crypto: &est.crypto };
            est.quick_modes.start_all(ctx, channel, &mut est.children);
        }
    }

    /// Starts replacing the child SA with this SPI. Returns whether a quick mode started.
    pub fn rekey_child(&mut self, ctx: &mut Ctx<'_>, spi: Spi) -> bool {
        let Some((est, link)) = self.established() else { return false };
        let channel = Secured { link, crypto: &est.crypto };
        est.quick_modes.rekey(ctx, channel, &mut est.children, spi)
    }

    /// Deletes the child SA with this SPI (inbound or outbound); the peer is told.
    pub fn expire_child(&mut self, ctx: &mut Ctx<'_>, spi: Spi) {
        let Some((est, link)) = self.established() else { return };
        let Some(spi_in) = est.children.find(spi).map(|c| c.spi_in) else { return };
        child::send_delete(ctx, Secured { link, crypto: &est.crypto }, spi_in);
        est.children.remove(ctx, &link.peer.name, spi_in, DeleteReason::Expired);
    }

    /// The peer showed signs of life (ESP on a child SA).
    pub fn heard(&mut self, now: Instant) {
        if let Some((est, _)) = self.established() {
            est.liveness.heard(now);
        }
    }

    /// Whether the SA is due for re-authentication (asked once).
    pub fn take_reauth_due(&mut self) -> bool {
        std::mem::take(&mut self.reauth_due)
    }

    /// Whether DPD found the peer dead with action restart (asked once).
    pub fn take_restart_due(&mut self) -> bool {
        std::mem::take(&mut self.restart_due)
    }

    // ---------------------------------------------------------------------------------------
    // Phase 1

    /// Reports a failure, tells the peer when the failure says so, and ends this IKE SA if
    /// phase 1 is not complete.
    fn fail(&mut self, ctx: &mut Ctx<'_>, failure: ProtocolError) {
        info::announce_failure(ctx, &self.link, self.crypto(), failure);
        if !self.is_established() {
            self.die();
        }
    }

    fn die(&mut self) {
        self.phase = Phase::Dead;
        self.link.retransmit = None;
    }

    /// A phase 1 message (main or aggressive mode, message ID 0) for this SA.
    pub fn handle_phase1(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) {
        if self.link.answer_duplicate(ctx, rx) {
            return;
        }
        if self.is_paused(ctx.now) {
            // An answer to our first message while we let the peer's exchange go first: the
            // peer answers it again when we resend it, if theirs does not authenticate.
            tracing::debug!(connection = %self.link.peer.name, "answer to our paused first message: ignored");
            return;
        }
        if self.link.repeats_last_taken(rx) {
            tracing::debug!(connection = %self.link.peer.name, "copy of a phase 1 message already taken: ignored");
            return;
        }
        if matches!(&self.phase, Phase::Negotiating(p1) if p1.is_computing()) {
            // Only a peer that runs ahead of our answer gets here; it retransmits.
            tracing::debug!(connection = %self.link.peer.name, "phase 1 message while computing Diffie-Hellman: ignored");
            return;
        }
        let expected = match self.link.mode {
            ExchangeMode::Main => ExchangeType::IDENTITY_PROTECTION,
            ExchangeMode::Aggressive => ExchangeType::AGGRESSIVE,
        };
        if rx.header.exchange != expected {
            let detail = format!("mode: peer uses {}, configured {}", rx.header.exchange, self.link.mode);
            return self.fail(ctx, ProtocolError::WrongExchange(detail));
        }
        let phase1 = match std::mem::replace(&mut self.phase, Phase::Dead) {
            Phase::Negotiating(phase1) => phase1,
            other => {
                self.phase = other;
                tracing::debug!(connection = %self.link.peer.name, "phase 1 message after phase 1: ignored");
                return;
            }
        };
        // Quick modes start from the endpoint once it has moved older SAs' child SAs over.
        let outcome = phase1.handle(ctx, &mut self.link, rx);
        if outcome.is_ok() {
            self.link.take(rx);
        }
        self.settle_phase1(ctx, outcome);
    }

    /// The Diffie-Hellman result phase 1 waits for (`dh_work.rs`).
    pub fn on_dh_done(&mut self, ctx: &mut Ctx<'_>, result: DhResult) {
        let phase1 = match std::mem::replace(&mut self.phase, Phase::Dead) {
            Phase::Negotiating(phase1) => phase1,
            other => {
                self.phase = other;
                return;
            }
        };
        let outcome = phase1.on_dh_done(ctx, &mut self.link, result);
        self.settle_phase1(ctx, outcome);
    }

    /// Where a phase 1 step leaves the SA: waiting, established, or failed and gone.
    fn settle_phase1(&mut self, ctx: &mut Ctx<'_>, outcome: Result<Phase1Outcome, Failed>) {
        match outcome {
            Ok(Phase1Outcome::Waiting(next)) => self.phase = Phase::Negotiating(next),
            Ok(Phase1Outcome::Done(done)) => self.establish(ctx, *done),
            Err(Failed { error, crypto }) => {
                info::announce_failure(ctx, &self.link, crypto.as_deref(), error);
                self.die();
            }
        }
    }

    fn establish(&mut self, ctx: &mut Ctx<'_>, done: Phase1Done) {
        if let Some(contact) = done.initial_contact {
            self.initial_contact_received = contact;
        }
        self.link.retransmit = None;
        self.phase = Phase::Established(Box::new(Established::start(ctx, &self.link, done)));
    }

    /// The established SA as plain data.
    pub fn export(&self, now: Instant) -> Result<IkeSaSnapshot, SnapshotError> {
        match &self.phase {
            Phase::Established(est) => Ok(est.export(&self.link, now)),
            _ => Err(SnapshotError::NotEstablished(self.link.id)),
        }
    }

    /// An established SA from a snapshot, as handle `id` of connection `peer`.
    pub fn import(
        id: IkeSaId,
        peer: Arc<PeerConfig>,
        snapshot: IkeSaSnapshot,
        now: Instant,
    ) -> Result<Self, SnapshotError> {
        let link = Established::restore_link(id, peer, &snapshot);
        let est = Established::import(snapshot, now)?;
        let mut sa = Self::new(link);
        sa.phase = Phase::Established(Box::new(est));
        // Not a new SA: nothing for the endpoint to take over or start.
        sa.settled = true;
        Ok(sa)
    }

    // ---------------------------------------------------------------------------------------
    // Quick mode

    /// A quick mode message.
    pub fn handle_quick_mode(&mut self, ctx: &mut Ctx<'_>, rx: &Received<'_>) {
        let encrypted = rx.header.is_encrypted();
        let Some((est, link)) = self.established().filter(|_| encrypted) else {
            tracing::debug!(connection = %self.link.peer.name, "quick mode message before phase 1 or unencrypted: dropped");
            return;
        };
        let channel = Secured { link, crypto: &est.crypto };
        if est.quick_modes.handle(ctx, channel, &mut est.children, rx) {
            est.liveness.heard(ctx.now);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Timers

    /// When `timer` is due next, if it is armed.
    fn deadline(&self, timer: Timer) -> Option<Instant> {
        let est = match &self.phase {
            Phase::Established(est) => Some(&**est),
            _ => None,
        };
        match timer {
            Timer::Retransmit => self.link.retransmit.as_ref().map(|r| r.next_at),
            Timer::HalfOpen => self.half_open_deadline.filter(|_| matches!(self.phase, Phase::Negotiating(_))),
            _ => est?.deadline(timer, &self.link),
        }
    }

    /// The earliest deadline of all timers.
    pub fn next_timeout(&self) -> Option<Instant> {
        Timer::VALUES.into_iter().filter_map(|t| self.deadline(t)).min()
    }

    /// Fires the timers that are due, in [`Timer::VALUES`] order.
    pub fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        for timer in Timer::VALUES {
            if self.deadline(timer).is_some_and(|t| t <= ctx.now) {
                self.on_timer(timer, ctx);
            }
        }
    }

    fn on_timer(&mut self, timer: Timer, ctx: &mut Ctx<'_>) {
        match timer {
            Timer::Retransmit => self.on_retransmit_timer(ctx),
            Timer::HalfOpen => {
                tracing::debug!(connection = %self.link.peer.name, "half-open IKE SA timed out");
                self.phase = Phase::Dead;
            }
            Timer::Expiry => {
                if self.is_established() {
                    self.delete(ctx, DeleteReason::Expired);
                }
            }
            Timer::QuickMode | Timer::ChildSa | Timer::Reauth | Timer::Dpd => self.on_established_timer(timer, ctx),
        }
    }

    fn on_established_timer(&mut self, timer: Timer, ctx: &mut Ctx<'_>) {
        let Phase::Established(est) = &mut self.phase else { return };
        let est = &mut **est;
        let link = &self.link;
        let channel = Secured { link, crypto: &est.crypto };
        match timer {
            Timer::QuickMode => est.quick_modes.handle_timeouts(ctx, channel, &mut est.children),
            Timer::ChildSa => {
                for spi in est.children.handle_timeouts(ctx, channel) {
                    est.quick_modes.rekey(ctx, channel, &mut est.children, spi);
                }
            }
            Timer::Reauth => {
                if est.liveness.on_reauth_timer(ctx.now, &link.peer.name) {
                    self.reauth_due = true;
                }
            }
            Timer::Dpd => {
                let policy = est.dpd_policy(link);
                if let DpdOutcome::Dead { restart } = est.liveness.on_dpd_timer(ctx, channel, policy) {
                    self.restart_due = restart;
                    self.delete(ctx, DeleteReason::DeadPeer);
                }
            }
            Timer::Retransmit | Timer::HalfOpen | Timer::Expiry => {}
        }
    }

    fn on_retransmit_timer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(r) = self.link.retransmit.as_mut() else { return };
        match r.poll(ctx.now, ctx.config.retransmit_factor) {
            RetransmitDue::Resend(p) => self.link.retransmit(ctx, p),
            RetransmitDue::NotYet => {}
            RetransmitDue::GiveUp => {
                self.link.retransmit = None;
                let failure = match &self.phase {
                    Phase::Negotiating(phase1) => phase1.no_answer(&self.link, ctx.config.retransmit_tries),
                    _ => ProtocolError::unannounced(
                        FailReason::PeerUnreachable,
                        format!("peer {} stopped answering during phase 1", self.link.remote),
                    ),
                };
                self.fail(ctx, failure);
            }
        }
    }

    /// Ends this IKE SA and its children without telling the peer.
    pub fn drop_all(&mut self, ctx: &mut Ctx<'_>, reason: DeleteReason) {
        if let Some((est, link)) = self.established() {
            for spi in est.children.inbound_spis() {
                est.children.remove(ctx, &link.peer.name, spi, DeleteReason::IkeSaGone);
            }
            ctx.events.push_back(Event::IkeSaDeleted { peer: link.peer.name.clone(), ike_sa: link.id, reason });
        }
        self.die();
    }

    /// Deletes this IKE SA: Delete for each child SA, then for the ISAKMP SA (RFC 2408 s.3.15).
    pub fn delete(&mut self, ctx: &mut Ctx<'_>, reason: DeleteReason) {
        if let Some((est, link)) = self.established() {
            let channel = Secured { link, crypto: &est.crypto };
            for spi_in in est.children.inbound_spis() {
                child::send_delete(ctx, channel, spi_in);
            }
            info::send_secured(ctx, channel, vec![info::delete_isakmp(link.cookies())]);
        }
        self.drop_all(ctx, reason);
    }

    pub fn info(&self) -> IkeSaInfo {
        let (state, choice, est) = match &self.phase {
            Phase::Negotiating(p1) => (p1.state(), p1.choice(), None),
            Phase::Established(est) => (IkeSaState::Established, Some(&est.choice), Some(&**est)),
            Phase::Dead => (IkeSaState::Deleted, None, None),
        };
        IkeSaInfo {
            id: self.link.id,
            peer: self.link.peer.name.clone(),
            role: self.link.role,
            state,
            local: self.link.local,
            remote: self.link.remote,
            initiator_cookie: self.link.cky_i,
            responder_cookie: self.link.cky_r,
            encryption: choice.map(|c| c.encryption),
            hash: choice.map(|c| c.hash),
            dh_group: choice.map(|c| c.dh_group),
            nat_detected: self.link.nat.detected,
            established_at: est.map(|e| e.established_at),
            expires_at: est.map(|e| e.expires_at),
            children: est.map(|e| e.children.infos()).unwrap_or_default(),
        }
    }
}
