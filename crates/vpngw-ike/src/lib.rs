//! # vpngw-ike: a sans-IO IKEv1 engine
//!
//! **Owns:** ISAKMP encoding ([`wire`]), the IKEv1 key schedule, phase 1 (main and aggressive
//! mode with pre-shared keys), quick mode, informational exchanges, NAT traversal and
//! retransmission, for any number of peers.
//!
//! **Must not touch:** sockets, threads, clocks, the dataplane's SA table, configuration files,
//! or logs' destination. Time comes in as `now`, randomness through an injected RNG, datagrams as
//! byte slices.
//!
//! **Data in and out:** the driver feeds received datagrams (with their local and remote
//! address) and timeouts in; it takes datagrams to send, the next timer and events (IKE SA and
//! child SA established or deleted, negotiation failures with a reason) out. An established
//! IKE SA can be exported as plain data and imported into another endpoint ([`snapshot`]).
//!
//! **Rooms, bottom up** (no two files import each other): `wire` (the codec, itself bottom up:
//! `numbers`, `error`, `reader`, `header`, `sa`, `payload`; `wire/mod.rs` only re-exports),
//! `dh_work` (Diffie-Hellman as work a driver may run on other threads), `exchange` (what
//! every handler shares: `Ctx`, `Received`, `Transmit`, retransmission, `ProtocolError`), `timer`, `keys`, `nat_t`, `message` (`Link`: an IKE SA's two ends;
//! `MessageCrypto`: its keys), `info` (informational exchanges), `lifetime` (including the
//! bounds on lifetimes a peer chooses), `seen` (the peer's message IDs, against replays), `child`
//! (`ChildSet`), `liveness` (DPD, re-authentication), `quick_mode` (`QuickModes`), `phase1`
//! (main and aggressive mode as consuming typestates), `established` (the keyed state after
//! phase 1), `ikesa` (composes them; `ikesa/informational` acts on the peer's informational
//! exchanges), `admission` (what unauthenticated first messages may cost), `sa_store` (the IKE
//! SAs with their deadlines indexed by time and their snapshots kept current, so nothing scans
//! every SA per datagram), `endpoint` (demultiplexes datagrams to IKE SAs). Feature `testing` (tests and benchmarks only) adds
//! [`testing`]: two endpoints on an in-memory network and virtual clock, and a hostile peer
//! whose payloads a test rewrites; and [`fuzzing`]: what one fuzz input does (`fuzz/`).

#![forbid(unsafe_code)]

mod admission;
mod child;
pub mod config;
pub mod dh_work;
pub mod endpoint;
mod established;
pub mod event;
mod exchange;
#[cfg(feature = "testing")]
pub mod fuzzing;
mod ikesa;
mod info;
pub mod keys;
mod lifetime;
mod liveness;
mod message;
mod nat_t;
mod phase1;
pub mod proposal;
mod quick_mode;
mod sa_store;
mod seen;
pub mod snapshot;
pub mod spi;
#[cfg(feature = "testing")]
pub mod testing;
mod timer;
pub mod wire;

pub use config::{
    DpdAction, DpdPolicy, EngineConfig, ExchangeMode, Identity, Ipv4Subnet, PeerConfig, Phase1Policy, Phase2Policy,
    SubnetPair,
};
pub use dh_work::{DhDone, DhWork};
pub use endpoint::{DropCounters, Endpoint, IkeError, MessageCounters};
pub use event::{
    ChildSa, ChildSaInfo, ChildSaState, DeleteReason, Event, FailReason, IkeSaId, IkeSaInfo, IkeSaState, Role,
};
pub use exchange::{IKE_PORT, NAT_T_PORT, Transmit};
pub use proposal::Encapsulation;
pub use snapshot::{ChildSaSnapshot, IkeSaSnapshot, SnapshotError};
