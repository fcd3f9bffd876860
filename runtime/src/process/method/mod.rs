//! The three start methods: one contract, three implementations (CPython's
//! `popen_fork`, `popen_spawn_posix`, `popen_forkserver`), and the only place
//! that chooses between them ([`start`]).
//!
//! Each method turns a [`Target`] and the child's [`Identity`] into a
//! [`Started`] child: a [`Popen`] — what a `Process` needs of a running
//! child: its pid, a non-blocking status check, a wait with a timeout,
//! signals and a pollable sentinel — and the parent's end of the child's
//! control channel.
//!
//! - [`fork`]: `fork()` here; the child runs the target (a `fn` or any
//!   closure) directly and reports on the channel.
//! - [`spawn`]: `posix_spawn` of this executable in the `spawn` role; the
//!   child reads a [`Job`] from the channel ([`run_job_child`]).
//! - [`server`]: the fork server forks the child, which runs the same job
//!   path from the server's entry.
//!
//! `fork` and `spawn` children are this process's own children, so both use
//! [`DirectPopen`] (pidfd + `waitpid`); fork-server children are the
//! server's, so [`ServerPopen`] asks the server, which reaps them and
//! reports.

mod direct;
mod fork;
mod server;
mod spawn;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use forkserver::{ExitStatus, FnRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::Channel;
use crate::codec;
use crate::context::StartMethod;
use crate::error::{Error, Result};
use crate::globals::{self, Identity};
use crate::job::{self, Job, Trampoline};
use crate::process::Target;
use crate::sys;

pub(crate) use direct::DirectPopen;
pub(crate) use server::{forkserver_entry, server, settle as settle_fork_server, take_server};
pub(crate) use spawn::ROLE as SPAWN_ROLE;

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
    /// Whether the child still runs: no status yet, and (where the status
    /// can no longer come, its fork server being gone) its pidfd not
    /// readable.
    fn is_running(&self) -> bool {
        self.poll().is_none()
            && self.sentinel().is_none_or(|fd| {
                !sys::wait_readable(fd, Some(std::time::Duration::ZERO)).unwrap_or(false)
            })
    }
}

/// A started child: how to wait for it, and the parent's end of its control
/// channel.
pub(crate) struct Started {
    pub(crate) popen: Box<dyn Popen>,
    pub(crate) ctrl: Channel,
}

/// Starts `target` as a child with identity `me` by `method`: the one
/// place that chooses by start method.
///
/// # Errors
/// [`Error::Unsupported`] for a closure under `spawn` or `forkserver`;
/// [`Error::NotInExecutable`] for a `fn` they cannot find; an OS or
/// fork-server error when the child cannot be created.
pub(crate) fn start<A, R>(
    method: StartMethod,
    target: Target<A, R>,
    me: Identity,
) -> Result<Started>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    // The child's default start method is the one it was started with,
    // whatever this process's default is (CPython's `_bootstrap` forces it
    // the same way).
    match method {
        StartMethod::Fork => {
            let body: Box<dyn FnOnce() -> R + Send> = match target {
                Target::Fn(f, args) => Box::new(move || f(args)),
                Target::Closure(body) => body,
            };
            fork::start(body, me, method)
        }
        StartMethod::Spawn => {
            let (job, fds) = job_for(target, me, method)?;
            spawn::start(&job, fds)
        }
        StartMethod::ForkServer => {
            let daemon = me.daemon;
            let (job, fds) = job_for(target, me, method)?;
            server::start(&job, fds, daemon)
        }
    }
}

/// The job a `spawn` or fork-server child reads: the target found by its
/// offset in the executable, its argument encoded (with the fds it holds).
fn job_for<A, R>(
    target: Target<A, R>,
    me: Identity,
    method: StartMethod,
) -> Result<(Job, Vec<OwnedFd>)>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let Target::Fn(f, args) = target else {
        return Err(Error::Unsupported(
            "a closure can only run in a child made by the fork method; \
             use a fn item with arguments for spawn and forkserver",
        ));
    };
    let func = target_ref(method, f as usize)?;
    let (bytes, fds) = codec::encode(&args)?;
    let job = Job {
        trampoline: FnRef::from_addr(job::trampoline::<A, R> as Trampoline as usize),
        func,
        args: bytes,
        me,
        start_method: Some(method),
    };
    Ok((job, fds))
}

/// A control channel with `job` already in it (it waits in the socket
/// buffer until the child reads it): the parent's end, and the child's.
fn job_channel(job: &Job, fds: Vec<OwnedFd>) -> Result<(Channel, Channel)> {
    let (parent, child) = Channel::pair()?;
    let (bytes, _) = codec::encode(job)?;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    parent.send(&bytes, &borrowed)?;
    Ok((parent, child))
}

/// The reference another process uses to find a target: under `spawn`
/// and `forkserver` that process is a fresh image of this executable, so the
/// target must lie in it (not in a shared library); a `fork` child has the
/// parent's whole memory and can call anything.
pub(crate) fn target_ref(method: StartMethod, addr: usize) -> Result<FnRef> {
    match method {
        StartMethod::Fork => Ok(FnRef::from_addr(addr)),
        StartMethod::Spawn | StartMethod::ForkServer => Ok(FnRef::checked(addr)?),
    }
}

/// The whole life of a `spawn` or fork-server child once it has its control
/// channel: read the job, become the process it describes, run the target,
/// report and exit. Never returns.
#[allow(unsafe_code)] // rebuilding the trampoline's fn pointer
pub(crate) fn run_job_child(ctrl: OwnedFd) -> ! {
    let ctrl = Channel::from_fd(ctrl);
    // Decoded where it was received: a fresh child copies every heap page
    // it writes, so it makes no copy of the job first.
    let (incoming, fds) = match ctrl.recv_incoming(None, crate::channel::MAX_BODY) {
        Ok(m) => m,
        Err(e) => {
            // The parent went away before sending the job.
            tracing::debug!(?e, "no job received");
            sys::exit_now(255)
        }
    };
    let job: Job = match codec::decode(incoming.body(), Vec::new()) {
        Ok(j) => j,
        Err(e) => {
            let _ = job::run_and_report(&ctrl, || Err(format!("malformed job: {e}")));
            sys::exit_now(255)
        }
    };
    // The receive buffer goes back for the target's own receives.
    drop(incoming);
    let daemon = job.me.daemon;
    globals::set_identity(job.me);
    become_child(&ctrl, daemon, job.start_method);
    // SAFETY: the trampoline offset was made from a `Trampoline` by
    // `job_for` in a process of this executable.
    let tramp: Trampoline = unsafe { sys::resolve_as(job.trampoline) };
    let func = job.func;
    let code = job::run_and_report(&ctrl, || tramp(func, &job.args, fds));
    crate::process::exit_process(code)
}

/// What every child does before its target, whatever started it: its panic
/// report, its default start method, and (daemonic) a watch on the parent.
fn become_child(ctrl: &Channel, daemon: bool, start_method: Option<StartMethod>) {
    crate::process::panic_report::note_main_thread();
    crate::process::panic_report::install();
    if let Some(m) = start_method {
        let _ = crate::set_start_method(m, true);
    }
    if daemon {
        watch_parent(ctrl);
    }
}

/// In a daemonic child: terminate this process when the parent goes away
/// (its end of the control channel closes, whatever killed it).
fn watch_parent(ctrl: &Channel) {
    let Ok(fd) = sys::dup(ctrl.fd()) else { return };
    let spawned = std::thread::Builder::new()
        .name("mproc-parent-watch".into())
        .spawn(move || {
            if sys::wait_hangup(fd.as_fd()) {
                tracing::debug!("parent gone: daemonic child terminates");
                let _ = sys::kill(std::process::id() as i32, libc::SIGTERM);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not watch the parent");
    }
}

/// Runs the role of a process this crate started from its executable, if
/// it has one (never returning then): the fork server (its children enter
/// through [`forkserver_entry`]), or a `spawn` child.
pub(crate) fn dispatch_role() {
    let hooks = forkserver::Hooks {
        entry: Some(forkserver_entry),
    };
    if let Some(role) = forkserver::bootstrap(hooks) {
        if role.name == SPAWN_ROLE {
            run_job_child(role.fd);
        }
        eprintln!("mproc: unknown process role {:?}", role.name);
        std::process::exit(2);
    }
}
