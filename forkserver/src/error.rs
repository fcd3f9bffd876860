//! The crate's error type.

use crate::codec::CodecError;
use crate::protocol::ErrorKind;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a fork server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An OS call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server process had more than one thread, so forking there would
    /// not be safe; it refused to serve.
    #[error(
        "the fork server process had {threads} threads when its bootstrap ran and refuses to \
         fork (it must have exactly one): something started threads before the role dispatch, \
         such as #[tokio::main] around a main that calls forkserver::bootstrap, or a \
         constructor; dispatch before main instead with forkserver::bootstrap!(entry) at crate \
         level (mproc does this by itself)"
    )]
    ServerThreads {
        /// How many threads it had.
        threads: usize,
    },
    /// The two sides speak different protocol versions.
    #[error("protocol version mismatch: client {client}, server {server}")]
    VersionMismatch {
        /// Ours.
        client: u32,
        /// Theirs.
        server: u32,
    },
    /// The server runs a different executable.
    #[error("the fork server runs a different build of this executable")]
    BuildMismatch,
    /// The server died or closed the connection.
    #[error("the fork server is gone: {0}")]
    ServerGone(String),
    /// The server could not start the child (fork, chdir or exec failed).
    #[error("spawn failed: {0}")]
    SpawnFailed(String),
    /// The server answered a request with an error.
    #[error("fork server error ({kind:?}): {message}")]
    Server {
        /// Its category.
        kind: ErrorKind,
        /// Its detail.
        message: String,
    },
    /// More fds than one frame may carry.
    #[error("{count} fds exceed the limit of {max} per spawn", max = crate::protocol::MAX_FDS)]
    TooManyFds {
        /// How many were given.
        count: usize,
    },
    /// A wait ran out of time.
    #[error("timed out")]
    Timeout,
    /// The connection belongs to the process this one was forked from.
    #[error("this connection belongs to the parent process (used after fork)")]
    Forked,
    /// Starting the server failed.
    #[error("could not launch the fork server: {0}")]
    Launch(String),
}

impl Error {
    pub(crate) fn from_send(e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => {
                Error::ServerGone("connection closed by the server".into())
            }
            _ => Error::Io(e),
        }
    }

    pub(crate) fn from_reply(kind: ErrorKind, message: String) -> Error {
        match kind {
            ErrorKind::SpawnFailed => Error::SpawnFailed(message),
            kind => Error::Server { kind, message },
        }
    }
}
