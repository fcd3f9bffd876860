#!/usr/bin/env bash
# README's test command (it also replays fuzz/corpus through a regular test),
# then the doc build with warnings denied.
set -euo pipefail
cargo test --workspace
# The fork server's child contract once more with warm children off (the
# run above has them on, the default).
FORKSERVER_TEST_WARM=0 cargo test -p forkserver --tests
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
