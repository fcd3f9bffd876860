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

/// The counter a `Barrier`'s action bumps. The action is a plain `fn()` and
/// runs in whichever party breaks the barrier, so each party (thread or
/// process) [`set`](ActionCounter::set)s the shared value before it waits.
pub(crate) struct ActionCounter(std::sync::Mutex<Option<mproc::Value<u32>>>);

impl ActionCounter {
    pub(crate) const fn new() -> ActionCounter {
        ActionCounter(std::sync::Mutex::new(None))
    }

    /// The value this process's parties count in.
    pub(crate) fn set(&self, v: mproc::Value<u32>) {
        *self.0.lock().unwrap() = Some(v);
    }

    /// Adds one, under the value's lock.
    ///
    /// # Panics
    /// Before [`set`](ActionCounter::set).
    pub(crate) fn bump(&self) {
        let v = self.0.lock().unwrap().clone().expect("set before waiting");
        *v.get_lock().expect("counter lock") += 1;
    }
}

/// The start methods every case runs under, in this order.
pub(crate) const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// Each of [`METHODS`] with its context.
pub(crate) fn contexts() -> impl Iterator<Item = (&'static str, mproc::Context)> {
    METHODS
        .into_iter()
        .map(|m| (m, mproc::get_context(m).unwrap()))
}

/// A pool of two workers, each replaced after `maxtasksperchild` tasks.
pub(crate) fn recycling_pool(maxtasksperchild: u64) -> mproc::Pool {
    mproc::Pool::builder()
        .processes(2)
        .maxtasksperchild(maxtasksperchild)
        .build()
        .unwrap()
}
