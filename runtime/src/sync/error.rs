//! Errors of the sync primitives: small, matchable, and giving the guard
//! back where a guard was obtained.

use std::fmt;

/// Lets the holder of a guard from an [`OwnerDied`] mark the protected state
/// consistent again.
pub trait Recoverable: sealed::Sealed {
    /// Clears the owner-died mark: later acquirers get a plain guard.
    #[doc(alias = "pthread_mutex_consistent")]
    fn mark_consistent(&mut self);
}

/// Seals [`Recoverable`]: only this crate's guards implement it.
pub mod sealed {
    /// Implemented by this crate's lock guards only.
    pub trait Sealed {}
}

/// A previous owner died (its process was killed, or its thread ended)
/// while holding the lock; the lock is now held by the caller.
///
/// CPython deadlocks here; this carries the guard instead. Call
/// [`recover`](OwnerDied::recover) once the protected state is repaired (or
/// known good), or [`into_inner`](OwnerDied::into_inner) to use the guard
/// while leaving the lock marked, so that the next acquirer is told too.
#[doc(alias = "EOWNERDEAD")]
pub struct OwnerDied<G> {
    guard: G,
}

impl<G> OwnerDied<G> {
    pub(crate) fn new(guard: G) -> OwnerDied<G> {
        OwnerDied { guard }
    }

    /// The guard, with the lock still marked as inconsistent.
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// The guard, for inspecting the state before deciding.
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

impl<G: Recoverable> OwnerDied<G> {
    /// Marks the lock consistent and returns the guard.
    #[doc(alias = "pthread_mutex_consistent")]
    pub fn recover(mut self) -> G {
        self.guard.mark_consistent();
        self.guard
    }
}

impl<G> fmt::Debug for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerDied { .. }")
    }
}

impl<G> fmt::Display for OwnerDied<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the previous owner of the lock died while holding it")
    }
}

impl<G> std::error::Error for OwnerDied<G> {}

/// Why an acquire of a lock (`Lock`, `RLock`, a `Value`'s or `Array`'s
/// lock, a `Condition`'s lock) did not give a plain guard.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError<G> {
    /// A non-blocking acquire found the lock held.
    #[error("the lock is held")]
    WouldBlock,
    /// A timed acquire ran out of time.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// The lock is acquired, but its previous owner died holding it.
    #[error(transparent)]
    OwnerDied(OwnerDied<G>),
}

impl<G> AcquireError<G> {
    /// The guard when the previous owner died, whether or not the state is
    /// consistent (like `PoisonError::into_inner`); `None` otherwise.
    pub fn into_guard(self) -> Option<G> {
        match self {
            AcquireError::OwnerDied(d) => Some(d.into_inner()),
            _ => None,
        }
    }
}

/// Why a wait on a [`Semaphore`](crate::Semaphore) or
/// [`Event`](crate::Event) returned without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// A non-blocking form would have had to wait.
    #[error("would block")]
    WouldBlock,
    /// A timed wait ran out of time.
    #[error("timed out")]
    Timeout,
}

/// Why a [`Condition`](crate::Condition) wait returned without
/// notification; every variant gives the re-acquired guard back.
#[derive(Debug, thiserror::Error)]
pub enum CondWaitError<G> {
    /// The wait timed out (the lock is held again).
    #[error("timed out waiting on the condition")]
    Timeout(G),
    /// The lock was re-acquired, but its previous owner died holding it.
    #[error(transparent)]
    OwnerDied(OwnerDied<G>),
}

/// A release that Python would refuse with `RuntimeError`/`ValueError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The caller (process and thread) does not hold the lock.
    #[error("cannot release an RLock that this thread does not own")]
    NotOwner,
    /// A `BoundedSemaphore` would go above its initial value.
    #[error("semaphore released too many times")]
    AboveInitial,
}

/// Why [`Barrier::wait`](crate::Barrier::wait) failed (Python's
/// `BrokenBarrierError`, with a timeout told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BarrierError {
    /// This wait timed out; the barrier is now broken for everyone.
    #[error("timed out waiting at the barrier (the barrier is now broken)")]
    Timeout,
    /// The barrier is broken: aborted, timed out elsewhere, or its action
    /// panicked.
    #[error("the barrier is broken")]
    Broken,
}
