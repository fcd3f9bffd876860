//! Shared values and arrays across processes under each start method.
use std::time::Duration;

use mproc::{Array, RawArray, RawValue, Value, get_context};

mproc::bootstrap!();

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];
const T: Duration = Duration::from_secs(60);

fn increment(v: Value<u64>) {
    for _ in 0..100_000 {
        *v.get_lock().unwrap() += 1;
    }
}

#[test]
fn four_processes_times_100k_increments_under_the_lock() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
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
    for m in METHODS {
        let ctx = get_context(m).unwrap();
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
