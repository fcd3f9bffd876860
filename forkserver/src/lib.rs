//! A single-threaded fork server: safe child processes from multithreaded,
//! large parents. Linux only.
//!
//! `fork()` in a process with many threads is a trap: the child gets a copy of
//! every lock, including those another thread held at that instant, and the
//! first `malloc` or `println!` can deadlock forever. It is also slow: the
//! kernel copies the page tables, so spawn cost grows with the parent's heap.
//! This crate starts, once and early, a small server process from the
//! program's own executable. The server has one thread and a small heap; it
//! forks children on request, hands them the requester's fds, working
//! directory and environment, reaps them and reports how they ended.
//!
//! # Hello, child
//!
//! ```no_run
//! use forkserver::{EntryArgs, Command, ForkServer, LaunchConfig};
//!
//! // What a `Command::run` child executes (in the server's fork).
//! fn entry(start: EntryArgs) -> i32 {
//!     println!("child says {}", String::from_utf8_lossy(&start.data));
//!     7
//! }
//!
//! fn main() -> forkserver::Result<()> {
//!     // First line of main: recognises the server role and never returns
//!     // there. (Or put `forkserver::bootstrap!(entry);` at crate level.)
//!     if let Some(role) = forkserver::bootstrap(forkserver::Hooks { entry: Some(entry) }) {
//!         panic!("unexpected role {}", role.name);
//!     }
//!     let server = ForkServer::launch(LaunchConfig::new())?;
//!     let mut child = server.spawn(&Command::run(b"hello".to_vec()))?;
//!     assert_eq!(child.wait()?.code(), Some(7));
//!
//!     let mut sh = server.spawn(&Command::exec("/bin/sh", ["-c", "exit 3"]))?;
//!     assert_eq!(sh.wait()?.code(), Some(3));
//!     Ok(())
//! }
//! ```
//!
//! # Pieces
//!
//! - [`ForkServer`] launches the server (`posix_spawn` of `/proc/self/exe`,
//!   safe from any thread) and relaunches it if it dies.
//! - [`ServerConnection`] is one protocol connection; share it between threads or
//!   open more with [`ServerConnection::connect`].
//! - [`Command`] says what to run: the registered entry ([`Command::run`]) or
//!   a program ([`Command::exec`]), with fds at chosen slots.
//! - [`Child`] waits (with or without a timeout) and signals.
//! - [`codec`] is the value encoding; the messages themselves (`protocol`)
//!   and the server's loop and state machine (`server`) are internal (public
//!   with the `internals` feature, for this crate's tests, fuzz targets and
//!   benchmarks). The root re-exports what an embedder needs of them: the
//!   limits ([`MAX_FDS`], [`MAX_SLOT`], [`MAX_BULK`], [`MAX_FRAME`]), the
//!   [`PROTOCOL_VERSION`] and the types inside [`Error`] and [`ExitStatus`].
//!   The wire format is in `docs/protocol.md`.
//!
//! An embedder (such as the `mproc` runtime, or the `mini_pool` example)
//! registers one child entry and may define roles of its own with
//! [`spawn_role`]; the crate knows nothing of what children run.
#![deny(unsafe_code)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "forkserver supports Linux only: it relies on SOCK_SEQPACKET, SCM_RIGHTS, memfds, pidfds, \
     futexes and /proc/self/exe"
);

pub mod client;
pub mod codec;
mod error;
pub mod fdpass;
pub mod fnref;
#[cfg(feature = "internals")]
pub mod fuzzing;
mod launch;
// The wire messages and the server's loop and handler: public with the
// `internals` feature (this crate's tests, fuzz targets and benchmarks send
// raw requests and drive the handler); an embedder needs only what the root
// re-exports below.
#[cfg(feature = "internals")]
pub mod protocol;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub)]
mod protocol;
#[cfg(feature = "internals")]
pub mod server;
#[cfg(not(feature = "internals"))]
#[allow(unreachable_pub, dead_code)]
mod server;
mod sys;

pub use client::{Child, Command, ExitStatus, ServerConnection};
pub use error::{Error, Result};
pub use fnref::{FnRef, NotInExecutable};
pub use launch::{
    DEFAULT_WARM, EntryArgs, ForkServer, Hooks, LaunchConfig, MAX_WARM, ROLE_VAR, Role,
    SERVER_ROLE, bootstrap, bootstrap_or_exit, spawn_role,
};
/// What an embedder sees of the protocol: the limits a spawn must keep, the
/// version the handshake checks, and the types inside [`Error`] and
/// [`ExitStatus`].
pub use protocol::{
    ErrorKind, MAX_BULK, MAX_FDS, MAX_FRAME, MAX_SLOT, PROTOCOL_VERSION, Refusal, Rusage,
    WireStatus,
};

/// Reaps a process this one started with [`spawn_role`], blocking or not.
///
/// Returns `None` when it has not exited (non-blocking) or is not our child.
pub fn reap(pid: i32, block: bool) -> Option<ExitStatus> {
    sys::reap(pid, block).map(|(_, st, ru)| ExitStatus::new(st, ru))
}

/// Number of threads of the calling process (from `/proc/self/task`).
///
/// # Errors
/// When `/proc` is not mounted.
pub fn thread_count() -> std::io::Result<usize> {
    sys::thread_count()
}
