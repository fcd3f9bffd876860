//! Process-wide state: who this process is, its default start method and
//! preload hooks, and the `fork` generations that releases wait for.
//!
//! All of it sits in one mutex inside a [`ForkCell`], so that a child made by
//! the `fork` method can replace it wholesale (the parent's mutex may have
//! been held by another thread at the instant of the fork) before running
//! anything else. Other modules keep their own process-wide state in cells
//! of their own (the fork-server slot, the list of children, the waiter
//! thread), each with its reset; `process::method::fork` runs them all.

use std::sync::{Mutex, PoisonError};

use crate::context::StartMethod;
use crate::sys::{self, ForkCell};

/// Who this process is (Python's `current_process()` data).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Identity {
    pub(crate) name: String,
    /// Python's `_identity`: position among its parent's children, nested.
    pub(crate) path: Vec<u32>,
    pub(crate) authkey: Vec<u8>,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<(i32, String)>,
}

impl Identity {
    /// An identity with nothing in it (for jobs that are never run as a
    /// process: the warm-up, fuzzing seeds).
    pub(crate) fn blank() -> Identity {
        Identity {
            name: String::new(),
            path: Vec::new(),
            authkey: Vec::new(),
            daemon: false,
            parent: None,
        }
    }
}

pub(crate) struct Globals {
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) preload: Vec<fn()>,
    /// Warm children of the fork server (`None`: the `forkserver` crate's default).
    pub(crate) warm: Option<usize>,
    pub(crate) me: Option<Identity>,
    pub(crate) counter: u32,
    /// How many `fork` children this process has started.
    fork_generation: u64,
    /// `fork` children not yet reaped, with the generation each was
    /// started in.
    live_forks: Vec<(i32, u64)>,
    /// Releases waiting for such children (see [`release_after_forks`]).
    deferred: Vec<(u64, Deferred)>,
}

/// A release put off until the `fork` children that may use it are reaped.
type Deferred = Box<dyn FnOnce() + Send>;

impl Globals {
    const fn new() -> Globals {
        Globals {
            start_method: None,
            preload: Vec::new(),
            warm: None,
            me: None,
            counter: 0,
            fork_generation: 0,
            live_forks: Vec::new(),
            deferred: Vec::new(),
        }
    }

    /// The generation of the newest `fork` child not yet reaped (0: none).
    /// Something made in an older generation may be in use by that child.
    fn newest_live_fork(&self) -> u64 {
        self.live_forks.iter().map(|&(_, f)| f).max().unwrap_or(0)
    }

    pub(crate) fn me(&mut self) -> &Identity {
        self.me.get_or_insert_with(|| Identity {
            name: "MainProcess".into(),
            path: Vec::new(),
            authkey: sys::random_bytes_or_panic(32, "the authkey"),
            daemon: false,
            parent: None,
        })
    }
}

static GLOBALS: ForkCell<Mutex<Globals>> = ForkCell::new(Mutex::new(Globals::new()));

/// Runs `f` with the globals locked.
pub(crate) fn with<T>(f: impl FnOnce(&mut Globals) -> T) -> T {
    let mut g = GLOBALS.get().lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut g)
}

/// This process's name, if the globals can be had without waiting (a
/// panic hook runs wherever the panic happened, maybe under the lock).
pub(crate) fn try_name() -> Option<String> {
    let g = match GLOBALS.get().try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    Some(
        g.me.as_ref()
            .map_or("MainProcess", |m| m.name.as_str())
            .to_string(),
    )
}

/// The number of `fork` children started so far: a value made now is
/// inherited by every child started after it.
pub(crate) fn fork_generation() -> u64 {
    with(|g| g.fork_generation)
}

/// Right before a `fork` child is made: its generation.
pub(crate) fn next_fork_generation() -> u64 {
    with(|g| {
        g.fork_generation += 1;
        g.fork_generation
    })
}

/// A `fork` child of generation `generation` was started.
pub(crate) fn fork_started(pid: i32, generation: u64) {
    with(|g| g.live_forks.push((pid, generation)));
}

/// A `fork` child was reaped: runs the releases that waited only for it.
pub(crate) fn fork_reaped(pid: i32) {
    let ready: Vec<Deferred> = with(|g| {
        g.live_forks.retain(|&(p, _)| p != pid);
        let newest = g.newest_live_fork();
        let (wait, ready): (Vec<_>, Vec<_>) = std::mem::take(&mut g.deferred)
            .into_iter()
            .partition(|(made, _)| *made < newest);
        g.deferred = wait;
        ready.into_iter().map(|(_, f)| f).collect()
    });
    // Outside the lock: a release talks to a manager.
    for f in ready {
        f();
    }
}

/// Runs `release` of something made in fork generation `made` now, or, when
/// a `fork` child started since then still runs (it has a copy and may use
/// it: CPython's `Process` keeps its `_args` for the same reason), once
/// every such child is reaped.
pub(crate) fn release_after_forks(made: u64, release: Deferred) {
    let now = with(|g| {
        if made < g.newest_live_fork() {
            g.deferred.push((made, release));
            None
        } else {
            Some(release)
        }
    });
    if let Some(f) = now {
        f();
    }
}

/// Sets the identity of a freshly started child (spawn or fork-server child).
pub(crate) fn set_identity(me: Identity) {
    with(|g| g.me = Some(me));
}

/// Lets this process start children even though it is daemonic: for a
/// manager's server, which its parent starts daemonic (so that nothing
/// waits for it at exit) but which runs pools, as CPython's non-daemonic
/// server does. Its pools' workers are daemonic children that leave when
/// their channel to it closes, so none outlives it for long.
pub(crate) fn allow_children() {
    with(|g| {
        if let Some(me) = g.me.as_mut() {
            me.daemon = false;
        }
    });
}

/// In a child made by the `fork` method: this process's identity is the
/// child's, and the parent's state is forgotten (not dropped: another thread
/// of the parent may have been changing it at the instant of the fork).
///
/// # Safety
/// Only right after `fork`, in the child, before any other thread starts.
#[allow(unsafe_code)] // the reset itself, see the safety contract
pub(crate) unsafe fn reset_after_fork(me: Identity, start_method: Option<StartMethod>) {
    let mut fresh = Globals::new();
    fresh.me = Some(me);
    fresh.start_method = start_method;
    // SAFETY: forwarded to the caller (single-threaded fork child).
    unsafe { GLOBALS.reset_in_child(Mutex::new(fresh)) };
}
