//! Closed sets of reasons: why a packet could not be opened or sealed.
//!
//! Each reason is one variant, `#[repr(u8)]`, with a stable `as_str()` label for counters, logs
//! and metric labels. Reasons never carry packet bytes or key material.

/// Why an inbound ESP packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum OpenError {
    /// Shorter than header + IV + one block + ICV.
    #[error("truncated: shorter than the smallest ESP packet of this SA")]
    Truncated,
    /// The encrypted part is not a whole number of cipher blocks.
    #[error("bad length: encrypted part is not a multiple of the cipher block")]
    BadLength,
    /// The packet's SPI is not this SA's (a demultiplexing bug upstream).
    #[error("SPI does not belong to this SA")]
    SpiMismatch,
    /// Sequence number already received (inside the window).
    #[error("replayed: sequence number already received")]
    Replayed,
    /// Sequence number left of the window (or zero, which is never sent).
    #[error("too old: sequence number is left of the anti-replay window")]
    TooOld,
    /// Integrity check failed: forged, corrupted, or keyed with another SA's key.
    #[error("ICV mismatch: integrity check failed")]
    IcvMismatch,
    /// Decrypted padding is not 1, 2, 3, ... or longer than the payload (RFC 4303 s.2.4).
    #[error("bad padding: pad bytes or pad length invalid")]
    BadPadding,
    /// Next header is not an inner IPv4 (4) or IPv6 (41) packet.
    #[error("bad next header: not IPv4 or IPv6 in tunnel mode")]
    BadNextHeader,
    /// A dummy packet (next header 59, RFC 4303 s.2.6): authentic, discarded by design.
    #[error("dummy packet (next header 59), discarded")]
    DummyPacket,
}

impl OpenError {
    pub const ALL: [Self; 9] = [
        Self::Truncated,
        Self::BadLength,
        Self::SpiMismatch,
        Self::Replayed,
        Self::TooOld,
        Self::IcvMismatch,
        Self::BadPadding,
        Self::BadNextHeader,
        Self::DummyPacket,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// Stable label for counters and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadLength => "bad_length",
            Self::SpiMismatch => "spi_mismatch",
            Self::Replayed => "replay",
            Self::TooOld => "too_old",
            Self::IcvMismatch => "icv",
            Self::BadPadding => "bad_padding",
            Self::BadNextHeader => "bad_next_header",
            Self::DummyPacket => "dummy",
        }
    }

    /// Index for per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an outbound packet could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum SealError {
    /// The 32-bit sequence space of this SA is used up; it must be replaced (IKEv1 has no ESN,
    /// and RFC 4303 s.3.3.3 forbids cycling the counter).
    #[error("sequence numbers exhausted: the SA must be rekeyed")]
    SequenceExhausted,
    /// Not enough room before the payload for SPI, sequence and IV, or after it for padding,
    /// trailer and ICV.
    #[error("buffer too small: not enough headroom or tailroom")]
    NoRoom,
    /// The payload range lies outside the buffer.
    #[error("payload range outside the buffer")]
    BadRange,
    /// Tunnel mode carries IPv4 (4), IPv6 (41) or dummy (59) payloads only.
    #[error("next header not allowed in tunnel mode")]
    BadNextHeader,
}

impl SealError {
    pub const ALL: [Self; 4] = [Self::SequenceExhausted, Self::NoRoom, Self::BadRange, Self::BadNextHeader];
    pub const COUNT: usize = Self::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SequenceExhausted => "seq_exhausted",
            Self::NoRoom => "no_room",
            Self::BadRange => "bad_range",
            Self::BadNextHeader => "bad_next_header",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why an SA could not be built from its parameters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error(transparent)]
    Crypto(#[from] vpngw_crypto::CryptoError),
    #[error("replay window {size} out of range ({min}..={max})")]
    ReplayWindow { size: u32, min: u32, max: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indices_dense() {
        for (i, r) in OpenError::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in SealError::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut labels: Vec<_> = OpenError::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), OpenError::COUNT);
    }
}
