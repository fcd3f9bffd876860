//! Pops every entry of a queue ring whose shared memory was written from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_ring(data);
});
