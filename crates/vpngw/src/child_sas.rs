//! The hand-off from IKE to the dataplane: a child SA the engine negotiated becomes an inbound
//! entry of the SA table at once and an outbound one when the engine says the peer can open it
//! (make-before-break); deleted SAs leave the table, and their final counters go to the
//! traffic ledger.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use vpngw_dataplane::sa_table::{
    InboundEntry, OutboundCounters, OutboundEntry, SaCounters, SaTable, Selectors, Transport,
};
use vpngw_esp::{DEFAULT_WINDOW, InboundSa, OutboundSa, Spi};
use vpngw_ike::{ChildSa, Encapsulation};

use crate::keylog::KeyLog;
use crate::ledger::Ledger;

/// One child SA pair as the dataplane held it.
#[derive(Serialize, Deserialize)]
pub struct SavedChildSa {
    /// As negotiated: SPIs, keys, selectors, transport.
    pub child: ChildSa,
    pub inbound_highest: u32,
    pub inbound_packets: u64,
    pub inbound_bytes: u64,
    /// Whether the outbound SA carried traffic (else it waits for its activation).
    pub sending: bool,
    pub outbound_last_sequence: u64,
    pub outbound_packets: u64,
    pub outbound_bytes: u64,
}

pub struct ChildSaPublisher {
    table: Arc<SaTable>,
    /// Outbound SAs negotiated but not yet sending (make-before-break), by SPI.
    ready_outbound: HashMap<Spi, OutboundEntry>,
    /// The pairs published, as negotiated (keys included), by inbound SPI: what a saved state
    /// needs besides the engine's snapshot.
    negotiated: HashMap<Spi, ChildSa>,
    /// ESP traffic per connection across SAs (for metrics). Shared with the read models,
    /// which are served off the daemon's loop (`ops::published`): held only for a table
    /// operation and the retiring of what it returned, so that a reader never sees an SA's
    /// counters in neither place.
    ledger: Arc<Mutex<Ledger>>,
    keylog: Option<KeyLog>,
}

impl ChildSaPublisher {
    pub fn new(table: Arc<SaTable>, keylog: Option<KeyLog>) -> Self {
        Self { table, ready_outbound: HashMap::new(), negotiated: HashMap::new(), ledger: Arc::default(), keylog }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic elsewhere with the lock held leaves sums that are still sums.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The traffic ledger and the table, for the read models served off the loop.
    pub fn shared(&self) -> (Arc<SaTable>, Arc<Mutex<Ledger>>) {
        (self.table.clone(), self.ledger.clone())
    }

    /// The table the dataplane reads.
    pub fn table(&self) -> &SaTable {
        &self.table
    }

    /// A child SA was negotiated: inbound now; outbound when [`Self::activate`]d.
    pub fn established(&mut self, connection: &str, c: &ChildSa) {
        if let Some((inbound, outbound)) = entries(connection, c) {
            self.table.install_inbound(inbound);
            self.ready_outbound.insert(c.spi_out, outbound);
            self.published(c);
        }
    }

    fn published(&mut self, c: &ChildSa) {
        if let Some(keylog) = &self.keylog {
            keylog.append(c);
        }
        self.negotiated.insert(c.spi_in, c.clone());
    }

    /// The pair with this inbound SPI as the dataplane holds it now, for a saved state.
    pub fn save(&self, spi_in: Spi) -> Option<SavedChildSa> {
        let child = self.negotiated.get(&spi_in)?;
        let inbound = self.table.inbound(spi_in)?;
        let outbound = self.table.outbound_by_spi(child.spi_out).filter(|o| *o.connection == *inbound.connection);
        Some(SavedChildSa {
            child: child.clone(),
            inbound_highest: inbound.sa.replay_window().highest(),
            inbound_packets: inbound.counters.packets(),
            inbound_bytes: inbound.counters.bytes(),
            sending: outbound.is_some(),
            outbound_last_sequence: outbound.as_ref().map_or(0, |o| o.sa.sequence_used()),
            outbound_packets: outbound.as_ref().map_or(0, |o| o.counters.packets()),
            outbound_bytes: outbound.as_ref().map_or(0, |o| o.counters.bytes()),
        })
    }

    /// A pair from a saved state: inbound with its replay window at the highest number
    /// received, outbound (when it was sending; else held until activated) numbering on from
    /// `sequence_margin` past the last number sent; counters (volume lifetimes) go on.
    pub fn restore(&mut self, connection: &str, saved: &SavedChildSa, sequence_margin: u32) {
        let c = &saved.child;
        let Some((inbound, mut outbound)) = entries(connection, c) else { return };
        if saved.inbound_highest > 0 {
            // Marks the highest as seen: older numbers inside the window are accepted once
            // more (what arrived of them before the save is not known here).
            let _ = inbound.sa.replay_window().commit(saved.inbound_highest);
        }
        inbound.counters.packets.store(saved.inbound_packets, Ordering::Relaxed);
        inbound.counters.bytes.store(saved.inbound_bytes, Ordering::Relaxed);
        let next = saved.outbound_last_sequence.saturating_add(u64::from(sequence_margin));
        outbound.sa = outbound.sa.with_last_sequence(u32::try_from(next).unwrap_or(u32::MAX));
        outbound.counters.packets.store(saved.outbound_packets, Ordering::Relaxed);
        outbound.counters.bytes.store(saved.outbound_bytes, Ordering::Relaxed);
        self.table.install_inbound(inbound);
        if saved.sending {
            self.ledger().retire(self.table.install_outbound(outbound));
        } else {
            self.ready_outbound.insert(c.spi_out, outbound);
        }
        self.published(c);
    }

    /// The peer can open the SA: it carries the outbound traffic from now on. Returns whether
    /// it was installed (packets held for it can go).
    pub fn activate(&mut self, spi_out: Spi) -> bool {
        let Some(out) = self.ready_outbound.remove(&spi_out) else { return false };
        self.ledger().retire(self.table.install_outbound(out));
        true
    }

    /// The pair was deleted.
    pub fn deleted(&mut self, spi_in: Spi, spi_out: Spi) {
        self.ledger().retire(self.table.remove(spi_in, spi_out));
        self.ready_outbound.remove(&spi_out);
        self.negotiated.remove(&spi_in);
    }

    /// Every SA of the connection goes (taken down, removed or changed).
    pub fn withdraw_connection(&mut self, connection: &str) {
        self.ledger().retire(self.table.remove_connection(connection));
        self.ready_outbound.retain(|_, e| &*e.connection != connection);
        let table = &self.table;
        self.negotiated.retain(|spi, _| table.inbound(*spi).is_some());
    }

    /// A connection that no longer exists: its traffic series go.
    pub fn forget(&mut self, connection: &str) {
        self.ledger().forget(connection);
    }

    /// Folds the counters of withdrawn SAs no worker holds any more (see `ledger`).
    pub fn settle(&mut self) {
        self.ledger().settle();
    }
}

/// The table's entries for a negotiated pair (None, logged, if its keys do not fit).
fn entries(connection: &str, c: &ChildSa) -> Option<(InboundEntry, OutboundEntry)> {
    let selectors = Selectors { local: c.selectors.local.net(), remote: c.selectors.remote.net() };
    let transport =
        Transport { local: c.local, remote: c.remote, udp: matches!(c.encapsulation, Encapsulation::UdpTunnel { .. }) };
    match (InboundSa::new(c.spi_in, &c.keys_in, DEFAULT_WINDOW), OutboundSa::new(c.spi_out, &c.keys_out)) {
        (Ok(inb), Ok(out)) => {
            let name: Arc<str> = connection.into();
            let inbound = InboundEntry {
                connection: name.clone(),
                sa: inb,
                selectors,
                transport,
                counters: SaCounters::default(),
            };
            let outbound = OutboundEntry {
                connection: name,
                sa: out,
                selectors,
                transport,
                counters: OutboundCounters::default(),
            };
            Some((inbound, outbound))
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(connection, error = %e, "cannot install child SA");
            None
        }
    }
}
