//! Two nodes on loopback, and waiting for what they should come to.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use vpngw_sync::{Notice, Role, SyncConfig, SyncHandle, SyncKey, start};

pub const KEY: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
pub const OTHER_KEY: [u8; 32] = *b"fedcba9876543210fedcba9876543210";

/// A loopback address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub struct Node {
    pub h: SyncHandle,
    pub notices: Receiver<Notice>,
}

pub fn config(node: &str, partner: &str, listen: SocketAddr, dial: SocketAddr, key: [u8; 32]) -> SyncConfig {
    SyncConfig::new(node.into(), partner.into(), listen, dial, SyncKey::from_bytes(key))
}

pub fn node(config: SyncConfig, role: Role, epoch: u64) -> Node {
    let (h, notices) = start(config, &tokio::runtime::Handle::current());
    h.set_role(role, epoch);
    Node { h, notices }
}

/// Polls `check` until it holds or `within` passes (then panics with `what`).
pub async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next notice that `pick` accepts, skipping others.
pub async fn notice<T>(n: &mut Node, within: Duration, mut pick: impl FnMut(&Notice) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, n.notices.recv()).await {
            Ok(Some(notice)) => {
                if let Some(t) = pick(&notice) {
                    return t;
                }
            }
            Ok(None) => panic!("notice channel closed"),
            Err(_) => panic!("no matching notice within {within:?}"),
        }
    }
}

/// Deterministic filler bytes, distinct per seed.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn tunnel_key(i: u64) -> String {
    format!("tunnel/{:016x}-{:016x}", i, i.wrapping_mul(0x0101_0101))
}

/// Puts `records` into `n` and into `expected`.
pub fn put_all(
    n: &Node,
    expected: &mut BTreeMap<String, Vec<u8>>,
    records: impl IntoIterator<Item = (String, Vec<u8>)>,
) {
    for (k, v) in records {
        n.h.put(k.clone(), v.clone());
        expected.insert(k, v);
    }
}

pub const SECOND: Duration = Duration::from_secs(1);
