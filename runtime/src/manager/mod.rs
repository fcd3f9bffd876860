//! Managers: a server process that holds shared objects, and proxies that
//! call their methods from any process (Python's
//! `multiprocessing.managers`).
//!
//! [`Context::manager`] starts the server as a child process (by the
//! context's start method) and returns a [`Manager`]; its methods create
//! objects in the server — [`Dict`], [`List`], [`Set`], [`Namespace`], [`Queue`], [`Pool`],
//! [`JoinableQueue`], [`Value`], [`Array`], [`Lock`], [`RLock`],
//! [`Semaphore`], [`Condition`], [`Event`], [`Barrier`], or a type of your
//! own ([`Shared`], registered with [`ManagerBuilder::register`]) — and
//! return proxies. Every proxy method is one request and one reply, atomic
//! on the server.
//!
//! Proxies are serde values: pass one to a child as an argument, put one
//! in a queue, and the receiver talks to the same object. It does so on a
//! connection of its own, made for it while the proxy was being encoded
//! (the new socket end travels by `SCM_RIGHTS`), so replies never go to the
//! wrong process. Local connections are socket pairs: the server has no
//! name on the filesystem or in the abstract namespace, and only processes
//! given a connection can reach it.
//!
//! Across hosts, [`Manager::listen`] opens a TCP listener and [`connect`]
//! reaches it; both sides of every TCP connection first prove they know the
//! authkey (a mutual HMAC-SHA256 challenge with random nonces), and a peer
//! that fails is logged and dropped before any request of it is read. What
//! a peer that never answers may cost is bounded: see [`Manager::listen`].
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! use std::time::Duration;
//!
//! fn work(args: (mproc::manager::Dict<String, i64>, mproc::manager::Lock, i64)) {
//!     let (shared, lock, n) = args;
//!     // The seeds' `share_data["count"] += n`, made exact by the lock.
//!     let _held = lock.lock().unwrap();
//!     let count = shared.get("count").unwrap().unwrap_or(0);
//!     shared.set("count", &(count + n)).unwrap();
//! }
//!
//! let ctx = mproc::get_context("forkserver")?;
//! let manager = ctx.manager()?;
//! let shared = manager.dict::<String, i64>()?;
//! shared.set("count", &500)?;
//! let lock = manager.lock()?;
//! let mut children = Vec::new();
//! for n in [100, 200] {
//!     let args = (shared.clone(), lock.clone(), n);
//!     children.push(ctx.process(work, args).start()?);
//! }
//! for mut c in children {
//!     c.join_timeout(Duration::from_secs(30))?;
//! }
//! assert_eq!(shared.get("count")?, Some(800));
//! manager.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! An object lives while a proxy of it does, in any process (clones share
//! one reference), or while a name is [published](Manager::publish) for
//! it, as CPython counts references. A proxy sent to another process takes
//! its reference before it leaves, so dropping the sender's copy right
//! after `put` or `start` is safe; a process that dies gives back all of
//! its references when its connections close, which CPython cannot do;
//! the same holds for clients that [`connect`] over TCP.
//!
//! Values are stored encoded, so a value that holds a file descriptor (an
//! [`mproc::Queue`](crate::Queue), a `Connection`) cannot be stored in
//! one; a proxy of the same manager can (CPython's nested proxies): the
//! container then holds its object, until the value is overwritten or
//! removed or the container goes, and reading it back gives a working
//! proxy.
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! use mproc::manager::Dict;
//!
//! let manager = mproc::get_context("forkserver")?.manager()?;
//! let base = manager.number_of_objects()?;
//! let pets = manager.dict::<String, i32>()?;
//! let d = manager.dict::<String, Dict<String, i32>>()?;
//! d.set("pets", &pets)?;
//! drop(pets); // `d` holds it now
//! d.get("pets")?.unwrap().set("ferrets", &2)?;
//! assert_eq!(d.get("pets")?.unwrap().get("ferrets")?, Some(2));
//! drop(d);
//! assert_eq!(manager.number_of_objects()?, base);
//! # Ok(()) }
//! ```

#[cfg(feature = "net")]
pub(crate) mod auth;
mod client;
mod limits;
#[cfg(feature = "net")]
mod listener;
mod objects;
mod pool;
pub(crate) mod protocol;
mod proxies;
mod register;
pub(crate) mod server;
pub(crate) mod transport;

use std::marker::PhantomData;
#[cfg(feature = "net")]
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::process::Process;
use client::Client;
use protocol::{Bytes, Request};

pub use pool::{AsyncResult, MapResult, Pool};
#[doc(hidden)]
pub use protocol::NumTagPublic;
pub use protocol::{Number, RemoteError, RemoteErrorKind};
pub use proxies::{
    Array, Barrier, BaseProxy, Condition, Dict, Event, JoinableQueue, List, Lock, LockGuard,
    Namespace, Proxy, Queue, RLock, RawProxy, Semaphore, Set, Value,
};
pub use register::{Call, CallError, DynShared, Registry, Returned, Shared};

/// How long [`Manager::shutdown`] waits for the server to exit before it
/// kills it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Context {
    /// Starts a manager server process by this context's start method
    /// (Python's `ctx.Manager()`).
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("spawn")?.manager()?;
    /// let l = manager.list::<String>()?;
    /// l.push("a")?;
    /// assert_eq!(l.len()?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the server process cannot be started.
    #[doc(alias = "Manager")]
    #[doc(alias = "SyncManager")]
    pub fn manager(&self) -> Result<Manager> {
        self.manager_builder().start()
    }

    /// A manager to configure before it starts: registered types.
    #[doc(alias = "BaseManager")]
    pub fn manager_builder(&self) -> ManagerBuilder<()> {
        ManagerBuilder {
            ctx: *self,
            limits: limits::Limits::default(),
            init: None,
            pool_fns: Vec::new(),
            _types: PhantomData,
        }
    }
}

/// Configures a manager before it starts (Python's `BaseManager` subclass
/// with its `register` calls); [`ManagerBuilder::start`] starts it.
#[must_use = "a manager does not run until `start` is called"]
#[derive(Debug)]
pub struct ManagerBuilder<R = ()> {
    ctx: Context,
    limits: limits::Limits,
    init: Option<Result<server::Init>>,
    pool_fns: Vec<Result<pool::PoolFn>>,
    _types: PhantomData<fn() -> R>,
}

impl<R: Registry> ManagerBuilder<R> {
    /// Lets the server build and serve objects of type `T`
    /// (Python's `BaseManager.register(typeid, callable)`); create them with
    /// [`Manager::create`]. See [`Shared`] for an example.
    pub fn register<T: Shared>(self) -> ManagerBuilder<(T, R)> {
        ManagerBuilder {
            ctx: self.ctx,
            limits: self.limits,
            init: self.init,
            pool_fns: self.pool_fns,
            _types: PhantomData,
        }
    }

    /// Runs `f(args)` in the server process before it serves (Python's
    /// `manager.start(initializer, initargs)`): to set up logging, signal
    /// dispositions or process-wide state of registered types. `f` is a
    /// `fn` item (or a closure that captures nothing), found in the server
    /// by its place in this executable as every target is; `args` may
    /// carry fds (an [`mproc::Queue`](crate::Queue), say).
    ///
    /// [`start`](ManagerBuilder::start) waits until it has returned; if it
    /// panics, the server exits and `start` fails with
    /// [`Error::Panicked`].
    ///
    /// ```
    /// fn announce(q: mproc::Queue<u32>) {
    ///     q.put(std::process::id()).unwrap();
    /// }
    ///
    /// # fn main() -> mproc::Result<()> {
    /// let ctx = mproc::get_context("forkserver")?;
    /// let q = mproc::Queue::new()?;
    /// let manager = ctx.manager_builder().initializer(announce, q.clone()).start()?;
    /// let pid = q.get_timeout(std::time::Duration::from_secs(30))?;
    /// assert_eq!(Some(pid as i32), manager.pid());
    /// # Ok(()) }
    /// ```
    #[doc(alias = "initargs")]
    pub fn initializer<I>(mut self, f: fn(I), args: I) -> Self
    where
        I: Serialize + DeserializeOwned + 'static,
    {
        self.init = Some((|| {
            let (args, fds) = crate::codec::encode(&args)?;
            let func = crate::process::method::target_ref(self.ctx.start_method(), f as usize)?;
            let tramp = crate::job::trampoline::<I, ()> as crate::job::Trampoline as usize;
            Ok(server::Init {
                tramp: forkserver::FnRef::from_addr(tramp),
                func,
                args,
                fds: fds.into_iter().map(server::Fd).collect(),
            })
        })());
        self
    }

    /// Lets the manager's pools ([`Manager::pool`]) run `f`, a `fn` item
    /// (or a closure that captures nothing). Python's manager pools run any
    /// picklable callable; here the server runs only the functions listed
    /// by the process that starts it, since clients (over TCP too) name
    /// the function and no address they send is ever called.
    ///
    /// ```
    /// fn shout(s: String) -> String { s.to_uppercase() }
    ///
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("spawn")?.manager_builder().pool_fn(shout).start()?;
    /// let pool = manager.pool(1)?;
    /// assert_eq!(pool.apply(shout, "hi".to_string())?, "HI");
    /// # Ok(()) }
    /// ```
    #[doc(alias = "Pool")]
    pub fn pool_fn<A, T>(mut self, f: fn(A) -> T) -> Self
    where
        A: Serialize + DeserializeOwned + 'static,
        T: Serialize + DeserializeOwned + 'static,
    {
        self.pool_fns
            .push(pool::PoolFn::new(self.ctx.start_method(), f));
        self
    }

    /// How long a TCP client has, from the moment it is accepted, to pass
    /// the authentication handshake (default 2 s); one that takes longer
    /// is dropped. See [`Manager::listen`].
    #[cfg(feature = "net")]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// How many TCP connections may be in the authentication handshake at
    /// once, per listener (default 64, at least 1); while that many are,
    /// further connections wait in the kernel's listen backlog. See
    /// [`Manager::listen`].
    #[cfg(feature = "net")]
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.limits.max_handshakes = n.max(1);
        self
    }

    /// Starts the server process (Python's `manager.start()`).
    ///
    /// The server is a daemonic child: it ends with [`Manager::shutdown`],
    /// when the `Manager` is dropped, or when this process ends.
    ///
    /// # Errors
    /// When the server process cannot be started.
    pub fn start(self) -> Result<Manager> {
        let init = self.init.transpose()?;
        let pool_fns = self.pool_fns.into_iter().collect::<Result<Vec<_>>>()?;
        let waits = init.is_some();
        let (mine, theirs) = forkserver::fdpass::seqpacket_pair()?;
        let mut process = self
            .ctx
            .process(
                server::serve_limited::<R>,
                (
                    server::ServeArgs {
                        root: theirs,
                        init,
                        pool_fns,
                    },
                    self.limits,
                ),
            )
            .name("SyncManager")
            .daemon(true)
            .start()?;
        tracing::debug!(pid = process.pid(), "manager started");
        let client = Arc::new(Client::local(mine));
        if waits {
            // Served once the initializer has returned; a closed root
            // means it failed, and the process says how.
            if let Err(e) = client.count() {
                return Err(match process.join_timeout(SHUTDOWN_GRACE) {
                    Err(Error::Timeout) => {
                        let _ = process.kill();
                        let _ = process.join_timeout(SHUTDOWN_GRACE);
                        e
                    }
                    Err(why) => why,
                    Ok(()) => e,
                });
            }
        }
        Ok(Manager {
            client,
            process: Mutex::new(Some(process)),
            owner_pid: std::process::id(),
        })
    }
}

/// A handle on a manager server (Python's `SyncManager`): creates shared
/// objects and returns their proxies.
///
/// Made by [`Context::manager`] (owning the server: shutting it down or
/// dropping it stops the server) or by [`connect`] (a client of a server
/// that another process owns).
#[doc(alias = "SyncManager")]
#[doc(alias = "BaseManager")]
pub struct Manager {
    client: Arc<Client>,
    process: Mutex<Option<Process<()>>>,
    owner_pid: u32,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("client", &self.client)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Manager {
    fn make<P: BaseProxy, A: Serialize + ?Sized>(&self, args: &A) -> Result<P> {
        let id = self.client.create(P::kind(), args)?;
        Ok(P::__from_raw(RawProxy::held(&self.client, id)))
    }

    /// The server's pid, for a manager this process started.
    pub fn pid(&self) -> Option<i32> {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.pid())
    }

    /// How many objects the server holds now (Python's
    /// `manager._number_of_objects()`). An object lives while a proxy of it
    /// does in any process, or while a name is published for it; see
    /// [`Manager::publish`].
    ///
    /// A `fork` child shares its parent's references rather than taking
    /// its own, so a proxy's last release in this process waits until
    /// every `fork` child started since the proxy was made has been reaped
    /// (by whichever thread started it: the child has a copy of this
    /// process's memory). The reap that unblocks a release runs it before
    /// it returns.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let before = manager.number_of_objects()?;
    /// let d = manager.dict::<String, u32>()?;
    /// assert_eq!(manager.number_of_objects()?, before + 1);
    /// drop(d);
    /// assert_eq!(manager.number_of_objects()?, before);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn number_of_objects(&self) -> Result<usize> {
        self.client.count().map(|n| n as usize)
    }

    /// A new empty dict (Python's `manager.dict()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Dict")]
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(
        &self,
    ) -> Result<Dict<K, V>> {
        self.make(&())
    }

    /// A new empty list (Python's `manager.list()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "List")]
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<List<T>> {
        self.make(&Vec::<Bytes>::new())
    }

    /// A new empty set (Python's `manager.set()`, CPython 3.14); see
    /// [`Set`].
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let seen = manager.set::<String>()?;
    /// seen.add(&"a".to_string())?;
    /// seen.add(&"a".to_string())?;
    /// assert_eq!(seen.len()?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "SetProxy")]
    pub fn set<T: Serialize + DeserializeOwned>(&self) -> Result<Set<T>> {
        self.make(&())
    }

    /// A new pool of `processes` worker processes in the manager (Python's
    /// `manager.Pool(processes)`); see [`Pool`]. It runs the functions
    /// listed with [`ManagerBuilder::pool_fn`].
    ///
    /// # Errors
    /// [`Error::Remote`] of kind `Unsupported` when the manager was built
    /// without any [`pool_fn`](ManagerBuilder::pool_fn) (such a pool could
    /// run nothing), of kind `Value` for 0 processes or more than 1024;
    /// of kind `Failed` when the workers cannot be started; and when the
    /// manager cannot be reached.
    #[doc(alias = "Pool")]
    pub fn pool(&self, processes: usize) -> Result<Pool> {
        self.make(&(processes as u64))
    }

    /// A new namespace (Python's `manager.Namespace()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Namespace")]
    pub fn namespace(&self) -> Result<Namespace> {
        self.make(&())
    }

    /// A new unbounded queue (Python's `manager.Queue()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Queue")]
    pub fn queue<T: Serialize + DeserializeOwned>(&self) -> Result<Queue<T>> {
        self.make(&None::<u64>)
    }

    /// A new queue holding at most `maxsize` items (Python's
    /// `manager.Queue(maxsize)`; 0 is no bound, as there): a
    /// [`put`](Queue::put) waits while it is full, and
    /// [`put_nowait`](Queue::put_nowait) fails with
    /// [`PutError::Full`](crate::queue::PutError::Full), giving the item
    /// back.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    ///
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let q = manager.bounded_queue::<u32>(2)?;
    /// q.put(1)?;
    /// q.put(2)?;
    /// assert!(q.full()?);
    /// let err = q.put_timeout(3, Duration::from_millis(10)).unwrap_err();
    /// assert!(err.is_full());
    /// assert_eq!(q.get()?, 1);
    /// q.put(err.into_inner())?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Queue")]
    pub fn bounded_queue<T: Serialize + DeserializeOwned>(
        &self,
        maxsize: usize,
    ) -> Result<Queue<T>> {
        self.make(&Some(maxsize as u64))
    }

    /// A new joinable queue (Python's `manager.JoinableQueue()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "JoinableQueue")]
    pub fn joinable_queue<T: Serialize + DeserializeOwned>(&self) -> Result<JoinableQueue<T>> {
        self.make(&None::<u64>)
    }

    /// A new joinable queue holding at most `maxsize` items (Python's
    /// `manager.JoinableQueue(maxsize)`; 0 is no bound), with the
    /// back-pressure of [`Manager::bounded_queue`].
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "JoinableQueue")]
    pub fn bounded_joinable_queue<T: Serialize + DeserializeOwned>(
        &self,
        maxsize: usize,
    ) -> Result<JoinableQueue<T>> {
        self.make(&Some(maxsize as u64))
    }

    /// A new value (Python's `manager.Value(typecode, value)`).
    ///
    /// # Errors
    /// When the manager cannot be reached or `init` cannot be encoded.
    #[doc(alias = "Value")]
    pub fn value<T: Serialize + DeserializeOwned>(&self, init: &T) -> Result<Value<T>> {
        self.make(&Bytes(client::enc(init)?))
    }

    /// A new fixed-length array (Python's `manager.Array(typecode, items)`).
    ///
    /// # Errors
    /// When the manager cannot be reached or an item cannot be encoded.
    #[doc(alias = "Array")]
    pub fn array<T: Serialize + DeserializeOwned>(&self, items: &[T]) -> Result<Array<T>> {
        let items: Vec<Bytes> = items
            .iter()
            .map(|x| client::enc(x).map(Bytes))
            .collect::<Result<_>>()?;
        self.make(&items)
    }

    /// A new lock (Python's `manager.Lock()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Lock")]
    pub fn lock(&self) -> Result<Lock> {
        self.make(&())
    }

    /// A new reentrant lock (Python's `manager.RLock()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "RLock")]
    pub fn rlock(&self) -> Result<RLock> {
        self.make(&())
    }

    /// A new semaphore with `value` units (Python's `manager.Semaphore(value)`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Semaphore")]
    pub fn semaphore(&self, value: u64) -> Result<Semaphore> {
        self.make(&value)
    }

    /// A new semaphore that cannot be released above `value` (Python's
    /// `manager.BoundedSemaphore(value)`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "BoundedSemaphore")]
    pub fn bounded_semaphore(&self, value: u64) -> Result<Semaphore> {
        let id = self.client.create("bounded_semaphore", &value)?;
        Ok(Semaphore::__from_raw(RawProxy::held(&self.client, id)))
    }

    /// A new condition variable (Python's `manager.Condition()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Condition")]
    pub fn condition(&self) -> Result<Condition> {
        self.make(&())
    }

    /// A new event (Python's `manager.Event()`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    #[doc(alias = "Event")]
    pub fn event(&self) -> Result<Event> {
        self.make(&())
    }

    /// A new barrier for `parties` callers (Python's `manager.Barrier(parties)`).
    ///
    /// # Errors
    /// When the manager cannot be reached, or `parties` is 0.
    #[doc(alias = "Barrier")]
    pub fn barrier(&self, parties: usize) -> Result<Barrier> {
        self.make(&(parties as u64))
    }

    /// A new object of a registered type, built from `init` in the server
    /// (Python's `manager.TypeName(*args)` after `register`).
    ///
    /// # Errors
    /// When `T` was not registered with this manager's builder, or the
    /// manager cannot be reached.
    pub fn create<T: Shared>(&self, init: &T::Init) -> Result<Proxy<T>> {
        self.make(init)
    }

    /// Names an object so that any client of this manager (one that
    /// [`connect`]ed over TCP, say) can find it with [`Manager::lookup`].
    /// A published object lives until the server stops, or until its name
    /// is published again for another object and no proxy of it is left.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn publish<P: BaseProxy>(&self, name: &str, proxy: &P) -> Result<()> {
        let payload = self.client.request(&Request::Publish {
            name: name.to_string(),
            id: proxy.id(),
        })?;
        client::dec(&payload)
    }

    /// The object published as `name`.
    ///
    /// # Errors
    /// [`Error::Remote`] of kind `NoSuchObject` when nothing has that name,
    /// or of another kind when it is not a `P`.
    pub fn lookup<P: BaseProxy>(&self, name: &str) -> Result<P> {
        let payload = self.client.request(&Request::Lookup {
            name: name.to_string(),
        })?;
        let (id, kind): (u64, String) = client::dec(&payload)?;
        if !P::accepts(&kind) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{name:?} is a {kind}, not a {}", P::kind()),
            )));
        }
        Ok(P::__from_raw(RawProxy::held(&self.client, id)))
    }

    /// Opens a TCP listener in the server on `addr` (port 0 picks one) that
    /// admits clients proving they know `authkey`; the bound address
    /// (Python's `BaseManager(address, authkey)`).
    ///
    /// Until a client has proved it, it costs the server little and not for
    /// long: one thread per listener runs every handshake at once, at most
    /// [`ManagerBuilder::max_handshakes`] (64 by default) connections are in
    /// the handshake at a time (further ones wait in the kernel's listen
    /// backlog, and past that the kernel drops them and their clients
    /// retry), and a handshake not done within
    /// [`ManagerBuilder::handshake_timeout`] (2 s by default) of its accept
    /// is dropped. A client that passes is served on a thread of its own.
    /// So a flood of connections that never answer costs no threads and
    /// delays a new client by at most the timeout per `max_handshakes`
    /// silent peers ahead of it, while clients already connected go on as
    /// before.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let manager = mproc::get_context("forkserver")?.manager()?;
    /// let addr = manager.listen("127.0.0.1:0", b"secret")?;
    /// manager.publish("jobs", &manager.queue::<u32>()?)?;
    ///
    /// let remote = mproc::manager::connect(addr, b"secret")?;
    /// let jobs = remote.lookup::<mproc::manager::Queue<u32>>("jobs")?;
    /// jobs.put(7)?;
    /// assert!(mproc::manager::connect(addr, b"wrong").is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the address cannot be bound.
    #[cfg(feature = "net")]
    pub fn listen(&self, addr: impl ToSocketAddrs, authkey: &[u8]) -> Result<SocketAddr> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::Io(std::io::ErrorKind::InvalidInput.into()))?;
        let payload = self.client.request(&Request::Listen {
            addr: addr.to_string(),
            authkey: Bytes(authkey.to_vec()),
        })?;
        let bound: String = client::dec(&payload)?;
        bound
            .parse()
            .map_err(|e| Error::Codec(format!("bad address {bound:?}: {e}")))
    }

    /// Stops the server and waits for it to exit (Python's
    /// `manager.shutdown()`); proxies fail with [`Error::Closed`] afterwards.
    /// For a manager reached by [`connect`], only disconnects.
    ///
    /// # Errors
    /// When the server cannot be reached (it is killed then) or waiting
    /// for it fails.
    pub fn shutdown(&self) -> Result<()> {
        let Some(mut p) = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let asked = self.client.shutdown();
        match p.join_timeout(SHUTDOWN_GRACE) {
            Ok(()) => {}
            Err(Error::Timeout) => {
                tracing::warn!(pid = p.pid(), "manager did not stop: killing it");
                p.kill()?;
                let _ = p.join_timeout(SHUTDOWN_GRACE);
            }
            Err(Error::Exited { .. }) => {}
            Err(e) => return Err(e),
        }
        match asked {
            Ok(()) | Err(Error::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if self.owner_pid == std::process::id()
            && let Err(e) = self.shutdown()
        {
            tracing::debug!(error = %e, "manager shutdown on drop failed");
        }
    }
}

/// Connects to a manager that [`Manager::listen`]s on `addr`, proving
/// knowledge of `authkey` (Python's `BaseManager(address,
/// authkey).connect()`).
///
/// # Errors
/// [`Error::AuthenticationFailed`] when the key is wrong on either side; an
/// I/O error when `addr` cannot be reached.
#[doc(alias = "BaseManager.connect")]
#[cfg(feature = "net")]
pub fn connect(addr: impl ToSocketAddrs, authkey: &[u8]) -> Result<Manager> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::Io(std::io::ErrorKind::InvalidInput.into()))?;
    let first = Client::dial_tcp(&addr, authkey)?;
    Ok(Manager {
        client: Arc::new(Client::tcp(addr, authkey.to_vec(), Some(first))?),
        process: Mutex::new(None),
        owner_pid: std::process::id(),
    })
}
