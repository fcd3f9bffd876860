//! Creating and dropping many primitives leaves the fd table at baseline.
mod common;

use mproc::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, RawArray, RawValue, Semaphore,
    Value,
};

use common::fd_count;

#[test]
fn ten_thousand_primitives_leave_no_fd() {
    // No warm fork-server children: the one reserved for this process's
    // connection brings three fds (socket, kick, pidfd) whenever the server
    // refills, so the count would depend on timing (the fork server's own
    // leak test counts them).
    mproc::set_forkserver_warm(0);
    // Warm up lazy state (thread robust list, allocator) before counting.
    drop(Lock::new().unwrap().acquire());
    let before = fd_count();
    for i in 0..10_000u32 {
        match i % 10 {
            0 => drop(Lock::new().unwrap().acquire()),
            1 => drop(RLock::new().unwrap().acquire()),
            2 => drop(Semaphore::new(1).unwrap().acquire()),
            3 => drop(BoundedSemaphore::new(1).unwrap()),
            4 => Event::new().unwrap().set(),
            5 => drop(Condition::new().unwrap().clone()),
            6 => drop(Barrier::new(1).unwrap().wait()),
            7 => drop(Value::new(i).unwrap().get()),
            8 => drop(Array::<u16>::zeroed(3).unwrap().to_vec()),
            _ => drop((
                RawValue::new(1u8).unwrap(),
                RawArray::<u8>::zeroed(2).unwrap(),
            )),
        }
    }
    assert_eq!(fd_count(), before);
}
