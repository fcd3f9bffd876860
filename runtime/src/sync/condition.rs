//! `Condition`: a sequence-counter condition variable on a shared [`Lock`].
//!
//! A waiter reads the counter while it holds the lock, releases the lock and
//! sleeps on the counter with `FUTEX_WAIT`; `notify` bumps the counter and
//! wakes. A notify that lands between the read and the sleep changes the
//! counter, so `FUTEX_WAIT` returns at once: no wake-up is lost. Waiters may
//! wake spuriously, which is why [`Condition::wait_for`] re-checks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{AcquireError, CondWaitError};
use super::lock::{Lock, LockGuard, SegmentFd, SegmentOf, new_segment};
use crate::shm::sys::{self, Segment};

const LEN: usize = 4;

/// A condition variable for threads and processes, on an associated
/// [`Lock`] (Python's `multiprocessing.Condition`).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// use std::time::Duration;
/// let cond = mproc::Condition::new()?;
/// let ready = mproc::RawValue::new(0u32)?;
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let _g = cond.acquire().unwrap();
///         ready.set(1);
///         cond.notify_all();
///     });
///     let g = cond.acquire().unwrap();
///     let g = cond
///         .wait_for(g, || ready.get() == 1, Some(Duration::from_secs(20)))
///         .unwrap();
///     drop(g);
/// });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Condition {
    lock: Lock,
    seq: Arc<Segment>,
}

impl Condition {
    /// A condition with a new lock of its own (`Condition()`).
    ///
    /// # Errors
    /// When the shared pages cannot be created.
    pub fn new() -> crate::Result<Condition> {
        Condition::with_lock(Lock::new()?)
    }

    /// A condition on an existing lock (`Condition(lock)`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn with_lock(lock: Lock) -> crate::Result<Condition> {
        Ok(Condition {
            lock,
            seq: new_segment(LEN)?,
        })
    }

    /// The associated lock.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Acquires the associated lock (`with cond:`).
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        self.lock.acquire()
    }

    /// Releases the lock, sleeps until notified, re-acquires (`wait()`).
    ///
    /// # Errors
    /// [`CondWaitError::OwnerDied`] when, while we slept, a holder of the
    /// lock died (the guard is inside). Never `Timeout`.
    ///
    /// # Panics
    /// When `guard` holds another lock than this condition's.
    pub fn wait<'a>(
        &self,
        guard: LockGuard<'a>,
    ) -> Result<LockGuard<'a>, CondWaitError<LockGuard<'a>>> {
        self.wait_until(guard, None)
    }

    /// As [`wait`](Condition::wait), for at most `timeout` (`wait(timeout)`).
    ///
    /// # Errors
    /// [`CondWaitError::Timeout`] (with the re-acquired guard) when not
    /// notified in time; `OwnerDied` as for `wait`.
    ///
    /// # Panics
    /// When `guard` holds another lock than this condition's.
    pub fn wait_timeout<'a>(
        &self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<LockGuard<'a>, CondWaitError<LockGuard<'a>>> {
        self.wait_until(guard, Instant::now().checked_add(timeout))
    }

    /// Waits until `predicate` returns true, checked with the lock held
    /// (`wait_for(predicate, timeout)`).
    ///
    /// # Errors
    /// [`CondWaitError::Timeout`] when the predicate is still false at the
    /// deadline; `OwnerDied` as for `wait`.
    ///
    /// # Panics
    /// When `guard` holds another lock than this condition's.
    pub fn wait_for<'a>(
        &self,
        mut guard: LockGuard<'a>,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<LockGuard<'a>, CondWaitError<LockGuard<'a>>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if predicate() {
                return Ok(guard);
            }
            guard = match self.wait_until(guard, deadline) {
                Ok(g) => g,
                Err(CondWaitError::Timeout(g)) => {
                    return if predicate() {
                        Ok(g)
                    } else {
                        Err(CondWaitError::Timeout(g))
                    };
                }
                Err(e) => return Err(e),
            };
        }
    }

    fn wait_until<'a>(
        &self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> Result<LockGuard<'a>, CondWaitError<LockGuard<'a>>> {
        assert!(
            guard.lock.same_as(&self.lock),
            "Condition::wait with a guard of another lock"
        );
        let lock: &'a Lock = guard.lock;
        let seq = self.seq.atomic_u32(0);
        let seen = seq.load(Ordering::SeqCst);
        drop(guard);
        let woke = match deadline {
            None => {
                sys::futex_wait_exact(seq, seen, None);
                true
            }
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(r) if !r.is_zero() => sys::futex_wait_exact(seq, seen, Some(r)),
                _ => false,
            },
        };
        let timed_out = !woke && seq.load(Ordering::SeqCst) == seen;
        match lock.acquire() {
            Ok(g) if timed_out => Err(CondWaitError::Timeout(g)),
            Ok(g) => Ok(g),
            Err(AcquireError::OwnerDied(d)) => Err(CondWaitError::OwnerDied(d)),
            Err(_) => unreachable!("a blocking acquire neither times out nor would block"),
        }
    }

    /// Wakes up to `n` waiters (`notify(n)`). Python requires the lock to
    /// be held; here it is recommended (so the waiter sees the new state)
    /// but not required.
    pub fn notify(&self, n: u32) {
        let seq = self.seq.atomic_u32(0);
        seq.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(seq, n);
    }

    /// Wakes every waiter (`notify_all()`).
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.lock)?;
        t.serialize_element(&SegmentFd(&self.seq))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Condition, D::Error> {
        let (lock, SegmentOf(seq)) = <(Lock, SegmentOf<LEN>)>::deserialize(d)?;
        Ok(Condition { lock, seq })
    }
}
