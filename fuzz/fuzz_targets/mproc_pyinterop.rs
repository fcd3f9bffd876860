//! CPython's message framing, both sides of its authkey handshake, and the `ShareableList` layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_pyinterop(data);
});
