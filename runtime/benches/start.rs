//! Process start latency per start method against raw `fork`, in one run.
//!
//! `cargo bench -p mproc --bench start` (`START_BENCH_QUICK=1` for a
//! short run). Two tables:
//!
//! - `start()` until the target runs, spawns 2 ms apart (the server idle
//!   between them, so the fork server has a warm child each time): the
//!   target returns a `CLOCK_MONOTONIC` stamp it takes first thing, and
//!   the figure is that stamp minus the time of the call; raw `fork` the
//!   same way, its child writing the stamp into a pipe.
//! - `start` → `join` of an empty target back to back, the `fork` method
//!   against raw `fork` + `waitpid`, with the minor page faults each child
//!   took (from `RUSAGE_CHILDREN`).
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use mproc::{Context, get_context};
use testkit::bench::{Stats, mono_ns, raw_fork_until_child, spaced};

const T: Duration = Duration::from_secs(30);

/// The target: when it started to run.
fn stamp(_: ()) -> u64 {
    mono_ns()
}

fn empty(_: ()) {}

/// `start()` until the target runs.
fn start_until_target(ctx: &Context) -> Duration {
    let t0 = mono_ns();
    let mut p = ctx.process(stamp, ()).start().expect("start");
    let t1 = p.join_timeout(T).expect("join");
    Duration::from_nanos(t1.saturating_sub(t0))
}

fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: `pid` is our own unreaped child; `status` is a valid pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
}

/// `start` → `join` of an empty target.
fn start_join(ctx: &Context) -> Duration {
    let t0 = Instant::now();
    let mut p = ctx.process(empty, ()).start().expect("start");
    p.join_timeout(T).expect("join");
    t0.elapsed()
}

/// Raw `fork` + `_exit` + `waitpid`.
fn raw_fork_wait() -> Duration {
    let t0 = Instant::now();
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: always safe to call.
        unsafe { libc::_exit(0) }
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    reap(pid);
    t0.elapsed()
}

/// Minor page faults of every reaped child so far.
fn children_minflt() -> i64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_minflt
}

fn row(what: &str, s: Stats) {
    println!("| {what} | {:.0} µs | {:.0} µs | {} |", s.p50, s.p99, s.n);
}

fn main() {
    let quick = std::env::var_os("START_BENCH_QUICK").is_some()
        || !std::env::args().any(|a| a == "--bench");
    let n = if quick { 60 } else { 600 };
    let server = get_context("forkserver").expect("forkserver");
    let spawn = get_context("spawn").expect("spawn");
    let fork = get_context("fork").expect("fork");

    println!("| what | p50 | p99 | n |");
    println!("|---|---|---|---|");
    let s = spaced(
        n,
        20,
        Duration::from_millis(2),
        &mut [
            &mut || start_until_target(&server),
            &mut || start_until_target(&fork),
            &mut raw_fork_until_child,
        ],
    );
    row(
        "start() until the target runs, 2 ms apart: forkserver (warm child)",
        s[0],
    );
    row("start() until the target runs, 2 ms apart: fork", s[1]);
    row("raw fork until the child runs, 2 ms apart", s[2]);
    let sp = spaced(
        n / 4,
        10,
        Duration::from_millis(2),
        &mut [&mut || start_until_target(&spawn)],
    );
    row("start() until the target runs, 2 ms apart: spawn", sp[0]);

    // Back to back, with each kind's child faults counted apart.
    let faults = [std::cell::Cell::new(0i64), std::cell::Cell::new(0i64)];
    let counted = |i: usize, f: &mut dyn FnMut() -> Duration| {
        let before = children_minflt();
        let d = f();
        faults[i].set(faults[i].get() + children_minflt() - before);
        d
    };
    let bb = spaced(
        n,
        50,
        Duration::ZERO,
        &mut [&mut || counted(0, &mut || start_join(&fork)), &mut || {
            counted(1, &mut || raw_fork_wait())
        }],
    );
    row("fork: start → join of an empty target, back to back", bb[0]);
    row("raw fork → _exit → waitpid, back to back", bb[1]);
    // Every sample, the thrown-away first block included.
    let per_child = |i: usize| faults[i].get() as f64 / (bb[i].n + 50.min(n)) as f64;

    println!();
    println!(
        "start() until the target runs / raw fork, p50: forkserver {:.2} (target ≤ 0.7), fork {:.2}, spawn {:.2}",
        s[0].p50 / s[2].p50,
        s[1].p50 / s[2].p50,
        sp[0].p50 / s[2].p50
    );
    println!(
        "fork method start → join / raw fork + waitpid, p50: {:.2} (target ≤ 1.5); minor faults per child: {:.0} against {:.0}",
        bb[0].p50 / bb[1].p50,
        per_child(0),
        per_child(1)
    );
}
