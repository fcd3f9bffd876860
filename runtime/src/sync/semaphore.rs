//! `Semaphore` and `BoundedSemaphore`: a futex counter in shared memory.
//!
//! Layout: `0` value (the futex word), `4` sleepers, `8` the bound (0 for
//! none). A releaser adds one, then wakes one sleeper if any sleeps; a
//! sleeper counts itself in before `FUTEX_WAIT` re-checks the value, so no
//! wake-up is lost (both sides use sequentially consistent operations).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{ReleaseError, WaitError};
use super::lock::{de_segment, new_segment, ser_segment};
use crate::shm::sys::{self, Segment};

const LEN: usize = 16;

#[derive(Clone)]
struct RawSem {
    seg: Arc<Segment>,
}

impl RawSem {
    fn new(value: u32, bound: u32) -> crate::Result<RawSem> {
        let seg = new_segment(LEN)?;
        seg.atomic_u32(0).store(value, Ordering::SeqCst);
        seg.atomic_u32(8).store(bound, Ordering::SeqCst);
        Ok(RawSem { seg })
    }
    fn value(&self) -> &AtomicU32 {
        self.seg.atomic_u32(0)
    }
    fn sleepers(&self) -> &AtomicU32 {
        self.seg.atomic_u32(4)
    }
    fn bound(&self) -> u32 {
        self.seg.atomic_u32(8).load(Ordering::Relaxed)
    }

    fn acquire(&self, deadline: Option<Option<Instant>>) -> Result<(), WaitError> {
        let value = self.value();
        loop {
            let v = value.load(Ordering::Relaxed);
            if v > 0 {
                if value
                    .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let remaining = match deadline {
                None => return Err(WaitError::WouldBlock),
                Some(None) => None,
                Some(Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(WaitError::Timeout),
                },
            };
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(value, 0, remaining);
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn release(&self) -> Result<(), ReleaseError> {
        let bound = self.bound();
        let value = self.value();
        if bound == 0 {
            value.fetch_add(1, Ordering::SeqCst);
        } else {
            value
                .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |v| {
                    (v < bound).then_some(v + 1)
                })
                .map_err(|_| ReleaseError::AboveInitial)?;
        }
        if self.sleepers().load(Ordering::SeqCst) > 0 {
            sys::futex_wake(value, 1);
        }
        Ok(())
    }
}

macro_rules! semaphore_common {
    ($ty:ident, $guard:ident, $py:literal) => {
        impl $ty {
            #[doc = concat!("Blocks until a unit is free and takes it (`", $py, ".acquire()`).")]
            ///
            /// # Errors
            /// None in practice; the `Result` matches the other forms.
            pub fn acquire(&self) -> Result<$guard<'_>, WaitError> {
                self.raw.acquire(Some(None)).map(|()| $guard { sem: self })
            }

            /// Takes a unit if one is free (`acquire(block=False)`).
            ///
            /// # Errors
            /// [`WaitError::WouldBlock`] when none is free.
            pub fn try_acquire(&self) -> Result<$guard<'_>, WaitError> {
                self.raw.acquire(None).map(|()| $guard { sem: self })
            }

            /// Waits at most `timeout` for a unit (`acquire(timeout=t)`).
            ///
            /// # Errors
            /// [`WaitError::Timeout`].
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<$guard<'_>, WaitError> {
                self.raw
                    .acquire(Some(Instant::now().checked_add(timeout)))
                    .map(|()| $guard { sem: self })
            }

            /// The current count (`get_value()`).
            pub fn get_value(&self) -> u32 {
                self.raw.value().load(Ordering::Relaxed)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("value", &self.get_value())
                    .finish()
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_segment(&self.raw.seg, s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                Ok($ty {
                    raw: RawSem {
                        seg: de_segment(d, LEN)?,
                    },
                })
            }
        }

        #[doc = concat!("One unit of a [`", stringify!($ty), "`]; given back on drop.")]
        #[must_use = "the unit is released as soon as the guard is dropped"]
        pub struct $guard<'a> {
            sem: &'a $ty,
        }

        impl $guard<'_> {
            /// Keeps the unit taken: nothing is released on drop (release
            /// it later with `release`, as Python code does).
            pub fn forget(self) {
                std::mem::forget(self);
            }
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                let _ = self.sem.raw.release();
            }
        }

        impl fmt::Debug for $guard<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($guard), " { .. }"))
            }
        }
    };
}

/// A counting semaphore shared by threads and processes
/// (Python's `multiprocessing.Semaphore`).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let sem = mproc::Semaphore::new(2)?;
/// let a = sem.acquire().unwrap();
/// let _b = sem.acquire().unwrap();
/// assert_eq!(sem.try_acquire().unwrap_err(), mproc::WaitError::WouldBlock);
/// drop(a);
/// assert!(sem.try_acquire().is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    raw: RawSem,
}

impl Semaphore {
    /// A semaphore with `value` free units (`Semaphore(value)`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn new(value: u32) -> crate::Result<Semaphore> {
        Ok(Semaphore {
            raw: RawSem::new(value, 0)?,
        })
    }

    /// Adds a unit (`sem.release()`), waking one waiter.
    pub fn release(&self) {
        let _ = self.raw.release();
    }
}
semaphore_common!(Semaphore, SemaphoreGuard, "sem");

/// A semaphore that refuses to be released above its initial value
/// (Python's `multiprocessing.BoundedSemaphore`).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let sem = mproc::BoundedSemaphore::new(1)?;
/// assert_eq!(sem.release(), Err(mproc::ReleaseError::AboveInitial));
/// sem.acquire().unwrap().forget();
/// assert_eq!(sem.release(), Ok(()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    raw: RawSem,
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` free units, at most `value` ever.
    ///
    /// # Errors
    /// When the shared page cannot be created; `value` 0 is
    /// [`Error::Unsupported`](crate::Error::Unsupported) (it could never
    /// be acquired).
    pub fn new(value: u32) -> crate::Result<BoundedSemaphore> {
        if value == 0 {
            return Err(crate::Error::Unsupported(
                "a BoundedSemaphore needs a value above 0",
            ));
        }
        Ok(BoundedSemaphore {
            raw: RawSem::new(value, value)?,
        })
    }

    /// Adds a unit (`sem.release()`).
    ///
    /// # Errors
    /// [`ReleaseError::AboveInitial`] when every unit is already free
    /// (Python raises `ValueError`).
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.raw.release()
    }
}
semaphore_common!(BoundedSemaphore, BoundedSemaphoreGuard, "sem");
