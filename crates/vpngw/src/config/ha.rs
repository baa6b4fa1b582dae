//! The `[ha]` section: dual-server hot backup (docs/high-availability.md). Without it the
//! gateway runs alone and is always active.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::walker::{NAME_CHARS, Walker, valid_name};

/// Where outbound ESP sequence numbers resume after a takeover ([`Ha::sequence_jump`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceJump {
    /// Past the last synced number by what the SA could have sent since: its rate between the
    /// last two syncs, times the time since the last one plus a sync interval, doubled; at
    /// least [`SequenceJump::AUTO_FLOOR`].
    Auto,
    /// Past the last synced number by this many.
    Fixed(u32),
}

impl SequenceJump {
    pub const AUTO_FLOOR: u32 = 1 << 16;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ha {
    /// This server's name and its partner's (checked by the sync channel after its handshake).
    pub node_name: String,
    pub partner_name: String,
    /// The sync channel: where we accept and where the partner accepts (TCP).
    pub listen: SocketAddr,
    pub partner: SocketAddr,
    /// The sync channel's pre-shared key: 64 hexadecimal characters, mode 0600.
    pub key_file: PathBuf,
    /// How often changed state and sequence numbers go to the standby.
    pub sync_interval: Duration,
    /// No word from the partner for this long: the session is over (the standby is out of sync).
    pub partner_timeout: Duration,
    pub sequence_jump: SequenceJump,
    /// keepalived's `track_file`: vpngw writes 0 while it may hold the role and 1 to give it
    /// up at once (graceful handover, stop); keepalived watches it (inotify) and goes to FAULT.
    pub track_file: PathBuf,
}

pub const DEFAULT_TRACK_FILE: &str = "/run/vpngw/ha-track";

pub const DEFAULT_SYNC_INTERVAL_MS: i64 = 100;
pub const DEFAULT_PARTNER_TIMEOUT_MS: i64 = 1000;

impl Walker {
    pub(super) fn ha(&mut self, t: &Table) -> Option<Ha> {
        self.unknown_keys(
            "ha.",
            t,
            &[
                "node_name",
                "partner_name",
                "listen",
                "partner",
                "key_file",
                "sync_interval_ms",
                "partner_timeout_ms",
                "sequence_jump",
                "track_file",
            ],
        );
        let name = |w: &mut Self, key: &str| {
            let full = format!("ha.{key}");
            match w.string(&full, t, key) {
                Some(n) if valid_name(&n) => Some(n),
                Some(_) => {
                    w.problem(&full, t.get(key), format!("1-64 characters: {NAME_CHARS}"));
                    None
                }
                None => {
                    if !t.contains_key(key) {
                        w.problem(&full, None, "required: this server's and its partner's names");
                    }
                    None
                }
            }
        };
        let node_name = name(self, "node_name");
        let partner_name = name(self, "partner_name");
        if let (Some(a), Some(b)) = (&node_name, &partner_name)
            && a == b
        {
            self.problem("ha.partner_name", t.get("partner_name"), "must differ from node_name");
        }
        let listen = self.socket_address(t, "listen");
        let partner = self.socket_address(t, "partner");
        if let (Some(l), Some(p)) = (listen, partner)
            && l == p
        {
            self.problem("ha.partner", t.get("partner"), "must differ from listen (the partner's sync address)");
        }
        let key_file = match self.string("ha.key_file", t, "key_file") {
            Some(p) => {
                let path = self.base.join(p);
                self.secret_file("ha.key_file", t.get("key_file"), &path);
                self.sync_key_text("ha.key_file", t.get("key_file"), &path);
                Some(path)
            }
            None => {
                if !t.contains_key("key_file") {
                    self.problem(
                        "ha.key_file",
                        None,
                        "required: a file holding the sync channel's key (64 hex digits)",
                    );
                }
                None
            }
        };
        let sync_interval =
            self.integer("ha.sync_interval_ms", t, "sync_interval_ms", 10, 1000).unwrap_or(DEFAULT_SYNC_INTERVAL_MS);
        let partner_timeout = self
            .integer("ha.partner_timeout_ms", t, "partner_timeout_ms", 200, 60_000)
            .unwrap_or(DEFAULT_PARTNER_TIMEOUT_MS);
        if partner_timeout < 2 * sync_interval {
            self.problem(
                "ha.partner_timeout_ms",
                t.get("partner_timeout_ms"),
                format!("must be at least twice sync_interval_ms ({sync_interval})"),
            );
        }
        let sequence_jump = match t.get("sequence_jump") {
            None => SequenceJump::Auto,
            Some(Value::String(s)) if s == "auto" => SequenceJump::Auto,
            Some(Value::Integer(n)) if (1024..=1 << 30).contains(n) => SequenceJump::Fixed(*n as u32),
            Some(v) => {
                self.problem("ha.sequence_jump", Some(v), "must be \"auto\" or an integer between 1024 and 2^30");
                SequenceJump::Auto
            }
        };
        let track_file = self.string("ha.track_file", t, "track_file").unwrap_or(DEFAULT_TRACK_FILE.into());
        let track_file = self.base.join(track_file);
        Some(Ha {
            track_file,
            node_name: node_name?,
            partner_name: partner_name?,
            listen: listen?,
            partner: partner?,
            key_file: key_file?,
            sync_interval: Duration::from_millis(sync_interval as u64),
            partner_timeout: Duration::from_millis(partner_timeout as u64),
            sequence_jump,
        })
    }

    fn socket_address(&mut self, t: &Table, name: &str) -> Option<SocketAddr> {
        let key = format!("ha.{name}");
        match self.string(&key, t, name) {
            Some(s) => s.parse::<SocketAddr>().ok().or_else(|| {
                self.problem(&key, t.get(name), "must be ADDRESS:PORT, e.g. \"192.0.2.1:9722\"");
                None
            }),
            None => {
                if !t.contains_key(name) {
                    self.problem(&key, None, "required (ADDRESS:PORT of the sync channel)");
                }
                None
            }
        }
    }

    /// The key file, when it can be read, holds 64 hexadecimal digits (its text is never shown).
    fn sync_key_text(&mut self, key: &str, value: Option<&Value>, path: &std::path::Path) {
        let Ok(text) = std::fs::read_to_string(path) else { return };
        let digits = text.trim();
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.problem(key, value, "must hold 64 hexadecimal digits (32 bytes; e.g. `openssl rand -hex 32`)");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::super::tests::MINIMAL;
    use super::super::{Config, ParseError};
    use super::*;

    fn key_dir(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vpngw-ha-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ha.key");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

    #[test]
    fn an_ha_section_parses_with_defaults() {
        let dir = key_dir("ok", KEY, 0o600);
        let text = format!(
            "{MINIMAL}\n[ha]\nnode_name = \"a\"\npartner_name = \"b\"\nlisten = \"192.0.2.1:9722\"\n\
             partner = \"192.0.2.2:9722\"\nkey_file = \"ha.key\"\n"
        );
        let c = Config::parse(&text, &dir).unwrap();
        let ha = c.ha.unwrap();
        assert_eq!((ha.node_name.as_str(), ha.partner_name.as_str()), ("a", "b"));
        assert_eq!(ha.sync_interval, Duration::from_millis(100));
        assert_eq!(ha.partner_timeout, Duration::from_secs(1));
        assert_eq!(ha.sequence_jump, SequenceJump::Auto);
        assert_eq!(ha.key_file, dir.join("ha.key"));
        assert!(Config::parse(MINIMAL, Path::new(".")).unwrap().ha.is_none(), "no [ha]: alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_ha_problem_is_listed_with_its_key_and_no_key_material() {
        let dir = key_dir("bad", "0011aabbcc-not-a-key-0011aabbcc", 0o644);
        let text = format!(
            "{MINIMAL}\n[ha]\nnode_name = \"a\"\npartner_name = \"a\"\nlisten = \"192.0.2.1\"\n\
             key_file = \"ha.key\"\nsync_interval_ms = 600\npartner_timeout_ms = 1000\nsequence_jump = 5\ncolor = 1\n"
        );
        let Err(ParseError::Invalid(problems)) = Config::parse(&text, &dir) else { panic!("accepted") };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "ha.partner_name",
            "ha.listen",
            "ha.partner",
            "ha.key_file",
            "ha.partner_timeout_ms",
            "ha.sequence_jump",
            "ha.color",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let shown: String = problems.iter().map(ToString::to_string).collect();
        assert!(!shown.contains("0011aabbcc"), "key material in a problem: {shown}");
        assert!(shown.contains("64 hexadecimal digits") && shown.contains("chmod"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
