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
//! 1. signals: mask emptied (the server blocked `SIGCHLD` for its signalfd),
//!    and every disposition the server found non-default at start back to
//!    default; `SIGPIPE` ignored for entries, default for `exec`;
//! 2. fds: each passed fd dup'ed into its slot, every other fd closed, except
//!    the close-on-exec set-up pipe;
//! 3. the fd limit the server started with (it raises its own), `chdir`,
//!    then the environment. Both are planned in the server before the fork
//!    as a difference from the server's own (captured once, at start): the
//!    usual spawn, from a requester whose cwd and environment have not
//!    changed, makes no `chdir` and touches no variable, so the child writes
//!    (and copies) as few pages as possible;
//! 4. for *run*, close the set-up pipe (EOF tells the server set-up worked),
//!    yield the CPU once (to a requester woken on it) and call the entry;
//!    for *exec*, `execvp` closes it on success.
//!
//! A failure writes "stage: error" to the set-up pipe and `_exit(127)`s: the
//! server turns that into an error reply for the spawn. Only a spawn whose
//! set-up can fail has a set-up pipe: one that execs or changes directory.
//! The rest (installing fds, signals, the fd limit, the environment) cannot
//! fail short of a kernel out of resources, so for a *run* in the server's
//! directory the server reports `Spawned` at once, without a round trip
//! through the child; should that set-up fail all the same, the child says
//! so on its stderr and exits with 127. An entry that returns
//! has its code passed to `_exit` after Rust's stdout is flushed:
//! like CPython's forked children, a fork-server child does not run `atexit`
//! handlers it inherited from the server.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::ChildStart;
use crate::protocol::{Action, SpawnDetails};
use crate::sys;

/// The server's own state at start, which every child inherits.
#[derive(Debug, Default)]
pub(crate) struct Baseline {
    signals: Vec<i32>,
    env: HashMap<Vec<u8>, Vec<u8>>,
    cwd: Option<Vec<u8>>,
    /// Device and inode of the directory the server is in: a path equal to
    /// `cwd` may name another directory by now (removed and made again).
    cwd_id: Option<(u64, u64)>,
}

/// Device and inode of the directory `path` names now.
pub(crate) fn dir_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Baseline {
    /// Reads the server's signal dispositions, environment and directory.
    pub(crate) fn capture() -> Baseline {
        Baseline {
            signals: sys::nondefault_signals(),
            env: std::env::vars_os()
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .collect(),
            cwd: std::env::current_dir()
                .ok()
                .map(|p| p.into_os_string().into_vec()),
            cwd_id: dir_id(std::path::Path::new(".")),
        }
    }

    /// Device and inode of the server's working directory.
    pub(crate) fn cwd_id(&self) -> Option<(u64, u64)> {
        self.cwd_id
    }

    /// The server's working directory.
    pub(crate) fn cwd(&self) -> Option<&[u8]> {
        self.cwd.as_deref()
    }

    /// The environment as a list, or `None` when its variables and values
    /// add up to more than `limit` bytes.
    pub(crate) fn env_for_handshake(&self, limit: usize) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let size: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        (size <= limit).then(|| {
            self.env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// What a child must change to match `details`.
    pub(crate) fn plan(&self, details: &SpawnDetails) -> Plan {
        // The same path is skipped only while it still names the very
        // directory the server is in.
        let same_dir = |c: &Vec<u8>| {
            self.cwd.as_ref() == Some(c)
                && self.cwd_id.is_some()
                && dir_id(std::path::Path::new(std::ffi::OsStr::from_bytes(c))) == self.cwd_id
        };
        let chdir = details.cwd.as_ref().filter(|c| !same_dir(c)).cloned();
        let (env_remove, env_set) = match &details.env {
            None => (Vec::new(), Vec::new()),
            Some(want) => {
                let keys: HashSet<&[u8]> = want.iter().map(|(k, _)| k.as_slice()).collect();
                let remove = self
                    .env
                    .keys()
                    .filter(|k| !keys.contains(k.as_slice()))
                    .cloned()
                    .collect();
                let set = want
                    .iter()
                    .filter(|(k, v)| self.env.get(k) != Some(v))
                    .cloned()
                    .collect();
                (remove, set)
            }
        };
        Plan {
            chdir,
            env_remove,
            env_set,
        }
    }
}

/// A child's changes to the baseline, computed in the server before `fork`.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    chdir: Option<Vec<u8>>,
    env_remove: Vec<Vec<u8>>,
    env_set: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Plan {
    /// Whether this set-up can fail (a `chdir`), so that the server must hear
    /// from the child before it reports the spawn.
    pub(crate) fn needs_confirmation(&self) -> bool {
        self.chdir.is_some()
    }
}

/// Runs in the freshly forked child; never returns.
#[allow(unsafe_code)] // one call into `sys`, justified at the call
pub(crate) fn run(
    fds: Vec<(OwnedFd, u32)>,
    action: Action,
    setup: Option<OwnedFd>,
    entry: Option<fn(ChildStart) -> i32>,
    nofile_soft: Option<u64>,
    base: &Baseline,
    plan: Plan,
) -> ! {
    let is_exec = matches!(action, Action::Exec { .. });
    sys::child_reset_signals(&base.signals, !is_exec);
    let setup = match sys::child_install_fds(fds, setup) {
        Ok(s) => s,
        Err(_) => sys::exit_now(127),
    };
    // With no set-up channel (nothing here could fail in practice, so the
    // server did not wait), a failure goes to the child's stderr.
    let fail = |stage: &str, e: io::Error| -> ! {
        match &setup {
            Some(s) => {
                let msg = format!("{stage}: {e}");
                let _ = sys::write_all(s.as_fd(), msg.as_bytes());
            }
            None => {
                let msg = format!("forkserver child set-up failed: {stage}: {e}\n");
                let _ = sys::write_all(io::stderr().as_fd(), msg.as_bytes());
            }
        }
        sys::exit_now(127)
    };
    // The server raised its own fd limit; the child gets the usual one back
    // (a program using `select` expects fds below 1024).
    if let Some(soft) = nofile_soft
        && let Err(e) = sys::set_nofile_soft(soft)
    {
        fail("setrlimit", e);
    }
    if let Some(cwd) = &plan.chdir
        && let Err(e) = sys::chdir(cwd)
    {
        fail("chdir", e);
    }
    if !plan.env_remove.is_empty() || !plan.env_set.is_empty() {
        // SAFETY: a fork-server child has exactly one thread (module docs).
        unsafe { sys::child_apply_env(&plan.env_remove, &plan.env_set) };
    }
    match action {
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
            // Give the CPU away once before the entry. A new child usually
            // runs on the CPU where the requester slept, and the requester,
            // woken by our `Spawned`, would otherwise wait behind an entry
            // that computes until the next scheduler tick: `start` of a busy
            // child took up to 4–5 ms, p90 2.5–4.3 ms; with this yield p90
            // is 0.4 ms (`docs/benchmarks.md`). With nobody waiting it
            // returns at once.
            std::thread::yield_now();
            // A panic must never unwind back into the server's loop, which is
            // still on this stack below us.
            let code = std::panic::catch_unwind(move || entry(ChildStart { data })).unwrap_or(101);
            // Rust's stderr is unbuffered: only stdout can hold output.
            let _ = std::io::stdout().flush();
            sys::exit_now(code)
        }
    }
}
