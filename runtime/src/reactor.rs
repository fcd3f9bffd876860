//! The waiter thread behind the crate's futures.
//!
//! A future of this crate ([`crate::future`]) first tries its operation
//! without blocking (`waitpid` with `WNOHANG`, a receive with
//! `MSG_DONTWAIT`, a queue's `get_nowait`). When that finds nothing it gets
//! a [`Waiter`]: one entry in a process-wide `epoll` set that a single thread
//! of this crate, `mproc-waiter`, sleeps on, waking the future's `Waker` when
//! the fd it waits for becomes readable (a pidfd when the child ends, a
//! socket when a message or EOF waits, a queue's doorbell when an item may
//! be there) or when a deadline passes. No thread of the caller's async
//! runtime ever sleeps in the kernel for it, and nothing here depends on
//! which runtime polls the future.
//!
//! What is hard:
//!
//! - *Lost wake-ups.* Readiness that arrives between the non-blocking try
//!   and the registration must not be missed. The fd is registered
//!   level-triggered, so an fd already readable when it is (re-)armed is
//!   reported at once; and every future tries again after arming, so the
//!   operation itself, not only the event, decides.
//! - *One event, then quiet.* Entries are `EPOLLONESHOT`: after an event the
//!   kernel disarms the entry until the future, polled again and still
//!   without a result, re-arms it (`EPOLL_CTL_MOD`). A level-triggered fd
//!   that stays readable (a pidfd whose exit the fork server has not
//!   reported yet, a doorbell while another consumer takes the item) cannot
//!   make the thread spin.
//! - *Two futures, one fd.* Two tasks may wait on the same queue or
//!   connection, which share one fd, and epoll refuses the same fd twice.
//!   Each waiter registers a duplicate of its own, so every registration is
//!   separate and is removed exactly, by the waiter's drop: `EPOLL_CTL_DEL`,
//!   then the duplicate is closed. A dropped future leaves no fd and no entry.
//! - *Tokens, not pointers.* An event carries a token that is never reused;
//!   an event for a waiter dropped meanwhile finds no entry and is ignored.
//! - *`fork`.* A child made by the `fork` start method has no waiter thread
//!   and must not touch the parent's epoll set, which it shares with the
//!   parent. [`reset_after_fork`] forgets the parent's reactor (closing the
//!   child's copies of its fds); the child makes its own on first use. A
//!   reactor is never freed, and a waiter belonging to another process's
//!   reactor never touches its fds.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicI32;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use crate::shm::sys::{eventfd, eventfd_drain, eventfd_signal};
use crate::sys::{self, EPOLL_READ_ONCE, EpollOp, ForkCell};

/// The token of the reactor's own eventfd, rung when the earliest deadline
/// moves earlier.
const BELL: u64 = u64::MAX;

/// What one waiter is waiting for.
struct Slot {
    /// Who to wake; taken when woken (the next poll puts one back).
    waker: Option<Waker>,
    /// Whether its fd is armed in the epoll set.
    armed: bool,
    /// When its timer fires.
    deadline: Option<Instant>,
}

struct State {
    slots: HashMap<u64, Slot>,
    timers: BTreeSet<(Instant, u64)>,
    next_token: u64,
}

/// One process's epoll set and the thread that waits on it.
pub(crate) struct Reactor {
    epoll: OwnedFd,
    bell: OwnedFd,
    /// The process this reactor (and its thread) belongs to.
    owner: u32,
    state: Mutex<State>,
}

/// This process's reactor, made on first use and never freed.
static REACTOR: ForkCell<Mutex<Option<&'static Reactor>>> = ForkCell::new(Mutex::new(None));
/// The reactor's epoll fd and eventfd, for a `fork` child to close.
static EPOLL_FD: AtomicI32 = AtomicI32::new(-1);
static BELL_FD: AtomicI32 = AtomicI32::new(-1);

/// Whether this process runs the waiter thread (a `fork` from a thread of
/// an otherwise single-threaded program does not warn about it: the child
/// forgets it and its locks, see [`reset_after_fork`]).
pub(crate) fn thread_running() -> bool {
    REACTOR
        .get()
        .try_lock()
        .map_or(true, |r| r.is_some_and(|r| r.owner == std::process::id()))
}

impl Reactor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This process's reactor, started on first use.
    fn get() -> io::Result<&'static Reactor> {
        let mut cell = REACTOR.get().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = *cell {
            return Ok(r);
        }
        let epoll = sys::epoll_create()?;
        let bell = eventfd()?;
        sys::epoll_ctl(
            epoll.as_fd(),
            EpollOp::Add,
            bell.as_fd(),
            libc::EPOLLIN as u32,
            BELL,
        )?;
        // The thread first, the reactor handed to it after: if the thread
        // cannot start, nothing is leaked.
        let (tx, rx) = std::sync::mpsc::sync_channel::<&'static Reactor>(1);
        std::thread::Builder::new()
            .name("mproc-waiter".into())
            .spawn(move || {
                if let Ok(reactor) = rx.recv() {
                    reactor.run();
                }
            })?;
        let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
            epoll,
            bell,
            owner: std::process::id(),
            state: Mutex::new(State {
                slots: HashMap::new(),
                timers: BTreeSet::new(),
                next_token: 0,
            }),
        }));
        // The receiver waits for exactly this one value.
        let _ = tx.send(reactor);
        EPOLL_FD.store(sys::raw(reactor.epoll.as_fd()), SeqCst);
        BELL_FD.store(sys::raw(reactor.bell.as_fd()), SeqCst);
        *cell = Some(reactor);
        tracing::debug!("waiter thread started");
        Ok(reactor)
    }

    /// Whether this reactor belongs to the calling process (not to the
    /// parent of a `fork` child).
    fn is_ours(&self) -> bool {
        self.owner == std::process::id()
    }

    /// The waiter thread: waits for events and deadlines, wakes their
    /// wakers (outside the lock: a waker may run anything).
    fn run(&self) {
        let mut tokens = Vec::new();
        let mut wake = Vec::new();
        loop {
            let timeout = self
                .lock()
                .timers
                .first()
                .map(|&(at, _)| at.saturating_duration_since(Instant::now()));
            if let Err(e) = sys::epoll_wait(self.epoll.as_fd(), &mut tokens, timeout) {
                // Cannot happen with a valid set; do not spin if it does.
                tracing::error!(error = %e, "epoll_wait failed in the waiter thread");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let mut st = self.lock();
            for &token in &tokens {
                if token == BELL {
                    eventfd_drain(self.bell.as_fd());
                    continue;
                }
                if let Some(slot) = st.slots.get_mut(&token) {
                    slot.armed = false;
                    wake.extend(slot.waker.take());
                }
            }
            let now = Instant::now();
            while let Some(&(at, token)) = st.timers.first() {
                if at > now {
                    break;
                }
                st.timers.pop_first();
                if let Some(slot) = st.slots.get_mut(&token) {
                    slot.deadline = None;
                    wake.extend(slot.waker.take());
                }
            }
            drop(st);
            for w in wake.drain(..) {
                w.wake();
            }
        }
    }
}

/// One future's registration with the reactor: an fd it waits to become
/// readable, a deadline, or both. Dropping it removes every trace.
pub(crate) struct Waiter {
    reactor: &'static Reactor,
    token: u64,
    /// The duplicate of the fd waited on, in the epoll set once armed.
    fd: Option<OwnedFd>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("token", &self.token)
            .field("fd", &self.fd)
            .finish()
    }
}

/// Puts `waker` in the slot unless the one there wakes the same task;
/// returns the one replaced, to be dropped after the lock is released (a
/// waker's drop may drop a task, and with it another waiter).
fn set_waker(slot: &mut Slot, waker: &Waker) -> Option<Waker> {
    match &slot.waker {
        Some(w) if w.will_wake(waker) => None,
        _ => slot.waker.replace(waker.clone()),
    }
}

/// The slot of `token`, which lives as long as its [`Waiter`].
fn slot_of(slots: &mut HashMap<u64, Slot>, token: u64) -> io::Result<&mut Slot> {
    slots
        .get_mut(&token)
        .ok_or_else(|| io::Error::other("waiter lost its registration"))
}

fn moved_across_fork() -> io::Error {
    io::Error::other("a future of the parent polled in a child made by fork")
}

impl Waiter {
    /// A registration with nothing armed yet (starts the waiter thread on
    /// first use).
    ///
    /// # Errors
    /// When the epoll set, its eventfd or the thread cannot be created.
    pub(crate) fn new() -> io::Result<Waiter> {
        let reactor = Reactor::get()?;
        let mut st = reactor.lock();
        let token = st.next_token;
        st.next_token += 1;
        st.slots.insert(
            token,
            Slot {
                waker: None,
                armed: false,
                deadline: None,
            },
        );
        Ok(Waiter {
            reactor,
            token,
            fd: None,
        })
    }

    /// Locks this process's reactor.
    ///
    /// # Errors
    /// In a `fork` child polling a future of its parent (the reactor, its
    /// thread and its epoll set belong to the parent).
    fn lock(&self) -> io::Result<MutexGuard<'static, State>> {
        if !self.reactor.is_ours() {
            return Err(moved_across_fork());
        }
        Ok(self.reactor.lock())
    }

    /// Wakes `waker` once when `fd` is readable or hung up (at once if it
    /// is already). Always the same fd for one waiter. A later call before
    /// the event only replaces the waker.
    ///
    /// # Errors
    /// When the fd cannot be duplicated or added to the set.
    pub(crate) fn arm_readable(&mut self, fd: BorrowedFd<'_>, waker: &Waker) -> io::Result<()> {
        let mut st = self.lock()?;
        let slot = slot_of(&mut st.slots, self.token)?;
        let old = set_waker(slot, waker);
        let res = if slot.armed {
            Ok(())
        } else {
            self.add_or_rearm(fd).map(|()| slot.armed = true)
        };
        drop(st);
        drop(old);
        res
    }

    /// Adds the duplicate of `fd` to the set, or re-arms it.
    fn add_or_rearm(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let epoll = self.reactor.epoll.as_fd();
        match &self.fd {
            Some(dup) => sys::epoll_ctl(
                epoll,
                EpollOp::Modify,
                dup.as_fd(),
                EPOLL_READ_ONCE,
                self.token,
            ),
            None => {
                let dup = sys::dup(fd)?;
                sys::epoll_ctl(
                    epoll,
                    EpollOp::Add,
                    dup.as_fd(),
                    EPOLL_READ_ONCE,
                    self.token,
                )?;
                self.fd = Some(dup);
                Ok(())
            }
        }
    }

    /// Wakes `waker` once at `at` (replacing an earlier deadline).
    ///
    /// # Errors
    /// In a `fork` child polling a future of its parent.
    pub(crate) fn arm_timer(&mut self, at: Instant, waker: &Waker) -> io::Result<()> {
        let mut st = self.lock()?;
        let slot = slot_of(&mut st.slots, self.token)?;
        let old_waker = set_waker(slot, waker);
        if let Some(old) = slot.deadline.replace(at) {
            st.timers.remove(&(old, self.token));
        }
        st.timers.insert((at, self.token));
        let earliest = st.timers.first() == Some(&(at, self.token));
        drop(st);
        drop(old_waker);
        if earliest {
            // The thread may sleep towards a later deadline: make it look.
            eventfd_signal(self.reactor.bell.as_fd());
        }
        Ok(())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let r = self.reactor;
        if !r.is_ours() {
            // A copy inherited by a `fork` child: the set is the parent's.
            return;
        }
        let mut st = r.lock();
        let slot = st.slots.remove(&self.token);
        if let Some(at) = slot.as_ref().and_then(|s| s.deadline) {
            st.timers.remove(&(at, self.token));
        }
        drop(st);
        // Its waker is dropped here, outside the lock.
        drop(slot);
        if let Some(dup) = self.fd.take() {
            // Removed before it is closed: epoll forgets an entry only when
            // every fd of its file is closed, and the original stays open.
            if let Err(e) = sys::epoll_ctl(r.epoll.as_fd(), EpollOp::Delete, dup.as_fd(), 0, 0) {
                tracing::warn!(error = %e, "could not remove a waiter from the epoll set");
            }
        }
    }
}

/// In a child made by the `fork` method: forget the parent's reactor.
///
/// # Safety
/// Only right after `fork`, in the child, before any other thread starts.
#[allow(unsafe_code)] // the reset itself, see the safety contract
pub(crate) unsafe fn reset_after_fork() {
    // SAFETY: forwarded to the caller (single-threaded fork child); the old
    // reactor is leaked, never dropped, so forgetting it is sound.
    unsafe { REACTOR.reset_in_child(Mutex::new(None)) };
    for fd in [EPOLL_FD.swap(-1, SeqCst), BELL_FD.swap(-1, SeqCst)] {
        if fd >= 0 {
            // SAFETY: these numbers name the parent reactor's epoll set and
            // eventfd, open until the parent exits (a reactor is never
            // freed), so they are the child's copies of those. Their only
            // owner is that leaked reactor, which in this process is never
            // used again: every use checks that it belongs to the caller's
            // process first.
            unsafe { sys::close_raw(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// Counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    /// Waits up to 30 s for `c` to reach `n` wakes.
    fn wakes_reach(c: &Count, n: usize) -> bool {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if c.0.load(Ordering::SeqCst) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    fn is_registered(w: &Waiter) -> bool {
        w.reactor.lock().slots.contains_key(&w.token)
    }

    #[test]
    fn readiness_wakes_every_waiter_of_one_fd_once_per_arming() {
        let fd = eventfd().unwrap();
        let (c1, k1) = counter();
        let (c2, k2) = counter();
        let mut w1 = Waiter::new().unwrap();
        let mut w2 = Waiter::new().unwrap();
        w1.arm_readable(fd.as_fd(), &k1).unwrap();
        w2.arm_readable(fd.as_fd(), &k2).unwrap();
        // Arming again before the event changes nothing.
        w1.arm_readable(fd.as_fd(), &k1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c1.0.load(Ordering::SeqCst), 0);
        eventfd_signal(fd.as_fd());
        assert!(wakes_reach(&c1, 1) && wakes_reach(&c2, 1));
        // One shot: still readable, but no second wake until re-armed.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        // Re-armed while readable: reported at once (level-triggered).
        w1.arm_readable(fd.as_fd(), &k1).unwrap();
        assert!(wakes_reach(&c1, 2));
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_timer_wakes_at_its_deadline_and_a_later_one_replaces_it() {
        let (c, k) = counter();
        let mut w = Waiter::new().unwrap();
        let t0 = Instant::now();
        w.arm_timer(t0 + Duration::from_secs(3600), &k).unwrap();
        w.arm_timer(t0 + Duration::from_millis(30), &k).unwrap();
        assert!(wakes_reach(&c, 1));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_waiter_leaves_no_registration_and_is_not_woken() {
        let fd = eventfd().unwrap();
        let (c, k) = counter();
        let mut w = Waiter::new().unwrap();
        w.arm_readable(fd.as_fd(), &k).unwrap();
        w.arm_timer(Instant::now() + Duration::from_millis(10), &k)
            .unwrap();
        assert!(w.fd.is_some());
        let (r, token) = (w.reactor, w.token);
        assert!(is_registered(&w));
        drop(w);
        assert!(!r.lock().slots.contains_key(&token));
        assert!(!r.lock().timers.iter().any(|&(_, t)| t == token));
        eventfd_signal(fd.as_fd());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
    }
}
