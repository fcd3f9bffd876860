//! Handles to results that arrive later: [`AsyncResult`] (Python's
//! `AsyncResult`, also a `std::future::Future`) and [`IMapIterator`].
//!
//! The pool's result thread completes every task exactly once — with its
//! value, its panic, the death of its worker, a cancel or `terminate` — by
//! calling the task's sink, which decodes the value here, in the parent,
//! runs the callback (before the result becomes ready, as CPython does) and
//! wakes whoever waits: a thread blocked in `get`, or a task's `Waker`.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::driver::Shared;
use super::error::PoolError;
use crate::codec;

/// One item's raw outcome: the encoded value, or the panic message.
pub(crate) type RawItem = Result<(Vec<u8>, Vec<OwnedFd>), String>;
/// A whole task's outcome: its items, or why none came back.
pub(crate) type TaskOutcome = Result<Vec<RawItem>, PoolError>;
/// Completes a task; called exactly once.
pub(crate) type Sink = Box<dyn FnOnce(TaskOutcome) + Send>;

/// Decodes one item in the parent.
pub(crate) fn decode_item<R: DeserializeOwned>(item: RawItem) -> Result<R, PoolError> {
    match item {
        Ok((bytes, fds)) => codec::decode(&bytes, fds).map_err(|e| PoolError::Codec(e.to_string())),
        Err(message) => Err(PoolError::Panicked { message }),
    }
}

enum SlotState<T> {
    Pending(Option<Waker>),
    Ready(Result<T, PoolError>),
    Taken(bool),
}

/// Where one value arrives; the first `set` wins.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cond: Condvar,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::Pending(None)),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, value: Result<T, PoolError>) {
        let mut st = self.lock();
        if let SlotState::Pending(waker) = &mut *st {
            let waker = waker.take();
            *st = SlotState::Ready(value);
            drop(st);
            self.cond.notify_all();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> MutexGuard<'_, SlotState<T>> {
        let mut st = self.lock();
        while matches!(*st, SlotState::Pending(_)) {
            st = match deadline {
                None => self.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.cond
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        st
    }

    fn take(st: &mut SlotState<T>) -> Result<T, PoolError> {
        match st {
            SlotState::Pending(_) => Err(PoolError::Timeout),
            SlotState::Taken(_) => Err(PoolError::ResultTaken),
            SlotState::Ready(r) => {
                let ok = r.is_ok();
                match std::mem::replace(st, SlotState::Taken(ok)) {
                    SlotState::Ready(r) => r,
                    _ => Err(PoolError::ResultTaken),
                }
            }
        }
    }
}

/// Callbacks run in the parent when a result arrives (Python's
/// `callback=` and `error_callback=`), each at most once.
///
/// They run on the pool's result thread, before the result becomes ready to
/// `get`; keep them short, as CPython advises: the next results wait. A
/// callback must not wait for another result of the same pool (that result
/// would be delivered by the very thread the callback holds up). A callback
/// that panics is logged and ignored.
#[must_use = "callbacks do nothing until passed to an `_with` method"]
pub struct Callbacks<R> {
    ok: Option<OnSuccess<R>>,
    err: Option<OnError>,
}

type OnSuccess<R> = Box<dyn FnOnce(&R) + Send>;
type OnError = Box<dyn FnOnce(&PoolError) + Send>;

impl<R> Default for Callbacks<R> {
    fn default() -> Self {
        Callbacks::new()
    }
}

impl<R> std::fmt::Debug for Callbacks<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("callback", &self.ok.is_some())
            .field("error_callback", &self.err.is_some())
            .finish()
    }
}

impl<R> Callbacks<R> {
    /// No callbacks.
    pub fn new() -> Callbacks<R> {
        Callbacks {
            ok: None,
            err: None,
        }
    }

    /// Runs `f` with the value when the task succeeds (Python's
    /// `callback`).
    #[doc(alias = "callback")]
    pub fn on_success(mut self, f: impl FnOnce(&R) + Send + 'static) -> Self {
        self.ok = Some(Box::new(f));
        self
    }

    /// Runs `f` with the error when the task fails (Python's
    /// `error_callback`).
    #[doc(alias = "error_callback")]
    pub fn on_error(mut self, f: impl FnOnce(&PoolError) + Send + 'static) -> Self {
        self.err = Some(Box::new(f));
        self
    }

    /// Runs the matching callback, then makes the result ready.
    pub(crate) fn finish(mut self, slot: &Slot<R>, value: Result<R, PoolError>) {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &value {
            Ok(v) => {
                if let Some(f) = self.ok.take() {
                    f(v)
                }
            }
            Err(e) => {
                if let Some(f) = self.err.take() {
                    f(e)
                }
            }
        }));
        if run.is_err() {
            tracing::error!("a pool callback panicked; its result is kept");
        }
        slot.set(value);
    }
}

/// A result that arrives later (Python's `AsyncResult`, and
/// `concurrent.futures.Future` when it comes from an executor).
///
/// Wait for it with [`get`](AsyncResult::get) or
/// [`get_timeout`](AsyncResult::get_timeout), or `.await` it: it implements
/// [`std::future::Future`], woken from the pool's result thread, so an async
/// runtime never blocks a thread on it.
///
/// ```
/// use std::time::Duration;
///
/// fn cube(x: i64) -> i64 {
///     x * x * x
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = mproc::default_context().pool(2)?;
/// let pending: Vec<_> = (1..=3)
///     .map(|x| pool.apply_async(cube, x))
///     .collect::<Result<_, _>>()?;
/// let mut got = Vec::new();
/// for r in pending {
///     got.push(r.get_timeout(Duration::from_secs(30))?);
/// }
/// assert_eq!(got, [1, 8, 27]);
///
/// // Or awaited, from any async runtime:
/// let r = pool.apply_async(cube, 4)?;
/// let v = tokio::runtime::Builder::new_current_thread()
///     .build()?
///     .block_on(r)?;
/// assert_eq!(v, 64);
/// # Ok(()) }
/// ```
#[doc(alias = "Future")]
#[must_use = "the result is lost unless waited for"]
pub struct AsyncResult<R> {
    slot: Arc<Slot<R>>,
    cancel: Option<(Weak<Shared>, u64)>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slot: Arc<Slot<R>>, cancel: Option<(Weak<Shared>, u64)>) -> AsyncResult<R> {
        AsyncResult { slot, cancel }
    }

    /// Waits for the value (Python's `get()`).
    ///
    /// # Errors
    /// The task's [`PoolError`]: [`PoolError::Panicked`] with the panic
    /// message, [`PoolError::WorkerDied`] with the exit code, and so on.
    pub fn get(self) -> Result<R, PoolError> {
        let mut st = self.slot.wait_until(None);
        Slot::take(&mut st)
    }

    /// Waits at most `timeout` for the value (Python's `get(timeout)`).
    ///
    /// # Errors
    /// [`PoolError::Timeout`] when it is not ready in time (wait again
    /// later); [`PoolError::ResultTaken`] after a successful earlier call;
    /// otherwise as [`get`](AsyncResult::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, PoolError> {
        let mut st = self.slot.wait_until(Instant::now().checked_add(timeout));
        Slot::take(&mut st)
    }

    /// Waits until the result is ready, without taking it (Python's
    /// `wait()`).
    pub fn wait(&self) {
        drop(self.slot.wait_until(None));
    }

    /// Waits at most `timeout`; whether the result is ready (Python's
    /// `wait(timeout)`).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        !matches!(
            *self.slot.wait_until(Instant::now().checked_add(timeout)),
            SlotState::Pending(_)
        )
    }

    /// Whether the result is ready (Python's `ready()`).
    pub fn ready(&self) -> bool {
        !matches!(*self.slot.lock(), SlotState::Pending(_))
    }

    /// Whether the task succeeded; `None` while it is not ready (where
    /// Python raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        match &*self.slot.lock() {
            SlotState::Pending(_) => None,
            SlotState::Ready(r) => Some(r.is_ok()),
            SlotState::Taken(ok) => Some(*ok),
        }
    }

    /// Cancels the task if no worker has taken it yet (Python's
    /// `Future.cancel()`); its result becomes [`PoolError::Cancelled`].
    /// Returns whether it was cancelled. Results of `map_async` cannot be
    /// cancelled.
    pub fn cancel(&self) -> bool {
        match &self.cancel {
            Some((shared, id)) => shared.upgrade().is_some_and(|s| s.cancel(*id)),
            None => false,
        }
    }

    /// Whether the task was cancelled (Python's `Future.cancelled()`).
    pub fn cancelled(&self) -> bool {
        matches!(
            &*self.slot.lock(),
            SlotState::Ready(Err(PoolError::Cancelled))
        )
    }
}

impl<R> std::future::Future for AsyncResult<R> {
    type Output = Result<R, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut st = self.slot.lock();
        match &mut *st {
            SlotState::Pending(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(Slot::take(&mut st)),
        }
    }
}

struct ImapState<R> {
    /// Ordered: results by index (taken as yielded). Unordered: unused.
    by_index: VecDeque<Option<Result<R, PoolError>>>,
    /// Index of `by_index[0]`.
    base: usize,
    /// Unordered: results in arrival order.
    arrived: VecDeque<Result<R, PoolError>>,
}

/// What imap sinks fill and the iterator drains.
pub(crate) struct ImapShared<R> {
    state: Mutex<ImapState<R>>,
    cond: Condvar,
    ordered: bool,
}

impl<R> ImapShared<R> {
    pub(crate) fn new(ordered: bool) -> Arc<ImapShared<R>> {
        Arc::new(ImapShared {
            state: Mutex::new(ImapState {
                by_index: VecDeque::new(),
                base: 0,
                arrived: VecDeque::new(),
            }),
            cond: Condvar::new(),
            ordered,
        })
    }

    /// Stores the result of item `index`.
    pub(crate) fn put(&self, index: usize, value: Result<R, PoolError>) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.ordered {
            let Some(at) = index.checked_sub(st.base) else {
                return;
            };
            while st.by_index.len() <= at {
                st.by_index.push_back(None);
            }
            st.by_index[at] = Some(value);
        } else {
            st.arrived.push_back(value);
        }
        drop(st);
        self.cond.notify_all();
    }
}

/// The results of [`Pool::imap`](super::Pool::imap) (in order) or
/// [`Pool::imap_unordered`](super::Pool::imap_unordered) (as they come),
/// one `Result` per input item (Python's `IMapIterator`).
///
/// `next` blocks until the next result is there; use
/// [`next_timeout`](IMapIterator::next_timeout) to bound the wait.
#[must_use = "iterators are lazy: the results are only read when iterated"]
pub struct IMapIterator<R> {
    shared: Arc<ImapShared<R>>,
    yielded: usize,
    total: usize,
}

impl<R> std::fmt::Debug for IMapIterator<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMapIterator")
            .field("ordered", &self.shared.ordered)
            .field("yielded", &self.yielded)
            .field("total", &self.total)
            .finish()
    }
}

impl<R> IMapIterator<R> {
    pub(crate) fn new(shared: Arc<ImapShared<R>>, total: usize) -> IMapIterator<R> {
        IMapIterator {
            shared,
            yielded: 0,
            total,
        }
    }

    /// The next result, waiting at most `timeout` (Python's
    /// `next(timeout)`); `None` after the last one.
    ///
    /// # Errors
    /// `Some(Err(PoolError::Timeout))` when nothing arrived in time (call
    /// again: nothing is lost); otherwise the item's own error.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, PoolError>> {
        self.next_deadline(Instant::now().checked_add(timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R, PoolError>> {
        if self.yielded >= self.total {
            return None;
        }
        let sh = &self.shared;
        let mut st = sh.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let got = if sh.ordered {
                match st.by_index.front_mut().and_then(Option::take) {
                    Some(v) => {
                        st.by_index.pop_front();
                        st.base += 1;
                        Some(v)
                    }
                    None => None,
                }
            } else {
                st.arrived.pop_front()
            };
            if let Some(v) = got {
                self.yielded += 1;
                return Some(v);
            }
            st = match deadline {
                None => sh.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Some(Err(PoolError::Timeout));
                    }
                    sh.cond
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

impl<R> Iterator for IMapIterator<R> {
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_deadline(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.yielded;
        (left, Some(left))
    }
}

impl<R> ExactSizeIterator for IMapIterator<R> {}
