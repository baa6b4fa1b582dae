//! Phase 1 proposals: the ISAKMP SA we offer, and choosing among a peer's.

use vpngw_crypto::{DhGroup, EncryptionAlgorithm, HashAlgorithm};

use super::common::{Difference, Mismatch, attr, cipher_words, lifetimes};
use crate::config::Phase1Policy;
use crate::wire::{
    Attribute, DOI_IPSEC, KEY_IKE, LIFE_KILOBYTES, LIFE_SECONDS, ProposalPayload, ProtocolId, SIT_IDENTITY_ONLY,
    SaPayload, TransformPayload, p1_attr,
};

/// What phase 1 settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Phase1Choice {
    pub encryption: EncryptionAlgorithm,
    pub hash: HashAlgorithm,
    pub dh_group: DhGroup,
    /// The lifetime in the chosen transform (the peer's, as offered or answered).
    pub lifetime_seconds: Option<u64>,
    /// A volume lifetime for the IKE SA, when the peer proposed one (the seed's tables have
    /// none; it is echoed and reported, IKE traffic being far too small to reach one).
    pub lifetime_kilobytes: Option<u64>,
}

fn phase1_transform(
    number: u8,
    encryption: EncryptionAlgorithm,
    hash: HashAlgorithm,
    group: DhGroup,
    lifetime: u64,
    kilobytes: Option<u64>,
) -> TransformPayload {
    let spec = encryption.spec();
    let mut attributes = vec![Attribute::number(p1_attr::ENCRYPTION_ALGORITHM, u64::from(spec.ikev1_phase1_id))];
    if let Some(bits) = spec.key_length_attribute {
        attributes.push(Attribute::number(p1_attr::KEY_LENGTH, u64::from(bits)));
    }
    attributes.push(Attribute::number(p1_attr::HASH_ALGORITHM, u64::from(hash.spec().ikev1_phase1_id)));
    attributes.push(Attribute::number(p1_attr::GROUP_DESCRIPTION, u64::from(group.number())));
    attributes.push(Attribute::number(p1_attr::AUTHENTICATION_METHOD, p1_attr::AUTH_PRE_SHARED_KEY));
    attributes.push(Attribute::number(p1_attr::LIFE_TYPE, LIFE_SECONDS));
    attributes.push(Attribute::number(p1_attr::LIFE_DURATION, lifetime));
    if let Some(kb) = kilobytes {
        attributes.push(Attribute::number(p1_attr::LIFE_TYPE, LIFE_KILOBYTES));
        attributes.push(Attribute::number(p1_attr::LIFE_DURATION, kb));
    }
    TransformPayload { number, transform_id: KEY_IKE, attributes }
}

/// The initiator's phase 1 SA: one ISAKMP proposal with our one transform.
pub fn phase1_offer(policy: &Phase1Policy) -> SaPayload {
    SaPayload {
        doi: DOI_IPSEC,
        situation: SIT_IDENTITY_ONLY,
        proposals: vec![ProposalPayload {
            number: 1,
            protocol: ProtocolId::ISAKMP,
            spi: vec![],
            transforms: vec![phase1_transform(
                1,
                policy.encryption,
                policy.hash,
                policy.dh_group,
                policy.lifetime.as_secs(),
                None,
            )],
        }],
    }
}

/// Compares one offered phase 1 transform with our policy.
fn phase1_differences(policy: &Phase1Policy, t: &TransformPayload) -> (Vec<Difference>, Option<Phase1Choice>) {
    let mut d = Vec::new();
    let enc_id = attr(t, p1_attr::ENCRYPTION_ALGORITHM);
    let key_len = attr(t, p1_attr::KEY_LENGTH);
    let encryption = enc_id.and_then(|id| {
        EncryptionAlgorithm::from_ikev1_phase1(u16::try_from(id).ok()?, key_len.and_then(|k| u16::try_from(k).ok()))
    });
    if t.transform_id != KEY_IKE {
        d.push(Difference {
            parameter: "transform",
            offered: format!("transform id {}", t.transform_id),
            configured: "KEY_IKE".into(),
        });
    }
    if encryption != Some(policy.encryption) {
        d.push(Difference {
            parameter: "encryption",
            offered: cipher_words(encryption, enc_id, key_len),
            configured: policy.encryption.name().into(),
        });
    }
    let hash_id = attr(t, p1_attr::HASH_ALGORITHM);
    let hash = hash_id.and_then(|h| HashAlgorithm::from_ikev1_phase1(u16::try_from(h).ok()?));
    if hash != Some(policy.hash) {
        let offered = match (hash, hash_id) {
            (Some(h), _) => h.name().to_string(),
            (None, Some(id)) => format!("hash {id}"),
            (None, None) => "no hash".into(),
        };
        d.push(Difference { parameter: "authentication", offered, configured: policy.hash.name().into() });
    }
    let group_id = attr(t, p1_attr::GROUP_DESCRIPTION);
    let group = group_id.and_then(|g| DhGroup::from_number(u16::try_from(g).ok()?));
    if group != Some(policy.dh_group) {
        let offered = match (group, group_id) {
            (Some(g), _) => g.name().to_string(),
            (None, Some(id)) => format!("dh{id}"),
            (None, None) => "no group".into(),
        };
        d.push(Difference { parameter: "dh_group", offered, configured: policy.dh_group.name().into() });
    }
    let auth = attr(t, p1_attr::AUTHENTICATION_METHOD);
    if auth != Some(p1_attr::AUTH_PRE_SHARED_KEY) {
        let offered = match auth {
            Some(3) => "rsa-signature".to_string(),
            Some(65001) | Some(65002) => "xauth-pre-shared-key".to_string(),
            Some(v) => format!("authentication method {v}"),
            None => "no authentication method".into(),
        };
        d.push(Difference { parameter: "authentication_method", offered, configured: "pre-shared-key".into() });
    }
    let (lifetime_seconds, lifetime_kilobytes) = lifetimes(t, p1_attr::LIFE_TYPE, p1_attr::LIFE_DURATION);
    let choice = match (d.is_empty(), encryption, hash, group) {
        (true, Some(encryption), Some(hash), Some(dh_group)) => {
            Some(Phase1Choice { encryption, hash, dh_group, lifetime_seconds, lifetime_kilobytes })
        }
        _ => None,
    };
    (d, choice)
}

/// Responder: the first acceptable transform of the first ISAKMP proposal that has one. Returns
/// the reply SA (that transform, numbers kept, our encoding) and the choice.
pub fn select_phase1(policy: &Phase1Policy, offered: &SaPayload) -> Result<(SaPayload, Phase1Choice), Mismatch> {
    let mut closest: Option<Vec<Difference>> = None;
    for p in offered.proposals.iter().filter(|p| p.protocol == ProtocolId::ISAKMP) {
        for t in &p.transforms {
            let (differences, choice) = phase1_differences(policy, t);
            if let Some(choice) = choice {
                let lifetime = choice.lifetime_seconds.unwrap_or(policy.lifetime.as_secs());
                let reply = SaPayload {
                    doi: DOI_IPSEC,
                    situation: SIT_IDENTITY_ONLY,
                    proposals: vec![ProposalPayload {
                        number: p.number,
                        protocol: ProtocolId::ISAKMP,
                        spi: vec![],
                        transforms: vec![phase1_transform(
                            t.number,
                            choice.encryption,
                            choice.hash,
                            choice.dh_group,
                            lifetime,
                            choice.lifetime_kilobytes,
                        )],
                    }],
                };
                return Ok((reply, choice));
            }
            if closest.as_ref().is_none_or(|c| differences.len() < c.len()) {
                closest = Some(differences);
            }
        }
    }
    let differences = closest.unwrap_or_else(|| {
        vec![Difference { parameter: "proposal", offered: "no ISAKMP proposal".into(), configured: "one".into() }]
    });
    Err(Mismatch { differences })
}

/// Initiator: the responder's answer must be our one transform.
pub fn accept_phase1_reply(policy: &Phase1Policy, reply: &SaPayload) -> Result<Phase1Choice, Mismatch> {
    match reply.proposals.as_slice() {
        [p] if p.protocol == ProtocolId::ISAKMP && p.transforms.len() == 1 => {
            let (differences, choice) = phase1_differences(policy, &p.transforms[0]);
            choice.ok_or(Mismatch { differences })
        }
        _ => Err(Mismatch {
            differences: vec![Difference {
                parameter: "proposal",
                offered: "not exactly one transform".into(),
                configured: "one".into(),
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn phase1_offer_is_accepted_by_the_same_policy() {
        for encryption in EncryptionAlgorithm::ALL {
            for hash in [HashAlgorithm::Md5, HashAlgorithm::Sha1] {
                for dh_group in DhGroup::ALL {
                    let policy = Phase1Policy { encryption, hash, dh_group, lifetime: Duration::from_secs(86400) };
                    let (reply, choice) = select_phase1(&policy, &phase1_offer(&policy)).unwrap();
                    assert_eq!(choice.encryption, encryption);
                    assert_eq!(choice.lifetime_seconds, Some(86400));
                    assert_eq!(choice.lifetime_kilobytes, None);
                    assert_eq!(accept_phase1_reply(&policy, &reply).unwrap(), choice);
                }
            }
        }
    }

    #[test]
    fn phase1_mismatch_names_each_parameter_in_seed_words() {
        let ours = Phase1Policy::default();
        let theirs = Phase1Policy {
            encryption: EncryptionAlgorithm::Aes256,
            dh_group: DhGroup::Modp2048,
            ..Phase1Policy::default()
        };
        let m = select_phase1(&ours, &phase1_offer(&theirs)).unwrap_err();
        assert_eq!(
            m.to_string(),
            "encryption: peer offered aes-256, configured 3des; dh_group: peer offered dh14, configured dh1"
        );
    }

    #[test]
    fn responder_takes_the_first_acceptable_transform() {
        let ours = Phase1Policy {
            encryption: EncryptionAlgorithm::Aes128,
            hash: HashAlgorithm::Sha1,
            ..Phase1Policy::default()
        };
        let mut offer = phase1_offer(&Phase1Policy::default());
        let mut good = phase1_offer(&ours).proposals[0].transforms[0].clone();
        good.number = 2;
        offer.proposals[0].transforms.push(good);
        let (reply, choice) = select_phase1(&ours, &offer).unwrap();
        assert_eq!(reply.proposals[0].transforms[0].number, 2);
        assert_eq!(choice.encryption, EncryptionAlgorithm::Aes128);
    }
}

#[cfg(test)]
mod phase1_volume_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_phase1_volume_lifetime_is_read_and_echoed() {
        let policy = Phase1Policy { lifetime: Duration::from_secs(3600), ..Phase1Policy::default() };
        let mut offer = phase1_offer(&policy);
        offer.proposals[0].transforms[0].attributes.push(Attribute::number(p1_attr::LIFE_TYPE, LIFE_KILOBYTES));
        offer.proposals[0].transforms[0].attributes.push(Attribute::number(p1_attr::LIFE_DURATION, 500_000));
        let (reply, choice) = select_phase1(&policy, &offer).unwrap();
        assert_eq!((choice.lifetime_seconds, choice.lifetime_kilobytes), (Some(3600), Some(500_000)));
        assert_eq!(accept_phase1_reply(&policy, &reply).unwrap().lifetime_kilobytes, Some(500_000));
    }
}
