//! Shared values and arrays across processes under each start method.
mod common;

use std::time::Duration;

use mproc::{Array, Lock, RawArray, RawValue, Value};

const T: Duration = Duration::from_secs(60);

fn increment(v: Value<u64>) {
    for _ in 0..100_000 {
        *v.get_lock().unwrap() += 1;
    }
}

#[test]
fn four_processes_times_100k_increments_under_the_lock() {
    for (m, ctx) in common::contexts() {
        let v = Value::new(0u64).unwrap();
        let mut ps: Vec<_> = (0..4)
            .map(|_| ctx.process(increment, v.clone()).start().unwrap())
            .collect();
        for p in &mut ps {
            p.join_timeout(T).unwrap();
        }
        assert_eq!(v.get(), 400_000, "{m}");
    }
}

fn fill(args: (Array<i32>, RawArray<f64>, RawValue<u8>)) -> usize {
    let (a, r, flag) = args;
    let mut g = a.get_lock().unwrap();
    for (i, x) in g.iter_mut().enumerate() {
        *x = -(i as i32);
    }
    r.set(1, 2.5);
    flag.set(7);
    a.len() + r.len()
}

#[test]
fn arrays_and_raw_values_reach_children() {
    for (m, ctx) in common::contexts() {
        let a = Array::from_slice(&[1i32, 2, 3, 4]).unwrap();
        let r = RawArray::from_slice(&[0.0f64; 3]).unwrap();
        let flag = RawValue::new(0u8).unwrap();
        let mut p = ctx
            .process(fill, (a.clone(), r.clone(), flag.clone()))
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(T).unwrap(), 7, "{m}");
        assert_eq!(a.to_vec(), [0, -1, -2, -3], "{m}");
        assert_eq!(r.to_vec(), [0.0, 2.5, 0.0], "{m}");
        assert_eq!(flag.get(), 7, "{m}");
    }
}

#[test]
fn segments_are_memfds_with_nothing_named() {
    let v = Value::new([0u8; 64]).unwrap();
    let _ = v.get();
    let before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).count())
        .into_iter()
        .collect();
    let _more: Vec<_> = (0..10).map(|_| Value::new(1u32).unwrap()).collect();
    let after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).count())
        .into_iter()
        .collect();
    assert_eq!(before, after);
    let fds = std::fs::read_dir("/proc/self/fd").unwrap();
    let memfds = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().starts_with("/memfd:mproc-shm"))
        .count();
    assert!(memfds >= 11, "{memfds}");
}

/// Moves one unit from `from` to `to` and counts the move in `moves`, all
/// under the one lock the three share.
fn transfer(args: (Lock, Value<i64>, Value<i64>, Array<u32>)) -> bool {
    let (lock, from, to, moves) = args;
    let same = from.shared_lock().is_same(&lock) && moves.shared_lock().is_same(&lock);
    for _ in 0..2_000 {
        let mut g = lock.acquire_timeout(T).unwrap();
        *from.get_mut(&mut g).expect("from's lock") -= 1;
        *to.get_mut(&mut g).expect("to's lock") += 1;
        moves.get_mut(&mut g).expect("moves' lock")[0] += 1;
        // Invariant seen by every holder: nothing created or lost.
        let sum = *from.get_mut(&mut g).unwrap() + *to.get_mut(&mut g).unwrap();
        assert_eq!(sum, 10_000);
    }
    same
}

/// `Value(…, lock=lock)` / `Array(…, lock=lock)`: values built on a lock
/// the caller passes in share it, in the children too, so several of them
/// change together under one hold of it (CPython's `test_getobj_getlock`).
#[test]
fn values_built_on_a_shared_lock() {
    for (m, ctx) in common::contexts() {
        let lock = Lock::new().unwrap();
        let from = Value::with_lock(10_000i64, lock.clone()).unwrap();
        let to = Value::with_lock(0i64, lock.clone()).unwrap();
        let moves = Array::<u32>::from_slice_with_lock(&[0, 9], lock.clone()).unwrap();
        let mut ps: Vec<_> = (0..3)
            .map(|_| {
                let args = (lock.clone(), from.clone(), to.clone(), moves.clone());
                ctx.process(transfer, args).start().unwrap()
            })
            .collect();
        for p in &mut ps {
            assert!(
                p.join_timeout(T).unwrap(),
                "{m}: the child's lock is the same"
            );
        }
        assert_eq!((from.get(), to.get()), (4_000, 6_000), "{m}");
        assert_eq!(moves.to_vec(), [6_000, 9], "{m}");
        // The value's lock is the one given; a value's own lock is not it.
        assert!(from.shared_lock().is_same(&lock));
        let own = Value::new(0i64).unwrap();
        assert!(!own.shared_lock().is_same(&lock));
        // A guard of another lock gives no access.
        let own_lock = own.shared_lock();
        let mut g = own_lock.acquire_timeout(T).unwrap();
        assert!(from.get_mut(&mut g).is_none());
        assert!(moves.get_mut(&mut g).is_none());
        drop(g);
        // Taking the value's lock through the value or through the lock
        // is the same lock.
        let held = from.get_lock_timeout(T).unwrap();
        assert!(lock.locked());
        assert!(lock.try_acquire().is_err());
        drop(held);
        assert!(!lock.locked());
    }
}
