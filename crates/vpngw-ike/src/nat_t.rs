//! NAT traversal in phase 1 (RFC 3947 and its drafts): which variant the vendor IDs agree on,
//! the NAT-D payloads we send, and what the peer's NAT-D payloads say about NATs on the path.
//! Also the DPD vendor ID, which travels with them.

use std::net::SocketAddr;

use vpngw_crypto::HashAlgorithm;

use crate::event::FailReason;
use crate::exchange::ProtocolError;
use crate::keys::nat_d;
use crate::proposal::Encapsulation;
use crate::wire::{Payload, PayloadChain, vendor_id};

/// What phase 1 found out about NAT traversal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NatT {
    /// NAT-T negotiated by vendor ID: Some(false) = RFC 3947, Some(true) = a draft.
    pub variant: Option<bool>,
    pub detected: bool,
}

/// What the peer's vendor IDs say: the NAT-T variant (RFC 3947 preferred) and DPD support.
pub(crate) struct PeerVendorIds {
    pub nat_t: Option<bool>,
    pub dpd: bool,
}

/// The cookies and addresses NAT-D hashes cover.
pub(crate) struct NatDInputs<'a> {
    pub hash: HashAlgorithm,
    pub cky_i: &'a [u8; 8],
    pub cky_r: &'a [u8; 8],
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `force_udp_encapsulation`: we pretend to be behind a NAT.
    pub forced: bool,
}

/// The vendor IDs an initiator sends: both NAT-T variants and DPD.
pub(crate) fn initiator_vendor_ids() -> Vec<Payload> {
    vec![
        Payload::VendorId(vendor_id::NAT_T_RFC3947.to_vec()),
        Payload::VendorId(vendor_id::NAT_T_DRAFT_02_NL.to_vec()),
        Payload::VendorId(vendor_id::DPD.to_vec()),
    ]
}

/// Reads the peer's vendor IDs. Unknown IDs are ignored.
pub(crate) fn read_vendor_ids(chain: &PayloadChain, peer: &str) -> PeerVendorIds {
    let mut rfc = false;
    let mut draft = false;
    let mut dpd = false;
    for v in chain.vendor_ids() {
        match v {
            x if x == vendor_id::NAT_T_RFC3947 => rfc = true,
            x if x == vendor_id::NAT_T_DRAFT_03
                || x == vendor_id::NAT_T_DRAFT_02
                || x == vendor_id::NAT_T_DRAFT_02_NL =>
            {
                draft = true
            }
            x if x == vendor_id::DPD => dpd = true,
            other => tracing::debug!(connection = %peer, vendor_id = %hex_string(other), "unknown vendor ID ignored"),
        }
    }
    let nat_t = if rfc {
        Some(false)
    } else if draft {
        Some(true)
    } else {
        None
    };
    PeerVendorIds { nat_t, dpd }
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl NatT {
    /// Our vendor IDs as a responder: the best NAT-T one the initiator sent, and DPD.
    pub fn responder_vendor_ids(&self) -> Vec<Payload> {
        let mut v: Vec<Payload> = match self.variant {
            Some(false) => vec![Payload::VendorId(vendor_id::NAT_T_RFC3947.to_vec())],
            Some(true) => vec![Payload::VendorId(vendor_id::NAT_T_DRAFT_02_NL.to_vec())],
            None => Vec::new(),
        };
        v.push(Payload::VendorId(vendor_id::DPD.to_vec()));
        v
    }

    /// Our NAT-D payloads, when NAT-T was negotiated.
    pub fn nat_d_payloads(&self, i: &NatDInputs<'_>) -> Vec<Payload> {
        let Some(draft) = self.variant else { return Vec::new() };
        // First the peer's address (destination), then ours (source): RFC 3947 s.3.2. Forcing
        // UDP encapsulation, ours is a hash of nothing, so the peer concludes we are behind a
        // NAT (strongSwan's method for `encap = yes`): a fixed derivation from the cookies keeps
        // retransmissions byte-identical.
        let mut ours = nat_d(i.hash, i.cky_i, i.cky_r, i.local);
        if i.forced {
            ours = vpngw_crypto::mac::hash(i.hash, &[b"vpngw: forced UDP encapsulation", i.cky_i, i.cky_r]);
        }
        vec![
            Payload::NatD { hash: nat_d(i.hash, i.cky_i, i.cky_r, i.remote), draft },
            Payload::NatD { hash: ours, draft },
        ]
    }

    /// Compares the peer's NAT-D payloads with the addresses we see (RFC 3947 s.3.2).
    pub fn detect(&mut self, chain: &PayloadChain, i: &NatDInputs<'_>, peer: &str) -> Result<(), ProtocolError> {
        if self.variant.is_none() {
            return Ok(());
        }
        let hashes: Vec<&[u8]> = chain.nat_d().collect();
        let [ours, theirs @ ..] = hashes.as_slice() else {
            return Err(ProtocolError::unannounced(
                FailReason::NatDetectionFailed,
                "NAT-T was negotiated but the peer sent no NAT-D payloads",
            ));
        };
        if theirs.is_empty() {
            return Err(ProtocolError::unannounced(
                FailReason::NatDetectionFailed,
                "the peer sent only one NAT-D payload",
            ));
        }
        let local_ok = *ours == nat_d(i.hash, i.cky_i, i.cky_r, i.local);
        let remote_hash = nat_d(i.hash, i.cky_i, i.cky_r, i.remote);
        let remote_ok = theirs.iter().any(|h| *h == remote_hash);
        if !local_ok || !remote_ok || i.forced {
            tracing::debug!(connection = %peer, local_behind_nat = !local_ok, peer_behind_nat = !remote_ok, forced = i.forced, "NAT detected");
            self.detected = true;
        }
        Ok(())
    }

    /// ESP's encapsulation on the child SAs.
    pub fn encapsulation(&self) -> Encapsulation {
        match (self.detected, self.variant) {
            (true, Some(draft)) => Encapsulation::UdpTunnel { draft },
            _ => Encapsulation::Tunnel,
        }
    }
}
