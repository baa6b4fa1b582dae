#![no_main]
//! vpngw check on a configuration file's bytes (fuzz_inputs::config_text in crates/vpngw).

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpngw_fuzz::fuzz_inputs::config_text(data));
