//! The channel's pre-shared key: read once from a file, wiped on drop, never printed.

use core::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The 32-byte Noise pre-shared key both nodes hold.
///
/// Zeroized on drop; `Debug` prints `SyncKey(redacted)`; there is no `Display` and no accessor
/// outside this crate, so the key only ever reaches snow.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SyncKey([u8; 32]);

/// Why a key file was refused. No variant carries key material: only the path, the mode and
/// lengths, so an error can be logged as it is.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("sync key {path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("sync key {path}: mode {mode:04o} lets group or others read it (want 0600 or stricter)")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("sync key {path}: expected 64 hex characters, found {found} characters")]
    Length { path: PathBuf, found: usize },
    #[error("sync key {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("sync key {path}: not hexadecimal")]
    NotHex { path: PathBuf },
}

/// A key file is 64 hex characters and a newline; anything much larger is not a key file, and
/// reading it whole would only copy more secrets around.
const MAX_FILE: u64 = 4096;

impl SyncKey {
    /// File holding 64 hex characters (surrounding whitespace allowed). Refused if group/others
    /// can read it (mode & 0o077 != 0), with an error naming the path and mode; errors never
    /// contain key material.
    pub fn from_file(path: &Path) -> Result<SyncKey, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        // Before opening too: opening a FIFO would block until someone writes to it.
        if !std::fs::metadata(path).map_err(io)?.is_file() {
            return Err(KeyError::NotAFile { path: path.to_path_buf() });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        // Checked on the open file, not the path, so a swap between check and read cannot pass.
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile { path: path.to_path_buf() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
        }
        let mut text = Zeroizing::new(Vec::with_capacity(128));
        file.take(MAX_FILE).read_to_end(&mut text).map_err(io)?;
        let trimmed = text.trim_ascii();
        if trimmed.len() != 64 {
            return Err(KeyError::Length { path: path.to_path_buf(), found: trimmed.len() });
        }
        let mut key = SyncKey([0; 32]);
        for (out, pair) in key.0.iter_mut().zip(trimmed.chunks_exact(2)) {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(hi), Some(lo)) => *out = (hi << 4) | lo,
                _ => return Err(KeyError::NotHex { path: path.to_path_buf() }),
            }
        }
        Ok(key)
    }

    pub fn from_bytes(b: [u8; 32]) -> SyncKey {
        SyncKey(b)
    }

    /// For snow only. Named loudly so that every use is easy to audit.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncKey(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const HEX: &str = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";

    fn write_key(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vpngw-sync-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_hex_with_whitespace() {
        let path = write_key("ok", &format!("  {HEX}\n"), 0o600);
        let key = SyncKey::from_file(&path).unwrap();
        assert_eq!(hex::encode(key.expose()), HEX);
        let upper = write_key("upper", &HEX.to_uppercase(), 0o400);
        assert_eq!(SyncKey::from_file(&upper).unwrap().expose(), key.expose());
    }

    #[test]
    fn debug_and_errors_never_show_the_key() {
        let key = SyncKey::from_bytes(hex::decode(HEX).unwrap().try_into().unwrap());
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(format!("{key:?}"), "SyncKey(redacted)");
        assert!(!shown.contains(&HEX[..16]), "{shown}");

        let open = write_key("open", HEX, 0o644);
        let bad_hex = write_key("badhex", &format!("{}zz", &HEX[..62]), 0o600);
        let short = write_key("short", &HEX[..40], 0o600);
        let long = write_key("long", &format!("{HEX}{HEX}"), 0o600);
        let missing = open.with_file_name("missing");
        let dir = open.with_file_name("private-dir");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut errors = Vec::new();
        for path in [&open, &bad_hex, &short, &long, &missing, &dir] {
            errors.push(SyncKey::from_file(path).unwrap_err());
        }
        assert!(matches!(errors[0], KeyError::Permissions { mode: 0o644, .. }));
        assert!(errors[0].to_string().contains("0644"), "{}", errors[0]);
        assert!(errors[0].to_string().contains("open"), "{}", errors[0]);
        assert!(matches!(errors[1], KeyError::NotHex { .. }));
        assert!(matches!(errors[2], KeyError::Length { found: 40, .. }));
        assert!(matches!(errors[3], KeyError::Length { found: 128, .. }));
        assert!(matches!(errors[4], KeyError::Io { .. }));
        assert!(matches!(errors[5], KeyError::NotAFile { .. }), "{}", errors[5]);
        // A FIFO is refused without opening it (opening would block this test forever).
        let fifo = open.with_file_name("fifo");
        let _ = std::fs::remove_file(&fifo);
        if std::process::Command::new("mkfifo").args(["-m", "600"]).arg(&fifo).status().is_ok_and(|s| s.success()) {
            assert!(matches!(SyncKey::from_file(&fifo), Err(KeyError::NotAFile { .. })));
        }
        for e in &errors {
            let text = format!("{e} {e:?}");
            for window in HEX.as_bytes().windows(8) {
                let w = std::str::from_utf8(window).unwrap();
                assert!(!text.to_lowercase().contains(w), "{text} contains {w}");
            }
        }
    }
}
