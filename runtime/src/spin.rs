//! Spin, then block: the one policy for a thread that expects an answer
//! within microseconds, with every budget in one place.
//!
//! Sleeping in the kernel and being woken costs a few microseconds on each
//! side, and a peer on another CPU often answers sooner than that. So a
//! waiter that expects an answer soon checks for it, without sleeping, for
//! a short budget of time, and sleeps only after. Between checks it runs
//! `spin_loop` hints, doubling up to 16; then, where the peer may need this
//! very CPU (a pool's workers outnumber the CPUs left to them), it yields
//! between checks instead. Where the peer runs elsewhere, yielding only
//! hurts: on a busy machine `yield_now` can hand the CPU to another task
//! for a whole time slice. Both measured: a pool's `apply_async` p50 went
//! from 7 to 49 µs without the yields (the worker waited for the spinner's
//! CPU), a manager round trip's from 7.7 to 17 µs with them. The budget is
//! time, not a number of rounds, so that it means the same on every
//! machine.
//!
//! Spinning loses when the peer needs the CPU the spinner occupies (more
//! runnable threads than CPUs): the answer cannot come before the budget
//! runs out, and every wait costs the budget on top of the sleep.
//! [`Backoff`] learns that for a waiter that waits often: each spin that
//! ran out doubles the number of waits that skip spinning, each spin that
//! was answered halves it.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long a waiter checks before it blocks, and whether it yields its
/// CPU between checks once the first short pauses are over.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    budget: Duration,
    yields: bool,
}

/// A `get` on an empty queue, for a producer's next item: a check is one
/// load from the ring; the producer may be waiting for this CPU.
pub(crate) const QUEUE_GET: Policy = Policy {
    budget: Duration::from_micros(10),
    yields: true,
};

/// The pool's result thread, for a worker's answer while tasks are out: a
/// check is one `poll` over the workers' channels; a worker may be waiting
/// for this CPU.
pub(crate) const POOL_RESULT: Policy = Policy {
    budget: Duration::from_micros(50),
    yields: true,
};

/// A manager call, for the server's reply: a check is one non-blocking
/// receive; the server is another process with a thread of its own for
/// this connection.
pub(crate) const MANAGER_REPLY: Policy = Policy {
    budget: Duration::from_micros(20),
    yields: false,
};

/// Most `spin_loop` hints between two checks, as a power of two (1, 2 …
/// 16, then 16 each time: well under a microsecond).
const MAX_PAUSE_SHIFT: u32 = 4;

/// Longest run of waits that skip spinning after spins kept running out.
const MAX_SKIP: u32 = 1024;

/// Calls `check` until it returns `Some`, for the policy's budget at the
/// most, backing off between calls; `None` when the budget ran out (the
/// caller then blocks).
pub(crate) fn until<T>(policy: Policy, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut round = 0u32;
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if start.elapsed() >= policy.budget {
            return None;
        }
        if round < MAX_PAUSE_SHIFT || !policy.yields {
            for _ in 0..(1u32 << round.min(MAX_PAUSE_SHIFT)) {
                std::hint::spin_loop();
            }
            round = round.saturating_add(1);
        } else {
            std::thread::yield_now();
        }
    }
}

/// Whether spinning pays for one waiter that waits often (a connection, a
/// result thread): after spins that ran out, the next waits block at once.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Waits left before the next spin.
    skip: Cell<u32>,
    /// Current back-off (0: spin every time).
    penalty: Cell<u32>,
}

impl Backoff {
    /// [`until`], unless recent spins ran out: then `None` at once, and the
    /// caller blocks.
    pub(crate) fn until<T>(&self, policy: Policy, check: impl FnMut() -> Option<T>) -> Option<T> {
        let skip = self.skip.get();
        if skip > 0 {
            self.skip.set(skip - 1);
            return None;
        }
        let got = until(policy, check);
        let p = self.penalty.get();
        let p = if got.is_some() {
            p / 2
        } else {
            (p * 2).clamp(1, MAX_SKIP)
        };
        self.penalty.set(p);
        self.skip.set(p);
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_LONG: Policy = Policy {
        budget: Duration::from_secs(5),
        yields: true,
    };
    const TEST_SHORT: Policy = Policy {
        budget: Duration::from_micros(200),
        yields: false,
    };
    const NO_BUDGET: Policy = Policy {
        budget: Duration::ZERO,
        yields: false,
    };

    #[test]
    fn until_returns_the_first_answer_and_gives_up_after_the_budget() {
        let mut n = 0;
        assert_eq!(
            until(TEST_LONG, || {
                n += 1;
                (n == 20).then_some(n)
            }),
            Some(20)
        );
        let t = Instant::now();
        assert_eq!(until(TEST_SHORT, || None::<()>), None);
        assert!(t.elapsed() >= Duration::from_micros(200));
    }

    #[test]
    fn backoff_skips_spinning_after_failures_and_resumes_when_it_pays() {
        let b = Backoff::default();
        let spins = Cell::new(0u32);
        let miss = || {
            spins.set(spins.get() + 1);
            None::<()>
        };
        for _ in 0..20 {
            b.until(NO_BUDGET, miss);
        }
        // Doubling from 1: the waits between the spins were skipped.
        assert!(spins.get() < 20);
        assert_eq!(b.penalty.get(), MAX_SKIP.min(1 << (spins.get() - 1)));
        let before = spins.get();
        let skipped = (0..b.skip.get())
            .filter(|_| b.until(NO_BUDGET, miss).is_none())
            .count();
        assert_eq!(spins.get(), before, "{skipped} waits skipped spinning");
        for _ in 0..12 {
            assert_eq!(b.until(NO_BUDGET, || Some(())), Some(()));
            while b.skip.get() > 0 {
                b.until(NO_BUDGET, || Some(()));
            }
        }
        assert_eq!(b.penalty.get(), 0);
    }
}
