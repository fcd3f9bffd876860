//! Receives one raw frame (inline, or a memfd spill frame) on a real socket pair through `Channel`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_channel(data);
});
