//! Replays the `mproc` fuzz corpus (`fuzz/corpus/mproc_*/*`) through the
//! same harness functions the cargo-fuzz targets call, so `cargo test`
//! covers every seed and every crasher ever found without a fuzzing
//! toolchain.
//!
//! `cargo test -p mproc --test fuzz_corpus -- --ignored write_seeds`
//! rewrites the `seed-*` files from [`mproc::fuzzing::seeds`].

use std::path::Path;

use mproc::fuzzing;
use testkit::fuzz_corpus;

/// Whether a corpus directory is this crate's (an `mproc_*` one).
fn ours(target: &str) -> bool {
    target.starts_with("mproc_")
}

fn replay(only: &str) {
    fuzz_corpus::replay(only, fuzzing::run_target);
}

#[test]
fn every_mproc_corpus_directory_is_a_target() {
    fuzz_corpus::assert_every_directory_is_a_target(ours, fuzzing::run_target);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    for (name, _) in fuzzing::TARGETS {
        let path = dir.join(format!("{name}.rs"));
        assert!(path.exists(), "{} is missing", path.display());
    }
}

#[test]
fn mproc_codec_corpus() {
    replay("mproc_codec");
}

#[test]
fn mproc_child_corpus() {
    replay("mproc_child");
}

#[test]
fn mproc_ring_corpus() {
    replay("mproc_ring");
}

#[test]
fn mproc_channel_corpus() {
    replay("mproc_channel");
}

#[test]
fn mproc_pool_corpus() {
    replay("mproc_pool");
}

#[test]
fn mproc_manager_corpus() {
    replay("mproc_manager");
}

#[test]
fn mproc_pyinterop_corpus() {
    replay("mproc_pyinterop");
}

/// The seeds also run from memory, so a corpus file that goes missing does
/// not lose its coverage.
#[test]
fn seeds_in_memory() {
    fuzz_corpus::run_seeds(fuzzing::seeds(), fuzzing::run_target);
}

/// Writes the seed corpus (run by hand after changing a message format).
#[test]
#[ignore = "writes fuzz/corpus/mproc_*/seed-*; run by hand"]
fn write_seeds() {
    fuzz_corpus::write_seeds(fuzzing::seeds());
}
