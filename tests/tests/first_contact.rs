//! What a newcomer types first must work, or fail with the fix named, and
//! never start copies of the program without end.
//!
//! Each program runs under a process limit (`integration_tests::limited`),
//! so a regression is a failed test, not a machine out of processes. This
//! file itself has no `mproc::bootstrap!()`: its plain and tokio tests use
//! mproc as a test author would, with no set-up line at all.

use std::path::Path;
use std::time::Duration;

use integration_tests::limited::run_limited;

/// Tasks a program may have: the main thread and its helpers, the fork
/// server, two pool workers and a child, with room to spare; a copy of
/// the program started from each copy would pass it within a second.
const TASKS: u64 = 48;

const DEADLINE: Duration = Duration::from_secs(60);

/// How often `main` ran: the programs print one line from each run.
fn main_runs(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|l| l.starts_with("main runs in"))
        .count()
}

#[test]
fn a_main_without_init_runs_once_and_every_method_works() {
    let r = run_limited(Path::new(env!("CARGO_BIN_EXE_no_init")), TASKS, DEADLINE);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(main_runs(&r.stdout), 1, "{r:?}");
    for method in ["forkserver", "spawn", "fork"] {
        assert!(
            r.stdout.contains(&format!("{method}: 144 [1, 4, 9, 16]")),
            "{method}: {r:?}"
        );
    }
}

#[test]
fn tokio_main_with_init_first_runs_every_method() {
    let r = run_limited(Path::new(env!("CARGO_BIN_EXE_tokio_main")), TASKS, DEADLINE);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(main_runs(&r.stdout), 1, "{r:?}");
    for method in ["forkserver", "spawn", "fork"] {
        assert!(
            r.stdout.contains(&format!("{method}: 81 25")),
            "{method}: {r:?}"
        );
    }
}

#[test]
fn a_forkserver_embedder_without_bootstrap_gets_the_fix_and_no_copies() {
    let r = run_limited(
        Path::new(env!("CARGO_BIN_EXE_no_bootstrap_server")),
        TASKS,
        DEADLINE,
    );
    assert!(!r.timed_out, "{r:?}");
    // The program itself reports the launch error and exits 3; its copy,
    // started as the server, ran main once more and stopped at the launch.
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.stdout.contains("error:"), "{r:?}");
    assert!(r.stdout.contains("forkserver::bootstrap"), "{r:?}");
    assert!(r.stderr.contains("never ran the bootstrap"), "{r:?}");
    assert_eq!(main_runs(&r.stdout), 2, "the program and one copy: {r:?}");
}

fn double(x: u32) -> u32 {
    2 * x
}

#[test]
fn a_plain_test_uses_mproc_with_no_set_up_line() {
    let ctx = mproc::get_context("forkserver").unwrap();
    let mut p = ctx.process(double, 21).start().unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 42);
    let mut p = mproc::get_context("spawn")
        .unwrap()
        .process(double, 4)
        .start()
        .unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 8);
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
