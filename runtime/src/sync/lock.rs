//! `Lock` and `RLock`: robust mutexes in shared memory (see `robust`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{AcquireError, OwnerDied, Recoverable, ReleaseError, sealed};
use super::robust::{CELL, Outcome, RawMutex, Wait};
use crate::shm::sys::Segment;

pub(crate) fn new_segment(len: usize) -> crate::Result<Arc<Segment>> {
    Ok(Arc::new(Segment::new(len)?))
}

pub(crate) fn ser_segment<S: Serializer>(seg: &Segment, s: S) -> Result<S::Ok, S::Error> {
    use std::os::fd::AsFd;
    crate::fd::serialize_borrowed(seg.as_fd(), s)
}

/// A segment as an element of a serialized tuple: its fd, sent as
/// [`ser_segment`] sends it.
pub(crate) struct SegmentFd<'a>(pub(crate) &'a Segment);

impl Serialize for SegmentFd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_segment(self.0, s)
    }
}

pub(crate) fn de_segment<'de, D: Deserializer<'de>>(
    d: D,
    min_len: usize,
) -> Result<Arc<Segment>, D::Error> {
    use serde::de::Error as _;
    let fd = crate::fd::deserialize(d)?;
    Segment::from_fd(fd, min_len)
        .map(Arc::new)
        .map_err(D::Error::custom)
}

/// A received segment of at least `MIN` bytes, as an element of a
/// deserialized tuple (see [`de_segment`]).
pub(crate) struct SegmentOf<const MIN: usize>(pub(crate) Arc<Segment>);

impl<'de, const MIN: usize> Deserialize<'de> for SegmentOf<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_segment(d, MIN).map(SegmentOf)
    }
}

/// Maps an acquire outcome to the guard or error.
pub(crate) fn outcome<G>(o: Outcome, guard: impl FnOnce() -> G) -> Result<G, AcquireError<G>> {
    match o {
        Outcome::Acquired => Ok(guard()),
        Outcome::OwnerDied => Err(AcquireError::OwnerDied(OwnerDied::new(guard()))),
        Outcome::WouldBlock => Err(AcquireError::WouldBlock),
        Outcome::TimedOut => Err(AcquireError::Timeout),
    }
}

/// A mutual-exclusion lock shared by threads and processes
/// (Python's `multiprocessing.Lock`).
///
/// It lives in a `memfd` page; clones and copies sent to children (as
/// process arguments or through a `Queue`) are the same lock. Acquiring
/// gives a [`LockGuard`] that releases on drop. When a holder dies (killed,
/// or its thread ended) the next acquirer gets [`AcquireError::OwnerDied`]
/// carrying the guard instead of hanging forever.
///
/// Uncontended acquire + release costs a few nanoseconds (no system call).
/// Like Python's `Lock` it is not recursive: acquiring twice from one thread
/// blocks (use [`RLock`]).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// use std::time::Duration;
/// let lock = mproc::Lock::new()?;
/// fn hold(lock: mproc::Lock) -> bool {
///     lock.try_acquire().is_ok()
/// }
/// let guard = lock.acquire().unwrap();
/// let mut p = mproc::get_context("forkserver")?.process(hold, lock.clone()).start()?;
/// assert!(!p.join_timeout(Duration::from_secs(20))?); // held here, busy there
/// drop(guard);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lock {
    raw: RawMutex,
}

impl Lock {
    /// A new unlocked lock (`multiprocessing.Lock()`).
    ///
    /// # Errors
    /// When the shared page cannot be created (`memfd_create`, `mmap`).
    pub fn new() -> crate::Result<Lock> {
        Ok(Lock {
            raw: RawMutex::new(new_segment(CELL)?, 0),
        })
    }

    /// Blocks until the lock is held (`lock.acquire()`).
    ///
    /// # Errors
    /// [`AcquireError::OwnerDied`] (with the guard) when the previous owner
    /// died holding it; never `WouldBlock` or `Timeout`.
    #[doc(alias = "lock")]
    #[inline]
    pub fn acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        outcome(self.raw.acquire(Wait::Until(None)), || self.guard())
    }

    /// Takes the lock if it is free (`lock.acquire(block=False)`).
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`] when held; `OwnerDied` as [`acquire`](Lock::acquire).
    #[doc(alias = "try_lock")]
    #[inline]
    pub fn try_acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        outcome(self.raw.acquire(Wait::Try), || self.guard())
    }

    /// Waits at most `timeout` for the lock (`lock.acquire(timeout=t)`).
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied` as [`acquire`](Lock::acquire).
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        outcome(self.raw.acquire(Wait::timeout(Some(timeout))), || {
            self.guard()
        })
    }

    fn guard(&self) -> LockGuard<'_> {
        LockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Whether the lock is held now, by anyone (`lock.locked()`, Python
    /// 3.14). A snapshot: another thread or process may take or release
    /// it the moment after.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// assert!(!lock.locked());
    /// let guard = lock.acquire().unwrap();
    /// assert!(lock.locked());
    /// drop(guard);
    /// assert!(!lock.locked());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn locked(&self) -> bool {
        self.raw.owner() != 0
    }

    pub(crate) fn same_as(&self, other: &Lock) -> bool {
        Arc::ptr_eq(self.raw.segment(), other.raw.segment())
    }

    /// Whether `other` is this very lock (Python's `lock == other`): a
    /// clone, a copy received from another process, or the lock of a
    /// [`Value`](crate::Value) or [`Array`](crate::Array) built on it.
    pub fn is_same(&self, other: &Lock) -> bool {
        use std::os::fd::{AsFd, AsRawFd};
        if self.same_as(other) {
            return true;
        }
        let id = |l: &Lock| crate::sys::fd_identity(l.raw.segment().as_fd().as_raw_fd());
        matches!((id(self), id(other)), (Some(a), Some(b)) if a == b)
    }

    /// The lock's cell.
    pub(crate) fn raw(&self) -> &RawMutex {
        &self.raw
    }

    /// A `Lock` handle on a cell at offset 0 of a segment.
    pub(crate) fn from_raw(raw: RawMutex) -> Lock {
        Lock { raw }
    }
}

/// `Debug` (the owner) and serde (the segment's fd) of the lock types, each
/// a `raw: RawMutex` at offset 0 of its own segment.
macro_rules! lock_impls {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("owner_tid", &self.raw.owner())
                    .finish()
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_segment(self.raw.segment(), s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                Ok($t {
                    raw: RawMutex::new(de_segment(d, CELL)?, 0),
                })
            }
        }
    )*};
}
lock_impls!(Lock, RLock);

/// Holds a [`Lock`]; releases it on drop (`lock.release()`).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    pub(crate) lock: &'a Lock,
    // Released by the thread that took it (the robust list is per thread).
    _not_send: PhantomData<*const ()>,
}

impl LockGuard<'_> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl sealed::Sealed for LockGuard<'_> {}
impl Recoverable for LockGuard<'_> {
    fn mark_consistent(&mut self) {
        self.lock.raw.mark_consistent();
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.raw.release();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard { .. }")
    }
}

/// A re-entrant lock (Python's `multiprocessing.RLock`): the owning thread
/// of the owning process may acquire it again; it is free once released as
/// many times.
///
/// Owner death is reported as for [`Lock`].
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let r = mproc::RLock::new()?;
/// let outer = r.acquire().unwrap();
/// let inner = r.acquire().unwrap(); // the same thread may nest
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         assert!(r.try_acquire().is_err());
///         assert_eq!(r.release(), Err(mproc::ReleaseError::NotOwner));
///     });
/// });
/// drop(inner);
/// drop(outer);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RLock {
    raw: RawMutex,
}

impl RLock {
    /// A new unlocked re-entrant lock (`multiprocessing.RLock()`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn new() -> crate::Result<RLock> {
        Ok(RLock {
            raw: RawMutex::new(new_segment(CELL)?, 0),
        })
    }

    fn take(&self, wait: Wait) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        if self.raw.is_owned_by_me() {
            let c = self.raw.count();
            c.store(
                c.load(std::sync::atomic::Ordering::Relaxed) + 1,
                std::sync::atomic::Ordering::Relaxed,
            );
            return Ok(self.guard());
        }
        let o = self.raw.acquire(wait);
        if matches!(o, Outcome::Acquired | Outcome::OwnerDied) {
            self.raw
                .count()
                .store(1, std::sync::atomic::Ordering::Relaxed);
        }
        outcome(o, || self.guard())
    }

    /// Blocks until held by this thread (`rlock.acquire()`).
    ///
    /// # Errors
    /// [`AcquireError::OwnerDied`] when the previous owner died holding it.
    #[inline]
    pub fn acquire(&self) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.take(Wait::Until(None))
    }

    /// Takes the lock if free or already ours (`acquire(block=False)`).
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`] when another thread holds it; `OwnerDied`.
    pub fn try_acquire(&self) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.take(Wait::Try)
    }

    /// Waits at most `timeout` (`acquire(timeout=t)`).
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied`.
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.take(Wait::timeout(Some(timeout)))
    }

    /// Releases one level held by this thread (`rlock.release()`), for a
    /// guard given up with [`std::mem::forget`] (Python-style pairing).
    ///
    /// # Errors
    /// [`ReleaseError::NotOwner`] when this thread of this process does not
    /// hold the lock (Python raises `RuntimeError`).
    pub fn release(&self) -> Result<(), ReleaseError> {
        if !self.raw.is_owned_by_me() {
            return Err(ReleaseError::NotOwner);
        }
        self.release_one();
        Ok(())
    }

    /// Whether the lock is held now, by any thread of any process
    /// (`rlock.locked()`, Python 3.14). A snapshot, as
    /// [`Lock::locked`].
    ///
    /// # Examples
    /// ```
    /// let r = mproc::RLock::new()?;
    /// assert!(!r.locked());
    /// let outer = r.acquire().unwrap();
    /// let inner = r.acquire().unwrap();
    /// drop(inner);
    /// assert!(r.locked()); // one level still held
    /// drop(outer);
    /// assert!(!r.locked());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn locked(&self) -> bool {
        self.raw.owner() != 0
    }

    fn release_one(&self) {
        let c = self.raw.count();
        let n = c.load(std::sync::atomic::Ordering::Relaxed);
        if n > 1 {
            c.store(n - 1, std::sync::atomic::Ordering::Relaxed);
        } else {
            c.store(0, std::sync::atomic::Ordering::Relaxed);
            self.raw.release();
        }
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }
}

/// One level of an [`RLock`]; releases that level on drop.
#[must_use = "the level is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl sealed::Sealed for RLockGuard<'_> {}
impl Recoverable for RLockGuard<'_> {
    fn mark_consistent(&mut self) {
        self.lock.raw.mark_consistent();
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.release_one();
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RLockGuard { .. }")
    }
}
