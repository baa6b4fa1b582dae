//! The security policy database: which traffic must be protected, from the configuration.
//!
//! The SA table answers "which SA seals this packet"; the SPD answers the question behind it,
//! "must this packet be protected at all": a packet a policy covers but no SA does yet is
//! dropped as `no_sa` (and, for on-traffic connections, starts a negotiation); a packet no
//! policy covers is dropped as `no_policy`. Nothing is ever forwarded in clear.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::sa_table::{NetIndex, Selectors};

#[derive(Clone, Debug)]
pub struct Policy {
    pub selectors: Selectors,
    pub connection: Arc<str>,
}

#[derive(Clone, Debug, Default)]
pub struct Spd {
    index: NetIndex<Policy>,
}

impl Spd {
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut index = NetIndex::default();
        for p in policies {
            index.insert(p.selectors.remote, p);
        }
        Self { index }
    }

    pub fn lookup(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<&Policy> {
        self.index.lookup(dst, |p| p.selectors.local.contains(src))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.index.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa_table::Ipv4Net;

    fn p(local: &str, remote: &str, conn: &str) -> Policy {
        let net = |s: &str| {
            let (a, l) = s.split_once('/').unwrap_or((s, "32"));
            Ipv4Net { addr: a.parse().unwrap_or(Ipv4Addr::UNSPECIFIED), prefix: l.parse().unwrap_or(32) }
        };
        Policy { selectors: Selectors { local: net(local), remote: net(remote) }, connection: conn.into() }
    }

    #[test]
    fn longest_prefix_wins_and_source_must_match() {
        let spd = Spd::new([
            p("10.1.0.0/24", "10.2.0.0/16", "wide"),
            p("10.1.0.0/24", "10.2.5.0/24", "narrow"),
            p("10.9.0.0/24", "10.2.0.0/16", "other-src"),
        ]);
        let hit =
            |s: [u8; 4], d: [u8; 4]| spd.lookup(Ipv4Addr::from(s), Ipv4Addr::from(d)).map(|p| p.connection.to_string());
        assert_eq!(hit([10, 1, 0, 5], [10, 2, 5, 9]).as_deref(), Some("narrow"));
        assert_eq!(hit([10, 1, 0, 5], [10, 2, 6, 9]).as_deref(), Some("wide"));
        assert_eq!(hit([10, 9, 0, 5], [10, 2, 6, 9]).as_deref(), Some("other-src"));
        assert_eq!(hit([10, 7, 0, 5], [10, 2, 6, 9]), None, "source in no local network");
        assert_eq!(hit([10, 1, 0, 5], [10, 3, 0, 1]), None);
        assert_eq!(spd.len(), 3);
    }
}
