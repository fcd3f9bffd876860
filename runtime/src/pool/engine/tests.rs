//! The engine's decisions, driven by a mock OS: nothing here forks.

use std::collections::HashMap;
use std::sync::Arc;

use forkserver::FnRef;

use super::*;
use crate::pool::result::{IMapIterator, ImapShared};

/// Records what the engine asked for; forks nothing. Workers are pids.
struct MockOs {
    t0: Instant,
    elapsed: Duration,
    next_pid: i32,
    /// Every message sent: the worker, and the task ids in it (`None`
    /// for a stop frame).
    sent: Vec<(i32, Vec<Option<u64>>)>,
    signals: Vec<(i32, Signal)>,
    /// Workers whose channel is full.
    full: Vec<i32>,
    /// The next send fails with this (not a full channel).
    send_error: Option<io::ErrorKind>,
    /// How many of the next starts fail.
    failing_starts: u32,
    stopped: Vec<i32>,
    reaped: Vec<i32>,
    exitcodes: HashMap<i32, i32>,
    slept: Vec<Duration>,
}

impl MockOs {
    fn new() -> MockOs {
        MockOs {
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            next_pid: 100,
            sent: Vec::new(),
            signals: Vec::new(),
            full: Vec::new(),
            send_error: None,
            failing_starts: 0,
            stopped: Vec::new(),
            reaped: Vec::new(),
            exitcodes: HashMap::new(),
            slept: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }

    /// The messages sent since the last call.
    fn take_sent(&mut self) -> Vec<(i32, Vec<Option<u64>>)> {
        std::mem::take(&mut self.sent)
    }
}

impl Os for MockOs {
    type Worker = i32;

    fn now(&mut self) -> Instant {
        self.t0 + self.elapsed
    }

    fn start(&mut self) -> Result<(i32, i32), PoolError> {
        if self.failing_starts > 0 {
            self.failing_starts -= 1;
            return Err(PoolError::Broken("no fork today".into()));
        }
        self.next_pid += 1;
        Ok((self.next_pid, self.next_pid))
    }

    fn send(&mut self, w: &i32, msg: &[u8], _fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if let Some(kind) = self.send_error.take() {
            return Err(kind.into());
        }
        if self.full.contains(w) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let ids = worker::frames(msg)
            .map(|f| match f.and_then(worker::unframe).unwrap().0 {
                Head::Task { id, .. } => Some(id),
                Head::Stop => None,
                other => panic!("the engine sent {other:?}"),
            })
            .collect();
        self.sent.push((*w, ids));
        Ok(())
    }

    fn signal(&mut self, w: &i32, signal: Signal) {
        self.signals.push((*w, signal));
    }

    fn stop(&mut self, workers: Vec<i32>) {
        self.stopped.extend(workers);
    }

    fn reap(&mut self, w: i32) -> i32 {
        self.reaped.push(w);
        self.exitcodes.get(&w).copied().unwrap_or(0)
    }

    fn sleep(&mut self, d: Duration) {
        self.slept.push(d);
    }
}

/// What a task's completion looked like: its id and its item count, or
/// its error.
type Seen = (u64, Result<usize, PoolError>);

/// What effects asked for, in order.
#[derive(Debug, PartialEq)]
enum Fx {
    Done(Seen),
    Stop(Vec<i32>),
    Reap(i32),
}

fn fx(effects: Effects<i32>) -> Vec<Fx> {
    effects
        .into_iter()
        .map(|e| match e {
            Effect::Complete(t, outcome) => {
                let id = t.id;
                t.discard();
                Fx::Done((id, outcome.map(|items| items.len())))
            }
            Effect::Stop(ws) => Fx::Stop(ws),
            Effect::Reap(pid, _) => Fx::Reap(pid),
        })
        .collect()
}

fn ok(id: u64) -> Fx {
    Fx::Done((id, Ok(1)))
}

fn failed(id: u64, e: PoolError) -> Fx {
    Fx::Done((id, Err(e)))
}

fn task_frame(id: u64) -> Vec<u8> {
    let head = Head::Task {
        id,
        tramp: FnRef::from_offset(1),
        func: FnRef::from_offset(2),
        items: vec![(1, 0)],
    };
    worker::frame(&head, &[b"a"]).unwrap()
}

fn task_with(id: u64, sink: Sink) -> Task {
    Task::new(id, task_frame(id), Vec::new(), sink)
}

fn task(id: u64) -> Task {
    task_with(id, Box::new(|_| {}))
}

fn tasks(ids: std::ops::RangeInclusive<u64>) -> Vec<Task> {
    ids.map(task).collect()
}

/// A message answering `ids` in order, one item of one byte each.
fn answers(ids: &[u64]) -> Encoded {
    let mut msg = Vec::new();
    for &id in ids {
        let head = Head::Done {
            id,
            items: vec![Out::Ok { len: 1, nfds: 0 }],
        };
        worker::append_frame(&mut msg, &head, &[b"r"]).unwrap();
    }
    (msg, Vec::new())
}

fn inbox(msgs: Vec<(i32, Encoded)>, dead: Vec<i32>) -> Inbox {
    Inbox { msgs, dead }
}

/// An engine with `n` workers started (pids 101, 102, ...).
fn engine(os: &mut MockOs, n: usize, maxtasks: Option<u64>) -> Engine<i32> {
    let mut e = Engine::new(n, maxtasks);
    for _ in 0..n {
        let (pid, w) = os.start().unwrap();
        assert!(fx(e.on_started(os, pid, w)).is_empty());
    }
    e
}

fn submit(e: &mut Engine<i32>, os: &mut MockOs, t: Vec<Task>) -> Vec<Fx> {
    fx(e.on_submit(os, t).expect("running"))
}

fn pending_ids(e: &Engine<i32>) -> Vec<u64> {
    e.pending.iter().map(|t| t.id).collect()
}

fn ids(v: impl IntoIterator<Item = u64>) -> Vec<Option<u64>> {
    v.into_iter().map(Some).collect()
}

#[test]
fn tasks_go_to_the_least_loaded_worker_one_message_each_up_to_the_window() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    assert!(submit(&mut e, &mut os, tasks(1..=6)).is_empty());
    // No service time known yet: a window of two.
    assert_eq!(os.take_sent(), vec![(101, ids([1, 3])), (102, ids([2, 4]))]);
    assert_eq!(pending_ids(&e), [5, 6]);
}

#[test]
fn an_answer_completes_its_task_and_frees_room_for_the_queue() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    submit(&mut e, &mut os, tasks(1..=6));
    os.take_sent();
    // A 5 ms task: the window stays at two.
    os.advance(Duration::from_millis(5));
    let out = e.on_inbox(&mut os, inbox(vec![(101, answers(&[1]))], vec![]));
    assert_eq!(fx(out), [ok(1)]);
    assert_eq!(os.take_sent(), vec![(101, ids([5]))]);
    assert_eq!(pending_ids(&e), [6]);
}

#[test]
fn results_are_delivered_in_the_order_they_were_read() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    submit(&mut e, &mut os, tasks(1..=4));
    let msgs = vec![
        (102, answers(&[2])),
        (101, answers(&[1, 3])),
        (102, answers(&[4])),
    ];
    let out = e.on_inbox(&mut os, inbox(msgs, vec![]));
    assert_eq!(fx(out), [ok(2), ok(1), ok(3), ok(4)]);
}

#[test]
fn a_panicked_item_and_a_bad_payload_fail_that_task_only() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=2));
    let mut msg = Vec::new();
    let panicked = Head::Done {
        id: 1,
        items: vec![Out::Panicked {
            message: "no".into(),
        }],
    };
    worker::append_frame(&mut msg, &panicked, &[]).unwrap();
    // Claims 9 bytes, carries 1: a codec error for task 2, not a kill.
    let short = Head::Done {
        id: 2,
        items: vec![Out::Ok { len: 9, nfds: 0 }],
    };
    worker::append_frame(&mut msg, &short, &[b"x"]).unwrap();
    let out = fx(e.on_inbox(&mut os, inbox(vec![(101, (msg, Vec::new()))], vec![])));
    assert_eq!(out[0], Fx::Done((1, Ok(1))));
    assert!(matches!(out[1], Fx::Done((2, Err(PoolError::Codec(_))))));
    assert!(os.signals.is_empty());
    assert_eq!(e.workers().count(), 1);
}

#[test]
fn an_answer_for_a_task_the_worker_does_not_hold_kills_it() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=2));
    // Task 2 answered before task 1: the worker is lying.
    let out = e.on_inbox(&mut os, inbox(vec![(101, answers(&[2]))], vec![]));
    assert_eq!(fx(out), [Fx::Reap(101)]);
    assert_eq!(os.signals, [(101, Signal::Kill)]);
    os.exitcodes.insert(101, -9);
    let out = e.on_worker_exit(101, -9);
    let died = PoolError::WorkerDied {
        pid: 101,
        exitcode: -9,
    };
    assert_eq!(fx(out), [failed(1, died)]);
    assert_eq!(pending_ids(&e), [2]);
    // Garbage is a bad frame too, and nothing panics on it.
    let mut e = engine(&mut os, 1, None);
    let out = e.on_inbox(&mut os, inbox(vec![(102, (vec![7, 0], vec![]))], vec![]));
    assert_eq!(fx(out), [Fx::Reap(102)]);
}

#[test]
fn a_dead_worker_fails_its_running_task_and_its_queue_goes_to_the_replacement() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    submit(&mut e, &mut os, tasks(1..=6));
    os.take_sent();
    let out = e.on_inbox(&mut os, inbox(vec![], vec![101]));
    assert_eq!(fx(out), [Fx::Reap(101)]);
    assert_eq!(e.workers_to_start(), 1);
    // Blamed only once the exit code is known.
    let died = PoolError::WorkerDied {
        pid: 101,
        exitcode: -11,
    };
    assert_eq!(fx(e.on_worker_exit(101, -11)), [failed(1, died)]);
    assert_eq!(pending_ids(&e), [3, 5, 6]);
    let (pid, w) = os.start().unwrap();
    assert!(fx(e.on_started(&mut os, pid, w)).is_empty());
    assert_eq!(os.take_sent(), vec![(103, ids([3, 5]))]);
    assert_eq!(e.workers_to_start(), 0);
}

#[test]
fn the_loop_reaps_blames_and_replaces_through_apply_and_replenish() {
    let mut os = MockOs::new();
    let engine = Mutex::new(engine(&mut os, 1, None));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sinks: Vec<Task> = (1..=3)
        .map(|id| {
            let log = log.clone();
            task_with(id, Box::new(move |o| log.lock().unwrap().push((id, o))))
        })
        .collect();
    let out = lock(&engine).on_submit(&mut os, sinks).unwrap();
    apply(&engine, &mut os, out);
    os.exitcodes.insert(101, 7);
    let out = lock(&engine).on_inbox(&mut os, inbox(vec![], vec![101]));
    apply(&engine, &mut os, out);
    assert_eq!(os.reaped, [101]);
    let seen = std::mem::take(&mut *log.lock().unwrap());
    assert_eq!(seen.len(), 1);
    assert!(matches!(
        seen[0],
        (
            1,
            Err(PoolError::WorkerDied {
                pid: 101,
                exitcode: 7
            })
        )
    ));
    os.take_sent();
    replenish(&engine, &mut os);
    assert_eq!(os.take_sent(), vec![(102, ids([2, 3]))]);
    assert!(os.slept.is_empty());
}

#[test]
fn maxtasksperchild_retires_a_worker_without_blame_and_replaces_it() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, Some(2));
    submit(&mut e, &mut os, tasks(1..=3));
    assert_eq!(os.take_sent(), vec![(101, ids([1, 2]))]);
    let out = e.on_inbox(&mut os, inbox(vec![(101, answers(&[1, 2]))], vec![]));
    assert_eq!(fx(out), [ok(1), ok(2)]);
    // It has had its two: nothing more for it.
    assert!(os.take_sent().is_empty());
    assert_eq!(pending_ids(&e), [3]);
    // It exits by itself; nobody is blamed.
    assert_eq!(
        fx(e.on_inbox(&mut os, inbox(vec![], vec![101]))),
        [Fx::Reap(101)]
    );
    assert!(fx(e.on_worker_exit(101, 0)).is_empty());
    assert_eq!(e.workers_to_start(), 1);
    let (pid, w) = os.start().unwrap();
    e.on_started(&mut os, pid, w);
    assert_eq!(os.take_sent(), vec![(102, ids([3]))]);
}

#[test]
fn close_lets_queued_work_finish_then_stops_the_workers() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=3));
    e.on_close();
    assert_eq!(e.phase(), Phase::Closed);
    // Refused, and the refused task's sink is never called.
    let called = Arc::new(Mutex::new(false));
    let c = called.clone();
    let late = task_with(9, Box::new(move |_| *c.lock().unwrap() = true));
    assert!(matches!(
        e.on_submit(&mut os, [late]),
        Err(PoolError::NotRunning)
    ));
    assert!(!*called.lock().unwrap());
    assert!(matches!(e.on_tick(&mut os), Tick::Serve));
    e.on_inbox(&mut os, inbox(vec![(101, answers(&[1, 2]))], vec![]));
    assert!(matches!(e.on_tick(&mut os), Tick::Serve));
    e.on_inbox(&mut os, inbox(vec![(101, answers(&[3]))], vec![]));
    os.take_sent();
    let Tick::Finish(out) = e.on_tick(&mut os) else {
        panic!("closed and idle: the pool should wind up")
    };
    assert_eq!(fx(out), [Fx::Stop(vec![101])]);
    assert_eq!(os.take_sent(), vec![(101, vec![None])]);
    assert!(os.signals.is_empty());
    e.finish();
    assert_eq!(e.phase(), Phase::Finished);
}

#[test]
fn a_closed_pool_replaces_a_dead_worker_only_while_work_is_queued() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=3));
    e.on_close();
    e.on_inbox(&mut os, inbox(vec![], vec![101]));
    e.on_worker_exit(101, -9);
    assert_eq!(e.workers_to_start(), 1);
    e.on_cancel_pending();
    assert_eq!(e.workers_to_start(), 0);
}

#[test]
fn terminate_fails_every_unfinished_task_and_signals_the_workers() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    submit(&mut e, &mut os, tasks(1..=6));
    os.take_sent();
    e.on_terminate();
    assert!(matches!(
        e.on_submit(&mut os, [task(7)]),
        Err(PoolError::NotRunning)
    ));
    let Tick::Finish(out) = e.on_tick(&mut os) else {
        panic!("terminating: the pool should wind up")
    };
    let t = |id| failed(id, PoolError::Terminated);
    assert_eq!(
        fx(out),
        [t(1), t(3), t(2), t(4), Fx::Stop(vec![101, 102]), t(5), t(6)]
    );
    assert_eq!(
        os.signals,
        [(101, Signal::Terminate), (102, Signal::Terminate)]
    );
    assert_eq!(os.take_sent(), vec![(101, vec![None]), (102, vec![None])]);
    assert_eq!(e.workers_to_start(), 0);
}

#[test]
fn a_panicking_initializer_breaks_the_pool() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    submit(&mut e, &mut os, tasks(1..=6));
    let head = Head::InitFailed {
        message: "boom".into(),
    };
    let msg = (worker::frame(&head, &[]).unwrap(), Vec::new());
    let out = e.on_inbox(&mut os, inbox(vec![(102, msg)], vec![102]));
    let why = "a worker's initializer panicked: boom".to_string();
    let b = |id| failed(id, PoolError::Broken(why.clone()));
    assert_eq!(
        fx(out),
        [b(1), b(3), b(2), b(4), b(5), b(6), Fx::Stop(vec![101, 102])]
    );
    assert_eq!(
        os.signals,
        [(101, Signal::Terminate), (102, Signal::Terminate)]
    );
    assert_eq!(e.workers_to_start(), 0);
    assert_eq!(e.check_running(), Err(PoolError::Broken(why.clone())));
    assert!(matches!(
        e.on_submit(&mut os, [task(7)]),
        Err(PoolError::Broken(_))
    ));
    // Still closable and joinable.
    e.on_close();
    assert!(matches!(e.on_tick(&mut os), Tick::Finish(_)));
}

#[test]
fn workers_that_cannot_start_break_the_pool_on_the_third_failure_in_a_row() {
    let mut os = MockOs::new();
    let mut e: Engine<i32> = Engine::new(1, None);
    submit(&mut e, &mut os, tasks(1..=2));
    let err = PoolError::Broken("no fork".into());
    assert!(fx(e.on_start_failed(&mut os, &err)).is_empty());
    assert!(fx(e.on_start_failed(&mut os, &err)).is_empty());
    // A success in between starts the count again.
    let (pid, w) = os.start().unwrap();
    e.on_started(&mut os, pid, w);
    assert!(fx(e.on_start_failed(&mut os, &err)).is_empty());
    assert!(fx(e.on_start_failed(&mut os, &err)).is_empty());
    assert!(!e.is_broken());
    let out = fx(e.on_start_failed(&mut os, &err));
    assert!(e.is_broken());
    // The worker that did start is stopped, its tasks terminated.
    let t = |id| failed(id, PoolError::Terminated);
    assert_eq!(out, [t(1), t(2), Fx::Stop(vec![101])]);
    assert_eq!(e.workers_to_start(), 0);
}

#[test]
fn replenish_backs_off_between_failed_starts_and_gives_up_on_the_third() {
    let mut os = MockOs::new();
    let engine: Mutex<Engine<i32>> = Mutex::new(Engine::new(2, None));
    let out = lock(&engine).on_submit(&mut os, tasks(1..=1)).unwrap();
    apply(&engine, &mut os, out);
    os.failing_starts = 3;
    replenish(&engine, &mut os);
    assert_eq!(os.slept, [START_BACKOFF, START_BACKOFF]);
    assert!(lock(&engine).is_broken());
    assert!(os.sent.is_empty());
    // Two more failures would not have broken it.
    let mut os = MockOs::new();
    let engine: Mutex<Engine<i32>> = Mutex::new(Engine::new(2, None));
    os.failing_starts = 2;
    replenish(&engine, &mut os);
    assert!(!lock(&engine).is_broken());
    assert_eq!(lock(&engine).workers().count(), 2);
}

#[test]
fn a_full_channel_blocks_the_worker_until_it_answers() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=1));
    os.full.push(101);
    submit(&mut e, &mut os, tasks(2..=2));
    assert_eq!(pending_ids(&e), [2]);
    os.full.clear();
    submit(&mut e, &mut os, tasks(3..=3));
    assert_eq!(os.take_sent(), vec![(101, ids([1]))]);
    assert_eq!(pending_ids(&e), [2, 3]);
    e.on_inbox(&mut os, inbox(vec![(101, answers(&[1]))], vec![]));
    assert_eq!(os.take_sent(), vec![(101, ids([2, 3]))]);
}

#[test]
fn a_task_that_cannot_be_sent_fails_alone() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    os.send_error = Some(io::ErrorKind::InvalidInput);
    let out = submit(&mut e, &mut os, tasks(1..=1));
    assert!(matches!(out[..], [Fx::Done((1, Err(PoolError::Codec(_))))]));
    submit(&mut e, &mut os, tasks(2..=2));
    assert_eq!(os.take_sent(), vec![(101, ids([2]))]);
}

#[test]
fn cancel_takes_a_queued_task_only() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=4));
    assert!(e.on_cancel(1).is_none(), "task 1 is in a worker");
    let out = fx(e.on_cancel(3).into_iter().collect());
    assert_eq!(out, [failed(3, PoolError::Cancelled)]);
    assert_eq!(fx(e.on_cancel_pending()), [failed(4, PoolError::Cancelled)]);
    assert!(pending_ids(&e).is_empty());
}

#[test]
fn the_window_follows_the_mean_task_time() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 1, None);
    submit(&mut e, &mut os, tasks(1..=40));
    assert_eq!(os.take_sent(), vec![(101, ids([1, 2]))]);
    // Short tasks: up to 32 in flight, sent in one message.
    os.advance(Duration::from_micros(10));
    e.on_inbox(&mut os, inbox(vec![(101, answers(&[1]))], vec![]));
    assert_eq!(os.take_sent(), vec![(101, ids(3..=33))]);
    // A long one brings the mean up: nothing more until the queue drains.
    os.advance(Duration::from_millis(200));
    e.on_inbox(&mut os, inbox(vec![(101, answers(&[2]))], vec![]));
    assert!(e.avg_service_ns.unwrap() > 10_000_000);
    assert!(os.take_sent().is_empty());
    assert!(!e.expects_answer_soon(), "31 in flight");
}

#[test]
fn the_result_thread_spins_only_with_one_or_two_in_flight_and_none_queued() {
    let mut os = MockOs::new();
    let mut e = engine(&mut os, 2, None);
    assert!(!e.expects_answer_soon());
    submit(&mut e, &mut os, tasks(1..=1));
    assert!(e.expects_answer_soon());
    submit(&mut e, &mut os, tasks(2..=5));
    assert!(!e.expects_answer_soon());
}

/// An imap chunk: its sink puts the chunk's items at `base..`.
fn imap_task(id: u64, base: usize, sh: &Arc<ImapShared<u64>>) -> Task {
    let sh = sh.clone();
    let sink: Sink = Box::new(move |out: TaskOutcome| match out {
        Ok(items) => (0..items.len()).for_each(|i| sh.put(base + i, Ok(base as u64 + i as u64))),
        Err(e) => sh.put(base, Err(e)),
    });
    task_with(id, sink)
}

#[test]
fn imap_yields_in_input_order_and_imap_unordered_in_answer_order() {
    let died = PoolError::WorkerDied {
        pid: 101,
        exitcode: -9,
    };
    for ordered in [true, false] {
        let mut os = MockOs::new();
        let engine = Mutex::new(engine(&mut os, 2, None));
        let sh = ImapShared::<u64>::new(ordered);
        let chunks: Vec<Task> = (0..4).map(|k| imap_task(k + 1, k as usize, &sh)).collect();
        let out = lock(&engine).on_submit(&mut os, chunks).unwrap();
        apply(&engine, &mut os, out);
        // Worker 102 (chunks 2 and 4) answers; 101 dies running chunk 1.
        os.exitcodes.insert(101, -9);
        let msgs = vec![(102, answers(&[2, 4]))];
        let out = lock(&engine).on_inbox(&mut os, inbox(msgs, vec![101]));
        apply(&engine, &mut os, out);
        let mut it = IMapIterator::new(sh.clone(), 4);
        let mut next = || it.next_timeout(Duration::ZERO).unwrap();
        if ordered {
            assert_eq!([next(), next()], [Err(died.clone()), Ok(1)]);
        } else {
            assert_eq!([next(), next(), next()], [Ok(1), Ok(3), Err(died.clone())]);
        }
        // Nothing more until chunk 3, queued behind the dead one and now
        // back at the head of the queue, is answered.
        assert_eq!(next(), Err(PoolError::Timeout));
        assert_eq!(pending_ids(&lock(&engine)), [3]);
    }
}

#[test]
fn a_dead_worker_is_blamed_for_its_oldest_task_only() {
    let mut queue: VecDeque<u32> = [10, 11].into();
    let blamed = blame_and_requeue([3, 4, 5].into(), &mut queue);
    assert_eq!(blamed, Some(3));
    assert_eq!(queue, VecDeque::from([4, 5, 10, 11]));
    // An idle worker that died (or was recycled) is blamed for nothing.
    assert_eq!(blame_and_requeue(VecDeque::new(), &mut queue), None);
    assert_eq!(queue.len(), 4);
}

#[test]
fn replacement_policy() {
    assert_eq!(workers_to_start(Phase::Running, false, false, 1, 4), 3);
    assert_eq!(workers_to_start(Phase::Running, true, true, 0, 4), 0);
    assert_eq!(workers_to_start(Phase::Closed, true, false, 1, 2), 1);
    assert_eq!(workers_to_start(Phase::Closed, false, false, 0, 2), 0);
    assert_eq!(workers_to_start(Phase::Terminating, true, false, 0, 2), 0);
    assert_eq!(workers_to_start(Phase::Running, false, false, 5, 2), 0);
}

#[test]
fn window_shrinks_for_long_tasks() {
    assert_eq!(window_for(Some(10_000)), 32);
    assert_eq!(window_for(Some(500_000)), 4);
    assert_eq!(window_for(Some(50_000_000)), 1);
    assert!(window_for(None) <= 2);
}
