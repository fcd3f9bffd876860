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

use crate::EntryArgs;
use crate::codec;
use crate::protocol::{Action, Handover, MAX_FRAME, SpawnDetails, ToWarm, WarmSpawn};
use crate::sys;

/// The server's own state at start, which every child inherits.
#[derive(Debug, Default)]
pub(crate) struct Baseline {
    signals: Vec<i32>,
    env: HashMap<Vec<u8>, Vec<u8>>,
    /// The variables' names in the environment's own order, which the
    /// handshake keeps: a client whose environment is inherited unchanged
    /// compares it entry by entry, without hashing.
    env_order: Vec<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    /// Device and inode of the directory the server is in: a path equal to
    /// `cwd` may name another directory by now (removed and made again).
    cwd_id: Option<(u64, u64)>,
}

impl Baseline {
    /// Reads the server's signal dispositions, environment and directory.
    pub(crate) fn capture() -> Baseline {
        let vars: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        Baseline {
            signals: sys::nondefault_signals(),
            env_order: vars.iter().map(|(k, _)| k.clone()).collect(),
            env: vars.into_iter().collect(),
            cwd: std::env::current_dir()
                .ok()
                .map(|p| p.into_os_string().into_vec()),
            cwd_id: sys::dir_id(std::path::Path::new(".")),
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
            self.env_order
                .iter()
                .filter_map(|k| self.env.get(k).map(|v| (k.clone(), v.clone())))
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
                && sys::dir_id(std::path::Path::new(std::ffi::OsStr::from_bytes(c))) == self.cwd_id
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
    /// The message that makes a warm child carry out this plan.
    pub(crate) fn into_handover(self, slots: Vec<u32>, confirm: bool, action: Action) -> Handover {
        Handover {
            slots,
            chdir: self.chdir,
            env_remove: self.env_remove,
            env_set: (!self.env_set.is_empty()).then_some(self.env_set),
            confirm,
            action,
        }
    }

    /// Whether this set-up can fail (a `chdir`), so that the server must hear
    /// from the child before it reports the spawn.
    pub(crate) fn needs_confirmation(&self) -> bool {
        self.chdir.is_some()
    }
}

/// How a child reaches its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Forked for this request: the requester's `Spawned` goes out after
    /// the fork, so the child yields once before its entry.
    Forked,
    /// A warm child: its handover went out after the requester's
    /// `Spawned` (or its requester sent it the spawn itself), so the
    /// requester is running already and no yield is due. Its signals were
    /// reset before it waited.
    Warm,
}

/// Runs in the freshly forked child; never returns.
#[allow(unsafe_code)] // one call into `sys`, justified at the call
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    fds: Vec<(OwnedFd, u32)>,
    action: Action,
    setup: Option<OwnedFd>,
    entry: Option<fn(EntryArgs) -> i32>,
    nofile_soft: Option<u64>,
    base: &Baseline,
    plan: Plan,
    start: Start,
) -> ! {
    let is_exec = matches!(action, Action::Exec { .. });
    match start {
        Start::Forked => sys::child_reset_signals(&base.signals, !is_exec),
        // Reset before it waited, as for an entry (`SIGPIPE` ignored).
        Start::Warm if is_exec => sys::child_reset_signals(&[libc::SIGPIPE], false),
        Start::Warm => {}
    }
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
            // A forked child gives the CPU away once before the entry. It
            // usually runs on the CPU where the requester slept, and the
            // requester, woken by our `Spawned`, would otherwise wait behind
            // an entry that computes until the next scheduler tick: `start`
            // of a busy child took up to 4–5 ms, p90 2.5–4.3 ms; with this
            // yield p90 is 0.4 ms (`docs/benchmarks.md`). With nobody
            // waiting it returns at once. A warm child was woken after the
            // requester (`Start::Warm`); yielding would only let the
            // requester's own work run before the entry (30 µs measured).
            if start == Start::Forked {
                std::thread::yield_now();
            }
            // A panic must never unwind back into the server's loop, which is
            // still on this stack below us.
            let code = std::panic::catch_unwind(move || entry(EntryArgs { data })).unwrap_or(101);
            // Rust's stderr is unbuffered: only stdout can hold output.
            let _ = std::io::stdout().flush();
            sys::exit_now(code)
        }
    }
}

/// What a warm child needs from the server to wait and then become the
/// child of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WarmParams<'a> {
    /// The server's pid: a warm child whose parent is not it any more exits.
    pub(crate) server_pid: i32,
    /// The embedder's per-child warm-up, run once before waiting.
    pub(crate) warm_up: &'a [fn()],
    /// The registered child entry.
    pub(crate) entry: Option<fn(EntryArgs) -> i32>,
    /// The fd limit to give back (see [`run`]).
    pub(crate) nofile_soft: Option<u64>,
    /// The server's baseline (what the handover's plan is relative to).
    pub(crate) base: &'a Baseline,
}

/// Runs in a freshly forked *warm* child; never returns.
///
/// A warm child is forked while the server is idle and does, ahead of any
/// request, everything that does not depend on one: it arranges to die
/// with the server (`PR_SET_PDEATHSIG`, then a check that the server is
/// still its parent), closes every fd of the server and its clients but
/// stdio and its own socket, names itself `forkserver-warm` (the server's
/// name comes back with the request), touches the stack and the allocator, and runs
/// the embedder's warm-up hooks. It then blocks on its socket. EOF (the
/// server sent it away or died) ends it with `_exit(0)`; a [`Handover`]
/// brings the request's fds and plan, and from there the child is set up by
/// [`run`], the very code a freshly forked child runs, so a warm child
/// keeps every promise a fresh one makes.
pub(crate) fn warm(sock: OwnedFd, kick: OwnedFd, p: WarmParams<'_>) -> ! {
    if sys::set_parent_death_signal(libc::SIGKILL).is_err() || sys::parent_pid() != p.server_pid {
        sys::exit_now(0);
    }
    sys::close_fds_above_stdio_except([sock.as_fd(), kick.as_fd()]);
    let name = sys::thread_name();
    let mut warm_name = [0u8; 16];
    warm_name[..15].copy_from_slice(sys::WARM_NAME);
    sys::set_thread_name(&warm_name);
    touch_stack();
    // Decoding and planning a spawn allocate: do it once now, so the
    // allocator's pages this child writes are copied before a request
    // waits on them.
    let dummy = SpawnDetails {
        cwd: None,
        env: None,
        action: Action::Run { data: vec![0; 64] },
    };
    let _ = std::hint::black_box(p.base.plan(&dummy));
    if let Ok(b) = codec::encode(&ToWarm::Spawn(WarmSpawn {
        slots: vec![0, 1, 2],
        details: dummy,
        confirm: false,
    })) {
        let _ = std::hint::black_box(codec::decode::<ToWarm>(&b));
    }
    for f in p.warm_up {
        if std::panic::catch_unwind(f).is_err() {
            sys::exit_now(101);
        }
    }
    // What a request cannot change is done now, not while it waits: the
    // signals (as for an entry; an `exec` puts `SIGPIPE` back) and the fd
    // limit (tried again after the request should this fail).
    sys::child_reset_signals(&p.base.signals, true);
    let nofile_soft = p.nofile_soft.filter(|n| sys::set_nofile_soft(*n).is_err());
    let mut buf = vec![0u8; MAX_FRAME + 1];
    // Its first pages written now (a frame without a bulk payload is
    // small): the kernel would otherwise fault them in while it copies the
    // frame, with the requester waiting.
    for page in buf.chunks_mut(4096).take(4) {
        page[0] = 1;
    }
    std::hint::black_box(&mut buf);
    // The frame is on the socket before the kick: nothing there (EOF, or
    // a kick alone) sends this child away. The count is left as it is: it
    // tells the server, should the client's connection close before its
    // claim, what this child was sent.
    if sys::wait_readable(kick.as_fd(), None).is_err() {
        sys::exit_now(0);
    }
    // Not closed here but with every other fd when the spawn's are
    // installed: one system call less while the requester waits.
    std::mem::forget(kick);
    let received = match sys::recv_frame(sock.as_fd(), &mut buf, true) {
        Ok(r) if r.len == 0 && !r.truncated => sys::exit_now(0),
        Ok(r) => r,
        Err(_) => sys::exit_now(0),
    };
    // From here on this is a child of a request: it outlives the server
    // like any other child.
    let _ = sys::set_parent_death_signal(0);
    sys::set_thread_name(&name);
    let fail = |sock: &OwnedFd, what: &str| -> ! {
        let msg = format!("warm child: {what}");
        // The server reads this only when it waits for the set-up; else
        // it has closed its end and the child's stderr gets it.
        if sys::send_frame(sock.as_fd(), msg.as_bytes(), &[], true).is_err() {
            let line = format!("forkserver child set-up failed: {msg}\n");
            let _ = sys::write_all(io::stderr().as_fd(), line.as_bytes());
        }
        sys::exit_now(127)
    };
    if received.truncated || received.ctrunc {
        fail(&sock, "handover truncated");
    }
    let len = received.len.min(buf.len());
    let (slots, confirm, plan, action) = match codec::decode(&buf[..len]) {
        Ok(ToWarm::Handover(h)) => {
            let plan = Plan {
                chdir: h.chdir,
                env_remove: h.env_remove,
                env_set: h.env_set.unwrap_or_default(),
            };
            (h.slots, h.confirm, plan, h.action)
        }
        // Straight from the client: planned here, against the baseline the
        // server would have planned it against (this process's own).
        Ok(ToWarm::Spawn(w)) => {
            let plan = p.base.plan(&w.details);
            (w.slots, w.confirm, plan, w.details.action)
        }
        Err(e) => fail(&sock, &format!("bad handover: {e}")),
    };
    // Kept: freeing 64 KiB at the top of the heap would give it back to
    // the kernel (`brk`) while the requester waits.
    std::mem::forget(buf);
    if let Err((_, why)) = super::handler::check_spawn(&slots, received.fds.len(), &action) {
        fail(&sock, &why);
    }
    let fds = received.fds.into_iter().zip(slots).collect();
    let setup = if confirm {
        Some(sock)
    } else {
        // Closed with the other fds (see the kick).
        std::mem::forget(sock);
        None
    };
    run(
        fds,
        action,
        setup,
        p.entry,
        nofile_soft,
        p.base,
        plan,
        Start::Warm,
    )
}

/// Writes 32 KiB of stack below the caller, so that the entry's first
/// frames do not fault while a requester waits.
#[inline(never)]
fn touch_stack() {
    let mut page = [0u8; 32 * 1024];
    std::hint::black_box(&mut page);
}
