//! `Pipe`, `Connection` and `wait` (Python's `multiprocessing.connection`).
