//! Replays the `mproc` fuzz corpus (`fuzz/corpus/mproc_*/*`) through the
//! same harness functions the cargo-fuzz targets call, so `cargo test`
//! covers every seed and every crasher ever found without a fuzzing
//! toolchain.
//!
//! `cargo test -p mproc --test fuzz_corpus -- --ignored write_seeds`
//! rewrites the `seed-*` files from [`mproc::fuzzing::seeds`].

#[path = "../../tests/src/fuzz_corpus.rs"]
mod fuzz_corpus;

use std::path::Path;

use fuzz_corpus::corpus_dir;
use mproc::fuzzing;

/// Every `(target, file)` of the `mproc_*` corpus directories, sorted.
fn corpus() -> Vec<(String, std::path::PathBuf)> {
    fuzz_corpus::corpus(|t| t.starts_with("mproc_"))
}

fn replay(only: &str) {
    fuzz_corpus::replay(only, fuzzing::run_target);
}

#[test]
fn every_mproc_corpus_directory_is_a_target() {
    for (target, file) in corpus() {
        assert!(
            fuzzing::run_target(&target, b""),
            "{} belongs to no fuzz target",
            file.display()
        );
    }
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

/// The seeds also run from memory, so a corpus file that goes missing does
/// not lose its coverage.
#[test]
fn seeds_in_memory() {
    for (target, _, data) in fuzzing::seeds() {
        assert!(fuzzing::run_target(target, &data));
    }
}

/// Writes the seed corpus (run by hand after changing a message format).
#[test]
#[ignore = "writes fuzz/corpus/mproc_*/seed-*; run by hand"]
fn write_seeds() {
    for (target, name, data) in fuzzing::seeds() {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}
