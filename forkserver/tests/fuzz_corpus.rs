//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! harness functions the cargo-fuzz targets call, so `cargo test` covers
//! every seed and every crasher ever found without a fuzzing toolchain.
//!
//! `cargo test -p forkserver --test fuzz_corpus -- --ignored write_seeds`
//! rewrites the `seed-*` files from [`forkserver::fuzzing::seeds`].

use forkserver::fuzzing;
use testkit::fuzz_corpus;

/// Whether a corpus directory is this crate's (the `mproc_*` targets are
/// the `mproc` crate's, replayed by its own test).
fn ours(target: &str) -> bool {
    !target.starts_with("mproc_")
}

#[test]
fn every_corpus_directory_is_a_target() {
    fuzz_corpus::assert_every_directory_is_a_target(ours, fuzzing::run_target);
}

testkit::corpus_tests! {
    fuzzing;
    decode_request_corpus => "decode_request",
    decode_reply_corpus => "decode_reply",
    decode_spawn_details_corpus => "decode_spawn_details",
    decode_to_warm_corpus => "decode_to_warm",
    handler_corpus => "handler",
}
