//! Protocol numbers as newtypes with named constants: unknown values are kept, and print as
//! numbers (RFC 2407, RFC 2408, RFC 2409, RFC 3706, RFC 3947).

use core::fmt;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident($ty:ty) { $($(#[$cmeta:meta])* $const:ident = $value:expr => $text:expr,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $ty);

        impl $name {
            $($(#[$cmeta])* pub const $const: Self = Self($value);)*

            /// The RFC name, if this value has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

wire_enum! {
    /// ISAKMP payload types (RFC 2408 s.3.1, RFC 3947).
    PayloadType(u8) {
        NONE = 0 => "NONE",
        SA = 1 => "SA",
        PROPOSAL = 2 => "P",
        TRANSFORM = 3 => "T",
        KE = 4 => "KE",
        ID = 5 => "ID",
        CERT = 6 => "CERT",
        CERT_REQUEST = 7 => "CR",
        HASH = 8 => "HASH",
        SIGNATURE = 9 => "SIG",
        NONCE = 10 => "NONCE",
        NOTIFY = 11 => "N",
        DELETE = 12 => "D",
        VENDOR_ID = 13 => "VID",
        NAT_D = 20 => "NAT-D",
        NAT_OA = 21 => "NAT-OA",
        /// draft-ietf-ipsec-nat-t-ike-02/03
        NAT_D_DRAFT = 130 => "NAT-D(draft)",
        NAT_OA_DRAFT = 131 => "NAT-OA(draft)",
    }
}

wire_enum! {
    /// Exchange types (RFC 2408 s.3.1, RFC 2409).
    ExchangeType(u8) {
        IDENTITY_PROTECTION = 2 => "Main Mode",
        AGGRESSIVE = 4 => "Aggressive Mode",
        INFORMATIONAL = 5 => "Informational",
        TRANSACTION = 6 => "Transaction",
        QUICK_MODE = 32 => "Quick Mode",
        NEW_GROUP_MODE = 33 => "New Group Mode",
    }
}

wire_enum! {
    /// Notify message types (RFC 2408 s.3.14.1, RFC 2407 s.4.6.3, RFC 3706).
    NotifyType(u16) {
        INVALID_PAYLOAD_TYPE = 1 => "INVALID-PAYLOAD-TYPE",
        DOI_NOT_SUPPORTED = 2 => "DOI-NOT-SUPPORTED",
        SITUATION_NOT_SUPPORTED = 3 => "SITUATION-NOT-SUPPORTED",
        INVALID_COOKIE = 4 => "INVALID-COOKIE",
        INVALID_MAJOR_VERSION = 5 => "INVALID-MAJOR-VERSION",
        INVALID_EXCHANGE_TYPE = 7 => "INVALID-EXCHANGE-TYPE",
        INVALID_FLAGS = 8 => "INVALID-FLAGS",
        INVALID_MESSAGE_ID = 9 => "INVALID-MESSAGE-ID",
        INVALID_PROTOCOL_ID = 10 => "INVALID-PROTOCOL-ID",
        INVALID_SPI = 11 => "INVALID-SPI",
        INVALID_TRANSFORM_ID = 12 => "INVALID-TRANSFORM-ID",
        ATTRIBUTES_NOT_SUPPORTED = 13 => "ATTRIBUTES-NOT-SUPPORTED",
        NO_PROPOSAL_CHOSEN = 14 => "NO-PROPOSAL-CHOSEN",
        BAD_PROPOSAL_SYNTAX = 15 => "BAD-PROPOSAL-SYNTAX",
        PAYLOAD_MALFORMED = 16 => "PAYLOAD-MALFORMED",
        INVALID_KEY_INFORMATION = 17 => "INVALID-KEY-INFORMATION",
        INVALID_ID_INFORMATION = 18 => "INVALID-ID-INFORMATION",
        INVALID_CERT_ENCODING = 19 => "INVALID-CERT-ENCODING",
        INVALID_CERTIFICATE = 20 => "INVALID-CERTIFICATE",
        INVALID_HASH_INFORMATION = 23 => "INVALID-HASH-INFORMATION",
        AUTHENTICATION_FAILED = 24 => "AUTHENTICATION-FAILED",
        INVALID_SIGNATURE = 25 => "INVALID-SIGNATURE",
        ADDRESS_NOTIFICATION = 26 => "ADDRESS-NOTIFICATION",
        NOTIFY_SA_LIFETIME = 27 => "NOTIFY-SA-LIFETIME",
        UNSUPPORTED_EXCHANGE_TYPE = 29 => "UNSUPPORTED-EXCHANGE-TYPE",
        UNEQUAL_PAYLOAD_LENGTHS = 30 => "UNEQUAL-PAYLOAD-LENGTHS",
        CONNECTED = 16384 => "CONNECTED",
        RESPONDER_LIFETIME = 24576 => "RESPONDER-LIFETIME",
        REPLAY_STATUS = 24577 => "REPLAY-STATUS",
        INITIAL_CONTACT = 24578 => "INITIAL-CONTACT",
        R_U_THERE = 36136 => "R-U-THERE",
        R_U_THERE_ACK = 36137 => "R-U-THERE-ACK",
    }
}

impl NotifyType {
    /// Types below 16384 report errors (RFC 2408 s.3.14.1).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

wire_enum! {
    /// Identification types (RFC 2407 s.4.6.2.1).
    IdType(u8) {
        IPV4_ADDR = 1 => "ID_IPV4_ADDR",
        FQDN = 2 => "ID_FQDN",
        USER_FQDN = 3 => "ID_USER_FQDN",
        IPV4_ADDR_SUBNET = 4 => "ID_IPV4_ADDR_SUBNET",
        IPV6_ADDR = 5 => "ID_IPV6_ADDR",
        IPV6_ADDR_SUBNET = 6 => "ID_IPV6_ADDR_SUBNET",
        IPV4_ADDR_RANGE = 7 => "ID_IPV4_ADDR_RANGE",
        IPV6_ADDR_RANGE = 8 => "ID_IPV6_ADDR_RANGE",
        DER_ASN1_DN = 9 => "ID_DER_ASN1_DN",
        KEY_ID = 11 => "ID_KEY_ID",
    }
}

wire_enum! {
    /// Protocol IDs (RFC 2407 s.4.4.1).
    ProtocolId(u8) {
        ISAKMP = 1 => "ISAKMP",
        AH = 2 => "AH",
        ESP = 3 => "ESP",
        IPCOMP = 4 => "IPCOMP",
    }
}

/// Domain of interpretation: IPsec (RFC 2407).
pub const DOI_IPSEC: u32 = 1;
/// Situation: SIT_IDENTITY_ONLY.
pub const SIT_IDENTITY_ONLY: u32 = 1;
/// Phase 1 transform ID: KEY_IKE.
pub const KEY_IKE: u8 = 1;

/// Phase 1 attribute classes (RFC 2409 Appendix A).
pub mod p1_attr {
    pub const ENCRYPTION_ALGORITHM: u16 = 1;
    pub const HASH_ALGORITHM: u16 = 2;
    pub const AUTHENTICATION_METHOD: u16 = 3;
    pub const GROUP_DESCRIPTION: u16 = 4;
    pub const GROUP_TYPE: u16 = 5;
    pub const LIFE_TYPE: u16 = 11;
    pub const LIFE_DURATION: u16 = 12;
    pub const PRF: u16 = 13;
    pub const KEY_LENGTH: u16 = 14;

    /// Authentication method: pre-shared key.
    pub const AUTH_PRE_SHARED_KEY: u64 = 1;
}

/// Phase 2 (IPsec DOI) SA attributes (RFC 2407 s.4.5, RFC 3947 s.5).
pub mod p2_attr {
    pub const SA_LIFE_TYPE: u16 = 1;
    pub const SA_LIFE_DURATION: u16 = 2;
    pub const GROUP_DESCRIPTION: u16 = 3;
    pub const ENCAPSULATION_MODE: u16 = 4;
    pub const AUTHENTICATION_ALGORITHM: u16 = 5;
    pub const KEY_LENGTH: u16 = 6;

    pub const ENCAP_TUNNEL: u64 = 1;
    pub const ENCAP_TRANSPORT: u64 = 2;
    /// RFC 3947.
    pub const ENCAP_UDP_TUNNEL: u64 = 3;
    pub const ENCAP_UDP_TRANSPORT: u64 = 4;
    /// draft-ietf-ipsec-nat-t-ike-02/03.
    pub const ENCAP_UDP_TUNNEL_DRAFT: u64 = 61443;
    pub const ENCAP_UDP_TRANSPORT_DRAFT: u64 = 61444;
}

/// Life types, shared by both phases.
pub const LIFE_SECONDS: u64 = 1;
pub const LIFE_KILOBYTES: u64 = 2;

/// Vendor IDs we send or recognise.
pub mod vendor_id {
    /// RFC 3947 NAT-T: MD5("RFC 3947").
    pub const NAT_T_RFC3947: [u8; 16] = *b"\x4a\x13\x1c\x81\x07\x03\x58\x45\x5c\x57\x28\xf2\x0e\x95\x45\x2f";
    /// draft-ietf-ipsec-nat-t-ike-03.
    pub const NAT_T_DRAFT_03: [u8; 16] = *b"\x7d\x94\x19\xa6\x53\x10\xca\x6f\x2c\x17\x9d\x92\x15\x52\x9d\x56";
    /// draft-ietf-ipsec-nat-t-ike-02.
    pub const NAT_T_DRAFT_02: [u8; 16] = *b"\xcd\x60\x46\x43\x35\xdf\x21\xf8\x7c\xfd\xb2\xfc\x68\xb6\xa4\x48";
    /// "draft-ietf-ipsec-nat-t-ike-02\n" (with the newline, as many implementations hash it).
    pub const NAT_T_DRAFT_02_NL: [u8; 16] = *b"\x90\xcb\x80\x91\x3e\xbb\x69\x6e\x08\x63\x81\xb5\xec\x42\x7b\x1f";
    /// RFC 3706 Dead Peer Detection, version 1.0.
    pub const DPD: [u8; 16] = *b"\xaf\xca\xd7\x13\x68\xa1\xf1\xc9\x6b\x86\x96\xfc\x77\x57\x01\x00";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unknown_values() {
        assert_eq!(PayloadType::NAT_D.to_string(), "NAT-D");
        assert_eq!(PayloadType(99).to_string(), "PayloadType(99)");
        assert_eq!(NotifyType::NO_PROPOSAL_CHOSEN.to_string(), "NO-PROPOSAL-CHOSEN");
        assert!(NotifyType::AUTHENTICATION_FAILED.is_error());
        assert!(!NotifyType::INITIAL_CONTACT.is_error());
        assert_eq!(format!("{:?}", ExchangeType(77)), "ExchangeType(77)");
    }

    #[test]
    fn nat_t_vendor_ids_are_the_md5_of_their_names() {
        use vpngw_crypto::{HashAlgorithm, mac::hash};
        assert_eq!(hash(HashAlgorithm::Md5, &[b"RFC 3947"]), vendor_id::NAT_T_RFC3947);
        assert_eq!(hash(HashAlgorithm::Md5, &[b"draft-ietf-ipsec-nat-t-ike-03"]), vendor_id::NAT_T_DRAFT_03);
        assert_eq!(hash(HashAlgorithm::Md5, &[b"draft-ietf-ipsec-nat-t-ike-02"]), vendor_id::NAT_T_DRAFT_02);
        assert_eq!(hash(HashAlgorithm::Md5, &[b"draft-ietf-ipsec-nat-t-ike-02\n"]), vendor_id::NAT_T_DRAFT_02_NL);
    }
}
