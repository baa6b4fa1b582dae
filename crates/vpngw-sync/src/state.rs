//! Everything the node knows, behind one mutex: its role, the active side's store, the
//! standby's replica, the live session's bookkeeping and the counters. The driver feeds it
//! decoded messages and takes outgoing ones from the session queue; nothing here awaits, so the
//! lock is never held across I/O.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::wire::{Hello, Msg};
use crate::{Notice, Replica, Role, SyncStats};

/// What the session's writer sends: single messages, records, or a whole bulk, expanded by the
/// writer so that a 100,000-record store is one queue slot and not 100,000. Bodies are shared
/// with the store: a bulk's snapshot copies keys and pointers, not the records.
#[derive(Debug)]
pub(crate) enum Out {
    Msg(Msg),
    Put { n: u64, key: String, body: Arc<Vec<u8>> },
    Bulk { epoch: u64, n: u64, records: Vec<(String, Arc<Vec<u8>>)> },
}

/// Why a session ended, and which counter that feeds.
#[derive(Debug)]
pub(crate) enum End {
    /// Partner went away, fell silent, or we shut down: only a `Lost` notice.
    Lost(String),
    /// A frame failed decryption or did not decode, or broke the protocol: `rejected_frames`.
    Rejected(String),
}

/// The live session, as far as the state is concerned.
#[derive(Debug)]
pub(crate) struct Link {
    id: u64,
    out: mpsc::Sender<Out>,
    abort: Option<AbortHandle>,
    // Active side.
    /// Updates go to the partner as they happen (a bulk has been queued).
    streaming: bool,
    next_n: u64,
    /// Update numbers sent and not yet acknowledged, with when they were queued.
    unacked: VecDeque<(u64, Instant)>,
    /// Number of the bulk in flight until the partner acknowledges it.
    bulk_unacked: Option<u64>,
    // Standby side.
    pending: Option<Pending>,
    /// A bulk completed in this session: increments may be applied.
    bulk_done: bool,
    applied_n: u64,
    acked_n: u64,
}

#[derive(Debug)]
struct Pending {
    epoch: u64,
    records: BTreeMap<String, Vec<u8>>,
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    Stale,
    Role,
}

#[derive(Debug)]
pub(crate) struct State {
    max_records: usize,
    dead_after: Duration,
    role: Role,
    epoch: u64,
    store: BTreeMap<String, Arc<Vec<u8>>>,
    replica: Replica,
    /// Highest epoch any authenticated partner announced, over the life of this node.
    highest_partner_epoch: Option<u64>,
    partner_role: Option<Role>,
    partner_epoch: Option<u64>,
    /// Standby lag: the last applied update or heartbeat.
    last_heard: Option<Instant>,
    session: Option<Link>,
    next_session_id: u64,
    notices: mpsc::Sender<Notice>,
    pub(crate) stats: SyncStats,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl State {
    pub(crate) fn new(max_records: usize, dead_after: Duration, notices: mpsc::Sender<Notice>) -> Self {
        State {
            max_records,
            dead_after,
            role: Role::Fault,
            epoch: 0,
            store: BTreeMap::new(),
            replica: Replica::default(),
            highest_partner_epoch: None,
            partner_role: None,
            partner_epoch: None,
            last_heard: None,
            session: None,
            next_session_id: 1,
            notices,
            stats: SyncStats::default(),
        }
    }

    pub(crate) fn role(&self) -> (Role, u64) {
        (self.role, self.epoch)
    }

    fn notify(&mut self, notice: Notice) {
        // The daemon must never stall the channel: a full notice queue loses the notice.
        if self.notices.try_send(notice).is_err() {
            self.stats.notices_dropped += 1;
        }
    }

    /// Queues for the partner. A full queue means the partner (or the link) cannot keep up:
    /// the session is dropped, and the next one starts with a bulk.
    fn send(&mut self, out: Out) {
        let Some(link) = &self.session else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = link.out.try_send(out) {
            self.stats.queue_overflows += 1;
            tracing::warn!("sync: send queue to the partner is full; dropping the session to resync");
            self.end_current(End::Lost("send queue full".into()));
        }
    }

    // ---- the daemon's calls -------------------------------------------------------------

    pub(crate) fn set_role(&mut self, role: Role, epoch: u64) {
        let changed = (role, epoch) != (self.role, self.epoch);
        self.role = role;
        self.epoch = epoch;
        if !changed || self.session.is_none() {
            return;
        }
        if role == Role::Active && self.partner_role == Some(Role::Active) {
            self.stats.role_conflicts += 1;
            tracing::warn!(epoch, "sync: we became Active while the partner is Active; no records flow");
        }
        self.send(Out::Msg(Msg::Role { role, epoch }));
        if role != Role::Standby {
            // A standby that stops being one takes nothing half-way through a bulk.
            if let Some(link) = &mut self.session {
                link.pending = None;
                link.bulk_done = false;
            }
        }
        self.reconsider_streaming();
    }

    pub(crate) fn put(&mut self, key: String, body: Vec<u8>) {
        if self.store.get(&key).is_some_and(|old| **old == body) {
            return;
        }
        if !self.store.contains_key(&key) && self.store.len() >= self.max_records {
            self.stats.records_refused += 1;
            tracing::warn!(key, max = self.max_records, "sync: store full, record refused");
            return;
        }
        let body = Arc::new(body);
        self.store.insert(key.clone(), body.clone());
        if let Some(n) = self.next_update() {
            self.send(Out::Put { n, key, body });
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if self.store.remove(key).is_none() {
            return;
        }
        if let Some(n) = self.next_update() {
            self.send(Out::Msg(Msg::Remove { n, key: key.to_owned() }));
        }
    }

    pub(crate) fn clear_store(&mut self) {
        let keys: Vec<String> = self.store.keys().cloned().collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Numbers the next update if it goes to the partner.
    fn next_update(&mut self) -> Option<u64> {
        let link = self.session.as_mut().filter(|l| l.streaming)?;
        link.next_n += 1;
        link.unacked.push_back((link.next_n, Instant::now()));
        Some(link.next_n)
    }

    /// Starts streaming (with a bulk) when we are Active and the partner Standby; stops it when
    /// either is no longer so.
    fn reconsider_streaming(&mut self) {
        let should = self.role == Role::Active && self.partner_role == Some(Role::Standby);
        let Some(link) = &mut self.session else { return };
        if !should {
            link.streaming = false;
            link.unacked.clear();
            link.bulk_unacked = None;
            return;
        }
        if link.streaming {
            return;
        }
        link.streaming = true;
        link.next_n += 1;
        let n = link.next_n;
        link.unacked.clear();
        link.unacked.push_back((n, Instant::now()));
        link.bulk_unacked = Some(n);
        // The snapshot and the switch to streaming happen under one lock: every later put goes
        // after the bulk in the same queue, every earlier one is in it.
        let records = self.store.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.stats.bulk_syncs += 1;
        tracing::info!(records = self.store.len(), "sync: sending bulk to the standby");
        self.send(Out::Bulk { epoch: self.epoch, n, records });
    }

    // ---- sessions -------------------------------------------------------------------------

    /// Checks the partner's Hello: the name we expect and our protocol version.
    pub(crate) fn check_hello(&mut self, expected: &str, hello: &Hello) -> Result<(), String> {
        let refused = if hello.node != expected {
            Some(format!("partner calls itself {:?}, expected {expected:?}", hello.node))
        } else if hello.version != crate::wire::PROTOCOL_VERSION {
            Some(format!("partner speaks protocol version {}", hello.version))
        } else {
            None
        };
        match refused {
            Some(reason) => {
                self.auth_failure(&reason);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    pub(crate) fn auth_failure(&mut self, reason: &str) {
        self.stats.auth_failures += 1;
        tracing::warn!(reason, "sync: handshake refused");
    }

    /// Makes a new authenticated session the current one (ending any other). Returns its id.
    /// `announced` is the role and epoch our own Hello carried.
    pub(crate) fn install(&mut self, out: mpsc::Sender<Out>, hello: Hello, announced: (Role, u64)) -> u64 {
        if self.session.is_some() {
            self.end_current(End::Lost("replaced by a new session".into()));
        }
        let id = self.next_session_id;
        self.next_session_id += 1;
        self.session = Some(Link {
            id,
            out,
            abort: None,
            streaming: false,
            next_n: 0,
            unacked: VecDeque::new(),
            bulk_unacked: None,
            pending: None,
            bulk_done: false,
            applied_n: 0,
            acked_n: 0,
        });
        self.stats.connected = true;
        // set_role during the handshake found no session to tell: tell it now, before any bulk.
        if announced != (self.role, self.epoch) {
            self.send(Out::Msg(Msg::Role { role: self.role, epoch: self.epoch }));
        }
        self.partner_announced(hello.role, hello.epoch);
        self.notify(Notice::Connected { partner: hello.node, role: hello.role, epoch: hello.epoch });
        // Our own Hello already told the partner our role; the bulk (if any) follows it.
        self.reconsider_streaming();
        id
    }

    pub(crate) fn set_abort(&mut self, id: u64, abort: AbortHandle) {
        match &mut self.session {
            Some(link) if link.id == id => link.abort = Some(abort),
            // Replaced before it started: stop it.
            _ => abort.abort(),
        }
    }

    fn partner_announced(&mut self, role: Role, epoch: u64) {
        self.partner_role = Some(role);
        self.partner_epoch = Some(epoch);
        self.stats.partner_role = Some(role);
        self.stats.partner_epoch = Some(epoch);
        self.highest_partner_epoch = Some(self.highest_partner_epoch.map_or(epoch, |h| h.max(epoch)));
        if role == Role::Active && self.role == Role::Active {
            self.stats.role_conflicts += 1;
            tracing::warn!(epoch, our_epoch = self.epoch, "sync: both nodes are Active; no records flow");
        }
    }

    /// Ends session `id` if it is still the current one.
    pub(crate) fn end(&mut self, id: u64, end: End) {
        if self.session.as_ref().is_some_and(|l| l.id == id) {
            self.end_current(end);
        }
    }

    fn end_current(&mut self, end: End) {
        let Some(link) = self.session.take() else { return };
        if let Some(abort) = link.abort {
            abort.abort();
        }
        let reason = match end {
            End::Lost(reason) => reason,
            End::Rejected(reason) => {
                self.stats.rejected_frames += 1;
                format!("rejected: {reason}")
            }
        };
        tracing::info!(reason, "sync: session ended");
        // A bulk that did not finish is dropped; the replica stays as it was.
        self.stats.connected = false;
        self.partner_role = None;
        self.partner_epoch = None;
        self.stats.partner_role = None;
        self.stats.partner_epoch = None;
        self.notify(Notice::Lost { reason });
    }

    // ---- what the partner says --------------------------------------------------------------

    pub(crate) fn on_sent(&mut self, messages: u64, bytes: u64) {
        self.stats.messages_sent += messages;
        self.stats.bytes_sent += bytes;
    }

    /// Bytes as they arrive; messages here only for the handshake's (on_msg counts the rest).
    pub(crate) fn on_received(&mut self, messages: u64, bytes: u64) {
        self.stats.messages_received += messages;
        self.stats.bytes_received += bytes;
    }

    /// One decoded message from session `id`. An error ends the session.
    pub(crate) fn on_msg(&mut self, id: u64, msg: Msg) -> Result<(), End> {
        if self.session.as_ref().is_none_or(|l| l.id != id) {
            return Ok(()); // a replaced session's last words
        }
        self.stats.messages_received += 1;
        match msg {
            Msg::Hello(_) => return Err(End::Rejected("Hello after the handshake".into())),
            Msg::Role { role, epoch } => {
                self.partner_announced(role, epoch);
                self.notify(Notice::PartnerRole { role, epoch });
                self.reconsider_streaming();
            }
            Msg::Heartbeat { .. } => {
                if self.role == Role::Standby {
                    self.last_heard = Some(Instant::now());
                }
            }
            Msg::Ack { n } => {
                if let Some(link) = &mut self.session {
                    while link.unacked.front().is_some_and(|&(u, _)| u <= n) {
                        link.unacked.pop_front();
                    }
                    if link.bulk_unacked.is_some_and(|b| b <= n) {
                        link.bulk_unacked = None;
                    }
                }
            }
            Msg::BulkBegin { epoch, count } => {
                if self.refuse_update() {
                    return Ok(());
                }
                if let Some(link) = &mut self.session {
                    tracing::info!(count, epoch, "sync: bulk from the active begins");
                    link.pending = Some(Pending { epoch, records: BTreeMap::new(), started: Instant::now() });
                }
            }
            Msg::Put { n, key, body } => self.apply(n, key, Some(body)),
            Msg::Remove { n, key } => self.apply(n, key, None),
            Msg::BulkEnd { n } => {
                if self.refuse_update() {
                    return Ok(());
                }
                let Some(link) = &mut self.session else { return Ok(()) };
                let Some(pending) = link.pending.take() else {
                    self.stats.role_refused += 1; // an end without a begin we accepted
                    return Ok(());
                };
                link.bulk_done = true;
                link.applied_n = n;
                let took = pending.started.elapsed();
                let records = pending.records.len();
                self.replica.records = pending.records;
                self.replica.epoch = pending.epoch;
                self.replica.complete = true;
                self.replica.applied_at_unix_ms = Some(unix_ms());
                self.last_heard = Some(Instant::now());
                self.stats.bulk_syncs += 1;
                self.stats.last_bulk = Some(took);
                tracing::info!(records, ?took, "sync: bulk applied");
                self.notify(Notice::BulkDone { records, took });
            }
        }
        Ok(())
    }

    /// Whether an update must be refused (and counted): we apply only as a Standby, only from
    /// an Active partner, and only from one whose epoch is not below one we have already seen.
    fn refuse_update(&mut self) -> bool {
        let refusal = if self.role != Role::Standby || self.partner_role != Some(Role::Active) {
            Some(Refusal::Role)
        } else if self.partner_epoch < self.highest_partner_epoch {
            Some(Refusal::Stale)
        } else {
            None
        };
        match refusal {
            None => false,
            Some(kind) => {
                match kind {
                    Refusal::Stale => self.stats.stale_refused += 1,
                    Refusal::Role => self.stats.role_refused += 1,
                }
                if let Some(link) = &mut self.session {
                    link.pending = None;
                }
                true
            }
        }
    }

    fn apply(&mut self, n: u64, key: String, body: Option<Vec<u8>>) {
        if self.refuse_update() {
            return;
        }
        let max = self.max_records;
        let partner_epoch = self.partner_epoch.unwrap_or(0);
        let Some(link) = &mut self.session else { return };
        let target = if let Some(pending) = &mut link.pending {
            &mut pending.records
        } else if link.bulk_done {
            link.applied_n = n;
            self.replica.epoch = partner_epoch;
            self.replica.applied_at_unix_ms = Some(unix_ms());
            self.last_heard = Some(Instant::now());
            &mut self.replica.records
        } else {
            // An increment before any bulk of this session: it would patch a replica it was
            // not computed against (a role flip in flight). The bulk that follows covers it.
            self.stats.role_refused += 1;
            return;
        };
        match body {
            Some(body) => {
                if !target.contains_key(&key) && target.len() >= max {
                    self.stats.records_refused += 1;
                    return;
                }
                target.insert(key, body);
            }
            None => {
                target.remove(&key);
            }
        }
    }

    /// After a batch of reads: acknowledge what was applied, if anything new was.
    pub(crate) fn ack_if_due(&mut self) {
        let Some(link) = &mut self.session else { return };
        if link.applied_n > link.acked_n {
            link.acked_n = link.applied_n;
            let n = link.applied_n;
            self.send(Out::Msg(Msg::Ack { n }));
        }
    }

    // ---- what the daemon reads ----------------------------------------------------------

    pub(crate) fn replica(&self) -> Replica {
        self.replica.clone()
    }

    pub(crate) fn replica_record(&self, key: &str) -> Option<Vec<u8>> {
        self.replica.records.get(key).cloned()
    }

    pub(crate) fn stats(&self) -> SyncStats {
        let now = Instant::now();
        let mut stats = self.stats.clone();
        match self.role {
            Role::Active => {
                stats.records = self.store.len();
                let link = self.session.as_ref().filter(|l| l.streaming);
                stats.lag = link.map(|l| l.unacked.front().map_or(Duration::ZERO, |&(_, at)| now - at));
                stats.in_sync = link.is_some_and(|l| l.bulk_unacked.is_none())
                    && stats.lag.is_some_and(|lag| lag < self.dead_after);
            }
            Role::Standby | Role::Fault => {
                stats.records = self.replica.records.len();
                stats.lag = self.last_heard.map(|at| now - at);
                stats.in_sync = self.role == Role::Standby
                    && self.session.as_ref().is_some_and(|l| l.bulk_done)
                    && self.partner_role == Some(Role::Active)
                    && self.partner_epoch >= self.highest_partner_epoch;
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PROTOCOL_VERSION;

    fn hello(role: Role, epoch: u64) -> Hello {
        Hello { node: "a".into(), role, epoch, version: PROTOCOL_VERSION }
    }

    /// A standby at epoch 1 with a session from an Active partner at `epoch`.
    fn standby(epoch: u64) -> (State, mpsc::Receiver<Out>, mpsc::Receiver<Notice>, u64) {
        let (ntx, nrx) = mpsc::channel(64);
        let mut s = State::new(10, Duration::from_secs(1), ntx);
        s.set_role(Role::Standby, 1);
        let (tx, rx) = mpsc::channel(64);
        let id = s.install(tx, hello(Role::Active, epoch), (Role::Standby, 1));
        (s, rx, nrx, id)
    }

    fn put(n: u64, key: &str, body: &[u8]) -> Msg {
        Msg::Put { n, key: key.into(), body: body.to_vec() }
    }

    fn keys(s: &State) -> Vec<String> {
        s.replica().records.keys().cloned().collect()
    }

    fn bulk(s: &mut State, id: u64, epoch: u64, n: u64, records: &[&str]) {
        s.on_msg(id, Msg::BulkBegin { epoch, count: records.len() as u64 }).unwrap();
        for k in records {
            s.on_msg(id, put(n, k, k.as_bytes())).unwrap();
        }
        s.on_msg(id, Msg::BulkEnd { n }).unwrap();
    }

    #[test]
    fn bulk_replaces_wholesale_at_its_end_only() {
        let (mut s, mut out, _, id) = standby(3);
        bulk(&mut s, id, 3, 1, &["a", "b"]);
        assert_eq!(keys(&s), ["a", "b"]);
        assert!(s.replica().complete);
        s.on_msg(id, put(2, "c", b"c")).unwrap();
        s.on_msg(id, Msg::Remove { n: 3, key: "a".into() }).unwrap();
        assert_eq!(keys(&s), ["b", "c"]);
        s.ack_if_due();
        assert!(matches!(out.try_recv(), Ok(Out::Msg(Msg::Ack { n: 3 }))));

        // A second bulk: until its end, the replica is the old one.
        s.on_msg(id, Msg::BulkBegin { epoch: 3, count: 1 }).unwrap();
        s.on_msg(id, put(4, "z", b"z")).unwrap();
        assert_eq!(keys(&s), ["b", "c"]);
        s.on_msg(id, Msg::BulkEnd { n: 4 }).unwrap();
        assert_eq!(keys(&s), ["z"]);
        assert_eq!(s.stats().bulk_syncs, 2);
        assert!(s.stats().in_sync);
    }

    #[test]
    fn a_session_lost_mid_bulk_leaves_the_replica() {
        let (mut s, _out, _, id) = standby(3);
        bulk(&mut s, id, 3, 1, &["a"]);
        s.on_msg(id, Msg::BulkBegin { epoch: 3, count: 2 }).unwrap();
        s.on_msg(id, put(2, "x", b"x")).unwrap();
        s.end(id, End::Lost("test".into()));
        let r = s.replica();
        assert_eq!(keys(&s), ["a"]);
        assert!(r.complete);
        // A late message of the ended session changes nothing.
        s.on_msg(id, Msg::BulkEnd { n: 2 }).unwrap();
        assert_eq!(s.replica(), r);
        assert!(!s.stats().connected && !s.stats().in_sync);
    }

    #[test]
    fn applies_only_as_standby_from_an_active_partner() {
        let (mut s, _out, _, id) = standby(3);
        bulk(&mut s, id, 3, 1, &["a"]);
        s.on_msg(id, Msg::Role { role: Role::Fault, epoch: 3 }).unwrap();
        s.on_msg(id, put(2, "from-fault", b"x")).unwrap();
        s.on_msg(id, Msg::Role { role: Role::Standby, epoch: 3 }).unwrap();
        bulk(&mut s, id, 3, 3, &["from-standby"]);
        assert_eq!(keys(&s), ["a"]);
        assert_eq!(s.stats().role_refused, 1 + 3);

        s.on_msg(id, Msg::Role { role: Role::Active, epoch: 3 }).unwrap();
        s.set_role(Role::Fault, 1);
        s.on_msg(id, put(4, "while-we-fault", b"x")).unwrap();
        s.set_role(Role::Standby, 1);
        // Back to Standby: increments wait for the bulk the active now sends.
        s.on_msg(id, put(5, "before-bulk", b"x")).unwrap();
        assert_eq!(keys(&s), ["a"]);
        assert_eq!(s.stats().role_refused, 4 + 2);
        assert_eq!(s.stats().stale_refused, 0);
    }

    #[test]
    fn a_lower_epoch_never_overwrites() {
        let (mut s, _out, _, id) = standby(5);
        bulk(&mut s, id, 5, 1, &["new"]);
        s.end(id, End::Lost("test".into()));
        let (tx, _rx) = mpsc::channel(64);
        let id = s.install(tx, hello(Role::Active, 4), (Role::Standby, 1));
        bulk(&mut s, id, 4, 1, &["old"]);
        s.on_msg(id, put(2, "old2", b"x")).unwrap();
        assert_eq!(keys(&s), ["new"]);
        assert_eq!(s.replica().epoch, 5);
        assert_eq!(s.stats().stale_refused, 4);
        assert!(!s.stats().in_sync);
        // The same partner announcing a newer epoch is current again.
        s.on_msg(id, Msg::Role { role: Role::Active, epoch: 6 }).unwrap();
        bulk(&mut s, id, 6, 3, &["newer"]);
        assert_eq!(keys(&s), ["newer"]);
        assert_eq!(s.replica().epoch, 6);
    }

    #[test]
    fn replica_is_bounded_and_hello_is_refused_later() {
        let (mut s, _out, _, id) = standby(3);
        let names: Vec<String> = (0..12).map(|i| format!("r{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        bulk(&mut s, id, 3, 1, &refs);
        assert_eq!(s.replica().records.len(), 10);
        assert_eq!(s.stats().records_refused, 2);
        s.on_msg(id, put(2, "r00", b"replaced")).unwrap();
        assert_eq!(s.stats().records_refused, 2);
        assert!(matches!(s.on_msg(id, Msg::Hello(hello(Role::Active, 3))), Err(End::Rejected(_))));
    }

    #[test]
    fn active_streams_a_bulk_then_increments_and_measures_lag() {
        let (ntx, _nrx) = mpsc::channel(64);
        let mut s = State::new(100, Duration::from_secs(1), ntx);
        s.set_role(Role::Active, 2);
        s.put("a".into(), b"1".to_vec());
        let (tx, mut out) = mpsc::channel(64);
        s.install(tx, hello(Role::Fault, 0), (Role::Active, 2));
        assert!(out.try_recv().is_err(), "nothing for a partner in Fault");
        assert_eq!(s.stats().lag, None);
        s.on_msg(s.session.as_ref().unwrap().id, Msg::Role { role: Role::Standby, epoch: 2 }).unwrap();
        let Ok(Out::Bulk { epoch: 2, n: 1, records }) = out.try_recv() else { panic!("no bulk") };
        assert_eq!(records.len(), 1);
        s.put("a".into(), b"1".to_vec()); // unchanged: nothing sent
        s.put("b".into(), b"2".to_vec());
        s.remove("a");
        assert!(matches!(out.try_recv(), Ok(Out::Put { n: 2, .. })));
        assert!(matches!(out.try_recv(), Ok(Out::Msg(Msg::Remove { n: 3, .. }))));
        assert!(out.try_recv().is_err());
        assert!(!s.stats().in_sync, "the bulk is not acknowledged yet");
        let id = s.session.as_ref().unwrap().id;
        s.on_msg(id, Msg::Ack { n: 2 }).unwrap();
        assert!(s.stats().lag.is_some());
        s.on_msg(id, Msg::Ack { n: 3 }).unwrap();
        assert_eq!(s.stats().lag, Some(Duration::ZERO));
        assert!(s.stats().in_sync);
    }
}
