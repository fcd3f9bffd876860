//! The `forkserver` start method: this process's fork server (launched on
//! first use, or by `init`), the entry its children run, and
//! [`ServerPopen`], a child the server reaps and reports on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicI32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Instant;

use forkserver::{ExitStatus, ForkServer, LaunchConfig};

use super::{Popen, Started, job_channel};
use crate::error::{Error, Result};
use crate::globals;
use crate::job::{self, Job};
use crate::sys::{self, ForkCell};

/// Starts a child through the fork server: the job goes in the control
/// channel, whose child end the server installs as the child's fd 3.
pub(super) fn start(job: &Job, fds: Vec<OwnedFd>, daemon: bool) -> Result<Started> {
    let (parent, child) = job_channel(job, fds)?;
    let server = server()?;
    let cmd = forkserver::Command::run(Vec::new())
        .fd(child.fd(), 3)
        .daemon(daemon);
    let popen = ServerPopen::new(server.spawn(&cmd)?);
    Ok(Started {
        popen: Box::new(popen),
        ctrl: parent,
    })
}

/// What a fork-server child runs: the job path on the fd the requester
/// installed at slot 3.
pub(crate) fn forkserver_entry(start: forkserver::EntryArgs) -> i32 {
    match start.take_fd(3) {
        Ok(fd) => super::run_job_child(fd),
        Err(_) => 2,
    }
}

/// This process's fork server, once launched. Its own cell: a `fork` child
/// forgets it without dropping it ([`forget_after_fork`]).
static SLOT: ForkCell<Mutex<Option<Arc<ForkServer>>>> = ForkCell::new(Mutex::new(None));

fn slot() -> MutexGuard<'static, Option<Arc<ForkServer>>> {
    SLOT.get().lock().unwrap_or_else(PoisonError::into_inner)
}

/// In a child made by the `fork` method: the parent's fork-server
/// connection is not ours. Close our copy of its socket so the server sees
/// the parent's exit, and forget the handle without running its destructor
/// (which would shut the server down).
///
/// # Safety
/// Only right after `fork`, in the child, before any other thread starts.
#[allow(unsafe_code)] // the reset itself, see the safety contract
pub(super) unsafe fn forget_after_fork() {
    let root = ROOT_FD.load(SeqCst);
    let identity = (ROOT_DEV.load(SeqCst), ROOT_INO.load(SeqCst));
    // SAFETY: forwarded to the caller (single-threaded fork child).
    unsafe { SLOT.reset_in_child(Mutex::new(None)) };
    ROOT_FD.store(-1, SeqCst);
    // Only if the number still names that very socket: the parent may have
    // closed it since (a relaunched server) and reused the number for an fd
    // this child needs, such as its own control channel.
    if root >= 0 && sys::fd_identity(root) == Some(identity) {
        // SAFETY: the only owner of this socket was the parent's ForkServer
        // handle, which the reset above forgot without dropping.
        unsafe { sys::close_raw(root) };
    }
}

/// The root socket of the installed fork server: its number, and its
/// device and inode to recognise it by. Written under the slot's lock, read
/// by a fork child (a torn read only fails the identity check).
static ROOT_FD: AtomicI32 = AtomicI32::new(-1);
static ROOT_DEV: AtomicU64 = AtomicU64::new(0);
static ROOT_INO: AtomicU64 = AtomicU64::new(0);

/// Records the root socket of the server just installed (slot locked).
fn publish_root(conn: Option<&forkserver::ServerConnection>) {
    ROOT_FD.store(-1, SeqCst);
    let Some(conn) = conn else { return };
    let fd = sys::raw(std::os::fd::AsFd::as_fd(conn));
    let Some((dev, ino)) = sys::fd_identity(fd) else {
        return;
    };
    ROOT_DEV.store(dev, SeqCst);
    ROOT_INO.store(ino, SeqCst);
    ROOT_FD.store(fd, SeqCst);
}

/// The fork server of this process, launched on first use.
pub(crate) fn server() -> Result<Arc<ForkServer>> {
    if let Some(s) = slot().clone() {
        return Ok(s);
    }
    crate::dispatch_is_linked();
    let (preload, warm) = globals::with(|g| (g.preload.clone(), g.warm));
    // The child path once in the server (inherited by every child), and
    // once more in each warm child, so the pages it writes are copied
    // while nobody waits.
    let mut cfg = LaunchConfig::new()
        .preload(job::warm_up)
        .warm_up(job::warm_up_warm_child);
    if let Some(n) = warm {
        cfg = cfg.warm(n);
    }
    for f in preload {
        cfg = cfg.preload(f);
    }
    let server = Arc::new(ForkServer::launch(cfg)?);
    let conn = server.connection().ok();
    let (winner, loser) = {
        let mut slot = slot();
        if let Some(first) = &*slot {
            // Another thread launched one meanwhile: keep the first, and
            // leave the root fd recorded for it alone.
            (first.clone(), Some(server))
        } else {
            *slot = Some(server.clone());
            publish_root(conn.as_ref());
            (server, None)
        }
    };
    drop(conn);
    // Outside the lock: dropping the spare shuts its server down.
    drop(loser);
    Ok(winner)
}

/// Waits at most `timeout` until this process's fork-server connection
/// holds the warm child reserved for it; `false` when there is no server,
/// it keeps no warm children, or none came in time.
pub(crate) fn settle(timeout: std::time::Duration) -> bool {
    let Some(server) = slot().clone() else {
        return false;
    };
    server
        .connection()
        .and_then(|c| c.wait_reserved(timeout))
        .unwrap_or(false)
}

/// Takes the fork server out (at exit), so dropping it shuts it down.
pub(crate) fn take_server() -> Option<Arc<ForkServer>> {
    let mut slot = slot();
    ROOT_FD.store(-1, SeqCst);
    slot.take()
}

/// A child of the fork server.
pub(crate) struct ServerPopen {
    pid: i32,
    pidfd: Option<OwnedFd>,
    child: Mutex<forkserver::Child>,
    status: Mutex<Option<ExitStatus>>,
}

impl ServerPopen {
    pub(crate) fn new(child: forkserver::Child) -> ServerPopen {
        let pidfd = child.pidfd().and_then(|f| f.try_clone_to_owned().ok());
        ServerPopen {
            pid: child.pid(),
            pidfd,
            child: Mutex::new(child),
            status: Mutex::new(None),
        }
    }

    fn cached(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, s: Option<ExitStatus>) -> Option<ExitStatus> {
        if let Some(s) = s {
            *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
        }
        s
    }
}

impl Popen for ServerPopen {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn poll(&self) -> Option<ExitStatus> {
        if let Some(s) = self.cached() {
            return Some(s);
        }
        // Another thread may be blocked in `wait` holding the child: then it
        // is still running as far as anyone knows.
        let Ok(mut child) = self.child.try_lock() else {
            return None;
        };
        let s = child.try_wait().ok().flatten();
        drop(child);
        self.store(s)
    }

    fn try_wait(&self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.cached() {
            return Ok(Some(s));
        }
        let mut child = match self.child.try_lock() {
            Ok(c) => c,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // A thread waits for it and will store the status it gets.
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let s = child.try_wait()?;
        drop(child);
        Ok(self.store(s))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.cached() {
            return Ok(Some(s));
        }
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let s = match deadline {
            None => Some(child.wait()?),
            Some(d) => child.wait_timeout(d.saturating_duration_since(Instant::now()))?,
        };
        drop(child);
        Ok(self.store(s))
    }

    fn signal(&self, sig: i32) -> Result<()> {
        if self.cached().is_some() {
            return Ok(());
        }
        // A pidfd always names this very process, reaped or not, so it is
        // race-free and needs no round trip (nor the lock a waiter holds).
        if let Some(fd) = &self.pidfd {
            return match sys::pidfd_send_signal(fd.as_fd(), sig) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        match self.child.try_lock() {
            Ok(c) => c.signal(sig).map_err(Error::from),
            // A waiter holds the handle, so the server has not reported the
            // exit yet; the pid is still this child's or a zombie's.
            Err(_) => match sys::kill(self.pid, sig) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }

    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }
}
