//! Proposals: what we offer, and choosing among what a peer offers, with every mismatched
//! parameter named in the seed's words when nothing fits.
//! `common.rs` holds what both share; `mod.rs` only names the parts.

mod common;
mod phase1;
mod phase2;

pub use common::{Difference, Mismatch};
pub use phase1::{Phase1Choice, accept_phase1_reply, phase1_offer, select_phase1};
pub use phase2::{
    Encapsulation, Phase2Choice, Phase2Selection, accept_phase2_reply, parse_responder_lifetime, phase2_offer,
    responder_lifetime_data, select_phase2,
};
