//! Anti-replay window (RFC 4303 s.3.4.3), lock-free, in two phases.
//!
//! A bitmap ring in the manner of RFC 6479: the window slides by replacing whole words instead of
//! shifting bits. Our twist makes it lock-free for several workers: each ring word is one
//! `AtomicU64` holding a 32-bit *block tag* (sequence >> 5) beside 32 bitmap bits. A word whose
//! tag is older than the block being marked is stale and is replaced in the same compare-and-swap
//! that sets the bit, so sliding never needs a separate clearing pass that could race with a
//! concurrent mark. With `ceil(W/32) + 1` words, a word is only ever reused by a block lying
//! wholly to the right of the window of every sequence number it held (the proof is in
//! docs/adr/0004-replay-window.md).
//!
//! Use: [`ReplayWindow::check`] before the ICV (cheap, read-only: drops replays before spending
//! crypto on them), [`ReplayWindow::commit`] after the ICV passed (authoritative: of two workers
//! racing with the same number, exactly one wins).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{OpenError, SaError};

/// The default window, in packets (RFC 4303 asks for at least 32, recommends 64; 1024 absorbs
/// the reordering of multi-queue NICs and parallel workers).
pub const DEFAULT_WINDOW: u32 = 1024;
pub const MIN_WINDOW: u32 = 64;
pub const MAX_WINDOW: u32 = 16384;

const BLOCK_SHIFT: u32 = 5;
const BLOCK_BITS: u64 = 1 << BLOCK_SHIFT;

/// The anti-replay state of one inbound SA.
#[derive(Debug)]
pub struct ReplayWindow {
    size: u64,
    /// Highest sequence number committed so far (0: none yet).
    top: AtomicU64,
    /// `tag << 32 | bitmap`: tag = sequence >> 5 of the block the bitmap describes.
    ring: Box<[AtomicU64]>,
}

impl ReplayWindow {
    /// A window of `size` packets (64..=16384).
    pub fn new(size: u32) -> Result<Self, SaError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) {
            return Err(SaError::ReplayWindow { size, min: MIN_WINDOW, max: MAX_WINDOW });
        }
        let words = size.div_ceil(BLOCK_BITS as u32) as usize + 1;
        let ring = (0..words).map(|_| AtomicU64::new(0)).collect();
        Ok(Self { size: u64::from(size), top: AtomicU64::new(0), ring })
    }

    pub fn size(&self) -> u32 {
        self.size as u32
    }

    /// Highest sequence number accepted so far (0 before the first packet).
    pub fn highest(&self) -> u32 {
        self.top.load(Ordering::Acquire) as u32
    }

    fn slot(&self, seq: u64) -> (&AtomicU64, u64, u64) {
        let block = seq >> BLOCK_SHIFT;
        let word = &self.ring[(block % self.ring.len() as u64) as usize];
        (word, block, 1u64 << (seq & (BLOCK_BITS - 1)))
    }

    fn in_window(&self, seq: u64) -> Result<(), OpenError> {
        let top = self.top.load(Ordering::Acquire);
        if seq == 0 || (seq <= top && top - seq >= self.size) {
            return Err(OpenError::TooOld);
        }
        Ok(())
    }

    /// Phase 1, before the ICV: would `seq` be accepted? Changes nothing.
    pub fn check(&self, seq: u32) -> Result<(), OpenError> {
        let seq = u64::from(seq);
        self.in_window(seq)?;
        let (word, block, bit) = self.slot(seq);
        let current = word.load(Ordering::Acquire);
        let tag = current >> 32;
        if tag > block {
            return Err(OpenError::TooOld);
        }
        if tag == block && current & bit != 0 {
            return Err(OpenError::Replayed);
        }
        Ok(())
    }

    /// Phase 2, after the ICV passed: marks `seq` as received and slides the window. Fails if
    /// `seq` was committed meanwhile (by another worker) or fell out of the window.
    pub fn commit(&self, seq: u32) -> Result<(), OpenError> {
        let seq = u64::from(seq);
        self.in_window(seq)?;
        let (word, block, bit) = self.slot(seq);
        let mut current = word.load(Ordering::Acquire);
        loop {
            let tag = current >> 32;
            let next = if tag > block {
                return Err(OpenError::TooOld);
            } else if tag == block {
                if current & bit != 0 {
                    return Err(OpenError::Replayed);
                }
                current | bit
            } else {
                // A stale word from an older block: its numbers are all out of the window now.
                (block << 32) | bit
            };
            match word.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.top.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_outside_the_range_are_refused() {
        assert!(ReplayWindow::new(63).is_err());
        assert!(ReplayWindow::new(16385).is_err());
        assert!(ReplayWindow::new(64).is_ok());
        assert!(ReplayWindow::new(16384).is_ok());
        assert!(ReplayWindow::new(100).is_ok());
    }

    #[test]
    fn zero_is_never_accepted() {
        let w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(0), Err(OpenError::TooOld));
        assert_eq!(w.commit(0), Err(OpenError::TooOld));
    }

    #[test]
    fn ring_word_count() {
        assert_eq!(ReplayWindow::new(64).unwrap().ring.len(), 3);
        assert_eq!(ReplayWindow::new(1024).unwrap().ring.len(), 33);
        assert_eq!(ReplayWindow::new(100).unwrap().ring.len(), 5);
    }
}
