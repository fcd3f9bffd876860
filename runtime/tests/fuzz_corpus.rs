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

testkit::corpus_tests! {
    fuzzing;
    mproc_codec_corpus => "mproc_codec",
    mproc_child_corpus => "mproc_child",
    mproc_ring_corpus => "mproc_ring",
    mproc_channel_corpus => "mproc_channel",
    mproc_pool_corpus => "mproc_pool",
    mproc_manager_corpus => "mproc_manager",
    mproc_pyinterop_corpus => "mproc_pyinterop",
}
