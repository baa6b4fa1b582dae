//! The engine's front door: one `Endpoint` per gateway. It demultiplexes datagrams to IKE SAs by
//! cookie, creates responder SAs for new peers, drives timers, and queues what the driver must
//! send and report. quinn-proto's shape: `handle`, `handle_timeout`, `poll_transmit`,
//! `poll_timeout`, `poll_event`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use vpngw_crypto::FastRng;
use vpngw_esp::Spi;

use crate::admission::{Admission, HalfOpen};
use crate::config::{EngineConfig, ExchangeMode, Identity, PeerConfig};
use crate::dh_work::{DhDone, DhWork};
use crate::event::{DeleteReason, Event, FailReason, IkeSaId, IkeSaInfo};
use crate::exchange::{Ctx, Received, Transmit};
use crate::ikesa::IkeSa;
use crate::sa_store::IkeSaStore;
use crate::snapshot::{IkeSaSnapshot, SnapshotError};
use crate::spi::SpiPool;
use crate::wire::{ExchangeType, HEADER_LEN, IsakmpHeader, Payload, WireError, parse_payloads};

/// How long an IKE SA whose child SAs moved to a newer one (the peer re-authenticated) is kept
/// for the peer to delete it.
const SUPERSEDED_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IkeError {
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("a connection named {0:?} exists already")]
    DuplicateConnection(String),
}

/// Counters of datagrams the engine did not act on, by reason label.
#[derive(Debug, Default, Clone)]
pub struct DropCounters {
    pub by_reason: BTreeMap<&'static str, u64>,
}

impl DropCounters {
    fn count(&mut self, reason: &'static str, remote: SocketAddr) {
        tracing::debug!(%remote, reason, "IKE datagram dropped");
        *self.by_reason.entry(reason).or_default() += 1;
    }
}

/// How many label values [`MessageCounters`] has.
pub const EXCHANGE_KINDS: usize = 5;

/// IKE messages by exchange type: received (every datagram whose header parsed, acted on or
/// not), sent, and of those sent the retransmissions (a request of ours sent again for want of
/// an answer, or our answer sent again to a repeated request). A bounded set of labels: any
/// exchange type other than the four vpngw speaks counts as `other`.
#[derive(Debug, Default, Clone)]
pub struct MessageCounters {
    pub received: [u64; EXCHANGE_KINDS],
    pub sent: [u64; EXCHANGE_KINDS],
    pub retransmitted: [u64; EXCHANGE_KINDS],
}

impl MessageCounters {
    /// The label values, in the arrays' order.
    pub const EXCHANGES: [&'static str; EXCHANGE_KINDS] = ["main", "aggressive", "quick", "informational", "other"];

    fn index(exchange: ExchangeType) -> usize {
        match exchange {
            ExchangeType::IDENTITY_PROTECTION => 0,
            ExchangeType::AGGRESSIVE => 1,
            ExchangeType::QUICK_MODE => 2,
            ExchangeType::INFORMATIONAL => 3,
            _ => 4,
        }
    }

    /// The exchange of an encoded message: its header's exchange type (byte 18, after the two
    /// cookies, the next payload and the version).
    fn of_packet(packet: &[u8]) -> usize {
        packet.get(18).map_or(4, |b| Self::index(ExchangeType(*b)))
    }

    pub(crate) fn retransmission(&mut self, packet: &[u8]) {
        self.retransmitted[Self::of_packet(packet)] += 1;
    }
}

pub struct Endpoint {
    config: EngineConfig,
    peers: Vec<Arc<PeerConfig>>,
    /// The IKE SAs, their deadlines indexed (`sa_store.rs`).
    sas: IkeSaStore,
    by_cookie: HashMap<[u8; 8], IkeSaId>,
    next_id: u64,
    rng: FastRng,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    spis: SpiPool,
    drops: DropCounters,
    messages: MessageCounters,
    admission: Admission,
    /// IKE SAs whose state may have changed since [`Endpoint::take_changed`] last ran (what a
    /// hot-backup partner must be sent again). Over-approximated: every SA that handled a
    /// message, fired a timer or was acted on.
    changed: BTreeSet<IkeSaId>,
    /// Diffie-Hellman work for the driver ([`Endpoint::poll_dh_work`]); at most one piece per
    /// negotiating IKE SA, so bounded as they are.
    dh_work: VecDeque<DhWork>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("peers", &self.peers.len()).field("ike_sas", &self.sas.len()).finish()
    }
}

macro_rules! ctx {
    ($self:ident, $now:expr) => {
        Ctx {
            now: $now,
            rng: &mut $self.rng,
            config: &$self.config,
            out: &mut $self.out,
            events: &mut $self.events,
            spis: &mut $self.spis,
            messages: &mut $self.messages,
            dh_work: &mut $self.dh_work,
        }
    };
}

impl Endpoint {
    pub fn new(config: EngineConfig, rng: FastRng) -> Self {
        Self {
            config,
            peers: Vec::new(),
            sas: IkeSaStore::default(),
            by_cookie: HashMap::new(),
            next_id: 1,
            rng,
            out: VecDeque::new(),
            events: VecDeque::new(),
            spis: SpiPool::default(),
            drops: DropCounters::default(),
            messages: MessageCounters::default(),
            admission: Admission::default(),
            changed: BTreeSet::new(),
            dh_work: VecDeque::new(),
        }
    }

    pub fn add_peer(&mut self, peer: PeerConfig) -> Result<(), IkeError> {
        if self.peers.iter().any(|p| p.name == peer.name) {
            return Err(IkeError::DuplicateConnection(peer.name));
        }
        self.peers.push(Arc::new(peer));
        Ok(())
    }

    /// Removes a connection, deleting its SAs (the peer is told).
    pub fn remove_peer(&mut self, now: Instant, name: &str) -> Result<(), IkeError> {
        self.terminate(now, name)?;
        self.peers.retain(|p| p.name != name);
        self.admission.forget_peer(name);
        Ok(())
    }

    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name).map(|p| &**p)
    }

    pub fn peer_names(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.name.clone()).collect()
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn messages(&self) -> &MessageCounters {
        &self.messages
    }

    /// Responder IKE SAs not yet authenticated (bounded: `EngineConfig::half_open_total`).
    pub fn half_open_ike_sas(&self) -> usize {
        self.admission.half_open_count()
    }

    fn new_id(&mut self) -> IkeSaId {
        let id = IkeSaId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Brings a connection up: phase 1 if there is no IKE SA, else the quick modes it lacks.
    pub fn initiate(&mut self, now: Instant, name: &str) -> Result<(), IkeError> {
        let peer = self
            .peers
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| IkeError::UnknownConnection(name.into()))?;
        let mut ctx = ctx!(self, now);
        if let Some((id, sa)) = self.sas.find_mut_where(true, |s| carries(s, name)) {
            sa.start_quick_modes(&mut ctx);
            self.changed.insert(id);
            self.sas.reschedule();
            return Ok(());
        }
        if self.sas.values().any(|s| s.peer().name == name && !s.is_dead()) {
            return Ok(()); // phase 1 under way
        }
        let id = IkeSaId(self.next_id);
        self.next_id += 1;
        let mut ctx = ctx!(self, now);
        // No IKE SA with this peer: first contact, so the peer may drop stale state of ours.
        let sa = IkeSa::initiate(id, peer, &mut ctx, true);
        self.by_cookie.insert(sa.cky_i(), id);
        self.sas.insert(id, sa);
        self.changed.insert(id);
        self.sas.reschedule();
        Ok(())
    }

    /// Takes a connection down: Deletes for its child SAs and IKE SA.
    pub fn terminate(&mut self, now: Instant, name: &str) -> Result<(), IkeError> {
        if !self.peers.iter().any(|p| p.name == name) {
            return Err(IkeError::UnknownConnection(name.into()));
        }
        let mut ctx = ctx!(self, now);
        self.sas.for_each_mut_where(|s| s.peer().name == name, |_, sa| sa.delete(&mut ctx, DeleteReason::Local));
        self.reap();
        self.sas.reschedule();
        Ok(())
    }

    /// ESP arrived on the child SA with this inbound SPI: the peer is alive (dead peer
    /// detection probes only after silence).
    pub fn traffic_received(&mut self, now: Instant, spi_in: Spi) {
        if let Some((_, sa)) = self.sas.find_mut_where(false, |s| s.has_inbound_child(spi_in)) {
            sa.heard(now);
        }
        self.sas.reschedule();
    }

    /// Starts replacing the child SA with this SPI (inbound or outbound) now: its volume or
    /// sequence-number soft limit was reached. Returns false when there is no such SA or a
    /// replacement is already under way.
    pub fn rekey_child(&mut self, now: Instant, spi: Spi) -> bool {
        let mut ctx = ctx!(self, now);
        let Some((id, sa)) = self.sas.find_mut_where(false, |s| s.has_child(spi)) else {
            return false;
        };
        self.changed.insert(id);
        let started = sa.rekey_child(&mut ctx, spi);
        self.sas.reschedule();
        started
    }

    /// Replaces every child SA of a connection now (an operator's request, e.g. after a
    /// suspected key compromise). Returns how many quick modes started.
    pub fn rekey_connection(&mut self, now: Instant, name: &str) -> Result<usize, IkeError> {
        if !self.peers.iter().any(|p| p.name == name) {
            return Err(IkeError::UnknownConnection(name.into()));
        }
        let mut ctx = ctx!(self, now);
        let mut started = 0;
        let changed = &mut self.changed;
        self.sas.for_each_mut_where(
            |s| s.peer().name == name && s.is_established(),
            |id, sa| {
                changed.insert(id);
                for spi in sa.active_children() {
                    started += usize::from(sa.rekey_child(&mut ctx, spi));
                }
            },
        );
        self.sas.reschedule();
        Ok(started)
    }

    /// Re-authenticates a connection now (an operator's request, as `swanctl --rekey --reauth`):
    /// a new main mode with the peer, without INITIAL-CONTACT; once it is established it takes
    /// over the child SAs (their SPIs and keys stay) and the old ISAKMP SA is deleted, as when
    /// the lifetime runs out. Returns false when there is nothing to re-authenticate (no
    /// established IKE SA) or a phase 1 with the peer is already under way.
    pub fn reauthenticate(&mut self, now: Instant, name: &str) -> Result<bool, IkeError> {
        let peer = self
            .peers
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| IkeError::UnknownConnection(name.into()))?;
        if self.sas.values().any(|s| s.peer().name == name && !s.is_established() && !s.is_dead()) {
            return Ok(false);
        }
        let Some(old) = self.sas.iter().rev().find(|(_, s)| carries(s, name)).map(|(id, _)| *id) else {
            return Ok(false);
        };
        self.start_reauthentication(now, old, peer);
        self.sas.reschedule();
        Ok(true)
    }

    /// A new main mode that will replace `old` (no INITIAL-CONTACT: the peer must keep our
    /// child SAs for the new IKE SA).
    fn start_reauthentication(&mut self, now: Instant, old: IkeSaId, peer: Arc<PeerConfig>) {
        let id = self.new_id();
        let mut ctx = ctx!(self, now);
        let mut sa = IkeSa::initiate(id, peer, &mut ctx, false);
        sa.replaces = Some(old);
        self.by_cookie.insert(sa.cky_i(), id);
        self.sas.insert(id, sa);
        self.changed.insert(id);
    }

    /// Deletes the child SA with this SPI now (its hard volume limit was reached); the peer is
    /// told.
    pub fn expire_child(&mut self, now: Instant, spi: Spi) {
        let mut ctx = ctx!(self, now);
        let changed = &mut self.changed;
        self.sas.for_each_mut_where(
            |s| s.has_child(spi),
            |id, sa| {
                sa.expire_child(&mut ctx, spi);
                changed.insert(id);
            },
        );
        self.sas.reschedule();
    }

    /// Feeds one received datagram (without a non-ESP marker).
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.handle_datagram(now, local, remote, data);
        self.sas.reschedule();
    }

    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let header = match IsakmpHeader::parse(data) {
            Ok(h) => h,
            Err(e) => {
                self.drops.count(e.label(), remote);
                if let WireError::Version(v) = e
                    && let Some(peer) = self.peers.iter().find(|p| p.remote_address == remote.ip())
                {
                    self.events.push_back(Event::NegotiationFailed {
                        peer: Some(peer.name.clone()),
                        remote,
                        reason: FailReason::VersionMismatch,
                        detail: format!("version: peer speaks IKEv{}, configured v1", v >> 4),
                        logged: false,
                    });
                }
                return;
            }
        };
        self.messages.received[MessageCounters::index(header.exchange)] += 1;
        let rx = Received { header, data, local, remote };
        let phase1 = matches!(rx.header.exchange, ExchangeType::IDENTITY_PROTECTION | ExchangeType::AGGRESSIVE);
        // Exact cookies: a zero responder cookie names an SA only in a retransmitted first
        // message (anything else with it is someone guessing the initiator cookie); an SA that
        // has no responder cookie yet (ours, waiting for the answer) learns it from the answer.
        let first_message = phase1 && rx.header.message_id == 0 && rx.header.responder_cookie == [0; 8];
        let existing = self.by_cookie.get(&rx.header.initiator_cookie).copied().filter(|id| {
            self.sas.get(id).is_some_and(|sa| {
                sa.remote().ip() == remote.ip()
                    && (sa.cky_r() == [0; 8] || sa.cky_r() == rx.header.responder_cookie || first_message)
            })
        });
        match existing {
            Some(id) => {
                let mut ctx = ctx!(self, now);
                let Some(sa) = self.sas.get_mut(&id) else { return };
                if !first_message && sa.awaits_ke() && !self.admission.dh(ctx.config, &sa.peer().name, now) {
                    self.drops.count("dh_rate_limit", remote);
                    return;
                }
                match rx.header.exchange {
                    _ if phase1 && rx.header.message_id == 0 => sa.handle_phase1(&mut ctx, &rx),
                    ExchangeType::QUICK_MODE => sa.handle_quick_mode(&mut ctx, &rx),
                    ExchangeType::INFORMATIONAL => {
                        if let Some(reason) = sa.handle_informational(&mut ctx, &rx) {
                            self.drops.count(reason, remote);
                        }
                    }
                    _ => self.drops.count("unsupported_exchange", remote),
                }
                self.after(now, id);
            }
            None if phase1 && rx.header.responder_cookie == [0; 8] && rx.header.message_id == 0 => {
                self.respond(now, &rx)
            }
            None => self.drops.count("unknown_sa", remote),
        }
    }

    /// A first message from a peer: find its connection, answer as responder.
    fn respond(&mut self, now: Instant, rx: &Received<'_>) {
        let mode =
            if rx.header.exchange == ExchangeType::AGGRESSIVE { ExchangeMode::Aggressive } else { ExchangeMode::Main };
        let candidates: Vec<Arc<PeerConfig>> = self
            .peers
            .iter()
            .filter(|p| {
                p.remote_address == rx.remote.ip()
                    && (p.local_address == rx.local.ip() || p.local_address.is_unspecified())
            })
            .cloned()
            .collect();
        let fail = |this: &mut Self, peer: Option<String>, reason: FailReason, detail: String| {
            this.events.push_back(Event::NegotiationFailed { peer, remote: rx.remote, reason, detail, logged: false });
        };
        if candidates.is_empty() {
            self.drops.count("unknown_peer", rx.remote);
            return fail(
                self,
                None,
                FailReason::UnknownPeer,
                format!("no connection has remote_address {}", rx.remote.ip()),
            );
        }
        let same_mode: Vec<&Arc<PeerConfig>> = candidates.iter().filter(|p| p.mode == mode).collect();
        let Some(first) = same_mode.first() else {
            let p = &candidates[0];
            return fail(
                self,
                Some(p.name.clone()),
                FailReason::ModeMismatch,
                format!("mode: peer uses {mode} mode, configured {}", p.mode),
            );
        };
        let peer = if mode == ExchangeMode::Aggressive {
            // Aggressive mode names the initiator in its first message: pick by ID.
            let id = parse_payloads(rx.header.next_payload, &rx.data[HEADER_LEN..rx.header.length as usize], false)
                .ok()
                .and_then(|c| {
                    c.iter().find_map(|p| if let Payload::Id(i) = p { Identity::from_payload(i) } else { None })
                });
            match id.and_then(|id| same_mode.iter().find(|p| p.remote_id.matches(&id)).map(|p| (*p).clone())) {
                Some(p) => p,
                None => (*first).clone(), // reported as an ID mismatch by the SA
            }
        } else {
            (*first).clone()
        };
        if !self.settle_crossed_initiation(now, &peer, rx) {
            return;
        }
        if !self.admit_half_open(now, &peer.name, rx.remote) {
            return;
        }
        // Aggressive mode computes Diffie-Hellman for the first message.
        if mode == ExchangeMode::Aggressive && !self.admission.dh(&self.config, &peer.name, now) {
            self.drops.count("dh_rate_limit", rx.remote);
            return;
        }
        let id = self.new_id();
        let mut ctx = ctx!(self, now);
        match IkeSa::respond(id, peer, &mut ctx, rx) {
            Some(sa) => {
                self.admission.opened(id, &sa.peer().name);
                self.by_cookie.insert(sa.cky_i(), id);
                self.sas.insert(id, sa);
            }
            // Refused (and reported) by the SA: unreadable, or nothing we accept.
            None => self.drops.count("first_message_refused", rx.remote),
        }
    }

    /// Room for one more half-open responder SA of `peer` ([`crate::admission`]): made by
    /// evicting its oldest when the peer is at its cap; none when the total is reached.
    fn admit_half_open(&mut self, now: Instant, peer: &str, remote: SocketAddr) -> bool {
        match self.admission.half_open(&self.config, peer) {
            HalfOpen::Admit => true,
            HalfOpen::Full => {
                self.drops.count("half_open_limit", remote);
                false
            }
            HalfOpen::Evict(oldest) => {
                let mut ctx = ctx!(self, now);
                if let Some(sa) = self.sas.get_mut(&oldest) {
                    sa.drop_all(&mut ctx, DeleteReason::Local);
                }
                self.admission.closed(oldest);
                self.drops.count("half_open_evicted", remote);
                self.reap();
                true
            }
        }
    }

    /// Both sides initiated phase 1 at once (both were told to start, or both restarted after
    /// dead peer detection): the peer's first message arrives while ours to it is unanswered.
    /// Left alone, each side would build two IKE SAs and each side's INITIAL-CONTACT would clear
    /// the other's. Both sides settle it the same way, from what both know: the exchange with
    /// the higher initiator cookie goes on (cookies are random, and unlike addresses they read
    /// the same on both sides of a NAT). Returns whether to answer the peer's message: no when
    /// ours goes on (the peer, by the same rule, answers ours instead); yes when theirs does.
    ///
    /// Theirs going on pauses ours instead of dropping it, because the peer's first message is
    /// not authenticated: anyone can send one with cookie ff..ff from the peer's address. Ours
    /// waits (`crossed_pause`) for theirs to authenticate, is dropped if it does, and goes on
    /// if it does not; it yields only once, so a spoofer delays our initiation once and never
    /// stops it. Once the peer has answered ours, it hears us and yielded to us: its first
    /// message is an old one, and is dropped.
    ///
    /// Ours goes on only while the peer can hear it: if the peer's first message comes a third
    /// time and ours is still unanswered, ours is not reaching it (a NAT or firewall in front of
    /// the peer that lets only its own initiations through), and theirs goes on after all. Not
    /// at the second copy: the peer retransmits when we do, and a lost first message of ours
    /// would then make both sides drop their own exchange at once.
    fn settle_crossed_initiation(&mut self, now: Instant, peer: &Arc<PeerConfig>, rx: &Received<'_>) -> bool {
        let theirs = rx.header.initiator_cookie;
        let Some((id, ours, waiting, yielded, dropped)) = self
            .sas
            .iter()
            .find(|(_, s)| {
                s.peer().name == peer.name
                    && s.role() == crate::event::Role::Initiator
                    && !s.is_established()
                    && !s.is_dead()
            })
            .map(|(id, s)| (*id, s.cky_i(), s.awaits_first_reply(), s.has_yielded(), s.crossed_dropped))
        else {
            return true;
        };
        let copies = dropped.filter(|(cookie, _)| *cookie == theirs).map_or(0, |(_, n)| n);
        let unheard = waiting && copies >= 2;
        if !waiting || (ours > theirs && !unheard) {
            if let Some(sa) = self.sas.get_mut(&id) {
                sa.crossed_dropped = Some((theirs, copies + 1));
            }
            self.drops.count("crossed_initiation", rx.remote);
            return false;
        }
        if yielded {
            // Ours paused once already and the exchange it yielded to did not authenticate:
            // ours goes on, and theirs is answered too (whichever authenticates first wins).
            return true;
        }
        let why = if unheard { "the peer does not hear ours" } else { "the peer's has the higher cookie" };
        tracing::info!(
            connection = %peer.name,
            "both sides initiated phase 1 at once: answering the peer's exchange, ours waits for it to authenticate ({why})"
        );
        let ctx = ctx!(self, now);
        let until = now + ctx.config.crossed_pause;
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.pause(&ctx, until);
        }
        true
    }

    /// An IKE SA with `name` authenticated: our exchanges with that peer still waiting for
    /// their first answer are not needed any more (they yielded to this one, or crossed it).
    /// Nothing was established on them, so nothing is deleted or reported.
    fn drop_unanswered_initiations(&mut self, now: Instant, name: &str, established: IkeSaId) {
        let mut ctx = ctx!(self, now);
        self.sas.for_each_mut_where(
            |sa| sa.peer().name == name && sa.awaits_first_reply(),
            |id, sa| {
                if id != established {
                    tracing::debug!(connection = %name, "our unanswered first message is not needed: dropped");
                    sa.drop_all(&mut ctx, DeleteReason::Local);
                }
            },
        );
    }

    /// After an SA handled something: INITIAL-CONTACT clears older SAs with the same peer, and
    /// dead SAs are removed.
    fn after(&mut self, now: Instant, id: IkeSaId) {
        self.changed.insert(id);
        let contact = self
            .sas
            .get_mut(&id)
            .and_then(|sa| std::mem::take(&mut sa.initial_contact_received).then(|| sa.peer().name.clone()));
        if let Some(name) = contact {
            let mut ctx = ctx!(self, now);
            self.sas.for_each_mut_where(
                |sa| sa.peer().name == name,
                |other, sa| {
                    if other != id {
                        tracing::info!(connection = %name, "INITIAL-CONTACT: dropping older SAs with this peer");
                        sa.drop_all(&mut ctx, DeleteReason::PeerDeleted);
                    }
                },
            );
        }
        if self.sas.get(&id).is_none_or(|sa| sa.is_established() || sa.is_dead()) {
            self.admission.closed(id);
        }
        self.take_over(now, id);
        self.reap();
    }

    /// A newly established IKE SA takes over the child SAs of older ones with the same peer
    /// (a re-authentication, ours or the peer's; strongSwan's adopt_children). When it is our
    /// re-authentication, the old ISAKMP SA is deleted at once; when the peer's, the peer
    /// deletes it, or it goes a minute later.
    fn take_over(&mut self, now: Instant, id: IkeSaId) {
        let Some(new) = self.sas.get_mut(&id) else { return };
        if !new.is_established() || new.settled {
            return;
        }
        new.settled = true;
        let (name, replaces) = (new.peer().name.clone(), new.replaces);
        self.drop_unanswered_initiations(now, &name, id);
        let older: Vec<IkeSaId> =
            self.sas.iter().filter(|(o, s)| **o != id && carries(s, &name)).map(|(o, _)| *o).collect();
        let mut moved = Vec::new();
        for o in &older {
            if let Some(old) = self.sas.get_mut(o) {
                moved.append(&mut old.supersede());
            }
        }
        let mut ctx = ctx!(self, now);
        if !older.is_empty() {
            tracing::info!(connection = %name, child_sas = moved.len(), ours = replaces.is_some(), "new IKE SA takes over the child SAs");
        }
        if let Some(new) = self.sas.get_mut(&id) {
            new.adopt_children(moved);
            // An initiator negotiates the pairs that still have no child SA.
            if new.role() == crate::event::Role::Initiator {
                new.start_quick_modes(&mut ctx);
            }
        }
        for o in older {
            let Some(old) = self.sas.get_mut(&o) else { continue };
            if replaces.is_some() {
                old.delete(&mut ctx, DeleteReason::Reauthenticated);
            } else {
                old.expire_by(now + SUPERSEDED_KEPT);
            }
        }
    }

    /// Removes the dead SAs (only SAs acted on since the last reap can have died).
    fn reap(&mut self) {
        let dead: Vec<IkeSaId> =
            self.sas.reap_candidates().into_iter().filter(|id| self.sas.get(id).is_some_and(IkeSa::is_dead)).collect();
        for id in dead {
            self.admission.closed(id);
            if let Some(sa) = self.sas.remove(&id) {
                for spi in sa.child_spis() {
                    self.spis.release(spi);
                }
                if self.by_cookie.get(&sa.cky_i()) == Some(&id) {
                    self.by_cookie.remove(&sa.cky_i());
                }
            }
        }
    }

    /// Fires the timers due at `now` (only the SAs whose deadline has come are looked at).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_timers(now);
        self.sas.reschedule();
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut ctx = ctx!(self, now);
        let mut reauth = Vec::new();
        let mut restart = Vec::new();
        for id in self.sas.take_due(now) {
            let Some(sa) = self.sas.get_mut(&id) else { continue };
            if sa.next_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(&mut ctx);
                self.changed.insert(id);
            }
            // Set only by a timer that fired (re-authentication due, DPD restart).
            if sa.take_reauth_due() {
                reauth.push((id, sa.peer().clone()));
            }
            if sa.take_restart_due() {
                restart.push(sa.peer().name.clone());
            }
        }
        self.reap();
        for (old, peer) in reauth {
            if !self.peers.iter().any(|p| Arc::ptr_eq(p, &peer)) {
                continue; // the connection was removed or changed meanwhile
            }
            self.start_reauthentication(now, old, peer);
        }
        for name in restart {
            tracing::info!(connection = %name, "dead peer detection: negotiating again (dpd action restart)");
            let _ = self.initiate(now, &name);
        }
    }

    /// The earliest deadline of any IKE SA (from the index: no SA is looked at).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas.next_deadline()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.out.pop_front()?;
        self.messages.sent[MessageCounters::of_packet(&t.payload)] += 1;
        Some(t)
    }

    /// Diffie-Hellman work to run (only with [`EngineConfig::dh_offload`]); its result goes
    /// back through [`Endpoint::complete_dh_work`].
    pub fn poll_dh_work(&mut self) -> Option<DhWork> {
        self.dh_work.pop_front()
    }

    /// The result of work from [`Endpoint::poll_dh_work`]: the exchange that waited goes on. A
    /// result for an IKE SA that is gone, or that no longer waits for it, changes nothing.
    pub fn complete_dh_work(&mut self, now: Instant, done: DhDone) {
        let id = done.ike_sa;
        let mut ctx = ctx!(self, now);
        let Some(sa) = self.sas.get_mut(&id) else {
            tracing::debug!(ike_sa = id.0, "Diffie-Hellman result for an IKE SA that is gone: dropped");
            return;
        };
        sa.on_dh_done(&mut ctx, done.result);
        self.after(now, id);
        self.sas.reschedule();
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Exports an established IKE SA with its child SAs as plain data ([`crate::snapshot`]).
    pub fn export_ike_sa(&self, now: Instant, id: IkeSaId) -> Result<IkeSaSnapshot, SnapshotError> {
        self.sas.get(&id).ok_or(SnapshotError::UnknownIkeSa(id))?.export(now)
    }

    /// Imports an IKE SA exported by another endpoint (its connection must be configured
    /// here); it goes on talking to the peer from `now`. Returns its handle here.
    pub fn import_ike_sa(&mut self, now: Instant, snapshot: IkeSaSnapshot) -> Result<IkeSaId, SnapshotError> {
        let peer = self
            .peers
            .iter()
            .find(|p| p.name == snapshot.connection)
            .cloned()
            .ok_or_else(|| SnapshotError::UnknownConnection(snapshot.connection.clone()))?;
        if self.by_cookie.contains_key(&snapshot.initiator_cookie) {
            return Err(SnapshotError::Duplicate);
        }
        let id = self.new_id();
        let mut sa = IkeSa::import(id, peer, snapshot, now)?;
        // All or nothing: an SPI in use here (or twice in the snapshot) refuses the import.
        let spis = sa.spis_in();
        for (i, spi) in spis.iter().enumerate() {
            if !self.spis.reserve(*spi) {
                spis[..i].iter().for_each(|s| self.spis.release(*s));
                return Err(SnapshotError::SpiInUse(*spi));
            }
        }
        let mut ctx = ctx!(self, now);
        sa.resume(&mut ctx);
        self.by_cookie.insert(sa.cky_i(), id);
        self.sas.insert(id, sa);
        self.changed.insert(id);
        self.sas.reschedule();
        Ok(id)
    }

    /// The IKE SAs that may have changed since the last call (handled a message, fired a
    /// timer, were rekeyed, expired a child, were created or imported), and are still here:
    /// what a hot-backup partner must be sent again. Removed ones are not listed (compare
    /// [`Endpoint::ike_sas`] with what was sent).
    pub fn take_changed(&mut self) -> Vec<IkeSaId> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().filter(|id| self.sas.contains_key(id)).collect()
    }

    /// Whether this IKE SA handle is still here.
    pub fn has_ike_sa(&self, id: IkeSaId) -> bool {
        self.sas.contains_key(&id)
    }

    pub fn ike_sas(&self) -> Vec<IkeSaInfo> {
        self.sas.infos().into_iter().map(Arc::unwrap_or_clone).collect()
    }

    /// Every IKE SA's snapshot, shared: no copy of its contents (the snapshots are kept up to
    /// date as the SAs change, `sa_store.rs`).
    pub fn ike_sa_infos(&self) -> Vec<Arc<IkeSaInfo>> {
        self.sas.infos()
    }
}

/// Whether `sa` is an IKE SA that carries connection `name` now: established and not replaced
/// by a newer one.
fn carries(sa: &IkeSa, name: &str) -> bool {
    sa.peer().name == name && sa.is_established() && !sa.is_superseded()
}
