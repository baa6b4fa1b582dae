//! The anti-replay window against a plain model (a set of seen numbers and the highest one), at
//! the edges the RFC cares about, and under real concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::Arc;

use proptest::prelude::*;
use vpngw_esp::{OpenError, ReplayWindow};

/// RFC 4303 s.3.4.3 semantics, written the obvious way.
struct Model {
    size: u64,
    top: u64,
    seen: HashSet<u64>,
}

impl Model {
    fn commit(&mut self, seq: u32) -> Result<(), OpenError> {
        let seq = u64::from(seq);
        if seq == 0 || (seq <= self.top && self.top - seq >= self.size) {
            return Err(OpenError::TooOld);
        }
        if !self.seen.insert(seq) {
            return Err(OpenError::Replayed);
        }
        self.top = self.top.max(seq);
        Ok(())
    }
}

#[test]
fn edges() {
    let w = ReplayWindow::new(64).unwrap();
    assert_eq!(w.commit(1), Ok(()));
    assert_eq!(w.commit(1), Err(OpenError::Replayed)); // duplicate
    assert_eq!(w.commit(64), Ok(()));
    assert_eq!(w.check(1), Err(OpenError::Replayed)); // 64 - 1 = 63 < 64: still inside
    assert_eq!(w.commit(65), Ok(()));
    assert_eq!(w.check(1), Err(OpenError::TooOld)); // slid out
    assert_eq!(w.check(2), Ok(())); // left edge of the window, never seen
    assert_eq!(w.commit(1_000_000), Ok(())); // far ahead
    assert_eq!(w.check(65), Err(OpenError::TooOld));
    assert_eq!(w.check(1_000_000 - 63), Ok(()));
    assert_eq!(w.check(1_000_000 - 64), Err(OpenError::TooOld));
    assert_eq!(w.commit(u32::MAX), Ok(()));
    assert_eq!(w.commit(u32::MAX), Err(OpenError::Replayed));
    assert_eq!(w.check(u32::MAX - 63), Ok(()));
    assert_eq!(w.highest(), u32::MAX);
}

#[test]
fn check_does_not_change_state() {
    let w = ReplayWindow::new(128).unwrap();
    for _ in 0..3 {
        assert_eq!(w.check(10), Ok(()));
    }
    assert_eq!(w.highest(), 0);
    assert_eq!(w.commit(10), Ok(()));
    assert_eq!(w.check(10), Err(OpenError::Replayed));
}

#[test]
fn every_number_of_a_reordered_window_is_accepted_once() {
    for size in [64u32, 100, 1024, 16384] {
        let w = ReplayWindow::new(size).unwrap();
        // Deliver 1..=4*size in blocks of `size`, each block reversed: maximal in-window reorder.
        let mut accepted = 0;
        for block in 0..4 {
            for seq in (block * size + 1..=(block + 1) * size).rev() {
                assert_eq!(w.commit(seq), Ok(()), "size {size} seq {seq}");
                accepted += 1;
            }
            for seq in block * size + 1..=(block + 1) * size {
                assert!(w.commit(seq).is_err());
            }
        }
        assert_eq!(accepted, 4 * size);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn matches_the_model(
        size in 64u32..=2048,
        base in prop_oneof![Just(0u32), 1u32..1_000_000, Just(u32::MAX - 5000)],
        steps in prop::collection::vec((0u32..5000, any::<bool>()), 1..400),
    ) {
        let w = ReplayWindow::new(size).unwrap();
        let mut m = Model { size: u64::from(size), top: 0, seen: HashSet::new() };
        for (offset, check_first) in steps {
            let seq = base.saturating_add(offset);
            if check_first {
                // check() predicts commit() when nothing else happens in between.
                let predicted = w.check(seq);
                let got = w.commit(seq);
                prop_assert_eq!(predicted, got);
                prop_assert_eq!(got, m.commit(seq), "seq {}", seq);
            } else {
                prop_assert_eq!(w.commit(seq), m.commit(seq), "seq {}", seq);
            }
            prop_assert_eq!(u64::from(w.highest()), m.top);
        }
    }
}

#[test]
fn concurrent_commits_accept_each_number_exactly_once() {
    // Several threads race over the same numbers (each delivers every number, in its own
    // shuffled order, with a sliding front): every number inside the window must be accepted by
    // exactly one thread, and nothing is ever accepted twice.
    let threads = 4;
    let n: u32 = 200_000;
    let w = Arc::new(ReplayWindow::new(1024).unwrap());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut x: u64 = 0x9e37_79b9 + t;
                for chunk_start in (1..=n).step_by(256) {
                    let mut chunk: Vec<u32> = (chunk_start..(chunk_start + 256).min(n + 1)).collect();
                    for i in (1..chunk.len()).rev() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        chunk.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    for seq in chunk {
                        if w.check(seq).is_ok() && w.commit(seq).is_ok() {
                            mine.push(seq);
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u32> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a sequence number was accepted twice");
    // Reordering spans at most 256 + thread skew; with a 1024 window almost everything lands.
    assert!(total as f64 > 0.99 * f64::from(n), "only {total} of {n} accepted");
}
