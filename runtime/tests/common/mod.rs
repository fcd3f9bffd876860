//! Helpers shared by the runtime's tests: those of every crate's tests
//! (`testkit`), and a watchdog of a minute for tests whose calls have no
//! timeout of their own.
#![allow(dead_code)] // each test binary uses its own subset

#[allow(unused_imports)] // each test binary uses its own subset
pub(crate) use testkit::{fd_count, zombies_of};

/// Aborts the test binary if the test it guards runs longer than a minute:
/// `apply` and `map` have no timeout of their own.
pub(crate) fn watchdog(name: &'static str) -> testkit::Watchdog {
    testkit::watchdog(name, std::time::Duration::from_secs(60))
}
