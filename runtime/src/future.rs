//! Awaiting processes, connections and queues from any async runtime.
//!
//! [`Process::join_async`](crate::Process::join_async),
//! [`Connection::recv_async`](crate::connection::Connection::recv_async)
//! and [`Queue::get_async`](crate::Queue::get_async) (also on
//! [`SimpleQueue`](crate::SimpleQueue) and, through `Deref`, on
//! [`JoinableQueue`](crate::JoinableQueue)) return the futures of this
//! module. They work under tokio, async-std, smol or a hand-written
//! executor alike: none of them needs a runtime's reactor, and none blocks
//! the thread that polls it.
//!
//! Each poll first tries the operation without blocking. When that finds
//! nothing, the future registers the fd that will tell it more — the
//! child's pidfd, the connection's socket, the queue's doorbell — with one
//! waiter thread per process (`mproc-waiter`, started on first use), which
//! sleeps in `epoll_wait` over every such fd and wakes the futures whose fd
//! became readable. The future then tries again, so readiness that comes
//! between the try and the registration is never lost. Dropping a future
//! removes its registration and closes the fd duplicate it held: nothing is
//! left behind.
//!
//! [`AsyncResult`](crate::AsyncResult) is a future of its own: the pool's
//! result thread wakes it, no fd involved.
//!
//! # Cancel safety
//!
//! [`RecvFuture`] and [`GetFuture`] are cancel safe: they take a message or
//! an item only in the poll that returns it, so a future dropped before it
//! completes (a `tokio::select!` branch not taken, a
//! `tokio::time::timeout` that expired) loses nothing. [`JoinFuture`] is
//! cancel safe too: the child keeps running and can be joined again.
//!
//! # Examples
//!
//! With a tiny executor of one's own (the waker unparks the thread):
//!
//! ```
//! use std::future::Future;
//! use std::pin::pin;
//! use std::sync::Arc;
//! use std::task::{Context, Poll, Wake, Waker};
//! use std::time::{Duration, Instant};
//!
//! struct Unpark(std::thread::Thread);
//! impl Wake for Unpark {
//!     fn wake(self: Arc<Self>) {
//!         self.0.unpark();
//!     }
//! }
//!
//! /// Polls `f` on this thread until it is ready (or `limit` has passed).
//! fn block_on<F: Future>(f: F, limit: Duration) -> Option<F::Output> {
//!     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
//!     let mut cx = Context::from_waker(&waker);
//!     let mut f = pin!(f);
//!     let end = Instant::now() + limit;
//!     loop {
//!         if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
//!             return Some(v);
//!         }
//!         let left = end.checked_duration_since(Instant::now())?;
//!         std::thread::park_timeout(left);
//!     }
//! }
//!
//! fn double(x: u32) -> u32 {
//!     x * 2
//! }
//!
//! # fn main() -> mproc::Result<()> {
//! let mut p = mproc::default_context().process(double, 21).start()?;
//! let joined = block_on(p.join_async(), Duration::from_secs(30));
//! assert_eq!(joined.expect("joined within 30 s")?, 42);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::process::Process;
use crate::queue::{GetError, Queue};
use crate::reactor::Waiter;
use crate::sys;

/// First and longest nap of a join that polls for a status the kernel
/// cannot announce (no pidfd, or the fork server has yet to report an exit
/// the pidfd has already shown).
const FIRST_NAP: Duration = Duration::from_millis(1);
const LONGEST_NAP: Duration = Duration::from_millis(10);

/// The waiter of a future, made on its first pending poll.
fn waiter(slot: &mut Option<Waiter>) -> std::io::Result<&mut Waiter> {
    match slot {
        Some(w) => Ok(w),
        None => Ok(slot.insert(Waiter::new()?)),
    }
}

/// Waits for a child to end and gives its result: the future of
/// [`Process::join_async`].
///
/// Resolves as [`Process::join`] returns. Where the kernel has pidfds
/// (Linux 5.3 and later) the child's end wakes the future; elsewhere, and
/// in the moment between a fork-server child's end and the server's report
/// of it, the future looks again after a short nap (1 ms, growing to
/// 10 ms).
///
/// Cancel safe: dropping it leaves the child running and the result in
/// place for a later join.
#[must_use = "futures do nothing unless awaited"]
pub struct JoinFuture<'a, R> {
    process: &'a mut Process<R>,
    waiter: Option<Waiter>,
    nap: Duration,
}

impl<R> std::fmt::Debug for JoinFuture<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinFuture")
            .field("process", &self.process)
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

impl<'a, R> JoinFuture<'a, R> {
    pub(crate) fn new(process: &'a mut Process<R>) -> Self {
        JoinFuture {
            process,
            waiter: None,
            nap: FIRST_NAP,
        }
    }
}

impl<R: DeserializeOwned> JoinFuture<'_, R> {
    fn done(&mut self, r: Result<R>) -> Poll<Result<R>> {
        self.waiter = None;
        Poll::Ready(r)
    }
}

impl<R: DeserializeOwned> Future for JoinFuture<'_, R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        if let Some(r) = this.process.try_join() {
            return this.done(r);
        }
        let w = match waiter(&mut this.waiter) {
            Ok(w) => w,
            Err(e) => return this.done(Err(e.into())),
        };
        let sentinel = this.process.sentinel();
        let ended = match sentinel {
            Some(fd) => match sys::wait_readable(fd, Some(Duration::ZERO)) {
                Ok(ended) => ended,
                Err(e) => return this.done(Err(e.into())),
            },
            None => true,
        };
        let armed = match sentinel {
            // The kernel wakes us when the child ends.
            Some(fd) if !ended => w.arm_readable(fd, cx.waker()),
            // No pidfd, or it has ended but its status is not known yet.
            _ => {
                let at = Instant::now() + this.nap;
                this.nap = (this.nap * 2).min(LONGEST_NAP);
                w.arm_timer(at, cx.waker())
            }
        };
        if let Err(e) = armed {
            return this.done(Err(e.into()));
        }
        // It may have ended between the first look and the registration.
        match this.process.try_join() {
            Some(r) => this.done(r),
            None => Poll::Pending,
        }
    }
}

/// Receives one value from a [`Connection`]: the future of
/// [`Connection::recv_async`].
///
/// Cancel safe: a message leaves the socket only in the poll that returns
/// it.
#[must_use = "futures do nothing unless awaited"]
pub struct RecvFuture<'a, T> {
    conn: &'a Connection<T>,
    waiter: Option<Waiter>,
}

impl<T> std::fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvFuture")
            .field("conn", &self.conn)
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

impl<'a, T> RecvFuture<'a, T> {
    pub(crate) fn new(conn: &'a Connection<T>) -> Self {
        RecvFuture { conn, waiter: None }
    }
}

impl<T: DeserializeOwned> Future for RecvFuture<'_, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        use std::os::fd::AsFd;
        let this = self.get_mut();
        let mut armed = false;
        loop {
            match this.conn.try_recv() {
                Ok(None) => {}
                Ok(Some(v)) => {
                    this.waiter = None;
                    return Poll::Ready(Ok(v));
                }
                Err(e) => {
                    this.waiter = None;
                    return Poll::Ready(Err(e));
                }
            }
            if armed {
                return Poll::Pending;
            }
            let res = waiter(&mut this.waiter)
                .and_then(|w| w.arm_readable(this.conn.as_fd(), cx.waker()));
            if let Err(e) = res {
                this.waiter = None;
                return Poll::Ready(Err(Error::Io(e)));
            }
            // Try once more: a message may have come before the arming.
            armed = true;
        }
    }
}

/// Takes one item from a queue: the future of [`Queue::get_async`] and
/// [`SimpleQueue::get_async`](crate::SimpleQueue::get_async).
///
/// It waits on the queue's doorbell, which rings when an item may be
/// there; another consumer may still take the item first, and then the
/// future waits on. Each try is a
/// [`get_nowait`](Queue::get_nowait), which never waits for an item (it
/// may wait a moment for the ring's lock, which its holders keep for well
/// under a microsecond).
///
/// Cancel safe: an item leaves the queue only in the poll that returns it.
#[must_use = "futures do nothing unless awaited"]
pub struct GetFuture<'a, T> {
    queue: &'a Queue<T>,
    waiter: Option<Waiter>,
}

impl<T> std::fmt::Debug for GetFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetFuture")
            .field("queue", &self.queue)
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

impl<'a, T> GetFuture<'a, T> {
    pub(crate) fn new(queue: &'a Queue<T>) -> Self {
        GetFuture {
            queue,
            waiter: None,
        }
    }
}

impl<T: DeserializeOwned> Future for GetFuture<'_, T> {
    type Output = std::result::Result<T, GetError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use std::os::fd::AsFd;
        let this = self.get_mut();
        let mut armed = false;
        loop {
            match this.queue.get_nowait() {
                Err(GetError::Empty) => {}
                other => {
                    this.waiter = None;
                    return Poll::Ready(other);
                }
            }
            if armed {
                return Poll::Pending;
            }
            // The failed get silenced the doorbell (with the ring found
            // empty); the next put rings it.
            let res = waiter(&mut this.waiter)
                .and_then(|w| w.arm_readable(this.queue.as_fd(), cx.waker()));
            if let Err(e) = res {
                this.waiter = None;
                return Poll::Ready(Err(GetError::Failed(Error::Io(e))));
            }
            armed = true;
        }
    }
}
