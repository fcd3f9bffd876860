//! Decodes a frame as a `Reply`; a decoded value must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    forkserver::fuzzing::fuzz_decode_reply(data);
});
