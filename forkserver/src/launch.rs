//! Starting the server, and recognising the role of a started process.
//!
//! A process started from `/proc/self/exe` by this crate carries one
//! environment variable, [`ROLE_VAR`], of the form
//! `name;fd=3[;key=value…]`. [`bootstrap`] — called first thing in `main`, or
//! from a constructor placed by [`crate::bootstrap!`] — reads it. With no
//! variable it returns `None` and the program runs normally. With the role
//! `forkserver` it checks that the process has one thread, runs the preload
//! hooks and serves, never returning. Any other role is handed back to the
//! embedder (this is how `mproc` runs its `spawn` children) with the fd.
//!
//! The server is started with `LD_BIND_NOW=1` (unless the caller set
//! `LD_BIND_NOW` itself; the option `bind_now=added` says so) and takes it
//! out of its environment first thing. Rust executables are linked
//! `-z now`, but libc and libgcc_s bind their own calls lazily: each child
//! would otherwise resolve the symbols it is first to call, on a page it then
//! copies, in every child again. Resolved once in the server, children
//! inherit the result: 6–10 % off `mproc`'s spawn → join through the
//! server, measured (`docs/benchmarks.md`). Children see the requester's
//! `LD_BIND_NOW`, as they see the rest of its environment.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::client::{Child, Command, ServerConnection};
use crate::error::{Error, Result};
use crate::fnref::FnRef;
use crate::protocol::WireStatus;
use crate::server::handler::HandlerConfig;
use crate::sys;

/// The environment variable that names a started process's role.
pub const ROLE_VAR: &str = "FORKSERVER_ROLE";

/// The role name of the fork server itself.
pub const SERVER_ROLE: &str = "forkserver";

/// The dynamic loader's switch for resolving every symbol at start.
const BIND_NOW_VAR: &str = "LD_BIND_NOW";

/// What a child started with [`Command::run`](crate::Command::run) receives: the request's bytes, and its fds at their slots.
#[derive(Debug)]
pub struct EntryArgs {
    /// The bytes of the spawn request.
    pub data: Vec<u8>,
}

impl EntryArgs {
    /// Takes ownership of the fd the server installed at `slot`.
    ///
    /// The fd stays inheritable (no close-on-exec); set it if the child execs.
    ///
    /// # Errors
    /// When nothing is open at `slot`.
    pub fn take_fd(&self, slot: u32) -> std::io::Result<OwnedFd> {
        take_slot(slot)
    }
}

/// One bit per slot a child can have (0 ..= `MAX_SLOT`), set once its fd has
/// been handed out. A bitset rather than a locked list: a fresh child takes
/// its fds first thing, and every heap page it writes is a copy of the
/// server's.
static TAKEN: [AtomicU64; TAKEN_WORDS] = [const { AtomicU64::new(0) }; TAKEN_WORDS];
const TAKEN_WORDS: usize = crate::protocol::MAX_SLOT as usize / 64 + 1;

#[allow(unsafe_code)] // one call into `sys`, justified at the call
fn take_slot(slot: u32) -> std::io::Result<OwnedFd> {
    let taken = |what: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("fd slot {slot} {what}"),
        ))
    };
    let Some(word) = TAKEN.get(slot as usize / 64) else {
        return taken("is over the highest slot");
    };
    let bit = 1u64 << (slot % 64);
    // Claimed before the fd is looked at, so that two threads cannot both
    // adopt it; given back if nothing is open there.
    if word.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        return taken("already taken");
    }
    // SAFETY: in a Run child the server installed exactly the requested slots
    // and closed every other fd; only the entry knows these numbers, and the
    // bit claimed above hands each slot out once.
    match unsafe { sys::adopt_fd_keep_inheritable(slot as RawFd) } {
        Ok(fd) => Ok(fd),
        Err(e) => {
            word.fetch_and(!bit, Ordering::AcqRel);
            Err(e)
        }
    }
}

/// What the embedding program registers with [`bootstrap`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks {
    /// Called in a freshly forked child for [`Command::run`]; its return
    /// value is the exit code.
    pub entry: Option<fn(EntryArgs) -> i32>,
}

/// A role other than the server's, handed back to the embedder.
#[derive(Debug)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// The control fd the starter passed (owned, close-on-exec).
    pub fd: OwnedFd,
    /// `key=value` options after the fd.
    pub options: Vec<(String, String)>,
}

/// Recognises the role of this process. See the module docs.
///
/// Returns `None` for an ordinary start, `Some(role)` for an embedder role;
/// for the server role it serves and exits the process.
#[allow(unsafe_code)] // one call into `sys`, justified at the call
pub fn bootstrap(hooks: Hooks) -> Option<Role> {
    let value = std::env::var(ROLE_VAR).ok()?;
    let (name, fd, options) = match parse_role(&value) {
        Some(p) => p,
        None => {
            eprintln!("forkserver: malformed {ROLE_VAR}={value:?}");
            sys::exit_now(2);
        }
    };
    // Count threads before anything else could start one.
    let threads = if name == SERVER_ROLE {
        sys::thread_count().unwrap_or(0)
    } else {
        1
    };
    if threads == 1 {
        // SAFETY: one thread (just counted for the server role; for other
        // roles the embedder's bootstrap runs first thing, before threads).
        unsafe { sys::remove_env(ROLE_VAR) };
        if name == SERVER_ROLE && options.iter().any(|(k, v)| k == "bind_now" && v == "added") {
            // The loader has read it; children must not see it.
            // SAFETY: as above, one thread.
            unsafe { sys::remove_env(BIND_NOW_VAR) };
        }
    }
    // SAFETY: the starter passed this fd number for us alone.
    let fd = match unsafe { sys::adopt_fd(fd) } {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("forkserver: role fd {fd}: {e}");
            sys::exit_now(2);
        }
    };
    if name != SERVER_ROLE {
        return Some(Role {
            name: name.to_string(),
            fd,
            options,
        });
    }
    run_server(fd, threads, &options, hooks)
}

#[allow(unsafe_code)] // one call into `sys`, justified at the call
fn run_server(fd: OwnedFd, threads: usize, options: &[(String, String)], hooks: Hooks) -> ! {
    let mut cfg = HandlerConfig {
        build: sys::exe_identity(),
        pid: std::process::id() as i32,
        ..HandlerConfig::default()
    };
    let mut warm_up: Vec<fn()> = Vec::new();
    if threads != 1 {
        cfg.refuse_threads = Some(threads);
    } else {
        for (k, v) in options {
            match k.as_str() {
                "grace_ms" => {
                    if let Ok(ms) = v.parse() {
                        cfg.grace = Duration::from_millis(ms);
                    }
                }
                "warm" => {
                    if let Ok(n) = v.parse::<usize>() {
                        cfg.warm = n.min(MAX_WARM);
                    }
                }
                "warm_up" => {
                    for off in v.split(',').filter_map(|o| o.parse::<i64>().ok()) {
                        // SAFETY: as for `preload` below.
                        warm_up.push(unsafe { FnRef::from_offset(off).resolve() });
                    }
                }
                "preload" => {
                    for off in v.split(',').filter_map(|o| o.parse::<i64>().ok()) {
                        // SAFETY: offsets were made by FnRef::new in our
                        // parent, which runs this same executable (it started
                        // us from /proc/self/exe).
                        let f = unsafe { FnRef::from_offset(off).resolve() };
                        f();
                    }
                }
                _ => {}
            }
        }
    }
    tracing::debug!(pid = cfg.pid, "fork server serving");
    let code = match crate::server::serve(fd, cfg, hooks.entry, warm_up) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "fork server failed");
            1
        }
    };
    std::process::exit(code)
}

type Options = Vec<(String, String)>;

fn parse_role(value: &str) -> Option<(&str, RawFd, Options)> {
    let mut parts = value.split(';');
    let name = parts.next()?;
    let fd = parts.next()?.strip_prefix("fd=")?.parse::<RawFd>().ok()?;
    if name.is_empty() || fd < 3 {
        return None;
    }
    let options = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((name, fd, options))
}

/// Starts `/proc/self/exe` in role `name` with `pass` as its control fd.
///
/// Uses `posix_spawn`, so it is safe from any thread. The new process gets
/// the caller's environment plus [`ROLE_VAR`], fds 0–2, and `pass` (as fd 3);
/// its `main` must call the embedder's bootstrap first. Returns the pid: the
/// caller must reap it.
///
/// # Errors
/// When `posix_spawn` fails.
pub fn spawn_role(
    name: &str,
    pass: std::os::fd::BorrowedFd<'_>,
    options: &[(&str, String)],
    argv0: &OsStr,
) -> std::io::Result<i32> {
    spawn_role_env(name, pass, options, argv0, &[])
}

/// [`spawn_role`] with `extra` added to the environment.
fn spawn_role_env(
    name: &str,
    pass: std::os::fd::BorrowedFd<'_>,
    options: &[(&str, String)],
    argv0: &OsStr,
    extra: &[(&str, &str)],
) -> std::io::Result<i32> {
    refuse_if_not_bootstrapped();
    let mut value = format!("{name};fd=3");
    for (k, v) in options {
        value.push_str(&format!(";{k}={v}"));
    }
    let mut env: Vec<(OsString, OsString)> =
        std::env::vars_os().filter(|(k, _)| k != ROLE_VAR).collect();
    env.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    env.push((ROLE_VAR.into(), value.into()));
    sys::spawn_self(argv0, &env, pass)
}

/// Stops a process that was started in a role but whose bootstrap never
/// ran, before it starts another copy of itself.
///
/// [`bootstrap`] takes [`ROLE_VAR`] out of the environment of every process
/// it handles (a server that refuses for its threads never returns to
/// `main`). So a process that still has it here is a copy that this crate
/// started as a server or child, running the program's `main` instead:
/// its `main` does not call the bootstrap first. Without this check that copy
/// would start a server of its own, which would run `main` again, and so on
/// until the machine runs out of processes. The copy should not exist at
/// all, so it stops here, saying what to write; its starter reports the
/// same fix ([`Error::Launch`]).
fn refuse_if_not_bootstrapped() {
    if let Some(value) = std::env::var_os(ROLE_VAR) {
        let value = value.to_string_lossy();
        let role = value.split(';').next().unwrap_or_default();
        eprintln!(
            "forkserver: this process was started in the role {role:?} but its main never ran the \
             bootstrap, so it stops here instead of starting another copy of itself. \
             Call `forkserver::bootstrap(hooks)` as the first line of main, or put \
             `forkserver::bootstrap!(entry);` at crate level (with mproc, nothing is \
             needed: it dispatches before main)."
        );
        sys::exit_now(NOT_BOOTSTRAPPED_EXIT);
    }
}

/// The exit code of a copy stopped by [`refuse_if_not_bootstrapped`].
const NOT_BOOTSTRAPPED_EXIT: i32 = 97;

/// Most warm children a server keeps ([`LaunchConfig::warm`]).
pub const MAX_WARM: usize = 64;

/// Warm children a server keeps unless told otherwise: one. Spawns that
/// arrive apart (a `start` now and then, the usual case) each find one and
/// start in a fraction of a `fork`; more only help bursts, which a pool of
/// warm children cannot keep up with anyway (each refill waits for the
/// server to be idle), and each costs an idle process
/// (`docs/benchmarks.md`, "Warm children").
pub const DEFAULT_WARM: usize = 1;

/// How to launch a server.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    preload: Vec<FnRef>,
    warm: usize,
    warm_up: Vec<FnRef>,
    grace: Duration,
    handshake_timeout: Duration,
    argv0: OsString,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig {
            preload: Vec::new(),
            warm: DEFAULT_WARM,
            warm_up: Vec::new(),
            grace: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            argv0: "forkserver".into(),
        }
    }
}

impl LaunchConfig {
    /// Defaults: no preload, 1 s grace, 10 s handshake timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// A function the server runs once before it serves, so that its
    /// children start with what it set up (imports, caches, tables).
    pub fn preload(mut self, f: fn()) -> Self {
        self.preload.push(FnRef::new(f));
        self
    }

    /// How many *warm* children the server keeps: forked while it is idle,
    /// each already past everything that does not depend on a request, so
    /// that a spawn is handed to one instead of waiting for a `fork`.
    /// 0 turns them off; at most [`MAX_WARM`]; default [`DEFAULT_WARM`].
    ///
    /// A spawn goes to a warm child when there is one and to a fresh `fork`
    /// otherwise; the pool refills only after the server has had nothing to
    /// do for a while (half a millisecond when a connection asked for a
    /// warm child within the last millisecond, 20 ms otherwise), so spawns
    /// that come back to back never wait for a refill. After its first spawn a connection has the
    /// next warm child reserved for it, and its spawns go straight to that
    /// child, without a trip through the server (the connection then holds
    /// the child's socket, kick and pidfd: three fds, see
    /// [`ServerConnection::wait_reserved`](crate::ServerConnection::wait_reserved)).
    /// A warm child keeps every promise a freshly forked one makes (the
    /// requester's cwd, environment and fds, signals, its own pidfd and exit
    /// status); its rusage includes its warm-up.
    pub fn warm(mut self, n: usize) -> Self {
        self.warm = n.min(MAX_WARM);
        self
    }

    /// A function each warm child runs once, right after its `fork` and
    /// before it waits for a request: the embedder's per-child warm-up (the
    /// memory its entry writes, touched while nobody waits). It runs in the
    /// warm child only; a fresh child does not run it.
    pub fn warm_up(mut self, f: fn()) -> Self {
        self.warm_up.push(FnRef::new(f));
        self
    }

    /// Time between SIGTERM and SIGKILL for daemonic children.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long to wait for the new server's handshake.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// `argv[0]` of the server process (what `ps` shows).
    pub fn argv0(mut self, name: impl Into<OsString>) -> Self {
        self.argv0 = name.into();
        self
    }
}

/// A running fork server and the root connection to it.
///
/// Dropping it closes the root connection: the server terminates the
/// daemonic children, then exits. If the server dies, requests in flight fail
/// with [`Error::ServerGone`] and the next [`ForkServer::spawn`] relaunches it.
///
/// ```rust,standalone_crate
/// use forkserver::{EntryArgs, Command, ForkServer, LaunchConfig};
///
/// // What `Command::run` children execute: the request's bytes in hand.
/// fn entry(start: EntryArgs) -> i32 {
///     start.data.len() as i32
/// }
/// // Recognises the server role before main (or call `forkserver::bootstrap`
/// // as the first line of main).
/// forkserver::bootstrap!(entry);
///
/// fn main() -> forkserver::Result<()> {
///     let server = ForkServer::launch(LaunchConfig::new())?;
///     let mut child = server.spawn(&Command::run(b"four".to_vec()))?;
///     assert_eq!(child.wait()?.code(), Some(4));
///     Ok(())
/// }
/// ```
pub struct ForkServer {
    config: LaunchConfig,
    current: Mutex<Launched>,
}

struct Launched {
    conn: ServerConnection,
    pid: i32,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("pid", &self.pid())
            .finish()
    }
}

impl ForkServer {
    /// Starts a server from `/proc/self/exe` and performs the handshake.
    ///
    /// Safe to call from any thread of a multithreaded program.
    ///
    /// # Errors
    /// [`Error::Launch`] when the process cannot be started;
    /// [`Error::ServerThreads`] when it had more than one thread (a
    /// constructor in the binary started one before the bootstrap ran);
    /// [`Error::Timeout`] when the program never reaches the bootstrap.
    pub fn launch(config: LaunchConfig) -> Result<ForkServer> {
        let launched = launch_one(&config)?;
        Ok(ForkServer {
            config,
            current: Mutex::new(launched),
        })
    }

    /// The server's pid (of the current incarnation).
    pub fn pid(&self) -> i32 {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pid
    }

    /// The root connection (relaunching the server first if it died).
    ///
    /// # Errors
    /// As [`ForkServer::launch`] when a relaunch fails.
    pub fn connection(&self) -> Result<ServerConnection> {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if cur.conn.is_gone() {
            tracing::info!(old = cur.pid, "fork server died: relaunching");
            let old_pid = cur.pid;
            *cur = launch_one(&self.config)?;
            // Its socket hit EOF, so it is exiting; but it may still be
            // giving daemonic children their grace period (or its root was
            // dropped for not reading): never block on it here.
            reap_soon(old_pid);
        }
        Ok(cur.conn.clone())
    }

    /// Spawns a child (see [`ServerConnection::spawn`]).
    ///
    /// A server found dead before the request left is relaunched and the
    /// request sent to the new one. A server that dies while the request is
    /// in flight may or may not have forked the child, so that request fails
    /// with [`Error::ServerGone`] rather than risk a second child; the next
    /// spawn relaunches.
    ///
    /// # Errors
    /// As [`ServerConnection::spawn`].
    pub fn spawn(&self, cmd: &Command<'_>) -> Result<Child> {
        match self.connection()?.spawn_attempt(cmd) {
            Ok(child) => Ok(child),
            Err((Error::ServerGone(_), false)) => self.connection()?.spawn(cmd),
            Err((e, _)) => Err(e),
        }
    }

    /// A new, non-root connection (see [`ServerConnection::connect`]).
    ///
    /// # Errors
    /// As [`ServerConnection::connect`].
    pub fn connect(&self) -> Result<ServerConnection> {
        self.connection()?.connect()
    }
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        let cur = self
            .current
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let pid = cur.pid;
        // Bounded: a stopped or wedged server must not hang the drop.
        let _ = cur.conn.shutdown_timeout(Duration::from_secs(5));
        // The server now exits after at most the grace period; reap it in
        // the background so dropping never blocks on daemonic children.
        reap_soon(pid);
    }
}

/// Reaps the server `pid` now if it has exited, else from a background
/// thread, so no caller ever blocks on a server that is still winding down.
fn reap_soon(pid: i32) {
    if sys::reap(pid, false).is_none() {
        let _ = std::thread::Builder::new()
            .name("forkserver-reaper".into())
            .spawn(move || sys::reap(pid, true));
    }
}

fn launch_one(config: &LaunchConfig) -> Result<Launched> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    let mut options = vec![
        ("grace_ms", config.grace.as_millis().to_string()),
        ("warm", config.warm.to_string()),
    ];
    for (name, fns) in [("warm_up", &config.warm_up), ("preload", &config.preload)] {
        if !fns.is_empty() {
            let offs: Vec<String> = fns.iter().map(|f| f.offset().to_string()).collect();
            options.push((name, offs.join(",")));
        }
    }
    // See the module docs.
    let mut extra = Vec::new();
    if std::env::var_os(BIND_NOW_VAR).is_none() {
        extra.push((BIND_NOW_VAR, "1"));
        options.push(("bind_now", "added".into()));
    }
    let pid = spawn_role_env(SERVER_ROLE, theirs.as_fd(), &options, &config.argv0, &extra)
        .map_err(|e| Error::Launch(format!("posix_spawn of /proc/self/exe: {e}")))?;
    drop(theirs);
    match ServerConnection::handshake(ours, config.handshake_timeout) {
        Ok(conn) => {
            tracing::info!(pid, "fork server launched");
            Ok(Launched { conn, pid })
        }
        Err(e) => {
            // Reaped before it is killed, if it can be: its own exit code
            // says why it stopped.
            let hung_up = match &e {
                Error::ServerGone(_) => true,
                Error::Io(io) => matches!(
                    io.raw_os_error(),
                    Some(libc::ECONNRESET | libc::EPIPE | libc::ENOTCONN)
                ),
                _ => false,
            };
            let own_exit = if hung_up {
                reap_within(pid, Duration::from_secs(1))
            } else {
                None
            };
            if own_exit.is_none() {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::reap(pid, true);
            }
            let stopped_as_copy =
                matches!(own_exit, Some(WireStatus::Exited(NOT_BOOTSTRAPPED_EXIT)));
            Err(match e {
                _ if stopped_as_copy => Error::Launch(
                    "the server process ran this program's main instead of serving: main must \
                     call forkserver::bootstrap(hooks) first, or the crate must place \
                     forkserver::bootstrap!(entry) at crate level"
                        .into(),
                ),
                _ if hung_up => Error::Launch(format!(
                    "the server hung up before answering ({e}); does main call \
                     forkserver::bootstrap first (or forkserver::bootstrap!(entry) at crate level)?"
                )),
                Error::Timeout => Error::Launch(format!(
                    "the server did not answer ({e}); does main call forkserver::bootstrap \
                     first (or forkserver::bootstrap!(entry) at crate level)?"
                )),
                other => other,
            })
        }
    }
}

/// Reaps `pid` if it exits within `limit` (it closed its socket, so it is
/// on its way out); `None` if it is still running then.
fn reap_within(pid: i32, limit: Duration) -> Option<WireStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some((_, st, _)) = sys::reap(pid, false) {
            return Some(st);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Places [`bootstrap`] in a constructor that runs before `main`.
///
/// For programs (and test binaries) that cannot call the bootstrap as the
/// first line of `main`. Takes an optional child entry
/// `fn(EntryArgs) -> i32`. A role other than the server's makes the process
/// exit with an error, since no embedder is there to handle it.
///
/// ```
/// fn entry(start: forkserver::EntryArgs) -> i32 {
///     start.data.len() as i32
/// }
/// forkserver::bootstrap!(entry);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! bootstrap {
    () => {
        $crate::__bootstrap_ctor!(::core::option::Option::None);
    };
    ($entry:expr) => {
        $crate::__bootstrap_ctor!(::core::option::Option::Some($entry));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __bootstrap_ctor {
    ($entry:expr) => {
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __FORKSERVER_BOOTSTRAP: extern "C" fn() = {
            extern "C" fn __forkserver_bootstrap() {
                $crate::bootstrap_or_exit($crate::Hooks { entry: $entry });
            }
            __forkserver_bootstrap
        };
    };
}

/// [`bootstrap`] for the constructor: an unknown role is an error exit.
#[doc(hidden)]
pub fn bootstrap_or_exit(hooks: Hooks) {
    if let Some(role) = bootstrap(hooks) {
        eprintln!("forkserver: no handler for role {:?}", role.name);
        sys::exit_now(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roles() {
        assert_eq!(parse_role("forkserver;fd=3").unwrap().1, 3);
        let (n, fd, o) = parse_role("spawn;fd=5;grace_ms=10").unwrap();
        assert_eq!((n, fd), ("spawn", 5));
        assert_eq!(o, vec![("grace_ms".to_string(), "10".to_string())]);
        assert!(parse_role("x;fd=1").is_none());
        assert!(parse_role("x").is_none());
        assert!(parse_role(";fd=3").is_none());
    }

    #[test]
    #[allow(unsafe_code)]
    fn each_slot_is_taken_once() {
        use std::os::fd::AsRawFd;
        let start = EntryArgs { data: Vec::new() };
        // High numbers nothing else in this test process uses.
        let (a, b) = (900, 901);
        let f = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: dup2 onto a number this test owns.
        assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), a) }, a);
        let fd = start.take_fd(a as u32).unwrap();
        assert_eq!(fd.as_raw_fd(), a);
        let again = start.take_fd(a as u32).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        // Nothing open: an error, and the slot can still be taken later.
        assert!(start.take_fd(b as u32).is_err());
        // SAFETY: as above.
        assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), b) }, b);
        assert_eq!(start.take_fd(b as u32).unwrap().as_raw_fd(), b);
        assert!(start.take_fd(crate::protocol::MAX_SLOT + 64).is_err());
    }
}
