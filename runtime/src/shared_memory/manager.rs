//! `SharedMemoryManager`: a child process that owns named segments and
//! unlinks them all when it is shut down or when its parent dies.
//!
//! CPython's `SharedMemoryManager` is a manager server that remembers the
//! names its clients created and unlinks them at shutdown; if the parent
//! is killed, the server lingers or dies with the names still in
//! `/dev/shm`, and only the resource tracker's warnings remain. Here the
//! server creates every segment itself (so no name exists that it does not
//! know of), and it waits on three things at once: requests, a pidfd of
//! its parent, and `SIGTERM` through a signalfd. Whichever comes first —
//! shutdown, the parent's death by any cause, a `terminate()` — it unlinks
//! every segment it made before it exits. `SIGINT` and `SIGHUP` are
//! blocked in the server, so a Ctrl-C at the terminal goes to the parent
//! alone (whose death the server then sees), as CPython's manager servers
//! ignore `SIGINT`. Only a `SIGKILL` of the server itself leaks.

use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::{Deserialize, Serialize};

use super::{Item, ShareableList, SharedMemory};
use crate::connection::{Connection, pipe, wait};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::process::Process;

/// How long [`SharedMemoryManager::shutdown`] waits for the server.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests and replies between a manager and its server.
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Create { size: u64 },
    Release { name: String },
    List,
    Shutdown,
    Created { name: String },
    Released,
    Names { names: Vec<String> },
    Done { unlinked: u64 },
    Failed { message: String },
}

#[derive(Serialize, Deserialize)]
struct ServeArgs {
    conn: Connection<Msg>,
    parent: i32,
}

/// Shared memory handed out by a server process that unlinks it all at
/// shutdown, or when this process dies however it dies (Python's
/// `multiprocessing.managers.SharedMemoryManager`).
///
/// [`shared_memory`](SharedMemoryManager::shared_memory) and
/// [`shareable_list`](SharedMemoryManager::shareable_list) return handles
/// that do not own their names: the server does. Unrelated processes —
/// Python ones too — attach by name while the manager runs.
///
/// The server is a (non-daemonic) child of the context's start method:
/// shut the manager down, or drop it, before the program's
/// [`Runtime`](crate::Runtime) ends, which joins every child.
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// use mproc::shared_memory::{Item, SharedMemory, SharedMemoryManager};
///
/// let smm = SharedMemoryManager::start()?;
/// let shm = smm.shared_memory(128)?;
/// let list = smm.shareable_list(&[Item::Int(1), "two".into()])?;
/// assert_eq!(smm.list_segments()?.len(), 2);
/// let name = shm.name().to_string();
/// drop(shm); // not the owner: the name stays
/// assert!(SharedMemory::open(&name).is_ok());
/// assert_eq!(smm.shutdown()?, 2); // both unlinked
/// assert!(SharedMemory::open(&name).is_err());
/// # drop(list);
/// # Ok(()) }
/// ```
#[doc(alias = "managers.SharedMemoryManager")]
pub struct SharedMemoryManager {
    conn: Mutex<Connection<Msg>>,
    process: Mutex<Option<Process<()>>>,
    /// The process that started the server (a forked child's copy of this
    /// value does not stop it).
    owner_pid: u32,
}

impl std::fmt::Debug for SharedMemoryManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemoryManager")
            .field("pid", &self.pid())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedMemoryManager {
    /// Starts a server with the default start method (Python's
    /// `SharedMemoryManager()` and `start()`).
    ///
    /// # Errors
    /// When the server process cannot be started.
    #[doc(alias = "SharedMemoryManager")]
    pub fn start() -> Result<SharedMemoryManager> {
        Self::start_in(&crate::default_context())
    }

    /// Starts a server with the start method of `ctx`.
    ///
    /// # Errors
    /// When the server process cannot be started.
    pub fn start_in(ctx: &Context) -> Result<SharedMemoryManager> {
        let (mine, theirs) = pipe::<Msg>(true)?;
        let args = ServeArgs {
            conn: theirs,
            parent: std::process::id() as i32,
        };
        let process = ctx
            .process(serve, args)
            .name("SharedMemoryManager")
            .start()?;
        tracing::debug!(pid = process.pid(), "shared memory manager started");
        Ok(SharedMemoryManager {
            conn: Mutex::new(mine),
            process: Mutex::new(Some(process)),
            owner_pid: std::process::id(),
        })
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        lock(&self.process).as_ref().map(|p| p.pid())
    }

    fn call(&self, req: Msg) -> Result<Msg> {
        let conn = lock(&self.conn);
        conn.send(&req)?;
        match conn.recv()? {
            Msg::Failed { message } => Err(Error::Io(std::io::Error::other(message))),
            reply => Ok(reply),
        }
    }

    /// A new segment of `size` bytes that the server owns (Python's
    /// `smm.SharedMemory(size)`).
    ///
    /// # Errors
    /// When the server cannot create it (`size` zero, `/dev/shm` full) or
    /// cannot be reached.
    #[doc(alias = "SharedMemory")]
    pub fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        match self.call(Msg::Create { size: size as u64 })? {
            Msg::Created { name } => match SharedMemory::open(&name) {
                Ok(shm) => Ok(shm),
                Err(e) => {
                    let _ = self.call(Msg::Release { name });
                    Err(e)
                }
            },
            other => Err(unexpected(&other)),
        }
    }

    /// A new [`ShareableList`] of `items` in a segment that the server owns
    /// (Python's `smm.ShareableList(sequence)`).
    ///
    /// # Errors
    /// As [`shared_memory`](SharedMemoryManager::shared_memory), and as
    /// [`ShareableList::new`].
    #[doc(alias = "ShareableList")]
    pub fn shareable_list(&self, items: &[Item]) -> Result<ShareableList> {
        let shm = self.shared_memory(ShareableList::size_for(items)?)?;
        ShareableList::create_in(shm, items)
    }

    /// Unlinks one segment the server made, before shutdown.
    ///
    /// # Errors
    /// When the server made no segment of that name or cannot be reached.
    pub fn release(&self, name: &str) -> Result<()> {
        match self.call(Msg::Release {
            name: name.trim_start_matches('/').to_string(),
        })? {
            Msg::Released => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The names of the segments the server owns now (Python's
    /// `SharedMemoryServer.list_segments`).
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub fn list_segments(&self) -> Result<Vec<String>> {
        match self.call(Msg::List)? {
            Msg::Names { names } => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    /// Unlinks every segment the server made and stops it (Python's
    /// `shutdown`); returns how many were unlinked. Handles already
    /// attached keep their memory until dropped.
    ///
    /// # Errors
    /// When the server cannot be reached or does not end in time.
    pub fn shutdown(self) -> Result<usize> {
        self.stop()
    }

    fn stop(&self) -> Result<usize> {
        if self.owner_pid != std::process::id() {
            return Ok(0);
        }
        let Some(mut process) = lock(&self.process).take() else {
            return Ok(0);
        };
        let reply = self.call(Msg::Shutdown);
        let joined = process.join_timeout(SHUTDOWN_TIMEOUT);
        if joined.is_err() {
            // The server did not end in time: SIGTERM makes it unlink and
            // exit; reap it.
            let _ = process.terminate();
            let _ = process.join_timeout(SHUTDOWN_TIMEOUT);
        }
        match reply? {
            Msg::Done { unlinked } => {
                joined?;
                Ok(unlinked as usize)
            }
            other => Err(unexpected(&other)),
        }
    }
}

impl Drop for SharedMemoryManager {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "shared memory manager shutdown");
        }
    }
}

fn unexpected(m: &Msg) -> Error {
    Error::Codec(format!(
        "unexpected reply from the shared memory manager: {m:?}"
    ))
}

/// The server: creates segments on request and unlinks them all when it
/// stops, whatever stops it.
fn serve(args: ServeArgs) {
    let ServeArgs { conn, parent } = args;
    // SIGTERM arrives through the signalfd; SIGINT and SIGHUP (a terminal's
    // signals to the whole process group) are kept pending, never acted on.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    if let Err(e) = mask.thread_block() {
        tracing::warn!(error = %e, "shared memory manager: cannot block signals");
    }
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let sigfd = SignalFd::with_flags(&term, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
    // Without pidfds (Linux before 5.3) the parent's death shows only as
    // the end of the connection, which a `fork` child's inherited copy of
    // the parent's end keeps open.
    let parent_fd = match crate::sys::pidfd_open(parent) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            tracing::debug!(parent, "shared memory manager: parent already gone");
            return;
        }
        Err(e) => {
            tracing::warn!(parent, error = %e, "shared memory manager: cannot watch the parent");
            None
        }
    };
    let mut segments: Vec<SharedMemory> = Vec::new();
    loop {
        // Index 0: requests; then the parent's pidfd and the signalfd.
        let mut fds = vec![conn.as_fd()];
        fds.extend(parent_fd.iter().map(|f| f.as_fd()));
        fds.extend(sigfd.iter().map(|f| f.as_fd()));
        let ready = match wait(&fds, None) {
            Ok(r) => r,
            Err(_) => break,
        };
        if ready.iter().any(|&i| i > 0) {
            tracing::debug!(parent, "shared memory manager: parent died or terminated");
            break;
        }
        let reply = match conn.recv() {
            Ok(Msg::Create { size }) => {
                match usize::try_from(size)
                    .map_err(|_| Error::Unsupported("size too large"))
                    .and_then(SharedMemory::create)
                {
                    Ok(shm) => {
                        let name = shm.name().to_string();
                        segments.push(shm);
                        Msg::Created { name }
                    }
                    Err(e) => Msg::Failed {
                        message: e.to_string(),
                    },
                }
            }
            Ok(Msg::Release { name }) => match segments.iter().position(|s| s.name() == name) {
                Some(i) => {
                    drop(segments.swap_remove(i));
                    Msg::Released
                }
                None => Msg::Failed {
                    message: format!("no segment {name:?} made by this manager"),
                },
            },
            Ok(Msg::List) => Msg::Names {
                names: segments.iter().map(|s| s.name().to_string()).collect(),
            },
            Ok(Msg::Shutdown) => {
                let unlinked = segments.len() as u64;
                segments.clear();
                let _ = conn.send(&Msg::Done { unlinked });
                return;
            }
            Ok(other) => Msg::Failed {
                message: format!("not a request: {other:?}"),
            },
            Err(_) => break,
        };
        if conn.send(&reply).is_err() {
            break;
        }
    }
    // Dropping the owning handles unlinks every name.
    let n = segments.len();
    drop(segments);
    tracing::debug!(unlinked = n, "shared memory manager: cleaned up");
}
