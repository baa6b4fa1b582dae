//! SA, Proposal and Transform payloads and their attributes (RFC 2408 s.3.4-3.6, s.3.3).

use super::error::WireError;
use super::numbers::{PayloadType, ProtocolId};
use super::reader::Reader;

/// A data attribute: basic (TV, 2-byte value) or variable (TLV).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub kind: u16,
    pub value: Vec<u8>,
    /// Encoded in the short form (AF bit set, exactly 2 value bytes).
    pub basic: bool,
}

impl Attribute {
    /// A numeric attribute in the shortest form that holds it: basic up to 0xFFFF, else
    /// variable with 4 (or 8) value bytes, as strongSwan and the RFC examples encode lifetimes.
    pub fn number(kind: u16, value: u64) -> Self {
        if value <= 0xffff {
            Self { kind, value: (value as u16).to_be_bytes().to_vec(), basic: true }
        } else if value <= 0xffff_ffff {
            Self { kind, value: (value as u32).to_be_bytes().to_vec(), basic: false }
        } else {
            Self { kind, value: value.to_be_bytes().to_vec(), basic: false }
        }
    }

    /// The value as a number, if it fits in 64 bits.
    pub fn as_u64(&self) -> Option<u64> {
        if self.value.is_empty() || self.value.len() > 8 {
            return None;
        }
        Some(self.value.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let type_field = r.u16("attribute type")?;
        let basic = type_field & 0x8000 != 0;
        let kind = type_field & 0x7fff;
        if basic {
            Ok(Self { kind, value: r.take(2, "attribute value")?.to_vec(), basic })
        } else {
            let len = r.u16("attribute length")? as usize;
            Ok(Self { kind, value: r.take(len, "attribute value")?.to_vec(), basic })
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        if self.basic && self.value.len() == 2 {
            out.extend_from_slice(&(self.kind | 0x8000).to_be_bytes());
            out.extend_from_slice(&self.value);
        } else {
            out.extend_from_slice(&(self.kind & 0x7fff).to_be_bytes());
            out.extend_from_slice(&(self.value.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.value);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformPayload {
    pub number: u8,
    pub transform_id: u8,
    pub attributes: Vec<Attribute>,
}

impl TransformPayload {
    /// The first attribute of a kind (a repeated kind is a pair, e.g. life type + duration).
    pub fn attribute(&self, kind: u16) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.kind == kind)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalPayload {
    pub number: u8,
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub transforms: Vec<TransformPayload>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaPayload {
    pub doi: u32,
    pub situation: u32,
    pub proposals: Vec<ProposalPayload>,
}

/// Reads a chain of generic sub-payloads of one type (proposals in an SA, transforms in a
/// proposal), each bounded by its own length.
fn sub_chain<'a>(
    r: &mut Reader<'a>,
    kind: PayloadType,
    what: &'static str,
    mut each: impl FnMut(&mut Reader<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    loop {
        let next = PayloadType(r.u8(what)?);
        r.u8("reserved")?;
        let len = r.u16(what)? as usize;
        if len < 4 {
            return Err(WireError::BadLength { what, len });
        }
        let mut body = Reader::new(r.take(len - 4, what)?);
        each(&mut body)?;
        if next == PayloadType::NONE {
            return Ok(());
        }
        if next != kind {
            return Err(WireError::UnexpectedPayload(next));
        }
    }
}

impl SaPayload {
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let doi = r.u32("DOI")?;
        let situation = r.u32("situation")?;
        let mut proposals = Vec::new();
        sub_chain(&mut r, PayloadType::PROPOSAL, "proposal", |p| {
            let number = p.u8("proposal number")?;
            let protocol = ProtocolId(p.u8("protocol id")?);
            let spi_size = p.u8("SPI size")? as usize;
            let count = p.u8("number of transforms")? as usize;
            let spi = p.take(spi_size, "SPI")?.to_vec();
            let mut transforms = Vec::with_capacity(count.min(16));
            sub_chain(p, PayloadType::TRANSFORM, "transform", |t| {
                let number = t.u8("transform number")?;
                let transform_id = t.u8("transform id")?;
                t.u16("reserved")?;
                let mut attributes = Vec::new();
                while !t.is_empty() {
                    attributes.push(Attribute::parse(t)?);
                }
                transforms.push(TransformPayload { number, transform_id, attributes });
                Ok(())
            })?;
            if transforms.len() != count {
                return Err(WireError::Invalid {
                    what: "proposal",
                    detail: format!("says {count} transforms, carries {}", transforms.len()),
                });
            }
            proposals.push(ProposalPayload { number, protocol, spi, transforms });
            Ok(())
        })?;
        if !r.is_empty() {
            return Err(WireError::TrailingData(r.remaining()));
        }
        Ok(Self { doi, situation, proposals })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.doi.to_be_bytes());
        out.extend_from_slice(&self.situation.to_be_bytes());
        for (pi, p) in self.proposals.iter().enumerate() {
            let start = out.len();
            let last = pi + 1 == self.proposals.len();
            out.extend_from_slice(&[if last { 0 } else { PayloadType::PROPOSAL.0 }, 0, 0, 0]);
            out.extend_from_slice(&[p.number, p.protocol.0, p.spi.len() as u8, p.transforms.len() as u8]);
            out.extend_from_slice(&p.spi);
            for (ti, t) in p.transforms.iter().enumerate() {
                let tstart = out.len();
                let tlast = ti + 1 == p.transforms.len();
                out.extend_from_slice(&[if tlast { 0 } else { PayloadType::TRANSFORM.0 }, 0, 0, 0]);
                out.extend_from_slice(&[t.number, t.transform_id, 0, 0]);
                for a in &t.attributes {
                    a.encode(out);
                }
                let tlen = (out.len() - tstart) as u16;
                out[tstart + 2..tstart + 4].copy_from_slice(&tlen.to_be_bytes());
            }
            let len = (out.len() - start) as u16;
            out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_choose_the_shortest_form() {
        let a = Attribute::number(12, 3600);
        assert!(a.basic);
        assert_eq!(a.as_u64(), Some(3600));
        let b = Attribute::number(12, 86400);
        assert!(!b.basic);
        assert_eq!(b.value, 86400u32.to_be_bytes());
        assert_eq!(b.as_u64(), Some(86400));
        let mut out = Vec::new();
        b.encode(&mut out);
        assert_eq!(out, [0, 12, 0, 4, 0, 1, 0x51, 0x80]);
        a.encode(&mut out);
        assert_eq!(&out[8..], [0x80, 12, 0x0e, 0x10]);
    }

    #[test]
    fn sa_round_trip() {
        let sa = SaPayload {
            doi: 1,
            situation: 1,
            proposals: vec![ProposalPayload {
                number: 1,
                protocol: ProtocolId::ESP,
                spi: vec![1, 2, 3, 4],
                transforms: vec![
                    TransformPayload { number: 1, transform_id: 12, attributes: vec![Attribute::number(6, 256)] },
                    TransformPayload { number: 2, transform_id: 3, attributes: vec![Attribute::number(2, 1_843_200)] },
                ],
            }],
        };
        let mut b = Vec::new();
        sa.encode(&mut b);
        assert_eq!(SaPayload::parse(&b).unwrap(), sa);
        // A transform count that disagrees with the chain is refused.
        let mut bad = b.clone();
        bad[15] = 3;
        assert!(matches!(SaPayload::parse(&bad), Err(WireError::Invalid { .. })));
        // Every truncation is an error, never a panic.
        for n in 0..b.len() {
            assert!(SaPayload::parse(&b[..n]).is_err());
        }
    }
}
