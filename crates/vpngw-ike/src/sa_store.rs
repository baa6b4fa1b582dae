//! The endpoint's IKE SAs, with their deadlines indexed by time.
//!
//! An endpoint with thousands of IKE SAs must not look at each of them after every datagram to
//! learn its next deadline (`poll_timeout`) or which timers are due (`handle_timeout`): with
//! 5,000 tunnels and dead peer detection that scan was most of an idle gateway's core
//! (docs/performance.md, "Thousands of tunnels"). The store keeps each SA's next deadline in an
//! ordered set. Every mutable access marks the SA dirty; [`IkeSaStore::reschedule`], which the
//! endpoint runs at the end of each of its operations, recomputes the dirty SAs' deadlines. So
//! the index is exact after each operation, at the cost of one deadline computation per SA an
//! operation touched.
//!
//! Dead SAs seen by `reschedule` are kept in a list for the endpoint's next reap, which looks at
//! the dirty and those SAs only (an SA dies only by being acted on).
//!
//! `reschedule` also refreshes the dirty SAs' [`IkeSaInfo`] snapshots, kept shared (`Arc`): the
//! daemon reads every IKE SA's snapshot many times a second (its published state, its traffic
//! watch), and building 5,000 of them each time was most of an idle gateway's CPU.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::event::{IkeSaId, IkeSaInfo};
use crate::ikesa::IkeSa;

#[derive(Default)]
pub(crate) struct IkeSaStore {
    sas: BTreeMap<IkeSaId, IkeSa>,
    /// Touched since the last [`IkeSaStore::reschedule`]: their deadlines may have moved.
    dirty: BTreeSet<IkeSaId>,
    /// Found dead by `reschedule`, not yet reaped.
    dead: BTreeSet<IkeSaId>,
    /// Each SA's deadline as last computed (SAs with none are absent), and the same ordered by
    /// time.
    deadline_of: HashMap<IkeSaId, Instant>,
    by_deadline: BTreeSet<(Instant, IkeSaId)>,
    /// Each SA's snapshot as of the last `reschedule`.
    infos: BTreeMap<IkeSaId, Arc<IkeSaInfo>>,
}

impl IkeSaStore {
    pub fn len(&self) -> usize {
        self.sas.len()
    }

    pub fn get(&self, id: &IkeSaId) -> Option<&IkeSa> {
        self.sas.get(id)
    }

    pub fn contains_key(&self, id: &IkeSaId) -> bool {
        self.sas.contains_key(id)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &IkeSa> {
        self.sas.values()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&IkeSaId, &IkeSa)> {
        self.sas.iter()
    }

    /// The SA, marked dirty.
    pub fn get_mut(&mut self, id: &IkeSaId) -> Option<&mut IkeSa> {
        let sa = self.sas.get_mut(id)?;
        self.dirty.insert(*id);
        Some(sa)
    }

    pub fn insert(&mut self, id: IkeSaId, sa: IkeSa) {
        self.sas.insert(id, sa);
        self.dirty.insert(id);
    }

    pub fn remove(&mut self, id: &IkeSaId) -> Option<IkeSa> {
        self.unindex(*id);
        self.dirty.remove(id);
        self.dead.remove(id);
        self.infos.remove(id);
        self.sas.remove(id)
    }

    /// Calls `f` on each SA for which `matches` holds (those marked dirty), in id order.
    pub fn for_each_mut_where(&mut self, matches: impl Fn(&IkeSa) -> bool, mut f: impl FnMut(IkeSaId, &mut IkeSa)) {
        for (id, sa) in self.sas.iter_mut() {
            if matches(sa) {
                self.dirty.insert(*id);
                f(*id, sa);
            }
        }
    }

    /// The first SA (in id order, or the last with `newest`) for which `matches` holds, marked
    /// dirty.
    pub fn find_mut_where(&mut self, newest: bool, matches: impl Fn(&IkeSa) -> bool) -> Option<(IkeSaId, &mut IkeSa)> {
        let id = if newest {
            self.sas.iter().rev().find(|(_, s)| matches(s)).map(|(id, _)| *id)
        } else {
            self.sas.iter().find(|(_, s)| matches(s)).map(|(id, _)| *id)
        }?;
        self.get_mut(&id).map(|sa| (id, sa))
    }

    /// The SAs that may have died since the last reap: the dirty ones and those `reschedule`
    /// found dead.
    pub fn reap_candidates(&self) -> Vec<IkeSaId> {
        self.dirty.union(&self.dead).copied().collect()
    }

    /// The SAs with a deadline at or before `now`, in id order; they leave the index and are
    /// marked dirty (the caller fires their timers; `reschedule` puts them back).
    pub fn take_due(&mut self, now: Instant) -> Vec<IkeSaId> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.by_deadline.first() {
            if at > now {
                break;
            }
            self.by_deadline.pop_first();
            self.deadline_of.remove(&id);
            self.dirty.insert(id);
            due.push(id);
        }
        due.sort_unstable();
        due
    }

    /// Recomputes the deadlines of the SAs touched since the last call.
    pub fn reschedule(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            self.unindex(id);
            let Some(sa) = self.sas.get(&id) else { continue };
            if sa.is_dead() {
                self.dead.insert(id);
            }
            self.infos.insert(id, Arc::new(sa.info()));
            if let Some(at) = sa.next_timeout() {
                self.deadline_of.insert(id, at);
                self.by_deadline.insert((at, id));
            }
        }
    }

    /// The earliest deadline of any SA (exact after `reschedule`).
    pub fn next_deadline(&self) -> Option<Instant> {
        let indexed = self.by_deadline.first().map(|(at, _)| *at);
        // The index must never be later than the SAs themselves (a missed timer); tests and
        // debug builds check it against the scan it replaces.
        debug_assert!(self.dirty.is_empty(), "next_deadline asked with SAs not rescheduled: {:?}", self.dirty);
        #[cfg(debug_assertions)]
        {
            let scanned = self.sas.values().filter_map(IkeSa::next_timeout).min();
            debug_assert_eq!(indexed, scanned, "the deadline index differs from the SAs' deadlines");
        }
        indexed
    }

    /// Every SA's snapshot (exact after `reschedule`), in id order.
    pub fn infos(&self) -> Vec<Arc<IkeSaInfo>> {
        debug_assert!(self.dirty.is_empty(), "infos asked with SAs not rescheduled: {:?}", self.dirty);
        #[cfg(debug_assertions)]
        for (id, sa) in &self.sas {
            debug_assert_eq!(self.infos.get(id).map(|i| &**i), Some(&sa.info()), "a stale snapshot of {id:?}");
        }
        self.infos.values().cloned().collect()
    }

    fn unindex(&mut self, id: IkeSaId) {
        if let Some(at) = self.deadline_of.remove(&id) {
            self.by_deadline.remove(&(at, id));
        }
    }
}
