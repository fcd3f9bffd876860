//! Locks, semaphores, conditions, events and barriers across processes.
//!
//! Every primitive is a few words in a `memfd` page (see [`crate::shm`]),
//! so the same object works between threads of one process and between
//! processes at once, under every start method: clones share the page, and
//! a copy sent to a child maps it again there. Blocking waits are futex
//! waits on those words. The locks are robust: a holder that dies is
//! detected by the kernel (robust futex list) and reported to the next
//! acquirer as [`OwnerDied`], carrying the guard.
//!
//! Every blocking call has a non-blocking `try_` form and a `_timeout`
//! form whose expiry is a distinct error variant; guards release on drop.

mod barrier;
mod condition;
mod error;
mod event;
mod lock;
pub(crate) mod robust;
mod semaphore;

pub use barrier::Barrier;
pub use condition::Condition;
#[doc(hidden)]
pub use error::sealed as error_sealed;
pub use error::{
    AcquireError, BarrierError, CondWaitError, OwnerDied, Recoverable, ReleaseError, WaitError,
};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub(crate) use lock::{SegmentFd, SegmentOf, de_segment, new_segment, outcome, ser_segment};
pub use semaphore::{BoundedSemaphore, BoundedSemaphoreGuard, Semaphore, SemaphoreGuard};
