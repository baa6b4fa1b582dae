//! What the active server sends its standby, as records of the sync channel (`vpngw-sync`
//! carries them as opaque bytes): one per established IKE SA (the engine's snapshot and the
//! dataplane's side of its child SAs, as `saved_tunnels` writes them), one with every SA's
//! sequence numbers and counters (sent every sync interval), and one with the connections
//! created through the management API. Bodies are JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpngw_esp::Spi;
use vpngw_ike::{Endpoint, IkeSaId};

use crate::child_sas::ChildSaPublisher;
use crate::saved_tunnels::{self, SavedTunnel};

pub const TUNNEL_PREFIX: &str = "tunnel/";
pub const SEQUENCES: &str = "sequences";
pub const CONNECTIONS: &str = "connections";

/// The record key of an IKE SA: its cookies (public: they are in every IKE header).
pub fn tunnel_key(initiator_cookie: [u8; 8], responder_cookie: [u8; 8]) -> String {
    let hex = |c: [u8; 8]| c.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{TUNNEL_PREFIX}{}-{}", hex(initiator_cookie), hex(responder_cookie))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One IKE SA with its child SAs, exported at `exported_at_unix_ms` (its times are relative
/// to that moment).
#[derive(Serialize, Deserialize)]
pub struct SyncedTunnel {
    pub exported_at_unix_ms: u64,
    pub tunnel: SavedTunnel,
}

/// The record of an established IKE SA: its key and body (None if it is not established).
pub fn export_tunnel(
    endpoint: &Endpoint,
    child_sas: &ChildSaPublisher,
    id: IkeSaId,
    now: Instant,
    now_unix_ms: u64,
) -> Option<(String, Vec<u8>)> {
    let ike = endpoint.export_ike_sa(now, id).ok()?;
    let key = tunnel_key(ike.initiator_cookie, ike.responder_cookie);
    let child_sas = ike.children.iter().filter_map(|c| child_sas.save(c.spi_in)).collect();
    let synced = SyncedTunnel { exported_at_unix_ms: now_unix_ms, tunnel: SavedTunnel { ike, child_sas } };
    match serde_json::to_vec(&synced) {
        Ok(body) => Some((key, body)),
        Err(e) => {
            tracing::error!(error = %e, "hot backup: cannot encode an IKE SA");
            None
        }
    }
}

/// Imports a tunnel record into the engine and the dataplane, its numbers brought up to
/// `numbers` (the latest sequence record) and its outbound SAs resuming `jump(peak rate)` past
/// the last number synced. Returns the child SAs installed, or why the record was refused.
pub fn import_tunnel(
    body: &[u8],
    numbers: &Sequences,
    jump: impl Fn(u64) -> u32,
    now: Instant,
    now_unix_ms: u64,
    endpoint: &mut Endpoint,
    child_sas: &mut ChildSaPublisher,
) -> Result<usize, String> {
    let synced: SyncedTunnel = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let age = Duration::from_millis(now_unix_ms.saturating_sub(synced.exported_at_unix_ms));
    let at_export = now.checked_sub(age).unwrap_or(now);
    let connection = synced.tunnel.ike.connection.clone();
    saved_tunnels::import(synced.tunnel, at_export, endpoint, child_sas, |c| {
        let out = numbers.outbound.get(&c.child.spi_out);
        if let Some(o) = out {
            c.outbound_last_sequence = c.outbound_last_sequence.max(o.last_sequence);
            c.outbound_packets = c.outbound_packets.max(o.packets);
            c.outbound_bytes = c.outbound_bytes.max(o.bytes);
            // Installed for sending on the active: it sends here too.
            c.sending = true;
        }
        if let Some(i) = numbers.inbound.get(&c.child.spi_in) {
            c.inbound_highest = c.inbound_highest.max(i.highest);
            c.inbound_packets = c.inbound_packets.max(i.packets);
            c.inbound_bytes = c.inbound_bytes.max(i.bytes);
        }
        jump(out.map_or(0, |o| o.peak_rate_pps))
    })
    .map_err(|why| format!("{connection}: {why}"))
}

/// Every installed SA's numbers at `at_unix_ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sequences {
    pub at_unix_ms: u64,
    /// By outbound SPI: the last sequence number sent, the highest rate seen lately (packets
    /// per second, over the last few sync intervals), and the counters.
    pub outbound: BTreeMap<Spi, OutboundNumbers>,
    /// By inbound SPI: the highest sequence number received, and the counters.
    pub inbound: BTreeMap<Spi, InboundNumbers>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboundNumbers {
    pub last_sequence: u64,
    pub peak_rate_pps: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundNumbers {
    pub highest: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// The connections created through the API, by name, as their tables were given.
pub type RuntimeTables = BTreeMap<String, toml::Table>;

/// How far past the last synced sequence number an outbound SA resumes after a takeover, for
/// [`crate::config::SequenceJump::Auto`]: what it could have sent since that sync (its peak
/// rate times the time since, plus one sync interval for a sync in flight), doubled; never
/// less than `floor`. Saturates below 2^31 (the SA then rekeys early, see `volume.rs`).
pub fn auto_jump(peak_rate_pps: u64, since_sync: Duration, sync_interval: Duration, floor: u32) -> u32 {
    let window_ms = since_sync.saturating_add(sync_interval).as_millis();
    let could_send = u128::from(peak_rate_pps).saturating_mul(window_ms) / 1000;
    let jump = could_send.saturating_mul(2).max(u128::from(floor));
    u32::try_from(jump.min(1 << 31)).unwrap_or(1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auto_jump_covers_what_could_have_been_sent_twice_over() {
        let floor = 1 << 16;
        // Idle: the floor.
        assert_eq!(auto_jump(0, Duration::from_millis(50), Duration::from_millis(100), floor), floor);
        // 1 Mpps, 400 ms since the last sync + 100 ms interval: 500,000 could have left.
        assert_eq!(auto_jump(1_000_000, Duration::from_millis(400), Duration::from_millis(100), floor), 1_000_000);
        // Absurd inputs saturate instead of wrapping.
        assert_eq!(auto_jump(u64::MAX, Duration::MAX, Duration::MAX, floor), 1 << 31);
    }

    #[test]
    fn tunnel_keys_name_both_cookies() {
        let k = tunnel_key([0, 1, 2, 3, 4, 5, 6, 0xff], [0xaa; 8]);
        assert_eq!(k, "tunnel/00010203040506ff-aaaaaaaaaaaaaaaa");
    }
}

/// The bulk sync of real tunnel records, as the daemon makes and imports them: `n` tunnels
/// negotiated in memory, exported into an active's store, bulk-synced over loopback TCP to a
/// standby, imported there into a fresh engine and dataplane table.
#[cfg(test)]
mod bulk {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::{SocketAddr, TcpListener};
    use std::sync::Arc;

    use vpngw_crypto::FastRng;
    use vpngw_dataplane::sa_table::SaTable;
    use vpngw_ike::testing::{A_ADDR, B_ADDR, Pair, engine_config, peer};
    use vpngw_ike::{Event, PeerConfig};
    use vpngw_sync::{Notice, Role, SyncConfig, SyncKey};

    use super::*;

    fn free_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    /// Tunnel `i`'s two sides (distinct names and subnets, as distinct customers have).
    fn configs(i: usize) -> (PeerConfig, PeerConfig) {
        let (x, y) = (i / 250, i % 250);
        let (left, right) = (format!("10.{}.{y}.0/24", 100 + x), format!("10.{}.{y}.0/24", 140 + x));
        (peer(&format!("t{i}"), A_ADDR, B_ADDR, &left, &right), peer(&format!("t{i}-b"), B_ADDR, A_ADDR, &right, &left))
    }

    /// Returns (bulk time, bytes sent by the active, import time).
    fn bulk_of(n: usize) -> (Duration, u64, Duration) {
        // The active's side: n tunnels, each negotiated by a pair, published into one table.
        let mut publisher = ChildSaPublisher::new(Arc::new(SaTable::new()), None);
        let mut records = Vec::new();
        for i in 0..n {
            let (a_cfg, b_cfg) = configs(i);
            let mut p = Pair::new(a_cfg, b_cfg, 5000 + i as u64);
            p.a.initiate(p.now, &format!("t{i}")).unwrap();
            p.drive(Duration::from_secs(5));
            for e in &p.a_events {
                match e {
                    Event::ChildSaEstablished { peer, child, .. } => publisher.established(peer, child),
                    Event::ChildSaActive { spi_out, .. } => assert!(publisher.activate(*spi_out)),
                    _ => {}
                }
            }
            let id = p.a.ike_sas()[0].id;
            records.push(export_tunnel(&p.a, &publisher, id, p.now, unix_ms(SystemTime::now())).unwrap());
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let key = [7u8; 32];
        let cfg = |me: &str, other: &str, listen, partner| {
            SyncConfig::new(me.into(), other.into(), listen, partner, SyncKey::from_bytes(key))
        };
        let (active, _a_notices) = vpngw_sync::start(cfg("node-a", "node-b", a_addr, b_addr), rt.handle());
        active.set_role(Role::Active, 2);
        for (k, body) in records {
            active.put(k, body);
        }
        let started = Instant::now();
        let (standby, mut notices) = vpngw_sync::start(cfg("node-b", "node-a", b_addr, a_addr), rt.handle());
        standby.set_role(Role::Standby, 0);
        let took = rt.block_on(async {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), notices.recv()).await {
                    Ok(Some(Notice::BulkDone { records, .. })) => {
                        assert_eq!(records, n);
                        break started.elapsed();
                    }
                    Ok(Some(_)) => continue,
                    other => panic!("no bulk: {other:?}"),
                }
            }
        });
        let bytes = active.stats().bytes_sent;

        // The standby takes over: every tunnel into a fresh engine and table.
        let replica = standby.replica();
        let mut endpoint = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(1));
        for i in 0..n {
            endpoint.add_peer(configs(i).0).unwrap();
        }
        let mut fresh = ChildSaPublisher::new(Arc::new(SaTable::new()), None);
        let numbers = Sequences::default();
        let (now, now_ms) = (Instant::now(), unix_ms(SystemTime::now()));
        let import_started = Instant::now();
        let mut children = 0;
        for body in replica.records.values() {
            children += import_tunnel(body, &numbers, |_| 1 << 16, now, now_ms, &mut endpoint, &mut fresh).unwrap();
        }
        let imported = import_started.elapsed();
        assert_eq!((endpoint.ike_sas().len(), children), (n, n));
        assert_eq!(fresh.table().inbound_all().len(), n);
        drop((active, standby));
        rt.shutdown_timeout(Duration::from_secs(1));
        (took, bytes, imported)
    }

    #[test]
    fn a_bulk_of_a_thousand_tunnels_syncs_and_imports_within_two_seconds() {
        for n in [100, 1000] {
            let (took, bytes, imported) = bulk_of(n);
            eprintln!(
                "{n} tunnels: bulk {} ms, {} bytes ({} per tunnel), import {} ms",
                took.as_millis(),
                bytes,
                bytes / n as u64,
                imported.as_millis()
            );
            assert!(took + imported < Duration::from_secs(2), "{n} tunnels: bulk {took:?}, import {imported:?}");
        }
    }
}
