#![no_main]
//! The IKE endpoint as responder, fed datagrams and clock steps (vpngw_ike::fuzzing::endpoint).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpngw_ike::fuzzing::endpoint(false, data);
});
