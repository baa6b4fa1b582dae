//! Saved tunnels: the established IKE SAs with their child SAs (the engine's snapshot, plus
//! the ESP keys, sequence numbers and counters the dataplane holds), written when the daemon
//! stops with `vpngw stop --save-tunnels FILE` and read back by `vpngw run --restore-tunnels
//! FILE`. The restarted daemon goes on with the same IKE SAs and SPIs: the peers see no
//! renegotiation, only the seconds of the restart without answers. This is the ground hot
//! backup's state sync will stand on.
//!
//! Times in the file are relative to the moment of the save; the restore shifts them by the
//! wall-clock time since, so timers (DPD, rekeys, lifetimes) fire as if the daemon had never
//! stopped. Outbound sequence numbers resume [`SEQUENCE_MARGIN`] past the last one sent, for
//! the packets that may leave between the save and the stop; inbound replay windows resume at
//! the highest number received (numbers below it inside the window are accepted once more).
//!
//! The file holds keys: it is written with mode 0600 and refused if group or others can read
//! it. It is read once; delete it after the restart.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vpngw_esp::Spi;
use vpngw_ike::{Endpoint, IkeSaSnapshot, IkeSaState};

use crate::child_sas::{ChildSaPublisher, SavedChildSa};

/// The file format's version: a file of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// How far past the last saved outbound sequence number the restored SAs go on numbering:
/// more than a worker sends between the save and the stop (a few milliseconds; at 1 Mpps,
/// 65,536 packets last 65 ms).
pub const SEQUENCE_MARGIN: u32 = 1 << 16;

#[derive(Serialize, Deserialize)]
pub struct SavedTunnels {
    pub format: u32,
    /// Wall-clock time of the save, in milliseconds since the Unix epoch.
    pub saved_at_unix_ms: u64,
    pub tunnels: Vec<SavedTunnel>,
}

/// One IKE SA and the dataplane's side of its child SAs.
#[derive(Serialize, Deserialize)]
pub struct SavedTunnel {
    pub ike: IkeSaSnapshot,
    pub child_sas: Vec<SavedChildSa>,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedTunnelsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a saved-tunnels file: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("{path}: format version {found}, this vpngw reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: holds keys but is readable by group or others (mode {mode:o}): chmod 600 it")]
    Permissions { path: PathBuf, mode: u32 },
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct Restored {
    pub ike_sas: usize,
    pub child_sas: usize,
    /// IKE SAs not restored, with why (their connections negotiate anew).
    pub refused: Vec<(String, String)>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Every established IKE SA of `endpoint`, with its child SAs as `child_sas` publishes them.
pub fn collect(endpoint: &Endpoint, child_sas: &ChildSaPublisher, now: Instant) -> SavedTunnels {
    let tunnels = endpoint
        .ike_sas()
        .iter()
        .filter(|info| info.state == IkeSaState::Established)
        .filter_map(|info| endpoint.export_ike_sa(now, info.id).ok())
        .map(|ike| {
            let child_sas = ike.children.iter().filter_map(|c| child_sas.save(c.spi_in)).collect();
            SavedTunnel { ike, child_sas }
        })
        .collect();
    SavedTunnels { format: FORMAT_VERSION, saved_at_unix_ms: unix_ms(SystemTime::now()), tunnels }
}

/// Writes `saved` to `path` (mode 0600, through a temporary file renamed into place).
pub fn write(path: &Path, saved: &SavedTunnels) -> Result<(), SavedTunnelsError> {
    let io = |source| SavedTunnelsError::Io { path: path.to_path_buf(), source };
    let json = serde_json::to_vec(saved).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(&json).and_then(|()| file.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a saved-tunnels file, refusing one others can read.
pub fn read(path: &Path) -> Result<SavedTunnels, SavedTunnelsError> {
    let io = |source| SavedTunnelsError::Io { path: path.to_path_buf(), source };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SavedTunnelsError::Permissions { path: path.to_path_buf(), mode: mode & 0o7777 });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let saved: SavedTunnels = serde_json::from_slice(&bytes)
        .map_err(|e| SavedTunnelsError::Format { path: path.to_path_buf(), detail: e.to_string() })?;
    if saved.format != FORMAT_VERSION {
        return Err(SavedTunnelsError::Version { path: path.to_path_buf(), found: saved.format });
    }
    Ok(saved)
}

/// Imports every saved IKE SA whose connection is configured here and installs its child
/// SAs; the times go on from the save (`now` shifted back by the wall-clock time since).
pub fn restore(saved: SavedTunnels, endpoint: &mut Endpoint, child_sas: &mut ChildSaPublisher) -> Restored {
    let since = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(saved.saved_at_unix_ms));
    let now = Instant::now();
    let at_save = now.checked_sub(since).unwrap_or(now);
    let mut restored = Restored::default();
    for tunnel in saved.tunnels {
        let connection = tunnel.ike.connection.clone();
        match import(tunnel, at_save, endpoint, child_sas, |_| SEQUENCE_MARGIN) {
            Ok(children) => {
                restored.ike_sas += 1;
                restored.child_sas += children;
            }
            Err(why) => restored.refused.push((connection, why)),
        }
    }
    restored
}

/// Imports one tunnel exported at `at_save` (its IKE SA into the engine, then its child SAs
/// into the dataplane); `adjust` may bring a child SA's numbers up to date and says how far
/// past its last outbound sequence number it resumes. Returns the child SAs installed, or why
/// the IKE SA was refused (then nothing is installed).
pub fn import(
    tunnel: SavedTunnel,
    at_save: Instant,
    endpoint: &mut Endpoint,
    child_sas: &mut ChildSaPublisher,
    mut adjust: impl FnMut(&mut SavedChildSa) -> u32,
) -> Result<usize, String> {
    let connection = tunnel.ike.connection.clone();
    let spis: Vec<Spi> = tunnel.ike.children.iter().map(|c| c.spi_in).collect();
    endpoint.import_ike_sa(at_save, tunnel.ike).map_err(|e| e.to_string())?;
    let mut installed = 0;
    // Only pairs the engine knows: a stray entry would have no one to rekey or delete it.
    for mut c in tunnel.child_sas.into_iter().filter(|c| spis.contains(&c.child.spi_in)) {
        let margin = adjust(&mut c);
        child_sas.restore(&connection, &c, margin);
        installed += 1;
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::sync::Arc;

    use vpngw_crypto::FastRng;
    use vpngw_dataplane::sa_table::SaTable;
    use vpngw_ike::Event;
    use vpngw_ike::testing::{Pair, configs, engine_config};

    use super::*;

    /// A tunnel up in the in-memory pair, A's child SAs published into a table that carried
    /// some traffic.
    fn published_pair() -> (Pair, ChildSaPublisher, vpngw_ike::PeerConfig) {
        let (a_cfg, b_cfg) = configs();
        let mut p = Pair::new(a_cfg.clone(), b_cfg, 91);
        p.a.initiate(p.now, "to-b").unwrap();
        p.drive(Duration::from_secs(10));
        let mut publisher = ChildSaPublisher::new(Arc::new(SaTable::new()), None);
        for e in &p.a_events {
            match e {
                Event::ChildSaEstablished { peer, child, .. } => publisher.established(peer, child),
                Event::ChildSaActive { spi_out, .. } => assert!(publisher.activate(*spi_out)),
                _ => {}
            }
        }
        (p, publisher, a_cfg)
    }

    #[test]
    fn saved_tunnels_survive_the_file_and_resume_numbering_past_the_save() {
        let (p, publisher, a_cfg) = published_pair();
        let child = p.a.ike_sas()[0].children[0].clone();
        let table = publisher.table();
        let out = table.outbound_by_spi(child.spi_out).unwrap();
        let mut rng = FastRng::from_seed_for_tests(3);
        for _ in 0..5 {
            out.sa.seal(&mut rng, &[0x45; 60], vpngw_esp::NextHeader::IPV4, &mut [0u8; 256]).unwrap();
            out.counters.add(60);
        }
        table.inbound(child.spi_in).unwrap().sa.replay_window().commit(7).unwrap();

        let saved = collect(&p.a, &publisher, p.now);
        assert_eq!(saved.tunnels.len(), 1);
        // SPIs are plain numbers in the file (as when they were bare u32).
        let json = serde_json::to_value(&saved).unwrap();
        let tunnel = &json["tunnels"][0];
        assert_eq!(tunnel["child_sas"][0]["child"]["spi_in"], serde_json::json!(child.spi_in.get()));
        assert_eq!(tunnel["child_sas"][0]["child"]["spi_out"], serde_json::json!(child.spi_out.get()));
        assert_eq!(tunnel["ike"]["children"][0]["spi_in"], serde_json::json!(child.spi_in.get()));
        let dir = std::env::temp_dir().join(format!("vpngw-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tunnels.json");
        write(&path, &saved).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = read(&path).unwrap();

        // A fresh endpoint and table, as a restarted daemon has.
        let mut endpoint = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(5));
        endpoint.add_peer(a_cfg).unwrap();
        let mut restored_publisher = ChildSaPublisher::new(Arc::new(SaTable::new()), None);
        let restored = restore(back, &mut endpoint, &mut restored_publisher);
        assert_eq!((restored.ike_sas, restored.child_sas, restored.refused.len()), (1, 1, 0));
        let info = &endpoint.ike_sas()[0];
        assert_eq!(info.state, IkeSaState::Established);
        assert_eq!((info.children[0].spi_in, info.children[0].spi_out), (child.spi_in, child.spi_out));
        let table = restored_publisher.table();
        let out = table.outbound_by_spi(child.spi_out).expect("the sending SA sends again");
        assert_eq!(out.sa.sequence_used(), 5 + u64::from(SEQUENCE_MARGIN));
        assert_eq!((out.counters.packets(), out.counters.bytes()), (5, 300));
        let inb = table.inbound(child.spi_in).unwrap();
        assert_eq!(inb.sa.replay_window().highest(), 7);
        assert!(inb.sa.replay_window().check(7).is_err(), "the highest number received is not taken twice");

        // Others may not read a file of keys.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(SavedTunnelsError::Permissions { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A file of another version, or not ours at all, is refused with its name.
        std::fs::write(&path, br#"{"format":99,"saved_at_unix_ms":0,"tunnels":[]}"#).unwrap();
        assert!(matches!(read(&path), Err(SavedTunnelsError::Version { found: 99, .. })));
        std::fs::write(&path, b"[1,2]").unwrap();
        let e = read(&path).err().unwrap().to_string();
        assert!(e.contains("tunnels.json") && e.contains("not a saved-tunnels file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tunnel_whose_connection_is_gone_is_refused_and_installs_nothing() {
        let (p, publisher, _) = published_pair();
        let saved = collect(&p.a, &publisher, p.now);
        let mut endpoint = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(5));
        let mut fresh = ChildSaPublisher::new(Arc::new(SaTable::new()), None);
        let restored = restore(saved, &mut endpoint, &mut fresh);
        assert_eq!((restored.ike_sas, restored.child_sas), (0, 0));
        assert_eq!(restored.refused.len(), 1);
        assert!(restored.refused[0].1.contains("to-b"), "{:?}", restored.refused);
        assert!(fresh.table().inbound_all().is_empty());
    }
}
