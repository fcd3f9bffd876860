#!/usr/bin/env bash
set -euo pipefail
cargo clippy --workspace --all-targets -- -D warnings
# The libraries as users build them: without the features their own tests
# turn on (the `internals` hooks).
cargo clippy --workspace --lib -- -D warnings
