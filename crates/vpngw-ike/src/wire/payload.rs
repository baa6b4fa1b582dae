//! The generic payload chain (RFC 2408 s.3.2) and the payloads IKEv1 with PSK uses.

use core::ops::Range;

use super::error::WireError;
use super::numbers::{DOI_IPSEC, IdType, NotifyType, PayloadType, ProtocolId};
use super::reader::Reader;
use super::sa::SaPayload;

/// Identification payload body (RFC 2407 s.4.6.2): type, protocol, port, data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPayload {
    pub id_type: IdType,
    pub protocol: u8,
    pub port: u16,
    pub data: Vec<u8>,
}

impl IdPayload {
    /// The body as hashed into HASH_I/HASH_R (IDii_b, IDir_b).
    pub fn body(&self) -> Vec<u8> {
        let mut b = vec![self.id_type.0, self.protocol];
        b.extend_from_slice(&self.port.to_be_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    fn parse(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        Ok(Self {
            id_type: IdType(r.u8("ID type")?),
            protocol: r.u8("ID protocol")?,
            port: r.u16("ID port")?,
            data: r.rest().to_vec(),
        })
    }
}

/// Notification payload (RFC 2408 s.3.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyPayload {
    pub doi: u32,
    pub protocol: ProtocolId,
    pub notify_type: NotifyType,
    pub spi: Vec<u8>,
    pub data: Vec<u8>,
}

impl NotifyPayload {
    pub fn new(protocol: ProtocolId, notify_type: NotifyType, spi: Vec<u8>, data: Vec<u8>) -> Self {
        Self { doi: DOI_IPSEC, protocol, notify_type, spi, data }
    }

    fn parse(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let doi = r.u32("notify DOI")?;
        let protocol = ProtocolId(r.u8("notify protocol")?);
        let spi_size = r.u8("notify SPI size")? as usize;
        let notify_type = NotifyType(r.u16("notify type")?);
        let spi = r.take(spi_size, "notify SPI")?.to_vec();
        Ok(Self { doi, protocol, notify_type, spi, data: r.rest().to_vec() })
    }
}

/// Delete payload (RFC 2408 s.3.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletePayload {
    pub doi: u32,
    pub protocol: ProtocolId,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

impl DeletePayload {
    fn parse(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let doi = r.u32("delete DOI")?;
        let protocol = ProtocolId(r.u8("delete protocol")?);
        let spi_size = r.u8("delete SPI size")?;
        let count = r.u16("delete SPI count")? as usize;
        // The count is checked against the bytes that carry the SPIs before anything is
        // allocated: work stays linear in the datagram's length (an SPI size of 0 with 65,535
        // SPIs used to cost 65,535 allocations per payload).
        if count == 0 && !r.is_empty() {
            return Err(WireError::TrailingData(r.remaining()));
        }
        if count > 0 && (spi_size == 0 || count * spi_size as usize != r.remaining()) {
            return Err(WireError::Invalid {
                what: "delete",
                detail: format!("{count} SPIs of {spi_size} bytes in {} bytes", r.remaining()),
            });
        }
        let spis: Vec<Vec<u8>> = r.rest().chunks_exact(spi_size.max(1) as usize).map(<[u8]>::to_vec).collect();
        Ok(Self { doi, protocol, spi_size, spis })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Sa(SaPayload),
    KeyExchange(Vec<u8>),
    Id(IdPayload),
    Hash(Vec<u8>),
    Nonce(Vec<u8>),
    Notify(NotifyPayload),
    Delete(DeletePayload),
    VendorId(Vec<u8>),
    /// NAT-D: the hash, and whether it used the draft payload number (130) instead of 20.
    NatD {
        hash: Vec<u8>,
        draft: bool,
    },
    /// NAT-OA (RFC 3947 s.5.2): kept, not interpreted (tunnel mode does not need it).
    NatOa {
        body: Vec<u8>,
        draft: bool,
    },
    /// A payload we do not interpret (CERT, CR, SIG, ...): skipped, kept for hashing.
    Other {
        kind: PayloadType,
        body: Vec<u8>,
    },
}

impl Payload {
    pub fn kind(&self) -> PayloadType {
        match self {
            Self::Sa(_) => PayloadType::SA,
            Self::KeyExchange(_) => PayloadType::KE,
            Self::Id(_) => PayloadType::ID,
            Self::Hash(_) => PayloadType::HASH,
            Self::Nonce(_) => PayloadType::NONCE,
            Self::Notify(_) => PayloadType::NOTIFY,
            Self::Delete(_) => PayloadType::DELETE,
            Self::VendorId(_) => PayloadType::VENDOR_ID,
            Self::NatD { draft: false, .. } => PayloadType::NAT_D,
            Self::NatD { draft: true, .. } => PayloadType::NAT_D_DRAFT,
            Self::NatOa { draft: false, .. } => PayloadType::NAT_OA,
            Self::NatOa { draft: true, .. } => PayloadType::NAT_OA_DRAFT,
            Self::Other { kind, .. } => *kind,
        }
    }

    fn parse(kind: PayloadType, body: &[u8]) -> Result<Self, WireError> {
        Ok(match kind {
            PayloadType::SA => Self::Sa(SaPayload::parse(body)?),
            PayloadType::KE => Self::KeyExchange(body.to_vec()),
            PayloadType::ID => Self::Id(IdPayload::parse(body)?),
            PayloadType::HASH => Self::Hash(body.to_vec()),
            PayloadType::NONCE => Self::Nonce(body.to_vec()),
            PayloadType::NOTIFY => Self::Notify(NotifyPayload::parse(body)?),
            PayloadType::DELETE => Self::Delete(DeletePayload::parse(body)?),
            PayloadType::VENDOR_ID => Self::VendorId(body.to_vec()),
            PayloadType::NAT_D => Self::NatD { hash: body.to_vec(), draft: false },
            PayloadType::NAT_D_DRAFT => Self::NatD { hash: body.to_vec(), draft: true },
            PayloadType::NAT_OA => Self::NatOa { body: body.to_vec(), draft: false },
            PayloadType::NAT_OA_DRAFT => Self::NatOa { body: body.to_vec(), draft: true },
            PayloadType::PROPOSAL | PayloadType::TRANSFORM | PayloadType::NONE => {
                return Err(WireError::UnexpectedPayload(kind));
            }
            other => Self::Other { kind: other, body: body.to_vec() },
        })
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sa(sa) => sa.encode(out),
            Self::KeyExchange(b)
            | Self::Hash(b)
            | Self::Nonce(b)
            | Self::VendorId(b)
            | Self::NatD { hash: b, .. }
            | Self::NatOa { body: b, .. }
            | Self::Other { body: b, .. } => out.extend_from_slice(b),
            Self::Id(id) => out.extend_from_slice(&id.body()),
            Self::Notify(n) => {
                out.extend_from_slice(&n.doi.to_be_bytes());
                out.extend_from_slice(&[n.protocol.0, n.spi.len() as u8]);
                out.extend_from_slice(&n.notify_type.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Self::Delete(d) => {
                out.extend_from_slice(&d.doi.to_be_bytes());
                out.extend_from_slice(&[d.protocol.0, d.spi_size]);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for spi in &d.spis {
                    out.extend_from_slice(spi);
                }
            }
        }
    }
}

/// One payload as received: parsed, and where its bytes (generic header included) were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPayload {
    pub payload: Payload,
    pub range: Range<usize>,
}

impl RawPayload {
    /// The body (after the 4-byte generic header) within the parsed buffer.
    pub fn body_range(&self) -> Range<usize> {
        self.range.start + 4..self.range.end
    }
}

/// A parsed payload chain and where it ended (padding of encrypted messages comes after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadChain {
    pub payloads: Vec<RawPayload>,
    pub end: usize,
}

impl PayloadChain {
    pub fn find(&self, kind: PayloadType) -> Option<&Payload> {
        self.payloads.iter().map(|p| &p.payload).find(|p| p.kind() == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Payload> {
        self.payloads.iter().map(|p| &p.payload)
    }

    /// The first payload `pick` accepts, or [`WireError::MissingPayload`] naming `kind`.
    fn first<'a, T: ?Sized>(
        &'a self,
        kind: PayloadType,
        pick: impl Fn(&'a Payload) -> Option<&'a T>,
    ) -> Result<&'a T, WireError> {
        self.iter().find_map(pick).ok_or(WireError::MissingPayload(kind))
    }

    /// The (first) SA payload.
    pub fn sa(&self) -> Result<&SaPayload, WireError> {
        self.first(PayloadType::SA, |p| if let Payload::Sa(s) = p { Some(s) } else { None })
    }

    /// The key exchange value.
    pub fn ke(&self) -> Result<&[u8], WireError> {
        self.first(PayloadType::KE, |p| if let Payload::KeyExchange(k) = p { Some(k.as_slice()) } else { None })
    }

    /// The nonce: 8 to 256 bytes (RFC 2409 s.5), else [`WireError::BadLength`] (a peer's
    /// choice that the key schedule and the rekey-collision rank rely on).
    pub fn nonce(&self) -> Result<&[u8], WireError> {
        let n =
            self.first(PayloadType::NONCE, |p| if let Payload::Nonce(n) = p { Some(n.as_slice()) } else { None })?;
        if !(8..=256).contains(&n.len()) {
            return Err(WireError::BadLength { what: "nonce (8 to 256 bytes)", len: n.len() });
        }
        Ok(n)
    }

    pub fn hash(&self) -> Result<&[u8], WireError> {
        self.first(PayloadType::HASH, |p| if let Payload::Hash(h) = p { Some(h.as_slice()) } else { None })
    }

    /// The (first) ID payload: phase 1 identity.
    pub fn id(&self) -> Result<&IdPayload, WireError> {
        self.first(PayloadType::ID, |p| if let Payload::Id(i) = p { Some(i) } else { None })
    }

    /// The first two ID payloads: quick mode's IDci and IDcr.
    pub fn ids(&self) -> Option<(&IdPayload, &IdPayload)> {
        let mut ids = self.iter().filter_map(|p| if let Payload::Id(i) = p { Some(i) } else { None });
        Some((ids.next()?, ids.next()?))
    }

    /// The NAT-D hashes, in order.
    pub fn nat_d(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().filter_map(|p| if let Payload::NatD { hash, .. } = p { Some(hash.as_slice()) } else { None })
    }

    pub fn vendor_ids(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().filter_map(|p| if let Payload::VendorId(v) = p { Some(v.as_slice()) } else { None })
    }

    pub fn notifies(&self) -> impl Iterator<Item = &NotifyPayload> {
        self.iter().filter_map(|p| if let Payload::Notify(n) = p { Some(n) } else { None })
    }
}

/// At most this many payloads in one message: a bound against amplification by tiny payloads.
const MAX_PAYLOADS: usize = 64;

/// Parses the payload chain that starts with `first` at the beginning of `data`.
/// `allow_trailing`: bytes after the last payload are accepted (padding of a decrypted message);
/// otherwise they are an error.
pub fn parse_payloads(first: PayloadType, data: &[u8], allow_trailing: bool) -> Result<PayloadChain, WireError> {
    let mut r = Reader::new(data);
    let mut payloads = Vec::new();
    let mut kind = first;
    while kind != PayloadType::NONE {
        if payloads.len() == MAX_PAYLOADS {
            return Err(WireError::Invalid { what: "message", detail: format!("more than {MAX_PAYLOADS} payloads") });
        }
        let start = r.position();
        let next = PayloadType(r.u8("next payload")?);
        r.u8("reserved")?;
        let len = r.u16("payload length")? as usize;
        if len < 4 {
            return Err(WireError::BadLength { what: "payload", len });
        }
        let body = r.take(len - 4, "payload body")?;
        payloads.push(RawPayload { payload: Payload::parse(kind, body)?, range: start..start + len });
        kind = next;
    }
    let end = r.position();
    if !allow_trailing && !r.is_empty() {
        return Err(WireError::TrailingData(r.remaining()));
    }
    Ok(PayloadChain { payloads, end })
}

/// Encodes a chain: each generic header's next-payload field names the following payload.
pub fn encode_payloads(payloads: &[Payload]) -> Vec<u8> {
    #[cfg(feature = "testing")]
    let rewritten = crate::testing::hostile::rewrite(payloads);
    #[cfg(feature = "testing")]
    let payloads: &[Payload] = rewritten.as_deref().unwrap_or(payloads);
    let mut out = Vec::with_capacity(256);
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(PayloadType::NONE, Payload::kind);
        let start = out.len();
        out.extend_from_slice(&[next.0, 0, 0, 0]);
        p.encode_body(&mut out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sa::{Attribute, ProposalPayload, TransformPayload};

    fn sample() -> Vec<Payload> {
        vec![
            Payload::Hash(vec![9; 20]),
            Payload::Sa(SaPayload {
                doi: 1,
                situation: 1,
                proposals: vec![ProposalPayload {
                    number: 1,
                    protocol: ProtocolId::ISAKMP,
                    spi: vec![],
                    transforms: vec![TransformPayload {
                        number: 1,
                        transform_id: 1,
                        attributes: vec![Attribute::number(1, 5), Attribute::number(12, 86400)],
                    }],
                }],
            }),
            Payload::KeyExchange(vec![1; 96]),
            Payload::Nonce(vec![2; 32]),
            Payload::Id(IdPayload { id_type: IdType::FQDN, protocol: 17, port: 500, data: b"gw.example".to_vec() }),
            Payload::Notify(NotifyPayload::new(ProtocolId::ISAKMP, NotifyType::INITIAL_CONTACT, vec![7; 16], vec![])),
            Payload::Delete(DeletePayload {
                doi: 1,
                protocol: ProtocolId::ESP,
                spi_size: 4,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            }),
            Payload::VendorId(vec![0xaf; 16]),
            Payload::NatD { hash: vec![3; 16], draft: false },
            Payload::NatD { hash: vec![4; 16], draft: true },
            Payload::Other { kind: PayloadType::CERT_REQUEST, body: vec![4] },
        ]
    }

    #[test]
    fn chain_round_trip_with_ranges() {
        let payloads = sample();
        let bytes = encode_payloads(&payloads);
        let chain = parse_payloads(PayloadType::HASH, &bytes, false).unwrap();
        assert_eq!(chain.iter().cloned().collect::<Vec<_>>(), payloads);
        assert_eq!(chain.end, bytes.len());
        assert_eq!(chain.payloads[0].range, 0..24);
        assert_eq!(chain.payloads[1].range.start, 24);
        // Trailing bytes: padding is fine only where allowed.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse_payloads(PayloadType::HASH, &padded, true).unwrap().end, bytes.len());
        assert_eq!(parse_payloads(PayloadType::HASH, &padded, false), Err(WireError::TrailingData(3)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_payloads(&sample());
        for n in 0..bytes.len() {
            assert!(parse_payloads(PayloadType::HASH, &bytes[..n], true).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn short_payload_length_is_refused() {
        assert_eq!(
            parse_payloads(PayloadType::NONCE, &[0, 0, 0, 3], false),
            Err(WireError::BadLength { what: "payload", len: 3 })
        );
        assert_eq!(
            parse_payloads(PayloadType::PROPOSAL, &[0, 0, 0, 4], false),
            Err(WireError::UnexpectedPayload(PayloadType::PROPOSAL))
        );
    }

    #[test]
    fn nonces_outside_8_to_256_bytes_are_refused() {
        let chain = |len: usize| PayloadChain {
            payloads: vec![RawPayload { payload: Payload::Nonce(vec![7; len]), range: 0..len + 4 }],
            end: len + 4,
        };
        for ok in [8, 32, 256] {
            assert_eq!(chain(ok).nonce().map(<[u8]>::len), Ok(ok));
        }
        for bad in [0, 7, 257, 4000] {
            assert!(matches!(chain(bad).nonce(), Err(WireError::BadLength { len, .. }) if len == bad), "{bad}");
        }
    }

    /// A Delete body: DOI 1, protocol ESP, then `spi_size`, `count` and `spis` bytes.
    fn delete_body(spi_size: u8, count: u16, spis: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 1, ProtocolId::ESP.0, spi_size];
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(spis);
        b
    }

    #[test]
    fn a_delete_count_must_match_its_bytes_before_anything_is_allocated() {
        let ok = DeletePayload::parse(&delete_body(4, 2, &[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        assert_eq!(ok.spis, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
        assert_eq!(DeletePayload::parse(&delete_body(4, 0, &[])).unwrap().spis.len(), 0);
        // The amplification: SPI size 0 with 65,535 SPIs; and counts that lie either way.
        for (size, count, spis) in
            [(0u8, 65_535u16, &[][..]), (4, 3, &[0; 8][..]), (4, 1, &[0; 8][..]), (16, 1, &[0; 4][..])]
        {
            assert!(
                matches!(DeletePayload::parse(&delete_body(size, count, spis)), Err(WireError::Invalid { .. })),
                "size {size} count {count}"
            );
        }
        assert_eq!(DeletePayload::parse(&delete_body(4, 0, &[0; 4])), Err(WireError::TrailingData(4)));
    }
}
