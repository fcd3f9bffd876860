//! One contract, three ways to make a child (CPython's `popen_fork`,
//! `popen_spawn_posix`, `popen_forkserver`).
//!
//! [`Popen`] is what a `Process` needs of a running child: its pid, a
//! non-blocking status check, a wait with a timeout, signals and a pollable
//! sentinel. `fork` and `spawn` children are our own children, so both use
//! [`DirectPopen`] (pidfd + `waitpid`); fork-server children are the server's,
//! so [`ServerPopen`] asks the server, which reaps them and reports.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use forkserver::ExitStatus;

use crate::error::{Error, Result};
use crate::{globals, sys};

/// What a `Process` needs of a started child.
pub(crate) trait Popen: Send + Sync {
    /// The child's pid.
    fn pid(&self) -> i32;
    /// The status if it has ended; never blocks.
    fn poll(&self) -> Option<ExitStatus>;
    /// The status if it has ended, or why it cannot be known; never
    /// blocks, not even on a thread that is waiting for the same child.
    fn try_wait(&self) -> Result<Option<ExitStatus>>;
    /// Waits until it ends or `deadline` passes (`None`: still running).
    fn wait(&self, deadline: Option<Instant>) -> Result<Option<ExitStatus>>;
    /// Sends a signal unless it has already been reaped.
    fn signal(&self, sig: i32) -> Result<()>;
    /// An fd that becomes readable when the child ends (its pidfd).
    fn sentinel(&self) -> Option<BorrowedFd<'_>>;
}

/// A child of this process (`fork` and `spawn` methods).
pub(crate) struct DirectPopen {
    pid: i32,
    pidfd: Option<OwnedFd>,
    status: Mutex<Option<ExitStatus>>,
    /// A `fork` child: its reaping is announced (see
    /// [`globals::fork_reaped`]).
    forked: bool,
}

impl DirectPopen {
    /// A `spawn` child.
    pub(crate) fn new(pid: i32) -> DirectPopen {
        DirectPopen {
            pid,
            pidfd: sys::pidfd_open(pid).ok(),
            status: Mutex::new(None),
            forked: false,
        }
    }

    /// A `fork` child of generation `generation`.
    pub(crate) fn forked(pid: i32, generation: u64) -> DirectPopen {
        globals::fork_started(pid, generation);
        DirectPopen {
            forked: true,
            ..DirectPopen::new(pid)
        }
    }

    fn reap(&self, block: bool) -> Option<ExitStatus> {
        let st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        self.reap_locked(st, block)
    }

    fn reap_locked(
        &self,
        mut st: MutexGuard<'_, Option<ExitStatus>>,
        block: bool,
    ) -> Option<ExitStatus> {
        let (status, now) = {
            let now = st.is_none();
            if now {
                *st = forkserver::reap(self.pid, block);
            }
            let r = (*st, now && st.is_some());
            drop(st);
            r
        };
        if now && self.forked {
            globals::fork_reaped(self.pid);
        }
        status
    }
}

impl Popen for DirectPopen {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn poll(&self) -> Option<ExitStatus> {
        self.reap(false)
    }

    fn try_wait(&self) -> Result<Option<ExitStatus>> {
        match self.status.try_lock() {
            Ok(st) => Ok(self.reap_locked(st, false)),
            Err(TryLockError::Poisoned(p)) => Ok(self.reap_locked(p.into_inner(), false)),
            // A thread is reaping it right now (a blocking `waitpid` only
            // where there are no pidfds): as far as anyone knows it runs.
            Err(TryLockError::WouldBlock) => Ok(None),
        }
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.reap(false) {
            return Ok(Some(s));
        }
        match (&self.pidfd, deadline) {
            (Some(fd), _) => {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if sys::wait_readable(fd.as_fd(), left)? {
                    // Exited: the status is there (the zombie waits for us).
                    Ok(self.reap(true))
                } else {
                    Ok(self.reap(false))
                }
            }
            (None, None) => Ok(self.reap(true)),
            (None, Some(d)) => {
                // No pidfd: poll with a short back-off.
                let mut nap = Duration::from_micros(50);
                loop {
                    if let Some(s) = self.reap(false) {
                        return Ok(Some(s));
                    }
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    std::thread::sleep(nap.min(d - now));
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    fn signal(&self, sig: i32) -> Result<()> {
        // Holding the status lock excludes a concurrent reap, so the pid
        // cannot be recycled under us.
        let st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if st.is_some() {
            return Ok(());
        }
        match sys::kill(self.pid, sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }
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
