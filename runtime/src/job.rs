//! The job contract: how a target travels to another process of this
//! executable and how its outcome comes back. The `spawn` and `forkserver`
//! methods run one job per child; pool workers and the manager's registered
//! callables run many through the same trampolines.
//!
//! The parent sends one [`Job`] on the child's control channel: the target
//! function and its trampoline as [`FnRef`]s (offsets valid in any process of
//! this executable), the encoded arguments with their fds, and the child's
//! identity. The child decodes the arguments, calls the target under
//! `catch_unwind`, sends back an [`Outcome`] (the encoded return value, or the
//! panic message) and exits: 0 after a return, 1 after a panic, as CPython.

use std::os::fd::{AsFd, OwnedFd};

use forkserver::FnRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::codec;
use crate::globals::Identity;
use crate::sys;

/// Decodes the arguments, calls the target, encodes the result.
pub(crate) type Trampoline = fn(FnRef, &[u8], Vec<OwnedFd>) -> Result<Encoded, String>;

/// An encoded value and the fds it carries.
pub(crate) type Encoded = (Vec<u8>, Vec<OwnedFd>);

/// What the parent asks a spawn or fork-server child to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) trampoline: FnRef,
    pub(crate) func: FnRef,
    pub(crate) args: Vec<u8>,
    pub(crate) me: Identity,
    pub(crate) start_method: Option<crate::StartMethod>,
}

/// What the child sends back before exiting.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded return value (its fds ride with the message).
    Returned(Vec<u8>),
    /// The target panicked with this message.
    Panicked(String),
}

/// The monomorphised trampoline for `fn(A) -> R`.
#[allow(unsafe_code)] // rebuilding the target's fn pointer
pub(crate) fn trampoline<A: DeserializeOwned, R: Serialize>(
    func: FnRef,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Encoded, String> {
    // SAFETY: `func` was made from a `fn(A) -> R` by `Context::process` in a
    // process of this executable, and this trampoline was instantiated with
    // the same `A` and `R` at that same call (both travel together in a Job).
    let f: fn(A) -> R = unsafe { sys::resolve_as(func) };
    let a: A = codec::decode(args, fds).map_err(|e| format!("decoding the arguments: {e}"))?;
    let r = f(a);
    codec::encode(&r).map_err(|e| format!("encoding the result: {e}"))
}

/// What a chunk of a pool's `map` gives back: the plain values when no item
/// panicked (the common case, and the cheap one to decode), else one
/// `Result` per item.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChunkOut<R> {
    /// Every item returned.
    All(Vec<R>),
    /// Some item panicked: the value or the panic message of each.
    Mixed(Vec<Result<R, String>>),
}

/// The trampoline for a chunk of a pool's `map`: decodes a `Vec<A>`, calls
/// `fn(A) -> R` on each item under `catch_unwind` (a panic fails that item
/// only), and encodes a [`ChunkOut`] in one go.
#[allow(unsafe_code)] // rebuilding the target's fn pointer
pub(crate) fn chunk_trampoline<A: DeserializeOwned, R: Serialize>(
    func: FnRef,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Encoded, String> {
    // SAFETY: as for `trampoline`: `func` was made from a `fn(A) -> R` by
    // the pool in a process of this executable, together with this very
    // instantiation.
    let f: fn(A) -> R = unsafe { sys::resolve_as(func) };
    let items: Vec<A> =
        codec::decode(args, fds).map_err(|e| format!("decoding the arguments: {e}"))?;
    let mut values = Vec::with_capacity(items.len());
    let mut items = items.into_iter();
    let mut failed = None;
    for a in items.by_ref() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a))) {
            Ok(v) => values.push(v),
            Err(p) => {
                failed = Some(panic_message(&*p));
                break;
            }
        }
    }
    let out = match failed {
        None => ChunkOut::All(values),
        Some(first) => {
            let mut all: Vec<Result<R, String>> = values.into_iter().map(Ok).collect();
            all.push(Err(first));
            for a in items {
                all.push(
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(a)))
                        .map_err(|p| panic_message(&*p)),
                );
            }
            ChunkOut::Mixed(all)
        }
    };
    codec::encode(&out).map_err(|e| format!("encoding the result: {e}"))
}

/// Calls a target received as a trampoline and function pair (the pool's
/// workers run many targets this way, as `process::method::run_job_child` runs one).
#[allow(unsafe_code)] // rebuilding the trampoline's fn pointer
pub(crate) fn call_trampoline(
    trampoline: FnRef,
    func: FnRef,
    args: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Encoded, String> {
    // SAFETY: the pair was made from a `Trampoline` instantiated for the
    // target's own `fn(A) -> R` by the parent, a process of this executable,
    // and travelled together as a child's `Job` does.
    let tramp: Trampoline = unsafe { sys::resolve_as(trampoline) };
    tramp(func, args, fds)
}

/// Extracts a panic payload's message.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `body` as the child's target and reports on `ctrl`; returns the
/// exit code.
pub(crate) fn run_and_report(
    ctrl: &Channel,
    body: impl FnOnce() -> Result<Encoded, String>,
) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let (outcome, fds, code) = match result {
        Ok(Ok((bytes, fds))) => (Outcome::Returned(bytes), fds, 0),
        Ok(Err(msg)) => (Outcome::Panicked(msg), Vec::new(), 1),
        Err(p) => (Outcome::Panicked(panic_message(&*p)), Vec::new(), 1),
    };
    match codec::encode(&outcome) {
        Ok((bytes, _)) => {
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = ctrl.send(&bytes, &borrowed) {
                tracing::debug!(error = %e, "could not report to the parent");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode the outcome"),
    }
    code
}

/// The child's path once over, on a dummy job, in the fork server (a
/// preload) or in a thread about to `fork`: what that path sets up on first
/// use (thread-local buffers and their destructor registrations, allocator
/// state) is then set up once and inherited, instead of being set up (and
/// its pages copied) in every child.
pub(crate) fn warm_up() {
    let Ok((parent, child)) = Channel::pair() else {
        return;
    };
    let job = Job {
        trampoline: FnRef::from_addr(warm_up as fn() as usize),
        func: FnRef::from_addr(warm_up as fn() as usize),
        args: Vec::new(),
        me: Identity::blank(),
        start_method: None,
    };
    let Ok((bytes, _)) = codec::encode(&job) else {
        return;
    };
    if parent.send(&bytes, &[]).is_err() {
        return;
    }
    let Ok((bytes, _)) = child.recv(None) else {
        return;
    };
    if codec::decode::<Job>(&bytes, Vec::new()).is_err() {
        return;
    }
    run_and_report(&child, || codec::encode(&0u64).map_err(|e| e.to_string()));
    if let Ok((bytes, fds)) = parent.recv(None) {
        let _ = codec::decode::<Outcome>(&bytes, fds);
    }
}

/// What a warm fork-server child does while it waits: [`warm_up`], and
/// what every child of a job does before its target whatever the job (its
/// panic report, its main thread noted), so that none of it is done, and
/// none of its pages copied, while a requester waits.
pub(crate) fn warm_up_warm_child() {
    warm_up();
    crate::process::panic_report::note_main_thread();
    crate::process::panic_report::install();
}

/// [`warm_up`] once per thread (the `fork` method: a child is a copy of
/// the thread that forks it).
pub(crate) fn warm_up_this_thread() {
    thread_local! {
        static WARM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARM.with(|w| w.replace(true)) {
        warm_up();
    }
}
