#![no_main]
//! The IKE endpoint as initiator (it sent its first message), fed datagrams and clock steps (vpngw_ike::fuzzing::endpoint).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vpngw_ike::fuzzing::endpoint(true, data);
});
