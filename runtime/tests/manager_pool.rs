//! A pool served by the manager (Python's `manager.Pool`), under each start
//! method: CPython's `_TestPool` cases that its manager flavour runs
//! (`apply`, `map`, `apply_async` with and without a timeout, a failing
//! task), the proxy and its results used from another process, the
//! function list that bounds what clients can run, and workers that go
//! with the pool.
mod common;

use std::time::Duration;

use common::{METHODS, contexts, watchdog};
use mproc::manager::{AsyncResult, Manager, Pool, RemoteErrorKind};
use mproc::{Error, get_context};

const JOIN: Duration = Duration::from_secs(30);

fn sqr(x: i64) -> i64 {
    x * x
}

fn sqr_slowly(x: i64) -> i64 {
    std::thread::sleep(Duration::from_millis(500));
    x * x
}

fn fails_on_3(x: i64) -> i64 {
    assert_ne!(x, 3, "three is not allowed");
    x
}

fn not_listed(x: i64) -> i64 {
    x + 1
}

fn manager(method: &str) -> Manager {
    get_context(method)
        .unwrap()
        .manager_builder()
        .pool_fn(sqr)
        .pool_fn(sqr_slowly)
        .pool_fn(fails_on_3)
        .start()
        .unwrap()
}

fn remote_kind(e: &Error) -> Option<RemoteErrorKind> {
    match e {
        Error::Remote(r) => Some(r.kind),
        _ => None,
    }
}

/// Whether process `pid` has gone (reaped), waiting up to [`JOIN`].
fn gone_within(pid: i32) -> bool {
    testkit::eventually(JOIN, || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// CPython's `test_apply`, `test_map`, `test_async`, `test_async_timeout`
/// and `test_map_async` on a manager's pool.
#[test]
fn a_managers_pool_applies_and_maps_as_cpythons_test_pool() {
    // `apply` and `map` have no timeout of their own.
    let _w = watchdog("a_managers_pool_applies_and_maps_as_cpythons_test_pool");
    for m in METHODS {
        let manager = manager(m);
        let pool = manager.pool(2).unwrap();
        assert_eq!(pool.processes().unwrap(), 2, "{m}");
        assert_eq!(pool.apply(sqr, 5).unwrap(), 25, "{m}");
        let squares = pool.map(sqr, 0..10).unwrap();
        assert_eq!(squares, (0..10).map(sqr).collect::<Vec<_>>(), "{m}");
        assert!(pool.map(sqr, Vec::new()).unwrap().is_empty(), "{m}");
        let r = pool.apply_async(sqr, 7).unwrap();
        assert_eq!(r.get_timeout(JOIN).unwrap(), 49, "{m}");
        assert!(r.ready().unwrap(), "{m}");
        // test_async_timeout: get(timeout) gives up; the task goes on.
        let slow = pool.apply_async(sqr_slowly, 6).unwrap();
        let e = slow.get_timeout(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(e, Error::Timeout), "{m}: {e:?}");
        assert!(slow.wait_timeout(JOIN).unwrap(), "{m}");
        assert_eq!(slow.get_timeout(JOIN).unwrap(), 36, "{m}");
        let mapped = pool.map_async(sqr, [1, 2, 3]).unwrap();
        assert_eq!(mapped.get_timeout(JOIN).unwrap(), [1, 4, 9], "{m}");
        manager.shutdown().unwrap();
    }
}

/// A task that panics fails its call with the panic's message, and the
/// pool goes on; a map fails with its first panicking item.
#[test]
fn a_panicking_task_fails_its_call_only() {
    let _w = watchdog("a_panicking_task_fails_its_call_only");
    let manager = manager("forkserver");
    let pool = manager.pool(1).unwrap();
    let e = pool.apply_async(fails_on_3, 3).unwrap().get_timeout(JOIN);
    assert!(
        matches!(&e, Err(Error::Panicked { message }) if message.contains("three is not allowed")),
        "{e:?}"
    );
    let e = pool.map(fails_on_3, 1..6).unwrap_err();
    assert!(matches!(e, Error::Panicked { .. }), "{e:?}");
    let r = pool.map_async(fails_on_3, [4, 3]).unwrap();
    assert!(matches!(r.get_timeout(JOIN), Err(Error::Panicked { .. })));
    assert_eq!(pool.apply(fails_on_3, 4).unwrap(), 4);
}

/// Only the functions the manager was built with run; a pool needs at
/// least one process; a proxy cannot be a task's argument.
#[test]
fn clients_run_only_listed_functions() {
    let manager = manager("forkserver");
    let pool = manager.pool(1).unwrap();
    let e = pool.apply_async(not_listed, 1).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Unsupported), "{e:?}");
    let e = pool.map_async(not_listed, [1]).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Unsupported), "{e:?}");
    let e = manager.pool(0).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Value), "{e:?}");
    let e = manager.pool(1_000_000).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Value), "{e:?}");
    // A manager without the list has no pools: they could run nothing.
    let bare = get_context("forkserver").unwrap().manager().unwrap();
    let e = bare.pool(1).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Unsupported), "{e:?}");
}

fn use_pool(args: (Pool, AsyncResult<i64>)) -> (Vec<i64>, i64) {
    let (pool, early) = args;
    let squares = pool.map(sqr, [2, 3]).unwrap();
    (squares, early.get_timeout(JOIN).unwrap())
}

/// The pool proxy and an `AsyncResult` travel to a child, which uses them.
#[test]
fn a_child_uses_the_pool_and_a_result_it_received() {
    for (m, ctx) in contexts() {
        let manager = manager(m);
        let pool = manager.pool(1).unwrap();
        let early = pool.apply_async(sqr, 9).unwrap();
        let mut p = ctx
            .process(use_pool, (pool.clone(), early))
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(JOIN).unwrap(), (vec![4, 9], 81), "{m}");
        manager.shutdown().unwrap();
    }
}

/// `close` then `join`; submitting afterwards is refused; `terminate`;
/// the workers go with the pool's last proxy, and with the manager.
#[test]
fn close_join_terminate_and_workers_that_go_with_the_pool() {
    let manager = manager("forkserver");
    let pool = manager.pool(2).unwrap();
    let pending = pool.apply_async(sqr_slowly, 2).unwrap();
    let e = pool.join_timeout(Duration::from_millis(10)).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Value), "{e:?}");
    pool.close().unwrap();
    pool.join_timeout(JOIN).unwrap();
    assert_eq!(pending.get_timeout(JOIN).unwrap(), 4);
    let e = pool.apply_async(sqr, 1).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Value), "{e:?}");

    let doomed = manager.pool(1).unwrap();
    let r = doomed.apply_async(sqr_slowly, 3).unwrap();
    doomed.terminate().unwrap();
    doomed.join_timeout(JOIN).unwrap();
    let e = r.get_timeout(JOIN).unwrap_err();
    assert_eq!(remote_kind(&e), Some(RemoteErrorKind::Failed), "{e:?}");

    let before = manager.number_of_objects().unwrap();
    let dropped = manager.pool(2).unwrap();
    let pids = dropped.worker_pids().unwrap();
    assert_eq!(pids.len(), 2);
    drop(dropped);
    for pid in pids {
        assert!(gone_within(pid), "worker {pid} outlived its pool");
    }
    // A release waits for `fork` children that other tests of this binary
    // started meanwhile (they hold a copy of every proxy).
    assert!(
        testkit::eventually(Duration::from_secs(20), || manager
            .number_of_objects()
            .unwrap()
            == before),
        "objects left behind by a dropped pool"
    );

    let kept = manager.pool(1).unwrap();
    let pids = kept.worker_pids().unwrap();
    manager.shutdown().unwrap();
    for pid in pids {
        assert!(gone_within(pid), "worker {pid} outlived its manager");
    }
}

/// Over TCP, a remote client uses a pool too.
#[test]
fn a_pool_over_tcp() {
    let manager = manager("forkserver");
    let addr = manager.listen("127.0.0.1:0", b"key").unwrap();
    let remote = mproc::manager::connect(addr, b"key").unwrap();
    let pool = remote.pool(1).unwrap();
    let r = pool.apply_async(sqr, 12).unwrap();
    assert_eq!(r.get_timeout(JOIN).unwrap(), 144);
    let mapped = pool.map_async(sqr, [5]).unwrap();
    assert_eq!(mapped.get_timeout(JOIN).unwrap(), [25]);
}
