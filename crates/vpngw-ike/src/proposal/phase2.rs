//! Phase 2 proposals: the ESP SA a quick mode offers, choosing among a peer's, and
//! RESPONDER-LIFETIME.

use core::fmt;

use vpngw_crypto::{DhGroup, EncryptionAlgorithm, IntegrityAlgorithm};
use vpngw_esp::Spi;

use super::common::{Difference, Mismatch, attr, cipher_words, lifetimes};
use crate::config::Phase2Policy;
use crate::wire::{
    Attribute, DOI_IPSEC, LIFE_KILOBYTES, LIFE_SECONDS, ProposalPayload, ProtocolId, SIT_IDENTITY_ONLY, SaPayload,
    TransformPayload, p2_attr,
};

/// How ESP packets travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Encapsulation {
    /// Raw ESP, IP protocol 50.
    Tunnel,
    /// ESP in UDP (RFC 3948), as negotiated with the RFC 3947 or the draft numbers.
    UdpTunnel { draft: bool },
}

impl Encapsulation {
    fn attribute_value(self) -> u64 {
        match self {
            Self::Tunnel => p2_attr::ENCAP_TUNNEL,
            Self::UdpTunnel { draft: false } => p2_attr::ENCAP_UDP_TUNNEL,
            Self::UdpTunnel { draft: true } => p2_attr::ENCAP_UDP_TUNNEL_DRAFT,
        }
    }

    fn from_attribute(v: u64) -> Option<Self> {
        match v {
            p2_attr::ENCAP_TUNNEL => Some(Self::Tunnel),
            p2_attr::ENCAP_UDP_TUNNEL => Some(Self::UdpTunnel { draft: false }),
            p2_attr::ENCAP_UDP_TUNNEL_DRAFT => Some(Self::UdpTunnel { draft: true }),
            _ => None,
        }
    }

    fn words(v: Option<u64>) -> String {
        match v {
            Some(p2_attr::ENCAP_TUNNEL) | None => "tunnel".into(),
            Some(p2_attr::ENCAP_TRANSPORT) => "transport".into(),
            Some(p2_attr::ENCAP_UDP_TUNNEL) | Some(p2_attr::ENCAP_UDP_TUNNEL_DRAFT) => "udp-tunnel".into(),
            Some(p2_attr::ENCAP_UDP_TRANSPORT) | Some(p2_attr::ENCAP_UDP_TRANSPORT_DRAFT) => "udp-transport".into(),
            Some(other) => format!("mode {other}"),
        }
    }
}

impl fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tunnel => "esp",
            Self::UdpTunnel { .. } => "esp-in-udp",
        })
    }
}

/// What a quick mode settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Phase2Choice {
    pub encryption: EncryptionAlgorithm,
    pub integrity: IntegrityAlgorithm,
    pub pfs: Option<DhGroup>,
    pub encapsulation: Encapsulation,
    pub lifetime_seconds: Option<u64>,
    pub lifetime_kilobytes: Option<u64>,
}

fn phase2_transform(number: u8, c: &Phase2Choice) -> TransformPayload {
    let spec = c.encryption.spec();
    let mut attributes = Vec::new();
    if let Some(bits) = spec.key_length_attribute {
        attributes.push(Attribute::number(p2_attr::KEY_LENGTH, u64::from(bits)));
    }
    attributes
        .push(Attribute::number(p2_attr::AUTHENTICATION_ALGORITHM, u64::from(c.integrity.spec().ikev1_auth_attribute)));
    if let Some(g) = c.pfs {
        attributes.push(Attribute::number(p2_attr::GROUP_DESCRIPTION, u64::from(g.number())));
    }
    attributes.push(Attribute::number(p2_attr::ENCAPSULATION_MODE, c.encapsulation.attribute_value()));
    if let Some(s) = c.lifetime_seconds {
        attributes.push(Attribute::number(p2_attr::SA_LIFE_TYPE, LIFE_SECONDS));
        attributes.push(Attribute::number(p2_attr::SA_LIFE_DURATION, s));
    }
    if let Some(kb) = c.lifetime_kilobytes {
        attributes.push(Attribute::number(p2_attr::SA_LIFE_TYPE, LIFE_KILOBYTES));
        attributes.push(Attribute::number(p2_attr::SA_LIFE_DURATION, kb));
    }
    TransformPayload { number, transform_id: spec.esp_transform_id, attributes }
}

fn phase2_sa(proposal_number: u8, spi: Spi, transform: TransformPayload) -> SaPayload {
    SaPayload {
        doi: DOI_IPSEC,
        situation: SIT_IDENTITY_ONLY,
        proposals: vec![ProposalPayload {
            number: proposal_number,
            protocol: ProtocolId::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms: vec![transform],
        }],
    }
}

/// The initiator's quick mode SA: one ESP proposal with our SPI and our one transform.
pub fn phase2_offer(policy: &Phase2Policy, spi: Spi, encapsulation: Encapsulation) -> SaPayload {
    let choice = Phase2Choice {
        encryption: policy.encryption,
        integrity: policy.integrity,
        pfs: policy.pfs,
        encapsulation,
        lifetime_seconds: Some(u64::from(policy.lifetime_seconds)),
        lifetime_kilobytes: policy.volume_limit(),
    };
    phase2_sa(1, spi, phase2_transform(1, &choice))
}

fn phase2_differences(policy: &Phase2Policy, t: &TransformPayload) -> (Vec<Difference>, Option<Phase2Choice>) {
    let mut d = Vec::new();
    let key_len = attr(t, p2_attr::KEY_LENGTH);
    let encryption =
        EncryptionAlgorithm::from_esp_transform(t.transform_id, key_len.and_then(|k| u16::try_from(k).ok()));
    if encryption != Some(policy.encryption) {
        d.push(Difference {
            parameter: "encryption",
            offered: cipher_words(encryption, Some(u64::from(t.transform_id)), key_len),
            configured: policy.encryption.name().into(),
        });
    }
    let auth_id = attr(t, p2_attr::AUTHENTICATION_ALGORITHM);
    let integrity = auth_id.and_then(|a| IntegrityAlgorithm::from_ikev1_auth_attribute(u16::try_from(a).ok()?));
    if integrity != Some(policy.integrity) {
        let offered = match (integrity, auth_id) {
            (Some(i), _) => i.name().to_string(),
            (None, Some(id)) => format!("integrity {id}"),
            (None, None) => "no integrity".into(),
        };
        d.push(Difference { parameter: "authentication", offered, configured: policy.integrity.name().into() });
    }
    let group_id = attr(t, p2_attr::GROUP_DESCRIPTION);
    let group = group_id.and_then(|g| DhGroup::from_number(u16::try_from(g).ok()?));
    if group != policy.pfs || (group_id.is_some() && group.is_none()) {
        let words = |g: Option<DhGroup>| g.map_or("disable".to_string(), |g| g.name().to_string());
        let offered = match (group, group_id) {
            (None, Some(id)) => format!("dh{id}"),
            _ => words(group),
        };
        d.push(Difference { parameter: "pfs", offered, configured: words(policy.pfs) });
    }
    let mode = attr(t, p2_attr::ENCAPSULATION_MODE);
    let encapsulation = match mode {
        None => Some(Encapsulation::Tunnel),
        Some(v) => Encapsulation::from_attribute(v),
    };
    if encapsulation.is_none() {
        d.push(Difference {
            parameter: "encapsulation_mode",
            offered: Encapsulation::words(mode),
            configured: "tunnel".into(),
        });
    }
    let (lifetime_seconds, lifetime_kilobytes) = lifetimes(t, p2_attr::SA_LIFE_TYPE, p2_attr::SA_LIFE_DURATION);
    let choice = match (d.is_empty(), encryption, integrity, encapsulation) {
        (true, Some(encryption), Some(integrity), Some(encapsulation)) => Some(Phase2Choice {
            encryption,
            integrity,
            pfs: group,
            encapsulation,
            lifetime_seconds,
            lifetime_kilobytes,
        }),
        _ => None,
    };
    (d, choice)
}

/// A quick mode offer as the responder reads it.
#[derive(Debug)]
pub struct Phase2Selection {
    /// The reply SA: the chosen transform, our SPI, the peer's numbers.
    pub reply: SaPayload,
    pub choice: Phase2Choice,
    /// The initiator's SPI (our outbound SPI).
    pub peer_spi: Spi,
}

/// Responder: the first acceptable ESP transform. The reply echoes the offered lifetimes (a
/// shorter one of ours goes in a RESPONDER-LIFETIME notify, sent by the caller).
pub fn select_phase2(policy: &Phase2Policy, offered: &SaPayload, our_spi: Spi) -> Result<Phase2Selection, Mismatch> {
    let mut closest: Option<Vec<Difference>> = None;
    for p in &offered.proposals {
        if p.protocol != ProtocolId::ESP {
            continue;
        }
        let Ok(spi_bytes) = <[u8; 4]>::try_from(&p.spi[..]) else { continue };
        let peer_spi = Spi::from_be_bytes(spi_bytes);
        if peer_spi.is_reserved() {
            closest.get_or_insert_with(|| {
                vec![Difference {
                    parameter: "spi",
                    offered: format!("reserved SPI {peer_spi}"),
                    configured: format!("above {}", Spi::RESERVED_MAX),
                }]
            });
            continue;
        }
        for t in &p.transforms {
            let (differences, choice) = phase2_differences(policy, t);
            if let Some(choice) = choice {
                return Ok(Phase2Selection {
                    reply: phase2_sa(p.number, our_spi, phase2_transform(t.number, &choice)),
                    choice,
                    peer_spi,
                });
            }
            if closest.as_ref().is_none_or(|c| differences.len() < c.len()) {
                closest = Some(differences);
            }
        }
    }
    let differences = closest.unwrap_or_else(|| {
        vec![Difference { parameter: "security_protocol", offered: "no ESP proposal".into(), configured: "esp".into() }]
    });
    Err(Mismatch { differences })
}

/// Initiator: the responder's answer must be our transform; returns its choice and SPI.
pub fn accept_phase2_reply(policy: &Phase2Policy, reply: &SaPayload) -> Result<(Phase2Choice, Spi), Mismatch> {
    let malformed = || Mismatch {
        differences: vec![Difference {
            parameter: "proposal",
            offered: "not one ESP transform with a 4-byte SPI above 255".into(),
            configured: "one".into(),
        }],
    };
    let [p] = reply.proposals.as_slice() else { return Err(malformed()) };
    let ([t], Ok(spi)) = (p.transforms.as_slice(), <[u8; 4]>::try_from(&p.spi[..])) else { return Err(malformed()) };
    if p.protocol != ProtocolId::ESP || Spi::from_be_bytes(spi).is_reserved() {
        return Err(malformed());
    }
    let (differences, choice) = phase2_differences(policy, t);
    choice.map(|c| (c, Spi::from_be_bytes(spi))).ok_or(Mismatch { differences })
}

/// The attributes of a RESPONDER-LIFETIME notify (RFC 2407 s.4.6.3.1): life type/duration pairs.
pub fn responder_lifetime_data(seconds: Option<u64>, kilobytes: Option<u64>) -> Vec<u8> {
    let mut t = TransformPayload { number: 0, transform_id: 0, attributes: Vec::new() };
    if let Some(s) = seconds {
        t.attributes.push(Attribute::number(p2_attr::SA_LIFE_TYPE, LIFE_SECONDS));
        t.attributes.push(Attribute::number(p2_attr::SA_LIFE_DURATION, s));
    }
    if let Some(kb) = kilobytes {
        t.attributes.push(Attribute::number(p2_attr::SA_LIFE_TYPE, LIFE_KILOBYTES));
        t.attributes.push(Attribute::number(p2_attr::SA_LIFE_DURATION, kb));
    }
    let sa = SaPayload {
        doi: 0,
        situation: 0,
        proposals: vec![ProposalPayload { number: 0, protocol: ProtocolId(0), spi: vec![], transforms: vec![t] }],
    };
    // Reuse the attribute encoder: encode the SA and cut out the attribute bytes
    // (DOI 4 + situation 4 + proposal header 8 + transform header 8 = 24 bytes before them).
    let mut out = Vec::new();
    sa.encode(&mut out);
    out.split_off(24)
}

/// Parses RESPONDER-LIFETIME data into (seconds, kilobytes).
pub fn parse_responder_lifetime(data: &[u8]) -> (Option<u64>, Option<u64>) {
    let mut attributes = Vec::new();
    let mut r = crate::wire::Reader::new(data);
    while !r.is_empty() {
        let Ok(type_field) = r.u16("attribute") else { break };
        let value = if type_field & 0x8000 != 0 {
            r.take(2, "attribute value").map(<[u8]>::to_vec)
        } else {
            r.u16("attribute length").and_then(|l| r.take(l as usize, "attribute value")).map(<[u8]>::to_vec)
        };
        let Ok(value) = value else { break };
        attributes.push(Attribute { kind: type_field & 0x7fff, value, basic: type_field & 0x8000 != 0 });
    }
    lifetimes(
        &TransformPayload { number: 0, transform_id: 0, attributes },
        p2_attr::SA_LIFE_TYPE,
        p2_attr::SA_LIFE_DURATION,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase2_pfs_and_mode_mismatches() {
        let ours = Phase2Policy::default();
        let pfs = Phase2Policy { pfs: Some(DhGroup::Modp2048), ..Phase2Policy::default() };
        let m = select_phase2(&ours, &phase2_offer(&pfs, Spi::new(0x1007), Encapsulation::Tunnel), Spi::new(0x1009))
            .unwrap_err();
        assert!(m.is_pfs_only(), "{m}");
        assert_eq!(m.to_string(), "pfs: peer offered dh14, configured disable");
        let mut transport = phase2_offer(&ours, Spi::new(0x1007), Encapsulation::Tunnel);
        for a in &mut transport.proposals[0].transforms[0].attributes {
            if a.kind == p2_attr::ENCAPSULATION_MODE {
                *a = Attribute::number(p2_attr::ENCAPSULATION_MODE, p2_attr::ENCAP_TRANSPORT);
            }
        }
        let m = select_phase2(&ours, &transport, Spi::new(0x1009)).unwrap_err();
        assert!(m.is_mode_only(), "{m}");
        let ok = select_phase2(
            &ours,
            &phase2_offer(&ours, Spi::new(0x1007), Encapsulation::UdpTunnel { draft: false }),
            Spi::new(0x1009),
        )
        .unwrap();
        assert_eq!(ok.peer_spi, Spi::new(0x1007));
        assert_eq!(ok.choice.encapsulation, Encapsulation::UdpTunnel { draft: false });
        assert_eq!(ok.choice.lifetime_kilobytes, Some(1_843_200));
        let (choice, spi) = accept_phase2_reply(&ours, &ok.reply).unwrap();
        assert_eq!((choice, spi), (ok.choice, Spi::new(0x1009)));
    }

    #[test]
    fn reserved_spis_are_refused_from_either_side() {
        let ours = Phase2Policy::default();
        for reserved in [0, 1, 255] {
            let m =
                select_phase2(&ours, &phase2_offer(&ours, Spi::new(reserved), Encapsulation::Tunnel), Spi::new(0x1009))
                    .unwrap_err();
            assert!(m.to_string().contains("spi: peer offered reserved SPI"), "{m}");
            let reply = phase2_offer(&ours, Spi::new(reserved), Encapsulation::Tunnel);
            assert!(accept_phase2_reply(&ours, &reply).is_err(), "{reserved}");
        }
        assert!(
            select_phase2(&ours, &phase2_offer(&ours, Spi::new(256), Encapsulation::Tunnel), Spi::new(0x1009)).is_ok()
        );
    }

    #[test]
    fn responder_lifetime_round_trip() {
        let data = responder_lifetime_data(Some(1800), Some(100_000));
        assert_eq!(parse_responder_lifetime(&data), (Some(1800), Some(100_000)));
        assert_eq!(parse_responder_lifetime(&responder_lifetime_data(Some(600), None)), (Some(600), None));
        assert_eq!(parse_responder_lifetime(&[0x80]), (None, None));
    }
}
