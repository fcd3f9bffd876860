//! Process pools: [`Pool`] (Python's `multiprocessing.Pool`) and
//! [`ProcessPoolExecutor`] (Python's `concurrent.futures` one).
//!
//! Workers are ordinary `mproc` processes (any start method; the fork
//! server by default) that run a loop: read a task from their own channel,
//! run it, answer. A task is a `fn(A) -> R` travelling as an offset into
//! this executable plus a trampoline that decodes `A`, calls, and encodes
//! `R` — the mechanism `Process` uses, run many times per process.
//!
//! What is hard, and how it is done:
//!
//! - **A worker dies mid-task** (SIGKILL, a segfault, `exit`). CPython's
//!   workers share one task queue, so nobody knows what the dead worker
//!   held, and the pool waits forever (bpo-22393). Here each worker has
//!   its own channel and answers in order, so the parent knows exactly
//!   which task it was running: that task fails with
//!   [`PoolError::WorkerDied`] (with the exit code), the tasks queued behind
//!   it go to other workers, a replacement starts, and `join` returns.
//! - **A panic** fails that task only ([`PoolError::Panicked`] with the
//!   message); the worker goes on.
//! - **Speed**: the caller sends its task straight to a worker with room;
//!   short tasks stream, several in flight per worker; chunks carry many
//!   items per message (`chunksize`, as CPython).
//!
//! ```
//! # fn main() -> Result<(), mproc::PoolError> {
//! fn square(x: u64) -> u64 { x * x }
//!
//! let pool = mproc::Pool::new(2)?;
//! assert_eq!(pool.apply(square, 7)?, 49);
//! assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
//! let r = pool.apply_async(square, 9)?;
//! assert_eq!(r.get()?, 81);
//! pool.close();
//! pool.join()?;
//! # Ok(()) }
//! ```

mod driver;
pub(crate) mod engine;
mod error;
mod executor;
mod result;
pub(crate) mod worker;

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use forkserver::FnRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::MAX_MSG_FDS;
use crate::codec;
use crate::context::Context;
use crate::job::{self, ChunkOut, Trampoline};
use driver::{Config, InitSpec, Shared};
use engine::{Phase, Task};
use result::{ImapShared, Slot, TaskOutcome, decode_item};
use worker::Head;

pub use error::PoolError;
pub use executor::ProcessPoolExecutor;
pub use result::{AsyncResult, Callbacks, IMapIterator};

/// Configures a [`Pool`] (Python's `Pool(processes, initializer, initargs,
/// maxtasksperchild)`); [`build`](PoolBuilder::build) starts it.
///
/// ```
/// fn setup(greeting: String) {
///     // Runs once in every worker before its first task.
///     assert_eq!(greeting, "ready");
/// }
///
/// fn pid_of(_: u32) -> u32 {
///     std::process::id()
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = mproc::get_context("forkserver")?
///     .pool_builder()
///     .processes(2)
///     .initializer(setup, "ready".to_string())
///     .maxtasksperchild(1) // a fresh worker for every task
///     .build()?;
/// let pids = (0..4)
///     .map(|i| pool.apply(pid_of, i))
///     .collect::<Result<Vec<_>, _>>()?;
/// let mut distinct = pids.clone();
/// distinct.sort();
/// distinct.dedup();
/// assert_eq!(distinct.len(), 4);
/// # Ok(()) }
/// ```
#[must_use = "a pool starts only when `build` is called"]
pub struct PoolBuilder {
    ctx: Context,
    processes: Option<usize>,
    maxtasks: Option<u64>,
    init: Option<Result<InitSpec, PoolError>>,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("ctx", &self.ctx)
            .field("processes", &self.processes)
            .field("maxtasksperchild", &self.maxtasks)
            .field("initializer", &self.init.is_some())
            .finish()
    }
}

impl Context {
    /// A pool of `processes` workers started by this context's method
    /// (Python's `ctx.Pool(processes)`).
    ///
    /// ```
    /// # fn main() -> Result<(), mproc::PoolError> {
    /// fn double(x: i32) -> i32 { x * 2 }
    /// let pool = mproc::get_context("spawn")?.pool(2)?;
    /// assert_eq!(pool.map(double, [1, 2, 3])?, vec![2, 4, 6]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for 0 processes;
    /// [`PoolError::Broken`] when the workers cannot be started.
    #[doc(alias = "Pool")]
    pub fn pool(&self, processes: usize) -> Result<Pool, PoolError> {
        self.pool_builder().processes(processes).build()
    }

    /// A [`PoolBuilder`] for this context, for the initializer and
    /// `maxtasksperchild`.
    pub fn pool_builder(&self) -> PoolBuilder {
        PoolBuilder {
            ctx: *self,
            processes: None,
            maxtasks: None,
            init: None,
        }
    }
}

impl PoolBuilder {
    /// Number of workers (Python's `processes`; default
    /// [`cpu_count()`](crate::cpu_count)). Zero makes
    /// [`build`](PoolBuilder::build) fail.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f(args)` once in every worker before its first task, including
    /// replacement workers (Python's `initializer` and `initargs`). `args`
    /// may carry fds (a `Queue`, a lock, shared memory): each worker gets
    /// its own duplicates.
    ///
    /// A panicking initializer breaks the pool: its tasks fail with
    /// [`PoolError::Broken`] (CPython would restart the worker forever).
    #[doc(alias = "initargs")]
    pub fn initializer<I>(mut self, f: fn(I), args: I) -> Self
    where
        I: Serialize + DeserializeOwned + 'static,
    {
        let spec = codec::encode(&args)
            .map_err(PoolError::from)
            .and_then(|(bytes, fds)| {
                let func = crate::process::method::target_ref(self.ctx.start_method(), f as usize)
                    .map_err(|e| PoolError::Codec(e.to_string()))?;
                let head = Head::Init {
                    tramp: FnRef::from_addr(job::trampoline::<I, ()> as Trampoline as usize),
                    func,
                    len: bytes.len() as u32,
                    nfds: fds.len() as u32,
                };
                let frame = worker::frame(&head, &[&bytes]).map_err(PoolError::Codec)?;
                Ok(InitSpec { frame, fds })
            });
        self.init = Some(spec);
        self
    }

    /// Each worker exits after this many tasks and a fresh one replaces it
    /// (Python's `maxtasksperchild`; a chunk of `map` counts as one task).
    /// Zero makes [`build`](PoolBuilder::build) fail.
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.maxtasks = Some(n);
        self
    }

    /// Starts the workers and the result thread.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for 0 processes or
    /// `maxtasksperchild` 0 (Python's `ValueError`), before anything starts;
    /// [`PoolError::Codec`] when the initializer's arguments cannot be
    /// encoded; [`PoolError::Broken`] when a worker cannot be started.
    ///
    /// # Examples
    /// ```
    /// use mproc::PoolError;
    /// let zero = mproc::Pool::builder().processes(0).build();
    /// assert!(matches!(zero, Err(PoolError::InvalidArgument(_))));
    /// let never = mproc::Pool::builder().maxtasksperchild(0).build();
    /// assert!(matches!(never, Err(PoolError::InvalidArgument(_))));
    /// ```
    pub fn build(self) -> Result<Pool, PoolError> {
        if self.processes == Some(0) {
            return Err(PoolError::InvalidArgument(
                "the number of processes must be at least 1",
            ));
        }
        if self.maxtasks == Some(0) {
            return Err(PoolError::InvalidArgument(
                "maxtasksperchild must be at least 1",
            ));
        }
        let init = self.init.transpose()?;
        let cfg = Config {
            ctx: self.ctx,
            processes: self.processes.unwrap_or_else(crate::cpu_count),
            maxtasks: self.maxtasks,
            init,
        };
        let (shared, wake_rx) = Shared::start(cfg)?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mproc-pool".into())
            .spawn(move || driver::run(s, wake_rx));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                shared.terminate();
                return Err(PoolError::Broken(format!(
                    "cannot start the result thread: {e}"
                )));
            }
        };
        Ok(Pool {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// Tasks are `fn(A) -> R` items (or non-capturing closures) with serde
/// arguments and results. Methods take `&self`: a pool can be shared
/// between threads. Dropping the pool terminates it, as leaving CPython's
/// `with Pool() as pool:` block does; call [`close`](Pool::close) then
/// [`join`](Pool::join) to let queued work finish first.
///
/// A task is found in the worker by its address in this executable, so it
/// must be a `fn` item or a closure that captures nothing (state would not
/// travel); the compiler enforces it:
///
/// ```compile_fail
/// # fn main() -> Result<(), mproc::PoolError> {
/// let pool = mproc::Pool::new(1)?;
/// let k = 3;
/// pool.apply(move |x: u32| x * k, 2)?; // captures `k`: not a `fn`
/// # Ok(()) }
/// ```
///
/// # Errors
/// Submitting fails with [`PoolError::NotRunning`] after `close` or
/// `terminate`, [`PoolError::Broken`] when the pool cannot run tasks, and
/// [`PoolError::Codec`] when the arguments cannot be encoded.
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.shared.cfg.processes)
            .field("phase", &self.shared.phase())
            .finish()
    }
}

/// CPython's default chunk size: `ceil(len / (4 × workers))`, at least 1.
pub(crate) fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(4 * workers.max(1)).max(1)
}

impl Pool {
    /// A pool of `processes` workers with the default context (Python's
    /// `Pool(processes)`).
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for 0 processes;
    /// [`PoolError::Broken`] when the workers cannot be started.
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        crate::default_context().pool(processes)
    }

    /// A [`PoolBuilder`] with the default context.
    pub fn builder() -> PoolBuilder {
        crate::default_context().pool_builder()
    }

    /// Number of workers the pool keeps running.
    pub fn processes(&self) -> usize {
        self.shared.cfg.processes
    }

    /// Pids of the current workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.shared.pids()
    }

    /// A task of one item: `f(args)` through the plain trampoline.
    fn make_task<A, R>(
        &self,
        f: fn(A) -> R,
        args: &A,
        sink: result::Sink,
    ) -> Result<Task, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let tramp = FnRef::from_addr(job::trampoline::<A, R> as Trampoline as usize);
        self.encoded_task(tramp, f as usize, codec::encode(args)?, sink)
    }

    /// A task of a whole chunk, encoded as one `Vec<A>`; the worker answers
    /// with one `Vec<Result<R, String>>`.
    fn make_chunk_task<A, R>(
        &self,
        f: fn(A) -> R,
        items: &[A],
        sink: result::Sink,
    ) -> Result<Task, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let tramp = FnRef::from_addr(job::chunk_trampoline::<A, R> as Trampoline as usize);
        self.encoded_task(tramp, f as usize, codec::encode(items)?, sink)
    }

    fn encoded_task(
        &self,
        tramp: FnRef,
        func: usize,
        (bytes, fds): (Vec<u8>, Vec<std::os::fd::OwnedFd>),
        sink: result::Sink,
    ) -> Result<Task, PoolError> {
        if fds.len() > MAX_MSG_FDS {
            return Err(PoolError::Codec(format!(
                "a task carries {} fds; at most {MAX_MSG_FDS}: use a smaller chunksize",
                fds.len()
            )));
        }
        let func = crate::process::method::target_ref(self.shared.cfg.ctx.start_method(), func)
            .map_err(|e| PoolError::Codec(e.to_string()))?;
        let id = self.shared.next_id();
        let head = Head::Task {
            id,
            tramp,
            func,
            items: vec![(bytes.len() as u32, fds.len() as u32)],
        };
        let frame = worker::frame(&head, &[&bytes]).map_err(PoolError::Codec)?;
        Ok(Task::new(id, frame, fds, sink))
    }

    /// Submits one task given by its trampoline, its function's address in
    /// this process and its encoded arguments, which carry no fds: a
    /// manager's pool runs the functions it was given this way, without
    /// decoding what they take or return. `done` gets the encoded value
    /// (which may carry no fds either) or the panic message, or why the
    /// pool could not run the task; it is not called if submitting fails.
    pub(crate) fn submit_encoded(
        &self,
        tramp: FnRef,
        func: usize,
        args: Vec<u8>,
        done: impl FnOnce(Result<Result<Vec<u8>, String>, PoolError>) + Send + 'static,
    ) -> Result<(), PoolError> {
        let sink: result::Sink = Box::new(move |out: TaskOutcome| {
            done(
                out.and_then(|mut items| match (items.pop(), items.is_empty()) {
                    (Some(Ok((bytes, fds))), true) if fds.is_empty() => Ok(Ok(bytes)),
                    (Some(Ok(_)), true) => Err(PoolError::Codec(
                        "a result that carries file descriptors cannot leave a manager".into(),
                    )),
                    (Some(Err(message)), true) => Ok(Err(message)),
                    _ => Err(PoolError::Codec("expected one result".into())),
                }),
            )
        });
        let task = self.encoded_task(tramp, func, (args, Vec::new()), sink)?;
        self.shared.submit([task])
    }

    /// Runs `f(args)` in a worker and waits for the value (Python's
    /// `apply`).
    ///
    /// # Errors
    /// As [`AsyncResult::get`], plus the submission errors of [`Pool`].
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, args)?.get()
    }

    /// Starts `f(args)` in a worker (Python's `apply_async`).
    ///
    /// ```
    /// # fn main() -> Result<(), mproc::PoolError> {
    /// fn cube(x: u64) -> u64 { x * x * x }
    /// let pool = mproc::Pool::new(2)?;
    /// let results: Vec<_> = (1..=3).map(|x| pool.apply_async(cube, x)).collect::<Result<_, _>>()?;
    /// let values: Vec<u64> = results.into_iter().map(|r| r.get()).collect::<Result<_, _>>()?;
    /// assert_eq!(values, vec![1, 8, 27]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The submission errors of [`Pool`].
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_with(f, args, Callbacks::new())
    }

    /// [`apply_async`](Pool::apply_async) with a `callback` and an
    /// `error_callback`, run in this process, each at most once, before the
    /// result becomes ready.
    ///
    /// ```
    /// # fn main() -> Result<(), mproc::PoolError> {
    /// use std::sync::mpsc;
    /// fn cube(x: u64) -> u64 { x * x * x }
    /// let pool = mproc::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let cb = mproc::Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
    /// let r = pool.apply_async_with(cube, 3, cb)?;
    /// assert_eq!(r.get()?, 27);
    /// assert_eq!(rx.try_recv().unwrap(), 27); // the callback ran first
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The submission errors of [`Pool`].
    #[doc(alias = "apply_async")]
    #[doc(alias = "callback")]
    #[doc(alias = "error_callback")]
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callbacks: Callbacks<R>,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let slot = Slot::<R>::new();
        let s = slot.clone();
        let sink: result::Sink = Box::new(move |out: TaskOutcome| {
            let value = out.and_then(|mut items| match (items.pop(), items.is_empty()) {
                (Some(item), true) => decode_item::<R>(item),
                _ => Err(PoolError::Codec("expected one result".into())),
            });
            callbacks.finish(&s, value);
        });
        let task = self.make_task(f, &args, sink)?;
        let id = task.id;
        self.shared.submit([task])?;
        Ok(AsyncResult::new(
            slot,
            Some((Arc::downgrade(&self.shared), id)),
        ))
    }

    /// Applies `f` to every item and waits for the values, in order
    /// (Python's `map`, default `chunksize`).
    ///
    /// # Errors
    /// The first failed item's error (a panic, a dead worker), or the
    /// submission errors of [`Pool`].
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async_with(f, iterable, None, Callbacks::new())?
            .get()
    }

    /// [`map`](Pool::map) with an explicit `chunksize` (items per message
    /// to a worker).
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn map_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async_with(f, iterable, Some(chunksize), Callbacks::new())?
            .get()
    }

    /// Starts a [`map`](Pool::map); the result is the whole list (Python's
    /// `map_async`).
    ///
    /// # Errors
    /// The submission errors of [`Pool`].
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async_with(f, iterable, None, Callbacks::new())
    }

    /// [`map_async`](Pool::map_async) with a `chunksize` (`None`: CPython's
    /// default, `ceil(len / (4 × workers))`) and callbacks: `on_success`
    /// gets the whole list; `on_error` the first error, as soon as it
    /// happens.
    ///
    /// # Errors
    /// The submission errors of [`Pool`].
    #[doc(alias = "map_async")]
    pub fn map_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let iter = iterable.into_iter();
        match (chunksize, iter.size_hint()) {
            (Some(c), _) => self.map_stream(f, iter, c, callbacks),
            (None, (lo, Some(hi))) if lo == hi => {
                let c = default_chunksize(lo, self.processes());
                self.map_stream(f, iter, c, callbacks)
            }
            (None, _) => {
                // The length decides the chunk size: collect first.
                let items: Vec<A> = iter.collect();
                let c = default_chunksize(items.len(), self.processes());
                self.map_stream(f, items.into_iter(), c, callbacks)
            }
        }
    }

    /// Encodes and submits the chunks of a map while reading `iter`.
    fn map_stream<A, R>(
        &self,
        f: fn(A) -> R,
        iter: impl Iterator<Item = A>,
        chunk: usize,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.shared.check_running()?;
        let slot = Slot::<Vec<R>>::new();
        let acc = Arc::new(Mutex::new(MapAcc {
            chunks: Vec::new(),
            left: 0,
            sealed: false,
            callbacks: Some(callbacks),
        }));
        let mut tasks = Feeder::new(self);
        for_each_chunk(iter, chunk, |k, _base, part| {
            {
                let mut a = acc.lock().unwrap_or_else(PoisonError::into_inner);
                a.chunks.push(None);
                a.left += 1;
            }
            let (acc, slot) = (acc.clone(), slot.clone());
            let sink: result::Sink = Box::new(move |out| map_chunk_done(&acc, &slot, k, out));
            tasks.push(self.make_chunk_task(f, part, sink)?)
        })?;
        tasks.flush()?;
        let mut a = acc.lock().unwrap_or_else(PoisonError::into_inner);
        a.sealed = true;
        if let Some(value) = a.outcome() {
            let cb = a.callbacks.take();
            drop(a);
            if let Some(cb) = cb {
                cb.finish(&slot, value);
            }
        }
        Ok(AsyncResult::new(slot, None))
    }

    /// Python's `starmap`: the same as [`map`](Pool::map), since a Rust
    /// task takes its arguments as one tuple (`fn((a, b)) -> R`).
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn starmap<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map(f, iterable)
    }

    /// Python's `starmap_async`: [`map_async`](Pool::map_async) with tuple
    /// arguments.
    ///
    /// # Errors
    /// As [`map_async`](Pool::map_async).
    pub fn starmap_async<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, iterable)
    }

    /// Applies `f` to every item; the results come as an iterator, in
    /// order, each as soon as it and those before it are done (Python's
    /// `imap`, `chunksize` 1).
    ///
    /// As in CPython, the input is read and queued at the call (while the
    /// first chunks already run), so `close` and `join` before iterating
    /// work; the results are read lazily. Do not pass an endless iterator.
    ///
    /// ```
    /// # fn main() -> Result<(), mproc::PoolError> {
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// let pool = mproc::Pool::new(2)?;
    /// let got: Vec<u32> = pool.imap(inc, 0..5)?.collect::<Result<_, _>>()?;
    /// assert_eq!(got, vec![1, 2, 3, 4, 5]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The submission errors of [`Pool`]; each item's own error comes
    /// from the iterator.
    pub fn imap<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, iterable, 1, true)
    }

    /// [`imap`](Pool::imap) with a `chunksize`.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    pub fn imap_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, iterable, chunksize, true)
    }

    /// [`imap`](Pool::imap) whose results come in completion order
    /// (Python's `imap_unordered`).
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    pub fn imap_unordered<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, iterable, 1, false)
    }

    /// [`imap_unordered`](Pool::imap_unordered) with a `chunksize`.
    ///
    /// # Errors
    /// As [`imap`](Pool::imap).
    #[doc(alias = "imap_unordered")]
    pub fn imap_unordered_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_inner(f, iterable, chunksize, false)
    }

    fn imap_inner<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: usize,
        ordered: bool,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.shared.check_running()?;
        let shared = ImapShared::<R>::new(ordered);
        let mut tasks = Feeder::new(self);
        let total = for_each_chunk(iterable.into_iter(), chunksize, |_, base, part| {
            let sh = shared.clone();
            let len = part.len();
            let sink: result::Sink =
                Box::new(move |out: TaskOutcome| match decode_chunk::<R>(out) {
                    Ok(ChunkValues::All(values)) if values.len() == len => {
                        for (i, v) in values.into_iter().enumerate() {
                            sh.put(base + i, Ok(v));
                        }
                    }
                    Ok(ChunkValues::Mixed(values)) if values.len() == len => {
                        for (i, v) in values.into_iter().enumerate() {
                            sh.put(base + i, v);
                        }
                    }
                    Ok(_) => {
                        let e = PoolError::Codec("wrong number of results".into());
                        (0..len).for_each(|i| sh.put(base + i, Err(e.clone())));
                    }
                    Err(e) => (0..len).for_each(|i| sh.put(base + i, Err(e.clone()))),
                });
            tasks.push(self.make_chunk_task(f, part, sink)?)
        })?;
        tasks.flush()?;
        Ok(IMapIterator::new(shared, total))
    }

    /// No new tasks; the workers exit once the queued ones are done
    /// (Python's `close`).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Stops the workers now (SIGTERM, then SIGKILL after a grace period);
    /// tasks not finished fail with [`PoolError::Terminated`] (Python's
    /// `terminate`). Returns at once; [`join`](Pool::join) waits.
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits for the workers to exit after [`close`](Pool::close) or
    /// [`terminate`](Pool::terminate) (Python's `join`). Never hangs on a
    /// dead worker.
    ///
    /// # Errors
    /// [`PoolError::StillRunning`] before `close` or `terminate`.
    pub fn join(&self) -> Result<(), PoolError> {
        self.join_deadline(None)
    }

    /// [`join`](Pool::join) that gives up after `timeout`.
    ///
    /// # Errors
    /// As [`join`](Pool::join), plus [`PoolError::Timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        self.join_deadline(Instant::now().checked_add(timeout))
    }

    fn join_deadline(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        if self.shared.phase() == Phase::Running {
            return Err(PoolError::StillRunning);
        }
        if !self.shared.wait_finished(deadline) {
            return Err(PoolError::Timeout);
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
        Ok(())
    }

    /// Cancels every queued task that no worker has taken yet.
    pub(crate) fn cancel_pending(&self) {
        self.shared.cancel_pending();
    }

    /// On drop, close instead of terminate and wait for the queued work.
    pub(crate) fn shutdown_on_drop(&self) -> Result<(), PoolError> {
        self.close();
        self.join()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
        let on_result_thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id());
        if !on_result_thread {
            let _ = self.join();
        }
    }
}

/// Calls `f(k, base, chunk)` for each chunk of `iter` (`chunk` items, the
/// last one maybe fewer); returns the number of items.
fn for_each_chunk<A>(
    iter: impl Iterator<Item = A>,
    chunk: usize,
    mut f: impl FnMut(usize, usize, &[A]) -> Result<(), PoolError>,
) -> Result<usize, PoolError> {
    let chunk = chunk.max(1);
    let mut buf = Vec::with_capacity(chunk.min(1 << 16));
    let (mut k, mut base) = (0, 0);
    for a in iter {
        buf.push(a);
        if buf.len() == chunk {
            f(k, base, &buf)?;
            (k, base) = (k + 1, base + buf.len());
            buf.clear();
        }
    }
    if !buf.is_empty() {
        f(k, base, &buf)?;
        base += buf.len();
    }
    Ok(base)
}

/// Submits the chunks of a map while it encodes the rest, so the workers
/// start at once instead of after the whole input is encoded.
struct Feeder<'a> {
    pool: &'a Pool,
    batch: Vec<Task>,
    limit: usize,
}

impl<'a> Feeder<'a> {
    fn new(pool: &'a Pool) -> Feeder<'a> {
        Feeder {
            pool,
            batch: Vec::new(),
            limit: 2 * pool.processes(),
        }
    }

    fn push(&mut self, task: Task) -> Result<(), PoolError> {
        self.batch.push(task);
        if self.batch.len() >= self.limit {
            self.limit = (self.limit * 2).min(512);
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PoolError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.pool.shared.submit(std::mem::take(&mut self.batch))
    }
}

/// A chunk's values: all of them, or one `Result` per item.
enum ChunkValues<R> {
    All(Vec<R>),
    Mixed(Vec<Result<R, PoolError>>),
}

/// Decodes a chunk's answer.
fn decode_chunk<R: DeserializeOwned>(out: TaskOutcome) -> Result<ChunkValues<R>, PoolError> {
    let mut items = out?;
    let item = match (items.pop(), items.is_empty()) {
        (Some(item), true) => item,
        _ => return Err(PoolError::Codec("expected one answer per chunk".into())),
    };
    Ok(match decode_item::<ChunkOut<R>>(item)? {
        ChunkOut::All(v) => ChunkValues::All(v),
        ChunkOut::Mixed(v) => ChunkValues::Mixed(
            v.into_iter()
                .map(|r| r.map_err(|message| PoolError::Panicked { message }))
                .collect(),
        ),
    })
}

struct MapAcc<R> {
    /// Values per chunk, as they arrive.
    chunks: Vec<Option<Vec<R>>>,
    /// Chunks submitted and not yet answered.
    left: usize,
    /// Every chunk has been submitted.
    sealed: bool,
    /// Taken when the result is decided (the first error, or the end).
    callbacks: Option<Callbacks<Vec<R>>>,
}

impl<R> MapAcc<R> {
    /// The whole list once every chunk is in.
    fn outcome(&mut self) -> Option<Result<Vec<R>, PoolError>> {
        if !self.sealed || self.left > 0 || self.callbacks.is_none() {
            return None;
        }
        let total = self.chunks.iter().flatten().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total);
        for c in std::mem::take(&mut self.chunks) {
            match c {
                Some(v) => out.extend(v),
                None => return Some(Err(PoolError::Codec("a chunk is missing".into()))),
            }
        }
        Some(Ok(out))
    }
}

fn map_chunk_done<R: DeserializeOwned>(
    acc: &Mutex<MapAcc<R>>,
    slot: &Slot<Vec<R>>,
    k: usize,
    out: TaskOutcome,
) {
    // Decode outside the lock: chunks decode in parallel with the caller.
    let decoded = decode_chunk::<R>(out).and_then(|c| match c {
        ChunkValues::All(v) => Ok(v),
        ChunkValues::Mixed(v) => v.into_iter().collect(),
    });
    let mut a = acc.lock().unwrap_or_else(PoisonError::into_inner);
    if a.callbacks.is_none() {
        return; // decided already (an earlier error)
    }
    a.left -= 1;
    let value = match decoded {
        Ok(v) => {
            if let Some(cell) = a.chunks.get_mut(k) {
                *cell = Some(v);
            }
            a.outcome()
        }
        Err(e) => Some(Err(e)),
    };
    if let Some(value) = value {
        let cb = a.callbacks.take();
        drop(a);
        if let Some(cb) = cb {
            cb.finish(slot, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunksize_as_cpython() {
        // divmod(len, 4 * workers), plus one when there is a remainder.
        assert_eq!(default_chunksize(100, 2), 13);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(9, 2), 2);
        assert_eq!(default_chunksize(1, 8), 1);
        assert_eq!(default_chunksize(200_000, 2), 25_000);
    }
}
