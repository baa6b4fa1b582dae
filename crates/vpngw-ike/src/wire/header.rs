//! The 28-byte ISAKMP header (RFC 2408 s.3.1).

use super::error::WireError;
use super::numbers::{ExchangeType, PayloadType};
use super::reader::Reader;

pub const HEADER_LEN: usize = 28;
/// Major version 1, minor 0.
pub const VERSION_1_0: u8 = 0x10;
/// Everything after the header is encrypted.
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// The commit bit (RFC 2408 s.3.1): never set by us, ignored on receive (strongSwan does the same).
pub const FLAG_COMMIT: u8 = 0x02;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsakmpHeader {
    pub initiator_cookie: [u8; 8],
    pub responder_cookie: [u8; 8],
    pub next_payload: PayloadType,
    pub version: u8,
    pub exchange: ExchangeType,
    pub flags: u8,
    pub message_id: u32,
    /// Total message length, header included.
    pub length: u32,
}

impl IsakmpHeader {
    /// Parses and checks the header of a datagram: major version 1, length within the datagram.
    pub fn parse(datagram: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(datagram);
        let initiator_cookie = r.array::<8>("initiator cookie")?;
        let responder_cookie = r.array::<8>("responder cookie")?;
        let next_payload = PayloadType(r.u8("next payload")?);
        let version = r.u8("version")?;
        let exchange = ExchangeType(r.u8("exchange type")?);
        let flags = r.u8("flags")?;
        let message_id = r.u32("message id")?;
        let length = r.u32("length")?;
        if version >> 4 != 1 {
            return Err(WireError::Version(version));
        }
        if (length as usize) < HEADER_LEN || length as usize > datagram.len() {
            return Err(WireError::BadLength { what: "ISAKMP header length", len: length as usize });
        }
        Ok(Self { initiator_cookie, responder_cookie, next_payload, version, exchange, flags, message_id, length })
    }

    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator_cookie);
        out.extend_from_slice(&self.responder_cookie);
        out.push(self.next_payload.0);
        out.push(self.version);
        out.push(self.exchange.0);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let h = IsakmpHeader {
            initiator_cookie: [1; 8],
            responder_cookie: [2; 8],
            next_payload: PayloadType::SA,
            version: VERSION_1_0,
            exchange: ExchangeType::IDENTITY_PROTECTION,
            flags: FLAG_ENCRYPTED,
            message_id: 0xdeadbeef,
            length: 28,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(IsakmpHeader::parse(&b).unwrap(), h);
        let mut bad = b.clone();
        bad[17] = 0x20; // IKEv2
        assert_eq!(IsakmpHeader::parse(&bad), Err(WireError::Version(0x20)));
        let mut long = b.clone();
        long[27] = 29;
        assert!(matches!(IsakmpHeader::parse(&long), Err(WireError::BadLength { .. })));
        assert!(matches!(IsakmpHeader::parse(&b[..27]), Err(WireError::Truncated { .. })));
    }
}
