#![no_main]
//! ESP open with a fixed SA: forged, signed, batched and sealed packets (vpngw_esp::fuzzing::open).

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpngw_esp::fuzzing::open(data));
