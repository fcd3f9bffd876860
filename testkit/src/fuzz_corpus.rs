//! Replaying the fuzz corpus (`fuzz/corpus/<target>/*`) and the seeds
//! through a crate's fuzz harness, and writing the seeds, for the
//! `fuzz_corpus` tests of `forkserver` and `mproc`. Each crate picks its own
//! targets by name.

use std::path::{Path, PathBuf};

/// The workspace's `fuzz/corpus` directory (this crate sits one level below
/// the workspace root).
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Every `(target, file)` of the corpus directories whose name `wanted`
/// accepts, sorted.
pub fn corpus(wanted: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    let dir = corpus_dir();
    let targets = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus directory entry").path());
    for target in targets {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .expect("target directory name")
            .to_string();
        if !wanted(&name) {
            continue;
        }
        for f in std::fs::read_dir(&target).expect("target directory") {
            files.push((name.clone(), f.expect("corpus file").path()));
        }
    }
    files.sort();
    files
}

/// Asserts that every corpus directory whose name `wanted` accepts belongs
/// to a fuzz target (one `run_target` accepts by that name).
pub fn assert_every_directory_is_a_target(
    wanted: impl Fn(&str) -> bool,
    run_target: impl Fn(&str, &[u8]) -> bool,
) {
    for (target, file) in corpus(wanted) {
        assert!(
            run_target(&target, b""),
            "{} belongs to no fuzz target",
            file.display()
        );
    }
}

/// Runs every corpus file of the target `only` through `run_target` (the
/// crate's `fuzzing::run_target`), asserting each run and that the target
/// has at least one file.
pub fn replay(only: &str, run_target: impl Fn(&str, &[u8]) -> bool) {
    let mut count = 0;
    for (target, file) in corpus(|t| t == only) {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        eprintln!("replaying {}", file.display());
        assert!(run_target(&target, &data));
        count += 1;
    }
    assert!(count > 0, "no corpus for fuzz target {only}");
}

/// Runs every seed (`(target, file name, bytes)`, the crate's
/// `fuzzing::seeds()`) from memory through `run_target`, asserting each run.
pub fn run_seeds(
    seeds: Vec<(&'static str, String, Vec<u8>)>,
    run_target: impl Fn(&str, &[u8]) -> bool,
) {
    for (target, _, data) in seeds {
        assert!(run_target(target, &data));
    }
}

/// Asserts that every seed's file in `fuzz/corpus` holds the bytes the
/// generator makes now: a message format that changed without
/// `write_seeds` leaves the corpus seeding the fuzzer with stale inputs.
pub fn assert_seeds_written(seeds: Vec<(&'static str, String, Vec<u8>)>) {
    let mut stale = Vec::new();
    for (target, name, data) in seeds {
        let path = corpus_dir().join(target).join(&name);
        if std::fs::read(&path).ok().as_deref() != Some(&data[..]) {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from what the generator makes now (run the ignored \
         write_seeds test and commit fuzz/corpus): {stale:?}"
    );
}

/// Writes every seed to `fuzz/corpus/<target>/<file name>`.
pub fn write_seeds(seeds: Vec<(&'static str, String, Vec<u8>)>) {
    for (target, name, data) in seeds {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        std::fs::write(dir.join(name), data).expect("write seed");
    }
}

/// The tests of a crate's `fuzz_corpus` binary, given its fuzzing module
/// (`fuzzing`, with `run_target` and `seeds`) and, per fuzz target, a test
/// name and the target's name: a test a target replaying its corpus;
/// `seeds_in_memory`, which runs the seeds from memory, so that a corpus
/// file that goes missing does not lose its coverage;
/// `seed_files_are_current`, which fails when a format changed and the
/// seed files were not rewritten; and the ignored
/// `write_seeds`, which rewrites the `seed-*` files (run by hand after
/// changing a message format).
#[macro_export]
macro_rules! corpus_tests {
    ($fuzzing:ident; $($test:ident => $target:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::fuzz_corpus::replay($target, $fuzzing::run_target);
            }
        )*

        #[test]
        fn seeds_in_memory() {
            $crate::fuzz_corpus::run_seeds($fuzzing::seeds(), $fuzzing::run_target);
        }

        #[test]
        fn seed_files_are_current() {
            $crate::fuzz_corpus::assert_seeds_written($fuzzing::seeds());
        }

        #[test]
        #[ignore = "writes fuzz/corpus/<target>/seed-*; run by hand"]
        fn write_seeds() {
            $crate::fuzz_corpus::write_seeds($fuzzing::seeds());
        }
    };
}
