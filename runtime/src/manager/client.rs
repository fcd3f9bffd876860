//! The client side of a manager: a pool of connections per process.
//!
//! Each thread that makes a call takes an idle connection from the pool (or
//! opens one) and gives it back after the reply, so threads never wait for
//! each other's blocking calls and a reply always reaches the thread that
//! asked. New local connections are asked for on a dedicated *dial*
//! connection that carries nothing else; as all its replies look alike (a
//! fresh socket), even a `fork` child that inherited it mid-request gets a
//! working connection. A TCP client dials the listener again instead.
//!
//! A pool belongs to one process: after a `fork` the child sees another pid
//! and drops the inherited connections (which its parent still uses)
//! before making its own.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serializer};

#[cfg(feature = "net")]
use super::auth;
use super::protocol::{Bytes, REPLY_ERR, REPLY_OK, RemoteError, RemoteErrorKind, Request};
use super::transport::{self, Conn};
use crate::channel::{Channel, RecvError};
use crate::codec;
use crate::error::{Error, Result};

/// How long dialing a TCP manager may take.
#[cfg(feature = "net")]
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

enum Dialer {
    /// Asks for new connections on this one.
    Local(Mutex<Conn>),
    /// Dials the listener; every connection joins the session `token`,
    /// which `_anchor` (never used for requests) keeps open for as long as
    /// this client lives.
    Tcp {
        addr: SocketAddr,
        authkey: Vec<u8>,
        token: u64,
        _anchor: Mutex<Conn>,
    },
}

struct Pool {
    pid: u32,
    idle: Vec<Conn>,
}

/// One process's access to one manager.
pub(crate) struct Client {
    dialer: Dialer,
    pool: Mutex<Pool>,
    /// The server's identity once asked for (0: not yet). Not a
    /// `OnceLock`: a `fork` child made while another thread was asking
    /// would wait for that thread forever.
    ident: AtomicU64,
    /// Set once this process asked the server to stop: later requests
    /// fail at once, and proxies dropped then give nothing back, without
    /// waiting on a connection that a `fork` child made meanwhile may hold
    /// open (a `fork` from a multithreaded parent copies every fd, the
    /// server's ends of other managers' connections too).
    stopped: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dialer {
            Dialer::Local(_) => f.write_str("Client(local)"),
            Dialer::Tcp { addr, .. } => write!(f, "Client(tcp {addr})"),
        }
    }
}

pub(crate) fn recv_error(e: RecvError) -> Error {
    match e {
        RecvError::Closed => Error::Closed,
        RecvError::Timeout => Error::Timeout,
        RecvError::Malformed(m) => Error::Codec(m),
        RecvError::Io(e) => Error::Io(e),
    }
}

/// The error a caller sees for a server's error reply.
pub(crate) fn remote_error(e: RemoteError) -> Error {
    match e.kind {
        RemoteErrorKind::Timeout => Error::Timeout,
        _ => Error::Remote(e),
    }
}

/// Encodes a value to store in the manager (no fds allowed).
pub(crate) fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    let (b, fds) = codec::encode(v)?;
    if !fds.is_empty() {
        return Err(Error::Codec(
            "a value holding a file descriptor cannot be stored in a manager".into(),
        ));
    }
    Ok(b)
}

/// Decodes a value the manager returned.
pub(crate) fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    codec::decode(b, Vec::new())
}

impl Client {
    /// A client whose dial connection is `conn` (a local manager).
    pub(crate) fn local(conn: OwnedFd) -> Client {
        Client {
            dialer: Dialer::Local(Mutex::new(Conn::local(Channel::from_fd(conn)))),
            pool: Mutex::new(Pool {
                pid: std::process::id(),
                idle: Vec::new(),
            }),
            ident: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// A TCP client whose session is anchored on `first` (a connection
    /// that may already hold objects, which then move to the session) or on
    /// a new one.
    pub(crate) fn tcp(addr: SocketAddr, authkey: Vec<u8>, first: Option<Conn>) -> Result<Client> {
        let anchor = match first {
            Some(c) => c,
            None => Client::dial_tcp(&addr, &authkey)?,
        };
        let mut token = [0u8; 8];
        token.copy_from_slice(&crate::sys::random_bytes(8)?);
        let token = u64::from_ne_bytes(token);
        roundtrip(&anchor, &Request::Join { token })?.map_err(remote_error)?;
        Ok(Client {
            dialer: Dialer::Tcp {
                addr,
                authkey,
                token,
                _anchor: Mutex::new(anchor),
            },
            pool: Mutex::new(Pool {
                pid: std::process::id(),
                idle: Vec::new(),
            }),
            ident: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        })
    }

    /// Dials and authenticates a TCP connection.
    pub(crate) fn dial_tcp(addr: &SocketAddr, authkey: &[u8]) -> Result<Conn> {
        dial_tcp_stream(addr, authkey).map(Conn::Tcp)
    }

    /// A new connection to the same server.
    fn dial(&self) -> Result<Conn> {
        match &self.dialer {
            Dialer::Tcp {
                addr,
                authkey,
                token,
                ..
            } => {
                let c = Client::dial_tcp(addr, authkey)?;
                roundtrip(&c, &Request::Join { token: *token })?.map_err(remote_error)?;
                Ok(c)
            }
            Dialer::Local(d) => {
                let fd = ask_connection(d, &Request::Connect)?;
                Ok(Conn::local(Channel::from_fd(fd)))
            }
        }
    }

    fn checkout(&self) -> Result<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        if pool.pid != pid {
            // A fork child: those connections are the parent's.
            pool.idle.clear();
            pool.pid = pid;
        }
        let c = pool.idle.pop();
        drop(pool);
        match c {
            Some(c) => Ok(c),
            None => self.dial(),
        }
    }

    fn checkin(&self, c: Conn) {
        // The pid was checked when this connection was taken out, in this
        // same thread, so no fork of ours can have come in between.
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        pool.idle.push(c);
    }

    /// Sends `req` and returns the reply's payload.
    pub(crate) fn request(&self, req: &Request) -> Result<Vec<u8>> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let conn = self.checkout()?;
        // A transport error drops the connection; an error reply keeps it.
        let reply = roundtrip(&conn, req)?;
        self.checkin(conn);
        reply.map(|(payload, _)| payload).map_err(remote_error)
    }

    /// The shutdown request on the dial connection (the root one for the
    /// process that started the server).
    pub(crate) fn shutdown(&self) -> Result<()> {
        match &self.dialer {
            Dialer::Local(d) => {
                self.stopped.store(true, Ordering::Relaxed);
                let d = d.lock().unwrap_or_else(PoisonError::into_inner);
                roundtrip(&d, &Request::Shutdown)?.map_err(remote_error)?;
                Ok(())
            }
            Dialer::Tcp { .. } => Err(Error::Unsupported(
                "only the process that started a manager can shut it down",
            )),
        }
    }

    /// Calls `method` of object `id`.
    pub(crate) fn call<A, R>(&self, id: u64, method: &str, args: &A) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let _span = tracing::debug_span!("mproc.manager_call", id, method).entered();
        let args = enc(args)?;
        let payload = self.request(&Request::Call {
            id,
            method: method.to_string(),
            args: Bytes(args),
        })?;
        dec(&payload)
    }

    /// Creates an object; its id.
    pub(crate) fn create<A: Serialize + ?Sized>(&self, kind: &str, args: &A) -> Result<u64> {
        let payload = self.request(&Request::Create {
            kind: kind.to_string(),
            args: Bytes(enc(args)?),
        })?;
        dec(&payload)
    }

    /// Gives back one hold on object `id` (a proxy was dropped).
    pub(crate) fn release(&self, id: u64) -> Result<()> {
        if self.stopped.load(Ordering::Relaxed) {
            // The server is gone or going: nothing to give back.
            return Ok(());
        }
        self.request(&Request::Release { id }).map(drop)
    }

    /// The server's identity (asked for once).
    pub(crate) fn ident(&self) -> Result<u64> {
        let known = self.ident.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let id: u64 = dec(&self.request(&Request::Ident)?)?;
        self.ident.store(id, Ordering::Relaxed);
        Ok(id)
    }

    /// Whether `self` and `other` reach the same server.
    pub(crate) fn same_server(&self, other: &Client) -> Result<bool> {
        if std::ptr::eq(self, other) {
            return Ok(true);
        }
        Ok(self.ident()? == other.ident()?)
    }

    /// How many objects the server holds.
    pub(crate) fn count(&self) -> Result<u64> {
        dec(&self.request(&Request::Count)?)
    }

    /// A fresh connection for a proxy of `id` on its way to another
    /// process, with what it needs to dial. A local one holds `id` for as
    /// long as it stays open.
    pub(crate) fn endpoint(&self, id: u64) -> Result<Wire> {
        let (fd, tcp) = match &self.dialer {
            Dialer::Local(d) => (ask_connection(d, &Request::ConnectHolding { id })?, None),
            Dialer::Tcp { addr, authkey, .. } => {
                // A connection of its own, outside this client's session,
                // holding `id` until the receiver joins it to its own.
                let s = dial_tcp_stream(addr, authkey)?;
                tcp_roundtrip(&s, &Request::Acquire { id })?.map_err(remote_error)?;
                (
                    OwnedFd::from(s),
                    Some((addr.to_string(), Bytes(authkey.clone()))),
                )
            }
        };
        Ok(Wire { id, fd, tcp })
    }

    /// The client a [`Wire`] received from another process describes.
    pub(crate) fn from_wire(fd: OwnedFd, tcp: Option<(String, Bytes)>) -> Result<Client> {
        match tcp {
            None => Ok(Client::local(fd)),
            Some((addr, key)) => {
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| Error::Codec(format!("bad manager address {addr:?}: {e}")))?;
                let first = Conn::Tcp(TcpStream::from(fd));
                Client::tcp(addr, key.0, Some(first))
            }
        }
    }
}

/// Asks on the dial connection for a new connection (`Connect` or
/// `ConnectHolding`); its fd.
fn ask_connection(dial: &Mutex<Conn>, req: &Request) -> Result<OwnedFd> {
    let d = dial.lock().unwrap_or_else(PoisonError::into_inner);
    let (_, mut fds) = roundtrip(&d, req)?.map_err(remote_error)?;
    fds.pop()
        .ok_or_else(|| Error::Codec("the manager sent no connection".into()))
}

/// Without the `net` feature there is no TCP handshake to dial with.
#[cfg(not(feature = "net"))]
fn dial_tcp_stream(_: &SocketAddr, _: &[u8]) -> Result<TcpStream> {
    Err(Error::Unsupported(
        "TCP managers need mproc's `net` feature",
    ))
}

/// Dials and authenticates a TCP stream to `addr`, left blocking with no
/// timeouts.
#[cfg(feature = "net")]
fn dial_tcp_stream(addr: &SocketAddr, authkey: &[u8]) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, DIAL_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(DIAL_TIMEOUT))?;
    s.set_write_timeout(Some(DIAL_TIMEOUT))?;
    auth::answer(&s, authkey).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Error::AuthenticationFailed(e.to_string())
        } else {
            Error::Io(e)
        }
    })?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// A reply: the payload and any fds, or the server's error.
type Reply = std::result::Result<(Vec<u8>, Vec<OwnedFd>), RemoteError>;

/// One request and its reply on `conn`; `Err` when the connection failed.
fn roundtrip(conn: &Conn, req: &Request) -> Result<Reply> {
    let (bytes, _) = codec::encode(req)?;
    conn.send(&bytes, &[])?;
    let (frame, fds) = conn.recv(None).map_err(recv_error)?;
    parse_reply(frame, fds)
}

/// [`roundtrip`] on a bare TCP stream: one that leaves this process as an
/// fd rather than becoming a [`Conn`] here. The same frames as
/// [`Conn::Tcp`] (whose receive without a deadline clears the read
/// timeout, which [`dial_tcp_stream`] already did).
fn tcp_roundtrip(s: &TcpStream, req: &Request) -> Result<Reply> {
    let (bytes, _) = codec::encode(req)?;
    transport::write_frame(s, &bytes)?;
    let frame = transport::read_frame(s, transport::MAX_FRAME).map_err(recv_error)?;
    parse_reply(frame, Vec::new())
}

/// A reply frame's status byte and body.
fn parse_reply(mut frame: Vec<u8>, fds: Vec<OwnedFd>) -> Result<Reply> {
    match frame.first() {
        Some(&REPLY_OK) => {
            frame.remove(0);
            Ok(Ok((frame, fds)))
        }
        Some(&REPLY_ERR) => Ok(Err(dec::<RemoteError>(&frame[1..])?)),
        _ => Err(Error::Codec("malformed reply from the manager".into())),
    }
}

/// How a proxy travels to another process: its object id, a fresh
/// connection's fd (out of band), and for a TCP manager its address and key.
#[derive(serde::Serialize, Deserialize)]
pub(crate) struct Wire {
    pub(crate) id: u64,
    #[serde(with = "crate::codec::fd")]
    pub(crate) fd: OwnedFd,
    pub(crate) tcp: Option<(String, Bytes)>,
}

/// A proxy as it is encoded: on its way to another process (a fresh
/// connection travels with it), or stored in a container of its own
/// manager (only its id: the container holds the object, and whoever reads
/// the value back gets a hold of its own, see [`Item`](super::protocol::Item)).
#[derive(serde::Serialize, Deserialize)]
pub(crate) enum ProxyWire {
    /// On its way to another process.
    Live(Wire),
    /// Inside a stored value.
    Stored(u64),
}

/// Serializes a proxy on its way to another process: a fresh connection
/// travels with it.
pub(crate) fn serialize_proxy<S: Serializer>(
    client: &Client,
    id: u64,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    ProxyWire::Live(client.endpoint(id).map_err(S::Error::custom)?).serialize(s)
}
