#![no_main]
//! ISAKMP decoding: header and payload chain (vpngw_ike::fuzzing::wire).

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpngw_ike::fuzzing::wire(data));
