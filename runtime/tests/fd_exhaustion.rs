//! A process out of fds gets clear errors from `Process::start` and
//! `Queue::new`, under every start method, and loses nothing: whatever did
//! start is joined with its result, no child is left behind, and once fds
//! are free again everything works as before.
//!
//! One test in its own binary: it lowers the process's own fd limit.

mod common;

use std::time::Duration;

use testkit::fd_limit;

const T: Duration = Duration::from_secs(20);

fn double(x: u32) -> u32 {
    x * 2
}

#[test]
fn out_of_fds_is_an_error_that_loses_nothing() {
    // No warm children: the one reserved for this process's connection
    // brings three fds (socket, kick, pidfd) whenever the server refills,
    // so the fd count would depend on timing. Reservations meeting a full
    // fd table are tested in the fork server's own fd_exhaustion test.
    mproc::set_forkserver_warm(0);
    // Start the fork server (and warm everything up) with fds to spare.
    for m in ["fork", "spawn", "forkserver"] {
        let mut p = mproc::get_context(m)
            .unwrap()
            .process(double, 1)
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(T).unwrap(), 2);
    }
    let before = common::fd_count();
    fd_limit::set_soft_limit(before as u64 + 32);
    for spare in [0, 1, 2, 3, 5] {
        for m in ["fork", "spawn", "forkserver"] {
            let held = fd_limit::fill_fd_table(spare);
            let started = mproc::get_context(m).unwrap().process(double, 21).start();
            let queue = mproc::Queue::<u32>::new();
            drop(held);
            match started {
                Ok(mut p) => assert_eq!(p.join_timeout(T).unwrap(), 42, "{m}, {spare} free"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("Too many open files"),
                        "{m}, {spare} free: {msg}"
                    );
                }
            }
            if let Err(e) = queue {
                assert!(e.to_string().contains("Too many open files"), "{e}");
            }
            // Fds free again: the same method works as before.
            let mut p = mproc::get_context(m)
                .unwrap()
                .process(double, 5)
                .start()
                .unwrap();
            assert_eq!(p.join_timeout(T).unwrap(), 10, "{m} after {spare} free");
        }
    }
    assert!(mproc::active_children().is_empty());
    assert!(common::zombies_of(std::process::id()).is_empty());
    let deadline = std::time::Instant::now() + T;
    while common::fd_count() != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(common::fd_count(), before, "fds back at the baseline");
}
