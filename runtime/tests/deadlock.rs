//! The deadlock proof: a thread holds a global lock while the parent starts a
//! child whose target takes that lock. With `fork` the child inherits the
//! lock in its held state and is stuck forever (detected by `join_timeout`,
//! then killed); with `spawn` and `forkserver` the child is a fresh process
//! and completes.
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use mproc::{Error, get_context};

static GLOBAL: Mutex<u64> = Mutex::new(0);

fn take_global_lock(_: ()) -> u64 {
    *GLOBAL.lock().unwrap() + 1
}

#[test]
fn fork_deadlocks_where_spawn_and_forkserver_do_not() {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _g = GLOBAL.lock().unwrap();
        locked_tx.send(()).unwrap();
        // Hold the lock until the test says so (bounded, in case it never does).
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    });
    locked_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // fork: the child's copy of GLOBAL is locked by a thread that does not
    // exist in the child.
    let mut p = get_context("fork")
        .unwrap()
        .process(take_global_lock, ())
        .start()
        .unwrap();
    match p.join_timeout(Duration::from_millis(1500)) {
        Err(Error::Timeout) => {}
        other => panic!("fork child should be stuck, got {other:?}"),
    }
    assert!(p.is_alive());
    p.kill().unwrap();
    let _ = p.join_timeout(Duration::from_secs(10));
    assert_eq!(p.exitcode(), Some(-9));

    // spawn and forkserver: the same target completes while the lock is held.
    for m in ["spawn", "forkserver"] {
        let mut p = get_context(m)
            .unwrap()
            .process(take_global_lock, ())
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), 1, "{m}");
    }
    release_tx.send(()).unwrap();
    holder.join().unwrap();
}
