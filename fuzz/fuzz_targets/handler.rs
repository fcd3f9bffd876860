//! Drives the server's per-frame handler with a script of frames, fds and events (see `forkserver::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    forkserver::fuzzing::fuzz_handler(data);
});
