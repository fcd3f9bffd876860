//! Helpers shared by the runtime's tests: what a process holds open and
//! which of its children are left unreaped, and a watchdog for tests whose
//! calls have no timeout of their own.
#![allow(dead_code)] // each test binary uses its own subset

#[path = "../../../tests/src/zombies.rs"]
mod zombies;

#[allow(unused_imports)] // each test binary uses its own subset
pub(crate) use zombies::zombies_of;

/// Number of open fds of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Aborts the test binary if the test it guards runs longer than a minute:
/// `apply` and `map` have no timeout of their own.
pub(crate) struct Watchdog(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

pub(crate) fn watchdog(name: &'static str) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_secs(60))
        {
            eprintln!("{name}: still running after 60 s; aborting");
            std::process::abort();
        }
    });
    Watchdog(tx)
}
