//! A futex mutex in shared memory that survives its owner's death.
//!
//! The lock word holds the owner's thread id (`gettid`, unique across
//! processes), plus the kernel's `FUTEX_WAITERS` and `FUTEX_OWNER_DIED`
//! bits. While a thread holds the lock, the lock's node is linked into that
//! thread's *robust list*, the list the kernel walks when a thread exits: for
//! each node whose word still names the dying thread it sets
//! `FUTEX_OWNER_DIED`, clears the id and wakes a waiter. The next acquirer
//! sees the bit and reports [`Outcome::OwnerDied`]; the lock stays marked
//! (`poisoned`) until an owner marks it consistent.
//!
//! What is hard: a thread has one robust list, and glibc already registered
//! it for its own robust `pthread_mutex_t`s. So the node lays itself out
//! exactly like glibc's (`__list.__prev` at the entry minus 8, `__list.__next`
//! at the entry, the word at `entry + futex_offset` = entry − 32) and follows
//! glibc's doubly-linked enqueue/dequeue, so both kinds of lock share the
//! list. `list_op_pending` covers the window between taking the word and
//! linking the node (and between unlinking and releasing), and compiler
//! fences keep those stores in program order, which is all the kernel needs
//! (it walks the list on the same thread). With no list registered (not
//! glibc) the thread registers its own; with an unexpected `futex_offset`
//! the lock still works, without owner-death detection.
//!
//! Cell layout (64 bytes, 64-aligned, in a shared segment):
//! `0` word, `4` poisoned flag, `8` recursion count (RLock), `24` prev,
//! `32` next (the entry).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering, compiler_fence};
use std::time::{Duration, Instant};

use crate::shm::sys::{self, RobustListHead, Segment};

/// Size of a mutex cell in a segment.
pub(crate) const CELL: usize = 64;
const ENTRY: usize = 32;
const FUTEX_OFFSET: isize = -(ENTRY as isize);
const WAITERS: u32 = 0x8000_0000;
const OWNER_DIED: u32 = 0x4000_0000;
const TID_MASK: u32 = 0x3fff_ffff;

/// How long an acquire may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Do not block.
    Try,
    /// Block until the deadline (`None`: forever).
    Until(Option<Instant>),
}

impl Wait {
    pub(crate) fn timeout(d: Option<Duration>) -> Wait {
        Wait::Until(d.and_then(|d| Instant::now().checked_add(d)))
    }
}

/// Result of an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Held, state consistent.
    Acquired,
    /// Held, but a previous owner died holding it.
    OwnerDied,
    /// `Wait::Try` and the lock is held.
    WouldBlock,
    /// The deadline passed.
    TimedOut,
}

#[derive(Clone, Copy)]
struct ThreadState {
    tid: u32,
    /// Address of the thread's `RobustListHead`, 0 for none.
    head: usize,
}

thread_local! {
    static STATE: Cell<ThreadState> = const { Cell::new(ThreadState { tid: 0, head: 0 }) };
}

extern "C" fn reset_after_fork() {
    // The child's only thread has a new tid; glibc re-registered (and
    // emptied) its robust list at the same address.
    STATE.with(|s| s.set(ThreadState { tid: 0, head: 0 }));
}

#[inline]
fn thread_state() -> ThreadState {
    let s = STATE.with(Cell::get);
    if s.tid != 0 { s } else { init_thread() }
}

#[repr(C)]
struct OwnHead {
    prev: AtomicUsize,
    head: RobustListHead,
}

/// `AT_FORK`: the at-fork handler is registered.
const AT_FORK_DONE: i32 = -1;

/// Registers [`reset_after_fork`] once per process.
///
/// Not a `std::sync::Once`: a child forked while another thread of the
/// parent was registering would find the `Once` running, and wait forever
/// for a thread it does not have. The state is the pid of the process whose
/// thread is registering, so a thread waits only for one of its own
/// process's threads, and a child that inherited a registration in flight
/// does it again (the handler may then run twice; it is idempotent).
fn register_at_fork() {
    static AT_FORK: AtomicI32 = AtomicI32::new(0);
    loop {
        let state = AT_FORK.load(Ordering::Acquire);
        if state == AT_FORK_DONE {
            return;
        }
        let me = std::process::id() as i32;
        if state == me {
            // Another thread of this process is at it, for microseconds.
            std::thread::yield_now();
            continue;
        }
        if AT_FORK
            .compare_exchange(state, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            sys::at_fork_child(reset_after_fork);
            AT_FORK.store(AT_FORK_DONE, Ordering::Release);
            return;
        }
    }
}

#[cold]
fn init_thread() -> ThreadState {
    register_at_fork();
    let tid = sys::gettid();
    let head = match sys::current_robust_list() {
        // SAFETY: the kernel returned the live head registered for this thread.
        Some(h) if unsafe { h.as_ref() }.futex_offset == FUTEX_OFFSET => h.as_ptr() as usize,
        Some(_) => {
            tracing::warn!("robust list with an unknown layout: owner death goes undetected");
            0
        }
        None => {
            let own = Box::leak(Box::new(OwnHead {
                prev: AtomicUsize::new(0),
                head: RobustListHead {
                    list: AtomicUsize::new(0),
                    futex_offset: FUTEX_OFFSET,
                    list_op_pending: AtomicUsize::new(0),
                },
            }));
            let addr = &own.head as *const RobustListHead as usize;
            own.head.list.store(addr, Ordering::Relaxed);
            // SAFETY: leaked, so valid until the thread (and process) exits,
            // with a writable `prev` word before it; no head was registered.
            match unsafe { sys::set_robust_list(NonNull::from(&own.head)) } {
                Ok(()) => addr,
                Err(_) => 0,
            }
        }
    };
    let s = ThreadState { tid, head };
    STATE.with(|c| c.set(s));
    s
}

/// A process-local word of the robust list (a head field or a node's
/// prev/next), addressed as the list stores it.
///
/// # Safety
/// `addr` is a live, aligned word of this thread's robust list.
#[inline]
unsafe fn slot<'a>(addr: usize) -> &'a AtomicUsize {
    // SAFETY: forwarded to the caller.
    unsafe { &*(addr as *const AtomicUsize) }
}

/// A robust mutex cell inside a shared segment.
#[derive(Clone, Debug)]
pub(crate) struct RawMutex {
    seg: Arc<Segment>,
    word: NonNull<AtomicU32>,
}

// SAFETY: `word` points into `seg`, which is Send + Sync and kept alive.
unsafe impl Send for RawMutex {}
// SAFETY: as above; the cell is only touched through atomics.
unsafe impl Sync for RawMutex {}

impl RawMutex {
    /// The cell at `offset` of `seg` (zeroed memory is an unlocked cell).
    pub(crate) fn new(seg: Arc<Segment>, offset: usize) -> RawMutex {
        let p = seg.ptr_at(offset, CELL, CELL);
        let word = NonNull::new(p.cast::<AtomicU32>()).expect("mapping is non-null");
        RawMutex { seg, word }
    }

    /// The segment holding the cell.
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.seg
    }

    #[inline]
    fn word(&self) -> &AtomicU32 {
        // SAFETY: in bounds and aligned (checked in `new`), alive with `seg`.
        unsafe { self.word.as_ref() }
    }

    #[inline]
    fn field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` < CELL, 4-aligned: within the checked cell.
        unsafe {
            &*self
                .word
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<AtomicU32>()
        }
    }

    #[inline]
    fn poisoned(&self) -> &AtomicU32 {
        self.field(4)
    }

    /// Recursion count (for RLock); only the owner touches it.
    #[inline]
    pub(crate) fn count(&self) -> &AtomicU32 {
        self.field(8)
    }

    #[inline]
    fn entry(&self) -> usize {
        self.word.as_ptr() as usize + ENTRY
    }

    /// The owner's tid, 0 when free.
    #[inline]
    pub(crate) fn owner(&self) -> u32 {
        self.word().load(Ordering::Relaxed) & TID_MASK
    }

    /// Whether the calling thread holds the lock.
    #[inline]
    pub(crate) fn is_owned_by_me(&self) -> bool {
        self.owner() == thread_state().tid
    }

    /// Clears the owner-died mark.
    pub(crate) fn mark_consistent(&self) {
        self.poisoned().store(0, Ordering::Relaxed);
    }

    #[inline]
    fn set_pending(&self, ts: ThreadState, value: usize) {
        if ts.head != 0 {
            compiler_fence(Ordering::SeqCst);
            // SAFETY: `ts.head` is this thread's registered, live head.
            unsafe { &*(ts.head as *const RobustListHead) }
                .list_op_pending
                .store(value, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
        }
    }

    /// Links the node first in the thread's list (glibc's ENQUEUE_MUTEX).
    #[inline]
    fn enqueue(&self, ts: ThreadState) {
        if ts.head == 0 {
            return;
        }
        let entry = self.entry();
        // SAFETY: the head's `list` field is its first word; `first` is the
        // head or a live entry, each with a writable prev word 8 bytes
        // before it (glibc's `robust_prev`, our `OwnHead::prev`, a node's
        // prev); our node belongs to us while we hold the lock.
        unsafe {
            let first = slot(ts.head).load(Ordering::Relaxed);
            slot((first & !1) - 8).store(entry, Ordering::Relaxed);
            slot(entry - 8).store(ts.head, Ordering::Relaxed);
            slot(entry).store(first, Ordering::Relaxed);
            compiler_fence(Ordering::SeqCst);
            slot(ts.head).store(entry, Ordering::Relaxed);
        }
    }

    /// Unlinks the node (glibc's DEQUEUE_MUTEX).
    #[inline]
    fn dequeue(&self, ts: ThreadState) {
        if ts.head == 0 {
            return;
        }
        let entry = self.entry();
        // SAFETY: the node is linked in this thread's list (we hold the
        // lock), so its prev and next name live list words.
        unsafe {
            let next = slot(entry).load(Ordering::Relaxed);
            let prev = slot(entry - 8).load(Ordering::Relaxed);
            slot((next & !1) - 8).store(prev, Ordering::Relaxed);
            slot(prev & !1).store(next, Ordering::Relaxed);
        }
    }

    /// Takes the lock.
    #[inline]
    pub(crate) fn acquire(&self, wait: Wait) -> Outcome {
        let ts = thread_state();
        self.set_pending(ts, self.entry());
        if self
            .word()
            .compare_exchange(0, ts.tid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            compiler_fence(Ordering::SeqCst);
            self.enqueue(ts);
            self.set_pending(ts, 0);
            return if self.poisoned().load(Ordering::Relaxed) == 0 {
                Outcome::Acquired
            } else {
                Outcome::OwnerDied
            };
        }
        self.acquire_slow(ts, wait)
    }

    #[cold]
    fn acquire_slow(&self, ts: ThreadState, wait: Wait) -> Outcome {
        let word = self.word();
        let mut spins = 0;
        let mut slept = false;
        loop {
            let v = word.load(Ordering::Relaxed);
            if v & TID_MASK == 0 {
                // Free (maybe with OWNER_DIED). Keep WAITERS set: others may sleep.
                let new = ts.tid
                    | if slept || v & WAITERS != 0 {
                        WAITERS
                    } else {
                        0
                    };
                if word
                    .compare_exchange(v, new, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    compiler_fence(Ordering::SeqCst);
                    self.enqueue(ts);
                    self.set_pending(ts, 0);
                    if v & OWNER_DIED != 0 {
                        self.poisoned().store(1, Ordering::Relaxed);
                    }
                    return if self.poisoned().load(Ordering::Relaxed) == 0 {
                        Outcome::Acquired
                    } else {
                        Outcome::OwnerDied
                    };
                }
                continue;
            }
            let deadline = match wait {
                Wait::Try => {
                    self.set_pending(ts, 0);
                    return Outcome::WouldBlock;
                }
                Wait::Until(d) => d,
            };
            if spins < 40 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if v & WAITERS == 0
                && word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        self.set_pending(ts, 0);
                        return Outcome::TimedOut;
                    }
                },
            };
            sys::futex_wait(word, v | WAITERS, remaining);
            slept = true;
        }
    }

    /// Releases the lock; the caller holds it.
    #[inline]
    pub(crate) fn release(&self) {
        let ts = thread_state();
        self.set_pending(ts, self.entry());
        self.dequeue(ts);
        compiler_fence(Ordering::SeqCst);
        let old = self.word().swap(0, Ordering::Release);
        if old & WAITERS != 0 {
            sys::futex_wake(self.word(), 1);
        }
        // Cleared only after the wake: a thread killed between the swap
        // and the wake still names the lock as pending, and the kernel's
        // owner-death pass, finding the word free, wakes a waiter for it.
        self.set_pending(ts, 0);
    }
}
