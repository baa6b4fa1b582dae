//! Replays the fuzz targets' committed inputs (fuzz/corpus/<target>, the seeds, and
//! fuzz/regressions/<target>, inputs that once failed) through the functions the targets call
//! (`vpngw_ike::fuzzing`): no panic, and the bounds those functions assert.
//!
//! `cargo test -p vpngw-ike --test fuzz_corpus -- --ignored write_endpoint_seeds` rewrites the
//! endpoint seeds from an in-memory negotiation (after a change to the engine's messages).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use vpngw_ike::fuzzing::{self, Outcome};

fn fuzz_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz")).to_path_buf()
}

/// Every file of corpus/<target> and regressions/<target>, with its path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { continue };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn ike_wire_inputs_replay() {
    let files = inputs("ike_wire");
    assert!(!files.is_empty(), "the seed corpus is committed");
    for (path, bytes) in files {
        eprintln!("{}", path.display());
        fuzzing::wire(&bytes);
    }
}

#[test]
fn ike_responder_inputs_replay() {
    let files = inputs("ike_responder");
    assert!(!files.is_empty(), "the seed corpus is committed");
    for (path, bytes) in files {
        eprintln!("{}", path.display());
        fuzzing::endpoint(false, &bytes);
    }
}

#[test]
fn ike_initiator_inputs_replay() {
    let files = inputs("ike_initiator");
    assert!(!files.is_empty(), "the seed corpus is committed");
    for (path, bytes) in files {
        eprintln!("{}", path.display());
        fuzzing::endpoint(true, &bytes);
    }
}

/// The seeds take the fuzzed endpoint through a whole negotiation (else the fuzzer would start
/// from the first message): the recorded peer's messages still fit this engine's answers.
#[test]
fn endpoint_seeds_negotiate() {
    let (to_responder, to_initiator) = fuzzing::seed_inputs();
    for (initiator, seed) in [(false, &to_responder), (true, &to_initiator)] {
        let Outcome { ike_established, child_established, .. } = fuzzing::endpoint(initiator, seed);
        assert!(ike_established >= 1, "initiator {initiator}: no IKE SA");
        assert!(child_established >= 1, "initiator {initiator}: no child SA");
    }
    for (target, seed) in [("ike_responder", to_responder), ("ike_initiator", to_initiator)] {
        let committed = std::fs::read(fuzz_dir().join("corpus").join(target).join("negotiation")).unwrap();
        assert_eq!(committed, seed, "{target}: the committed seed is stale; rewrite it (see the top of this file)");
    }
}

/// Writes the endpoint seeds and, for the wire target, each datagram of them alone.
#[test]
#[ignore]
fn write_endpoint_seeds() {
    let (to_responder, to_initiator) = fuzzing::seed_inputs();
    for (target, seed) in [("ike_responder", &to_responder), ("ike_initiator", &to_initiator)] {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("negotiation"), seed).unwrap();
    }
    let dir = fuzz_dir().join("corpus").join("ike_wire");
    std::fs::create_dir_all(&dir).unwrap();
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for seed in [&to_responder, &to_initiator] {
        for step in fuzzing::decode_steps(seed) {
            if let fuzzing::Step::Datagram { data, .. } = step
                && !datagrams.contains(&data)
            {
                datagrams.push(data);
            }
        }
    }
    for (n, data) in datagrams.iter().enumerate() {
        std::fs::write(dir.join(format!("datagram-{n:02}")), data).unwrap();
    }
}
