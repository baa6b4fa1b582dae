//! Replays the `esp_open` fuzz target's committed inputs (fuzz/corpus/esp_open, the seeds, and
//! fuzz/regressions/esp_open, inputs that once failed) through the function the target calls
//! (`vpngw_esp::fuzzing::open`): no panic, and the checks it makes.
//!
//! `cargo test -p vpngw-esp --test fuzz_corpus -- --ignored write_seeds` rewrites the seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use vpngw_esp::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz")).to_path_buf()
}

#[test]
fn esp_open_inputs_replay() {
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join("esp_open")) else { continue };
        for entry in dir.flatten() {
            eprintln!("{}", entry.path().display());
            fuzzing::open(&std::fs::read(entry.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "the seed corpus is committed");
}

/// The seeds reach past the ICV: each is a packet the fixed SA sealed.
#[test]
fn seeds_are_current() {
    for (name, seed) in fuzzing::seed_inputs() {
        fuzzing::open(&seed);
        let committed = std::fs::read(fuzz_dir().join("corpus/esp_open").join(&name)).unwrap();
        assert_eq!(committed, seed, "{name}: the committed seed is stale; rewrite it (see the top of this file)");
    }
}

#[test]
#[ignore]
fn write_seeds() {
    let dir = fuzz_dir().join("corpus/esp_open");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, seed) in fuzzing::seed_inputs() {
        std::fs::write(dir.join(name), seed).unwrap();
    }
}
