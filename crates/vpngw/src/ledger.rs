//! Per-connection ESP traffic that outlives SAs: packets, bytes and inbound drops of every SA a
//! connection ever had, so that a rekey (new SPIs, fresh SA counters) does not reset what
//! metrics report.
//!
//! Workers count on each SA entry (atomics in `SaCounters`); nothing here touches the packet
//! path. When the daemon takes an entry out of the table, the table hands it back
//! ([`Withdrawn`]); its counters are final once no worker still holds it (the `Arc` is the last
//! one: workers hold SA references only for one batch), and then they are folded into the
//! connection's total. A connection's traffic = folded totals + entries waiting to be folded +
//! entries in the table.

use std::collections::HashMap;
use std::sync::Arc;

use vpngw_dataplane::sa_table::{OutboundCounters, SaCounters, SaTable, Withdrawn};
use vpngw_esp::OpenError;

/// One connection's ESP traffic since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Inbound packets its SAs refused, by reason (replay, ICV, ...).
    pub drops: [u64; OpenError::COUNT],
}

impl Traffic {
    fn add_in(&mut self, c: &SaCounters) {
        self.packets_in += c.packets();
        self.bytes_in += c.bytes();
        for (d, r) in self.drops.iter_mut().zip(OpenError::ALL) {
            *d += c.dropped(r);
        }
    }

    fn add_out(&mut self, c: &OutboundCounters) {
        self.packets_out += c.packets();
        self.bytes_out += c.bytes();
    }
}

#[derive(Debug, Default)]
pub struct Ledger {
    totals: HashMap<String, Traffic>,
    waiting: Withdrawn,
}

impl Ledger {
    /// Entries just taken out of the table.
    pub fn retire(&mut self, w: Withdrawn) {
        self.waiting.append(w);
    }

    /// Folds the entries no worker holds any more into their connection's total.
    pub fn settle(&mut self) {
        let totals = &mut self.totals;
        self.waiting.inbound.retain(|e| {
            if Arc::strong_count(e) > 1 {
                return true;
            }
            totals.entry(e.connection.to_string()).or_default().add_in(&e.counters);
            false
        });
        self.waiting.outbound.retain(|e| {
            if Arc::strong_count(e) > 1 {
                return true;
            }
            totals.entry(e.connection.to_string()).or_default().add_out(&e.counters);
            false
        });
    }

    /// A connection that no longer exists: its series go.
    pub fn forget(&mut self, connection: &str) {
        self.totals.remove(connection);
        self.waiting.inbound.retain(|e| &*e.connection != connection);
        self.waiting.outbound.retain(|e| &*e.connection != connection);
    }

    /// Every connection's traffic now.
    pub fn traffic(&self, table: &SaTable) -> HashMap<String, Traffic> {
        let mut t = self.totals.clone();
        for e in self.waiting.inbound.iter().chain(&table.inbound_all()) {
            t.entry(e.connection.to_string()).or_default().add_in(&e.counters);
        }
        for e in self.waiting.outbound.iter().chain(&table.outbound_all()) {
            t.entry(e.connection.to_string()).or_default().add_out(&e.counters);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use vpngw_crypto::{EncryptionAlgorithm, IntegrityAlgorithm, SecretBytes};
    use vpngw_dataplane::sa_table::{InboundEntry, Ipv4Net, OutboundEntry, Selectors, Transport};
    use vpngw_esp::{InboundSa, OutboundSa, SaKeys, Spi};

    use super::*;

    fn keys() -> SaKeys {
        SaKeys {
            encryption: EncryptionAlgorithm::Aes128,
            encryption_key: SecretBytes::from_slice(&[7; 16]),
            integrity: IntegrityAlgorithm::HmacSha1_96,
            integrity_key: SecretBytes::from_slice(&[9; 20]),
        }
    }

    fn pair(spi_in: Spi, spi_out: Spi) -> (InboundEntry, OutboundEntry) {
        let selectors = Selectors {
            local: Ipv4Net::new_assert(Ipv4Addr::new(10, 1, 0, 0), 24),
            remote: Ipv4Net::new_assert(Ipv4Addr::new(10, 2, 0, 0), 24),
        };
        let transport = Transport {
            local: "198.51.100.1:4500".parse().unwrap(),
            remote: "198.51.100.2:4500".parse().unwrap(),
            udp: true,
        };
        (
            InboundEntry {
                connection: "c".into(),
                sa: InboundSa::new(spi_in, &keys(), 64).unwrap(),
                selectors,
                transport,
                counters: SaCounters::default(),
            },
            OutboundEntry {
                connection: "c".into(),
                sa: OutboundSa::new(spi_out, &keys()).unwrap(),
                selectors,
                transport,
                counters: OutboundCounters::default(),
            },
        )
    }

    #[test]
    fn traffic_survives_rekeys_and_is_counted_once() {
        let table = SaTable::new();
        let mut ledger = Ledger::default();
        let (i, o) = pair(Spi::new(1), Spi::new(2));
        ledger.retire(table.install(i, o));
        table.inbound(Spi::new(1)).unwrap().counters.add(100);
        table.outbound_by_spi(Spi::new(2)).unwrap().counters.add(50);
        table.inbound(Spi::new(1)).unwrap().counters.drop(OpenError::Replayed);
        // A rekey: the new pair takes over outbound; the old outbound comes back at once.
        let (i, o) = pair(Spi::new(3), Spi::new(4));
        ledger.retire(table.install(i, o));
        table.outbound_by_spi(Spi::new(4)).unwrap().counters.add(70);
        // A worker still holds the old inbound SA while it is being removed.
        let held = table.inbound(Spi::new(1)).unwrap();
        ledger.retire(table.remove(Spi::new(1), Spi::new(2)));
        held.counters.add(30);
        ledger.settle();
        let t = ledger.traffic(&table)["c"].clone();
        assert_eq!((t.packets_in, t.bytes_in, t.packets_out, t.bytes_out), (2, 130, 2, 120));
        assert_eq!(t.drops[OpenError::Replayed.index()], 1);
        // Once let go, the entry is folded; the sums do not change, nor double.
        drop(held);
        ledger.settle();
        assert!(ledger.waiting.inbound.is_empty() && ledger.waiting.outbound.is_empty());
        assert_eq!(ledger.traffic(&table)["c"], t);
        // A deleted connection: its SAs withdrawn, then forgotten; nothing comes back.
        ledger.retire(table.remove_connection("c"));
        ledger.forget("c");
        ledger.settle();
        assert!(!ledger.traffic(&table).contains_key("c"));
    }
}
