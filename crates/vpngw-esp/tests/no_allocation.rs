//! The per-packet paths allocate nothing: seal, seal_batch, open and open_batch run under a
//! counting global allocator for every suite, and the count must not move. Only the test's own
//! thread is counted: the test harness's other threads allocate when they please (a count of
//! the whole process failed once in a fresh-clone run with 4 allocations that were not ours).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{all_suites, inner_packet, keys};
use vpngw_crypto::FastRng;
use vpngw_esp::{InboundSa, NextHeader, OpenPacket, OutboundSa, SealPacket, Spi};

struct Counting;

thread_local! {
    /// Allocations made by this thread. A const-initialised `Cell` needs no allocation of its
    /// own, so counting from inside the allocator cannot recurse.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down has no locals left; its allocations are not ours.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards every call unchanged to the system allocator; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn seal_and_open_do_not_allocate() {
    for (e, i) in all_suites() {
        let k = keys(e, i, 4);
        let out = OutboundSa::new(Spi::new(7), &k).unwrap();
        let inb = InboundSa::new(Spi::new(7), &k, 1024).unwrap();
        let mut rng = FastRng::from_seed_for_tests(1);
        let h = out.header_len();
        let sizes = [0usize, 1, 40, 64, 511, 1400];
        // Buffers prepared up front: allocation before the measured section is fine.
        let mut single: Vec<Vec<u8>> = sizes.iter().map(|s| vec![0u8; h + s + out.max_trailer_len()]).collect();
        let mut batch: Vec<Vec<u8>> = (0..40).map(|n| vec![0u8; h + n * 30 + out.max_trailer_len()]).collect();
        for (b, s) in single.iter_mut().zip(sizes) {
            b[h..h + s].copy_from_slice(&inner_packet(s, 1));
        }
        let mut packets: Vec<SealPacket<'_>> =
            batch.iter_mut().enumerate().map(|(n, b)| SealPacket::new(b, h..h + n * 30, NextHeader::IPV4)).collect();
        let mut opened = Vec::with_capacity(64);

        let before = allocations();
        for (b, s) in single.iter_mut().zip(sizes) {
            let sealed = out.seal_in_place(&mut rng, b, h..h + s, NextHeader::IPV4).unwrap();
            let esp = &mut b[sealed.range];
            opened.push(inb.open_in_place(esp).unwrap().payload.len());
        }
        out.seal_batch(&mut rng, &mut packets);
        let after = allocations();
        assert_eq!(after, before, "{e}/{i}: {} allocations on the seal/open path", after - before);
        assert_eq!(opened, sizes);

        let mut esps: Vec<&mut [u8]> = Vec::with_capacity(packets.len());
        for p in packets.iter_mut() {
            let range = p.outcome.clone().unwrap().unwrap().range;
            esps.push(&mut p.buf[range]);
        }
        let mut to_open: Vec<OpenPacket<'_>> = esps.into_iter().map(OpenPacket::new).collect();
        let before = allocations();
        inb.open_batch(&mut to_open);
        let after = allocations();
        assert_eq!(after, before, "{e}/{i}: {} allocations in open_batch", after - before);
        assert!(to_open.iter().all(|p| matches!(p.outcome, Some(Ok(_)))));
    }
}
