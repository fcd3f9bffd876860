//! The `fork` start method: `fork()` in the calling process; the child runs
//! the target (a `fn` or any closure) directly, with the parent's memory.
//!
//! Unsafe in a multithreaded parent (a lock another thread held at the
//! instant of the fork stays locked in the child): a warning is logged then,
//! as CPython 3.12 does. The child first forgets the parent's process-wide
//! state, every cell of it ([`reset_after_fork`]), without touching what
//! another thread may have been changing.

use serde::Serialize;

use super::{DirectPopen, Started, become_child};
use crate::channel::Channel;
use crate::codec;
use crate::context::StartMethod;
use crate::error::Result;
use crate::globals::{self, Identity};
use crate::job;
use crate::sys;

/// Forks a child that runs `body` and reports its value on the channel.
#[allow(unsafe_code)] // fork and the child's reset, justified at each call
pub(super) fn start<R: Serialize + 'static>(
    body: Box<dyn FnOnce() -> R + Send>,
    me: Identity,
    method: StartMethod,
) -> Result<Started> {
    let (parent, child) = Channel::pair()?;
    warn_if_threads();
    let daemon = me.daemon;
    // The child is a copy of this thread: what its path sets up on first
    // use, set up here once, is inherited by every child after.
    job::warm_up_this_thread();
    // What this process buffered but has not written yet would be written a
    // second time by the child, which flushes before it exits (CPython's
    // `popen_fork` flushes for the same reason).
    // (Rust's stderr has no buffer: nothing to flush there.)
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let generation = globals::next_fork_generation();
    // SAFETY: the child only resets this crate's state (without touching
    // the parent's possibly-locked state), runs the caller's closure — the
    // documented hazard of the fork method, warned about above — and exits.
    match unsafe { sys::fork() }? {
        sys::Forked::Child => {
            drop(parent);
            // SAFETY: we are the freshly forked child; no thread of ours runs.
            unsafe { reset_after_fork(me, Some(method)) };
            become_child(&child, daemon, None);
            let code = job::run_and_report(&child, move || {
                let r = body();
                codec::encode(&r).map_err(|e| format!("encoding the result: {e}"))
            });
            crate::process::exit_process(code)
        }
        sys::Forked::Parent(pid) => {
            drop(child);
            Ok(Started {
                popen: Box::new(DirectPopen::forked(pid, generation)),
                ctrl: parent,
            })
        }
    }
}

/// Logs the multithreaded-`fork` warning when other threads run (this
/// crate's own waiter thread is no hazard to the child: it forgets it).
fn warn_if_threads() {
    let threads = forkserver::thread_count().unwrap_or(1);
    let threads = threads - usize::from(threads > 1 && crate::reactor::thread_running());
    if threads > 1 {
        tracing::warn!(
            threads,
            "fork() from a process with {threads} threads: the child may deadlock on a lock \
             another thread held; prefer the spawn or forkserver start method"
        );
    }
}

/// In a child made by the `fork` method: every cell of process-wide state
/// is replaced, the parent's forgotten without being dropped — this
/// process's identity and globals, its children, its fork server, its
/// waiter thread.
///
/// # Safety
/// Only right after `fork`, in the child, before any other thread starts.
#[allow(unsafe_code)] // the resets, see the safety contract
pub(crate) unsafe fn reset_after_fork(me: Identity, start_method: Option<StartMethod>) {
    // SAFETY: each of the four is forwarded the caller's guarantee (the
    // freshly forked child, with no other thread).
    unsafe {
        globals::reset_after_fork(me, start_method);
        crate::process::forget_children_after_fork();
        super::server::forget_after_fork();
        crate::reactor::reset_after_fork();
    }
}
