//! Decodes what a warm child receives (`ToWarm`: the server's handover or a
//! client's spawn sent straight to it); a decoded value must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    forkserver::fuzzing::fuzz_decode_to_warm(data);
});
