//! The hand-off from IKE to the dataplane: a child SA the engine negotiated becomes an inbound
//! entry of the SA table at once and an outbound one when the engine says the peer can open it
//! (make-before-break); deleted SAs leave the table, and their final counters go to the
//! traffic ledger.

use std::collections::HashMap;
use std::sync::Arc;

use vpngw_dataplane::sa_table::{
    InboundEntry, Ipv4Net, OutboundCounters, OutboundEntry, SaCounters, SaTable, Selectors, Transport,
};
use vpngw_esp::{DEFAULT_WINDOW, InboundSa, OutboundSa};
use vpngw_ike::{ChildSa, Encapsulation, Ipv4Subnet};

use crate::keylog::KeyLog;
use crate::ledger::{Ledger, Traffic};

/// The engine's subnet as the SA table's.
pub fn table_net(s: Ipv4Subnet) -> Ipv4Net {
    Ipv4Net { addr: s.addr(), prefix: s.prefix() }
}

pub struct ChildSaPublisher {
    table: Arc<SaTable>,
    /// Outbound SAs negotiated but not yet sending (make-before-break), by SPI.
    ready_outbound: HashMap<u32, OutboundEntry>,
    /// ESP traffic per connection across SAs (for metrics).
    ledger: Ledger,
    keylog: Option<KeyLog>,
}

impl ChildSaPublisher {
    pub fn new(table: Arc<SaTable>, keylog: Option<KeyLog>) -> Self {
        Self { table, ready_outbound: HashMap::new(), ledger: Ledger::default(), keylog }
    }

    /// The table the dataplane reads.
    pub fn table(&self) -> &SaTable {
        &self.table
    }

    /// A child SA was negotiated: inbound now; outbound when [`Self::activate`]d.
    pub fn established(&mut self, connection: &str, c: &ChildSa) {
        let selectors = Selectors { local: table_net(c.selectors.local), remote: table_net(c.selectors.remote) };
        let transport = Transport {
            local: c.local,
            remote: c.remote,
            udp: matches!(c.encapsulation, Encapsulation::UdpTunnel { .. }),
        };
        let inbound = InboundSa::new(c.spi_in, &c.keys_in, DEFAULT_WINDOW);
        let outbound = OutboundSa::new(c.spi_out, &c.keys_out);
        match (inbound, outbound) {
            (Ok(inb), Ok(out)) => {
                let name: Arc<str> = connection.into();
                self.table.install_inbound(InboundEntry {
                    connection: name.clone(),
                    sa: inb,
                    selectors,
                    transport,
                    counters: SaCounters::default(),
                });
                self.ready_outbound.insert(
                    c.spi_out,
                    OutboundEntry {
                        connection: name,
                        sa: out,
                        selectors,
                        transport,
                        counters: OutboundCounters::default(),
                    },
                );
            }
            (Err(e), _) | (_, Err(e)) => tracing::error!(connection, error = %e, "cannot install child SA"),
        }
        if let Some(keylog) = &self.keylog {
            keylog.append(c);
        }
    }

    /// The peer can open the SA: it carries the outbound traffic from now on. Returns whether
    /// it was installed (packets held for it can go).
    pub fn activate(&mut self, spi_out: u32) -> bool {
        let Some(out) = self.ready_outbound.remove(&spi_out) else { return false };
        let replaced = self.table.install_outbound(out);
        self.ledger.retire(replaced);
        true
    }

    /// The pair was deleted.
    pub fn deleted(&mut self, spi_in: u32, spi_out: u32) {
        let gone = self.table.remove(spi_in, spi_out);
        self.ledger.retire(gone);
        self.ready_outbound.remove(&spi_out);
    }

    /// Every SA of the connection goes (taken down, removed or changed).
    pub fn withdraw_connection(&mut self, connection: &str) {
        let gone = self.table.remove_connection(connection);
        self.ledger.retire(gone);
        self.ready_outbound.retain(|_, e| &*e.connection != connection);
    }

    /// A connection that no longer exists: its traffic series go.
    pub fn forget(&mut self, connection: &str) {
        self.ledger.forget(connection);
    }

    /// Folds the counters of withdrawn SAs no worker holds any more (see `ledger`).
    pub fn settle(&mut self) {
        self.ledger.settle();
    }

    /// Every connection's traffic now.
    pub fn traffic(&self) -> HashMap<String, Traffic> {
        self.ledger.traffic(&self.table)
    }
}
