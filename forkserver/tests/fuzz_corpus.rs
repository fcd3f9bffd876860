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

fn replay(only: &str) {
    fuzz_corpus::replay(only, fuzzing::run_target);
}

#[test]
fn every_corpus_directory_is_a_target() {
    fuzz_corpus::assert_every_directory_is_a_target(ours, fuzzing::run_target);
}

#[test]
fn decode_request_corpus() {
    replay("decode_request");
}

#[test]
fn decode_reply_corpus() {
    replay("decode_reply");
}

#[test]
fn decode_spawn_details_corpus() {
    replay("decode_spawn_details");
}

#[test]
fn handler_corpus() {
    replay("handler");
}

/// The seeds also run from memory, so a corpus file that goes missing does
/// not lose its coverage.
#[test]
fn seeds_in_memory() {
    fuzz_corpus::run_seeds(fuzzing::seeds(), fuzzing::run_target);
}

/// Writes the seed corpus (run by hand after changing the protocol).
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand"]
fn write_seeds() {
    fuzz_corpus::write_seeds(fuzzing::seeds());
}
