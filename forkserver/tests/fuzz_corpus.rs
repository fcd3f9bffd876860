//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! harness functions the cargo-fuzz targets call, so `cargo test` covers
//! every seed and every crasher ever found without a fuzzing toolchain.
//!
//! `cargo test -p forkserver --test fuzz_corpus -- --ignored write_seeds`
//! rewrites the `seed-*` files from [`forkserver::fuzzing::seeds`].

#[path = "../../tests/src/fuzz_corpus.rs"]
mod fuzz_corpus;

use forkserver::fuzzing;
use fuzz_corpus::corpus_dir;

/// Every `(target, file)` of the corpus, sorted (the `mproc_*` targets
/// are the `mproc` crate's, replayed by its own test).
fn corpus() -> Vec<(String, std::path::PathBuf)> {
    fuzz_corpus::corpus(|t| !t.starts_with("mproc_"))
}

fn replay(only: &str) {
    fuzz_corpus::replay(only, fuzzing::run_target);
}

#[test]
fn every_corpus_directory_is_a_target() {
    for (target, file) in corpus() {
        assert!(
            fuzzing::run_target(&target, b""),
            "{} belongs to no fuzz target",
            file.display()
        );
    }
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
    for (target, _, data) in fuzzing::seeds() {
        assert!(fuzzing::run_target(target, &data));
    }
}

/// Writes the seed corpus (run by hand after changing the protocol).
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand"]
fn write_seeds() {
    for (target, name, data) in fuzzing::seeds() {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}
