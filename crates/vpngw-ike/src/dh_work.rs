//! Diffie-Hellman as work the driver runs: the engine's one expensive step, taken off the
//! thread that serves every other message.
//!
//! With [`EngineConfig::dh_offload`](crate::EngineConfig) set, main mode does not exponentiate
//! where it stands: it draws the private exponent from the engine's RNG (cheap), queues a
//! [`DhWork`] naming the IKE SA, and waits in a computing state. The driver takes the work
//! ([`Endpoint::poll_dh_work`](crate::Endpoint::poll_dh_work)), runs [`DhWork::run`] on any
//! thread (it owns everything it needs and touches nothing shared), and gives the
//! [`DhDone`] back ([`Endpoint::complete_dh_work`](crate::Endpoint::complete_dh_work)); the
//! exchange goes on from there. Without it the same work runs at once, in place, so both
//! paths share every line after the exponentiation.
//!
//! Nothing here decides whether a computation is allowed: the admission bounds
//! (`admission.rs`) are applied before the work exists, and each piece of work belongs to a
//! half-open or an initiating SA, so the work queued is bounded by those SAs. Aggressive mode and
//! quick mode's PFS still compute in place (see docs/architecture.md, "Diffie-Hellman work").

use vpngw_crypto::{CryptoError, DhExponent, DhPrivateKey, SecretBytes};

use crate::event::IkeSaId;

/// What one exponentiation job computes.
pub(crate) enum DhTask {
    /// Our public value (a main mode initiator, before its message 3).
    PublicValue { exponent: DhExponent },
    /// Our public value and g^xy (a main mode responder, on message 3).
    PublicValueAndShared { exponent: DhExponent, peer_public: Vec<u8> },
    /// g^xy with the key we sent (a main mode initiator, on message 4).
    Shared { key: DhPrivateKey, peer_public: Vec<u8> },
}

/// Diffie-Hellman work for one IKE SA, to run on any thread.
pub struct DhWork {
    ike_sa: IkeSaId,
    task: DhTask,
}

impl std::fmt::Debug for DhWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhWork").field("ike_sa", &self.ike_sa).finish_non_exhaustive()
    }
}

/// The result of a [`DhWork`], for the IKE SA that asked.
pub struct DhDone {
    pub(crate) ike_sa: IkeSaId,
    pub(crate) result: DhResult,
}

impl std::fmt::Debug for DhDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhDone").field("ike_sa", &self.ike_sa).finish_non_exhaustive()
    }
}

/// What a task yields: the key whose public value was computed (when one was), and g^xy (when
/// asked for; the peer's value may be refused).
pub(crate) struct DhResult {
    pub key: Option<DhPrivateKey>,
    pub shared: Option<Result<SecretBytes, CryptoError>>,
}

impl DhTask {
    /// The exponentiations.
    pub fn run(self) -> DhResult {
        match self {
            Self::PublicValue { exponent } => DhResult { key: Some(exponent.into_key()), shared: None },
            Self::PublicValueAndShared { exponent, peer_public } => {
                let key = exponent.into_key();
                let shared = key.agree(&peer_public);
                DhResult { key: Some(key), shared: Some(shared) }
            }
            Self::Shared { key, peer_public } => DhResult { key: None, shared: Some(key.agree(&peer_public)) },
        }
    }
}

impl DhWork {
    pub(crate) fn new(ike_sa: IkeSaId, task: DhTask) -> Self {
        Self { ike_sa, task }
    }

    /// The IKE SA this work is for.
    pub fn ike_sa(&self) -> IkeSaId {
        self.ike_sa
    }

    /// Runs the exponentiations (about 0.6 ms each with DH group 14 here).
    pub fn run(self) -> DhDone {
        DhDone { ike_sa: self.ike_sa, result: self.task.run() }
    }
}

impl DhDone {
    /// The IKE SA this result is for.
    pub fn ike_sa(&self) -> IkeSaId {
        self.ike_sa
    }
}
