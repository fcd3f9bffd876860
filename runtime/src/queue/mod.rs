//! `Queue`, `SimpleQueue` and `JoinableQueue` across processes.
