//! Processes, pipes and queues awaited from a multi-thread tokio runtime:
//! no worker thread blocks, dropped futures lose nothing and leave nothing.
mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mproc::connection::{Connection, pipe};
use mproc::{Error, Event, GetError, JoinableQueue, Queue, SimpleQueue, get_context};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(30);

/// The tests count fds and children: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`serial`] turn of a test, and a [`runtime`] for it.
fn serial_runtime() -> (std::sync::MutexGuard<'static, ()>, tokio::runtime::Runtime) {
    (serial(), runtime())
}

/// A runtime with two worker threads.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn wait_for(ev: Event) -> u32 {
    ev.wait_timeout(T).expect("the event within 30 s");
    7
}

fn boom(_: ()) -> u32 {
    panic!("no luck")
}

fn exit3(_: ()) -> u32 {
    std::process::exit(3)
}

#[test]
fn twenty_sleeping_children_are_joined_concurrently_on_two_workers() {
    let (_g, rt) = serial_runtime();
    let ctx = get_context("forkserver").unwrap();
    let t0 = Instant::now();
    let got = rt.block_on(async {
        // Each task starts its child and awaits it. Were a join to block
        // its worker, two workers would get through two children at a
        // time: ten rounds of 200 ms at least.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(async move {
                    let mut p = ctx.process(nap, 200).start()?;
                    p.join_async().await
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            let r = timeout(T, t).await.expect("joined in time").unwrap();
            got.push(r.unwrap());
        }
        got
    });
    let took = t0.elapsed();
    assert_eq!(got, vec![200; 20]);
    assert!(
        took < Duration::from_millis(2000),
        "20 joins of 200 ms children took {took:?}"
    );
    assert!(mproc::active_children().is_empty());
    assert!(common::zombies_of(std::process::id()).is_empty());
}

#[test]
fn joins_pending_on_every_worker_leave_the_runtime_free() {
    let (_g, rt) = serial_runtime();
    let ctx = get_context("forkserver").unwrap();
    let ev = Event::new().unwrap();
    let got = rt.block_on(async {
        let mut ps: Vec<_> = (0..8)
            .map(|_| ctx.process(wait_for, ev.clone()).start().unwrap())
            .collect();
        // Every worker takes join tasks that cannot finish until the event
        // is set — by another task, which only runs if no worker blocks.
        let joins: Vec<_> = ps
            .drain(..)
            .map(|mut p| tokio::spawn(async move { p.join_async().await }))
            .collect();
        let setter = tokio::spawn({
            let ev = ev.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ev.set();
            }
        });
        let mut got = Vec::new();
        for j in joins {
            got.push(timeout(T, j).await.expect("joined in time").unwrap());
        }
        setter.await.unwrap();
        got
    });
    for r in got {
        assert_eq!(r.unwrap(), 7);
    }
}

#[test]
fn join_async_gives_values_panics_and_exit_codes_under_each_method() {
    let (_g, rt) = serial_runtime();
    for (m, ctx) in common::contexts() {
        rt.block_on(async {
            let mut p = ctx.process(nap, 30).start().unwrap();
            assert_eq!(timeout(T, p.join_async()).await.unwrap().unwrap(), 30);
            assert_eq!(p.exitcode(), Some(0));
            // A second join finds the result taken, as `join` does.
            assert!(matches!(
                timeout(T, p.join_async()).await.unwrap(),
                Err(Error::ResultTaken)
            ));

            let mut p = ctx.process(boom, ()).start().unwrap();
            match timeout(T, p.join_async()).await.unwrap() {
                Err(Error::Panicked { message }) => assert_eq!(message, "no luck"),
                other => panic!("{m}: {other:?}"),
            }

            let mut p = ctx.process(exit3, ()).start().unwrap();
            match timeout(T, p.join_async()).await.unwrap() {
                Err(Error::Exited { exitcode: 3 }) => {}
                other => panic!("{m}: {other:?}"),
            }

            // (Killed before it read its job, the child may leave its
            // control socket reset: `join` then reports that I/O error, as
            // the blocking join does; the exit code is the same.)
            let mut p = ctx.process(nap, 30_000).start().unwrap();
            p.kill().unwrap();
            let r = timeout(T, p.join_async()).await.unwrap();
            assert!(r.is_err(), "{m}: {r:?}");
            assert_eq!(p.exitcode(), Some(-9), "{m}");
        });
    }
    assert!(mproc::active_children().is_empty());
}

fn produce(q: Queue<u32>) {
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..3 {
        q.put(i).unwrap();
    }
}

fn produce_simple(q: SimpleQueue<String>) {
    std::thread::sleep(Duration::from_millis(50));
    q.put("simple".into()).unwrap();
}

fn produce_joinable(q: JoinableQueue<Vec<u8>>) {
    std::thread::sleep(Duration::from_millis(50));
    // Large enough to travel on the queue's socket, not in the ring.
    q.put(vec![9; 100_000]).unwrap();
}

#[test]
fn queues_are_awaited_while_a_child_fills_them() {
    let (_g, rt) = serial_runtime();
    for (_, ctx) in common::contexts() {
        let q = Queue::new().unwrap();
        let sq = SimpleQueue::new().unwrap();
        let jq = JoinableQueue::new().unwrap();
        let mut ps = vec![
            ctx.process(produce, q.clone()).start().unwrap(),
            ctx.process(produce_simple, sq.clone()).start().unwrap(),
            ctx.process(produce_joinable, jq.clone()).start().unwrap(),
        ];
        rt.block_on(async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(timeout(T, q.get_async()).await.unwrap().unwrap());
            }
            assert_eq!(got, [0, 1, 2]);
            let s = timeout(T, sq.get_async()).await.unwrap().unwrap();
            assert_eq!(s, "simple");
            let v = timeout(T, jq.get_async()).await.unwrap().unwrap();
            assert_eq!(v, vec![9; 100_000]);
            jq.task_done().unwrap();
            for p in &mut ps {
                timeout(T, p.join_async()).await.unwrap().unwrap();
            }
        });
        jq.join_timeout(T).unwrap();
    }
}

fn chatter(conn: Connection<String>) {
    for word in ["one", "two"] {
        std::thread::sleep(Duration::from_millis(30));
        conn.send(&word.to_string()).unwrap();
    }
}

#[test]
fn a_pipe_is_awaited_until_the_child_closes_it() {
    let (_g, rt) = serial_runtime();
    for (_, ctx) in common::contexts() {
        let (ours, theirs) = pipe::<String>(true).unwrap();
        let mut p = ctx.process(chatter, theirs).start().unwrap();
        rt.block_on(async {
            assert_eq!(timeout(T, ours.recv_async()).await.unwrap().unwrap(), "one");
            assert_eq!(timeout(T, ours.recv_async()).await.unwrap().unwrap(), "two");
            timeout(T, p.join_async()).await.unwrap().unwrap();
            // The child's end is gone: EOF.
            assert!(matches!(
                timeout(T, ours.recv_async()).await.unwrap(),
                Err(Error::Closed)
            ));
        });
    }
}

#[test]
fn many_consumers_of_one_queue_get_each_item_once() {
    let (_g, rt) = serial_runtime();
    let q: Queue<Option<u32>> = Queue::new().unwrap();
    let got = rt.block_on(async {
        let consumers: Vec<_> = (0..6)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Some(i) = timeout(T, q.get_async()).await.unwrap().unwrap() {
                        got.push(i);
                    }
                    got
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for i in 0..600 {
            q.put(Some(i)).unwrap();
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for _ in 0..6 {
            q.put(None).unwrap();
        }
        let mut all = Vec::new();
        for c in consumers {
            all.extend(timeout(T, c).await.unwrap().unwrap());
        }
        all
    });
    let mut got = got;
    got.sort_unstable();
    assert_eq!(got, (0..600).collect::<Vec<_>>());
}

#[test]
fn dropped_futures_lose_nothing_and_leave_nothing() {
    let (_g, rt) = serial_runtime();
    // The `fork` method: a fork-server connection receives the warm child
    // reserved for it (three fds) whenever the server refills, so the fd
    // count would depend on timing; what is counted here is the futures'.
    let ctx = get_context("fork").unwrap();
    let q: Queue<u32> = Queue::new().unwrap();
    let (a, b) = pipe::<u32>(true).unwrap();
    // The waiter thread and its two fds exist from the first wait on.
    rt.block_on(async {
        assert!(
            timeout(Duration::from_millis(5), q.get_async())
                .await
                .is_err()
        );
    });
    let fds = common::fd_count();
    let mut p = ctx.process(nap, 300).start().unwrap();
    let fds_with_child = common::fd_count();
    rt.block_on(async {
        for _ in 0..3 {
            // Each one is polled, registers, and is dropped when its
            // timeout expires.
            assert!(
                timeout(Duration::from_millis(20), q.get_async())
                    .await
                    .is_err()
            );
            assert!(
                timeout(Duration::from_millis(20), b.recv_async())
                    .await
                    .is_err()
            );
            assert!(
                timeout(Duration::from_millis(20), p.join_async())
                    .await
                    .is_err()
            );
            assert_eq!(common::fd_count(), fds_with_child);
        }
        // What arrives after a drop is there for the next receive.
        q.put(5).unwrap();
        a.send(&6).unwrap();
        assert_eq!(timeout(T, q.get_async()).await.unwrap().unwrap(), 5);
        assert_eq!(timeout(T, b.recv_async()).await.unwrap().unwrap(), 6);
        // And the child, still running after three dropped joins, is
        // joined in the end.
        assert_eq!(timeout(T, p.join_async()).await.unwrap().unwrap(), 300);
        // A future created but never polled registers nothing.
        drop(q.get_async());
    });
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
    drop(p);
    let deadline = Instant::now() + T;
    while common::fd_count() != fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(common::fd_count(), fds, "no fd left behind");
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn an_async_result_is_awaited_on_the_multi_thread_runtime() {
    let (_g, rt) = serial_runtime();
    let pool = get_context("forkserver").unwrap().pool(2).unwrap();
    let got = rt.block_on(async {
        let results: Vec<_> = (0..8)
            .map(|i| pool.apply_async(square, i).unwrap())
            .collect();
        let mut got = Vec::new();
        for r in results {
            got.push(timeout(T, r).await.unwrap().unwrap());
        }
        got
    });
    assert_eq!(got, [0, 1, 4, 9, 16, 25, 36, 49]);
    pool.close();
    pool.join_timeout(T).unwrap();
}

/// A minimal executor: the waker unparks the thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let deadline = Instant::now() + T;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "block_on: no result in 30 s");
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn a_fork_child_awaits_children_of_its_own() {
    let _g = serial();
    // The parent's waiter thread runs before the fork.
    let q: Queue<u8> = Queue::new().unwrap();
    assert!(timeout_free_empty(&q));
    let ctx = get_context("fork").unwrap();
    let mut p = ctx
        .process_closure(|| {
            // A fresh waiter thread here, and the grandchild is awaited.
            let ctx = get_context("fork").unwrap();
            let mut g = ctx.process_closure(|| nap(20) + 1).start().unwrap();
            block_on(g.join_async()).unwrap()
        })
        .start()
        .unwrap();
    assert_eq!(block_on(p.join_async()).unwrap(), 21);
}

/// Registers a queue future with the waiter thread, then drops it.
fn timeout_free_empty(q: &Queue<u8>) -> bool {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut f = pin!(q.get_async());
    f.as_mut().poll(&mut cx).is_pending()
}

#[test]
fn the_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let (a, _b) = pipe::<u8>(true).unwrap();
    let q: Queue<u8> = Queue::new().unwrap();
    send(&a.recv_async());
    send(&q.get_async());
    let mut p = get_context("fork")
        .unwrap()
        .process_closure(|| 1u8)
        .start()
        .unwrap();
    send(&p.join_async());
    assert_eq!(block_on(p.join_async()).unwrap(), 1);
}

#[test]
fn items_that_arrive_while_the_receiver_registers_are_not_missed() {
    // Ping-pong: each item is sent the moment the receiver has taken the
    // previous one, so it often lands between the receiver's failed try
    // and its registration with the waiter thread.
    const N: u32 = 1000;
    let (_g, rt) = serial_runtime();
    let (a, b) = pipe::<u32>(true).unwrap();
    let q: Queue<u32> = Queue::new().unwrap();
    let (ack, acked) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn({
        let q = q.clone();
        move || {
            for i in 0..N {
                if i % 2 == 0 {
                    a.send(&i).unwrap();
                } else {
                    q.put(i).unwrap();
                }
                acked.recv_timeout(T).expect("acknowledged in time");
            }
        }
    });
    rt.block_on(async {
        for i in 0..N {
            let got = if i % 2 == 0 {
                timeout(T, b.recv_async()).await.unwrap().unwrap()
            } else {
                timeout(T, q.get_async()).await.unwrap().unwrap()
            };
            assert_eq!(got, i);
            ack.send(()).unwrap();
        }
    });
    sender.join().unwrap();
}
