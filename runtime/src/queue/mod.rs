//! `Queue`, `SimpleQueue` and `JoinableQueue` across processes.
//!
//! A queue is a ring of entries in shared memory (see `ring`), plus one
//! `SOCK_SEQPACKET` socket pair, shared by every process that holds the
//! queue. A small item without fds is copied into the ring under a robust
//! lock and copied out by the `get` that pops it: no system call on either
//! side while the consumer keeps up, which is what lets a queue move
//! several million small items a second where a socket per item moves well
//! under one million. An item that carries fds, or whose encoding is over
//! 16 KiB, goes on the socket instead, and a marker takes its place in the
//! ring; both are written under one hold of the lock, so items leave in the
//! order they were put whatever path each took. Items over 60 KiB travel
//! beside their frame, in a socket or a sealed memfd of their own (see
//! `channel`), so a producer that puts a large item and exits never waits
//! for a reader (CPython's gh-73983 join deadlock cannot happen for them).
//!
//! The ring counts its entries under the lock, so `qsize` is exact and
//! `maxsize` is enforced across processes. A `put` on a full bounded queue
//! sleeps on a process-shared futex until a `get` wakes it. A `get` on an
//! empty queue spins briefly (a producer on another CPU usually delivers
//! within a few microseconds), then sleeps on the queue's doorbell, an
//! `eventfd` that a `put` writes only when the ring goes from silent to
//! ringing; the same fd is what [`wait`](crate::connection::wait) polls.
//!
//! A process killed while holding the lock hands it on (the kernel marks a
//! robust futex's owner dead); the next holder recounts the ring's entries
//! and carries on. Frames and markers are numbered: a `put` takes the next
//! sequence number (and stores the one after) before it sends its frame,
//! puts the number in front of the frame and in the marker, and a `get`
//! receives the frame of the marker it popped *under the lock*, dropping
//! the frames ahead of it (older numbers, whose marker was never pushed or
//! whose `get` died before receiving them). So a producer killed at any
//! instant of a `put` leaves its item in the queue whole or not at all, and
//! never shifts the items after it; a consumer killed in a `get` loses the
//! item it was taking and no other. `docs/architecture.md` gives the
//! argument point by point; `failpoint` lets tests kill a process at each
//! point.
//!
//! Unbounded queues still have limits: the ring holds 256 KiB of entries
//! (about 16,000 small items). A blocking `put` on a full ring waits until
//! readers have emptied half of it; `put_nowait` and `put_timeout` go to
//! the socket instead, where the queue asks for an 8 MiB send buffer
//! (capped by `net.core.wmem_max`) and past that report the queue full.

// Public with the `internals` feature (this crate's tests and fuzzer);
// otherwise nothing can arm a point, and each costs one relaxed load.
#[cfg(feature = "internals")]
pub mod failpoint;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub, dead_code)]
mod failpoint;
pub(crate) mod ring;

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::{Channel, Frame, Incoming, MAX_BODY, Outgoing, RecvError};
use crate::codec;
use crate::connection::ser_fd;
use crate::error::Error;
use crate::shm::sys::{RECHECK, futex_wait, futex_wake};
use failpoint::Point;
use ring::{Kind, Ring};

/// Send buffer asked for (capped by `net.core.wmem_max`).
const SEND_BUFFER: usize = 8 << 20;

/// How long a `put_nowait` or `get_nowait` waits for the ring's lock, which
/// its holder keeps for well under a microsecond (a `nowait` call must not
/// fail just because another process was copying an item).
const LOCK_PATIENCE: Duration = Duration::from_millis(50);

/// Bytes in front of every frame on a queue's socket: the frame's sequence
/// number, the one its marker carries.
const SEQ_PREFIX: usize = 4;

/// Most frames one `get` drops while it holds the lock (frames nobody
/// waits for: only a process sending outside the protocol makes more).
const DROP_MAX: u32 = 1 << 16;

thread_local! {
    /// The buffer the last ring item was copied into, for the next `get`.
    static POP_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

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
    /// [`Queue::shutdown`] was called, in any process (Python's
    /// `queue.ShutDown`).
    #[error("the queue is shut down")]
    ShutDown(T),
    /// The item could not be encoded, or the OS failed.
    #[error("put failed: {1}")]
    Failed(T, Error),
}

impl<T> std::fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::ShutDown(_) => f.write_str("ShutDown(..)"),
            PutError::Failed(_, e) => write!(f, "Failed(.., {e:?})"),
        }
    }
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t)
            | PutError::Closed(t)
            | PutError::ShutDown(t)
            | PutError::Failed(t, _) => t,
        }
    }

    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

impl<T> From<PutError<T>> for Error {
    /// Drops the item: `Full` becomes [`Error::Timeout`], `Closed` and
    /// `ShutDown` [`Error::Closed`].
    fn from(e: PutError<T>) -> Error {
        match e {
            PutError::Full(_) => Error::Timeout,
            PutError::Closed(_) | PutError::ShutDown(_) => Error::Closed,
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
    /// [`Queue::shutdown`] was called, in any process, and no item is left
    /// to take (Python's `queue.ShutDown`).
    #[error("the queue is shut down")]
    ShutDown,
    /// An item arrived but did not decode (it is consumed), or the OS failed.
    #[error("get failed: {0}")]
    Failed(Error),
}

impl From<GetError> for Error {
    /// `Empty` becomes [`Error::Timeout`], `Closed` and `ShutDown`
    /// [`Error::Closed`].
    fn from(e: GetError) -> Error {
        match e {
            GetError::Empty => Error::Timeout,
            GetError::Closed | GetError::ShutDown => Error::Closed,
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
    ring: Ring,
    rx: Channel,
    tx: Channel,
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

    /// How long to wait for the ring's lock.
    fn lock_deadline(self) -> Option<Instant> {
        match self {
            Wait::Block => None,
            Wait::Until(d) => Some(d.max(Instant::now() + LOCK_PATIENCE)),
            Wait::No => Some(Instant::now() + LOCK_PATIENCE),
        }
    }

    /// Time left before the deadline: `Some(None)` for ever, `None` when
    /// it has passed (or for `No`).
    fn left(self) -> Option<Option<Duration>> {
        match self {
            Wait::Block => Some(None),
            Wait::No => None,
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(Some(left))
            }
        }
    }
}

/// What a `get` took: an item copied out of the ring, or a frame from the
/// socket (opened once the lock is released: a large body is read from its
/// own container then).
enum Taken {
    Ring(Vec<u8>),
    Raw(Frame),
}

impl Inner {
    fn new(maxsize: usize) -> std::io::Result<Inner> {
        let (rx, tx) = Channel::pair()?;
        // Room for thousands of unread items with fds, or too large for
        // the ring, where the system allows (a few hundred with the default
        // buffer).
        tx.grow_send_buffer(SEND_BUFFER);
        Ok(Inner {
            ring: Ring::new()?,
            rx,
            tx,
            maxsize: u32::try_from(maxsize).unwrap_or(u32::MAX),
            closed: AtomicBool::new(false),
        })
    }

    /// The number of items in the queue.
    fn len(&self) -> u32 {
        self.ring.len()
    }

    /// Sleeps until a `get` makes room (or the deadline passes: `false`).
    /// The caller found the queue full under `g`.
    fn wait_room(&self, g: ring::Guard<'_>, wait: Wait) -> bool {
        let Some(left) = wait.left() else {
            return false;
        };
        let room = self.ring.room();
        let seq = room.load(Ordering::Acquire);
        self.ring.room_waiters().fetch_add(1, Ordering::AcqRel);
        drop(g);
        futex_wait(room, seq, left);
        self.ring.room_waiters().fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Whether the queue was shut down, by any process.
    fn is_shutdown(&self) -> bool {
        self.ring.shutdown_flag().load(Ordering::Acquire) != 0
    }

    /// Puts one encoded item: into the ring when it is small and carries no
    /// fds, else on the socket with a marker in the ring. `Err(None)`: the
    /// queue stayed full, or is shut down.
    fn put_outgoing(
        &self,
        out: &Outgoing,
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<(), Option<Error>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Some(Error::Closed));
        }
        let inline = out
            .inline_body()
            .filter(|b| fds.is_empty() && b.len() <= ring::ITEM_MAX);
        self.put_loop(inline, out, fds, wait)
    }

    fn put_loop(
        &self,
        inline: Option<&[u8]>,
        out: &Outgoing,
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<(), Option<Error>> {
        loop {
            let Some(g) = self.ring.lock(wait.lock_deadline()) else {
                return Err(None);
            };
            if self.is_shutdown() {
                return Err(None);
            }
            if self.maxsize > 0 && g.count() >= self.maxsize {
                if !self.wait_room(g, wait) {
                    return Err(None);
                }
                continue;
            }
            // The unfinished-task count goes up under the lock just before
            // the item goes in: before any `get` can take it (so a
            // `task_done` right after that `get` never finds zero), and
            // not while the `put` waits for room (a producer killed then
            // leaves the count alone).
            let unfinished = self.ring.unfinished();
            if let Some(bytes) = inline {
                unfinished.fetch_add(1, Ordering::AcqRel);
                if g.push(Kind::Item, bytes) {
                    failpoint::hit(Point::Pushed);
                    drop(g);
                    failpoint::hit(Point::PutUnlocked);
                    return Ok(());
                }
                unfinished.fetch_sub(1, Ordering::AcqRel);
                // The ring is full of unread items. A blocking put sleeps
                // until readers have emptied half of it (one wake-up per
                // half ring, not one per item); the others try the socket.
                if matches!(wait, Wait::Block) {
                    self.wait_room(g, wait);
                    continue;
                }
            }
            if !g.has_marker_room() {
                if !self.wait_room(g, wait) {
                    return Err(None);
                }
                continue;
            }
            // Numbered and sent under the lock, so frames and markers keep
            // one order. The number is taken first: a frame sent by a
            // process that dies before it pushes the marker keeps a number
            // no later marker has, and the `get` that meets it drops it.
            let seq = g.next_seq();
            unfinished.fetch_add(1, Ordering::AcqRel);
            failpoint::hit(Point::Numbered);
            match self
                .tx
                .send_outgoing_prefixed(&seq.to_le_bytes(), out, fds, true)
            {
                Ok(()) => {
                    failpoint::hit(Point::Sent);
                    let pushed = g.push(Kind::Marker(seq), &[]);
                    debug_assert!(pushed, "room was checked under the lock");
                    failpoint::hit(Point::Pushed);
                    drop(g);
                    failpoint::hit(Point::PutUnlocked);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    unfinished.fetch_sub(1, Ordering::AcqRel);
                    drop(g);
                    let Some(left) = wait.left() else {
                        return Err(None);
                    };
                    crate::sys::wait_writable(self.tx.fd(), left)
                        .map_err(|e| Some(Error::Io(e)))?;
                }
                Err(e) => {
                    unfinished.fetch_sub(1, Ordering::AcqRel);
                    return Err(Some(Error::Io(e)));
                }
            }
        }
    }

    fn take(&self, wait: Wait) -> Result<Taken, GetError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        let mut spun = false;
        loop {
            let Some(g) = self.ring.lock(wait.lock_deadline()) else {
                return Err(GetError::Empty);
            };
            if g.orphans() && g.markers() == 0 {
                self.drop_orphans(&g);
            }
            let mut buf = POP_BUF.take();
            match g.pop(&mut buf) {
                Ok(Some(kind)) => {
                    // Wake sleeping `put`s: at every get of a bounded
                    // queue, and when half the ring is free otherwise.
                    let wake = self.ring.room_waiters().load(Ordering::Acquire) > 0
                        && (self.maxsize > 0 || g.used() <= ring::CAPACITY / 2);
                    if wake {
                        g.bump_room();
                    }
                    let got = match kind {
                        Kind::Item => Ok(Some(Taken::Ring(buf))),
                        Kind::Marker(seq) => {
                            POP_BUF.set(buf);
                            // Received under the lock: no other `get` can
                            // take this frame, and none can be taking an
                            // older one.
                            self.recv_frame(&g, seq).map(|f| {
                                f.map(|f| {
                                    failpoint::hit(Point::Received);
                                    Taken::Raw(f)
                                })
                            })
                        }
                    };
                    drop(g);
                    if wake {
                        ring::wake_room(&self.ring);
                    }
                    match got {
                        Ok(Some(t)) => {
                            failpoint::hit(Point::GetUnlocked);
                            return Ok(t);
                        }
                        // A marker whose frame is not there: the next entry.
                        Ok(None) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(None) => {
                    POP_BUF.set(buf);
                    // Checked under the lock that `shutdown` rings the
                    // doorbell under: a sleeper is woken to see it.
                    if self.is_shutdown() {
                        return Err(GetError::ShutDown);
                    }
                    // A producer on another CPU usually delivers within
                    // the spin, and then neither side makes a system call.
                    if !matches!(wait, Wait::No) && !spun {
                        drop(g);
                        spun = true;
                        crate::spin::until(crate::spin::QUEUE_GET, || {
                            (self.ring.count() > 0).then_some(())
                        });
                        continue;
                    }
                    g.disarm();
                    drop(g);
                    let Some(left) = wait.left() else {
                        return Err(GetError::Empty);
                    };
                    // Never longer than `RECHECK`: a producer killed after
                    // committing its entry and before ringing leaves the
                    // doorbell silent until the next lock repairs it, and
                    // looking again is the next lock.
                    let nap = left.map_or(RECHECK, |l| l.min(RECHECK));
                    crate::sys::wait_readable(self.ring.doorbell(), Some(nap))
                        .map_err(|e| GetError::Failed(Error::Io(e)))?;
                }
                Err(e) => {
                    POP_BUF.set(buf);
                    return Err(GetError::Failed(Error::Codec(format!(
                        "queue ring corrupt ({}); its items are lost",
                        e.0
                    ))));
                }
            }
        }
    }

    /// Receives, under the lock, the frame that the popped marker `seq`
    /// stands for. The frames ahead of it have no marker left in the ring
    /// (their `put` died before pushing one, or their `get` died before
    /// receiving them): they are dropped. `None` when the frame is not on
    /// the socket, which only a process writing outside the protocol causes.
    fn recv_frame(&self, g: &ring::Guard<'_>, seq: u32) -> Result<Option<Frame>, GetError> {
        for _ in 0..DROP_MAX {
            let frame = match self.rx.recv_frame_now(true) {
                Ok(f) => f,
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(None);
                }
                // An empty frame (every sender cannot be gone: this
                // process holds one): not a queue frame.
                Err(RecvError::Closed) => continue,
                Err(RecvError::Timeout) => return Ok(None),
                Err(RecvError::Malformed(m)) => return Err(GetError::Failed(Error::Codec(m))),
                Err(RecvError::Io(e)) => return Err(GetError::Failed(Error::Io(e))),
            };
            match frame_seq(&frame) {
                Some(s) if ring::seq_before(s, seq) => {}
                None => {}
                Some(s) => {
                    if s != seq {
                        // Newer than its marker: the ring and the socket
                        // are out of step (not something the protocol
                        // does). Hand it out, and have the socket emptied
                        // once the ring holds no marker, which brings them
                        // back in step.
                        tracing::warn!(marker = seq, frame = s, "queue frame out of step");
                        g.set_orphans(true);
                    }
                    return Ok(Some(frame));
                }
            }
        }
        g.set_orphans(true);
        Ok(None)
    }

    /// Drops every frame on the socket. Called under the lock with no
    /// marker in the ring: no frame on the socket has a marker to stand
    /// for it, so each one's `put` or `get` died half way.
    fn drop_orphans(&self, g: &ring::Guard<'_>) {
        for _ in 0..DROP_MAX {
            match self.rx.recv_frame_now(true) {
                Ok(_) | Err(RecvError::Closed) => {}
                Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    g.set_orphans(false);
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// The sequence number in front of a frame from a queue's socket.
fn frame_seq(frame: &Frame) -> Option<u32> {
    let b = frame.bytes().get(..SEQ_PREFIX)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Opens a frame taken from a queue's socket.
fn open_frame(frame: Frame) -> Result<(Incoming, Vec<OwnedFd>), GetError> {
    frame.open(SEQ_PREFIX, MAX_BODY).map_err(|e| match e {
        RecvError::Closed => GetError::Closed,
        RecvError::Timeout => GetError::Empty,
        RecvError::Malformed(m) => GetError::Failed(Error::Codec(m)),
        RecvError::Io(e) => GetError::Failed(Error::Io(e)),
    })
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
    /// The doorbell, an `eventfd`: readable when an item may be waiting
    /// (for [`wait`](crate::connection::wait); Python's `q._reader`). It
    /// stays readable after the last item is taken until a `get` finds the
    /// queue empty.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.ring.doorbell()
    }
}

impl<T> Queue<T> {
    /// An unbounded queue (Python's `Queue()`).
    ///
    /// # Errors
    /// When the socket pair, the shared ring or its doorbell cannot be created.
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

    /// Shuts the queue down for every handle in every process (Python's
    /// `shutdown(immediate)`, 3.13's `queue.Queue` and CPython main's
    /// `multiprocessing.Queue`): `put`s fail with [`PutError::ShutDown`],
    /// including those waiting for room; `get`s take what is left, then fail
    /// with [`GetError::ShutDown`] instead of waiting. With `immediate`, what
    /// is left is dropped at once (items that carry fds close them), the
    /// unfinished-task count of a [`JoinableQueue`] goes down by as many,
    /// and `join` returns when it reaches zero.
    ///
    /// Calling it again is harmless; `shutdown(true)` after
    /// `shutdown(false)` drops what is left.
    ///
    /// # Examples
    /// ```
    /// use mproc::{GetError, PutError, Queue};
    /// let q = Queue::new()?;
    /// q.put(1)?;
    /// q.put(2)?;
    /// q.shutdown(false);
    /// assert!(q.is_shutdown());
    /// assert!(matches!(q.put(3), Err(PutError::ShutDown(3))));
    /// assert_eq!(q.get()?, 1); // what was put is still taken...
    /// q.shutdown(true); // ...unless shut down immediately
    /// assert!(matches!(q.get(), Err(GetError::ShutDown)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn shutdown(&self, immediate: bool) {
        let ring = &self.inner.ring;
        let Some(g) = ring.lock(None) else {
            return;
        };
        let flag = ring.shutdown_flag();
        flag.store(
            flag.load(Ordering::Acquire).max(1 + u32::from(immediate)),
            Ordering::Release,
        );
        let mut dropped = 0u32;
        if immediate {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = g.pop(&mut buf) {
                dropped += 1;
            }
            // No marker is left, so no frame on the socket stands for an
            // item any more: the frames of the dropped items go too, under
            // the lock that every frame is sent and received under.
            self.inner.drop_orphans(&g);
        }
        // Under the lock that every `get` checks the flag under before it
        // sleeps: ringing the doorbell wakes them all to see it.
        g.arm();
        g.bump_room();
        drop(g);
        ring::wake_room(ring);
        if dropped > 0 {
            let word = ring.unfinished();
            let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(dropped))
            });
            if word.load(Ordering::Acquire) == 0 {
                futex_wake(word, u32::MAX);
            }
        }
    }

    /// Whether [`shutdown`](Queue::shutdown) was called, in any process
    /// (Python's `is_shutdown`).
    pub fn is_shutdown(&self) -> bool {
        self.inner.is_shutdown()
    }

    /// The ring and the socket's two ends (for the fuzzer and tests).
    #[cfg(feature = "internals")]
    pub(crate) fn parts(&self) -> (&Ring, &Channel, &Channel) {
        (&self.inner.ring, &self.inner.rx, &self.inner.tx)
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
            Err(None) if self.inner.is_shutdown() => Err(PutError::ShutDown(item)),
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
        match self.inner.take(wait)? {
            Taken::Ring(buf) => {
                let v = codec::decode(&buf, Vec::new());
                POP_BUF.set(buf);
                v.map_err(GetError::Failed)
            }
            Taken::Raw(frame) => {
                let (msg, fds) = open_frame(frame)?;
                codec::decode(msg.body(), fds).map_err(GetError::Failed)
            }
        }
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

    /// [`get`](Queue::get) as a future: resolves to the item at the front
    /// without blocking a thread while the queue is empty, under any async
    /// runtime (see [`crate::future`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the item is taken only in the poll that returns it, so
    /// dropping the future (a `tokio::select!` branch not taken, a
    /// `tokio::time::timeout` that expired) never loses one.
    ///
    /// # Errors
    /// As [`get`](Queue::get); [`GetError::Failed`] with an I/O error when
    /// the waiter thread cannot be set up.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use mproc::Queue;
    ///
    /// fn produce(q: Queue<u32>) {
    ///     std::thread::sleep(Duration::from_millis(20));
    ///     q.put(7).unwrap();
    /// }
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// let q = Queue::new()?;
    /// let mut p = mproc::default_context().process(produce, q.clone()).start()?;
    /// let item = rt.block_on(async {
    ///     tokio::time::timeout(Duration::from_secs(30), q.get_async()).await
    /// })??;
    /// assert_eq!(item, 7);
    /// p.join()?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "get")]
    pub fn get_async(&self) -> crate::future::GetFuture<'_, T> {
        crate::future::GetFuture::new(self)
    }
}

#[derive(Serialize)]
struct QueueRef<'a> {
    #[serde(serialize_with = "ser_fd")]
    rx: BorrowedFd<'a>,
    #[serde(serialize_with = "ser_fd")]
    tx: BorrowedFd<'a>,
    #[serde(serialize_with = "ser_fd")]
    doorbell: BorrowedFd<'a>,
    #[serde(serialize_with = "ser_fd")]
    ring: BorrowedFd<'a>,
    maxsize: u32,
}

#[derive(Deserialize)]
struct QueueOwned {
    #[serde(with = "crate::fd")]
    rx: OwnedFd,
    #[serde(with = "crate::fd")]
    tx: OwnedFd,
    #[serde(with = "crate::fd")]
    doorbell: OwnedFd,
    #[serde(with = "crate::fd")]
    ring: OwnedFd,
    maxsize: u32,
}

impl<T> Serialize for Queue<T> {
    /// Sends duplicates of the queue's fds out of band; fails outside
    /// `mproc`'s own encoding.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        QueueRef {
            rx: self.inner.rx.fd(),
            tx: self.inner.tx.fd(),
            doorbell: self.inner.ring.doorbell(),
            ring: self.inner.ring.segment_fd(),
            maxsize: self.inner.maxsize,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let q = QueueOwned::deserialize(d)?;
        let ring = Ring::from_fds(q.ring, q.doorbell).map_err(D::Error::custom)?;
        Ok(Queue {
            inner: Arc::new(Inner {
                ring,
                rx: Channel::from_fd(q.rx),
                tx: Channel::from_fd(q.tx),
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
/// assert!(q.empty()?);
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
    ///
    /// # Errors
    /// [`GetError::Closed`] after [`close`](SimpleQueue::close) on this
    /// handle (Python raises `OSError`).
    ///
    /// # Examples
    /// ```
    /// let q = mproc::SimpleQueue::<u8>::new()?;
    /// assert!(q.empty()?);
    /// q.close();
    /// assert!(matches!(q.empty(), Err(mproc::GetError::Closed)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn empty(&self) -> Result<bool, GetError> {
        if self.0.inner.closed.load(Ordering::Relaxed) {
            return Err(GetError::Closed);
        }
        Ok(self.0.empty())
    }

    /// Closes this process's handle (Python's `close`); `put`, `get` and
    /// `empty` through it fail after.
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

    /// [`get`](SimpleQueue::get) as a future (see [`Queue::get_async`];
    /// cancel safe).
    ///
    /// # Errors
    /// As [`Queue::get_async`].
    ///
    /// # Examples
    /// ```
    /// let q = mproc::SimpleQueue::new()?;
    /// q.put(5u8)?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build()?;
    /// assert_eq!(rt.block_on(q.get_async())?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "get")]
    pub fn get_async(&self) -> crate::future::GetFuture<'_, T> {
        self.0.get_async()
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
        self.0.inner.ring.unfinished().load(Ordering::Acquire)
    }

    /// Marks one item taken by `get` as processed (Python's `task_done`).
    ///
    /// # Errors
    /// [`TaskDoneError`] when called more times than items were put.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let word = self.0.inner.ring.unfinished();
        let prev = word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1))
            .map_err(|_| TaskDoneError)?;
        if prev == 1 {
            futex_wake(word, u32::MAX);
        }
        Ok(())
    }

    fn join_until(&self, deadline: Option<Instant>) -> crate::Result<()> {
        let word = self.0.inner.ring.unfinished();
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

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn corrupt_item_is_a_decode_error_and_releases_its_slot() {
        let q: Queue<String> = Queue::with_maxsize(1).unwrap();
        let g = q.inner.ring.lock(None).unwrap();
        assert!(g.push(Kind::Item, &[0xff, 0xff, 0xff]));
        drop(g);
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
    fn qsize_counts_puts_less_gets_and_a_marker_without_frame_is_empty() {
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
        // A marker pushed by hand has no frame behind it: the get gives up
        // instead of waiting for ever, and the count is back at zero.
        assert!(q.inner.ring.lock(None).unwrap().push(Kind::Marker(0), &[]));
        assert_eq!(q.qsize(), 1);
        let t0 = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(10)),
            Err(GetError::Empty)
        ));
        assert!(t0.elapsed() < T);
        assert!(q.empty() && !q.full());
    }

    #[test]
    fn zero_byte_items_are_items() {
        let q: Queue<()> = Queue::new().unwrap();
        for _ in 0..3 {
            q.put(()).unwrap();
        }
        assert_eq!(q.qsize(), 3);
        for _ in 0..3 {
            q.get_nowait().unwrap();
        }
        assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
    }

    #[test]
    fn ring_socket_and_bulk_items_keep_their_order() {
        let q: Queue<crate::Bytes> = Queue::new().unwrap();
        let sizes = [1, ring::ITEM_MAX + 1, 3, 1 << 20, 5, 0, 100_000];
        for (i, n) in sizes.iter().enumerate() {
            q.put(crate::Bytes(vec![i as u8; *n])).unwrap();
        }
        assert_eq!(q.qsize(), sizes.len());
        for (i, n) in sizes.iter().enumerate() {
            let got = q.get_timeout(T).unwrap();
            assert_eq!(got.0, vec![i as u8; *n]);
        }
        assert!(q.empty());
    }

    #[test]
    fn items_with_fds_keep_their_order_and_work() {
        let q: Queue<(u32, Option<crate::connection::Connection<u32>>)> = Queue::new().unwrap();
        let (a, b) = crate::connection::pipe::<u32>(true).unwrap();
        q.put((1, None)).unwrap();
        q.put((2, Some(b))).unwrap();
        q.put((3, None)).unwrap();
        assert_eq!(q.get_timeout(T).unwrap().0, 1);
        let (n, b) = q.get_timeout(T).unwrap();
        assert_eq!(n, 2);
        b.unwrap().send(&7).unwrap();
        assert_eq!(a.recv_timeout(T).unwrap(), 7);
        assert_eq!(q.get_timeout(T).unwrap().0, 3);
    }

    #[test]
    fn a_full_ring_spills_nowait_puts_to_the_socket_in_order() {
        let q: Queue<u64> = Queue::new().unwrap();
        // 16-byte entries: the ring holds CAPACITY / 16 of them.
        let in_ring = ((ring::CAPACITY - ring::MARKER_RESERVE) / 16) as u64;
        let total = in_ring + 100;
        for i in 0..total {
            q.put_nowait(i).unwrap();
        }
        assert_eq!(q.qsize() as u64, total);
        for i in 0..total {
            assert_eq!(q.get_timeout(T).unwrap(), i);
        }
        assert!(q.empty());
    }

    #[test]
    fn a_blocking_put_on_a_full_ring_waits_for_readers() {
        let q: Queue<u64> = Queue::new().unwrap();
        let total = 3 * (ring::CAPACITY / 16) as u64;
        let p = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..total {
                    q.put(i).unwrap();
                }
            })
        };
        for i in 0..total {
            assert_eq!(q.get_timeout(T).unwrap(), i);
        }
        p.join().unwrap();
    }

    #[test]
    fn bounded_put_timeout_returns_the_item_on_time() {
        let q: Queue<u8> = Queue::with_maxsize(2).unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        let t0 = Instant::now();
        let err = q.put_timeout(3, Duration::from_millis(50)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(err.is_full());
        assert_eq!(err.into_inner(), 3);
        assert_eq!(q.get().unwrap(), 1);
        q.put_timeout(3, T).unwrap();
        assert_eq!(q.qsize(), 2);
    }

    #[test]
    fn the_doorbell_tells_wait_when_items_are_there() {
        use crate::connection::wait;
        let q: Queue<u8> = Queue::new().unwrap();
        let short = Some(Duration::from_millis(5));
        assert!(wait(&[&q], short).unwrap().is_empty());
        q.put(1).unwrap();
        assert_eq!(wait(&[&q], short).unwrap(), vec![0]);
        assert_eq!(q.get_nowait().unwrap(), 1);
        // Taken, then found empty: no longer readable.
        assert!(q.get_nowait().is_err());
        assert!(wait(&[&q], short).unwrap().is_empty());
        // A waiter in another thread is woken by a put.
        let q2 = q.clone();
        let w = std::thread::spawn(move || wait(&[&q2], Some(T)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        q.put(2).unwrap();
        assert_eq!(w.join().unwrap(), vec![0]);
    }

    /// Runs `f` on a thread that dies at the `nth` time it reaches `point`,
    /// keeping the ring's lock if it holds it; returns whether it died.
    fn die_at<R: Send + 'static>(
        point: Point,
        nth: u32,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> bool {
        std::thread::spawn(move || {
            failpoint::arm(point, nth, failpoint::Death::Unwind);
            let r = f();
            failpoint::disarm();
            r
        })
        .join()
        .is_err_and(|p| p.is::<failpoint::Died>())
    }

    /// Items of every size that goes through the socket (in the frame, in
    /// a stream, in a memfd), filled with `b`.
    fn socket_items(b: u8) -> Vec<crate::Bytes> {
        [ring::ITEM_MAX + 1, crate::channel::INLINE_MAX + 1, 4 << 20]
            .into_iter()
            .map(|n| crate::Bytes(vec![b; n]))
            .collect()
    }

    /// Checks a `get` returns `want` (without printing megabytes).
    fn assert_item(got: Result<crate::Bytes, GetError>, want: &crate::Bytes) {
        let got = got.unwrap();
        assert!(
            got.0 == want.0,
            "got {} bytes of {:?}, want {} of {:?}",
            got.0.len(),
            got.0.first(),
            want.0.len(),
            want.0.first()
        );
    }

    /// Every frame sent by a `put` that died before pushing its marker is
    /// dropped, whether a live marker is ahead of it or none is left: the
    /// items after it come out in order, none late.
    #[test]
    fn regression_frame_of_a_put_that_died_before_its_marker_is_not_handed_out() {
        for ahead in [false, true] {
            let q: Queue<crate::Bytes> = Queue::new().unwrap();
            if ahead {
                q.put(crate::Bytes(vec![9; ring::ITEM_MAX + 1])).unwrap();
            }
            for item in socket_items(0xdd) {
                let q2 = q.clone();
                assert!(die_at(Point::Sent, 1, move || q2.put(item)));
            }
            assert_eq!(q.qsize(), usize::from(ahead));
            let after = socket_items(1);
            for item in &after {
                q.put(item.clone()).unwrap();
            }
            if ahead {
                assert_eq!(q.get_timeout(T).unwrap().0[0], 9);
            }
            for item in &after {
                assert_item(q.get_timeout(T), item);
            }
            assert!(q.empty());
            assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
            // Nothing is left on the socket.
            let (_, rx, _) = q.parts();
            assert!(rx.try_recv().is_err());
        }
    }

    /// A `get` that dies between popping a marker and receiving its frame
    /// loses that item only.
    #[test]
    fn a_get_that_died_holding_a_marker_loses_only_its_item() {
        let q: Queue<crate::Bytes> = Queue::new().unwrap();
        let items: Vec<_> = socket_items(1).into_iter().chain(socket_items(2)).collect();
        for item in &items {
            q.put(item.clone()).unwrap();
        }
        let q2 = q.clone();
        assert!(die_at(Point::Popped, 1, move || q2.get_nowait()));
        assert_eq!(q.qsize(), 5);
        for item in &items[1..] {
            assert_item(q.get_timeout(T), item);
        }
        // The last marker taken, the socket is emptied of the dead get's
        // frame by the next get.
        assert!(matches!(q.get_nowait(), Err(GetError::Empty)));
        let (_, rx, _) = q.parts();
        assert!(rx.try_recv().is_err());
    }

    /// A holder that died mid-push leaves `qsize` exact at once, without
    /// waiting for the next `put` or `get` to repair the ring.
    #[test]
    fn qsize_is_exact_right_after_a_holder_died_mid_push() {
        let q: Queue<u32> = Queue::new().unwrap();
        q.put(1).unwrap();
        let q2 = q.clone();
        assert!(die_at(Point::PushCommitted, 1, move || q2.put(2)));
        assert_eq!(q.qsize(), 2);
        let q2 = q.clone();
        assert!(die_at(Point::PushWritten, 1, move || q2.put(3)));
        assert_eq!(q.qsize(), 2);
        assert_eq!(q.get_nowait().unwrap(), 1);
        assert_eq!(q.get_nowait().unwrap(), 2);
        assert!(q.empty());
    }

    #[test]
    fn hostile_ring_fds_are_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Ring::from_fds(OwnedFd::from(a), OwnedFd::from(c)).is_err());
    }
}
