//! Why a message could not be parsed: [`WireError`], shared by every file of the codec.

use super::numbers::PayloadType;

/// Why a message could not be parsed. Drops are counted by [`WireError::label`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated: {what} needs {needed} bytes, {available} left")]
    Truncated { what: &'static str, needed: usize, available: usize },
    #[error("bad length in {what}: {len}")]
    BadLength { what: &'static str, len: usize },
    #[error("unsupported ISAKMP version {0:#04x}")]
    Version(u8),
    #[error("trailing bytes after the last payload of an unencrypted message ({0} bytes)")]
    TrailingData(usize),
    #[error("payload {0} not allowed here")]
    UnexpectedPayload(PayloadType),
    #[error("missing {0} payload")]
    MissingPayload(PayloadType),
    #[error("bad {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl WireError {
    /// Stable label for counters and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadLength { .. } => "bad_length",
            Self::Version(_) => "version",
            Self::TrailingData(_) => "trailing_data",
            Self::UnexpectedPayload(_) => "unexpected_payload",
            Self::MissingPayload(_) => "missing_payload",
            Self::Invalid { .. } => "invalid",
        }
    }
}
