//! A pool of worker processes that lives in the manager (Python's
//! `SyncManager.Pool`): [`Manager::pool`](super::Manager::pool) starts it
//! in the server process, and a [`Pool`] proxy from any process hands it
//! work — [`apply`](Pool::apply), [`apply_async`](Pool::apply_async) (whose
//! [`AsyncResult`] is an object in the manager too) and [`map`](Pool::map).
//!
//! What is hard is naming the function. A proxy may reach the manager over
//! TCP, so no function address a client sends is ever called: the
//! functions a manager's pools may run are listed when the manager is
//! built ([`ManagerBuilder::pool_fn`](super::ManagerBuilder::pool_fn)), by
//! the process that starts the server, and travel with the server's own
//! job as every target does. A client names one by its place in the
//! executable and its signature; the server looks the pair up in its list
//! and runs the trampolines it was given for it, so an unknown name is an
//! error and a wrong one can only select another listed function, whose
//! own trampoline decodes the arguments (a decoding error, never a call
//! through a forged address). The server never decodes arguments or
//! results: it relays their encodings between the client and a worker.

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use forkserver::FnRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::dec;
use super::objects::{Cx, Object, Ret, Unmet, de, gone, lock, no_method, ok, wait_until};
use super::protocol::{Bytes, RemoteError, RemoteErrorKind as K, Wait};
use super::proxies::{BaseProxy, RawProxy, proxy};
use crate::error::{Error, Result};
use crate::job::{self, ChunkOut, Trampoline};
use crate::{PoolError, StartMethod};

/// The most workers one manager pool may have: a peer chooses the number,
/// and must not be able to make the server fork without bound.
pub(crate) const MAX_POOL_PROCESSES: usize = 1024;

/// A function a manager's pools may run, listed by
/// [`ManagerBuilder::pool_fn`](super::ManagerBuilder::pool_fn).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PoolFn {
    /// The function, found by its place in this executable.
    func: FnRef,
    /// `job::trampoline::<A, R>`, for one call.
    tramp: FnRef,
    /// `job::chunk_trampoline::<A, R>`, for a chunk of a map.
    chunk: FnRef,
    /// `fn(A) -> R`, spelled out; a client's must match.
    sig: String,
}

impl PoolFn {
    /// The entry for `f`, for a server started by `method`.
    pub(crate) fn new<A, R>(method: StartMethod, f: fn(A) -> R) -> Result<PoolFn>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        Ok(PoolFn {
            func: crate::process::method::target_ref(method, f as usize)?,
            tramp: FnRef::from_addr(job::trampoline::<A, R> as Trampoline as usize),
            chunk: FnRef::from_addr(job::chunk_trampoline::<A, R> as Trampoline as usize),
            sig: signature::<A, R>(),
        })
    }
}

fn signature<A, R>() -> String {
    type_name::<fn(A) -> R>().to_string()
}

/// How a client names a function: its place in the executable and its
/// signature.
#[derive(Debug, Serialize, Deserialize)]
struct FnName {
    offset: i64,
    sig: String,
}

impl FnName {
    fn of<A, R>(f: fn(A) -> R) -> FnName {
        FnName {
            offset: FnRef::from_addr(f as usize).offset(),
            sig: signature::<A, R>(),
        }
    }
}

/// One task's outcome as it travels back: the encoded value, or the
/// message of the panic that ended the call.
type Out = Result<Bytes, String>;

// ------------------------------------------------------------ the server side

/// Tasks submitted together, and their outcomes as they arrive.
struct Pending {
    st: Mutex<PendingState>,
    cv: Condvar,
}

struct PendingState {
    outs: Vec<Option<Out>>,
    left: usize,
    /// Why the pool could not run one of them (the first reason).
    failed: Option<String>,
}

impl Pending {
    fn new(n: usize) -> Arc<Pending> {
        Arc::new(Pending {
            st: Mutex::new(PendingState {
                outs: (0..n).map(|_| None).collect(),
                left: n,
                failed: None,
            }),
            cv: Condvar::new(),
        })
    }

    /// Task `k` is done (called once per task, on the pool's thread).
    fn finish(&self, k: usize, out: std::result::Result<Result<Vec<u8>, String>, PoolError>) {
        let mut st = lock(&self.st);
        match out {
            Ok(out) => {
                if let Some(slot) = st.outs.get_mut(k) {
                    *slot = Some(out.map(Bytes));
                }
            }
            Err(e) => {
                st.failed.get_or_insert_with(|| e.to_string());
            }
        }
        st.left = st.left.saturating_sub(1);
        self.cv.notify_all();
    }

    fn ready(&self) -> bool {
        lock(&self.st).left == 0
    }

    /// Waits for every task, for at most `wait`.
    fn wait(&self, cx: &Cx<'_>, wait: Wait) -> std::result::Result<(), RemoteError> {
        let (_st, r) = wait_until(cx, &self.cv, lock(&self.st), wait, |st| st.left == 0);
        match r {
            Ok(()) => Ok(()),
            Err(Unmet::Timeout) => Err(RemoteError::timeout()),
            Err(Unmet::Gone) => Err(gone()),
        }
    }

    /// The outcomes, once every task is done.
    fn outcome(&self) -> Ret {
        let st = lock(&self.st);
        if let Some(why) = &st.failed {
            return Err(RemoteError::new(K::Failed, why.clone()));
        }
        ok(&st.outs)
    }

    /// Waits (at most `wait`), then the outcomes.
    fn get(&self, cx: &Cx<'_>, wait: Wait) -> Ret {
        self.wait(cx, wait)?;
        self.outcome()
    }
}

/// A pool in the server.
pub(crate) struct PoolObj {
    pool: crate::Pool,
    fns: Arc<[PoolFn]>,
}

impl PoolObj {
    /// Starts a pool of the encoded number of workers (with the server's
    /// default context), able to run `fns`.
    pub(crate) fn create(
        args: &[u8],
        fns: &Arc<[PoolFn]>,
    ) -> std::result::Result<Box<dyn Object>, RemoteError> {
        let n: u64 = de(args)?;
        if fns.is_empty() {
            // It could run nothing; and a peer cannot make a server
            // without listed functions fork at all.
            return Err(RemoteError::new(
                K::Unsupported,
                "this manager lists no functions for pools: use ManagerBuilder::pool_fn",
            ));
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if !(1..=MAX_POOL_PROCESSES).contains(&n) {
            return Err(RemoteError::new(
                K::Value,
                format!("a manager's pool has 1 to {MAX_POOL_PROCESSES} processes, not {n}"),
            ));
        }
        let pool = crate::default_context()
            .pool(n)
            .map_err(|e| RemoteError::new(K::Failed, e.to_string()))?;
        Ok(Box::new(PoolObj {
            pool,
            fns: fns.clone(),
        }))
    }

    fn find(&self, name: &FnName) -> std::result::Result<&PoolFn, RemoteError> {
        self.fns
            .iter()
            .find(|f| f.func.offset() == name.offset && f.sig == name.sig)
            .ok_or_else(|| {
                RemoteError::new(
                    K::Unsupported,
                    format!(
                        "this manager's pools cannot run that {}: list it with ManagerBuilder::pool_fn",
                        name.sig
                    ),
                )
            })
    }

    /// Submits one task per encoded argument (`chunks` picks the chunk
    /// trampoline, for a map).
    fn submit(
        &self,
        name: &FnName,
        args: Vec<Bytes>,
        chunks: bool,
    ) -> std::result::Result<Arc<Pending>, RemoteError> {
        let f = self.find(name)?;
        let tramp = if chunks { f.chunk } else { f.tramp };
        let pending = Pending::new(args.len());
        for (k, a) in args.into_iter().enumerate() {
            let p = pending.clone();
            self.pool
                .submit_encoded(tramp, f.func.addr(), a.0, move |out| p.finish(k, out))
                .map_err(pool_error)?;
        }
        Ok(pending)
    }
}

fn pool_error(e: PoolError) -> RemoteError {
    let kind = match e {
        PoolError::Timeout => K::Timeout,
        PoolError::NotRunning | PoolError::StillRunning => K::Value,
        _ => K::Failed,
    };
    RemoteError::new(kind, e.to_string())
}

impl Object for PoolObj {
    fn kind(&self) -> &str {
        "pool"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        match method {
            "apply" => {
                let (name, a): (FnName, Bytes) = de(args)?;
                self.submit(&name, vec![a], false)?.get(cx, None)
            }
            "apply_async" | "map_async" => {
                let (name, a): (FnName, Vec<Bytes>) = de(args)?;
                let pending = self.submit(&name, a, method == "map_async")?;
                ok(&cx.adopt(Arc::new(AsyncResultObj(pending))))
            }
            "map" => {
                let (name, chunks): (FnName, Vec<Bytes>) = de(args)?;
                self.submit(&name, chunks, true)?.get(cx, None)
            }
            "processes" => ok(&(self.pool.processes() as u64)),
            "worker_pids" => ok(&self.pool.worker_pids()),
            "close" => {
                self.pool.close();
                ok(&())
            }
            "terminate" => {
                self.pool.terminate();
                ok(&())
            }
            "join" => {
                let wait: Wait = de(args)?;
                let deadline = wait.and_then(|d| std::time::Instant::now().checked_add(d));
                // In slices, to notice a caller that went away.
                loop {
                    let now = std::time::Instant::now();
                    let slice = match deadline {
                        Some(d) if now >= d => return Err(RemoteError::timeout()),
                        Some(d) => (d - now).min(super::objects::SLICE),
                        None => super::objects::SLICE,
                    };
                    match self.pool.join_timeout(slice) {
                        Ok(()) => return ok(&()),
                        Err(PoolError::Timeout) if cx.conn.peer_gone() => return Err(gone()),
                        Err(PoolError::Timeout) => {}
                        Err(e) => return Err(pool_error(e)),
                    }
                }
            }
            m => Err(no_method("pool", m)),
        }
    }
}

/// The result of an `apply_async` or `map_async`, in the server.
struct AsyncResultObj(Arc<Pending>);

impl Object for AsyncResultObj {
    fn kind(&self) -> &str {
        "pool_result"
    }

    fn call(&self, cx: &Cx<'_>, method: &str, args: &[u8]) -> Ret {
        match method {
            "get" => self.0.get(cx, de(args)?),
            "wait" => match self.0.wait(cx, de(args)?) {
                Ok(()) => ok(&true),
                Err(e) if e.kind == K::Timeout => ok(&false),
                Err(e) => Err(e),
            },
            "ready" => ok(&self.0.ready()),
            m => Err(no_method("pool_result", m)),
        }
    }
}

// ------------------------------------------------------------ the proxies

proxy! {
    /// A pool of worker processes in the manager (Python's
    /// `manager.Pool(processes)`), made by
    /// [`Manager::pool`](super::Manager::pool). Its workers are children of
    /// the server, started with the server's default context; the functions
    /// it runs are `fn` items listed with
    /// [`ManagerBuilder::pool_fn`](super::ManagerBuilder::pool_fn) (a client
    /// cannot make it run anything else). Arguments and results are serde
    /// values that hold neither fds nor proxies. The pool stops with its
    /// last proxy or with the manager.
    ///
    /// ```
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    /// let ctx = mproc::get_context("forkserver")?;
    /// let manager = ctx.manager_builder().pool_fn(square).start()?;
    /// let pool = manager.pool(2)?;
    /// assert_eq!(pool.map(square, [1, 2, 3])?, vec![1, 4, 9]);
    /// let r = pool.apply_async(square, 7)?;
    /// assert_eq!(r.get_timeout(Duration::from_secs(30))?, 49);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "SyncManager.Pool")]
    Pool[] "pool"
}

impl Pool {
    /// Encodes a task's argument (or a chunk of them): no fd, no proxy.
    fn arg<T: Serialize + ?Sized>(&self, v: &T) -> Result<Bytes> {
        let item = self.raw.item(v)?;
        if !item.refs.is_empty() {
            return Err(Error::Unsupported(
                "the arguments of a manager pool's task cannot hold a proxy",
            ));
        }
        Ok(item.bytes)
    }

    /// Runs `f(args)` in a worker of the manager's pool and waits for the
    /// value (Python's `pool.apply(f, args)` on a manager's pool).
    ///
    /// # Errors
    /// [`Error::Panicked`] when `f` panicked; [`Error::Remote`] of kind
    /// `Unsupported` when `f` is not listed with `pool_fn`, of kind `Value`
    /// once the pool is closed, of kind `Failed` when a worker died;
    /// [`Error::Unsupported`] or [`Error::Codec`] for arguments that hold a
    /// proxy or an fd; and when the manager cannot be reached.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let outs: Vec<Option<Out>> = self.raw.call("apply", &(FnName::of(f), self.arg(&args)?))?;
        one(outs)
    }

    /// Starts `f(args)` in a worker of the manager's pool (Python's
    /// `apply_async`); the [`AsyncResult`] is an object in the manager, so
    /// it may be sent to another process and waited on there.
    ///
    /// # Errors
    /// As [`Pool::apply`], except for what `f` does.
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let id: u64 = self
            .raw
            .call("apply_async", &(FnName::of(f), vec![self.arg(&args)?]))?;
        Ok(AsyncResult::__from_raw(RawProxy::held(
            &self.raw.client,
            id,
        )))
    }

    /// Applies `f` to every item in the manager's pool and waits for the
    /// values, in order (Python's `pool.map(f, iterable)`), in chunks of
    /// CPython's default size.
    ///
    /// # Errors
    /// As [`Pool::apply`]: the first item that panicked gives
    /// [`Error::Panicked`].
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let chunks = self.chunks(items)?;
        let outs: Vec<Option<Out>> = self.raw.call("map", &(FnName::of(f), chunks))?;
        unchunk(outs)
    }

    /// Starts a [`map`](Pool::map) (Python's `map_async`); the result is
    /// an object in the manager.
    ///
    /// # Errors
    /// As [`Pool::apply_async`].
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<MapResult<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let chunks = self.chunks(items)?;
        let id: u64 = self.raw.call("map_async", &(FnName::of(f), chunks))?;
        Ok(MapResult::__from_raw(RawProxy::held(&self.raw.client, id)))
    }

    /// The items encoded in chunks of CPython's default size.
    fn chunks<A: Serialize>(&self, items: impl IntoIterator<Item = A>) -> Result<Vec<Bytes>> {
        let items: Vec<A> = items.into_iter().collect();
        let size = crate::pool::default_chunksize(items.len(), self.processes()?);
        items.chunks(size).map(|c| self.arg(c)).collect()
    }

    /// The number of workers.
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn processes(&self) -> Result<usize> {
        let n: u64 = self.raw.call("processes", &())?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The workers' pids (children of the manager's server).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn worker_pids(&self) -> Result<Vec<i32>> {
        self.raw.call("worker_pids", &())
    }

    /// Takes no more tasks; the queued ones still run (Python's `close`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn close(&self) -> Result<()> {
        self.raw.call("close", &())
    }

    /// Stops the workers at once; unfinished tasks fail (Python's
    /// `terminate`).
    ///
    /// # Errors
    /// When the manager cannot be reached.
    pub fn terminate(&self) -> Result<()> {
        self.raw.call("terminate", &())
    }

    /// Waits, at most `timeout`, for the workers to exit after
    /// [`close`](Pool::close) or [`terminate`](Pool::terminate) (Python's
    /// `join`).
    ///
    /// # Errors
    /// [`Error::Timeout`] when they have not; [`Error::Remote`] of kind
    /// `Value` when the pool is still running; and when the manager cannot
    /// be reached.
    #[doc(alias = "join")]
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.raw.call("join", &Some(timeout))
    }
}

/// The value of an `apply`'s single task.
fn one<R: DeserializeOwned>(outs: Vec<Option<Out>>) -> Result<R> {
    let mut outs = outs.into_iter();
    match (outs.next(), outs.next()) {
        (Some(Some(Ok(b))), None) => dec(&b.0),
        (Some(Some(Err(message))), None) => Err(Error::Panicked { message }),
        _ => Err(Error::Codec("the manager sent no single result".into())),
    }
}

/// The values of a map's chunks, in order.
fn unchunk<R: DeserializeOwned>(outs: Vec<Option<Out>>) -> Result<Vec<R>> {
    let mut values = Vec::new();
    for out in outs {
        match out {
            Some(Ok(b)) => match dec::<ChunkOut<R>>(&b.0)? {
                ChunkOut::All(v) => values.extend(v),
                ChunkOut::Mixed(v) => {
                    for r in v {
                        values.push(r.map_err(|message| Error::Panicked { message })?);
                    }
                }
            },
            Some(Err(message)) => return Err(Error::Panicked { message }),
            None => {
                return Err(Error::Codec(
                    "the manager sent a map with a chunk missing".into(),
                ));
            }
        }
    }
    Ok(values)
}

macro_rules! result_methods {
    ($name:ident, $value:ty, $decode:path) => {
        impl<R: DeserializeOwned> $name<R> {
            /// Waits for the value, for at most `timeout` (Python's
            /// `get(timeout)`).
            ///
            /// # Errors
            /// [`Error::Timeout`] when it is not ready in time;
            /// [`Error::Panicked`] when the task panicked; [`Error::Remote`]
            /// of kind `Failed` when the pool could not run it; and when the
            /// manager cannot be reached.
            pub fn get_timeout(&self, timeout: Duration) -> Result<$value> {
                $decode(self.raw.call("get", &Some(timeout))?)
            }

            /// Waits for the value (Python's `get()`).
            ///
            /// # Errors
            /// As [`get_timeout`](Self::get_timeout), without the timeout.
            pub fn get(&self) -> Result<$value> {
                $decode(self.raw.call("get", &None::<Duration>)?)
            }

            /// Waits, at most `timeout`, until it is ready; whether it is
            /// (Python's `wait(timeout)`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
                self.raw.call("wait", &Some(timeout))
            }

            /// Whether it is ready (Python's `ready()`).
            ///
            /// # Errors
            /// When the manager cannot be reached.
            pub fn ready(&self) -> Result<bool> {
                self.raw.call("ready", &())
            }
        }
    };
}

proxy! {
    /// The result of [`Pool::apply_async`], an object in the manager
    /// (Python's `AsyncResult` of a manager's pool). It may travel to
    /// another process; it is freed with its last proxy.
    AsyncResult[R] "pool_result"
}

result_methods!(AsyncResult, R, one);

proxy! {
    /// The result of [`Pool::map_async`], an object in the manager: the
    /// values in order.
    ///
    /// ```
    /// fn double(x: i32) -> i32 { 2 * x }
    ///
    /// # fn main() -> mproc::Result<()> {
    /// let ctx = mproc::get_context("forkserver")?;
    /// let manager = ctx.manager_builder().pool_fn(double).start()?;
    /// let pool = manager.pool(1)?;
    /// let r = pool.map_async(double, vec![1, 2])?;
    /// assert_eq!(r.get_timeout(std::time::Duration::from_secs(30))?, vec![2, 4]);
    /// assert!(r.ready()?);
    /// # Ok(()) }
    /// ```
    MapResult[R] "pool_result"
}

result_methods!(MapResult, Vec<R>, unchunk);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn enc<T: Serialize>(v: &T) -> Bytes {
        Bytes(codec::encode(v).unwrap().0)
    }

    #[test]
    fn pending_collects_outcomes_in_order_and_reports_a_pool_failure() {
        let p = Pending::new(2);
        assert!(!p.ready());
        p.finish(1, Ok(Err("boom".into())));
        p.finish(0, Ok(Ok(vec![7])));
        assert!(p.ready());
        let outs: Vec<Option<Out>> = codec::decode(&p.outcome().unwrap(), Vec::new()).unwrap();
        assert_eq!(outs, [Some(Ok(Bytes(vec![7]))), Some(Err("boom".into()))]);
        let failed = Pending::new(1);
        failed.finish(0, Err(PoolError::Terminated));
        assert_eq!(failed.outcome().unwrap_err().kind, K::Failed);
        // A task index a peer could not have made is ignored, not a panic.
        let p = Pending::new(1);
        p.finish(5, Ok(Ok(vec![])));
        assert!(p.ready());
    }

    #[test]
    fn results_decode_to_values_or_panics() {
        assert_eq!(one::<u32>(vec![Some(Ok(enc(&3u32)))]).unwrap(), 3);
        assert!(matches!(
            one::<u32>(vec![Some(Err("no".into()))]),
            Err(Error::Panicked { message }) if message == "no"
        ));
        assert!(matches!(one::<u32>(vec![]), Err(Error::Codec(_))));
        assert!(matches!(one::<u32>(vec![None]), Err(Error::Codec(_))));
        let chunks = vec![
            Some(Ok(enc(&ChunkOut::All(vec![1u8, 2])))),
            Some(Ok(enc(&ChunkOut::<u8>::Mixed(vec![Ok(3)])))),
        ];
        assert_eq!(unchunk::<u8>(chunks).unwrap(), [1, 2, 3]);
        let mixed = vec![Some(Ok(enc(&ChunkOut::<u8>::Mixed(vec![
            Ok(1),
            Err("bad".into()),
        ]))))];
        assert!(matches!(unchunk::<u8>(mixed), Err(Error::Panicked { .. })));
        assert!(matches!(unchunk::<u8>(vec![None]), Err(Error::Codec(_))));
    }

    #[test]
    fn a_name_matches_only_its_function_and_signature() {
        fn double(x: u8) -> u8 {
            x * 2
        }
        fn other(x: u8) -> u16 {
            u16::from(x)
        }
        let entry = PoolFn::new(StartMethod::Fork, double).unwrap();
        let name = FnName::of(double as fn(u8) -> u8);
        assert_eq!((entry.func.offset(), &entry.sig), (name.offset, &name.sig));
        let o = FnName::of(other as fn(u8) -> u16);
        assert_ne!((entry.func.offset(), &entry.sig), (o.offset, &o.sig));
    }
}
