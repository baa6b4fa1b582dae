//! `[connection.ike]` (phase 1, with the identities) and `[connection.ipsec]` (phase 2): the
//! algorithms, lifetimes and identities a connection negotiates with, and the warnings about
//! weak but accepted choices.

use std::net::Ipv4Addr;
use std::time::Duration;

use toml::Table;
use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm, IntegrityAlgorithm};
use vpngw_ike::{ExchangeMode, Identity, Phase1Policy, Phase2Policy};

use super::walker::Walker;

/// What a connection's `ike` and `ipsec` tables settle. An identity is None when it is invalid
/// or defaults to an address that is missing (the problem is recorded there).
pub(super) struct Negotiation {
    pub(super) mode: ExchangeMode,
    pub(super) phase1: Phase1Policy,
    pub(super) local_id: Option<Identity>,
    pub(super) remote_id: Option<Identity>,
    pub(super) phase2: Phase2Policy,
}

impl Walker {
    /// The connection's `ike` and `ipsec` tables (both optional) under `key`; `public` and
    /// `remote` are the default identities.
    pub(super) fn negotiation(
        &mut self,
        key: &str,
        t: &Table,
        public: Option<Ipv4Addr>,
        remote: Option<Ipv4Addr>,
    ) -> Negotiation {
        let empty = Table::new();
        let ike = self.table(&format!("{key}.ike"), t, "ike").unwrap_or(&empty);
        let ipsec = self.table(&format!("{key}.ipsec"), t, "ipsec").unwrap_or(&empty);
        let (phase1, mode, local_id, remote_id) = self.ike(&format!("{key}.ike"), ike, public, remote);
        let phase2 = self.ipsec(&format!("{key}.ipsec"), ipsec);
        Negotiation { mode, phase1, local_id, remote_id, phase2 }
    }

    fn ike(
        &mut self,
        key: &str,
        t: &Table,
        public: Option<Ipv4Addr>,
        remote: Option<Ipv4Addr>,
    ) -> (Phase1Policy, ExchangeMode, Option<Identity>, Option<Identity>) {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &[
                "version",
                "authentication_method",
                "encryption",
                "authentication",
                "mode",
                "local_id",
                "remote_id",
                "dh_group",
                "lifetime_seconds",
            ],
        );
        self.word(&format!("{key}.version"), t, "version", (), &[("v1", ())]);
        self.word(&format!("{key}.authentication_method"), t, "authentication_method", (), &[("pre-shared-key", ())]);
        let d = Phase1Policy::default();
        let encryption = self.word(&format!("{key}.encryption"), t, "encryption", d.encryption, &cipher_words());
        let hash = self.word(
            &format!("{key}.authentication"),
            t,
            "authentication",
            d.hash,
            &[("md5", HashAlgorithm::Md5), ("sha1", HashAlgorithm::Sha1)],
        );
        let mode = self.word(
            &format!("{key}.mode"),
            t,
            "mode",
            ExchangeMode::Main,
            &[("main", ExchangeMode::Main), ("aggressive", ExchangeMode::Aggressive)],
        );
        let dh_group = self.word(&format!("{key}.dh_group"), t, "dh_group", d.dh_group, &group_words());
        let lifetime = self
            .integer(&format!("{key}.lifetime_seconds"), t, "lifetime_seconds", 60, 604_800)
            .map_or(d.lifetime, |s| Duration::from_secs(s as u64));
        let local_id = self.identity(&format!("{key}.local_id"), t, "local_id", public);
        let remote_id = self.identity(&format!("{key}.remote_id"), t, "remote_id", remote);
        if encryption.spec().weak {
            self.warn(
                &format!("{key}.encryption"),
                encryption.name(),
                "DES is weak (56-bit key); prefer aes-128 or better where the peer allows",
            );
        }
        if hash.spec().weak {
            self.warn(
                &format!("{key}.authentication"),
                hash.name(),
                "MD5 is weak; prefer sha1 or better where the peer allows",
            );
        }
        if dh_group.spec().weak {
            self.warn(
                &format!("{key}.dh_group"),
                dh_group.name(),
                "groups 1 and 2 are weak (768/1024-bit); prefer dh14 or dh24",
            );
        }
        if mode == ExchangeMode::Aggressive {
            self.warn(
                &format!("{key}.mode"),
                "aggressive",
                "aggressive mode with a pre-shared key exposes a hash of the key to offline guessing",
            );
        }
        (Phase1Policy { encryption, hash, dh_group, lifetime }, mode, local_id, remote_id)
    }

    fn ipsec(&mut self, key: &str, t: &Table) -> Phase2Policy {
        self.unknown_keys(
            &format!("{key}."),
            t,
            &["encryption", "authentication", "pfs", "lifetime_seconds", "lifetime_kilobytes"],
        );
        let d = Phase2Policy::default();
        let encryption = self.word(&format!("{key}.encryption"), t, "encryption", d.encryption, &cipher_words());
        let integrity = self.word(
            &format!("{key}.authentication"),
            t,
            "authentication",
            d.integrity,
            &[("md5", IntegrityAlgorithm::HmacMd5_96), ("sha1", IntegrityAlgorithm::HmacSha1_96)],
        );
        let mut pfs_words: Vec<(&str, Option<DhGroup>)> = vec![("disable", None)];
        pfs_words.extend(group_words().into_iter().map(|(w, g)| (w, Some(g))));
        let pfs = self.word(&format!("{key}.pfs"), t, "pfs", None, &pfs_words);
        let lifetime_seconds = self
            .integer(&format!("{key}.lifetime_seconds"), t, "lifetime_seconds", 30, 604_800)
            .map_or(d.lifetime_seconds, |s| s as u32);
        let lifetime_kilobytes = self
            .integer(&format!("{key}.lifetime_kilobytes"), t, "lifetime_kilobytes", 0, 1 << 40)
            .map_or(d.lifetime_kilobytes, |k| k as u64);
        if encryption.spec().weak {
            self.warn(&format!("{key}.encryption"), encryption.name(), "DES is weak (56-bit key)");
        }
        if integrity.spec().weak {
            self.warn(&format!("{key}.authentication"), integrity.name(), "HMAC-MD5 is weak; prefer sha1");
        }
        if let Some(g) = pfs.filter(|g| g.spec().weak) {
            self.warn(&format!("{key}.pfs"), g.name(), "groups 1 and 2 are weak");
        }
        Phase2Policy { encryption, integrity, pfs, lifetime_seconds, lifetime_kilobytes }
    }

    fn identity(&mut self, key: &str, t: &Table, name: &str, default_ip: Option<Ipv4Addr>) -> Option<Identity> {
        let s = self.string(key, t, name).unwrap_or_else(|| "ip".into());
        if s == "ip" {
            return default_ip.map(Identity::Ipv4);
        }
        if let Some(a) = s.strip_prefix("ip:") {
            return match a.parse() {
                Ok(a) => Some(Identity::Ipv4(a)),
                Err(_) => {
                    self.problem(key, t.get(name), "\"ip:ADDRESS\" needs an IPv4 address");
                    None
                }
            };
        }
        if let Some(n) = s.strip_prefix("fqdn:") {
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if ok {
                return Some(Identity::Fqdn(n.to_string()));
            }
            self.problem(key, t.get(name), "\"fqdn:NAME\" needs a DNS name (letters, digits, '-', dots)");
            return None;
        }
        self.problem(key, t.get(name), "must be \"ip\", \"ip:ADDRESS\" or \"fqdn:NAME\"");
        None
    }
}

fn cipher_words() -> Vec<(&'static str, EncryptionAlgorithm)> {
    EncryptionAlgorithm::ALL.iter().map(|a| (a.name(), *a)).collect()
}

fn group_words() -> Vec<(&'static str, DhGroup)> {
    DhGroup::ALL.iter().map(|g| (g.name(), *g)).collect()
}
