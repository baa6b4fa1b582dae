//! What both phases' proposal handling shares: the differences named when nothing fits, and
//! reading a transform's attributes.

use core::fmt;

use vpngw_crypto::EncryptionAlgorithm;

use crate::wire::{Attribute, LIFE_KILOBYTES, LIFE_SECONDS, TransformPayload};

/// One differing parameter: its name (as in the configuration), what the peer offered, and what
/// we are configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub parameter: &'static str,
    pub offered: String,
    pub configured: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: peer offered {}, configured {}", self.parameter, self.offered, self.configured)
    }
}

/// Why no offered proposal was acceptable: the differences of the closest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub differences: Vec<Difference>,
}

impl Mismatch {
    /// Only the PFS group differs (the diagnosis reports this as its own reason).
    pub fn is_pfs_only(&self) -> bool {
        !self.differences.is_empty() && self.differences.iter().all(|d| d.parameter == "pfs")
    }

    /// Only the encapsulation mode differs.
    pub fn is_mode_only(&self) -> bool {
        !self.differences.is_empty() && self.differences.iter().all(|d| d.parameter == "encapsulation_mode")
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.differences.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

pub(super) fn attr(t: &TransformPayload, kind: u16) -> Option<u64> {
    t.attribute(kind).and_then(Attribute::as_u64)
}

/// Life type/duration pairs in attribute order: (seconds, kilobytes).
pub(super) fn lifetimes(t: &TransformPayload, type_kind: u16, duration_kind: u16) -> (Option<u64>, Option<u64>) {
    let (mut seconds, mut kilobytes) = (None, None);
    let mut current = None;
    for a in &t.attributes {
        if a.kind == type_kind {
            current = a.as_u64();
        } else if a.kind == duration_kind {
            match current {
                Some(LIFE_SECONDS) => seconds = a.as_u64(),
                Some(LIFE_KILOBYTES) => kilobytes = a.as_u64(),
                _ => {}
            }
        }
    }
    (seconds, kilobytes)
}

pub(super) fn cipher_words(alg: Option<EncryptionAlgorithm>, id: Option<u64>, key_len: Option<u64>) -> String {
    match (alg, id, key_len) {
        (Some(a), _, _) => a.name().to_string(),
        (None, Some(id), Some(k)) => format!("cipher {id} with {k}-bit key"),
        (None, Some(id), None) => format!("cipher {id}"),
        (None, None, _) => "no cipher".to_string(),
    }
}
