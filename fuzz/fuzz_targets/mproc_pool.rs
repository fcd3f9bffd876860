//! Reads a message of pool frames as a worker or the parent does; parsed frames must re-frame identically.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_pool(data);
});
