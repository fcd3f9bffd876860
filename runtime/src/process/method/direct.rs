//! [`DirectPopen`]: a child of this process (`fork` and `spawn` methods),
//! waited for with its pidfd and `waitpid`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use forkserver::ExitStatus;

use super::Popen;
use crate::error::Result;
use crate::{globals, sys};

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
