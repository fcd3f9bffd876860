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
    #[error(transparent)]
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
    /// The server could not start the child: `fork`, `chdir`, `exec` or
    /// another step of the child's set-up failed. `source` has the OS error
    /// (its [`kind`](std::io::Error::kind) is what
    /// `std::process::Command::spawn` would give: `NotFound` for a missing
    /// program, `PermissionDenied`, …).
    #[error("could not start the child: {stage} failed")]
    SpawnFailed {
        /// The step that failed (`fork`, `chdir`, `exec`, `setrlimit`, …).
        stage: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
            ErrorKind::SpawnFailed => spawn_failed(&message),
            kind => Error::Server { kind, message },
        }
    }

    /// The kind of OS error behind this error, when there is one: an
    /// [`Error::Io`], or an [`Error::SpawnFailed`] (as
    /// `std::process::Command::spawn` reports a missing program with
    /// `NotFound`).
    ///
    /// ```no_run
    /// # fn main() -> forkserver::Result<()> {
    /// # let server = forkserver::ForkServer::launch(forkserver::LaunchConfig::new())?;
    /// match server.spawn(&forkserver::Command::exec("no-such-program", ["x"])) {
    ///     Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {}
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Error::Io(e) | Error::SpawnFailed { source: e, .. } => Some(e.kind()),
            _ => None,
        }
    }
}

/// Turns a server's "stage: reason" report into [`Error::SpawnFailed`],
/// with the OS error rebuilt from its number where the report has one
/// (`io::Error`'s own "… (os error N)").
fn spawn_failed(message: &str) -> Error {
    let (stage, reason) = message.split_once(": ").unwrap_or(("spawn", message));
    let errno = reason
        .strip_suffix(')')
        .and_then(|r| r.rsplit_once("(os error "))
        .and_then(|(_, n)| n.parse::<i32>().ok());
    let source = match errno {
        Some(n) => std::io::Error::from_raw_os_error(n),
        None => std::io::Error::other(reason.to_string()),
    };
    Error::SpawnFailed {
        stage: stage.to_string(),
        source,
    }
}

impl From<Error> for std::io::Error {
    /// The OS error itself where there is one (so `?` in a function that
    /// returns `io::Result` keeps `NotFound` a `NotFound`), else an error of
    /// kind `Other` wrapping this one.
    fn from(e: Error) -> std::io::Error {
        match e {
            Error::Io(e) => e,
            Error::SpawnFailed { source, .. } if source.raw_os_error().is_some() => source,
            Error::Timeout => std::io::Error::new(std::io::ErrorKind::TimedOut, e),
            e => std::io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_reports_keep_their_os_error() {
        let e = spawn_failed("exec: No such file or directory (os error 2)");
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
        assert_eq!(e.to_string(), "could not start the child: exec failed");
        let e = spawn_failed("chdir: Permission denied (os error 13)");
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::PermissionDenied));
        let e = spawn_failed("run: no child entry registered");
        assert!(matches!(&e, Error::SpawnFailed { stage, .. } if stage == "run"));
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::Other));
        // Whatever a peer sent, no panic.
        for odd in [
            "",
            ":",
            "x (os error ",
            "(os error 99999999999)",
            "a: b (os error -1)",
        ] {
            let _ = spawn_failed(odd).io_kind();
        }
        let io: std::io::Error = spawn_failed("exec: Permission denied (os error 13)").into();
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn io_errors_are_not_repeated_in_the_chain() {
        use std::error::Error as _;
        let e = Error::Io(std::io::Error::from_raw_os_error(libc::EBADF));
        assert!(
            e.source().is_none(),
            "transparent: the message is the source's"
        );
        let e = spawn_failed("exec: No such file or directory (os error 2)");
        assert!(!e.to_string().contains("No such file"));
        assert!(e.source().is_some());
    }
}
