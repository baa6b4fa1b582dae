//! # vpngw-dataplane: the ESP packet path
//!
//! **Owns:** the security association database ([`sa_table`]) that the control plane publishes
//! and packet workers read. Still to come here (the dataplane issue): TUN queues, worker threads,
//! the SPD lookup, sockets for ESP and ESP-in-UDP, and per-worker counters.
//!
//! **Must not touch:** IKE (SAs arrive fully keyed as `vpngw-esp` objects), configuration files,
//! the management API.
//!
//! **Data in and out:** the control plane calls [`sa_table::SaTable::install`] and
//! [`sa_table::SaTable::remove`]; workers call [`sa_table::SaTable::inbound`] per packet, which
//! never takes a lock (arc-swap).

#![forbid(unsafe_code)]

pub mod sa_table;
