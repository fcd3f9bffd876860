//! `Pipe`, `Connection` and `wait` (Python's `multiprocessing.connection`).
//!
//! A [`Connection`] is one end of a `SOCK_SEQPACKET` socket pair: every
//! message is one `sendmsg` and every receive takes one whole message, so
//! there is no length prefix to get out of step and a message never arrives
//! half. Bodies over 60 KiB travel beside a small frame, in a socket or a
//! sealed memfd of their own, so a large send never waits for the reader to
//! drain the socket.
//! The hard parts are at the edges: the peer closing is a distinct error
//! ([`Error::Closed`], Python's `EOFError`), a message over the size limit is
//! refused before any byte is written, and bytes from a peer are never
//! trusted (a corrupt message is a decode error, never a panic or a huge
//! allocation).
//!
//! For processes that did not start each other — including Python ones —
//! a [`Listener`] accepts connections at an [`Address`] (a Unix socket
//! path, an abstract name, TCP) and [`connect`] reaches it, in CPython's
//! framing and with its authkey handshake; see [`StreamConnection`].
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! use mproc::connection::{Connection, pipe};
//!
//! fn child(conn: Connection<String>) {
//!     conn.send(&"hello".to_string()).unwrap();
//! }
//!
//! let (parent_conn, child_conn) = pipe::<String>(true)?;
//! let mut p = mproc::get_context("forkserver")?.process(child, child_conn).start()?;
//! assert_eq!(parent_conn.recv()?, "hello");
//! p.join()?;
//! // The child's end is gone: the next receive is EOF.
//! assert!(matches!(parent_conn.recv(), Err(mproc::Error::Closed)));
//! # Ok(()) }
//! ```

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::channel::{Channel, Incoming, MAX_BODY, RecvError};
use crate::codec;
use crate::error::{Error, Result};

#[cfg(feature = "net")]
mod listener;
#[cfg(feature = "net")]
pub(crate) mod pyauth;
#[cfg(feature = "net")]
pub(crate) mod pyframe;

#[cfg(feature = "net")]
pub use listener::{Address, Listener, StreamConnection, connect, connect_timeout};

/// Default largest message a [`Connection`] sends or accepts (1 GiB).
pub const MAX_MESSAGE_SIZE: usize = MAX_BODY;

/// A connected pair of [`Connection`]s (Python's `multiprocessing.Pipe`).
///
/// With `duplex` both ends send and receive; without, the first end only
/// receives and the second only sends (as in Python).
///
/// # Errors
/// When the socket pair cannot be created.
///
/// # Examples
/// ```
/// let (a, b) = mproc::connection::pipe::<u32>(true)?;
/// a.send(&7)?;
/// assert_eq!(b.recv()?, 7);
/// # Ok::<(), mproc::Error>(())
/// ```
#[doc(alias = "Pipe")]
pub fn pipe<T>(duplex: bool) -> Result<(Connection<T>, Connection<T>)> {
    let (a, b) = Channel::pair()?;
    Ok((
        Connection::new(a, true, duplex),
        Connection::new(b, duplex, true),
    ))
}

/// One end of a [`pipe`] carrying values of type `T` (Python's
/// `multiprocessing.connection.Connection`).
///
/// A `Connection` can be passed to a child as (part of) its arguments, or
/// sent through another `Connection` or a queue: its socket travels as a file
/// descriptor and arrives working. Dropping it closes this end; the peer's
/// next receive then reports [`Error::Closed`] once the messages already
/// sent are read.
pub struct Connection<T> {
    chan: Channel,
    readable: bool,
    writable: bool,
    limit: usize,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.chan.fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

impl<T> AsFd for Connection<T> {
    /// The socket, readable when a message (or EOF) is waiting: for
    /// [`wait`] and `poll(2)`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.chan.fd()
    }
}

fn not_allowed(what: &str) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("this end of a one-way pipe is not {what}"),
    ))
}

/// Copies a received message into the caller's buffer (`recv_bytes_into`
/// of both kinds of connection): an `InvalidInput` I/O error when `buf` is
/// too short (Python's `BufferTooShort`), the message being consumed anyway.
fn copy_into(msg: &[u8], buf: &mut [u8]) -> Result<usize> {
    let Some(dst) = buf.get_mut(..msg.len()) else {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "buffer of {} bytes too short for a message of {}",
                buf.len(),
                msg.len()
            ),
        )));
    };
    dst.copy_from_slice(msg);
    Ok(msg.len())
}

fn map_recv(e: RecvError) -> Error {
    match e {
        RecvError::Closed => Error::Closed,
        RecvError::Timeout => Error::Timeout,
        RecvError::Malformed(m) => Error::Codec(m),
        RecvError::Io(e) => Error::Io(e),
    }
}

fn map_send(e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET) => Error::Closed,
        _ => Error::Io(e),
    }
}

impl<T> Connection<T> {
    fn new(chan: Channel, readable: bool, writable: bool) -> Self {
        Connection {
            chan,
            readable,
            writable,
            limit: MAX_MESSAGE_SIZE,
            _t: PhantomData,
        }
    }

    /// Whether this end can receive (Python's `readable`).
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (Python's `writable`).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Sets the largest message this end sends or accepts, in bytes
    /// (default [`MAX_MESSAGE_SIZE`]); larger ones are refused.
    pub fn set_max_message_size(&mut self, bytes: usize) {
        self.limit = bytes.min(MAX_BODY);
    }

    /// The largest message this end sends or accepts.
    pub fn max_message_size(&self) -> usize {
        self.limit
    }

    /// Sends raw bytes as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer is gone; an `InvalidInput` I/O error,
    /// with nothing written, for a message over
    /// [`max_message_size`](Connection::max_message_size); a
    /// `PermissionDenied` one on the receive-only end of a one-way pipe.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = mproc::connection::pipe::<()>(true)?;
    /// a.send_bytes(b"ping")?;
    /// assert_eq!(b.recv_bytes()?, b"ping");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn send_bytes(&self, buf: &[u8]) -> Result<()> {
        self.send_raw(buf, &[])
    }

    fn send_raw(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        if !self.writable {
            return Err(not_allowed("writable"));
        }
        if buf.len() > self.limit {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes over the limit of {}",
                    buf.len(),
                    self.limit
                ),
            )));
        }
        self.chan.send(buf, fds).map_err(map_send)
    }

    /// Receives one message's raw bytes (Python's `recv_bytes`), waiting as
    /// long as it takes.
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer closed and every message was read;
    /// [`Error::Codec`] for a malformed frame or one over the size limit.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.recv_raw(None).map(|(b, _)| b)
    }

    /// [`recv_bytes`](Connection::recv_bytes) giving up after `timeout`.
    ///
    /// # Errors
    /// As `recv_bytes`, plus [`Error::Timeout`].
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.recv_raw(Instant::now().checked_add(timeout))
            .map(|(b, _)| b)
    }

    /// Receives one message into `buf` and returns its length (Python's
    /// `recv_bytes_into`).
    ///
    /// # Errors
    /// As [`recv_bytes`](Connection::recv_bytes); an `InvalidInput` I/O
    /// error when `buf` is too short (Python's `BufferTooShort`: the message
    /// is consumed).
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        let (msg, _) = self.recv_incoming(None)?;
        copy_into(msg.body(), buf)
    }

    fn recv_raw(&self, deadline: Option<Instant>) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let (msg, fds) = self.recv_incoming(deadline)?;
        Ok((msg.body().to_vec(), fds))
    }

    /// Receives one message, its body left where it arrived (to be decoded
    /// or copied from there).
    fn recv_incoming(&self, deadline: Option<Instant>) -> Result<(Incoming, Vec<OwnedFd>)> {
        if !self.readable {
            return Err(not_allowed("readable"));
        }
        self.chan
            .recv_incoming(deadline, self.limit)
            .map_err(map_recv)
    }

    /// Whether a message (or EOF) is waiting, after waiting up to `timeout`
    /// (`None`: forever; `Some(ZERO)`: just look). Python's `poll`.
    ///
    /// # Errors
    /// A `PermissionDenied` I/O error on the send-only end of a one-way
    /// pipe, as [`recv`](Connection::recv) (Python raises `OSError`); an
    /// error when `poll(2)` fails.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = mproc::connection::pipe::<u8>(true)?;
    /// assert!(!b.poll(Some(Duration::ZERO))?);
    /// a.send(&1)?;
    /// assert!(b.poll(Some(Duration::from_secs(5)))?);
    ///
    /// let (_reader, writer) = mproc::connection::pipe::<u8>(false)?;
    /// assert!(writer.poll(Some(Duration::ZERO)).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if !self.readable {
            return Err(not_allowed("readable"));
        }
        Ok(crate::sys::wait_readable_within(self.chan.fd(), timeout)?)
    }

    /// Closes this end (Python's `close`); dropping does the same.
    pub fn close(self) {}
}

impl<T: Serialize> Connection<T> {
    /// Sends one value (Python's `send`). Values that own fds (another
    /// `Connection`, a queue) travel with them.
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer is gone; [`Error::Codec`] when the
    /// value cannot be encoded; an `InvalidInput` I/O error, with nothing
    /// written, when the encoding is over the size limit.
    pub fn send(&self, value: &T) -> Result<()> {
        if !self.writable {
            return Err(not_allowed("writable"));
        }
        // The limit is enforced while encoding: an oversized value stops
        // being written as soon as it passes it, and nothing is sent.
        let enc = codec::encode_message(value, self.limit)?;
        let Some(body) = &enc.body else {
            unreachable!("encode_message sets the body");
        };
        let borrowed: Vec<BorrowedFd<'_>> = enc.fds.iter().map(|f| f.as_fd()).collect();
        self.chan
            .send_outgoing(body, &borrowed, false)
            .map_err(map_send)
    }
}

impl<T: DeserializeOwned> Connection<T> {
    /// Receives one value, waiting as long as it takes (Python's `recv`).
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer closed and every message was read
    /// (Python's `EOFError`); [`Error::Codec`] for bytes that do not decode
    /// as a `T` (the message is consumed).
    pub fn recv(&self) -> Result<T> {
        let (msg, fds) = self.recv_incoming(None)?;
        codec::decode(msg.body(), fds)
    }

    /// [`recv`](Connection::recv) giving up after `timeout`.
    ///
    /// # Errors
    /// As `recv`, plus [`Error::Timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        let (msg, fds) = self.recv_incoming(Instant::now().checked_add(timeout))?;
        codec::decode(msg.body(), fds)
    }

    /// [`recv`](Connection::recv) as a future: resolves to the next value
    /// without blocking a thread while it waits, under any async runtime.
    ///
    /// The future waits for the socket through the crate's waiter thread
    /// (see [`crate::future`]). Several tasks may await receives on the same
    /// end at once; each message goes to exactly one of them.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken off the socket only in the poll that
    /// returns it, so dropping the future (in `tokio::select!`, or when
    /// `tokio::time::timeout` expires) never loses one; it stays for the
    /// next receive.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv); an I/O error when the waiter thread
    /// cannot be set up.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use mproc::connection::{Connection, pipe};
    ///
    /// fn child(conn: Connection<String>) {
    ///     conn.send(&"hello".to_string()).unwrap();
    /// }
    ///
    /// use std::time::Duration;
    /// use tokio::time::timeout;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// rt.block_on(async {
    ///     let (ours, theirs) = pipe::<String>(true)?;
    ///     let mut p = mproc::default_context().process(child, theirs).start()?;
    ///     let limit = Duration::from_secs(30);
    ///     let got = timeout(limit, ours.recv_async()).await.expect("a message in time")?;
    ///     assert_eq!(got, "hello");
    ///     timeout(limit, p.join_async()).await.expect("ended in time")
    /// })
    /// # }
    /// ```
    #[doc(alias = "recv")]
    pub fn recv_async(&self) -> crate::future::RecvFuture<'_, T> {
        crate::future::RecvFuture::new(self)
    }

    /// One value if a message is waiting; never blocks.
    pub(crate) fn try_recv(&self) -> Result<Option<T>> {
        if !self.readable {
            return Err(not_allowed("readable"));
        }
        match self.chan.try_recv_incoming(self.limit) {
            Ok((msg, fds)) => codec::decode(msg.body(), fds).map(Some),
            Err(RecvError::Timeout) => Ok(None),
            Err(e) => Err(map_recv(e)),
        }
    }
}

#[derive(Serialize)]
struct ConnRef<'a> {
    #[serde(serialize_with = "ser_fd")]
    fd: BorrowedFd<'a>,
    readable: bool,
    writable: bool,
    limit: u64,
}

#[derive(Deserialize)]
struct ConnOwned {
    #[serde(with = "crate::fd")]
    fd: OwnedFd,
    readable: bool,
    writable: bool,
    limit: u64,
}

pub(crate) fn ser_fd<S: Serializer>(
    fd: &BorrowedFd<'_>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    crate::fd::serialize_borrowed(*fd, s)
}

impl<T> Serialize for Connection<T> {
    /// Sends a duplicate of the socket out of band; fails outside `mproc`'s
    /// own encoding.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ConnRef {
            fd: self.chan.fd(),
            readable: self.readable,
            writable: self.writable,
            limit: self.limit as u64,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let c = ConnOwned::deserialize(d)?;
        let mut conn = Connection::new(Channel::from_fd(c.fd), c.readable, c.writable);
        conn.limit = usize::try_from(c.limit).unwrap_or(MAX_BODY).min(MAX_BODY);
        Ok(conn)
    }
}

/// Waits until at least one of `objects` is ready, at most `timeout`
/// (`None`: forever), and returns the indices of the ready ones (Python's
/// `multiprocessing.connection.wait`); empty after a timeout.
///
/// Objects are anything with an fd: a [`Connection`] (ready when a message
/// or EOF waits), a queue (ready when an item may be waiting; another
/// consumer can still take it first), or a process's
/// [`sentinel`](crate::Process::sentinel) (ready when the child has ended).
///
/// # Errors
/// When `poll(2)` fails.
///
/// # Examples
/// ```
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// let (a, b) = mproc::connection::pipe::<u8>(true)?;
/// let (c, d) = mproc::connection::pipe::<u8>(true)?;
/// c.send(&1)?;
/// let ready = mproc::connection::wait(&[b.as_fd(), d.as_fd()], Some(Duration::from_secs(5)))?;
/// assert_eq!(ready, vec![1]);
/// # drop(a);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn wait<F: AsFd>(objects: &[F], timeout: Option<Duration>) -> Result<Vec<usize>> {
    use nix::poll::{PollFd, PollFlags, poll};
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut pfds: Vec<PollFd<'_>> = objects
        .iter()
        .map(|o| PollFd::new(o.as_fd(), PollFlags::POLLIN))
        .collect();
    loop {
        let t =
            crate::sys::poll_timeout(deadline.map(|d| d.saturating_duration_since(Instant::now())));
        match poll(&mut pfds, t) {
            Ok(0) => {
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(Vec::new());
                }
            }
            Ok(_) => {
                let ready = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                return Ok(pfds
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.revents().is_some_and(|r| r.intersects(ready)))
                    .map(|(i, _)| i)
                    .collect());
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::Io(io::Error::from_raw_os_error(e as i32))),
        }
    }
}
