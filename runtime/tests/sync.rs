//! Sync primitives across processes under each start method.
mod common;

use std::time::Duration;

use mproc::{
    AcquireError, Barrier, BarrierError, BoundedSemaphore, CondWaitError, Condition, Event, Lock,
    RLock, RawArray, ReleaseError, Semaphore, Value, WaitError,
};

use common::ActionCounter;

const T: Duration = Duration::from_secs(30);

fn admit(args: (Semaphore, Value<u32>, Value<u32>)) -> u32 {
    let (sem, inside, high) = args;
    for _ in 0..200 {
        let _unit = sem.acquire_timeout(T).expect("semaphore");
        let now = {
            let mut g = inside.get_lock().unwrap();
            *g += 1;
            *g
        };
        {
            let mut h = high.get_lock().unwrap();
            *h = (*h).max(now);
        }
        for _ in 0..200 {
            std::hint::spin_loop();
        }
        *inside.get_lock().unwrap() -= 1;
    }
    0
}

#[test]
fn semaphore_never_admits_more_than_three() {
    for (m, ctx) in common::contexts() {
        let sem = Semaphore::new(3).unwrap();
        let inside = Value::new(0u32).unwrap();
        let high = Value::new(0u32).unwrap();
        let mut ps: Vec<_> = (0..6)
            .map(|_| {
                ctx.process(admit, (sem.clone(), inside.clone(), high.clone()))
                    .start()
                    .unwrap()
            })
            .collect();
        for p in &mut ps {
            p.join_timeout(T).unwrap();
        }
        let h = high.get();
        assert!((1..=3).contains(&h), "{m}: high-water mark {h}");
        assert_eq!(inside.get(), 0, "{m}");
        assert_eq!(sem.get_value(), 3, "{m}");
    }
}

static ACTION_COUNTER: ActionCounter = ActionCounter::new();

fn count_round() {
    ACTION_COUNTER.bump();
}

fn meet(args: (Barrier, Value<u32>, u32)) -> Vec<u32> {
    let (barrier, rounds_seen, rounds) = args;
    ACTION_COUNTER.set(rounds_seen.clone());
    let mut seen = Vec::new();
    for _ in 0..rounds {
        barrier.wait_timeout(T).expect("barrier");
        // The action of this round ran before anyone was released.
        seen.push(rounds_seen.get());
    }
    seen
}

#[test]
fn barrier_action_runs_once_per_round() {
    for (m, ctx) in common::contexts() {
        let rounds = Value::new(0u32).unwrap();
        let b = Barrier::with_action(4, count_round).unwrap();
        let mut ps: Vec<_> = (0..4)
            .map(|_| {
                ctx.process(meet, (b.clone(), rounds.clone(), 5))
                    .start()
                    .unwrap()
            })
            .collect();
        for p in &mut ps {
            let seen = p.join_timeout(T).unwrap();
            assert_eq!(seen.len(), 5, "{m}");
            for (r, s) in seen.iter().enumerate() {
                // Round r's action ran; the next round's may have run too.
                assert!(*s == r as u32 + 1 || *s == r as u32 + 2, "{m}: {seen:?}");
            }
        }
        assert_eq!(rounds.get(), 5, "{m}");
        assert!(!b.is_broken());
    }
}

#[test]
fn barrier_timeout_abort_and_reset() {
    let b = Barrier::new(2).unwrap();
    assert_eq!(
        b.wait_timeout(Duration::from_millis(20)),
        Err(BarrierError::Timeout)
    );
    assert!(b.is_broken());
    assert_eq!(b.wait_timeout(T), Err(BarrierError::Broken));
    b.reset();
    std::thread::scope(|s| {
        let h = s.spawn(|| b.wait_timeout(T));
        let mine = b.wait_timeout(T).unwrap();
        let theirs = h.join().unwrap().unwrap();
        assert_eq!(mine + theirs, 1);
    });
    std::thread::scope(|s| {
        let h = s.spawn(|| b.wait_timeout(T));
        while b.n_waiting() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        b.abort();
        assert_eq!(h.join().unwrap(), Err(BarrierError::Broken));
    });
}

fn echo_event(args: (Event, Event)) {
    let (go, done) = args;
    go.wait_timeout(T).expect("go");
    done.set();
}

#[test]
fn event_wakeups_with_timeouts() {
    for (_, ctx) in common::contexts() {
        let (go, done) = (Event::new().unwrap(), Event::new().unwrap());
        let mut p = ctx
            .process(echo_event, (go.clone(), done.clone()))
            .start()
            .unwrap();
        assert_eq!(
            done.wait_timeout(Duration::from_millis(50)),
            Err(WaitError::Timeout)
        );
        assert!(!done.is_set());
        go.set();
        done.wait_timeout(T).unwrap();
        assert!(done.is_set());
        done.clear();
        assert!(!done.is_set());
        p.join_timeout(T).unwrap();
    }
}

const ITEMS: u64 = 200;

/// Slot: [full, item].
fn produce(args: (Condition, RawArray<u64>)) {
    let (cond, slot) = args;
    for i in 1..=ITEMS {
        let g = cond.acquire().unwrap();
        let g = cond
            .wait_for(g, || slot.get(0) == Some(0), Some(T))
            .expect("consumer took the item");
        slot.set(1, i);
        slot.set(0, 1);
        cond.notify_all();
        drop(g);
    }
}

#[test]
fn condition_producer_consumer() {
    for (m, ctx) in common::contexts() {
        let cond = Condition::new().unwrap();
        let slot = RawArray::<u64>::zeroed(2).unwrap();
        let mut p = ctx
            .process(produce, (cond.clone(), slot.clone()))
            .start()
            .unwrap();
        let mut sum = 0;
        for _ in 0..ITEMS {
            let g = cond.acquire().unwrap();
            let g = cond
                .wait_for(g, || slot.get(0) == Some(1), Some(T))
                .expect("producer made an item");
            sum += slot.get(1).unwrap();
            slot.set(0, 0);
            cond.notify(1);
            drop(g);
        }
        assert_eq!(sum, ITEMS * (ITEMS + 1) / 2, "{m}");
        p.join_timeout(T).unwrap();
        let g = cond.acquire().unwrap();
        match cond.wait_timeout(g, Duration::from_millis(20)) {
            Err(CondWaitError::Timeout(_g)) => {}
            other => panic!("{m}: {other:?}"),
        }
    }
}

fn hold_forever(args: (Lock, Value<u64>, Event)) {
    let (lock, value, held) = args;
    let _g = lock.acquire().unwrap();
    let mut v = value.get_lock().unwrap();
    *v = 41; // half-way through an update when killed
    held.set();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn killed_holder_gives_owner_died_and_recovers() {
    for (m, ctx) in common::contexts() {
        let (lock, value, held) = (
            Lock::new().unwrap(),
            Value::new(0u64).unwrap(),
            Event::new().unwrap(),
        );
        let mut p = ctx
            .process(hold_forever, (lock.clone(), value.clone(), held.clone()))
            .start()
            .unwrap();
        held.wait_timeout(T).unwrap();
        assert!(matches!(lock.try_acquire(), Err(AcquireError::WouldBlock)));
        p.kill().unwrap();
        let _ = p.join_timeout(T);
        assert_eq!(p.exitcode(), Some(-9), "{m}");

        match lock.acquire_timeout(T) {
            Err(AcquireError::OwnerDied(died)) => drop(died.recover()),
            other => panic!("{m}: {other:?}"),
        }
        drop(lock.acquire_timeout(T).expect("consistent again"));

        match value.get_lock_timeout(T) {
            Err(AcquireError::OwnerDied(mut died)) => {
                assert_eq!(**died.get_mut(), 41);
                // Not recovered: the next acquirer is told again.
                drop(died.into_inner());
            }
            other => panic!("{m}: {other:?}"),
        }
        match value.get_lock_timeout(T) {
            Err(AcquireError::OwnerDied(died)) => {
                let mut g = died.recover();
                *g = 42;
            }
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(*value.get_lock_timeout(T).unwrap(), 42, "{m}");
    }
}

#[test]
fn thread_exit_marks_every_held_lock_and_leaves_the_list_intact() {
    let locks: Vec<Lock> = (0..4).map(|_| Lock::new().unwrap()).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let gs: Vec<_> = locks.iter().map(|l| l.acquire().unwrap()).collect();
            let mut gs = gs.into_iter();
            let (a, b, c, d) = (gs.next(), gs.next(), gs.next(), gs.next());
            drop(b); // unlink from the middle of the robust list
            drop(d); // and from its head
            std::mem::forget((a, c));
        })
        // An explicit join (pthread_join) returns after the kernel walked
        // the exiting thread's robust list; the scope's own wait does not.
        .join()
        .unwrap();
    });
    assert!(matches!(
        locks[0].try_acquire(),
        Err(AcquireError::OwnerDied(_))
    ));
    assert!(locks[1].try_acquire().is_ok());
    assert!(matches!(
        locks[2].try_acquire(),
        Err(AcquireError::OwnerDied(_))
    ));
    assert!(locks[3].try_acquire().is_ok());
}

#[test]
fn rlock_nests_and_refuses_non_owner_release() {
    let r = RLock::new().unwrap();
    let a = r.acquire().unwrap();
    let b = r.try_acquire().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(matches!(r.try_acquire(), Err(AcquireError::WouldBlock)));
            assert!(matches!(
                r.acquire_timeout(Duration::from_millis(10)),
                Err(AcquireError::Timeout)
            ));
            assert_eq!(r.release(), Err(ReleaseError::NotOwner));
        });
    });
    drop(b);
    drop(a);
    assert_eq!(r.release(), Err(ReleaseError::NotOwner));
    std::thread::scope(|s| {
        s.spawn(|| drop(r.acquire_timeout(T).unwrap()));
    });
}

#[test]
fn lock_between_threads_and_timeouts() {
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let g = lock.acquire().unwrap();
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(10)),
        Err(AcquireError::Timeout)
    ));
    drop(g);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    let _g = lock.acquire().unwrap();
                    let mut c = counter.get_lock().unwrap();
                    *c += 1;
                }
            });
        }
    });
    assert_eq!(counter.get(), 40_000);
}

#[test]
fn bounded_semaphore_refuses_release_above_initial() {
    let s = BoundedSemaphore::new(2).unwrap();
    assert_eq!(s.release(), Err(ReleaseError::AboveInitial));
    let g = s.acquire().unwrap();
    assert_eq!(s.get_value(), 1);
    drop(g);
    assert_eq!(s.get_value(), 2);
    let a = s.try_acquire().unwrap();
    let b = s.try_acquire().unwrap();
    assert_eq!(s.try_acquire().unwrap_err(), WaitError::WouldBlock);
    assert_eq!(
        s.acquire_timeout(Duration::from_millis(10)).unwrap_err(),
        WaitError::Timeout
    );
    a.forget();
    drop(b);
    assert_eq!(s.release(), Ok(()));
    assert_eq!(s.get_value(), 2);
}

/// Our lock nodes share the thread's robust list with glibc's robust
/// `pthread_mutex_t`s: interleaved locking and unlocking must keep both
/// kinds working and both detected at thread death.
#[test]
fn robust_list_shared_with_glibc_pthread_mutexes() {
    struct PMutex(Box<libc::pthread_mutex_t>);
    // SAFETY: a pthread mutex is meant to be shared between threads.
    unsafe impl Sync for PMutex {}
    impl PMutex {
        fn new() -> PMutex {
            // SAFETY: zeroed storage initialized by pthread_mutex_init with
            // robust attributes; attr destroyed after use.
            unsafe {
                let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
                libc::pthread_mutexattr_init(&mut attr);
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
                let mut m = Box::new(std::mem::zeroed::<libc::pthread_mutex_t>());
                assert_eq!(libc::pthread_mutex_init(&mut *m, &attr), 0);
                libc::pthread_mutexattr_destroy(&mut attr);
                PMutex(m)
            }
        }
        fn lock(&self) -> i32 {
            // SAFETY: an initialized mutex that outlives the call.
            unsafe { libc::pthread_mutex_lock(&*self.0 as *const _ as *mut _) }
        }
        fn unlock(&self) -> i32 {
            // SAFETY: as above; called by the owning thread.
            unsafe { libc::pthread_mutex_unlock(&*self.0 as *const _ as *mut _) }
        }
        fn consistent(&self) -> i32 {
            // SAFETY: as above; called by the owner after EOWNERDEAD.
            unsafe { libc::pthread_mutex_consistent(&*self.0 as *const _ as *mut _) }
        }
    }

    let (a, b, c) = (
        Lock::new().unwrap(),
        Lock::new().unwrap(),
        Lock::new().unwrap(),
    );
    let (m1, m2) = (PMutex::new(), PMutex::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let ga = a.acquire().unwrap();
            assert_eq!(m1.lock(), 0);
            let gb = b.acquire().unwrap();
            assert_eq!(m2.lock(), 0);
            let gc = c.acquire().unwrap();
            assert_eq!(m1.unlock(), 0); // glibc unlinks between our nodes
            drop(gb); // we unlink between glibc's and ours
            assert_eq!(m1.lock(), 0);
            drop(gc);
            // Die holding a, m1 and m2.
            std::mem::forget(ga);
        })
        .join()
        .unwrap();
    });
    assert!(matches!(a.try_acquire(), Err(AcquireError::OwnerDied(_))));
    assert!(b.try_acquire().is_ok());
    assert!(c.try_acquire().is_ok());
    for m in [&m1, &m2] {
        assert_eq!(m.lock(), libc::EOWNERDEAD);
        assert_eq!(m.consistent(), 0);
        assert_eq!(m.unlock(), 0);
        assert_eq!(m.lock(), 0);
        assert_eq!(m.unlock(), 0);
    }
}

/// `Lock.locked()` / `RLock.locked()` (Python 3.14) see a holder in any
/// process.
fn hold_until(args: (Lock, RLock, Event, Event)) {
    let (lock, rlock, held, done) = args;
    let _g = lock.acquire().unwrap();
    let _r = rlock.acquire().unwrap();
    held.set();
    done.wait_timeout(T).expect("done");
}

#[test]
fn locked_sees_a_holder_in_another_process() {
    for (m, ctx) in common::contexts() {
        let (lock, rlock) = (Lock::new().unwrap(), RLock::new().unwrap());
        let (held, done) = (Event::new().unwrap(), Event::new().unwrap());
        assert!(!lock.locked() && !rlock.locked());
        let mut p = ctx
            .process(
                hold_until,
                (lock.clone(), rlock.clone(), held.clone(), done.clone()),
            )
            .start()
            .unwrap();
        held.wait_timeout(T).unwrap();
        assert!(lock.locked() && rlock.locked(), "{m}");
        done.set();
        p.join_timeout(T).unwrap();
        assert!(!lock.locked() && !rlock.locked(), "{m}");
    }
}

/// A timeout too long to add to `Instant::now()` means "no deadline", not
/// a panic (it used to overflow in every `_timeout` wait here).
#[test]
fn huge_timeouts_are_no_deadline() {
    let max = Duration::MAX;
    let lock = Lock::new().unwrap();
    drop(lock.acquire_timeout(max).unwrap());
    let rlock = RLock::new().unwrap();
    drop(rlock.acquire_timeout(max).unwrap());
    let sem = Semaphore::new(1).unwrap();
    drop(sem.acquire_timeout(max).unwrap());
    let ev = Event::new().unwrap();
    ev.set();
    ev.wait_timeout(max).unwrap();
    let cond = Condition::new().unwrap();
    let g = cond.acquire().unwrap();
    drop(cond.wait_for(g, || true, Some(max)).unwrap());
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait_timeout(max), Ok(0));
    let (a, z) = mproc::connection::pipe::<u8>(true).unwrap();
    a.send(&7).unwrap();
    assert!(z.poll(Some(max)).unwrap());
    assert_eq!(z.recv_timeout(max).unwrap(), 7);
    a.send(&8).unwrap();
    assert_eq!(mproc::connection::wait(&[&z], Some(max)).unwrap(), [0]);
}
