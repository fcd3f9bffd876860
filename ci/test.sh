#!/usr/bin/env bash
# README's test command (it also replays fuzz/corpus through a regular test),
# then the doc build with warnings denied.
set -euo pipefail
cargo test --workspace
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
