//! `Process` and its builder, `current_process`, `active_children`.
//!
//! A process is started by one of three start methods ([`method`]) but looks
//! the same afterwards: a pid, a status that becomes known once the child is
//! reaped, and a control channel on which the child reports its outcome (the
//! encoded return value or the panic message) just before it exits. `join`
//! waits for the status, then reads the outcome; no outcome means the child
//! ended without returning (`exit(n)` or a signal).

pub(crate) mod method;
pub(crate) mod panic_report;

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::{Channel, RecvError};
use crate::codec;
use crate::context::{Context, StartMethod};
use crate::error::{Error, Result};
use crate::globals::{self, Identity};
use crate::job::{Encoded, Outcome};
use crate::sys::{self, ForkCell};
use method::{Popen, Started};

enum OutcomeState {
    Pending,
    Taken,
}

/// Shared state of one started child.
pub(crate) struct ProcInner {
    name: String,
    daemon: bool,
    method: StartMethod,
    popen: Box<dyn Popen>,
    ctrl: Channel,
    outcome: Mutex<OutcomeState>,
    authkey: Vec<u8>,
    /// `mproc.process`, open from the request until the exit is seen.
    span: Mutex<Option<tracing::Span>>,
}

impl ProcInner {
    fn exitcode(&self) -> Option<i32> {
        let code = self.popen.poll().map(|s| s.exitcode());
        if let Some(code) = code {
            self.ended(code);
        }
        code
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<forkserver::ExitStatus>> {
        let status = self.popen.wait(deadline)?;
        if let Some(st) = &status {
            self.ended(st.exitcode());
        }
        Ok(status)
    }

    fn is_running(&self) -> bool {
        let running = self.popen.is_running();
        if !running && let Some(code) = self.popen.poll().map(|s| s.exitcode()) {
            self.ended(code);
        }
        running
    }

    /// The exit is known: the last event of the span, which then closes.
    fn ended(&self, exitcode: i32) {
        let span = self
            .span
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(span) = span {
            tracing::debug!(parent: &span, exitcode, "process exited");
        }
    }
}

/// What a child runs: a `fn` with its argument (any method), or a closure
/// (the `fork` method only, whose child has the parent's memory).
pub(crate) enum Target<A, R> {
    Fn(fn(A) -> R, A),
    Closure(Box<dyn FnOnce() -> R + Send>),
}

/// Configures a child before it starts (Python's `Process(target=…,
/// args=…, name=…, daemon=…)`); [`ProcessBuilder::start`] starts it.
///
/// ```
/// fn greet((who, times): (String, usize)) -> String {
///     format!("hello {who}! ").repeat(times)
/// }
///
/// # fn main() -> mproc::Result<()> {
/// let mut p = mproc::default_context()
///     .process(greet, ("world".to_string(), 2))
///     .name("greeter")
///     .daemon(true)
///     .start()?;
/// assert_eq!(p.name(), "greeter");
/// assert!(p.daemon());
/// assert_eq!(p.join()?, "hello world! hello world! ");
/// # Ok(()) }
/// ```
#[must_use = "a process does not run until `start` is called"]
pub struct ProcessBuilder<A, R> {
    ctx: Context,
    target: Target<A, R>,
    name: Option<String>,
    daemon: bool,
}

impl Context {
    /// A process that runs `f(args)` (Python's `ctx.Process(target=f,
    /// args=args)`).
    ///
    /// `f` is a `fn` item or a non-capturing closure: under `spawn` and
    /// `forkserver` it runs in another process of this executable, which
    /// finds it by its offset in the binary. So `f` must be a function of
    /// the program itself: one in a shared library (`dlopen`ed, or a Rust
    /// `dylib`) is refused by `start` with [`Error::NotInExecutable`]
    /// (the `fork` method has no such limit).
    ///
    /// `args` and the return value travel encoded (serde), so they are
    /// owned values: `String` rather than `&str`, `Vec<T>` rather than
    /// `&[T]`; several arguments go as a tuple. Values that own fds
    /// (`Connection`, `Queue`, locks, shared memory) arrive working.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// fn square(x: u64) -> u64 { x * x }
    /// let ctx = mproc::get_context("forkserver")?;
    /// let mut p = ctx.process(square, 12).start()?;
    /// assert_eq!(p.join()?, 144);
    /// assert_eq!(p.exitcode(), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn process<A, R>(&self, f: fn(A) -> R, args: A) -> ProcessBuilder<A, R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        ProcessBuilder {
            ctx: *self,
            target: Target::Fn(f, args),
            name: None,
            daemon: false,
        }
    }

    /// A process that runs any closure — `fork` method only, since only a
    /// forked child has the parent's memory (and so the closure's captures).
    ///
    /// # Errors
    /// `start` fails with [`Error::Unsupported`] under another method.
    pub fn process_closure<R>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> ProcessBuilder<(), R>
    where
        R: Serialize + DeserializeOwned + 'static,
    {
        ProcessBuilder {
            ctx: *self,
            target: Target::Closure(Box::new(f)),
            name: None,
            daemon: false,
        }
    }
}

impl<A, R> ProcessBuilder<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    /// The process's name (default `Process-N`, nested as `Process-N:M`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemonic process is terminated when its parent exits (also when
    /// the parent is killed) and may not start children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Starts the child (Python's `Process.start()`).
    ///
    /// # Errors
    /// [`Error::DaemonChildren`] in a daemonic process; [`Error::Unsupported`]
    /// for a closure under `spawn` or `forkserver`; an OS or fork-server error
    /// when the child cannot be created.
    pub fn start(self) -> Result<Process<R>> {
        let (parent, path) = globals::with(|g| {
            g.counter += 1;
            let n = g.counter;
            let parent = g.me().clone();
            let mut path = parent.path.clone();
            path.push(n);
            (parent, path)
        });
        if parent.daemon {
            return Err(Error::DaemonChildren);
        }
        let name = self.name.unwrap_or_else(|| {
            let p: Vec<String> = path.iter().map(|n| n.to_string()).collect();
            format!("Process-{}", p.join(":"))
        });
        let identity = Identity {
            name: name.clone(),
            path,
            authkey: parent.authkey.clone(),
            daemon: self.daemon,
            parent: Some((std::process::id() as i32, parent.name.clone())),
        };
        let method = self.ctx.start_method();
        let span = tracing::debug_span!(
            "mproc.process",
            name = %name,
            %method,
            pid = tracing::field::Empty
        );
        let entered = span.enter();
        let Started { popen, ctrl } = method::start(method, self.target, identity)?;
        span.record("pid", popen.pid());
        tracing::debug!("process started");
        drop(entered);
        let inner = Arc::new(ProcInner {
            name,
            daemon: self.daemon,
            method,
            popen,
            ctrl,
            outcome: Mutex::new(OutcomeState::Pending),
            authkey: parent.authkey,
            span: Mutex::new(Some(span)),
        });
        children().push(inner.clone());
        Ok(Process {
            inner,
            _result: PhantomData,
        })
    }
}

/// This process's children that have not been joined (Python's
/// `_children`). Its own cell: a `fork` child starts with none
/// ([`forget_children_after_fork`]).
static CHILDREN: ForkCell<Mutex<Vec<Arc<ProcInner>>>> = ForkCell::new(Mutex::new(Vec::new()));

fn children() -> std::sync::MutexGuard<'static, Vec<Arc<ProcInner>>> {
    CHILDREN
        .get()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// In a child made by the `fork` method: the parent's children are not
/// ours (forgotten, not dropped: their state may be mid-change).
///
/// # Safety
/// Only right after `fork`, in the child, before any other thread starts.
#[allow(unsafe_code)] // the reset itself, see the safety contract
pub(crate) unsafe fn forget_children_after_fork() {
    // SAFETY: forwarded to the caller (single-threaded fork child).
    unsafe { CHILDREN.reset_in_child(Mutex::new(Vec::new())) };
}

/// What a process does before it exits (Python's `_exit_function`):
/// terminate daemonic children, join every child, stop the fork server.
pub(crate) fn at_exit() {
    let children = std::mem::take(&mut *children());
    for c in &children {
        if c.daemon {
            let _ = c.popen.signal(libc::SIGTERM);
        }
    }
    for c in &children {
        let _ = c.wait(None);
    }
    drop(method::take_server());
}

/// Exits a child of any start method after [`at_exit`].
///
/// Like CPython's children (`os._exit` after `run`), it flushes Rust's
/// stdout (stderr has no buffer) and leaves with `_exit`: `atexit` handlers
/// a fork-server child inherited from the server are not the child's to run.
pub(crate) fn exit_process(code: i32) -> ! {
    use std::io::Write;
    at_exit();
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

/// A started child process; `R` is what its target returns.
///
/// Dropping a `Process` does not stop the child: it stays in
/// [`active_children`] until it has ended and been reaped, and the
/// [`crate::Runtime`] joins it at exit (as CPython does).
///
/// ```
/// use std::time::Duration;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # fn main() -> mproc::Result<()> {
/// let ctx = mproc::get_context("forkserver")?;
/// let mut slow = ctx.process(nap, 60_000).start()?;
/// assert!(slow.is_alive());
/// // join with a timeout gives up without stopping the child.
/// assert!(matches!(
///     slow.join_timeout(Duration::from_millis(10)),
///     Err(mproc::Error::Timeout)
/// ));
/// slow.terminate()?;
/// assert!(matches!(slow.join(), Err(mproc::Error::Exited { exitcode: -15 })));
/// assert_eq!(slow.exitcode(), Some(-15));
///
/// let mut quick = ctx.process(nap, 1).start()?;
/// assert_eq!(quick.join()?, 1);
/// assert_eq!(quick.exitcode(), Some(0));
/// # Ok(()) }
/// ```
pub struct Process<R = ()> {
    inner: Arc<ProcInner>,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.inner.name)
            .field("pid", &self.pid())
            .field("daemon", &self.inner.daemon)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

impl<R> Process<R> {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.inner.popen.pid()
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the child is daemonic.
    pub fn daemon(&self) -> bool {
        self.inner.daemon
    }

    /// How the child was started.
    pub fn start_method(&self) -> StartMethod {
        self.inner.method
    }

    /// The authentication key the child inherited (Python's `authkey`).
    pub fn authkey(&self) -> &[u8] {
        &self.inner.authkey
    }

    /// Whether the child is still running (reaps it if it has ended).
    ///
    /// A child whose fork server died keeps `exitcode()` at `None` (its
    /// status went with the server), but is not alive once it has ended.
    pub fn is_alive(&self) -> bool {
        self.inner.is_running()
    }

    /// `None` while running; the exit code; `-N` after signal `N`.
    pub fn exitcode(&self) -> Option<i32> {
        self.inner.exitcode()
    }

    /// An fd that becomes readable when the child ends (Python's
    /// `sentinel`), usable with `poll`.
    pub fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.inner.popen.sentinel()
    }

    /// Sends SIGTERM (Python's `terminate()`); exitcode becomes `-15`.
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn terminate(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGTERM)
    }

    /// Sends SIGKILL (Python's `kill()`); exitcode becomes `-9`.
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn kill(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGKILL)
    }

    /// Sends SIGINT (Python 3.14's `interrupt()`), as Ctrl-C would; a
    /// child that does not handle it ends with exitcode `-2`.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    /// fn nap(_: ()) {
    ///     std::thread::sleep(Duration::from_secs(60));
    /// }
    /// let mut p = mproc::get_context("forkserver")?.process(nap, ()).start()?;
    /// p.interrupt()?;
    /// assert!(p.join_timeout(Duration::from_secs(20)).is_err());
    /// assert_eq!(p.exitcode(), Some(-2)); // SIGINT
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn interrupt(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGINT)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to end and returns what its target returned
    /// (Python's `join()`, plus the return value).
    ///
    /// # Errors
    /// [`Error::Panicked`] with the child's panic message; [`Error::Exited`]
    /// when it ended without returning (`exit(n)`, a signal: `-N`);
    /// [`Error::ResultTaken`] on a second call after a successful one.
    pub fn join(&mut self) -> Result<R> {
        self.join_deadline(None)
    }

    /// [`join`](Process::join) as a future: resolves to what the child's
    /// target returned, without blocking a thread while the child runs,
    /// under any async runtime (see [`crate::future`]).
    ///
    /// The child's end is announced by its pidfd, which the crate's waiter
    /// thread watches; no thread of the async runtime sleeps for it, so one
    /// runtime thread can await any number of children.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future (after a `tokio::time::timeout`,
    /// say) leaves the child running and its result in place; join again
    /// later.
    ///
    /// # Errors
    /// As [`join`](Process::join); an I/O error when the waiter thread
    /// cannot be set up.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    /// let ctx = mproc::default_context();
    /// let mut p = ctx.process(nap, 300).start()?;
    /// rt.block_on(async {
    ///     // Too short: the future is dropped, the child runs on.
    ///     let early = tokio::time::timeout(Duration::from_millis(10), p.join_async()).await;
    ///     assert!(early.is_err());
    ///     // Joined again, in time.
    ///     let ms = tokio::time::timeout(Duration::from_secs(30), p.join_async()).await;
    ///     assert_eq!(ms.expect("ended in time")?, 300);
    ///     Ok(())
    /// })
    /// # }
    /// ```
    #[doc(alias = "join")]
    pub fn join_async(&mut self) -> crate::future::JoinFuture<'_, R> {
        crate::future::JoinFuture::new(self)
    }

    /// [`Process::join`] that gives up after `timeout` with [`Error::Timeout`]
    /// (the child keeps running; join again later).
    ///
    /// # Errors
    /// As [`Process::join`], plus [`Error::Timeout`].
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_deadline(Instant::now().checked_add(timeout))
    }

    fn join_deadline(&mut self, deadline: Option<Instant>) -> Result<R> {
        let status = self.inner.wait(deadline)?.ok_or(Error::Timeout)?;
        self.finish_join(status)
    }

    /// [`Process::join`] that never blocks: `None` while the child runs
    /// (for [`JoinFuture`](crate::future::JoinFuture)).
    pub(crate) fn try_join(&mut self) -> Option<Result<R>> {
        match self.inner.popen.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(self.finish_join(status)),
            Err(e) => Some(Err(e)),
        }
    }

    /// The end of a join, once the child's status is known: its outcome.
    fn finish_join(&mut self, status: forkserver::ExitStatus) -> Result<R> {
        forget_child(&self.inner);
        let mut state = self
            .inner
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, OutcomeState::Taken) {
            return Err(Error::ResultTaken);
        }
        let exitcode = status.exitcode();
        let msg = match self.inner.ctrl.try_recv() {
            Ok(m) => m,
            Err(RecvError::Timeout | RecvError::Closed) => {
                return Err(Error::Exited { exitcode });
            }
            // A child killed before it read its job closes a socket with
            // unread data in it: the kernel resets the connection. It ended
            // without a result all the same.
            Err(RecvError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Error::Exited { exitcode });
            }
            Err(RecvError::Malformed(m)) => return Err(Error::Codec(m)),
            Err(RecvError::Io(e)) => return Err(e.into()),
        };
        *state = OutcomeState::Taken;
        decode_outcome(msg)
    }
}

fn decode_outcome<R: DeserializeOwned>((bytes, fds): Encoded) -> Result<R> {
    match codec::decode::<Outcome>(&bytes, Vec::new())? {
        Outcome::Returned(value) => codec::decode(&value, fds),
        Outcome::Panicked(message) => Err(Error::Panicked { message }),
    }
}

fn forget_child(inner: &Arc<ProcInner>) {
    children().retain(|c| !Arc::ptr_eq(c, inner));
}

/// A live child, as [`active_children`] lists it.
#[derive(Clone)]
pub struct ActiveChild {
    inner: Arc<ProcInner>,
}

impl std::fmt::Debug for ActiveChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveChild")
            .field("name", &self.inner.name)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ActiveChild {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.inner.popen.pid()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether it is daemonic.
    pub fn daemon(&self) -> bool {
        self.inner.daemon
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        self.inner.is_running()
    }

    /// Sends SIGTERM.
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn terminate(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGTERM)
    }

    /// Sends SIGKILL.
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn kill(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGKILL)
    }

    /// Sends SIGINT (Python 3.14's `interrupt()`).
    ///
    /// # Errors
    /// An OS error other than "already gone".
    pub fn interrupt(&self) -> Result<()> {
        self.inner.popen.signal(libc::SIGINT)
    }

    /// Waits up to `timeout` for it to end; its exit code, or `None`.
    ///
    /// # Errors
    /// When waiting fails (fork server gone).
    pub fn join_timeout(&self, timeout: Duration) -> Result<Option<i32>> {
        Ok(self
            .inner
            .wait(Instant::now().checked_add(timeout))?
            .map(|s| s.exitcode()))
    }
}

/// The children of this process that are still running; finished ones are
/// reaped as a side effect (Python's `active_children()`).
pub fn active_children() -> Vec<ActiveChild> {
    let all = children().clone();
    let (done, live): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| c.exitcode().is_some());
    if !done.is_empty() {
        children().retain(|c| !done.iter().any(|d| Arc::ptr_eq(c, d)));
    }
    live.into_iter()
        .map(|inner| ActiveChild { inner })
        .collect()
}

/// This process as Python's `current_process()` describes it: read it with
/// the same accessors as a [`Process`] (`name()`, `pid()`, `authkey()`,
/// `daemon()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: i32,
    authkey: Vec<u8>,
    daemon: bool,
}

impl CurrentProcess {
    /// `MainProcess` in the main process, else the name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The authentication key: 32 random bytes from the OS in the main
    /// process, inherited by children (Python's `authkey`).
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// Whether this process is daemonic.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// This process (Python's `current_process()`).
///
/// ```
/// let me = mproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id() as i32);
/// assert_eq!(me.authkey().len(), 32);
/// ```
pub fn current_process() -> CurrentProcess {
    globals::with(|g| {
        let me = g.me();
        CurrentProcess {
            name: me.name.clone(),
            pid: std::process::id() as i32,
            authkey: me.authkey.clone(),
            daemon: me.daemon,
        }
    })
}

/// The process that started this one (Python's `parent_process()`).
///
/// It watches the parent through a pidfd opened when it is made, checked
/// against pid reuse: a process found under the parent's pid that started
/// after this one is not the parent, so the parent is gone.
#[derive(Debug, Clone)]
pub struct ParentProcess {
    /// Its pid.
    pub pid: i32,
    /// Its name.
    pub name: String,
    watch: ParentWatch,
}

#[derive(Debug, Clone)]
enum ParentWatch {
    /// A pidfd of the parent: readable once it has ended.
    Pidfd(Arc<OwnedFd>),
    /// The parent had ended already.
    Gone,
    /// No pidfd (an old kernel): probed with signal 0.
    Probe,
}

impl PartialEq for ParentProcess {
    fn eq(&self, other: &ParentProcess) -> bool {
        (self.pid, &self.name) == (other.pid, &other.name)
    }
}

impl Eq for ParentProcess {}

/// When process `pid` (or `self`) started, in clock ticks since boot
/// (field 22 of `/proc/<pid>/stat`, after the parenthesised name).
fn start_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ParentWatch {
    fn open(pid: i32) -> ParentWatch {
        let fd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return ParentWatch::Gone,
            Err(_) => return ParentWatch::Probe,
        };
        // Read the start time first, then see the pidfd's process still
        // running: the pid was its own the whole time, so the start time is
        // its. An ended process, or one younger than this one, means the
        // parent is gone (the pid is reused only after its owner ends).
        let theirs = start_ticks(&pid.to_string());
        if sys::wait_readable(fd.as_fd(), Some(Duration::ZERO)).unwrap_or(false) {
            return ParentWatch::Gone;
        }
        match (theirs, start_ticks("self")) {
            (Some(theirs), Some(mine)) if theirs > mine => ParentWatch::Gone,
            _ => ParentWatch::Pidfd(Arc::new(fd)),
        }
    }
}

impl ParentProcess {
    /// Whether it still runs (`is_alive()`).
    pub fn is_alive(&self) -> bool {
        match &self.watch {
            ParentWatch::Pidfd(fd) => {
                !sys::wait_readable(fd.as_fd(), Some(Duration::ZERO)).unwrap_or(false)
            }
            ParentWatch::Gone => false,
            ParentWatch::Probe => sys::kill(self.pid, 0).is_ok(),
        }
    }

    /// Waits for the parent to end (`join()`).
    ///
    /// # Errors
    /// When polling its pidfd fails.
    pub fn join(&self) -> Result<()> {
        self.wait(None)
    }

    /// Waits at most `timeout` for the parent to end (`join(timeout)`).
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// use std::time::Duration;
    /// fn parent_still_there(_: ()) -> bool {
    ///     let parent = mproc::parent_process().expect("a child has a parent");
    ///     // The parent is blocked in join below: the wait times out.
    ///     matches!(parent.join_timeout(Duration::from_millis(50)), Err(mproc::Error::Timeout))
    /// }
    /// let ctx = mproc::get_context("spawn")?;
    /// let mut p = ctx.process(parent_still_there, ()).start()?;
    /// assert!(p.join_timeout(Duration::from_secs(20))?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] when the parent still runs (Python returns
    /// `None` and you check `is_alive`); an OS error when polling fails.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.wait(Instant::now().checked_add(timeout))
    }

    /// The parent's pidfd, readable once it has ended (`sentinel`); `None`
    /// when it had ended before this handle was made, or the kernel has no
    /// pidfds.
    pub fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        match &self.watch {
            ParentWatch::Pidfd(fd) => Some(fd.as_fd()),
            _ => None,
        }
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<()> {
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match &self.watch {
                ParentWatch::Gone => return Ok(()),
                ParentWatch::Pidfd(fd) => {
                    if sys::wait_readable(fd.as_fd(), left)? {
                        return Ok(());
                    }
                }
                ParentWatch::Probe => {
                    if !self.is_alive() {
                        return Ok(());
                    }
                    let nap = Duration::from_millis(10);
                    std::thread::sleep(left.map_or(nap, |l| l.min(nap)));
                }
            }
            // poll counts whole milliseconds: never give up early.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
        }
    }
}

/// The parent, or `None` in the main process.
pub fn parent_process() -> Option<ParentProcess> {
    let (pid, name) = globals::with(|g| g.me().parent.clone())?;
    Some(ParentProcess {
        pid,
        name,
        watch: ParentWatch::open(pid),
    })
}

/// Number of CPUs online (Python's `cpu_count()`).
pub fn cpu_count() -> usize {
    sys::cpu_count()
}
