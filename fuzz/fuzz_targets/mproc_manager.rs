//! Drives the manager: a served request script, reply frames, TCP framing, the HMAC handshake, in-place arithmetic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::fuzzing::fuzz_manager(data);
});
