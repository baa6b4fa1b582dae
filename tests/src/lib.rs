//! # vpngw-tests: the system-test harness
//!
//! **Owns:** helpers that let tests put vpngw's output in front of software no one here wrote:
//! packet builders for the outer and inner headers ([`packet`]), a pcap writer ([`pcap`]), and
//! running external tools with clear failures ([`tool`]). Later: network namespaces and a
//! strongSwan peer.
//!
//! **Must not touch:** the product's behaviour. Tests call the product's public APIs and
//! binaries only; nothing here is linked into the gateway.

pub mod packet;
pub mod pcap;
pub mod tool;
