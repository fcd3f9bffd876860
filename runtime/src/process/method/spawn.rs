//! The `spawn` start method: a fresh start of this executable
//! (`posix_spawn` of `/proc/self/exe`, safe from any thread) in the `spawn`
//! role, which reads its job from the control channel passed as fd 3.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use super::{DirectPopen, Started, job_channel};
use crate::error::Result;
use crate::job::Job;

/// The role name of a `spawn` child.
pub(crate) const ROLE: &str = "mproc-spawn";

/// Starts this executable in the `spawn` role with the job in its channel.
pub(super) fn start(job: &Job, fds: Vec<OwnedFd>) -> Result<Started> {
    let (parent, child) = job_channel(job, fds)?;
    crate::dispatch_is_linked();
    let pid = forkserver::spawn_role(ROLE, child.fd(), &[], OsStr::new(&job.me.name))?;
    Ok(Started {
        popen: Box::new(DirectPopen::new(pid)),
        ctrl: parent,
    })
}
