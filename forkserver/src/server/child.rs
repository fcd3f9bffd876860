//! What a child does between the server's `fork` and its entry or `execve`.
//!
//! # What may run here
//!
//! After `fork` in a multithreaded process, a child may only make
//! async-signal-safe calls: another thread may have held the allocator's or
//! stdio's lock at the moment of the fork, and that lock stays held forever
//! in the child. The fork server is single-threaded (checked when it starts:
//! more than one thread and it refuses to serve), so no lock can be held by a
//! thread that does not exist in the child. Here, therefore, allocation,
//! `std::env`, formatting and ordinary Rust are all allowed, and the child
//! runs the embedder's entry as a normal Rust program would.
//!
//! The order matters:
//! 1. signals: mask emptied, every disposition back to default (the server
//!    blocked `SIGCHLD` for its signalfd); `SIGPIPE` ignored for entries,
//!    default for `exec`;
//! 2. fds: each passed fd dup'ed into its slot, every other fd closed, except
//!    the close-on-exec set-up pipe;
//! 3. the fd limit the server started with (it raises its own), `chdir`,
//!    then the environment;
//! 4. for *run*, close the set-up pipe (EOF tells the server set-up worked)
//!    and call the entry; for *exec*, `execvp` closes it on success.
//!
//! A failure writes "stage: error" to the set-up pipe and `_exit(127)`s: the
//! server turns that into an error reply for the spawn.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::ChildStart;
use crate::protocol::Action;
use crate::server::handler::ChildSpec;
use crate::sys;

/// Runs in the freshly forked child; never returns.
#[allow(unsafe_code)] // one call into `sys`, justified at the call
pub(crate) fn run(
    spec: ChildSpec,
    setup: OwnedFd,
    entry: Option<fn(ChildStart) -> i32>,
    nofile_soft: Option<u64>,
) -> ! {
    let is_exec = matches!(spec.details.action, Action::Exec { .. });
    sys::child_reset_signals(!is_exec);
    let setup = match sys::child_install_fds(spec.fds, Some(setup)) {
        Ok(Some(s)) => s,
        Ok(None) => sys::exit_now(127),
        Err(_) => sys::exit_now(127),
    };
    let fail = |stage: &str, e: io::Error| -> ! {
        let msg = format!("{stage}: {e}");
        let _ = sys::write_all(setup.as_fd(), msg.as_bytes());
        sys::exit_now(127)
    };
    // The server raised its own fd limit; the child gets the usual one back
    // (a program using `select` expects fds below 1024).
    if let Some(soft) = nofile_soft
        && let Err(e) = sys::set_nofile_soft(soft)
    {
        fail("setrlimit", e);
    }
    if let Some(cwd) = &spec.details.cwd
        && let Err(e) = sys::chdir(cwd)
    {
        fail("chdir", e);
    }
    if let Some(env) = &spec.details.env {
        // SAFETY: a fork-server child has exactly one thread (module docs).
        unsafe { sys::child_replace_env(env) };
    }
    match spec.details.action {
        Action::Exec { program, argv } => {
            let e = sys::execvp(&program, &argv);
            fail("exec", e)
        }
        Action::Run { data } => {
            let Some(entry) = entry else {
                fail(
                    "run",
                    io::Error::new(io::ErrorKind::Unsupported, "no child entry registered"),
                )
            };
            drop(setup);
            // A panic must never unwind back into the server's loop, which is
            // still on this stack below us.
            let code = std::panic::catch_unwind(move || entry(ChildStart { data })).unwrap_or(101);
            std::process::exit(code)
        }
    }
}
