//! Counters: per worker (each written by its own thread only, read by anyone) and per reason.
//! A worker bumps them with a plain load + store (no locked instruction: it is the only writer);
//! the control plane sums them when asked.

use std::sync::atomic::{AtomicU64, Ordering};

use vpngw_esp::OpenError;

/// Why the dataplane dropped a packet: one closed set for counters, logs and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Outbound: not an IPv4 packet (the SPD is IPv4).
    NotIpv4,
    /// Outbound: no configured policy covers source and destination; never sent in clear.
    NoPolicy,
    /// Outbound: a policy covers it but no SA is installed (yet).
    NoSa,
    /// Outbound: larger than the tunnel carries, with DF set: ICMP "fragmentation needed" sent.
    TooBig,
    /// Outbound: the SA refused to seal (sequence numbers exhausted).
    Seal,
    /// A socket or TUN write failed (buffer full, peer unreachable).
    Send,
    /// Inbound: not even an ESP header, or a malformed outer packet.
    Malformed,
    /// Inbound: no inbound SA has this SPI.
    UnknownSpi,
    /// Inbound: refused by the ESP engine (truncated, replay, ICV, padding, ...).
    Esp(OpenError),
    /// Inbound: the decrypted packet is outside the SA's selectors.
    Policy,
    /// Outbound: held for an SA being negotiated (on-traffic start) longer than the queue
    /// keeps packets.
    PendingExpired,
    /// An IKE datagram on UDP 4500 (or an acquire or rekey notice) found the control plane's
    /// queue full (a flood, or a stalled control plane): dropped; a peer retransmits.
    ControlQueueFull,
}

impl DropReason {
    pub const COUNT: usize = 11 + OpenError::COUNT;

    /// Every reason, in the order of [`DropReason::index`].
    pub const ALL: [Self; Self::COUNT] = {
        let mut all = [Self::NotIpv4; Self::COUNT];
        let head = [
            Self::NotIpv4,
            Self::NoPolicy,
            Self::NoSa,
            Self::TooBig,
            Self::Seal,
            Self::Send,
            Self::Malformed,
            Self::UnknownSpi,
        ];
        let mut i = 0;
        while i < head.len() {
            all[i] = head[i];
            i += 1;
        }
        let mut k = 0;
        while k < OpenError::COUNT {
            all[head.len() + k] = Self::Esp(OpenError::ALL[k]);
            k += 1;
        }
        all[head.len() + OpenError::COUNT] = Self::Policy;
        all[head.len() + OpenError::COUNT + 1] = Self::PendingExpired;
        all[head.len() + OpenError::COUNT + 2] = Self::ControlQueueFull;
        all
    };

    /// Every reason (see [`DropReason::ALL`]).
    pub const fn all() -> [Self; Self::COUNT] {
        Self::ALL
    }

    pub fn index(self) -> usize {
        match self {
            Self::NotIpv4 => 0,
            Self::NoPolicy => 1,
            Self::NoSa => 2,
            Self::TooBig => 3,
            Self::Seal => 4,
            Self::Send => 5,
            Self::Malformed => 6,
            Self::UnknownSpi => 7,
            Self::Esp(e) => 8 + e.index(),
            Self::Policy => 8 + OpenError::COUNT,
            Self::PendingExpired => 9 + OpenError::COUNT,
            Self::ControlQueueFull => 10 + OpenError::COUNT,
        }
    }

    /// Stable label for metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotIpv4 => "not_ipv4",
            Self::NoPolicy => "no_policy",
            Self::NoSa => "no_sa",
            Self::TooBig => "too_big",
            Self::Seal => "seal",
            Self::Send => "send",
            Self::Malformed => "malformed",
            Self::UnknownSpi => "unknown_spi",
            Self::Esp(e) => e.as_str(),
            Self::Policy => "policy",
            Self::PendingExpired => "pending_expired",
            Self::ControlQueueFull => "control_queue_full",
        }
    }
}

/// One worker's counters, on their own cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Plaintext packets from the TUN sealed and sent.
    pub out_packets: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Of `out_packets`, the raw ESP packets sent through the link path (see `link`).
    pub out_link_packets: AtomicU64,
    /// ESP packets opened and written to the TUN.
    pub in_packets: AtomicU64,
    pub in_bytes: AtomicU64,
    /// IKE datagrams received on port 4500 and handed to the control plane.
    pub ike_forwarded: AtomicU64,
    pub keepalives: AtomicU64,
    /// TCP SYNs (either way through the tunnel) whose MSS option was lowered to the clamp.
    pub mss_clamped: AtomicU64,
    /// Time spent working (not waiting), nanoseconds.
    pub busy_ns: AtomicU64,
    /// Loop iterations: the control plane watches this to know the worker passed a quiescent
    /// point (see `Dataplane::quiesce`).
    pub epoch: AtomicU64,
    /// The worker is between poll() and the end of its batch (may hold SA references).
    pub busy: std::sync::atomic::AtomicBool,
    pub drops: [AtomicU64; DropReason::COUNT],
    /// The core the worker is pinned to, plus one (0 = not pinned).
    core: AtomicU64,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        Self {
            out_packets: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
            out_link_packets: AtomicU64::new(0),
            in_packets: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            ike_forwarded: AtomicU64::new(0),
            keepalives: AtomicU64::new(0),
            mss_clamped: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            busy: std::sync::atomic::AtomicBool::new(false),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            core: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter only this thread writes.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl WorkerCounters {
    /// The core this worker is pinned to, if it is.
    pub fn core(&self) -> Option<usize> {
        self.core.load(Ordering::Relaxed).checked_sub(1).map(|c| c as usize)
    }

    pub(crate) fn set_core(&self, core: usize) {
        self.core.store(core as u64 + 1, Ordering::Relaxed);
    }

    pub(crate) fn drop(&self, reason: DropReason) {
        bump(&self.drops[reason.index()], 1);
    }

    pub(crate) fn drop_n(&self, reason: DropReason, n: u64) {
        bump(&self.drops[reason.index()], n);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_labelled_once() {
        let all = DropReason::all();
        assert_eq!(all, DropReason::ALL);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let mut labels: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
    }
}
