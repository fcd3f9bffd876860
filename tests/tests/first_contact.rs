//! What a newcomer types first must work, or fail with the fix named, and
//! never start copies of the program without end.
//!
//! Each program runs under a process limit (`testkit::limited`),
//! so a regression is a failed test, not a machine out of processes. This
//! file itself has no `mproc::bootstrap!()`: its plain and tokio tests use
//! mproc as a test author would, with no set-up line at all.

use std::time::Duration;

use testkit::limited::{Limited, run_program, run_program_env};

/// How often `main` ran: the programs print one line from each run.
fn main_runs(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|l| l.starts_with("main runs in"))
        .count()
}

/// Runs `program` (one of this crate's binaries) under the limit, and
/// asserts that its `main` ran once and that each start method printed
/// `"{method}: {expected}"`.
fn assert_every_method_once(program: &str, expected: &str) {
    let r = run_program(program);
    r.assert_exited(0);
    assert_eq!(main_runs(&r.stdout), 1, "{r:?}");
    for method in ["forkserver", "spawn", "fork"] {
        let line = format!("{method}: {expected}");
        assert!(r.stdout.contains(&line), "{line}: {r:?}");
    }
}

#[test]
fn a_main_without_init_runs_once_and_every_method_works() {
    assert_every_method_once(env!("CARGO_BIN_EXE_no_init"), "144 [1, 4, 9, 16]");
}

#[test]
fn tokio_main_with_init_first_runs_every_method() {
    assert_every_method_once(env!("CARGO_BIN_EXE_tokio_main"), "81 25");
}

#[test]
fn a_forkserver_embedder_without_bootstrap_gets_the_fix_and_no_copies() {
    let r = run_program(env!("CARGO_BIN_EXE_no_bootstrap_server"));
    // The program itself reports the launch error and exits 3; its copy,
    // started as the server, ran main once more and stopped at the launch.
    r.assert_exited(3);
    assert!(r.stdout.contains("error:"), "{r:?}");
    assert!(r.stdout.contains("forkserver::bootstrap"), "{r:?}");
    r.assert_stderr_has("never ran the bootstrap");
    assert_eq!(main_runs(&r.stdout), 2, "the program and one copy: {r:?}");
}

fn double(x: u32) -> u32 {
    2 * x
}

/// `double(x)` in a child started by `method`.
fn double_in_a_child(method: &str, x: u32) -> u32 {
    let ctx = mproc::get_context(method).unwrap();
    let mut p = ctx.process(double, x).start().unwrap();
    p.join_timeout(Duration::from_secs(30)).unwrap()
}

#[test]
fn a_plain_test_uses_mproc_with_no_set_up_line() {
    assert_eq!(double_in_a_child("forkserver", 21), 42);
    assert_eq!(double_in_a_child("spawn", 4), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokio_test_uses_mproc_with_no_set_up_line() {
    let pool = mproc::get_context("forkserver").unwrap().pool(2).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        pool.apply_async(double, 5).unwrap(),
    )
    .await
    .expect("in time")
    .unwrap();
    assert_eq!(r, 10);
}

fn run_panics(env: &[(&str, &str)]) -> Limited {
    run_program_env(env!("CARGO_BIN_EXE_panics"), env)
}

#[test]
fn a_child_panic_is_reported_once_with_its_name_and_no_machinery() {
    let r = run_panics(&[("RUST_BACKTRACE", "1")]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("done"), "{r:?}");
    for method in ["forkserver", "spawn", "fork"] {
        assert!(
            r.stdout
                .contains(&format!("joined: no luck under {method}")),
            "{r:?}"
        );
        let header = format!("Process boomer-{method} (pid ");
        assert_eq!(
            r.stderr.matches(&header).count(),
            1,
            "{method}: {}",
            r.stderr
        );
        r.assert_stderr_has(&format!("no luck under {method}\n"));
    }
    assert_eq!(r.stderr.matches("panicked at").count(), 3, "{}", r.stderr);
    // No std header, and of the frames only the target's.
    r.assert_stderr_lacks("thread 'main' panicked");
    r.assert_stderr_has("panics::boom");
    for machinery in [
        "forkserver::",
        "mproc::",
        "dispatch_before_main",
        "std::rt",
        "panicking",
    ] {
        r.assert_stderr_lacks(machinery);
    }
    // The pool task's panic is its error, and nothing more.
    assert!(r.stdout.contains("task error:"), "{r:?}");
    assert!(r.stdout.contains("task 2 failed"), "{r:?}");
    r.assert_stderr_lacks("task 2 failed");
}

#[test]
fn mproc_panic_output_std_gives_stds_own_report_back() {
    let r = run_panics(&[("MPROC_PANIC_OUTPUT", "std")]);
    assert_eq!(r.code, Some(0), "{r:?}");
    r.assert_stderr_has("panicked at");
    r.assert_stderr_lacks("Process boomer-");
    r.assert_stderr_has("task 2 failed");
}

/// A `fn(i32) -> i32` whose address lies in libc, a shared library: never
/// called, only handed to `start`, which must refuse it.
fn a_fn_in_a_shared_library() -> fn(i32) -> i32 {
    let addr = libc::abs as unsafe extern "C" fn(i32) -> i32 as usize;
    // SAFETY: the pointer is never called (start and apply refuse it before
    // any process could), only its address is read.
    unsafe { std::mem::transmute::<usize, fn(i32) -> i32>(addr) }
}

#[test]
fn a_target_in_a_shared_library_is_refused_at_start() {
    let f = a_fn_in_a_shared_library();
    for method in ["spawn", "forkserver"] {
        let ctx = mproc::get_context(method).unwrap();
        match ctx.process(f, 1).start() {
            Err(e @ mproc::Error::NotInExecutable(_)) => {
                assert!(e.to_string().contains("not in the main executable"), "{e}")
            }
            other => panic!("{method}: expected NotInExecutable, got {other:?}"),
        }
        let pool = ctx.pool(1).unwrap();
        let err = pool.apply(f, 1).unwrap_err();
        assert!(
            err.to_string().contains("not in the main executable"),
            "{err}"
        );
    }
    // A fn of the program itself is fine.
    assert_eq!(double_in_a_child("spawn", 2), 4);
}

#[test]
fn log_to_stderr_shows_the_spans_of_a_process_a_pool_task_and_a_manager_call() {
    let r = run_program(env!("CARGO_BIN_EXE_log_spans"));
    assert_eq!(r.code, Some(0), "{r:?}");
    let pid = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .expect("the child's pid")
        .to_string();
    let process = format!("[mproc.process{{name=squarer method=forkserver pid={pid}}}]");
    for event in [
        "process started",
        "process exited exitcode=0",
        "closed after",
    ] {
        r.assert_stderr_has(&format!("{process} {event}"));
    }
    for needle in [
        "[mproc.pool_task{id=",
        "pool task done ok=true",
        "[mproc.manager_call{id=",
        "method=set}]",
    ] {
        r.assert_stderr_has(needle);
    }
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn a_child_killed_right_after_start_joins_as_killed() {
    for method in ["forkserver", "spawn", "fork"] {
        let ctx = mproc::get_context(method).unwrap();
        for _ in 0..5 {
            let mut p = ctx.process(sleepy, 10_000).start().unwrap();
            p.kill().unwrap();
            match p.join_timeout(Duration::from_secs(30)) {
                Err(mproc::Error::Exited { exitcode: -9 }) => {}
                other => panic!("{method}: expected Exited(-9), got {other:?}"),
            }
        }
    }
}

#[test]
fn a_timeout_too_large_for_an_instant_means_no_deadline() {
    let ctx = mproc::get_context("forkserver").unwrap();
    let mut p = ctx.process(double, 1).start().unwrap();
    assert_eq!(p.join_timeout(Duration::MAX).unwrap(), 2);
    let pool = ctx.pool(1).unwrap();
    let r = pool.apply_async(double, 2).unwrap();
    assert_eq!(r.get_timeout(Duration::MAX).unwrap(), 4);
}
