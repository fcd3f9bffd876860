//! `ProcessPoolExecutor`: `concurrent.futures` on top of [`Pool`].
//!
//! `submit` returns an [`AsyncResult`], which is also a
//! [`std::future::Future`]: the pool's result thread wakes the task's
//! `Waker` when the value arrives, so an async runtime awaits it without
//! blocking any of its threads.
//!
//! One difference from CPython, on purpose: when a worker dies, CPython
//! cannot tell which future it was running and breaks the whole executor
//! (`BrokenProcessPool` for every pending future). Here only that future
//! fails, with [`PoolError::WorkerDied`]; the executor is broken
//! ([`PoolError::Broken`]) only when workers cannot run at all (an
//! initializer panicked, or workers cannot be started).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AsyncResult, IMapIterator, Pool, PoolBuilder, PoolError};

/// A pool that hands out futures (Python's
/// `concurrent.futures.ProcessPoolExecutor`).
///
/// Dropping it shuts it down and waits, as leaving CPython's `with` block
/// does (`shutdown(wait=True)`).
///
/// ```
/// # fn main() -> Result<(), mproc::PoolError> {
/// fn square(x: u64) -> u64 { x * x }
/// let ex = mproc::ProcessPoolExecutor::new(Some(2))?;
/// let fut = ex.submit(square, 12)?;
/// assert_eq!(fut.get()?, 144);
/// let all: Vec<u64> = ex.map(square, 1..=3)?.collect::<Result<_, _>>()?;
/// assert_eq!(all, vec![1, 4, 9]);
/// ex.shutdown(true, false)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ProcessPoolExecutor {
    pool: Pool,
}

impl ProcessPoolExecutor {
    /// An executor of `max_workers` processes (default
    /// [`cpu_count()`](crate::cpu_count)) with the default context.
    ///
    /// # Errors
    /// [`PoolError::InvalidArgument`] for `Some(0)` (Python's
    /// `ValueError`); [`PoolError::Broken`] when the workers cannot be
    /// started.
    pub fn new(max_workers: Option<usize>) -> Result<ProcessPoolExecutor, PoolError> {
        let mut b = Pool::builder();
        if let Some(n) = max_workers {
            b = b.processes(n);
        }
        b.executor()
    }

    /// Submits `f(args)` (Python's `submit`); the handle can be waited on
    /// or `.await`ed.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `shutdown`; [`PoolError::Broken`]
    /// for a broken executor; [`PoolError::Codec`] when `args` cannot be
    /// encoded.
    pub fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool.apply_async(f, args)
    }

    /// Applies `f` to every item; the results come in order (Python's
    /// `Executor.map`, `chunksize` 1).
    ///
    /// # Errors
    /// As [`submit`](ProcessPoolExecutor::submit).
    pub fn map<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool.imap(f, iterable)
    }

    /// [`map`](ProcessPoolExecutor::map) with a `chunksize`.
    ///
    /// # Errors
    /// As [`submit`](ProcessPoolExecutor::submit).
    pub fn map_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        iterable: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<IMapIterator<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.pool.imap_chunked(f, iterable, chunksize)
    }

    /// No new submissions (Python's `shutdown`). With `cancel_futures`,
    /// futures no worker has started are cancelled
    /// ([`PoolError::Cancelled`]); the others still run. With `wait`,
    /// returns once every worker has exited.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for a failed wait.
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) -> Result<(), PoolError> {
        if cancel_futures {
            self.pool.cancel_pending();
        }
        self.pool.close();
        if wait { self.pool.join() } else { Ok(()) }
    }

    /// The pool underneath.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl Drop for ProcessPoolExecutor {
    fn drop(&mut self) {
        let _ = self.pool.shutdown_on_drop();
    }
}

impl PoolBuilder {
    /// Builds a [`ProcessPoolExecutor`] instead of a [`Pool`] (its
    /// `max_workers`, `initializer`, `initargs` and `max_tasks_per_child`
    /// are this builder's settings).
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn executor(self) -> Result<ProcessPoolExecutor, PoolError> {
        Ok(ProcessPoolExecutor {
            pool: self.build()?,
        })
    }
}
