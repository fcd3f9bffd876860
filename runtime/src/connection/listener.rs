//! `Listener`, `Client` and their connections: sockets that unrelated
//! processes reach by address, speaking CPython's wire format.
//!
//! A [`Pipe`](super::pipe) joins a parent and the children it starts. A
//! [`Listener`] bound to an [`Address`] (a Unix socket path, a name in
//! Linux's abstract namespace, or a TCP address) lets any process that
//! knows the address and the authkey [`connect`] — a Rust program using
//! this crate, or a Python program using `multiprocessing.connection`'s
//! `Client` and `Listener`. Messages are framed as CPython frames them (see
//! `pyframe`), and the optional authkey handshake is CPython's (see
//! `pyauth`), so bytes cross between the two languages both ways.
//!
//! What is hard: the peer is any process, so nothing it sends is trusted.
//! Lengths are checked before anything is allocated (and the body buffer
//! grows only as bytes arrive), every frame of the handshake is at most 256
//! bytes, and a receive that times out mid-message keeps what it read, so
//! the stream never gets out of step.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{self as unix, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MAX_MESSAGE_SIZE;
use super::pyauth::{self, Frames, HANDSHAKE_MAX};
use super::pyframe::{FrameReader, encode_prefix};
use crate::codec;
use crate::error::{Error, Result};

/// Bodies up to this size go out in one write with their prefix (CPython
/// does the same, against Nagle's algorithm on TCP).
const CONCAT_MAX: usize = 16384;

/// Where a [`Listener`] listens and a [`connect`] goes (Python's
/// `address` with its `family`).
///
/// Python spells the three kinds as a `str` path (`'AF_UNIX'`), a `str`
/// starting with `'\0'` (the abstract namespace, also `'AF_UNIX'`), and a
/// `(host, port)` tuple (`'AF_INET'`).
///
/// # Examples
/// ```
/// use mproc::connection::Address;
/// let a = Address::from_python_str("\0my-service");
/// assert_eq!(a, Address::Abstract(b"my-service".to_vec()));
/// let p = Address::from_python_str("/tmp/my.sock");
/// assert_eq!(p, Address::Unix("/tmp/my.sock".into()));
/// let t: Address = "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into();
/// assert!(matches!(t, Address::Tcp(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket at a filesystem path (Python: `'/path/to.sock'`).
    Unix(PathBuf),
    /// A Unix socket named in Linux's abstract namespace, without the
    /// leading NUL (Python: `'\0name'`). Nothing is created on disk, and
    /// nothing needs removing; any local process can connect, so use an
    /// authkey.
    Abstract(Vec<u8>),
    /// A TCP address (Python: `('127.0.0.1', 6000)`). Port 0 picks a free
    /// port; [`Listener::address`] tells which.
    Tcp(SocketAddr),
}

impl Address {
    /// The address a Python `str` address names: the abstract namespace
    /// when it starts with `'\0'`, a path otherwise.
    pub fn from_python_str(s: &str) -> Address {
        match s.as_bytes().split_first() {
            Some((0, name)) => Address::Abstract(name.to_vec()),
            _ => Address::Unix(PathBuf::from(s)),
        }
    }

    /// The Python family name: `"AF_UNIX"` or `"AF_INET"` (`"AF_INET6"`
    /// for an IPv6 address).
    #[doc(alias = "address_type")]
    pub fn family(&self) -> &'static str {
        match self {
            Address::Unix(_) | Address::Abstract(_) => "AF_UNIX",
            Address::Tcp(SocketAddr::V4(_)) => "AF_INET",
            Address::Tcp(SocketAddr::V6(_)) => "AF_INET6",
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "\\0{}", String::from_utf8_lossy(n)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Address {
        Address::Unix(p)
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_path_buf())
    }
}

impl From<&Address> for Address {
    fn from(a: &Address) -> Address {
        a.clone()
    }
}

fn abstract_addr(name: &[u8]) -> io::Result<unix::SocketAddr> {
    unix::SocketAddr::from_abstract_name(name)
}

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }

    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => (&*s).write_all(buf),
            Stream::Tcp(s) => (&*s).write_all(buf),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

#[derive(Debug)]
struct Reader {
    frames: FrameReader,
    /// Why the stream is out of step, after a refused or cut-off frame.
    broken: Option<String>,
}

/// A connection made by a [`Listener`] or by [`connect`]: bytes framed as
/// CPython frames them, so the peer may be a Python
/// `multiprocessing.connection.Connection` (Python's `Connection` over a
/// socket).
///
/// [`send_bytes`](StreamConnection::send_bytes) and
/// [`recv_bytes`](StreamConnection::recv_bytes) interoperate with Python's
/// methods of the same names. [`send`](StreamConnection::send) and
/// [`recv`](StreamConnection::recv) carry typed values in this crate's own
/// encoding, for Rust peers only: Python's `send`/`recv` pickle, and this
/// crate does not speak pickle. To exchange structured data with Python,
/// send bytes in a format both sides read (JSON, `struct`, ...).
///
/// One thread may send while another receives; two receivers (or two
/// senders) take turns, each with whole messages.
#[doc(alias = "Connection")]
#[derive(Debug)]
pub struct StreamConnection {
    stream: Stream,
    reader: Mutex<Reader>,
    writer: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn map_write(e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPIPE | libc::ECONNRESET) => Error::Closed,
        _ => Error::Io(e),
    }
}

impl AsFd for StreamConnection {
    /// The socket, readable when a message (or EOF) is arriving: for
    /// [`wait`](super::wait) and `poll(2)`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }
}

impl StreamConnection {
    fn new(stream: Stream) -> StreamConnection {
        StreamConnection {
            stream,
            reader: Mutex::new(Reader {
                frames: FrameReader::new(MAX_MESSAGE_SIZE),
                broken: None,
            }),
            writer: Mutex::new(()),
        }
    }

    /// Sets the largest message this end accepts, in bytes (default
    /// [`MAX_MESSAGE_SIZE`]); a longer one is refused before its body is
    /// read (Python's `recv_bytes(maxlength)`).
    pub fn set_max_message_size(&mut self, bytes: usize) {
        let r = self
            .reader
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        r.frames.set_limit(bytes);
    }

    /// The largest message this end accepts.
    pub fn max_message_size(&self) -> usize {
        lock(&self.reader).frames.limit()
    }

    /// Sends `buf` as one message (Python's `send_bytes`).
    ///
    /// Messages over `i32::MAX` bytes use CPython's long length prefix, as
    /// Python does; the receiver's limit still applies there.
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer is gone; other I/O errors.
    ///
    /// # Examples
    /// ```
    /// use mproc::connection::{Address, Listener, connect};
    /// let listener = Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), None)?;
    /// let client = connect(listener.address(), None)?;
    /// let server = listener.accept()?;
    /// client.send_bytes(b"ping")?;
    /// assert_eq!(server.recv_bytes()?, b"ping");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn send_bytes(&self, buf: &[u8]) -> Result<()> {
        let (prefix, n) = encode_prefix(buf.len() as u64);
        let _w = lock(&self.writer);
        if buf.len() <= CONCAT_MAX {
            let mut one = Vec::with_capacity(n + buf.len());
            one.extend_from_slice(&prefix[..n]);
            one.extend_from_slice(buf);
            self.stream.write_all(&one).map_err(map_write)
        } else {
            self.stream.write_all(&prefix[..n]).map_err(map_write)?;
            self.stream.write_all(buf).map_err(map_write)
        }
    }

    /// Receives one message (Python's `recv_bytes`), waiting as long as it
    /// takes.
    ///
    /// # Errors
    /// [`Error::Closed`] when the peer closed between messages (Python's
    /// `EOFError`); an `UnexpectedEof` I/O error when it closed in the
    /// middle of one; [`Error::Codec`] for a malformed length or one over
    /// [`max_message_size`](StreamConnection::max_message_size) — the
    /// stream is then out of step and every later receive fails the same
    /// way (Python closes the connection there).
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.recv_until(None)
    }

    /// [`recv_bytes`](StreamConnection::recv_bytes) giving up after
    /// `timeout`; what arrived of a message by then is kept for the next
    /// receive.
    ///
    /// # Errors
    /// As `recv_bytes`, plus [`Error::Timeout`].
    #[doc(alias = "recv_bytes")]
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// Receives one message into `buf` and returns its length (Python's
    /// `recv_bytes_into`).
    ///
    /// # Errors
    /// As [`recv_bytes`](StreamConnection::recv_bytes); an `InvalidInput`
    /// I/O error when `buf` is too short (Python's `BufferTooShort`; the
    /// message is consumed).
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        super::copy_into(&self.recv_bytes()?, buf)
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Vec<u8>> {
        let mut r = lock(&self.reader);
        if let Some(why) = &r.broken {
            return Err(Error::Codec(why.clone()));
        }
        loop {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if !crate::sys::wait_readable(self.stream.fd(), Some(left))? {
                    if Instant::now() >= d {
                        return Err(Error::Timeout);
                    }
                    continue;
                }
            }
            let n = match self.stream.read(r.frames.buf()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    if r.frames.is_idle() {
                        return Err(Error::Closed);
                    }
                    return Err(Error::Io(e));
                }
                Err(e) => return Err(Error::Io(e)),
            };
            if n == 0 {
                if r.frames.is_idle() {
                    return Err(Error::Closed);
                }
                let why = "the peer closed the connection in the middle of a message";
                r.broken = Some(why.into());
                return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
            }
            match r.frames.advance(n) {
                Ok(Some(msg)) => return Ok(msg),
                Ok(None) => {}
                Err(e) => {
                    let why = e.to_string();
                    r.broken = Some(why.clone());
                    return Err(Error::Codec(why));
                }
            }
        }
    }

    /// Whether a message (or EOF) is arriving, after waiting up to
    /// `timeout` (`None`: forever; `Some(ZERO)`: just look). Python's
    /// `poll`.
    ///
    /// # Errors
    /// When `poll(2)` fails.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        Ok(crate::sys::wait_readable_within(self.stream.fd(), timeout)?)
    }

    /// Closes the connection (Python's `close`); dropping does the same.
    pub fn close(self) {}

    /// Sends one value in this crate's encoding, for a Rust peer (not
    /// Python's `send`, which pickles).
    ///
    /// # Errors
    /// [`Error::Codec`] when the value cannot be encoded;
    /// [`Error::Unsupported`] for a value that carries fds (a `Queue`, a
    /// `Connection`, ...): they travel only between related processes;
    /// otherwise as [`send_bytes`](StreamConnection::send_bytes).
    ///
    /// # Examples
    /// ```
    /// use mproc::connection::{Address, Listener, connect};
    /// let listener = Listener::bind(Address::Abstract(format!("mproc-doc-{}", std::process::id()).into_bytes()), Some(b"key"))?;
    /// let t = std::thread::spawn({
    ///     let addr = listener.address().clone();
    ///     move || -> mproc::Result<Vec<u32>> { connect(&addr, Some(b"key"))?.recv() }
    /// });
    /// let server = listener.accept_timeout(std::time::Duration::from_secs(30))?;
    /// server.send(&vec![1u32, 2, 3])?;
    /// assert_eq!(t.join().unwrap()?, [1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let (bytes, fds) = codec::encode(value)?;
        if !fds.is_empty() {
            return Err(Error::Unsupported(
                "values that carry file descriptors cannot cross a socket connection",
            ));
        }
        self.send_bytes(&bytes)
    }

    /// Receives one value sent by [`send`](StreamConnection::send) from a
    /// Rust peer.
    ///
    /// # Errors
    /// As [`recv_bytes`](StreamConnection::recv_bytes); [`Error::Codec`]
    /// for bytes that do not decode as a `T` (the message is consumed).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T> {
        codec::decode(&self.recv_bytes()?, Vec::new())
    }

    /// [`recv`](StreamConnection::recv) giving up after `timeout`.
    ///
    /// # Errors
    /// As `recv`, plus [`Error::Timeout`].
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        codec::decode(&self.recv_bytes_timeout(timeout)?, Vec::new())
    }

    /// Runs the authkey handshake: as the serving side (deliver a
    /// challenge, then answer one) or as the connecting side (the other
    /// order), as CPython's `Listener.accept` and `Client` do.
    fn authenticate(&self, key: &[u8], serving: bool, deadline: Option<Instant>) -> Result<()> {
        let io = Handshake {
            conn: self,
            deadline,
        };
        if serving {
            pyauth::deliver(&io, key)?;
            pyauth::answer(&io, key)
        } else {
            pyauth::answer(&io, key)?;
            pyauth::deliver(&io, key)
        }
    }
}

/// The handshake's view of a connection: small frames, one deadline.
struct Handshake<'a> {
    conn: &'a StreamConnection,
    deadline: Option<Instant>,
}

impl Frames for Handshake<'_> {
    fn send_frame(&self, frame: &[u8]) -> Result<()> {
        self.conn.send_bytes(frame)
    }

    fn recv_frame(&self) -> Result<Vec<u8>> {
        let saved = {
            let mut r = lock(&self.conn.reader);
            let saved = r.frames.limit();
            r.frames.set_limit(HANDSHAKE_MAX.min(saved));
            saved
        };
        let got = self.conn.recv_until(self.deadline);
        lock(&self.conn.reader).frames.set_limit(saved);
        got
    }
}

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A socket that accepts connections from other processes, Rust or Python
/// (Python's `multiprocessing.connection.Listener`).
///
/// With an authkey, every accepted peer must prove it knows the key, and
/// this side proves it too, before [`accept`](Listener::accept) returns
/// (CPython's handshake, both generations: see the module docs). Without
/// one, anyone who can reach the address can connect: bind TCP listeners
/// to `127.0.0.1` unless you mean otherwise.
///
/// A Unix socket path is removed when the listener is dropped (as Python
/// does on `close`); an abstract name vanishes with the socket.
///
/// # Examples
/// A listener and a client in one process (the client would usually be
/// another program, in Rust or Python):
/// ```
/// use std::time::Duration;
/// use mproc::connection::{Listener, connect};
///
/// let listener = Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), Some(b"secret"))?;
/// let addr = listener.address().clone();
/// let client = std::thread::spawn(move || -> mproc::Result<Vec<u8>> {
///     let conn = connect(&addr, Some(b"secret"))?;
///     conn.send_bytes(b"hello")?;
///     conn.recv_bytes_timeout(Duration::from_secs(30))
/// });
/// let conn = listener.accept_timeout(Duration::from_secs(30))?;
/// assert_eq!(conn.recv_bytes_timeout(Duration::from_secs(30))?, b"hello");
/// conn.send_bytes(b"bye")?;
/// assert_eq!(client.join().unwrap()?, b"bye");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
    /// The path this listener created, removed on drop by the process
    /// that created it.
    unlink: Option<(PathBuf, u32)>,
}

impl Listener {
    /// Binds a listener at `address` (Python's `Listener(address,
    /// authkey=...)`); with `Some(authkey)`, peers must authenticate.
    ///
    /// # Errors
    /// When the socket cannot be bound (`AddrInUse` for an address in use,
    /// or an existing file at a Unix path).
    #[doc(alias = "Listener")]
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener> {
        let address = address.into();
        let (socket, address, unlink) = match address {
            Address::Unix(path) => {
                let l = UnixListener::bind(&path)?;
                (
                    Socket::Unix(l),
                    Address::Unix(path.clone()),
                    Some((path, std::process::id())),
                )
            }
            Address::Abstract(name) => {
                let l = UnixListener::bind_addr(&abstract_addr(&name)?)?;
                (Socket::Unix(l), Address::Abstract(name), None)
            }
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let bound = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(bound), None)
            }
        };
        match &socket {
            Socket::Unix(l) => l.set_nonblocking(true)?,
            Socket::Tcp(l) => l.set_nonblocking(true)?,
        }
        tracing::debug!(%address, "listener bound");
        Ok(Listener {
            socket,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            unlink,
        })
    }

    /// The address peers connect to (Python's `address`); for TCP port 0,
    /// the port that was picked.
    pub fn address(&self) -> &Address {
        &self.address
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }

    /// Accepts the next connection and authenticates it (Python's
    /// `accept`), waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::AuthenticationFailed`] when the peer does not know the
    /// authkey or refuses ours (the connection is closed, the listener goes
    /// on); I/O errors.
    pub fn accept(&self) -> Result<StreamConnection> {
        self.accept_until(None)
    }

    /// [`accept`](Listener::accept) giving up after `timeout`, which covers
    /// the handshake too: a peer that stalls in it cannot hold this call.
    ///
    /// # Errors
    /// As `accept`, plus [`Error::Timeout`].
    #[doc(alias = "accept")]
    pub fn accept_timeout(&self, timeout: Duration) -> Result<StreamConnection> {
        self.accept_until(Some(Instant::now() + timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<StreamConnection> {
        let stream = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !crate::sys::wait_readable(self.fd(), left)? {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Timeout);
                }
                continue;
            }
            // Accepted sockets do not inherit the listener's O_NONBLOCK.
            let got = match &self.socket {
                Socket::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Socket::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            };
            match got {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(Error::Io(e)),
            }
        };
        let conn = StreamConnection::new(stream);
        if let Some(key) = &self.authkey
            && let Err(e) = conn.authenticate(key, true, deadline)
        {
            tracing::debug!(address = %self.address, error = %e, "peer refused");
            return Err(e);
        }
        Ok(conn)
    }

    /// Closes the listener (Python's `close`); dropping does the same.
    pub fn close(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, pid)) = self.unlink.take()
            && pid == std::process::id()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Connects to a [`Listener`] — this crate's or a Python
/// `multiprocessing.connection.Listener` — at `address` (Python's
/// `Client(address, authkey=...)`), authenticating with `authkey` when
/// given.
///
/// # Errors
/// I/O errors (`ConnectionRefused`, `NotFound`, ...);
/// [`Error::AuthenticationFailed`] when either side's key is wrong.
///
/// # Examples
/// See [`Listener`].
#[doc(alias = "Client")]
pub fn connect(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<StreamConnection> {
    connect_until(&address.into(), authkey, None)
}

/// [`connect`] giving up after `timeout`, which covers the handshake too.
///
/// # Errors
/// As `connect`, plus [`Error::Timeout`].
#[doc(alias = "Client")]
pub fn connect_timeout(
    address: impl Into<Address>,
    authkey: Option<&[u8]>,
    timeout: Duration,
) -> Result<StreamConnection> {
    connect_until(&address.into(), authkey, Some(Instant::now() + timeout))
}

fn connect_until(
    address: &Address,
    authkey: Option<&[u8]>,
    deadline: Option<Instant>,
) -> Result<StreamConnection> {
    let stream = match address {
        Address::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        Address::Abstract(n) => Stream::Unix(UnixStream::connect_addr(&abstract_addr(n)?)?),
        Address::Tcp(a) => match deadline {
            None => Stream::Tcp(TcpStream::connect(a)?),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let left = left.max(Duration::from_millis(1));
                Stream::Tcp(TcpStream::connect_timeout(a, left).map_err(|e| {
                    if e.kind() == io::ErrorKind::TimedOut {
                        Error::Timeout
                    } else {
                        Error::Io(e)
                    }
                })?)
            }
        },
    };
    let conn = StreamConnection::new(stream);
    if let Some(key) = authkey {
        conn.authenticate(key, false, deadline)?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn tcp() -> Address {
        Address::Tcp("127.0.0.1:0".parse().unwrap())
    }

    fn pair(
        key_l: Option<&[u8]>,
        key_c: Option<&'static [u8]>,
    ) -> (Result<StreamConnection>, Result<StreamConnection>) {
        let l = Listener::bind(tcp(), key_l).unwrap();
        let addr = l.address().clone();
        let t = std::thread::spawn(move || connect_timeout(&addr, key_c, T));
        let s = l.accept_timeout(T);
        (s, t.join().unwrap())
    }

    #[test]
    fn right_key_both_ways() {
        let (s, c) = pair(Some(b"k"), Some(b"k"));
        let (s, c) = (s.unwrap(), c.unwrap());
        c.send_bytes(b"x").unwrap();
        assert_eq!(s.recv_bytes_timeout(T).unwrap(), b"x");
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        let (s, c) = pair(Some(b"k"), Some(b"other"));
        assert!(matches!(s, Err(Error::AuthenticationFailed(_))), "{s:?}");
        assert!(matches!(c, Err(Error::AuthenticationFailed(_))), "{c:?}");
    }

    #[test]
    fn a_timed_out_receive_keeps_the_partial_message() {
        let (s, c) = pair(None, None);
        let (s, c) = (s.unwrap(), c.unwrap());
        // Half a frame, then a timeout, then the rest.
        c.stream.write_all(b"\0\0\0\x05he").unwrap();
        assert!(matches!(
            s.recv_bytes_timeout(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
        c.stream.write_all(b"llo").unwrap();
        assert_eq!(s.recv_bytes_timeout(T).unwrap(), b"hello");
    }

    #[test]
    fn an_oversized_length_is_refused_and_the_stream_stays_refused() {
        let (s, c) = pair(None, None);
        let (mut s, c) = (s.unwrap(), c.unwrap());
        s.set_max_message_size(4);
        c.send_bytes(b"too long").unwrap();
        assert!(matches!(s.recv_bytes_timeout(T), Err(Error::Codec(_))));
        assert!(matches!(s.recv_bytes_timeout(T), Err(Error::Codec(_))));
    }

    #[test]
    fn eof_between_messages_is_closed_and_inside_one_is_an_error() {
        let (s, c) = pair(None, None);
        let (s, c) = (s.unwrap(), c.unwrap());
        c.send_bytes(b"a").unwrap();
        drop(c);
        assert_eq!(s.recv_bytes_timeout(T).unwrap(), b"a");
        assert!(matches!(s.recv_bytes_timeout(T), Err(Error::Closed)));

        let (s, c) = pair(None, None);
        let (s, c) = (s.unwrap(), c.unwrap());
        c.stream.write_all(b"\0\0\0\x09abc").unwrap();
        drop(c);
        let e = s.recv_bytes_timeout(T).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn unix_path_is_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("mproc-listener-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let l = Listener::bind(dir.as_path(), None).unwrap();
        assert!(dir.exists());
        let c = connect(Address::from_python_str(dir.to_str().unwrap()), None).unwrap();
        let s = l.accept_timeout(T).unwrap();
        s.send_bytes(b"ok").unwrap();
        assert_eq!(c.recv_bytes_timeout(T).unwrap(), b"ok");
        drop(l);
        assert!(!dir.exists());
    }

    #[test]
    fn fd_carrying_values_are_refused() {
        let (s, c) = pair(None, None);
        let (_s, c) = (s.unwrap(), c.unwrap());
        let (a, _b) = crate::connection::pipe::<u8>(true).unwrap();
        assert!(matches!(c.send(&a), Err(Error::Unsupported(_))));
    }
}
