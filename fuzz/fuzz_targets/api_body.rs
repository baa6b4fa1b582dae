#![no_main]
//! The management API's PUT body, JSON to a validated connection (fuzz_inputs::api_body in crates/vpngw).

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpngw_fuzz::fuzz_inputs::api_body(data));
