//! Queue, SimpleQueue and JoinableQueue under each start method.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use mproc::connection::{Connection, pipe};
use mproc::{GetError, JoinableQueue, PutError, Queue, SimpleQueue, get_context};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];
const T: Duration = Duration::from_secs(60);
const ITEMS: u64 = 100_000;
const PRODUCERS: u64 = 4;

fn produce(arg: (u64, Queue<Option<u64>>)) {
    let (id, q) = arg;
    let per = ITEMS / PRODUCERS;
    for i in id * per..(id + 1) * per {
        q.put(Some(i)).unwrap();
    }
}

/// Takes items until the end marker; sends back what it got.
fn consume(arg: (Queue<Option<u64>>, Queue<Vec<u64>>)) {
    let (q, out) = arg;
    let mut got = Vec::new();
    while let Some(i) = q.get_timeout(T).unwrap() {
        got.push(i);
    }
    out.put(got).unwrap();
}

#[test]
fn four_producers_four_consumers_each_method() {
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let q = Queue::with_maxsize(1000).unwrap();
        let out = Queue::new().unwrap();
        let mut consumers: Vec<_> = (0..4)
            .map(|_| {
                ctx.process(consume, (q.clone(), out.clone()))
                    .start()
                    .unwrap()
            })
            .collect();
        let mut producers: Vec<_> = (0..PRODUCERS)
            .map(|id| ctx.process(produce, (id, q.clone())).start().unwrap())
            .collect();
        for p in &mut producers {
            p.join_timeout(T).unwrap();
        }
        for _ in 0..4 {
            q.put(None).unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..4 {
            for i in out.get_timeout(T).unwrap() {
                assert!(seen.insert(i), "{m}: item {i} received twice");
            }
        }
        for c in &mut consumers {
            c.join_timeout(T).unwrap();
        }
        assert_eq!(seen.len() as u64, ITEMS, "{m}");
        assert!(q.empty(), "{m}");
        assert_eq!(q.qsize(), 0);
    }
}

/// Reports every item it takes on its own connection, one message each.
fn consume_and_report(arg: (Queue<Option<u64>>, Connection<u64>)) {
    let (q, report) = arg;
    while let Some(i) = q.get_timeout(T).unwrap() {
        report.send(&i).unwrap();
        if i % 97 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

#[test]
fn consumer_killed_mid_stream_no_duplicates() {
    const N: u64 = 20_000;
    for m in METHODS {
        let ctx = get_context(m).unwrap();
        let q = Queue::new().unwrap();
        let mut reports = Vec::new();
        let mut consumers = Vec::new();
        for _ in 0..3 {
            let (a, b) = pipe::<u64>(true).unwrap();
            reports.push(a);
            consumers.push(
                ctx.process(consume_and_report, (q.clone(), b))
                    .start()
                    .unwrap(),
            );
        }
        let producer = std::thread::spawn({
            let q = q.clone();
            move || {
                for i in 0..N {
                    q.put(Some(i)).unwrap();
                }
                q
            }
        });
        // Kill the first consumer once it has taken some items.
        let mut seen = HashSet::new();
        let mut killed = false;
        let deadline = Instant::now() + T;
        let mut open: Vec<bool> = vec![true; 3];
        let mut markers_sent = false;
        while open.iter().any(|o| *o) {
            assert!(Instant::now() < deadline, "{m}: stalled");
            if !killed && seen.len() > 2000 {
                consumers[0].kill().unwrap();
                killed = true;
            }
            if !markers_sent && producer.is_finished() {
                for _ in 0..3 {
                    q.put(None).unwrap();
                }
                markers_sent = true;
            }
            for (k, r) in reports.iter().enumerate() {
                if !open[k] {
                    continue;
                }
                while r.poll(Some(Duration::ZERO)).unwrap() {
                    match r.recv() {
                        Ok(i) => assert!(seen.insert(i), "{m}: item {i} duplicated"),
                        Err(mproc::Error::Closed) => {
                            open[k] = false;
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        producer.join().unwrap();
        for c in &mut consumers {
            let _ = c.join_timeout(T);
        }
        assert_eq!(consumers[0].exitcode(), Some(-9), "{m}");
        assert_eq!(consumers[1].exitcode(), Some(0), "{m}");
        assert_eq!(consumers[2].exitcode(), Some(0), "{m}");
        // The killed consumer can lose at most the item it held.
        assert!(seen.len() as u64 >= N - 1, "{m}: {} of {N}", seen.len());
        // A stray end marker may remain if the killed one never took it.
        while let Ok(x) = q.get_nowait() {
            assert!(x.is_none());
        }
    }
}

fn put_sizes_and_exit(q: Queue<mproc::Bytes>) {
    // Inline, a bulk stream, and (past any stream's send buffer) a memfd.
    for n in [1000usize, 3 << 20, 70 << 20] {
        q.put(mproc::Bytes(vec![(n % 251) as u8; n])).unwrap();
    }
}

/// gh-73983 for every way a body travels: a child that put items of each
/// size exits before anyone reads them, and every item arrives whole.
#[test]
fn producer_of_large_items_exits_before_they_are_read() {
    for m in METHODS {
        let q = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(put_sizes_and_exit, q.clone())
            .start()
            .unwrap();
        p.join_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(q.qsize(), 3, "{m}");
        for n in [1000usize, 3 << 20, 70 << 20] {
            let v = q.get_timeout(T).unwrap();
            assert_eq!(v.len(), n, "{m}");
            assert!(v.iter().all(|b| *b == (n % 251) as u8), "{m}: {n}");
        }
    }
}

fn put_big_and_exit(q: Queue<Vec<u8>>) {
    q.put(vec![0xabu8; 1 << 20]).unwrap();
}

/// CPython gh-73983: a child that put a large item could not exit until a
/// reader drained the pipe, so joining it before `get` deadlocked.
#[test]
fn gh_73983_join_before_get_does_not_hang() {
    for m in METHODS {
        let q = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(put_big_and_exit, q.clone())
            .start()
            .unwrap();
        p.join_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(q.qsize(), 1);
        let v = q.get_timeout(T).unwrap();
        assert_eq!(v.len(), 1 << 20);
        assert!(v.iter().all(|b| *b == 0xab));
    }
}

fn use_sent_connection(q: Queue<Connection<String>>) {
    let c = q.get_timeout(T).unwrap();
    let s = c.recv_timeout(T).unwrap();
    c.send(&format!("{s} and back")).unwrap();
}

#[test]
fn connection_sent_through_queue_works() {
    for m in METHODS {
        let q = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(use_sent_connection, q.clone())
            .start()
            .unwrap();
        let (a, b) = pipe::<String>(true).unwrap();
        q.put(b).unwrap();
        a.send(&"there".to_string()).unwrap();
        assert_eq!(a.recv_timeout(T).unwrap(), "there and back");
        p.join_timeout(T).unwrap();
    }
}

fn queue_of_queues(q: Queue<Queue<u32>>) {
    let inner = q.get_timeout(T).unwrap();
    inner.put(99).unwrap();
}

#[test]
fn queue_sent_through_queue_works() {
    let q = Queue::new().unwrap();
    let mut p = get_context("forkserver")
        .unwrap()
        .process(queue_of_queues, q.clone())
        .start()
        .unwrap();
    let inner: Queue<u32> = Queue::with_maxsize(3).unwrap();
    q.put(inner.clone()).unwrap();
    assert_eq!(inner.get_timeout(T).unwrap(), 99);
    p.join_timeout(T).unwrap();
}

#[test]
fn bounded_queue_full_nowait_and_timeouts() {
    let q = Queue::with_maxsize(2).unwrap();
    assert_eq!(q.maxsize(), 2);
    q.put(1u32).unwrap();
    q.put_nowait(2).unwrap();
    assert!(q.full());
    assert_eq!(q.qsize(), 2);
    match q.put_nowait(3) {
        Err(PutError::Full(3)) => {}
        other => panic!("{other:?}"),
    }
    let t0 = Instant::now();
    let err = q.put_timeout(4, Duration::from_millis(200)).unwrap_err();
    let e = t0.elapsed();
    assert!(err.is_full());
    assert_eq!(err.into_inner(), 4);
    assert!(
        e >= Duration::from_millis(200) && e < Duration::from_secs(2),
        "{e:?}"
    );
    assert_eq!(q.get().unwrap(), 1);
    q.put_timeout(5, Duration::from_secs(5)).unwrap();
    assert_eq!(q.get_nowait().unwrap(), 2);
    assert_eq!(q.get_nowait().unwrap(), 5);
    assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
    let t0 = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(GetError::Empty)
    ));
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(200) && e < Duration::from_secs(2),
        "{e:?}"
    );
}

#[test]
fn blocked_put_wakes_when_another_thread_gets() {
    let q = Queue::with_maxsize(1).unwrap();
    q.put(0u32).unwrap();
    let q2 = q.clone();
    let t = std::thread::spawn(move || q2.put_timeout(1, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(q.get_timeout(T).unwrap(), 0);
    t.join().unwrap().unwrap();
    assert_eq!(q.get_timeout(T).unwrap(), 1);
}

fn drain(arg: (Queue<u32>, u32)) -> u32 {
    let mut sum = 0;
    for _ in 0..arg.1 {
        sum += arg.0.get_timeout(T).unwrap();
    }
    sum
}

#[test]
fn bounded_queue_across_processes() {
    for m in METHODS {
        let q = Queue::with_maxsize(4).unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(drain, (q.clone(), 500))
            .start()
            .unwrap();
        for i in 0..500 {
            q.put_timeout(i, T).unwrap();
            assert!(q.qsize() <= 4);
        }
        assert_eq!(p.join_timeout(T).unwrap(), (0..500).sum::<u32>(), "{m}");
    }
}

#[test]
fn closed_queue_refuses() {
    let q = Queue::new().unwrap();
    q.close();
    assert!(matches!(q.put(1u8), Err(PutError::Closed(1))));
    assert!(matches!(q.get_nowait(), Err(GetError::Closed)));
}

#[test]
fn simple_and_joinable_queues() {
    let sq = SimpleQueue::new().unwrap();
    assert!(sq.empty().unwrap());
    sq.put(3u8).unwrap();
    assert!(!sq.empty().unwrap());
    assert_eq!(sq.get().unwrap(), 3);
    // After close, empty() is an error, as Python's OSError (it used to
    // answer `true`).
    sq.put(4u8).unwrap();
    sq.close();
    assert!(matches!(sq.empty(), Err(GetError::Closed)));
    assert!(matches!(sq.get(), Err(GetError::Closed)));

    let jq = JoinableQueue::new().unwrap();
    jq.put(1u8).unwrap();
    jq.put(2u8).unwrap();
    assert!(matches!(
        jq.join_timeout(Duration::from_millis(100)),
        Err(mproc::Error::Timeout)
    ));
    assert_eq!(jq.get().unwrap(), 1);
    jq.task_done().unwrap();
    assert_eq!(jq.get().unwrap(), 2);
    jq.task_done().unwrap();
    jq.join_timeout(Duration::from_secs(5)).unwrap();
    assert!(jq.task_done().is_err());
}

fn worker(q: JoinableQueue<Option<u32>>) {
    while let Some(_x) = q.get_timeout(T).unwrap() {
        q.task_done().unwrap();
    }
    q.task_done().unwrap();
}

#[test]
fn joinable_queue_join_waits_for_workers() {
    for m in METHODS {
        let q = JoinableQueue::new().unwrap();
        let mut ws: Vec<_> = (0..2)
            .map(|_| {
                get_context(m)
                    .unwrap()
                    .process(worker, q.clone())
                    .start()
                    .unwrap()
            })
            .collect();
        for i in 0..200 {
            q.put(Some(i)).unwrap();
        }
        q.put(None).unwrap();
        q.put(None).unwrap();
        q.join_timeout(T).unwrap();
        for w in &mut ws {
            w.join_timeout(T).unwrap();
        }
        assert!(q.task_done().is_err(), "{m}");
    }
}

fn put_many_and_exit(arg: (Queue<u64>, u64)) {
    for i in 0..arg.1 {
        arg.0.put(i).unwrap();
    }
}

/// gh-73983 for many small items: they wait in the queue's shared ring, so
/// the producer exits without a reader (10,000 of them; the ring holds about
/// 16,000 small items).
#[test]
fn many_small_items_do_not_block_an_exiting_producer() {
    let n = 10_000;
    for m in METHODS {
        let q = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(put_many_and_exit, (q.clone(), n))
            .start()
            .unwrap();
        p.join_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(q.qsize(), n as usize, "{m}");
        for i in 0..n {
            assert_eq!(q.get_timeout(T).unwrap(), i);
        }
    }
}

fn put_forever(arg: (Queue<(u64, u64)>, u64)) {
    let (q, id) = arg;
    for i in 0.. {
        if q.put((id, i)).is_err() {
            return;
        }
    }
}

/// Producers SIGKILLed while they put (some of them, sooner or later, while
/// holding the ring's lock): the queue goes on working, nothing is
/// duplicated, and what each producer put arrives in its order with no gap.
#[test]
fn producers_killed_mid_put_leave_a_working_queue() {
    const PER_KILL: usize = 3000;
    for m in ["fork", "forkserver"] {
        let ctx = get_context(m).unwrap();
        let q: Queue<(u64, u64)> = Queue::new().unwrap();
        let mut producers: Vec<_> = (0..3)
            .map(|id| ctx.process(put_forever, (q.clone(), id)).start().unwrap())
            .collect();
        let mut next = [0u64; 3];
        let mut taken = 0;
        let mut killed = 0;
        let deadline = Instant::now() + T;
        loop {
            assert!(Instant::now() < deadline, "{m}: stalled");
            if killed < 3 && taken >= (killed + 1) * PER_KILL {
                producers[killed].kill().unwrap();
                producers[killed].join_timeout(T).unwrap_err();
                killed += 1;
            }
            match q.get_timeout(Duration::from_millis(200)) {
                Ok((id, i)) => {
                    let id = id as usize;
                    assert_eq!(i, next[id], "{m}: producer {id} out of order or duplicated");
                    next[id] += 1;
                    taken += 1;
                }
                // Every producer is dead and the queue is drained.
                Err(GetError::Empty) if killed == 3 => break,
                Err(GetError::Empty) => {}
                Err(e) => panic!("{m}: {e}"),
            }
        }
        for p in &producers {
            assert_eq!(p.exitcode(), Some(-9), "{m}");
        }
        assert!(q.empty(), "{m}: qsize {}", q.qsize());
        q.put((9, 9)).unwrap();
        assert_eq!(q.get_timeout(T).unwrap(), (9, 9));
    }
}

/// `shutdown(false)`: puts fail at once, gets take what is left and then
/// fail instead of waiting; `shutdown(true)` drops what is left and lets
/// `join` return.
#[test]
fn shutdown_then_immediate_shutdown() {
    let q = JoinableQueue::new().unwrap();
    for i in 0..3u32 {
        q.put(vec![i as u8; if i == 2 { 100_000 } else { 8 }])
            .unwrap();
    }
    q.shutdown(false);
    assert!(q.is_shutdown());
    assert!(matches!(q.put(vec![9]), Err(PutError::ShutDown(v)) if v == [9]));
    assert_eq!(q.get_timeout(T).unwrap(), [0; 8]);
    q.task_done().unwrap();
    // A task taken and not yet done keeps join waiting.
    assert!(matches!(
        q.join_timeout(Duration::from_millis(20)),
        Err(mproc::Error::Timeout)
    ));
    q.shutdown(true); // drops the small item and the large one
    assert_eq!(q.qsize(), 0);
    assert!(matches!(q.get_nowait(), Err(GetError::ShutDown)));
    assert!(matches!(q.get_timeout(T), Err(GetError::ShutDown)));
    // Both dropped items counted as done: join returns.
    q.join_timeout(T).unwrap();
}

/// A `get` blocked on an empty queue and a `put` blocked on a full one
/// wake up with `ShutDown`, not at their deadline.
#[test]
fn shutdown_wakes_blocked_gets_and_puts() {
    let empty = Queue::<u8>::new().unwrap();
    let full = Queue::with_maxsize(1).unwrap();
    full.put(0u8).unwrap();
    std::thread::scope(|s| {
        let getters: Vec<_> = (0..2).map(|_| s.spawn(|| empty.get_timeout(T))).collect();
        let putter = s.spawn(|| full.put_timeout(1, T));
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        empty.shutdown(false);
        full.shutdown(false);
        for g in getters {
            assert!(matches!(g.join().unwrap(), Err(GetError::ShutDown)));
        }
        assert!(matches!(putter.join().unwrap(), Err(PutError::ShutDown(1))));
        assert!(t0.elapsed() < T / 2, "woken by the shutdown");
    });
    // Not immediate: the item already in stays gettable.
    assert_eq!(full.get_nowait().unwrap(), 0);
    assert!(matches!(full.get_nowait(), Err(GetError::ShutDown)));
}

fn get_until_shut_down(q: Queue<u32>) -> (Vec<u32>, bool) {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(T) {
            Ok(v) => got.push(v),
            Err(GetError::ShutDown) => return (got, q.is_shutdown()),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A shutdown in one process is seen by every handle of the queue in
/// every other.
#[test]
fn shutdown_reaches_children() {
    for m in METHODS {
        let q = Queue::new().unwrap();
        let mut p = get_context(m)
            .unwrap()
            .process(get_until_shut_down, q.clone())
            .start()
            .unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        // Let the child drain and go to sleep on the empty queue.
        let deadline = Instant::now() + T;
        while !q.empty() {
            assert!(Instant::now() < deadline, "{m}: child never took");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        q.shutdown(false);
        assert_eq!(p.join_timeout(T).unwrap(), (vec![1, 2], true), "{m}");
    }
}

#[test]
fn immediate_shutdown_drops_socket_items_with_their_frames() {
    let q = Queue::<Vec<u8>>::new().unwrap();
    let other = q.clone();
    for i in 0..3u8 {
        // Over the ring's inline limit: each goes through the socket.
        q.put(vec![i; 40 * 1024]).unwrap();
    }
    q.put(vec![9]).unwrap();
    other.shutdown(true);
    assert!(q.is_shutdown());
    assert!(matches!(
        q.get_timeout(Duration::from_secs(5)),
        Err(GetError::ShutDown)
    ));
    assert!(matches!(q.put(vec![1]), Err(PutError::ShutDown(_))));
    assert!(matches!(q.get_nowait(), Err(GetError::ShutDown)));
}
