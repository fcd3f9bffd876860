//! Python's `multiprocessing` for Rust, built on a fork server. Linux only.
//!
//! # Hello, process
//!
//! ```
//! // In a program, `let _rt = mproc::init()?;` is the first line of main:
//! // it launches the fork server and joins the children at the end. Tests
//! // and doctests like this one need no set-up line at all.
//! fn greet(name: String) -> String {
//!     format!("hello, {name}, from pid {}", std::process::id())
//! }
//!
//! # fn main() -> mproc::Result<()> {
//! let ctx = mproc::get_context("forkserver")?;
//! let mut p = ctx.process(greet, "bob".to_string()).name("greeter").start()?;
//! let answer = p.join()?;
//! assert!(answer.starts_with("hello, bob"));
//! assert_eq!(p.exitcode(), Some(0));
//! # Ok(()) }
//! ```
//!
//! # The three start methods
//!
//! - `"forkserver"` (default): a single-threaded server process, started
//!   from this executable by [`init`], forks every child. Safe from any
//!   thread, and cost does not grow with the parent's heap or thread count.
//!   The child still starts in the requester's *current* working directory,
//!   environment and stdio.
//! - `"spawn"`: a fresh start of this executable (`posix_spawn` of
//!   `/proc/self/exe`) that runs only the target.
//! - `"fork"`: `fork()` in the caller. Fast for small parents and able to run
//!   any closure ([`Context::process_closure`]), but unsafe when other threads
//!   hold locks: a warning is logged when the parent has several threads.
//!
//! Targets are `fn(A) -> R` items (or non-capturing closures) with serde
//! arguments and results: under `spawn` and `forkserver` the child finds the
//! function by its offset in the executable.
//!
//! # Errors and exit codes
//!
//! `join` returns the target's value, [`Error::Panicked`] with the panic
//! message, or [`Error::Exited`] with Python's `exitcode` when the child ended
//! without returning (`exit(3)` gives 3, SIGKILL gives -9).
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! fn boom(_: ()) -> u32 { panic!("no luck") }
//! let mut p = mproc::get_context("spawn")?.process(boom, ()).start()?;
//! match p.join() {
//!     Err(mproc::Error::Panicked { message }) => assert_eq!(message, "no luck"),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(p.exitcode(), Some(1));
//! # Ok(()) }
//! ```
//!
//! # Passing data: queues and pipes
//!
//! [`Queue`], [`SimpleQueue`], [`JoinableQueue`] and
//! [`connection::pipe`] move serde values between any number of processes.
//! They are themselves arguments: handed to a child, they arrive working
//! under every start method (their file descriptors travel beside the bytes).
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! use mproc::Queue;
//!
//! fn producer(q: Queue<Option<u32>>) {
//!     for i in 0..3 {
//!         q.put(Some(i)).unwrap();
//!     }
//!     q.put(None).unwrap(); // the end marker
//! }
//!
//! let q = Queue::new()?;
//! let mut p = mproc::default_context().process(producer, q.clone()).start()?;
//! let mut got = Vec::new();
//! while let Some(i) = q.get()? {
//!     got.push(i);
//! }
//! p.join()?;
//! assert_eq!(got, [0, 1, 2]);
//! # Ok(()) }
//! ```
//!
//! # Pools
//!
//! [`Pool`] keeps worker processes and runs `fn` tasks on them: `apply`,
//! `apply_async` with callbacks, `map`, `imap`, `imap_unordered`, `starmap`.
//! A worker that dies mid-task fails that task only; a replacement starts
//! and the pool goes on (CPython's pool hangs there).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! fn square(x: u64) -> u64 { x * x }
//! let pool = mproc::default_context().pool(2)?;
//! assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
//! # Ok(()) }
//! ```
//!
//! # Shared memory and locks
//!
//! [`Value`], [`Array`] and their raw twins live in anonymous shared memory
//! (a memfd: nothing named, nothing left behind). [`Lock`], [`RLock`],
//! [`Semaphore`], [`Condition`], [`Event`] and [`Barrier`] work between the
//! threads of one process and between processes at once; when a process
//! dies holding a lock, the next acquirer is told ([`OwnerDied`]) and can
//! recover, where CPython would wait forever.
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! use mproc::Value;
//!
//! fn add_many(v: Value<u64>) {
//!     for _ in 0..1000 {
//!         *v.get_lock().unwrap() += 1;
//!     }
//! }
//!
//! let counter = Value::new(0u64)?;
//! let ctx = mproc::default_context();
//! let mut ps: Vec<_> = (0..4)
//!     .map(|_| ctx.process(add_many, counter.clone()).start())
//!     .collect::<mproc::Result<_>>()?;
//! for p in &mut ps {
//!     p.join()?;
//! }
//! assert_eq!(counter.get(), 4000);
//! # Ok(()) }
//! ```
//!
//! # A manager
//!
//! [`Manager`] runs a server process that holds dicts, lists, namespaces,
//! queues and locks for other processes — on this host through socket
//! pairs, or across hosts over TCP with an HMAC-checked authkey.
//!
//! ```
//! # fn main() -> mproc::Result<()> {
//! let manager = mproc::default_context().manager()?;
//! let d = manager.dict::<String, i64>()?;
//! d.set("count", &1)?;
//! d.add("count", 41)?;
//! assert_eq!(d.get("count")?, Some(42));
//! # Ok(()) }
//! ```
//!
//! # Async runtimes
//!
//! [`Process::join_async`], [`Connection::recv_async`](connection::Connection::recv_async)
//! and [`Queue::get_async`] are futures for any executor (tokio, smol, a
//! hand-written one): a waiter thread of this crate watches the child's
//! pidfd or the channel's fd, so no runtime thread blocks. See [`future`].
//!
//! `tracing` events (spawn, exit, protocol errors, the multithreaded-`fork`
//! warning) and spans (a process from request to exit, a pool task, a
//! manager call) are emitted; nothing is printed unless the program asks,
//! with a subscriber of its own or with [`log_to_stderr`]. See `docs/guide.md` and
//! `docs/python-mapping.md` for the long form.
#![deny(unsafe_code)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "mproc supports Linux only: it relies on SOCK_SEQPACKET, SCM_RIGHTS, memfds, pidfds, \
     futexes and /proc/self/exe"
);

mod channel;
pub mod codec;
pub mod connection;
mod context;
mod error;
pub mod future;
#[cfg(feature = "internals")]
pub mod fuzzing;
mod globals;
mod job;
mod log;
pub mod manager;
pub mod pool;
mod process;
pub mod queue;
mod reactor;
pub mod shared_memory;
pub mod shm;
mod spin;
pub mod sync;
mod sys;

pub use codec::{Bytes, bytes, fd};
pub use context::{
    Context, StartMethod, default_context, get_all_start_methods, get_context, get_start_method,
    set_forkserver_preload, set_forkserver_warm, set_start_method,
};
pub use error::{Error, Result};
pub use log::log_to_stderr;
pub use manager::{Manager, ManagerBuilder};
pub use pool::{
    AsyncResult, Callbacks, IMapIterator, Pool, PoolBuilder, PoolError, ProcessPoolExecutor,
};
pub use process::{
    ActiveChild, CurrentProcess, ParentProcess, Process, ProcessBuilder, active_children,
    cpu_count, current_process, parent_process,
};
// The queue, shared-memory and sync types are also at the crate root, as in
// Python's `multiprocessing` namespace.
#[allow(unused_imports, unreachable_pub)] // until every module has items
#[doc(no_inline)]
pub use {queue::*, shm::*, sync::*};

/// Keeps the runtime alive; dropping it does what CPython does at exit:
/// terminate daemonic children, join the others, stop the fork server.
#[must_use = "dropping the Runtime at once joins every child and stops the fork server"]
#[derive(Debug)]
pub struct Runtime {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        process::at_exit();
    }
}

/// Sets up the runtime: the first line of `main`, by convention.
///
/// The role of a process this crate started (a `spawn` child, the fork
/// server, one of its children) is already taken care of before `main`: a
/// constructor in this crate recognises it and runs it, so a program that
/// never calls `init` still never runs its `main` twice, and threads that a
/// runtime such as tokio starts before the first line of `main` are no
/// problem. What `init` adds is eager set-up and an orderly end: it launches
/// the fork server now when the default start method is `forkserver` (set
/// it first with [`set_start_method`] to change that) rather than on first
/// use, and returns the [`Runtime`] guard, whose drop terminates daemonic
/// children, joins the others and stops the server, as CPython does at exit.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> mproc::Result<()> {
///     let _rt = mproc::init()?;
///     let mut p = mproc::default_context().process(square, 7).start()?;
///     assert_eq!(p.join()?, 49);
///     Ok(())
/// }
/// ```
///
/// With tokio, the same line opens `async fn main`:
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _rt = mproc::init()?;
///     let pool = mproc::default_context().pool(2)?;
///     assert_eq!(pool.apply_async(square, 3)?.await?, 9);
///     Ok(())
/// }
/// ```
///
/// # Errors
/// When the fork server cannot be launched.
pub fn init() -> Result<Runtime> {
    __dispatch();
    if get_start_method() == StartMethod::ForkServer {
        process::method::server()?;
    }
    Ok(Runtime {
        _not_send: std::marker::PhantomData,
    })
}

/// For tests that count this process's fds: waits at most `timeout` until
/// the fork server's warm child reserved for this process has arrived (its
/// socket, kick and pidfd are then held here, as they are whenever the
/// process is idle), so that two counts compare. `false` when there is no
/// fork server, it keeps no warm children, or none came in time.
#[doc(hidden)]
pub fn __settle_fork_server(timeout: std::time::Duration) -> bool {
    process::method::settle_fork_server(timeout)
}

/// Runs this process's role if it has one (never returning then).
#[doc(hidden)]
pub fn __dispatch() {
    process::method::dispatch_role();
}

/// The role dispatch, run by the loader before `main` (and before any
/// constructor of the program that could start a thread, as long as this
/// crate's constructors come first, which the link order gives).
///
/// Why a constructor rather than the first line of `main`: a process started
/// from `/proc/self/exe` must never run the user's `main` (a `main` that
/// forgot the set-up would otherwise start another copy of itself from each
/// copy), and `#[tokio::main]` starts threads before the first line of the
/// body, too late for the single-threaded fork server. `docs/architecture.md`
/// has the whole argument.
#[allow(unsafe_code)] // a link section, see the comment
#[used]
// SAFETY: `.init_array` holds `extern "C" fn()` pointers that the loader
// calls before `main`; this one only reads an environment variable unless
// the process was started in a role by this crate.
#[unsafe(link_section = ".init_array")]
static DISPATCH_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn dispatch_before_main() {
        __dispatch();
    }
    dispatch_before_main
};

/// Called on every path that starts a process of this executable in a role:
/// the reference keeps the constructor above in any binary that can start
/// one, whatever the linker would otherwise leave out.
pub(crate) fn dispatch_is_linked() {
    std::hint::black_box(&DISPATCH_BEFORE_MAIN);
}

/// Not needed any more: kept so that code written for earlier versions
/// still builds.
///
/// The role dispatch it used to place now runs from a constructor inside
/// this crate (see [`init`]), in every program, test binary and doctest that
/// links `mproc`. It expands to nothing.
///
/// ```
/// mproc::bootstrap!(); // harmless, and unnecessary
///
/// fn one(_: ()) -> u8 {
///     1
/// }
///
/// # fn main() -> mproc::Result<()> {
/// let mut p = mproc::get_context("spawn")?.process(one, ()).start()?;
/// assert_eq!(p.join()?, 1);
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! bootstrap {
    () => {};
}
