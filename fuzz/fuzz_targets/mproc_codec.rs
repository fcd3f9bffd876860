//! Decodes a value (with an fd table) picked by the first byte; a decoded value must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_codec(data);
});
