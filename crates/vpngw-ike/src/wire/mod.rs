//! ISAKMP (RFC 2408) on the wire: numbers, a bounds-checked reader, the header, payloads.
//!
//! Parsing never panics: every length is checked before use, and a malformed message is a
//! [`WireError`] naming what was wrong. Numbers are newtypes with constants (as rustls does), so
//! unknown values survive a round trip and print in their numeric form.

mod error;
mod header;
mod numbers;
mod payload;
mod reader;
mod sa;

pub use error::WireError;
pub use header::{FLAG_COMMIT, FLAG_ENCRYPTED, HEADER_LEN, IsakmpHeader, VERSION_1_0};
pub use numbers::*;
pub use payload::{
    DeletePayload, IdPayload, NotifyPayload, Payload, PayloadChain, RawPayload, encode_payloads, parse_payloads,
};
pub use reader::Reader;
pub use sa::{Attribute, ProposalPayload, SaPayload, TransformPayload};
