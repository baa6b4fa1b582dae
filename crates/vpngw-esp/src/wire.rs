//! ESP on the wire (RFC 4303 s.2): a checked, zero-copy view and the next-header numbers.
//!
//! ```text
//! 0        4        8            8+iv                          len-icv   len
//! | SPI    | Seq    | IV         | ciphertext: payload | padding | pad len | next hdr | ICV |
//! ```
//! The caller adds (on send) and strips (on receive) the outer IP or UDP header.

use crate::error::OpenError;
use crate::spi::Spi;

/// SPI and sequence number.
pub const ESP_HEADER_LEN: usize = 8;
/// Pad Length and Next Header, at the end of the encrypted part.
pub const ESP_TRAILER_LEN: usize = 2;

/// The ESP Next Header field. Tunnel mode carries whole IP packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NextHeader(pub u8);

impl NextHeader {
    /// IP-in-IP: an inner IPv4 packet.
    pub const IPV4: Self = Self(4);
    /// An inner IPv6 packet.
    pub const IPV6: Self = Self(41);
    /// A dummy packet (RFC 4303 s.2.6, traffic flow confidentiality): to be dropped silently.
    pub const NO_NEXT_HEADER: Self = Self(59);

    /// The tunnel-mode next header for an inner IP packet, from its version nibble.
    pub fn for_inner_packet(packet: &[u8]) -> Option<Self> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Some(Self::IPV4),
            Some(6) => Some(Self::IPV6),
            _ => None,
        }
    }

    /// Whether an SA in tunnel mode carries this next header.
    pub fn is_tunnel_mode(self) -> bool {
        self == Self::IPV4 || self == Self::IPV6
    }
}

/// The SPI of an ESP packet, if it is long enough to have one (for the SA lookup that comes
/// before any cryptography).
pub fn peek_spi(packet: &[u8]) -> Option<Spi> {
    let bytes: [u8; 4] = packet.get(0..4)?.try_into().ok()?;
    Some(Spi::from_be_bytes(bytes))
}

/// A view of an ESP packet whose lengths have been checked against an SA's sizes: once built,
/// no accessor can panic.
#[derive(Debug, Clone, Copy)]
pub struct EspPacket<T> {
    buffer: T,
    iv_len: usize,
    icv_len: usize,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// Checks that `buffer` can be an ESP packet of an SA with these sizes: header, IV, at least
    /// one cipher block holding the trailer, and the ICV; the encrypted part block-aligned.
    pub fn new_checked(buffer: T, iv_len: usize, block_len: usize, icv_len: usize) -> Result<Self, OpenError> {
        let len = buffer.as_ref().len();
        let min = ESP_HEADER_LEN + iv_len + block_len.max(ESP_TRAILER_LEN) + icv_len;
        if len < min {
            return Err(OpenError::Truncated);
        }
        let encrypted = len - ESP_HEADER_LEN - iv_len - icv_len;
        if block_len == 0 || encrypted % block_len != 0 {
            return Err(OpenError::BadLength);
        }
        Ok(Self { buffer, iv_len, icv_len })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn spi(&self) -> Spi {
        Spi::from_be_bytes([self.bytes()[0], self.bytes()[1], self.bytes()[2], self.bytes()[3]])
    }

    pub fn sequence(&self) -> u32 {
        u32::from_be_bytes([self.bytes()[4], self.bytes()[5], self.bytes()[6], self.bytes()[7]])
    }

    pub fn iv(&self) -> &[u8] {
        &self.bytes()[ESP_HEADER_LEN..ESP_HEADER_LEN + self.iv_len]
    }

    /// Offset of the encrypted part.
    pub fn ciphertext_offset(&self) -> usize {
        ESP_HEADER_LEN + self.iv_len
    }

    /// Offset of the ICV (= length of the authenticated part).
    pub fn icv_offset(&self) -> usize {
        self.bytes().len() - self.icv_len
    }

    /// What the ICV covers: header, IV and ciphertext.
    pub fn authenticated(&self) -> &[u8] {
        &self.bytes()[..self.icv_offset()]
    }

    pub fn icv(&self) -> &[u8] {
        &self.bytes()[self.icv_offset()..]
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_reads_fields_and_checks_lengths() {
        // SPI 0x11223344, seq 5, 16-byte IV, one 16-byte block, 12-byte ICV
        let mut p = vec![0x11, 0x22, 0x33, 0x44, 0, 0, 0, 5];
        p.extend_from_slice(&[0xaa; 16]);
        p.extend_from_slice(&[0xbb; 16]);
        p.extend_from_slice(&[0xcc; 12]);
        let v = EspPacket::new_checked(&p[..], 16, 16, 12).unwrap();
        assert_eq!(v.spi(), Spi::new(0x1122_3344));
        assert_eq!(v.sequence(), 5);
        assert_eq!(v.iv(), &[0xaa; 16]);
        assert_eq!(v.icv(), &[0xcc; 12]);
        assert_eq!(v.authenticated().len(), 40);
        assert_eq!(v.ciphertext_offset(), 24);
        assert_eq!(EspPacket::new_checked(&p[..51], 16, 16, 12).unwrap_err(), OpenError::Truncated);
        p.push(0);
        assert_eq!(EspPacket::new_checked(&p[..], 16, 16, 12).unwrap_err(), OpenError::BadLength);
        assert_eq!(peek_spi(&p), Some(Spi::new(0x1122_3344)));
        assert_eq!(peek_spi(&p[..3]), None);
    }

    #[test]
    fn next_header_from_version_nibble() {
        assert_eq!(NextHeader::for_inner_packet(&[0x45, 0]), Some(NextHeader::IPV4));
        assert_eq!(NextHeader::for_inner_packet(&[0x60]), Some(NextHeader::IPV6));
        assert_eq!(NextHeader::for_inner_packet(&[0x50]), None);
        assert_eq!(NextHeader::for_inner_packet(&[]), None);
        assert!(!NextHeader::NO_NEXT_HEADER.is_tunnel_mode());
    }
}
