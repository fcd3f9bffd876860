//! CPython's `_TestBarrier` against threads and against processes under
//! each start method, each pattern repeated many rounds by the same parties
//! so that a race between waking, `abort` and `reset` shows up as a wrong
//! count.
//!
//! `MPROC_BARRIER_ROUNDS` raises the number of rounds (default 200 for
//! threads, 40 per start method for processes).
mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use mproc::{Barrier, BarrierError, Lock, Queue, Value, get_context};

use common::{ActionCounter, METHODS};

/// Parties, as CPython's `_TestBarrier.N`.
const N: u32 = 5;
/// Every wait's bound: a deadlock fails the test instead of hanging it.
const T: Duration = Duration::from_secs(30);

fn rounds(threads: bool) -> u32 {
    std::env::var("MPROC_BARRIER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if threads { 200 } else { 40 })
}

/// Three counters standing for CPython's `results1..3` lists.
type Counts = (Value<u32>, Value<u32>, Value<u32>);

fn counts() -> Counts {
    (
        Value::new(0).unwrap(),
        Value::new(0).unwrap(),
        Value::new(0).unwrap(),
    )
}

fn bump(v: &Value<u32>) {
    *v.get_lock().expect("counter lock") += 1;
}

fn totals(c: &Counts) -> [u32; 3] {
    [c.0.get(), c.1.get(), c.2.get()]
}

/// Runs `f(args)` in `N` threads; returns their results, or re-raises the
/// first panic. A thread that hangs fails the test after `4 * T`.
fn in_threads<A, R>(f: fn(A) -> R, args: A) -> Vec<R>
where
    A: Clone + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..N {
        let (tx, args) = (tx.clone(), args.clone());
        std::thread::spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(|| f(args))));
        });
    }
    (0..N)
        .map(|_| match rx.recv_timeout(4 * T).expect("a party hung") {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        })
        .collect()
}

/// Runs `f(args)` in `N` processes of start method `m`; returns their
/// results (a panic in one fails the test with its message).
fn in_processes<A, R>(m: &str, f: fn(A) -> R, args: A) -> Vec<R>
where
    A: Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    let ctx = get_context(m).unwrap();
    let mut ps: Vec<_> = (0..N)
        .map(|_| ctx.process(f, args.clone()).start().unwrap())
        .collect();
    ps.iter_mut()
        .map(|p| p.join_timeout(4 * T).unwrap_or_else(|e| panic!("{m}: {e}")))
        .collect()
}

/// Runs `f` in `N` parties (threads when `m` is `None`, else processes of
/// start method `m`) on a fresh barrier and fresh counters, for the rounds
/// of that kind of party; returns the counters' totals and the rounds.
fn on_counts(m: Option<&str>, f: fn((Barrier, Counts, u32))) -> ([u32; 3], u32) {
    let (c, r) = (counts(), rounds(m.is_none()));
    let args = (Barrier::new(N).unwrap(), c.clone(), r);
    match m {
        None => in_threads(f, args),
        Some(m) => in_processes(m, f, args),
    };
    (totals(&c), r)
}

/// [`on_counts`] for the patterns that line the parties up on a second
/// barrier.
fn on_two_barriers(m: Option<&str>, f: fn((Barrier, Barrier, Counts, u32))) -> ([u32; 3], u32) {
    let (c, r) = (counts(), rounds(m.is_none()));
    let args = (
        Barrier::new(N).unwrap(),
        Barrier::new(N).unwrap(),
        c.clone(),
        r,
    );
    match m {
        None => in_threads(f, args),
        Some(m) => in_processes(m, f, args),
    };
    (totals(&c), r)
}

/// `multipass`: the barrier keeps the parties in lockstep.
fn multipass(args: (Barrier, Counts, u32)) {
    let (b, c, passes) = args;
    for i in 0..passes {
        bump(&c.0);
        assert_eq!(c.1.get(), i * N);
        b.wait_timeout(T).unwrap();
        bump(&c.1);
        assert_eq!(c.0.get(), (i + 1) * N);
        b.wait_timeout(T).unwrap();
    }
    assert_eq!(b.n_waiting(), 0);
    assert!(!b.is_broken());
}

#[test]
fn test_barrier_threads() {
    let (t, r) = on_counts(None, multipass);
    assert_eq!(t[..2], [N * r; 2]);
}

#[test]
fn test_barrier_processes() {
    for m in METHODS {
        let (t, r) = on_counts(Some(m), multipass);
        assert_eq!(t[..2], [N * r; 2], "{m}");
    }
}

/// `_test_wait_return_f`: every round hands out the arrival indices
/// `0..N` once each.
fn wait_return(args: (Barrier, u32)) -> Vec<u32> {
    let (b, rounds) = args;
    (0..rounds).map(|_| b.wait_timeout(T).unwrap()).collect()
}

fn assert_indices(per_party: Vec<Vec<u32>>, rounds: u32) {
    for r in 0..rounds as usize {
        let mut got: Vec<u32> = per_party.iter().map(|p| p[r]).collect();
        got.sort_unstable();
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "round {r}");
    }
}

#[test]
fn test_wait_return_threads() {
    let got = in_threads(wait_return, (Barrier::new(N).unwrap(), rounds(true)));
    assert_indices(got, rounds(true));
}

#[test]
fn test_wait_return_processes() {
    for m in METHODS {
        let got = in_processes(m, wait_return, (Barrier::new(N).unwrap(), rounds(false)));
        assert_indices(got, rounds(false));
    }
}

/// The counter the action bumps, in this process.
static ACTION_COUNT: ActionCounter = ActionCounter::new();

fn append_true() {
    ACTION_COUNT.bump();
}

/// `_test_action_f`: the action ran exactly once per round, before anyone
/// was let through.
fn action_f(args: (Barrier, Value<u32>, Barrier, u32)) {
    let (b, actions, lockstep, rounds) = args;
    ACTION_COUNT.set(actions.clone());
    for r in 1..=rounds {
        b.wait_timeout(T).unwrap();
        assert_eq!(actions.get(), r);
        // Nobody starts the next round before everyone has checked.
        lockstep.wait_timeout(T).unwrap();
    }
}

#[test]
fn test_action_threads() {
    let actions = Value::new(0).unwrap();
    let b = Barrier::with_action(N, append_true).unwrap();
    let lockstep = Barrier::new(N).unwrap();
    in_threads(action_f, (b, actions.clone(), lockstep, rounds(true)));
    assert_eq!(actions.get(), rounds(true));
}

#[test]
fn test_action_processes() {
    for m in METHODS {
        let actions = Value::new(0).unwrap();
        let b = Barrier::with_action(N, append_true).unwrap();
        let lockstep = Barrier::new(N).unwrap();
        in_processes(m, action_f, (b, actions.clone(), lockstep, rounds(false)));
        assert_eq!(actions.get(), rounds(false), "{m}");
    }
}

/// One round of `_test_abort_f`'s first part: the middle party aborts after
/// the first wait; everyone else's second wait passes or is broken.
fn abort_in_the_middle(b: &Barrier, c: &Counts) {
    match b.wait_timeout(T) {
        Ok(i) if i == N / 2 => b.abort(),
        Ok(_) => match b.wait_timeout(T) {
            Ok(_) => bump(&c.0),
            Err(BarrierError::Broken) => bump(&c.1),
            Err(e) => panic!("second wait: {e}"),
        },
        Err(e) => panic!("first wait: {e}"),
    }
}

/// `_test_abort_f`, then lines the parties up on `b2` and resets `b` so
/// that the next round starts whole: the middle party aborts after the
/// first wait; everyone else's second wait is broken.
fn abort_f(args: (Barrier, Barrier, Counts, u32)) {
    let (b, b2, c, rounds) = args;
    for _ in 0..rounds {
        abort_in_the_middle(&b, &c);
        if b2.wait_timeout(T).unwrap() == N / 2 {
            assert!(b.is_broken());
            bump(&c.2);
            b.reset();
        }
        b2.wait_timeout(T).unwrap();
    }
}

fn assert_abort((totals, rounds): ([u32; 3], u32), what: &str) {
    // At most N - 1 a round can be broken, so the total pins every round.
    assert_eq!(totals, [0, (N - 1) * rounds, rounds], "{what}");
}

#[test]
fn test_abort_threads() {
    assert_abort(on_two_barriers(None, abort_f), "threads");
}

#[test]
fn test_abort_processes() {
    for m in METHODS {
        assert_abort(on_two_barriers(Some(m), abort_f), m);
    }
}

/// `_test_reset_f`: the middle party waits until the others wait again,
/// then resets: they all get `Broken`, and all `N` then meet once more.
fn reset_f(args: (Barrier, Counts, u32)) {
    let (b, c, rounds) = args;
    for _ in 0..rounds {
        if b.wait_timeout(T).unwrap() == N / 2 {
            let deadline = Instant::now() + T;
            while b.n_waiting() < N - 1 {
                assert!(Instant::now() < deadline, "the others never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
            b.reset();
        } else {
            match b.wait_timeout(T) {
                Ok(_) => bump(&c.0),
                Err(BarrierError::Broken) => bump(&c.1),
                Err(e) => panic!("second wait: {e}"),
            }
        }
        b.wait_timeout(T).unwrap();
        bump(&c.2);
    }
}

/// What `reset_f` and `abort_and_reset_f` leave: every round, `N - 1`
/// broken waits and `N` parties through the reset barrier.
fn assert_reset((totals, rounds): ([u32; 3], u32), what: &str) {
    assert_eq!(totals, [0, (N - 1) * rounds, N * rounds], "{what}");
}

#[test]
fn test_reset_threads() {
    assert_reset(on_counts(None, reset_f), "threads");
}

#[test]
fn test_reset_processes() {
    for m in METHODS {
        assert_reset(on_counts(Some(m), reset_f), m);
    }
}

/// `_test_abort_and_reset_f`: a barrier broken by `abort` is usable again
/// after `reset`.
fn abort_and_reset_f(args: (Barrier, Barrier, Counts, u32)) {
    let (b, b2, c, rounds) = args;
    for _ in 0..rounds {
        abort_in_the_middle(&b, &c);
        if b2.wait_timeout(T).unwrap() == N / 2 {
            b.reset();
        }
        b2.wait_timeout(T).unwrap();
        b.wait_timeout(T).unwrap();
        bump(&c.2);
    }
}

#[test]
fn test_abort_and_reset_threads() {
    assert_reset(on_two_barriers(None, abort_and_reset_f), "threads");
}

#[test]
fn test_abort_and_reset_processes() {
    for m in METHODS {
        assert_reset(on_two_barriers(Some(m), abort_and_reset_f), m);
    }
}

/// `_test_timeout_f`: the middle party comes a second late; the others
/// time out after half a second. Every party's second wait fails: one
/// with `Timeout` (or more, when several expire before the first breaks
/// the barrier), the rest with `Broken`.
fn timeout_f(b: Barrier) -> String {
    if b.wait_timeout(T).unwrap() == N / 2 {
        std::thread::sleep(Duration::from_secs(1));
    }
    format!("{:?}", b.wait_timeout(Duration::from_millis(500)))
}

fn assert_all_failed(got: &[String], what: &str) {
    let (broken, timeout) = (
        format!("{:?}", Err::<u32, _>(BarrierError::Broken)),
        format!("{:?}", Err::<u32, _>(BarrierError::Timeout)),
    );
    assert!(
        got.iter().all(|r| *r == broken || *r == timeout),
        "{what}: {got:?}"
    );
    assert!(got.contains(&timeout), "{what}: {got:?}");
}

#[test]
fn test_timeout_threads() {
    let got = in_threads(timeout_f, Barrier::new(N).unwrap());
    assert_all_failed(&got, "threads");
}

#[test]
fn test_timeout_processes() {
    for m in METHODS {
        let got = in_processes(m, timeout_f, Barrier::new(N).unwrap());
        assert_all_failed(&got, m);
    }
}

/// `_test_default_timeout_f`: as `timeout_f`, with the barrier's default
/// timeout instead of an argument.
fn default_timeout_f(b: Barrier) -> String {
    if b.wait_timeout(T).unwrap() == N / 2 {
        std::thread::sleep(Duration::from_secs(1));
    }
    format!("{:?}", b.wait())
}

#[test]
fn test_default_timeout_threads() {
    let b = Barrier::with_timeout(N, None, Some(Duration::from_millis(500))).unwrap();
    let got = in_threads(default_timeout_f, b);
    assert_all_failed(&got, "threads");
}

#[test]
fn test_default_timeout_processes() {
    // The default travels with the barrier into the child.
    for m in METHODS {
        let b = Barrier::with_timeout(N, None, Some(Duration::from_millis(500))).unwrap();
        let got = in_processes(m, default_timeout_f, b);
        assert_all_failed(&got, m);
    }
}

#[test]
fn test_single_thread() {
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait_timeout(T), Ok(0));
    assert_eq!(b.wait_timeout(T), Ok(0));
    assert_eq!(b.n_waiting(), 0);
}

/// `_test_thousand_f`, with a queue standing for the shared send end of a
/// one-way pipe: nobody sends pass `i + 1` before everyone sent pass `i`.
fn thousand_f(args: (Barrier, u32, Queue<u32>, Lock)) {
    let (b, passes, q, lock) = args;
    for i in 0..passes {
        b.wait_timeout(T).unwrap();
        let _g = lock.acquire_timeout(T).unwrap();
        q.put(i).unwrap();
    }
}

#[test]
fn test_thousand_threads() {
    const PASSES: u32 = 1000;
    let q = Queue::new().unwrap();
    let args = (
        Barrier::new(N).unwrap(),
        PASSES,
        q.clone(),
        Lock::new().unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(in_threads(thousand_f, args)));
    for i in 0..PASSES {
        for _ in 0..N {
            assert_eq!(q.get_timeout(T).unwrap(), i);
        }
    }
    rx.recv_timeout(T).expect("the parties finished");
}

#[test]
fn test_thousand() {
    const PASSES: u32 = 1000;
    for (m, ctx) in common::contexts() {
        let b = Barrier::new(N).unwrap();
        let lock = Lock::new().unwrap();
        let q = Queue::new().unwrap();
        let mut ps: Vec<_> = (0..N)
            .map(|_| {
                ctx.process(thousand_f, (b.clone(), PASSES, q.clone(), lock.clone()))
                    .start()
                    .unwrap()
            })
            .collect();
        for i in 0..PASSES {
            for _ in 0..N {
                assert_eq!(q.get_timeout(T).unwrap(), i, "{m}");
            }
        }
        for p in &mut ps {
            p.join_timeout(T).unwrap();
        }
    }
}

/// A party released from its round keeps that result when another party
/// aborts before it wakes (it used to read the abort as its own round's
/// end).
#[test]
fn abort_after_release_does_not_break_the_released_round() {
    let b = Barrier::new(2).unwrap();
    for round in 0..rounds(true) * 5 {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.wait_timeout(T));
            let deadline = Instant::now() + T;
            while b.n_waiting() < 1 {
                assert!(Instant::now() < deadline);
                std::thread::yield_now();
            }
            assert_eq!(b.wait_timeout(T), Ok(1), "round {round}");
            b.abort();
            assert_eq!(waiter.join().unwrap(), Ok(0), "round {round}");
        });
        assert!(b.is_broken());
        b.reset();
    }
}

/// `reset` with parties waiting breaks their round: they get `Broken`,
/// never a pass with fewer parties than the barrier has.
#[test]
fn reset_with_waiters_breaks_their_round() {
    let b = Barrier::new(3).unwrap();
    for round in 0..rounds(true) * 2 {
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2).map(|_| s.spawn(|| b.wait_timeout(T))).collect();
            let deadline = Instant::now() + T;
            while b.n_waiting() < 2 {
                assert!(Instant::now() < deadline);
                std::thread::yield_now();
            }
            b.reset();
            for w in waiters {
                assert_eq!(
                    w.join().unwrap(),
                    Err(BarrierError::Broken),
                    "round {round}"
                );
            }
        });
        assert!(!b.is_broken());
        assert_eq!(b.n_waiting(), 0);
    }
}

fn wait_forever(b: Barrier) {
    let _ = b.wait_timeout(4 * T);
}

/// A party killed while it waits does not wedge the barrier: after a
/// `reset`, the next round starts afresh with live parties only.
#[test]
fn reset_after_a_waiting_party_was_killed() {
    for (m, ctx) in common::contexts() {
        let b = Barrier::new(2).unwrap();
        let mut p = ctx.process(wait_forever, b.clone()).start().unwrap();
        let deadline = Instant::now() + T;
        while b.n_waiting() < 1 {
            assert!(Instant::now() < deadline, "{m}: the child never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        p.kill().unwrap();
        let _ = p.join_timeout(T);
        b.reset();
        assert_eq!(b.n_waiting(), 0, "{m}");
        std::thread::scope(|s| {
            let other = s.spawn(|| b.wait_timeout(T));
            let mine = b.wait_timeout(T);
            let mut got = [mine.unwrap(), other.join().unwrap().unwrap()];
            got.sort_unstable();
            assert_eq!(got, [0, 1], "{m}");
        });
    }
}
