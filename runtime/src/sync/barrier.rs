//! `Barrier`: parties meet, one runs the action, all go on.
//!
//! State sits behind a robust [`RawMutex`] cell: `64` arrived count, `68`
//! round counter (the futex word waiters sleep on), `72` broken flag, `76`
//! parties. The last arrival runs the action, resets the count, bumps the
//! round and wakes everyone. Breaking (abort, a timeout, a panicking action,
//! a holder's death) sets the flag and bumps the round too, so sleepers wake
//! and see it.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::BarrierError;
use super::lock::{de_segment, new_segment, ser_segment};
use super::robust::{CELL, Outcome, RawMutex, Wait};
use crate::shm::sys;

const COUNT: usize = CELL;
const ROUND: usize = CELL + 4;
const BROKEN: usize = CELL + 8;
const PARTIES: usize = CELL + 12;
const LEN: usize = CELL + 16;

/// A barrier for a fixed number of threads or processes
/// (Python's `multiprocessing.Barrier`).
///
/// The optional action is a `fn()` item: it runs once per round, in the
/// last party to arrive, in whichever process that is.
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// use std::time::Duration;
/// let b = mproc::Barrier::new(2)?;
/// std::thread::scope(|s| {
///     s.spawn(|| b.wait_timeout(Duration::from_secs(20)).unwrap());
///     b.wait_timeout(Duration::from_secs(20)).unwrap();
/// });
/// b.abort();
/// assert_eq!(b.wait(), Err(mproc::BarrierError::Broken));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    raw: RawMutex,
    action: Option<fn()>,
}

/// The barrier's lock, held; `nested` when this thread held it already
/// (a call from inside the action), which leaves the release to the outer
/// holder.
struct Held<'a> {
    barrier: &'a Barrier,
    nested: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.nested {
            self.barrier.raw.release();
        }
    }
}

impl Barrier {
    /// A barrier for `parties` parties (`Barrier(parties)`).
    ///
    /// # Errors
    /// When the shared page cannot be created; `parties` 0 is
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    pub fn new(parties: u32) -> crate::Result<Barrier> {
        Barrier::build(parties, None)
    }

    /// A barrier whose `action` runs once per round, in the last party to
    /// arrive (`Barrier(parties, action)`).
    ///
    /// # Errors
    /// As [`new`](Barrier::new).
    pub fn with_action(parties: u32, action: fn()) -> crate::Result<Barrier> {
        Barrier::build(parties, Some(action))
    }

    fn build(parties: u32, action: Option<fn()>) -> crate::Result<Barrier> {
        if parties == 0 {
            return Err(crate::Error::Unsupported(
                "a Barrier needs at least one party",
            ));
        }
        let seg = new_segment(LEN)?;
        seg.atomic_u32(PARTIES).store(parties, Ordering::SeqCst);
        Ok(Barrier {
            raw: RawMutex::new(seg, 0),
            action,
        })
    }

    fn word(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        self.raw.segment().atomic_u32(off)
    }

    fn lock(&self) -> Held<'_> {
        // The action runs with the lock held: a call from inside it works
        // on the state as it is, where a second acquire would deadlock (the
        // lock of Python's `multiprocessing.Barrier` is re-entrant too).
        if self.raw.is_owned_by_me() {
            return Held {
                barrier: self,
                nested: true,
            };
        }
        if self.raw.acquire(Wait::Until(None)) == Outcome::OwnerDied {
            // A party died mid-update: the state is unknown, so break.
            self.raw.mark_consistent();
            self.break_locked();
        }
        Held {
            barrier: self,
            nested: false,
        }
    }

    fn break_locked(&self) {
        self.word(BROKEN).store(1, Ordering::SeqCst);
        self.word(COUNT).store(0, Ordering::SeqCst);
        self.word(ROUND).fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.word(ROUND), u32::MAX);
    }

    /// The number of parties (`parties`).
    pub fn parties(&self) -> u32 {
        self.word(PARTIES).load(Ordering::Relaxed)
    }

    /// How many parties wait now (`n_waiting`).
    pub fn n_waiting(&self) -> u32 {
        self.word(COUNT).load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken (`broken`).
    pub fn is_broken(&self) -> bool {
        self.word(BROKEN).load(Ordering::SeqCst) != 0
    }

    /// Breaks the barrier: current and later waits fail with
    /// [`BarrierError::Broken`] until [`reset`](Barrier::reset) (`abort()`).
    pub fn abort(&self) {
        let _held = self.lock();
        self.break_locked();
    }

    /// Makes a broken barrier usable again (`reset()`); parties waiting now
    /// get [`BarrierError::Broken`].
    pub fn reset(&self) {
        let _held = self.lock();
        if self.word(COUNT).load(Ordering::SeqCst) > 0 {
            self.break_locked();
        }
        self.word(BROKEN).store(0, Ordering::SeqCst);
    }

    /// Waits for all parties (`wait()`); returns this party's arrival
    /// index, `0..parties` (the last to arrive gets `parties - 1`).
    ///
    /// # Errors
    /// [`BarrierError::Broken`] when the barrier is or becomes broken.
    ///
    /// # Panics
    /// When the action panics (the barrier is broken first).
    pub fn wait(&self) -> Result<u32, BarrierError> {
        self.wait_until(None)
    }

    /// As [`wait`](Barrier::wait), for at most `timeout` (`wait(timeout)`).
    ///
    /// # Errors
    /// [`BarrierError::Timeout`] for the party that timed out (the barrier
    /// is then broken for the others: [`BarrierError::Broken`]).
    ///
    /// # Panics
    /// When the action panics.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, BarrierError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32, BarrierError> {
        let held = self.lock();
        if held.nested {
            // A wait from inside the action: the round it waits for cannot
            // end while the action runs, so break it instead of hanging.
            self.break_locked();
            return Err(BarrierError::Broken);
        }
        if self.is_broken() {
            return Err(BarrierError::Broken);
        }
        let index = self.word(COUNT).fetch_add(1, Ordering::SeqCst);
        if index + 1 >= self.parties() {
            if let Some(action) = self.action
                && let Err(panic) = std::panic::catch_unwind(action)
            {
                self.break_locked();
                drop(held);
                std::panic::resume_unwind(panic);
            }
            if self.is_broken() {
                // The action aborted the barrier (and woke the others).
                return Err(BarrierError::Broken);
            }
            self.word(COUNT).store(0, Ordering::SeqCst);
            self.word(ROUND).fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(self.word(ROUND), u32::MAX);
            return Ok(index);
        }
        let round = self.word(ROUND).load(Ordering::SeqCst);
        drop(held);
        loop {
            let now_round = self.word(ROUND).load(Ordering::SeqCst);
            if now_round != round {
                return if self.is_broken() {
                    Err(BarrierError::Broken)
                } else {
                    Ok(index)
                };
            }
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        let _held = self.lock();
                        if self.word(ROUND).load(Ordering::SeqCst) != round {
                            continue;
                        }
                        self.break_locked();
                        return Err(BarrierError::Timeout);
                    }
                },
            };
            sys::futex_wait(self.word(ROUND), round, remaining);
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Seg<'a>(&'a Barrier);
        impl Serialize for Seg<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_segment(self.0.raw.segment(), s)
            }
        }
        let action = self.action.map(|f| forkserver::FnRef::new(f).offset());
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Seg(self))?;
        t.serialize_element(&action)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Barrier, D::Error> {
        struct Seg(RawMutex);
        impl<'de> Deserialize<'de> for Seg {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Seg, D::Error> {
                Ok(Seg(RawMutex::new(de_segment(d, LEN)?, 0)))
            }
        }
        let (Seg(raw), action) = <(Seg, Option<i64>)>::deserialize(d)?;
        Ok(Barrier {
            raw,
            action: action.map(sys::resolve_fn),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    const T: Duration = Duration::from_secs(20);

    static ABORTING: OnceLock<Barrier> = OnceLock::new();
    static WAITING: OnceLock<Barrier> = OnceLock::new();

    fn abort_it() {
        if let Some(b) = ABORTING.get() {
            b.abort();
        }
    }

    fn wait_on_it() {
        if let Some(b) = WAITING.get() {
            assert_eq!(b.wait_timeout(T), Err(BarrierError::Broken));
        }
    }

    /// Both parties' results when each waits on `b`, from two threads
    /// watched by a timeout (a deadlock fails the test, it does not hang it).
    fn round(b: &'static Barrier) -> [Result<u32, BarrierError>; 2] {
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send(b.wait_timeout(T)));
        }
        let mut got = [0, 1].map(|_| rx.recv_timeout(2 * T).expect("a party hung"));
        got.sort_by_key(|r| format!("{r:?}"));
        got
    }

    /// Both parties of a round get `Broken`, and the barrier stays broken.
    fn assert_round_breaks(b: &'static Barrier) {
        assert_eq!(
            round(b),
            [Err(BarrierError::Broken), Err(BarrierError::Broken)]
        );
        assert!(b.is_broken());
    }

    #[test]
    fn an_action_that_aborts_breaks_the_round_instead_of_hanging() {
        let b = ABORTING.get_or_init(|| Barrier::with_action(2, abort_it).unwrap());
        assert_round_breaks(b);
        assert_eq!(b.n_waiting(), 0);
    }

    #[test]
    fn an_action_that_waits_on_its_barrier_breaks_it_instead_of_hanging() {
        let b = WAITING.get_or_init(|| Barrier::with_action(2, wait_on_it).unwrap());
        assert_round_breaks(b);
        // Reset, it is usable again (its action still breaks each round).
        b.reset();
        assert!(!b.is_broken());
    }
}
