//! Key material that wipes itself and never prints.

use core::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes (keys, SKEYIDs, DH shared secrets, PSKs).
///
/// Zeroized on drop. `Debug` shows only the length, so a secret that ends up in a log line,
/// a status answer or an error message reveals nothing. There is deliberately no `Display`.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes` (no copy is left behind by this call).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies `bytes`; the caller stays responsible for wiping its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The secret itself. Named loudly so that every use is easy to audit.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends bytes (used by key expansion, which builds keys block by block).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        // Reserve first so that a reallocation does not leave an unwiped copy behind.
        if self.0.capacity() - self.0.len() < bytes.len() {
            let mut grown = Vec::with_capacity((self.0.len() + bytes.len()).max(2 * self.0.capacity()));
            grown.extend_from_slice(&self.0);
            self.0.zeroize();
            self.0 = grown;
        }
        self.0.extend_from_slice(bytes);
    }

    /// Shortens the secret to `len` bytes, wiping what is cut off.
    pub fn truncate(&mut self, len: usize) {
        if len < self.0.len() {
            self.0[len..].zeroize();
            self.0.truncate(len);
        }
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted, {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = SecretBytes::from_slice(b"lab-psk-0123456789abcdef");
        let shown = format!("{s:?} {:#?}", s);
        assert!(!shown.contains("lab-psk"), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(shown.contains("24 bytes"));
    }

    #[test]
    fn extend_and_truncate_keep_contents() {
        let mut s = SecretBytes::from_slice(&[1, 2, 3]);
        for i in 0..100u8 {
            s.extend_from_slice(&[i]);
        }
        assert_eq!(s.len(), 103);
        assert_eq!(&s.expose()[..4], &[1, 2, 3, 0]);
        s.truncate(5);
        assert_eq!(s.expose(), &[1, 2, 3, 0, 1]);
    }
}
