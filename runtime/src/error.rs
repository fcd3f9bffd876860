//! The crate's error type.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `mproc`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An OS call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The fork server failed.
    #[error(transparent)]
    ForkServer(#[from] forkserver::Error),
    /// A value could not be encoded or decoded.
    #[error("serialization error: {0}")]
    Codec(String),
    /// The child panicked; the message is the panic's.
    #[error("the child process panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The child ended without returning a value (`exit(n)`, or a signal:
    /// `exitcode` is then `-N`, as Python's `Process.exitcode`).
    #[error("the child process ended without a result (exitcode {exitcode})")]
    Exited {
        /// Python-style exit code.
        exitcode: i32,
    },
    /// A wait with a timeout ran out of time.
    #[error("timed out")]
    Timeout,
    /// A start method name that is not `fork`, `spawn` or `forkserver`.
    #[error("unknown start method {0:?}: valid are \"fork\", \"spawn\", \"forkserver\"")]
    InvalidStartMethod(String),
    /// `set_start_method` was already called (pass `force` to override).
    #[error("the start method has already been set")]
    StartMethodAlreadySet,
    /// A daemonic process tried to start a child (Python forbids it too).
    #[error("daemonic processes are not allowed to have children")]
    DaemonChildren,
    /// The operation needs another start method (a closure needs `fork`).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The target `fn` lies in a shared library, where a process started
    /// by `spawn` or `forkserver` cannot find it (use a `fn` of the program
    /// itself, or the `fork` method).
    #[error(transparent)]
    NotInExecutable(#[from] forkserver::NotInExecutable),
    /// The result was already taken by an earlier `join`.
    #[error("the result of this process was already taken by an earlier join")]
    ResultTaken,
    /// The peer closed the channel (Python's `EOFError`).
    #[error("the other end closed the channel")]
    Closed,
    /// A pool could not run a task for a reason of its own (closed,
    /// broken, cancelled); panics, worker deaths and timeouts map onto
    /// [`Error::Panicked`], [`Error::Exited`] and [`Error::Timeout`].
    #[error(transparent)]
    Pool(crate::pool::PoolError),
    /// The manager answered a request with an error (Python re-raises the
    /// server's exception in the caller).
    #[error(transparent)]
    Remote(crate::manager::RemoteError),
    /// The peer did not prove knowledge of the authkey, or refused ours
    /// (Python's `AuthenticationError`).
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
}

impl Error {
    /// The kind of OS error behind this error, when there is one (an
    /// [`Error::Io`], or a fork-server error such as a failed `exec` or
    /// `chdir` in a child: see [`forkserver::Error::io_kind`]).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io(e) => Some(e.kind()),
            Error::ForkServer(e) => e.io_kind(),
            _ => None,
        }
    }

    pub(crate) fn codec(e: impl std::fmt::Display) -> Error {
        Error::Codec(e.to_string())
    }
}
