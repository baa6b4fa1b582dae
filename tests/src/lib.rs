//! # vpngw-tests: the system-test harness
//!
//! **Owns:** helpers that let tests put vpngw's output in front of software no one here wrote:
//! packet builders ([`packet`]), a pcap writer ([`pcap`]), external tools with clear failures
//! ([`tool`]), network namespaces ([`netns`]), the hot-backup lab with keepalived ([`ha`]),
//! strongSwan as a peer ([`strongswan`]), the `vpngw` binary under test ([`vpngw`]), and a load
//! generator of thousands of initiators on vpngw's own IKE engine ([`loadgen`], the
//! `vpngw-loadgen` binary).
//!
//! **Must not touch:** the product's behaviour. Tests call the product's public APIs and
//! binaries only; nothing here is linked into the gateway.

pub mod ha;
pub mod ha_pair;
pub mod loadgen;
pub mod netns;
pub mod packet;
pub mod pcap;
pub mod spoof;
pub mod strongswan;
pub mod tool;
pub mod traffic;
pub mod vpngw;
