//! Decodes a child's `Job`, a parent's `Outcome` or a pool chunk's result; a decoded value must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_child(data);
});
