//! Pool semantics: order, callbacks, panics, dead workers, recycling,
//! initializers, close/terminate/join. Every wait is bounded.
mod common;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mproc::{AsyncResult, Callbacks, Pool, PoolError, get_context};

const T: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}
fn add(p: (i32, i32)) -> i32 {
    p.0 + p.1
}
fn pid_of(_: u32) -> i32 {
    std::process::id() as i32
}
fn boom_on_3(x: u32) -> u32 {
    if x == 3 {
        panic!("three is bad");
    }
    x
}
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
/// Sleeps a little, returns (item, pid): slow enough to be killed mid-run.
/// `n` tasks of `sleep_ms(ms)`, submitted at once.
fn sleepers(pool: &Pool, n: usize, ms: u64) -> Vec<AsyncResult<u64>> {
    (0..n)
        .map(|_| pool.apply_async(sleep_ms, ms).unwrap())
        .collect()
}

fn slow_item(x: u32) -> (u32, i32) {
    std::thread::sleep(Duration::from_millis(5));
    (x, std::process::id() as i32)
}
fn exit7(_: ()) -> u32 {
    std::process::exit(7)
}
fn segv(_: ()) -> u32 {
    // SAFETY: not safe at all, on purpose: this worker must die of SIGSEGV.
    unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
    0
}

static INIT_CALLS: AtomicUsize = AtomicUsize::new(0);
static INIT_ARG: Mutex<String> = Mutex::new(String::new());

fn init(tag: String) {
    INIT_CALLS.fetch_add(1, Ordering::SeqCst);
    *INIT_ARG.lock().unwrap() = tag;
}
fn init_seen(_: u32) -> (i32, usize, String) {
    std::thread::sleep(Duration::from_millis(2));
    (
        std::process::id() as i32,
        INIT_CALLS.load(Ordering::SeqCst),
        INIT_ARG.lock().unwrap().clone(),
    )
}
fn bad_init(_: ()) {
    panic!("no init for you")
}

/// Closes `pool` (Python's `close`) and joins it within [`T`].
fn close_and_join(pool: &Pool) {
    pool.close();
    join_or_fail(pool);
}

fn join_or_fail(pool: &Pool) {
    pool.join_timeout(T).expect("join");
}

#[test]
fn apply_map_starmap_each_method() {
    let _w = common::watchdog("apply_map_starmap_each_method");
    for m in ["forkserver", "spawn", "fork"] {
        let pool = get_context(m).unwrap().pool(2).unwrap();
        assert_eq!(pool.apply(square, 9).unwrap(), 81, "{m}");
        let v = pool.map(square, 0..100u64).unwrap();
        assert_eq!(v, (0..100u64).map(|x| x * x).collect::<Vec<_>>(), "{m}");
        let s = pool.starmap(add, [(1, 2), (3, 4)]).unwrap();
        assert_eq!(s, vec![3, 7]);
        let r = pool.starmap_async(add, [(5, 5)]).unwrap();
        assert_eq!(r.get_timeout(T).unwrap(), vec![10]);
        close_and_join(&pool);
    }
}

#[test]
fn map_and_imap_keep_order() {
    let _w = common::watchdog("map_and_imap_keep_order");
    let pool = Pool::new(3).unwrap();
    for chunk in [1, 7, 1000] {
        let v = pool.map_chunked(square, 0..2000u64, chunk).unwrap();
        assert_eq!(v, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
        let mut it = pool.imap_chunked(square, 0..500u64, chunk).unwrap();
        for i in 0..500u64 {
            assert_eq!(it.next_timeout(T).unwrap().unwrap(), i * i);
        }
        assert!(it.next_timeout(T).is_none());
    }
    // Unequal task times still come back in order.
    let v: Vec<u64> = pool
        .imap(sleep_ms, [30, 1, 20, 2, 0])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(v, vec![30, 1, 20, 2, 0]);
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
}

#[test]
fn imap_unordered_yields_every_result_once() {
    let _w = common::watchdog("imap_unordered_yields_every_result_once");
    let pool = Pool::new(2).unwrap();
    let mut it = pool.imap_unordered(square, 0..300u64).unwrap();
    let mut seen = Vec::new();
    while let Some(r) = it.next_timeout(T) {
        seen.push(r.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    let n = pool
        .imap_unordered_chunked(square, 0..1000u64, 64)
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<HashSet<_>>()
        .len();
    assert_eq!(n, 1000);
}

#[test]
fn callbacks_run_once_in_the_parent() {
    let _w = common::watchdog("callbacks_run_once_in_the_parent");
    let pool = Pool::new(2).unwrap();
    let me = std::process::id();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let errs = Arc::new(AtomicUsize::new(0));
    let mut results = Vec::new();
    for x in 0..20u64 {
        let h = hits.clone();
        let e = errs.clone();
        let cb = Callbacks::new()
            .on_success(move |v: &u64| h.lock().unwrap().push((*v, std::process::id())))
            .on_error(move |_| {
                e.fetch_add(1, Ordering::SeqCst);
            });
        results.push(pool.apply_async_with(square, x, cb).unwrap());
    }
    for r in &results {
        assert!(r.wait_timeout(T));
        assert_eq!(r.successful(), Some(true));
    }
    let mut got = hits.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..20u64).map(|x| (x * x, me)).collect::<Vec<_>>());
    assert_eq!(errs.load(Ordering::SeqCst), 0);

    // map_async: one callback with the whole list.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let r = pool
        .map_async_with(
            square,
            1..=5u64,
            Some(2),
            Callbacks::new().on_success(move |v: &Vec<u64>| c.lock().unwrap().push(v.clone())),
        )
        .unwrap();
    assert_eq!(r.get_timeout(T).unwrap(), vec![1, 4, 9, 16, 25]);
    assert_eq!(*calls.lock().unwrap(), vec![vec![1, 4, 9, 16, 25]]);
}

#[test]
fn panic_fails_that_task_only_and_calls_error_callback() {
    let _w = common::watchdog("panic_fails_that_task_only_and_calls_error_callback");
    let pool = Pool::new(2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ok_calls = Arc::new(AtomicUsize::new(0));
    let (s, o) = (seen.clone(), ok_calls.clone());
    let cb = Callbacks::new()
        .on_success(move |_: &u32| {
            o.fetch_add(1, Ordering::SeqCst);
        })
        .on_error(move |e| s.lock().unwrap().push(e.clone()));
    let r = pool.apply_async_with(boom_on_3, 3, cb).unwrap();
    match r.get_timeout(T) {
        Err(PoolError::Panicked { message }) => assert_eq!(message, "three is bad"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.successful(), Some(false));
    assert_eq!(ok_calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![PoolError::Panicked {
            message: "three is bad".into()
        }]
    );
    // The worker survived, and imap reports the failing item alone.
    let got: Vec<_> = pool.imap(boom_on_3, 0..6).unwrap().collect();
    assert_eq!(got.len(), 6);
    for (i, r) in got.into_iter().enumerate() {
        if i == 3 {
            assert!(matches!(r, Err(PoolError::Panicked { .. })));
        } else {
            assert_eq!(r.unwrap(), i as u32);
        }
    }
    // map fails as a whole with the panic.
    assert!(matches!(
        pool.map_chunked(boom_on_3, 0..10, 2),
        Err(PoolError::Panicked { .. })
    ));
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

#[test]
fn worker_death_fails_its_task_with_the_exitcode() {
    let _w = common::watchdog("worker_death_fails_its_task_with_the_exitcode");
    for m in ["forkserver", "spawn"] {
        let pool = get_context(m).unwrap().pool(2).unwrap();
        match pool.apply_async(exit7, ()).unwrap().get_timeout(T) {
            Err(PoolError::WorkerDied { exitcode, .. }) => assert_eq!(exitcode, 7, "{m}"),
            other => panic!("{m}: {other:?}"),
        }
        match pool.apply_async(segv, ()).unwrap().get_timeout(T) {
            Err(PoolError::WorkerDied { exitcode, .. }) => assert_eq!(exitcode, -11, "{m}"),
            other => panic!("{m}: {other:?}"),
        }
        // Replacements took over.
        assert_eq!(pool.map(square, 0..50u64).unwrap().len(), 50);
        assert_eq!(pool.worker_pids().len(), 2);
        close_and_join(&pool);
    }
}

#[test]
fn workers_killed_at_random_mid_run() {
    let _w = common::watchdog("workers_killed_at_random_mid_run");
    let pool = Pool::new(3).unwrap();
    let n = 600u32;
    let mut it = pool.imap_unordered(slow_item, 0..n).unwrap();
    let mut ok = HashSet::new();
    let mut died = 0;
    let mut killed = HashSet::new();
    let start = Instant::now();
    let mut seen = 0;
    while let Some(r) = it.next_timeout(T) {
        seen += 1;
        match r {
            Ok((x, _)) => assert!(ok.insert(x), "duplicate {x}"),
            Err(PoolError::WorkerDied { exitcode, pid }) => {
                assert_eq!(exitcode, -9);
                assert!(killed.contains(&pid));
                died += 1;
            }
            Err(e) => panic!("{e}"),
        }
        // Kill a worker every 100 results, 4 times.
        if seen % 100 == 50 && killed.len() < 4 {
            let fresh: Vec<i32> = pool
                .worker_pids()
                .into_iter()
                .filter(|p| !killed.contains(p))
                .collect();
            if let Some(&victim) = fresh.get(seen as usize % fresh.len().max(1)) {
                let sent = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if sent.is_ok() {
                    killed.insert(victim);
                }
            }
        }
    }
    assert_eq!(ok.len() + died, n as usize, "every item reported once");
    assert!(died <= killed.len(), "at most one task per killed worker");
    assert!(killed.len() >= 3, "{killed:?}");
    close_and_join(&pool);
    assert!(start.elapsed() < T);
}

#[test]
fn maxtasksperchild_one_gives_a_fresh_pid_per_task() {
    let _w = common::watchdog("maxtasksperchild_one_gives_a_fresh_pid_per_task");
    let pool = common::recycling_pool(1);
    let pids = pool.map_chunked(pid_of, 0..12, 1).unwrap();
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 12, "{pids:?}");
    close_and_join(&pool);
}

#[test]
fn initializer_runs_once_per_worker() {
    let _w = common::watchdog("initializer_runs_once_per_worker");
    let pool = Pool::builder()
        .processes(3)
        .initializer(init, "hello".to_string())
        .maxtasksperchild(20)
        .build()
        .unwrap();
    let got = pool.map_chunked(init_seen, 0..120, 1).unwrap();
    let pids: HashSet<i32> = got.iter().map(|g| g.0).collect();
    assert!(pids.len() >= 6, "recycled workers re-run it too: {pids:?}");
    for (_, calls, tag) in &got {
        assert_eq!(*calls, 1);
        assert_eq!(tag, "hello");
    }
    assert_eq!(INIT_CALLS.load(Ordering::SeqCst), 0, "never in the parent");
}

#[test]
fn panicking_initializer_breaks_the_pool() {
    let _w = common::watchdog("panicking_initializer_breaks_the_pool");
    let pool = Pool::builder()
        .processes(1)
        .initializer(bad_init, ())
        .build()
        .unwrap();
    let r = pool.apply_async(square, 2);
    match r.map(|r| r.get_timeout(T)) {
        Ok(Err(PoolError::Broken(m))) | Err(PoolError::Broken(m)) => {
            assert!(m.contains("no init for you"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + T;
    while !matches!(pool.apply_async(square, 2), Err(PoolError::Broken(_))) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    close_and_join(&pool);
}

#[test]
fn close_then_join_finishes_queued_work() {
    let _w = common::watchdog("close_then_join_finishes_queued_work");
    let pool = Pool::new(2).unwrap();
    let rs = sleepers(&pool, 10, 20);
    assert!(matches!(pool.join(), Err(PoolError::StillRunning)));
    pool.close();
    assert!(matches!(
        pool.apply_async(square, 1),
        Err(PoolError::NotRunning)
    ));
    assert!(matches!(
        pool.map(square, Vec::new()),
        Err(PoolError::NotRunning)
    ));
    join_or_fail(&pool);
    for r in rs {
        assert!(r.ready());
        assert_eq!(r.get_timeout(Duration::ZERO).unwrap(), 20);
    }
    assert!(pool.worker_pids().is_empty());
}

#[test]
fn terminate_with_tasks_in_flight() {
    let _w = common::watchdog("terminate_with_tasks_in_flight");
    let pool = Pool::new(2).unwrap();
    let rs = sleepers(&pool, 6, 20_000);
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    pool.terminate();
    join_or_fail(&pool);
    assert!(start.elapsed() < Duration::from_secs(10));
    for r in rs {
        assert_eq!(r.get_timeout(T), Err(PoolError::Terminated));
    }
}

#[test]
fn drop_terminates() {
    let _w = common::watchdog("drop_terminates");
    let pids;
    let r;
    {
        let pool = Pool::new(2).unwrap();
        pids = pool.worker_pids();
        r = pool.apply_async(sleep_ms, 20_000).unwrap();
    }
    assert_eq!(r.get_timeout(T), Err(PoolError::Terminated));
    for p in pids {
        // Gone and reaped: signal 0 fails.
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err());
    }
}

#[test]
fn async_result_timeout_and_cancel() {
    let _w = common::watchdog("async_result_timeout_and_cancel");
    let pool = Pool::new(1).unwrap();
    let long = pool.apply_async(sleep_ms, 300).unwrap();
    assert_eq!(
        long.get_timeout(Duration::from_millis(10)),
        Err(PoolError::Timeout)
    );
    assert!(!long.ready());
    assert_eq!(long.successful(), None);
    // The single worker is busy, and the queue behind it is cancellable
    // once the window is full.
    let queued = sleepers(&pool, 4, 1);
    let cancelled = queued.iter().filter(|r| r.cancel()).count();
    assert!(cancelled >= 1);
    assert_eq!(long.get_timeout(T).unwrap(), 300);
    let mut n = 0;
    for r in queued {
        match r.get_timeout(T) {
            Ok(1) => {}
            Err(PoolError::Cancelled) => n += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n, cancelled);
}

fn reverse(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().rev().collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WithFd(#[serde(with = "mproc::fd")] std::os::fd::OwnedFd);

/// Writes a line into the socket it was given; returns the pid.
fn write_to(w: WithFd) -> i32 {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::from(w.0);
    writeln!(s, "from {}", std::process::id()).unwrap();
    std::process::id() as i32
}

#[test]
fn large_values_and_fds_travel() {
    let _w = common::watchdog("large_values_and_fds_travel");
    let pool = Pool::new(2).unwrap();
    // Over the inline limit both ways (a memfd carries them).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    let back = pool.apply(reverse, big.clone()).unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back.iter().eq(big.iter().rev()));
    let many = pool
        .map_chunked(reverse, vec![vec![1u8; 100_000]; 8], 4)
        .unwrap();
    assert_eq!(many.len(), 8);
    // An fd in the arguments arrives working in the worker.
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let pid = pool
        .apply(write_to, WithFd(std::os::fd::OwnedFd::from(theirs)))
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(mine), &mut line).unwrap();
    assert_eq!(line.trim(), format!("from {pid}"));
}

#[test]
fn pool_types_are_send_and_sync() {
    let _w = common::watchdog("pool_types_are_send_and_sync");
    fn check<T: Send + Sync>() {}
    check::<Pool>();
    check::<mproc::AsyncResult<String>>();
    check::<mproc::ProcessPoolExecutor>();
    check::<PoolError>();
}

#[test]
fn imap_results_survive_close_and_join() {
    let _w = common::watchdog("imap_results_survive_close_and_join");
    let pool = Pool::new(2).unwrap();
    let it = pool.imap(square, 0..1000u64).unwrap();
    let un = pool.imap_unordered(square, 0..10u64).unwrap();
    close_and_join(&pool);
    let v: Vec<u64> = it.collect::<Result<_, _>>().unwrap();
    assert_eq!(v, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(un.count(), 10);
}

/// 0 processes and `maxtasksperchild` 0 are refused, as Python's
/// `ValueError`, before any worker starts (both used to be taken as 1).
#[test]
fn zero_processes_or_maxtasks_is_an_error() {
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        assert!(matches!(ctx.pool(0), Err(PoolError::InvalidArgument(_))));
        assert!(matches!(
            ctx.pool_builder().processes(2).maxtasksperchild(0).build(),
            Err(PoolError::InvalidArgument(_))
        ));
    }
    assert!(matches!(Pool::new(0), Err(PoolError::InvalidArgument(_))));
    assert!(matches!(
        mproc::ProcessPoolExecutor::new(Some(0)),
        Err(PoolError::InvalidArgument(_))
    ));
}
