//! The manager server: a registry of objects by id, one thread per
//! connection.
//!
//! The server runs as an ordinary `mproc` child ([`serve`] is its target).
//! Its first connection, the root, belongs to the process that started it:
//! when the root asks for `Shutdown`, or closes because its owner is gone,
//! the server exits. Every other connection is made on request — a local
//! client asks for one and receives the new socket end by `SCM_RIGHTS`; a
//! remote client dials the TCP listener and passes the authentication
//! challenge — and is served by a thread of its own, so a call that blocks
//! (a lock acquire, a queue get) blocks only its caller. A TCP connection
//! gets its thread only once it has passed; until then it is one of the
//! bounded set of handshakes the listener's thread runs
//! ([`listener`](super::listener)).
//!
//! A malformed request gets an error reply and the connection goes on. When
//! a connection closes, whatever locks it held are released.
//!
//! Objects are counted, as CPython counts them: each one lives while some
//! *session* holds it or a name is published for it. A local client's
//! session is its dial connection and every connection made through it; it
//! takes a hold when it creates or looks up an object and gives it back
//! when that proxy is dropped ([`Request::Release`]), and all of its holds
//! go when its last connection closes, so a killed client leaks nothing. A
//! proxy on its way to another process carries a connection that starts a
//! session of its own already holding the object
//! ([`Request::ConnectHolding`]), taken before the proxy leaves the sender,
//! so the object cannot be freed while the proxy is in flight. A TCP
//! client's connections come and go in a pool, so they find their session
//! by a random token instead ([`Request::Join`]), and the client keeps one
//! connection open that makes no requests, so that one breaking mid-call
//! does not end the session; a TCP proxy in flight carries a connection
//! that holds the object ([`Request::Acquire`]) until the receiver joins it
//! to its own session.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
#[cfg(feature = "net")]
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::limits::Limits;
#[cfg(feature = "net")]
use super::listener;
use super::objects::{Cx, Holds, Object, Ret, create_builtin, ok};
use super::pool::{PoolFn, PoolObj};
use super::protocol::{REPLY_ERR, REPLY_OK, RemoteError, RemoteErrorKind as K, Request};
use super::register::{Registry, UserObject};
use super::transport::Conn;
use crate::channel::{Channel, RecvError};
use crate::codec;

/// What the starting process hands the server.
#[derive(Serialize, Deserialize)]
pub(crate) struct ServeArgs {
    #[serde(with = "crate::codec::fd")]
    pub(crate) root: OwnedFd,
    /// Run before serving (Python's `start(initializer, initargs)`).
    pub(crate) init: Option<Init>,
    /// The functions its pools may run ([`super::pool`]).
    pub(crate) pool_fns: Vec<PoolFn>,
}

/// An initializer and its encoded arguments, as a child's job carries a
/// target: the trampoline instantiated for `fn(I)` and the function, both
/// found by their place in this executable.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Init {
    pub(crate) tramp: forkserver::FnRef,
    pub(crate) func: forkserver::FnRef,
    #[serde(with = "crate::codec::bytes")]
    pub(crate) args: Vec<u8>,
    pub(crate) fds: Vec<Fd>,
}

/// One fd among an initializer's arguments.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Fd(#[serde(with = "crate::codec::fd")] pub(crate) OwnedFd);

/// Constructor of registered types.
type MakeUser = fn(&str, &[u8]) -> Option<Result<Box<dyn Object>, RemoteError>>;

struct Server {
    objects: RwLock<HashMap<u64, Arc<dyn Object>>>,
    /// Holds per live object (sessions' holds and published names); an
    /// object leaves with its last hold.
    refs: Mutex<HashMap<u64, u64>>,
    /// TCP sessions by the token their connections join with.
    tokens: Mutex<HashMap<u64, std::sync::Weak<Session>>>,
    names: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    make_user: MakeUser,
    /// What its TCP listeners allow unauthenticated peers.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    limits: Limits,
    /// Its identity ([`Request::Ident`]): random, made at start.
    ident: u64,
    /// The functions its pools may run.
    pool_fns: Arc<[PoolFn]>,
}

fn make_user<R: Registry>(kind: &str, args: &[u8]) -> Option<Result<Box<dyn Object>, RemoteError>> {
    R::__create(kind, args).map(|r| {
        r.map(|obj| Box::new(UserObject::new(kind.to_string(), obj)) as Box<dyn Object>)
            .map_err(|e| RemoteError::new(K::Failed, e.to_string()))
    })
}

/// The server process's target: serves until the root connection asks
/// for shutdown or closes.
#[cfg(feature = "internals")]
pub(crate) fn serve<R: Registry>(args: ServeArgs) {
    serve_limited::<R>((args, Limits::default()));
}

/// [`serve`] with the limits its TCP listeners keep.
pub(crate) fn serve_limited<R: Registry>((args, limits): (ServeArgs, Limits)) {
    let server = Arc::new(Server {
        objects: RwLock::new(HashMap::new()),
        refs: Mutex::new(HashMap::new()),
        tokens: Mutex::new(HashMap::new()),
        names: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        next_conn: AtomicU64::new(1),
        make_user: make_user::<R>,
        limits,
        ident: {
            let b = crate::sys::random_bytes_or_panic(8, "a manager identity");
            let mut a = [0u8; 8];
            a.copy_from_slice(&b);
            u64::from_le_bytes(a)
        },
        pool_fns: args.pool_fns.into(),
    });
    crate::globals::allow_children();
    if let Some(init) = args.init {
        let fds = init.fds.into_iter().map(|f| f.0).collect();
        // A panic ends the server process (its owner's `start` reports it).
        if let Err(e) = crate::job::call_trampoline(init.tramp, init.func, &init.args, fds) {
            panic!("the manager's initializer failed: {e}");
        }
    }
    tracing::debug!(pid = std::process::id(), "manager: serving");
    let root = Conn::local(Channel::from_fd(args.root));
    serve_conn(&server, &root, true, Session::new(&server));
    tracing::debug!(pid = std::process::id(), "manager: shutting down");
}

impl Server {
    fn object(&self, id: u64) -> Result<Arc<dyn Object>, RemoteError> {
        self.objects
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or_else(|| RemoteError::new(K::NoSuchObject, format!("no object with id {id}")))
    }

    /// One more hold on a live object; false when there is no such object.
    fn try_ref(&self, id: u64) -> bool {
        match lock(&self.refs).get_mut(&id) {
            Some(n) => {
                *n += 1;
                true
            }
            None => false,
        }
    }

    /// Gives back `n` holds on `id`; the last one frees the object.
    fn unref(&self, id: u64, n: u64) {
        let mut refs = lock(&self.refs);
        let Some(left) = refs.get_mut(&id) else {
            return;
        };
        *left = left.saturating_sub(n);
        if *left > 0 {
            return;
        }
        refs.remove(&id);
        let freed = self
            .objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        drop(refs);
        tracing::debug!(id, "manager: object freed");
        // Dropped outside the locks (a call in progress keeps its own `Arc`).
        if let Some(freed) = freed {
            bury(freed);
        }
    }
}

impl Holds for Server {
    fn try_ref(&self, id: u64) -> bool {
        Server::try_ref(self, id)
    }

    fn unref(&self, id: u64, n: u64) {
        Server::unref(self, id, n);
    }

    fn adopt(&self, obj: Arc<dyn Object>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The object and its first hold appear together (under the count's
        // lock), so no `try_ref` can see one without the other.
        let mut refs = lock(&self.refs);
        self.objects
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, obj);
        refs.insert(id, 1);
        id
    }
}

thread_local! {
    /// Objects freed while this thread was already dropping one, to drop
    /// after it; `None` when no drop is running here.
    static GRAVE: std::cell::RefCell<Option<Vec<Arc<dyn Object>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Drops a freed object. Dropping one gives back the holds its stored
/// values had, which may free more (a list of dicts of lists...): those
/// are queued and dropped one after another here, not inside each other,
/// so however deep a peer nests objects the stack does not grow with it.
fn bury(obj: Arc<dyn Object>) {
    let first = GRAVE.with(|g| {
        let mut g = g.borrow_mut();
        match g.as_mut() {
            Some(queued) => {
                queued.push(obj);
                None
            }
            None => {
                *g = Some(Vec::new());
                Some(obj)
            }
        }
    });
    let Some(first) = first else {
        return;
    };
    drop(first);
    while let Some(next) = GRAVE.with(|g| g.borrow_mut().as_mut().and_then(Vec::pop)) {
        drop(next);
    }
    GRAVE.with(|g| *g.borrow_mut() = None);
}

/// The holds of one client session: a local client's dial connection and
/// every connection made through it, or the TCP connections that joined it
/// by its token (each thread serving one of them keeps an `Arc`). Dropped
/// with its last connection, it gives its holds back.
struct Session {
    server: Arc<Server>,
    /// Object id → holds.
    holds: Mutex<HashMap<u64, u64>>,
    /// The token TCP connections join it by, once one has.
    token: Mutex<Option<u64>>,
}

impl Session {
    fn new(server: &Arc<Server>) -> Arc<Session> {
        Arc::new(Session {
            server: server.clone(),
            holds: Mutex::new(HashMap::new()),
            token: Mutex::new(None),
        })
    }

    /// The session registered under `token`, made of `current` if there is
    /// none yet; `current`'s holds move into it either way.
    fn join(current: &Arc<Session>, token: u64) -> Arc<Session> {
        let server = &current.server;
        let mut tokens = lock(&server.tokens);
        if let Some(existing) = tokens.get(&token).and_then(std::sync::Weak::upgrade) {
            if !Arc::ptr_eq(&existing, current) {
                let moved = std::mem::take(&mut *lock(&current.holds));
                let mut into = lock(&existing.holds);
                for (id, n) in moved {
                    *into.entry(id).or_insert(0) += n;
                }
            }
            return existing;
        }
        tokens.insert(token, Arc::downgrade(current));
        *lock(&current.token) = Some(token);
        current.clone()
    }

    /// Records a hold the server has already counted.
    fn note(&self, id: u64) {
        *lock(&self.holds).entry(id).or_insert(0) += 1;
    }

    /// Takes a hold on a live object.
    fn hold(&self, id: u64) -> Result<(), RemoteError> {
        if !self.server.try_ref(id) {
            return Err(no_object(id));
        }
        self.note(id);
        Ok(())
    }

    /// Gives one hold back.
    fn release(&self, id: u64) -> Result<(), RemoteError> {
        {
            let mut holds = lock(&self.holds);
            match holds.get_mut(&id) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    holds.remove(&id);
                }
                None => {
                    return Err(RemoteError::new(
                        K::NoSuchObject,
                        format!("this client holds no reference to object {id}"),
                    ));
                }
            }
        }
        self.server.unref(id, 1);
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(token) = *self.token.get_mut().unwrap_or_else(PoisonError::into_inner) {
            let mut tokens = lock(&self.server.tokens);
            // Only if it is still ours (not one made again since).
            if tokens.get(&token).is_some_and(|w| w.strong_count() == 0) {
                tokens.remove(&token);
            }
        }
        let holds = std::mem::take(self.holds.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (id, n) in holds {
            self.server.unref(id, n);
        }
    }
}

fn no_object(id: u64) -> RemoteError {
    RemoteError::new(K::NoSuchObject, format!("no object with id {id}"))
}

/// Serves one connection until it closes (or, for the root, until it asks
/// for shutdown).
fn serve_conn(server: &Arc<Server>, conn: &Conn, root: bool, mut session: Arc<Session>) {
    let conn_id = server.next_conn.fetch_add(1, Ordering::Relaxed);
    let holds: Arc<dyn Holds> = server.clone();
    let mut held: HashSet<u64> = HashSet::new();
    loop {
        let bytes = match conn.recv(None) {
            Ok((bytes, _fds)) => bytes,
            Err(RecvError::Closed) => break,
            Err(RecvError::Timeout) => continue,
            Err(RecvError::Malformed(m)) => {
                tracing::warn!(conn_id, error = %m, "manager: malformed frame");
                let e = RemoteError::new(K::BadRequest, m);
                if send_reply(conn, Err(e), None).is_err() || matches!(conn, Conn::Tcp(_)) {
                    // A TCP stream's framing is lost after a bad length.
                    break;
                }
                continue;
            }
            Err(RecvError::Io(e)) => {
                tracing::debug!(conn_id, error = %e, "manager: connection failed");
                break;
            }
        };
        let req = match codec::decode::<Request>(&bytes, Vec::new()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(conn_id, error = %e, "manager: malformed request");
                let e = RemoteError::new(K::BadRequest, format!("malformed request: {e}"));
                if send_reply(conn, Err(e), None).is_err() {
                    break;
                }
                continue;
            }
        };
        let (reply, fd, stop) = match req {
            Request::Call { id, method, args } => {
                let cx = Cx {
                    conn_id,
                    conn,
                    holds: &holds,
                    given: Default::default(),
                };
                let r = server.object(id).and_then(|obj| {
                    let r = obj.call(&cx, &method, &args.0);
                    if obj.holds() {
                        held.insert(id);
                    }
                    r
                });
                // Holds taken for the objects the reply hands out belong to
                // the caller's session, if the call succeeded.
                for id in cx.given.into_inner() {
                    if r.is_ok() {
                        session.note(id);
                    } else {
                        server.unref(id, 1);
                    }
                }
                (r, None, false)
            }
            Request::Create { kind, args } => {
                (create(server, &session, &kind, &args.0), None, false)
            }
            Request::Connect => match connect(server, conn, session.clone()) {
                Ok(fd) => (ok(&()), Some(fd), false),
                Err(e) => (Err(e), None, false),
            },
            Request::ConnectHolding { id } => {
                let fresh = Session::new(server);
                match fresh.hold(id).and_then(|()| connect(server, conn, fresh)) {
                    Ok(fd) => (ok(&()), Some(fd), false),
                    Err(e) => (Err(e), None, false),
                }
            }
            Request::Publish { name, id } => (publish(server, name, id), None, false),
            Request::Lookup { name } => (lookup(server, &session, &name), None, false),
            Request::Release { id } => (session.release(id).and_then(|()| ok(&())), None, false),
            Request::Acquire { id } => (session.hold(id).and_then(|()| ok(&())), None, false),
            Request::Join { token } => {
                session = Session::join(&session, token);
                (ok(&()), None, false)
            }
            Request::Ident => (ok(&server.ident), None, false),
            Request::Count => {
                let n = server
                    .objects
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len() as u64;
                (ok(&n), None, false)
            }
            // Only a process on this host may open listeners: a remote
            // client must not widen who can reach the server.
            Request::Listen { .. } if matches!(conn, Conn::Tcp(_)) => (
                Err(RemoteError::new(
                    K::Unsupported,
                    "a TCP client cannot open listeners",
                )),
                None,
                false,
            ),
            Request::Listen { addr, authkey } => (listen(server, &addr, authkey.0), None, false),
            Request::Shutdown if root => (ok(&()), None, true),
            Request::Shutdown => (
                Err(RemoteError::new(
                    K::Unsupported,
                    "only the process that started the manager can shut it down",
                )),
                None,
                false,
            ),
        };
        if send_reply(conn, reply, fd.as_ref()).is_err() || stop {
            break;
        }
    }
    // Whatever this connection still holds goes back.
    for id in held {
        if let Ok(obj) = server.object(id) {
            obj.release_conn(conn_id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn send_reply(conn: &Conn, reply: Ret, fd: Option<&OwnedFd>) -> std::io::Result<()> {
    let frame = match reply {
        Ok(mut payload) => {
            payload.insert(0, REPLY_OK);
            payload
        }
        Err(e) => {
            let mut f = vec![REPLY_ERR];
            f.extend(codec::encode(&e).map(|(b, _)| b).unwrap_or_default());
            f
        }
    };
    match fd {
        Some(fd) => conn.send(&frame, &[fd.as_fd()]),
        None => conn.send(&frame, &[]),
    }
}

/// Names `id` (one hold per name); a name given again moves to the new id.
fn publish(server: &Arc<Server>, name: String, id: u64) -> Ret {
    if !server.try_ref(id) {
        return Err(no_object(id));
    }
    let old = lock(&server.names).insert(name, id);
    if let Some(old) = old {
        server.unref(old, 1);
    }
    ok(&())
}

/// The id and kind of the object published as `name`, held for the caller.
fn lookup(server: &Arc<Server>, session: &Session, name: &str) -> Ret {
    let id = lock(&server.names).get(name).copied();
    let Some(id) = id else {
        return Err(RemoteError::new(
            K::NoSuchObject,
            format!("no object is published as {name:?}"),
        ));
    };
    let obj = server.object(id)?;
    session.hold(id)?;
    ok(&(id, obj.kind().to_string()))
}

fn create(server: &Arc<Server>, session: &Session, kind: &str, args: &[u8]) -> Ret {
    let made = if kind == "pool" {
        PoolObj::create(args, &server.pool_fns)
    } else {
        create_builtin(kind, args)
            .or_else(|| (server.make_user)(kind, args))
            .unwrap_or_else(|| {
                Err(RemoteError::new(
                    K::NoSuchObject,
                    format!("no type {kind:?} is registered with this manager"),
                ))
            })
    }?;
    let id = Holds::adopt(&**server, Arc::from(made));
    session.note(id);
    ok(&id)
}

/// A fresh local connection in `session`: serves one end on a new thread,
/// returns the other.
fn connect(
    server: &Arc<Server>,
    via: &Conn,
    session: Arc<Session>,
) -> Result<OwnedFd, RemoteError> {
    if matches!(via, Conn::Tcp(_)) {
        return Err(RemoteError::new(
            K::Unsupported,
            "a TCP client opens new connections by dialing, not by asking",
        ));
    }
    let (mine, theirs) = forkserver::fdpass::seqpacket_pair()
        .map_err(|e| RemoteError::new(K::Failed, format!("socketpair: {e}")))?;
    let server = server.clone();
    std::thread::Builder::new()
        .name("mproc-manager-conn".into())
        .spawn(move || {
            serve_conn(
                &server,
                &Conn::local(Channel::from_fd(mine)),
                false,
                session,
            );
        })
        .map_err(|e| RemoteError::new(K::Failed, format!("thread: {e}")))?;
    Ok(theirs)
}

/// Opens a TCP listener whose clients must know `authkey`; its handshakes
/// run within the server's [`Limits`] (see `listener`).
#[cfg(feature = "net")]
fn listen(server: &Arc<Server>, addr: &str, authkey: Vec<u8>) -> Ret {
    let l = TcpListener::bind(addr)
        .map_err(|e| RemoteError::new(K::Failed, format!("cannot listen on {addr}: {e}")))?;
    let bound = l
        .local_addr()
        .map_err(|e| RemoteError::new(K::Failed, e.to_string()))?;
    let server = server.clone();
    std::thread::Builder::new()
        .name("mproc-manager-listen".into())
        .spawn(move || {
            let limits = server.limits;
            listener::run(l, &authkey, limits, |s| admit(&server, s));
        })
        .map_err(|e| RemoteError::new(K::Failed, format!("thread: {e}")))?;
    tracing::info!(%bound, "manager: listening");
    ok(&bound.to_string())
}

/// Without the `net` feature there is no TCP listener.
#[cfg(not(feature = "net"))]
fn listen(_: &Arc<Server>, _: &str, _: Vec<u8>) -> Ret {
    Err(RemoteError::new(
        K::Failed,
        "this manager was built without mproc's `net` feature: no TCP listener",
    ))
}

/// Serves a TCP client that passed the handshake, on a thread of its own.
#[cfg(feature = "net")]
fn admit(server: &Arc<Server>, s: TcpStream) {
    let server2 = server.clone();
    let spawned = std::thread::Builder::new()
        .name("mproc-manager-tcp".into())
        .spawn(move || {
            serve_conn(&server2, &Conn::Tcp(s), false, Session::new(&server2));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "manager: no thread for an authenticated client");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::auth;
    use crate::manager::protocol::Bytes;
    use std::time::Duration;

    fn start() -> (Channel, std::thread::JoinHandle<()>) {
        let (mine, theirs) = forkserver::fdpass::seqpacket_pair().unwrap();
        let t = std::thread::spawn(move || {
            serve::<()>(ServeArgs {
                root: theirs,
                init: None,
                pool_fns: Vec::new(),
            })
        });
        (Channel::from_fd(mine), t)
    }

    fn ask(c: &Channel, frame: &[u8]) -> Vec<u8> {
        c.send(frame, &[]).unwrap();
        c.recv(Some(std::time::Instant::now() + Duration::from_secs(10)))
            .unwrap()
            .0
    }

    fn req(r: &Request) -> Vec<u8> {
        codec::encode(r).unwrap().0
    }

    #[test]
    fn malformed_requests_get_error_replies_and_serving_goes_on() {
        let (c, t) = start();
        for junk in [&b""[..], b"\xff\xff\xff\xff", b"\x00\x05abc", &[7u8; 5000]] {
            let r = ask(&c, junk);
            assert_eq!(r[0], REPLY_ERR, "{junk:?}");
            let e: RemoteError = codec::decode(&r[1..], Vec::new()).unwrap();
            assert_eq!(e.kind, K::BadRequest);
        }
        // Still serving: create a dict and use it.
        let r = ask(
            &c,
            &req(&Request::Create {
                kind: "dict".into(),
                args: Bytes(codec::encode(&()).unwrap().0),
            }),
        );
        assert_eq!(r[0], REPLY_OK);
        let id: u64 = codec::decode(&r[1..], Vec::new()).unwrap();
        // Bad arguments, unknown method, unknown object: error replies.
        for (id, method, args) in [
            (id, "set", vec![1u8, 2]),
            (id, "frobnicate", Vec::new()),
            (id + 100, "len", Vec::new()),
        ] {
            let r = ask(
                &c,
                &req(&Request::Call {
                    id,
                    method: method.into(),
                    args: Bytes(args),
                }),
            );
            assert_eq!(r[0], REPLY_ERR, "{method}");
        }
        let r = ask(
            &c,
            &req(&Request::Call {
                id,
                method: "len".into(),
                args: Bytes(Vec::new()),
            }),
        );
        assert_eq!(r[0], REPLY_OK);
        assert_eq!(codec::decode::<u64>(&r[1..], Vec::new()).unwrap(), 0);
        let r = ask(&c, &req(&Request::Shutdown));
        assert_eq!(r[0], REPLY_OK);
        t.join().unwrap();
    }

    #[test]
    fn tcp_bad_frames_get_error_replies_and_a_wrong_key_reads_nothing() {
        use std::io::{Read, Write};
        let (c, t) = start();
        let key = Bytes(b"k".to_vec());
        let r = ask(
            &c,
            &req(&Request::Listen {
                addr: "127.0.0.1:0".into(),
                authkey: key,
            }),
        );
        assert_eq!(r[0], REPLY_OK);
        let addr: String = codec::decode(&r[1..], Vec::new()).unwrap();

        // A wrong key: refused before any request is read.
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(auth::answer(&s, b"not k").is_err());
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
        assert!(rest.is_empty(), "the server said more to a refused client");

        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        auth::answer(&s, b"k").unwrap();
        let conn = Conn::Tcp(s);
        let deadline = || Some(std::time::Instant::now() + Duration::from_secs(10));
        // Garbage in a well-formed frame: an error reply, then more service.
        conn.send(b"\xff\xfe garbage", &[]).unwrap();
        let (r, _) = conn.recv(deadline()).unwrap();
        assert_eq!(r[0], REPLY_ERR);
        conn.send(
            &req(&Request::Create {
                kind: "lock".into(),
                args: Bytes(Vec::new()),
            }),
            &[],
        )
        .unwrap();
        let (r, _) = conn.recv(deadline()).unwrap();
        assert_eq!(r[0], REPLY_OK);
        // A TCP client can neither dial nor shut the server down.
        for bad in [Request::Connect, Request::Shutdown] {
            conn.send(&req(&bad), &[]).unwrap();
            let (r, _) = conn.recv(deadline()).unwrap();
            assert_eq!(r[0], REPLY_ERR);
        }
        // An announced length over the limit: an error reply, then close.
        if let Conn::Tcp(s) = &conn {
            (&*s).write_all(&(u32::MAX).to_le_bytes()).unwrap();
        }
        let (r, _) = conn.recv(deadline()).unwrap();
        assert_eq!(r[0], REPLY_ERR);
        assert!(matches!(conn.recv(deadline()), Err(RecvError::Closed)));
        // The root is still served.
        let r = ask(&c, &req(&Request::Shutdown));
        assert_eq!(r[0], REPLY_OK);
        t.join().unwrap();
    }

    #[test]
    fn root_closing_stops_the_server() {
        let (c, t) = start();
        drop(c);
        t.join().unwrap();
    }
}
