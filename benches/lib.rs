//! # vpngw-benches: shared reporting for the benchmarks
//!
//! **Owns:** reading criterion's results back (median time per iteration) and printing the
//! tables of throughput and ratios that `docs/performance.md` records.
//!
//! **Must not touch:** the product. Benchmarks call the crates' public APIs only.

use std::path::{Path, PathBuf};

/// Where criterion writes (and we read) results: `$CARGO_TARGET_DIR/criterion` or the
/// workspace's `target/criterion`.
pub fn criterion_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("criterion"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"),
    }
}

/// Median nanoseconds per iteration of benchmark `group/function/parameter`, if it ran.
pub fn median_ns(group: &str, function: &str, parameter: &str) -> Option<f64> {
    let path = criterion_dir().join(group).join(function).join(parameter).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Gbit/s for `bytes` per iteration at `ns` per iteration.
pub fn gbit_per_s(bytes: usize, ns: f64) -> f64 {
    bytes as f64 * 8.0 / ns
}

/// Million packets per second at `ns` per packet.
pub fn mpps(ns: f64) -> f64 {
    1e3 / ns
}
