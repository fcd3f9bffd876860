//! `Event`: a flag word in shared memory with futex wake-ups.
//!
//! Layout: `0` flag (the futex word), `4` sleepers. `set` stores the flag
//! and wakes every sleeper if one counted itself in; sleepers count in
//! before `FUTEX_WAIT` re-checks the flag, so no wake-up is lost.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::WaitError;
use super::lock::{de_segment, new_segment, ser_segment};
use crate::shm::sys::{self, Segment};

const LEN: usize = 8;

/// A flag that processes and threads wait on
/// (Python's `multiprocessing.Event`).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// use std::time::Duration;
/// fn setter(ev: mproc::Event) {
///     ev.set();
/// }
/// let ev = mproc::Event::new()?;
/// assert_eq!(ev.wait_timeout(Duration::from_millis(1)), Err(mproc::WaitError::Timeout));
/// let mut p = mproc::get_context("spawn")?.process(setter, ev.clone()).start()?;
/// ev.wait_timeout(Duration::from_secs(20)).unwrap();
/// assert!(ev.is_set());
/// p.join_timeout(Duration::from_secs(20))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Event {
    seg: Arc<Segment>,
}

impl Event {
    /// A new, clear event (`Event()`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn new() -> crate::Result<Event> {
        Ok(Event {
            seg: new_segment(LEN)?,
        })
    }

    /// Whether the flag is set (`is_set()`): the non-blocking form of `wait`.
    pub fn is_set(&self) -> bool {
        self.seg.atomic_u32(0).load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter (`set()`).
    pub fn set(&self) {
        let flag = self.seg.atomic_u32(0);
        flag.store(1, Ordering::SeqCst);
        if self.seg.atomic_u32(4).load(Ordering::SeqCst) > 0 {
            sys::futex_wake(flag, u32::MAX);
        }
    }

    /// Clears the flag (`clear()`).
    pub fn clear(&self) {
        self.seg.atomic_u32(0).store(0, Ordering::SeqCst);
    }

    /// Blocks until the flag is set (`wait()`).
    pub fn wait(&self) {
        let _ = self.wait_until(None);
    }

    /// Blocks at most `timeout` for the flag (`wait(timeout)`).
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when the flag is still clear at the end
    /// (Python returns `False`).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), WaitError> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        let flag = self.seg.atomic_u32(0);
        let sleepers = self.seg.atomic_u32(4);
        loop {
            if flag.load(Ordering::Acquire) != 0 {
                return Ok(());
            }
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => return Err(WaitError::Timeout),
                },
            };
            sleepers.fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(flag, 0, remaining);
            sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_segment(&self.seg, s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        Ok(Event {
            seg: de_segment(d, LEN)?,
        })
    }
}
