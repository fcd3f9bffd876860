//! `Barrier`: parties meet, one runs the action, all go on.
//!
//! State sits behind a robust [`RawMutex`] cell: `64` parties arrived in
//! the current round, `68` the round's number (the futex word waiters sleep
//! on), `72` the barrier's broken flag, `76` parties, `80`..`92` the
//! default timeout, and from `128` a ring of one bit per round, set when
//! that round was broken.
//!
//! What is hard is telling each party how *its own* round ended, whatever
//! happens after. A round ends once, under the lock: released by its last
//! arrival, or broken (abort, reset or a timeout with parties waiting, a
//! panicking action, a holder's death). Its end writes the round's bit,
//! then starts the next round (count 0, number + 1) and wakes the
//! sleepers. A sleeper that sees the number move on reads the bit of the
//! round it arrived in, not the barrier's current state: an `abort` right
//! after a release breaks later waits but not the round already released,
//! and a `reset` with parties waiting breaks their round while the barrier
//! is usable at once by whoever comes next. (CPython gets there with a
//! "resetting" state that new arrivals wait out until every waiter has
//! left; here nobody waits for anybody, so a party killed while it waited
//! cannot wedge the barrier for good: the next `reset` starts afresh.)
//!
//! The ring holds the last [`HISTORY`] rounds' ends. A party that wakes
//! after more rounds than that have ended (only possible with more threads
//! than parties) cannot know its round's end and reports it broken.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::BarrierError;
use super::lock::{SegmentFd, SegmentOf, new_segment};
use super::robust::{CELL, Outcome, RawMutex, Wait};
use crate::shm::sys;

const COUNT: usize = CELL;
const ROUND: usize = CELL + 4;
const BROKEN: usize = CELL + 8;
const PARTIES: usize = CELL + 12;
/// 1 when a default timeout is set, then its nanoseconds, low and high word.
const HAS_TIMEOUT: usize = CELL + 16;
const TIMEOUT_LO: usize = CELL + 20;
const TIMEOUT_HI: usize = CELL + 24;
/// The ring of broken-round bits.
const ENDS: usize = 128;
/// Rounds whose end the ring remembers.
const HISTORY: u32 = 2048;
const LEN: usize = ENDS + HISTORY as usize / 8;

/// A barrier for a fixed number of threads or processes
/// (Python's `multiprocessing.Barrier`).
///
/// The optional action is a `fn()` item: it runs once per round, in the
/// last party to arrive, in whichever process that is.
///
/// Each party learns how its own round ended: a round released and then
/// aborted before a party woke is still released for that party (the abort
/// breaks later waits). [`reset`](Barrier::reset) with parties waiting
/// breaks their round and makes the barrier usable again at once.
///
/// A party killed while it waits still counts for its round (which can
/// then be released one live party short); after killing one,
/// [`reset`](Barrier::reset) the barrier and the next round starts afresh.
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
        Barrier::with_timeout(parties, None, None)
    }

    /// A barrier whose `action` runs once per round, in the last party to
    /// arrive (`Barrier(parties, action)`).
    ///
    /// # Errors
    /// As [`new`](Barrier::new).
    pub fn with_action(parties: u32, action: fn()) -> crate::Result<Barrier> {
        Barrier::with_timeout(parties, Some(action), None)
    }

    /// A barrier with an optional action and a default timeout for
    /// [`wait`](Barrier::wait) (`Barrier(parties, action, timeout)`).
    ///
    /// The default is shared by every clone and every copy sent to another
    /// process; [`wait_timeout`](Barrier::wait_timeout) overrides it.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    /// let b = mproc::Barrier::with_timeout(2, None, Some(Duration::from_millis(20)))?;
    /// assert_eq!(b.timeout(), Some(Duration::from_millis(20)));
    /// // Nobody else comes: the wait times out and breaks the barrier.
    /// assert_eq!(b.wait(), Err(mproc::BarrierError::Timeout));
    /// assert!(b.is_broken());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`new`](Barrier::new).
    #[doc(alias = "Barrier")]
    pub fn with_timeout(
        parties: u32,
        action: Option<fn()>,
        timeout: Option<Duration>,
    ) -> crate::Result<Barrier> {
        if parties == 0 {
            return Err(crate::Error::Unsupported(
                "a Barrier needs at least one party",
            ));
        }
        let seg = new_segment(LEN)?;
        seg.atomic_u32(PARTIES).store(parties, Ordering::SeqCst);
        if let Some(t) = timeout {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            seg.atomic_u32(TIMEOUT_LO)
                .store(nanos as u32, Ordering::SeqCst);
            seg.atomic_u32(TIMEOUT_HI)
                .store((nanos >> 32) as u32, Ordering::SeqCst);
            seg.atomic_u32(HAS_TIMEOUT).store(1, Ordering::SeqCst);
        }
        Ok(Barrier {
            raw: RawMutex::new(seg, 0),
            action,
        })
    }

    fn word(&self, off: usize) -> &AtomicU32 {
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
            // A party died mid-update: the state is off by at most its
            // update, and breaking ends the round whatever it was.
            self.raw.mark_consistent();
            self.break_locked();
        }
        Held {
            barrier: self,
            nested: false,
        }
    }

    /// Ends the current round, `broken` or released: writes its bit,
    /// starts the next round and wakes the sleepers. Called with the lock.
    fn end_round(&self, broken: bool) {
        let round = self.word(ROUND).load(Ordering::SeqCst);
        let (word, bit) = Barrier::bit_of(round);
        if broken {
            self.word(word).fetch_or(bit, Ordering::SeqCst);
        } else {
            self.word(word).fetch_and(!bit, Ordering::SeqCst);
        }
        self.word(COUNT).store(0, Ordering::SeqCst);
        self.word(ROUND)
            .store(round.wrapping_add(1), Ordering::SeqCst);
        sys::futex_wake(self.word(ROUND), u32::MAX);
    }

    /// The ring word and bit of round `round`.
    fn bit_of(round: u32) -> (usize, u32) {
        let slot = round % HISTORY;
        (ENDS + 4 * (slot / 32) as usize, 1 << (slot % 32))
    }

    /// How round `round`, now over, ended for its parties.
    fn ended(&self, round: u32) -> Result<(), BarrierError> {
        let (word, bit) = Barrier::bit_of(round);
        let broken = self.word(word).load(Ordering::SeqCst) & bit != 0;
        // Read after the bit: if the ring had not come round to this
        // round's slot again by now, the bit was still this round's.
        let since = self.word(ROUND).load(Ordering::SeqCst).wrapping_sub(round);
        if broken || since > HISTORY {
            Err(BarrierError::Broken)
        } else {
            Ok(())
        }
    }

    /// Breaks the barrier and the round under way, if parties wait in it.
    /// A round already released stays released for its parties.
    fn break_locked(&self) {
        self.word(BROKEN).store(1, Ordering::SeqCst);
        self.break_round();
    }

    /// Ends the round under way as broken when parties wait in it.
    fn break_round(&self) {
        if self.word(COUNT).load(Ordering::SeqCst) > 0 {
            self.end_round(true);
        }
    }

    /// The number of parties (`parties`).
    pub fn parties(&self) -> u32 {
        self.word(PARTIES).load(Ordering::Relaxed)
    }

    /// The default timeout of [`wait`](Barrier::wait) (`timeout`).
    pub fn timeout(&self) -> Option<Duration> {
        if self.word(HAS_TIMEOUT).load(Ordering::Relaxed) == 0 {
            return None;
        }
        let lo = u64::from(self.word(TIMEOUT_LO).load(Ordering::Relaxed));
        let hi = u64::from(self.word(TIMEOUT_HI).load(Ordering::Relaxed));
        Some(Duration::from_nanos(hi << 32 | lo))
    }

    /// How many parties wait in the round under way (`n_waiting`).
    pub fn n_waiting(&self) -> u32 {
        self.word(COUNT).load(Ordering::SeqCst)
    }

    /// Whether the barrier is broken (`broken`).
    pub fn is_broken(&self) -> bool {
        self.word(BROKEN).load(Ordering::SeqCst) != 0
    }

    /// Breaks the barrier: current and later waits fail with
    /// [`BarrierError::Broken`] until [`reset`](Barrier::reset) (`abort()`).
    /// Parties of a round that was already released are not affected.
    pub fn abort(&self) {
        let _held = self.lock();
        self.break_locked();
    }

    /// Makes the barrier usable again (`reset()`); parties waiting now get
    /// [`BarrierError::Broken`], and the next `wait` starts a new round.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    /// let b = mproc::Barrier::new(2)?;
    /// std::thread::scope(|s| {
    ///     let waiter = s.spawn(|| b.wait_timeout(Duration::from_secs(20)));
    ///     while b.n_waiting() == 0 {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    ///     b.reset();
    ///     assert_eq!(waiter.join().unwrap(), Err(mproc::BarrierError::Broken));
    /// });
    /// assert!(!b.is_broken());
    /// # Ok(()) }
    /// ```
    pub fn reset(&self) {
        let _held = self.lock();
        self.word(BROKEN).store(0, Ordering::SeqCst);
        self.break_round();
    }

    /// Waits for all parties (`wait()`), for at most the default timeout
    /// when the barrier has one; returns this party's arrival index,
    /// `0..parties` (the last to arrive gets `parties - 1`).
    ///
    /// # Errors
    /// [`BarrierError::Broken`] when the barrier is or becomes broken, or
    /// is reset while this party waits; [`BarrierError::Timeout`] as
    /// [`wait_timeout`](Barrier::wait_timeout) when the default timeout
    /// passes.
    ///
    /// # Panics
    /// When the action panics (the barrier is broken first).
    pub fn wait(&self) -> Result<u32, BarrierError> {
        self.wait_until(self.timeout().and_then(|t| Instant::now().checked_add(t)))
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
        // A timeout too long to represent is no deadline at all.
        self.wait_until(Instant::now().checked_add(timeout))
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
        let round = self.word(ROUND).load(Ordering::SeqCst);
        let index = self.word(COUNT).fetch_add(1, Ordering::SeqCst);
        if index.saturating_add(1) >= self.parties() {
            if let Some(action) = self.action
                && let Err(panic) = std::panic::catch_unwind(action)
            {
                self.break_locked();
                drop(held);
                std::panic::resume_unwind(panic);
            }
            if self.word(ROUND).load(Ordering::SeqCst) == round {
                self.end_round(false);
            }
            // Else the action aborted or reset the barrier, which ended
            // this round broken.
            return self.ended(round).map(|()| index);
        }
        drop(held);
        loop {
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        let _held = self.lock();
                        if self.word(ROUND).load(Ordering::SeqCst) != round {
                            return self.ended(round).map(|()| index);
                        }
                        self.break_locked();
                        return Err(BarrierError::Timeout);
                    }
                },
            };
            if self.word(ROUND).load(Ordering::SeqCst) != round {
                return self.ended(round).map(|()| index);
            }
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
        let action = self.action.map(|f| forkserver::FnRef::new(f).offset());
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&SegmentFd(self.raw.segment()))?;
        t.serialize_element(&action)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Barrier, D::Error> {
        let (SegmentOf(seg), action) = <(SegmentOf<LEN>, Option<i64>)>::deserialize(d)?;
        Ok(Barrier {
            raw: RawMutex::new(seg, 0),
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
    fn a_round_end_is_remembered_for_history_rounds_then_reported_broken() {
        let b = Barrier::new(2).unwrap();
        // Across the wrap of the round number too (HISTORY divides 2^32).
        for start in [0, u32::MAX - 3] {
            b.word(ROUND).store(start, Ordering::SeqCst);
            let _held = b.lock();
            b.end_round(false);
            b.end_round(true);
            assert_eq!(b.ended(start), Ok(()));
            assert_eq!(b.ended(start.wrapping_add(1)), Err(BarrierError::Broken));
            // The ring comes round to `start`'s slot again only when round
            // start + HISTORY ends.
            b.word(ROUND)
                .store(start.wrapping_add(HISTORY), Ordering::SeqCst);
            assert_eq!(b.ended(start), Ok(()));
            b.word(ROUND)
                .store(start.wrapping_add(HISTORY + 1), Ordering::SeqCst);
            assert_eq!(b.ended(start), Err(BarrierError::Broken));
        }
    }

    #[test]
    fn a_huge_default_timeout_is_no_deadline() {
        let b = Barrier::with_timeout(1, None, Some(Duration::MAX)).unwrap();
        assert_eq!(b.timeout(), Some(Duration::from_nanos(u64::MAX)));
        assert_eq!(b.wait(), Ok(0));
        assert_eq!(b.wait_timeout(Duration::MAX), Ok(0));
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
