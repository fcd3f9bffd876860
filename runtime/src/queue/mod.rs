//! `Queue`, `SimpleQueue` and `JoinableQueue` across processes.
//!
//! A queue is one `SOCK_SEQPACKET` socket pair shared by every process that
//! holds the queue: producers send on one end, consumers receive on the
//! other. Each item is one `sendmsg`, so items from many producers never
//! interleave and each receive takes exactly one whole item: no lock around
//! the socket, no feeder thread. Items over 60 KiB travel beside their frame,
//! in a socket or a sealed memfd of their own (see `channel`), so a producer
//! that puts a large item and exits never waits for a reader (CPython's
//! gh-73983 join deadlock cannot happen for them).
//!
//! `qsize` must be exact and `maxsize` enforced across processes, which the
//! socket cannot tell; a small shared page (a sealed memfd mapped
//! `MAP_SHARED`) holds the item count and the count of unfinished tasks.
//! `put` reserves a slot (increments) before sending, `get` releases it after
//! receiving, and a `put` that finds the queue full sleeps on a
//! process-shared futex until a `get` wakes it. An unbounded queue needs no
//! such check, so it counts puts and gets in two words on separate cache
//! lines (`qsize` is their difference): producer and consumer then never
//! write the same line, which would otherwise move between their CPUs on
//! every item. A holder killed between the two steps leaves the count off by
//! one: the items themselves are never lost or duplicated by the queue.
//!
//! Unbounded queues still have the kernel's socket buffer as a limit: the
//! queue asks for an 8 MiB send buffer, which `net.core.wmem_max` caps
//! (about 10,000 small items in flight at 4 MiB, under 300 at the common
//! 208 KiB default). Past it `put` waits for a reader rather than buffering
//! without bound in the producer; large items cost one small frame each.

mod shared_counter;

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::{Channel, Incoming, MAX_BODY, Outgoing, RecvError};
use crate::codec;
use crate::connection::ser_fd;
use crate::error::Error;
use shared_counter::{SharedWords, futex_wait, futex_wake};

/// Send buffer asked for (capped by `net.core.wmem_max`).
const SEND_BUFFER: usize = 8 << 20;

/// Index of the item count in the shared page; in an unbounded queue, the
/// count of items put (the count taken is [`TAKEN`]).
const COUNT: usize = 0;
/// Index of the count of items taken from an unbounded queue (own cache
/// line: written by consumers only, so a producer and a consumer never
/// write the same line and each keeps its counter in its own cache).
const TAKEN: usize = 32;
/// Index of the number of `put`s sleeping on a full queue.
const PUT_WAITERS: usize = 1;
/// Index of the unfinished-task count (own cache line).
const UNFINISHED: usize = 16;

/// Why a `put` failed; every variant gives the item back.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum PutError<T> {
    /// The queue stayed full: `put_nowait`, or `put_timeout` ran out of
    /// time (Python's `queue.Full`).
    #[error("the queue is full")]
    Full(T),
    /// [`Queue::close`] was called on this handle.
    #[error("the queue is closed")]
    Closed(T),
    /// The item could not be encoded, or the OS failed.
    #[error("put failed: {1}")]
    Failed(T, Error),
}

impl<T> std::fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::Closed(t) | PutError::Failed(t, _) => t,
        }
    }

    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

impl<T> From<PutError<T>> for Error {
    /// Drops the item: `Full` becomes [`Error::Timeout`], `Closed`
    /// [`Error::Closed`].
    fn from(e: PutError<T>) -> Error {
        match e {
            PutError::Full(_) => Error::Timeout,
            PutError::Closed(_) => Error::Closed,
            PutError::Failed(_, e) => e,
        }
    }
}

/// Why a `get` returned no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// No item came: `get_nowait`, or `get_timeout` ran out of time
    /// (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// [`Queue::close`] was called on this handle.
    #[error("the queue is closed")]
    Closed,
    /// An item arrived but did not decode (it is consumed), or the OS failed.
    #[error("get failed: {0}")]
    Failed(Error),
}

impl From<GetError> for Error {
    /// `Empty` becomes [`Error::Timeout`], `Closed` [`Error::Closed`].
    fn from(e: GetError) -> Error {
        match e {
            GetError::Empty => Error::Timeout,
            GetError::Closed => Error::Closed,
            GetError::Failed(e) => e,
        }
    }
}

/// `task_done` was called more times than items were put (Python's
/// `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than items were put")]
pub struct TaskDoneError;

impl From<TaskDoneError> for Error {
    fn from(e: TaskDoneError) -> Error {
        Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

#[derive(Debug)]
struct Inner {
    rx: Channel,
    tx: Channel,
    shared: SharedWords,
    maxsize: u32,
    closed: AtomicBool,
}

#[derive(Clone, Copy)]
enum Wait {
    Block,
    Until(Instant),
    No,
}

impl Wait {
    fn after(t: Duration) -> Wait {
        Instant::now()
            .checked_add(t)
            .map_or(Wait::Block, Wait::Until)
    }
}

impl Inner {
    fn new(maxsize: usize) -> std::io::Result<Inner> {
        let (rx, tx) = Channel::pair()?;
        // Room for thousands of unread small items where the system allows
        // (a few hundred with the default buffer).
        tx.grow_send_buffer(SEND_BUFFER);
        Ok(Inner {
            rx,
            tx,
            shared: SharedWords::new()?,
            maxsize: u32::try_from(maxsize).unwrap_or(u32::MAX),
            closed: AtomicBool::new(false),
        })
    }

    fn count(&self) -> &std::sync::atomic::AtomicU32 {
        self.shared.word(COUNT)
    }

    /// Takes a slot; `false` when the queue stayed full.
    fn reserve(&self, wait: Wait) -> bool {
        let count = self.count();
        if self.maxsize == 0 {
            count.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        loop {
            let c = count.load(Ordering::Acquire);
            if c < self.maxsize {
                if count
                    .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            let left = match wait {
                Wait::No => return false,
                Wait::Block => None,
                Wait::Until(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    Some(left)
                }
            };
            let waiters = self.shared.word(PUT_WAITERS);
            waiters.fetch_add(1, Ordering::AcqRel);
            futex_wait(count, c, left);
            waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Undoes the `reserve` of a put that failed.
    fn unreserve(&self) {
        if self.maxsize == 0 {
            self.count().fetch_sub(1, Ordering::AcqRel);
        } else {
            self.release();
        }
    }

    /// The number of items in the queue.
    fn len(&self) -> u32 {
        let c = if self.maxsize == 0 {
            let taken = self.shared.word(TAKEN).load(Ordering::Acquire);
            self.count().load(Ordering::Acquire).wrapping_sub(taken)
        } else {
            self.count().load(Ordering::Acquire)
        };
        // Past i32::MAX is a count gone below zero: an item taken that no
        // `put` counted (a frame sent on the socket by hand), or the instant
        // `release` undoes a wrap.
        if c > i32::MAX as u32 { 0 } else { c }
    }

    /// Gives a slot back after a get.
    fn release(&self) {
        if self.maxsize == 0 {
            self.shared.word(TAKEN).fetch_add(1, Ordering::AcqRel);
            return;
        }
        // One atomic instruction (the word is shared with every producer's
        // cache: a load then a compare-exchange would move it twice). The
        // count is 0 here only when a holder died between its reserve and
        // its send, or a peer sent an item by hand: undo the wrap then.
        if self.count().fetch_sub(1, Ordering::AcqRel) == 0 {
            self.count().fetch_add(1, Ordering::AcqRel);
        }
        if self.maxsize > 0 && self.shared.word(PUT_WAITERS).load(Ordering::Acquire) > 0 {
            futex_wake(self.count(), u32::MAX);
        }
    }

    /// Puts raw bytes as one item (for tests of what a peer may send).
    #[cfg(test)]
    fn put_bytes(
        &self,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<(), Option<Error>> {
        let out = crate::channel::outgoing_of(bytes).map_err(|e| Some(Error::Io(e)))?;
        self.put_outgoing(&out, fds, wait)
    }

    fn put_outgoing(
        &self,
        out: &Outgoing,
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<(), Option<Error>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Some(Error::Closed));
        }
        if !self.reserve(wait) {
            return Err(None);
        }
        self.shared.word(UNFINISHED).fetch_add(1, Ordering::AcqRel);
        let sent = match wait {
            Wait::Block => self.tx.send_outgoing(out, fds, false),
            Wait::Until(d) => self.tx.send_outgoing_until(out, fds, d),
            Wait::No => self.tx.send_outgoing(out, fds, true),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.word(UNFINISHED).fetch_sub(1, Ordering::AcqRel);
                self.unreserve();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Err(None),
                    _ => Err(Some(Error::Io(e))),
                }
            }
        }
    }

    fn get_incoming(&self, wait: Wait) -> Result<(Incoming, Vec<OwnedFd>), GetError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        let got = match wait {
            Wait::Block => self.rx.recv_incoming(None, MAX_BODY),
            Wait::Until(d) => self.rx.recv_incoming(Some(d), MAX_BODY),
            Wait::No => self.rx.try_recv_incoming(MAX_BODY),
        };
        match got {
            Ok(m) => {
                self.release();
                Ok(m)
            }
            Err(RecvError::Timeout) => Err(GetError::Empty),
            Err(RecvError::Closed) => Err(GetError::Closed),
            Err(RecvError::Malformed(m)) => {
                self.release();
                Err(GetError::Failed(Error::Codec(m)))
            }
            Err(RecvError::Io(e)) => Err(GetError::Failed(Error::Io(e))),
        }
    }
}

/// A FIFO queue shared by any number of processes and threads (Python's
/// `multiprocessing.Queue`).
///
/// Clone it to share it between threads; pass it to a child (as an argument,
/// inside a struct, through a [`Connection`](crate::connection::Connection)
/// or another queue) to share it between processes. Every clone, in every
/// process, is the same queue.
///
/// # Examples
/// ```
/// # mproc::bootstrap!();
/// # fn main() -> mproc::Result<()> {
/// use mproc::Queue;
///
/// fn f(q: Queue<(u32, Option<String>)>) {
///     q.put((42, Some("hello".into()))).unwrap();
/// }
///
/// let q = Queue::new()?;
/// let mut p = mproc::get_context("spawn")?.process(f, q.clone()).start()?;
/// assert_eq!(q.get()?, (42, Some("hello".to_string())));
/// p.join()?;
/// # Ok(()) }
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("maxsize", &self.inner.maxsize)
            .field("qsize", &self.qsize())
            .finish()
    }
}

impl<T> AsFd for Queue<T> {
    /// The reading end: readable when an item may be waiting (for
    /// [`wait`](crate::connection::wait); Python's `q._reader`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.rx.fd()
    }
}

impl<T> Queue<T> {
    /// An unbounded queue (Python's `Queue()`).
    ///
    /// # Errors
    /// When the socket pair or the shared page cannot be created.
    pub fn new() -> crate::Result<Self> {
        Self::with_maxsize(0)
    }

    /// A queue holding at most `maxsize` items; 0 means unbounded (Python's
    /// `Queue(maxsize)`).
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn with_maxsize(maxsize: usize) -> crate::Result<Self> {
        Ok(Queue {
            inner: Arc::new(Inner::new(maxsize)?),
            _t: PhantomData,
        })
    }

    /// The bound given at creation; 0 for unbounded.
    pub fn maxsize(&self) -> usize {
        self.inner.maxsize as usize
    }

    /// The number of items in the queue, exactly: every `put` that has
    /// returned and not yet been taken by a `get`, in any process (Python's
    /// `qsize`, which is only approximate there).
    pub fn qsize(&self) -> usize {
        self.inner.len() as usize
    }

    /// Whether the queue holds no item (Python's `empty`).
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether a bounded queue holds `maxsize` items (Python's `full`).
    pub fn full(&self) -> bool {
        self.inner.maxsize > 0 && self.qsize() >= self.maxsize()
    }

    /// This process will put and get no more through this handle and its
    /// clones (Python's `close`); other processes are unaffected.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
    }
}

impl<T: Serialize> Queue<T> {
    fn put_wait(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        let enc = match codec::encode_message(&item, MAX_BODY) {
            Ok(x) => x,
            Err(e) => return Err(PutError::Failed(item, e)),
        };
        let Some(body) = &enc.body else {
            unreachable!("encode_message sets the body");
        };
        let borrowed: Vec<BorrowedFd<'_>> = enc.fds.iter().map(|f| f.as_fd()).collect();
        match self.inner.put_outgoing(body, &borrowed, wait) {
            Ok(()) => Ok(()),
            Err(None) => Err(PutError::Full(item)),
            Err(Some(Error::Closed)) => Err(PutError::Closed(item)),
            Err(Some(e)) => Err(PutError::Failed(item, e)),
        }
    }

    /// Puts `item` at the back, waiting while a bounded queue is full
    /// (Python's `put`).
    ///
    /// # Errors
    /// [`PutError::Closed`] after [`Queue::close`]; [`PutError::Failed`] when
    /// the item cannot be encoded. The item comes back in the error.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::Block)
    }

    /// [`put`](Queue::put) waiting at most `timeout` for room (Python's
    /// `put(item, timeout=…)`).
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Full`] when no room came in time.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::after(timeout))
    }

    /// [`put`](Queue::put) without waiting (Python's `put_nowait`).
    ///
    /// # Errors
    /// As `put`, plus [`PutError::Full`] when there is no room now.
    ///
    /// # Examples
    /// ```
    /// let q = mproc::Queue::with_maxsize(1)?;
    /// q.put_nowait(1)?;
    /// let err = q.put_nowait(2).unwrap_err();
    /// assert!(err.is_full());
    /// assert_eq!(err.into_inner(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::No)
    }
}

impl<T: DeserializeOwned> Queue<T> {
    fn get_wait(&self, wait: Wait) -> Result<T, GetError> {
        let (msg, fds) = self.inner.get_incoming(wait)?;
        codec::decode(msg.body(), fds).map_err(GetError::Failed)
    }

    /// Takes the item at the front, waiting for one (Python's `get`).
    ///
    /// # Errors
    /// [`GetError::Closed`] after [`Queue::close`]; [`GetError::Failed`]
    /// when the item does not decode as a `T` (it is consumed).
    pub fn get(&self) -> Result<T, GetError> {
        self.get_wait(Wait::Block)
    }

    /// [`get`](Queue::get) waiting at most `timeout` (Python's
    /// `get(timeout=…)`).
    ///
    /// # Errors
    /// As `get`, plus [`GetError::Empty`] when no item came in time.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_wait(Wait::after(timeout))
    }

    /// [`get`](Queue::get) without waiting (Python's `get_nowait`).
    ///
    /// # Errors
    /// As `get`, plus [`GetError::Empty`] when no item is there now.
    ///
    /// # Examples
    /// ```
    /// let q = mproc::Queue::<u8>::new()?;
    /// assert!(matches!(q.get_nowait(), Err(mproc::GetError::Empty)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_nowait(&self) -> Result<T, GetError> {
        self.get_wait(Wait::No)
    }
}

#[derive(Serialize)]
struct QueueRef<'a> {
    #[serde(serialize_with = "ser_fd")]
    rx: BorrowedFd<'a>,
    #[serde(serialize_with = "ser_fd")]
    tx: BorrowedFd<'a>,
    #[serde(serialize_with = "ser_fd")]
    shared: BorrowedFd<'a>,
    maxsize: u32,
}

#[derive(Deserialize)]
struct QueueOwned {
    #[serde(with = "crate::fd")]
    rx: OwnedFd,
    #[serde(with = "crate::fd")]
    tx: OwnedFd,
    #[serde(with = "crate::fd")]
    shared: OwnedFd,
    maxsize: u32,
}

impl<T> Serialize for Queue<T> {
    /// Sends duplicates of the queue's fds out of band; fails outside
    /// `mproc`'s own encoding.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        QueueRef {
            rx: self.inner.rx.fd(),
            tx: self.inner.tx.fd(),
            shared: self.inner.shared.fd(),
            maxsize: self.inner.maxsize,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let q = QueueOwned::deserialize(d)?;
        let shared = SharedWords::from_fd(q.shared).map_err(D::Error::custom)?;
        Ok(Queue {
            inner: Arc::new(Inner {
                rx: Channel::from_fd(q.rx),
                tx: Channel::from_fd(q.tx),
                shared,
                maxsize: q.maxsize,
                closed: AtomicBool::new(false),
            }),
            _t: PhantomData,
        })
    }
}

/// An unbounded queue with only `put`, `get`, `empty` and `close` (Python's
/// `multiprocessing.SimpleQueue`).
///
/// # Examples
/// ```
/// let q = mproc::SimpleQueue::new()?;
/// q.put("x".to_string())?;
/// assert_eq!(q.get()?, "x");
/// assert!(q.empty());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> std::fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T> AsFd for SimpleQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl<T> SimpleQueue<T> {
    /// A new queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> crate::Result<Self> {
        Ok(SimpleQueue(Queue::new()?))
    }

    /// Whether it holds no item (Python's `empty`).
    pub fn empty(&self) -> bool {
        self.0.empty()
    }

    /// Closes this process's handle (Python's `close`).
    pub fn close(&self) {
        self.0.close()
    }
}

impl<T: Serialize> SimpleQueue<T> {
    /// Puts `item` (Python's `put`).
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }
}

impl<T: DeserializeOwned> SimpleQueue<T> {
    /// Takes an item, waiting for one (Python's `get`).
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }
}

/// A [`Queue`] that also counts unfinished tasks (Python's
/// `multiprocessing.JoinableQueue`): each `put` adds one, each
/// [`task_done`](JoinableQueue::task_done) removes one, and
/// [`join`](JoinableQueue::join) waits for zero. It dereferences to the
/// `Queue` for everything else.
///
/// # Examples
/// ```
/// let q = mproc::JoinableQueue::new()?;
/// q.put(1)?;
/// assert_eq!(q.get()?, 1);
/// q.task_done()?;
/// q.join_timeout(std::time::Duration::from_secs(5))?;
/// assert!(q.task_done().is_err());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.0)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> crate::Result<Self> {
        Ok(JoinableQueue(Queue::new()?))
    }

    /// A joinable queue holding at most `maxsize` items (0: unbounded).
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn with_maxsize(maxsize: usize) -> crate::Result<Self> {
        Ok(JoinableQueue(Queue::with_maxsize(maxsize)?))
    }

    fn unfinished(&self) -> u32 {
        self.0.inner.shared.word(UNFINISHED).load(Ordering::Acquire)
    }

    /// Marks one item taken by `get` as processed (Python's `task_done`).
    ///
    /// # Errors
    /// [`TaskDoneError`] when called more times than items were put.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let word = self.0.inner.shared.word(UNFINISHED);
        let prev = word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1))
            .map_err(|_| TaskDoneError)?;
        if prev == 1 {
            futex_wake(word, u32::MAX);
        }
        Ok(())
    }

    fn join_until(&self, deadline: Option<Instant>) -> crate::Result<()> {
        let word = self.0.inner.shared.word(UNFINISHED);
        loop {
            let u = word.load(Ordering::Acquire);
            if u == 0 {
                return Ok(());
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout);
                    }
                    Some(left)
                }
            };
            futex_wait(word, u, left);
        }
    }

    /// Waits until every item put has been marked done (Python's `join`).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for the OS to fail.
    pub fn join(&self) -> crate::Result<()> {
        self.join_until(None)
    }

    /// [`join`](JoinableQueue::join) giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when tasks remain unfinished.
    pub fn join_timeout(&self, timeout: Duration) -> crate::Result<()> {
        self.join_until(Instant::now().checked_add(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_item_is_a_decode_error_and_releases_its_slot() {
        let q: Queue<String> = Queue::with_maxsize(1).unwrap();
        q.inner
            .put_bytes(&[0xff, 0xff, 0xff], &[], Wait::No)
            .unwrap();
        assert!(q.full());
        match q.get_nowait() {
            Err(GetError::Failed(Error::Codec(_))) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(q.qsize(), 0);
        q.put_nowait("ok".into()).unwrap();
        assert_eq!(q.get_nowait().unwrap(), "ok");
    }

    #[test]
    fn unbounded_qsize_counts_puts_less_gets() {
        let q: Queue<u32> = Queue::new().unwrap();
        for i in 0..3 {
            q.put(i).unwrap();
        }
        assert_eq!(q.qsize(), 3);
        assert_eq!(q.get_nowait().unwrap(), 0);
        assert_eq!(q.qsize(), 2);
        q.get_nowait().unwrap();
        q.get_nowait().unwrap();
        assert!(q.empty());
        // A frame sent on the socket by hand was never counted: taking it
        // leaves the count at zero, not at four billion.
        q.inner.tx.send(&[7], &[]).unwrap();
        assert_eq!(q.get_nowait().unwrap(), 7);
        assert_eq!(q.qsize(), 0);
        assert!(q.empty() && !q.full());
    }

    #[test]
    fn hostile_state_fd_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(SharedWords::from_fd(OwnedFd::from(a)).is_err());
    }
}
