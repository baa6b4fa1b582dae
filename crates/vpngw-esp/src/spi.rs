//! [`Spi`]: the Security Parameter Index of an ESP SA (RFC 4303 section 2.1).

use core::fmt;

/// The Security Parameter Index of an IPsec (ESP) SA: the 32-bit number that, with the
/// destination, names an SA on the wire.
///
/// A newtype rather than a bare `u32` so that a signature says what the number is (not a
/// sequence number, a byte count or an IKE message id), and so that every log line, status
/// view and error renders it the same way: 8 lowercase hex digits (`{:08x}`), for both
/// `Display` and `Debug`. On the wire it is big-endian ([`Spi::to_be_bytes`],
/// [`Spi::from_be_bytes`]); with the `serde` feature it is a transparent `u32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct Spi(u32);

impl Spi {
    /// The SPI with this value.
    pub const fn new(value: u32) -> Self {
        Self(value)
    }

    /// The highest value reserved by IANA (RFC 4303 s.2.1: 1-255 reserved, 0 for local use):
    /// never allocated, never accepted from a peer.
    pub const RESERVED_MAX: u32 = 255;

    /// Whether this SPI is one no SA may use ([`Spi::RESERVED_MAX`]).
    pub const fn is_reserved(self) -> bool {
        self.0 <= Self::RESERVED_MAX
    }

    /// The value as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The SPI as it is on the wire (network byte order).
    pub const fn to_be_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    /// The SPI from its wire form (network byte order).
    pub const fn from_be_bytes(bytes: [u8; 4]) -> Self {
        Self(u32::from_be_bytes(bytes))
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// `{:x}`, `{:08x}`, `{:#x}` as for the number (e.g. tcpdump's `0x%08x` secrets format).
impl fmt::LowerHex for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_eight_lowercase_hex_digits() {
        assert_eq!(Spi::new(0x1a2b).to_string(), "00001a2b");
        assert_eq!(format!("{:?}", Spi::new(0x1a2b)), "00001a2b");
        assert_eq!(Spi::new(0xC0FF_EE01).to_string(), "c0ffee01");
        assert_eq!(format!("{:?}", Spi::new(u32::MAX)), "ffffffff");
        assert_eq!(format!("{:?}", Some(Spi::new(0))), "Some(00000000)");
        assert_eq!(format!("0x{:08x}", Spi::new(0x1a2b)), "0x00001a2b");
    }

    #[test]
    fn round_trips_through_the_wire_form() {
        let spi = Spi::new(0x1122_3344);
        assert_eq!(spi.to_be_bytes(), [0x11, 0x22, 0x33, 0x44]);
        assert_eq!(Spi::from_be_bytes(spi.to_be_bytes()), spi);
        assert_eq!(spi.get(), 0x1122_3344);
        assert!(Spi::new(1) < Spi::new(0x100));
    }
}
