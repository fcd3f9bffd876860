//! ProcessPoolExecutor: futures, awaiting from tokio, map, shutdown.
mod common;
use std::time::Duration;

use mproc::{PoolError, ProcessPoolExecutor};

const T: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
/// This worker dies mid-task.
fn killed(_: ()) -> u64 {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    0
}
fn bad_init(_: ()) {
    panic!("init failed")
}

/// A tokio runtime on this thread alone, with timers: what awaiting the
/// executor's futures must not block.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn future_awaited_in_a_current_thread_tokio_runtime() {
    let _w = common::watchdog("future_awaited_in_a_current_thread_tokio_runtime");
    let ex = ProcessPoolExecutor::new(Some(2)).unwrap();
    let rt = current_thread_runtime();
    let got = rt.block_on(async {
        // The single runtime thread must stay free: a timer ticks while the
        // futures are pending, which it could not if awaiting blocked it.
        let slow = ex.submit(sleep_ms, 200).unwrap();
        let quick = ex.submit(square, 7).unwrap();
        let ticker = tokio::spawn(async {
            let mut ticks = 0;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks += 1;
            }
            ticks
        });
        let (a, b) = tokio::time::timeout(T, async { (slow.await, quick.await) })
            .await
            .expect("futures completed");
        (a.unwrap(), b.unwrap(), ticker.await.unwrap())
    });
    assert_eq!(got, (200, 49, 5));
    ex.shutdown(true, false).unwrap();
}

#[test]
fn many_futures_joined_concurrently() {
    let _w = common::watchdog("many_futures_joined_concurrently");
    let ex = ProcessPoolExecutor::new(Some(2)).unwrap();
    let rt = current_thread_runtime();
    let futs: Vec<_> = (0..200u64).map(|i| ex.submit(square, i).unwrap()).collect();
    let sum: u64 = rt.block_on(async {
        let mut handles = Vec::new();
        for f in futs {
            handles.push(tokio::spawn(f));
        }
        let mut sum = 0;
        for h in handles {
            sum += tokio::time::timeout(T, h).await.unwrap().unwrap().unwrap();
        }
        sum
    });
    assert_eq!(sum, (0..200u64).map(|i| i * i).sum::<u64>());
}

#[test]
fn map_in_order_and_blocking_results() {
    let _w = common::watchdog("map_in_order_and_blocking_results");
    let ex = ProcessPoolExecutor::new(Some(2)).unwrap();
    let mut it = ex.map(square, 0..50u64).unwrap();
    for i in 0..50u64 {
        assert_eq!(it.next_timeout(T).unwrap().unwrap(), i * i);
    }
    let v: Vec<u64> = ex
        .map_chunked(square, 0..100u64, 10)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(v.len(), 100);
    let f = ex.submit(square, 3).unwrap();
    assert_eq!(f.get_timeout(T).unwrap(), 9);
}

#[test]
fn shutdown_cancels_queued_futures() {
    let _w = common::watchdog("shutdown_cancels_queued_futures");
    let ex = ProcessPoolExecutor::new(Some(1)).unwrap();
    let running = ex.submit(sleep_ms, 300).unwrap();
    let queued: Vec<_> = (0..10).map(|_| ex.submit(sleep_ms, 1).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(50));
    ex.shutdown(true, true).unwrap();
    assert_eq!(running.get_timeout(T).unwrap(), 300);
    let cancelled = queued
        .iter()
        .filter(|f| f.wait_timeout(T) && f.cancelled())
        .count();
    assert!(cancelled >= 5, "{cancelled}");
    assert!(matches!(ex.submit(square, 1), Err(PoolError::NotRunning)));
}

#[test]
fn dead_worker_fails_one_future_and_the_executor_goes_on() {
    let _w = common::watchdog("dead_worker_fails_one_future_and_the_executor_goes_on");
    let ex = ProcessPoolExecutor::new(Some(2)).unwrap();
    let f = ex.submit(killed, ()).unwrap();
    match f.get_timeout(T) {
        Err(PoolError::WorkerDied { exitcode, .. }) => assert_eq!(exitcode, -9),
        other => panic!("{other:?}"),
    }
    assert_eq!(ex.submit(square, 5).unwrap().get_timeout(T).unwrap(), 25);
}

#[test]
fn broken_executor_is_a_typed_error() {
    let _w = common::watchdog("broken_executor_is_a_typed_error");
    let ex = mproc::Pool::builder()
        .processes(1)
        .initializer(bad_init, ())
        .executor()
        .unwrap();
    let rt = current_thread_runtime();
    let r = rt.block_on(async {
        match ex.submit(square, 2) {
            Ok(f) => tokio::time::timeout(T, f).await.unwrap(),
            Err(e) => Err(e),
        }
    });
    assert!(
        matches!(r, Err(PoolError::Broken(ref m)) if m.contains("init failed")),
        "{r:?}"
    );
}
