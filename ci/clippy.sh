#!/usr/bin/env bash
set -euo pipefail
cargo clippy --workspace --all-targets -- -D warnings
# The libraries as users build them: without the features their own tests
# turn on (the `internals` hooks).
cargo clippy --workspace --lib -- -D warnings
# mproc without its default `net` feature (no TCP manager, no Python
# Listener/Client, none of the hash crates).
cargo clippy -p mproc --lib --no-default-features -- -D warnings
