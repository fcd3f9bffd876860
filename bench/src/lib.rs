//! Spawn benchmarks of `mproc` and `forkserver`; the code is in `benches/`.
