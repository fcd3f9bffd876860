//! Python's `multiprocessing` for Rust (work in progress).
