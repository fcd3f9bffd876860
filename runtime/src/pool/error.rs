//! What can go wrong with a pool task, as one small matchable type.

/// Why a pool task, or a pool operation, did not give a value.
///
/// CPython re-raises the task's exception, or hangs when the worker died
/// (bpo-22393); here each failure is a variant to match on. A panic or a
/// dead worker fails only the task it hit: the pool goes on with the rest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The task panicked; the message is the panic's (Python: the task's
    /// exception, re-raised by `get`).
    #[error("the task panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker running the task ended before returning it (SIGKILL,
    /// a segfault, `exit`); `exitcode` follows Python's rules (`-9` for
    /// SIGKILL). A replacement worker has been started.
    #[error("the worker (pid {pid}) running the task ended with exitcode {exitcode}")]
    WorkerDied {
        /// Pid of the worker that died.
        pid: i32,
        /// Its Python-style exit code.
        exitcode: i32,
    },
    /// A wait with a timeout ran out of time (Python's `TimeoutError`);
    /// the task goes on and can be waited for again.
    #[error("timed out")]
    Timeout,
    /// The pool no longer accepts tasks: it was closed or terminated
    /// (Python's `ValueError("Pool not running")`).
    #[error("the pool is not running (closed or terminated)")]
    NotRunning,
    /// `join` before `close` or `terminate` (Python's `ValueError("Pool is
    /// still running")`).
    #[error("the pool is still running: call close or terminate before join")]
    StillRunning,
    /// The task was dropped unrun, or interrupted, by `terminate`.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// The task was cancelled before it started (`cancel`, or an
    /// executor's `shutdown` with `cancel_futures`).
    #[error("the task was cancelled")]
    Cancelled,
    /// The pool cannot run tasks any more: a worker's initializer panicked,
    /// or workers cannot be started (Python's `BrokenProcessPool`).
    #[error("the pool is broken: {0}")]
    Broken(String),
    /// The arguments or the result could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Codec(String),
    /// The value was already taken by an earlier successful `get`.
    #[error("the result was already taken")]
    ResultTaken,
    /// A pool configured with a value it cannot work with: 0 processes or
    /// `maxtasksperchild` 0 (Python's `ValueError`).
    #[error("invalid pool argument: {0}")]
    InvalidArgument(&'static str),
}

impl From<PoolError> for crate::Error {
    /// Maps onto the crate error where a variant means the same (panic,
    /// exit, timeout, codec); the pool-only cases become
    /// [`crate::Error::Pool`].
    fn from(e: PoolError) -> crate::Error {
        match e {
            PoolError::Panicked { message } => crate::Error::Panicked { message },
            PoolError::WorkerDied { exitcode, .. } => crate::Error::Exited { exitcode },
            PoolError::Timeout => crate::Error::Timeout,
            PoolError::Codec(m) => crate::Error::Codec(m),
            other => crate::Error::Pool(other),
        }
    }
}

impl From<crate::Error> for PoolError {
    fn from(e: crate::Error) -> PoolError {
        match e {
            crate::Error::Codec(m) => PoolError::Codec(m),
            crate::Error::Timeout => PoolError::Timeout,
            other => PoolError::Broken(other.to_string()),
        }
    }
}
