//! Start methods and contexts: `get_context`, `set_start_method` and friends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::globals;

/// How a child process is created.
///
/// | method | how | cost grows with | safe from a multithreaded parent |
/// |---|---|---|---|
/// | `Fork` | `fork()` in the caller | the parent's memory | no (warned) |
/// | `Spawn` | `posix_spawn` of `/proc/self/exe` | binary start-up | yes |
/// | `ForkServer` | the fork server forks it | nothing of the parent | yes |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork()` in the calling process; the child runs the target directly.
    Fork,
    /// A fresh start of this executable that runs only the target.
    Spawn,
    /// A fork of the single-threaded fork server (the default).
    ForkServer,
}

impl StartMethod {
    /// Python's name for it.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(Error::InvalidStartMethod(other.to_string())),
        }
    }
}

/// A start method plus everything that creates processes with it
/// (Python's `multiprocessing.get_context(...)`).
///
/// ```
/// # fn main() -> mproc::Result<()> {
/// let ctx = mproc::get_context("spawn")?;
/// assert_eq!(ctx.start_method(), mproc::StartMethod::Spawn);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

impl Context {
    /// A context for `method`.
    pub fn new(method: StartMethod) -> Context {
        Context { method }
    }

    /// Its start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }
}

/// A context by name: `"fork"`, `"spawn"` or `"forkserver"`
/// (Python's `multiprocessing.get_context`).
///
/// # Errors
/// [`Error::InvalidStartMethod`] for any other name; the message lists the
/// valid ones.
pub fn get_context(method: &str) -> Result<Context> {
    Ok(Context::new(method.parse()?))
}

/// The default context (the start method set, or `forkserver`).
pub fn default_context() -> Context {
    Context::new(get_start_method())
}

/// Sets the default start method (Python's `set_start_method`).
///
/// # Errors
/// [`Error::StartMethodAlreadySet`] if it was set before and `force` is false.
pub fn set_start_method(method: StartMethod, force: bool) -> Result<()> {
    globals::with(|g| {
        if g.start_method.is_some() && !force {
            return Err(Error::StartMethodAlreadySet);
        }
        g.start_method = Some(method);
        Ok(())
    })
}

/// The default start method: the one set, else `ForkServer` (as CPython 3.14
/// on Linux).
pub fn get_start_method() -> StartMethod {
    globals::with(|g| g.start_method.unwrap_or(StartMethod::ForkServer))
}

/// Every start method this platform supports, the default first.
pub fn get_all_start_methods() -> Vec<StartMethod> {
    vec![
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ]
}

/// Functions the fork server runs once before serving, so that every child
/// it forks starts with what they set up (Python's
/// `set_forkserver_preload`). Takes effect for a server launched afterwards.
pub fn set_forkserver_preload(hooks: &[fn()]) {
    globals::with(|g| g.preload = hooks.to_vec());
}

/// How many *warm* children the fork server keeps: forked while it is
/// idle and already past everything that does not depend on a request, so
/// that `start()` hands the job to a waiting child instead of waiting for a
/// `fork` (Android's zygote keeps such a pool); the one reserved for this
/// process takes its `start()` straight from it, without the server. 0
/// turns them off; the default is [`forkserver::DEFAULT_WARM`]. Takes
/// effect for a server launched afterwards.
///
/// A warm child keeps every promise a freshly forked one makes (the
/// caller's directory, environment and fds at `start()`, preloads, signals,
/// exit code); one waiting costs about half a MiB and no CPU
/// (`docs/benchmarks.md`).
pub fn set_forkserver_warm(n: usize) {
    globals::with(|g| g.warm = Some(n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in get_all_start_methods() {
            assert_eq!(m.name().parse::<StartMethod>().unwrap(), m);
        }
        let e = "threads".parse::<StartMethod>().unwrap_err();
        assert!(e.to_string().contains("\"forkserver\""));
    }
}
