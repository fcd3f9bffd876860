//! A queue's `get` over ring memory and socket frames written from the
//! input, or a script of `put`s and `get`s that die at every point of the
//! protocol, checked against a model (see `mproc::fuzzing::fuzz_ring`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_ring(data);
});
