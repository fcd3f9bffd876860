#!/usr/bin/env bash
# Runs the mproc test suite N times (default 10) on a loaded machine: two
# busy loops at normal priority compete with the tests for the CPUs, which
# is how ordering assumptions that only hold on an idle machine show up.
# Not part of .ci/run (it takes minutes); run it by hand:
#
#   bash ci/stress.sh [runs] [extra cargo test arguments...]
#
# Each run's output is kept in target/stress/run-<n>.log; the script exits
# non-zero if any run failed, and names the failed tests.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10}
shift || true
busy=2
logdir=target/stress
mkdir -p "$logdir"

pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Build first, unloaded, so that every run tests and none compiles.
cargo test -p mproc --no-run "$@" >/dev/null 2>&1 || {
    echo "stress: the build failed" >&2
    exit 2
}

for _ in $(seq 1 "$busy"); do
    (while :; do :; done) &
    pids+=("$!")
done

failed=0
for n in $(seq 1 "$runs"); do
    log="$logdir/run-$n.log"
    start=$(date +%s)
    if timeout 1800 cargo test -p mproc "$@" >"$log" 2>&1; then
        echo "stress: run $n/$runs passed in $(( $(date +%s) - start )) s"
    else
        failed=$((failed + 1))
        echo "stress: run $n/$runs FAILED in $(( $(date +%s) - start )) s (log: $log)"
        grep -E "^test .* FAILED$|panicked at" "$log" | head -20
    fi
done

echo "stress: $failed of $runs runs failed"
[ "$failed" -eq 0 ]
