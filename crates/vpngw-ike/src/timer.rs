//! The timers of one IKE SA, by name (quinn-proto's `Timer`): each has at most one deadline at a
//! time, the IKE SA's next timeout is the earliest of them, and due timers fire in the order of
//! [`Timer::VALUES`].

/// One kind of deadline of an IKE SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Resend the phase 1 message that waits for its answer, or give up.
    Retransmit,
    /// A responder that is not established by then is dropped.
    HalfOpen,
    /// Resend a quick mode message of ours, or give up on that exchange.
    QuickMode,
    /// Activate, replace, retire or expire a child SA.
    ChildSa,
    /// Start re-authenticating before the ISAKMP SA's lifetime ends.
    Reauth,
    /// Dead peer detection: probe the silent peer, or declare it dead.
    Dpd,
    /// The ISAKMP SA's hard lifetime.
    Expiry,
}

impl Timer {
    /// Every timer, in the order due ones fire.
    pub const VALUES: [Self; 7] =
        [Self::Retransmit, Self::HalfOpen, Self::QuickMode, Self::ChildSa, Self::Reauth, Self::Dpd, Self::Expiry];
}
