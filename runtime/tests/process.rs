//! Process semantics under each start method.
mod common;

use std::time::Duration;

use mproc::{Error, Event, StartMethod, get_context};

use common::METHODS;

fn add(p: (i32, i32)) -> i32 {
    p.0 + p.1
}
fn boom(_: ()) -> i32 {
    panic!("boom {}", 42)
}
fn exit3(_: ()) -> i32 {
    std::process::exit(3)
}
fn segv(_: ()) -> i32 {
    // SAFETY: not safe at all, on purpose: this child must die of SIGSEGV.
    unsafe { std::ptr::null_mut::<i32>().write_volatile(1) };
    0
}
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
fn env_and_cwd(key: String) -> (Option<String>, String) {
    (
        std::env::var(&key).ok(),
        std::env::current_dir().unwrap().display().to_string(),
    )
}
fn nested(method: String) -> i32 {
    let ctx = get_context(&method).unwrap();
    let mut p = ctx.process(add, (20, 22)).start().unwrap();
    p.join_timeout(Duration::from_secs(20)).unwrap()
}
fn whoami(_: ()) -> (String, bool, Option<i32>) {
    let me = mproc::current_process();
    (
        me.name().to_string(),
        me.daemon(),
        mproc::parent_process().map(|p| p.pid),
    )
}

#[test]
fn return_value_each_method() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx.process(add, (2, 3)).start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), 5, "{m}");
        assert_eq!(p.exitcode(), Some(0), "{m}");
        assert!(!p.is_alive());
    }
}

/// Echoes its argument reversed, so that size and content both count.
fn reversed(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

#[test]
fn arguments_and_results_of_any_size() {
    // Small jobs ride in a fork-server spawn request; large ones (over
    // 32 KiB) go over the control channel; both, and the results, must
    // arrive whole under every method.
    for (m, ctx) in common::contexts() {
        for len in [0usize, 10, 30 * 1024, 40 * 1024, 3 << 20] {
            let arg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut want = arg.clone();
            want.reverse();
            let mut p = ctx.process(reversed, arg).start().unwrap();
            let got = p.join_timeout(Duration::from_secs(30)).unwrap();
            assert!(got == want, "{m}: {len} bytes");
        }
    }
}

#[test]
fn panic_exit_and_signals() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx.process(boom, ()).start().unwrap();
        match p.join_timeout(Duration::from_secs(20)) {
            Err(Error::Panicked { message }) => assert_eq!(message, "boom 42", "{m}"),
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(p.exitcode(), Some(1), "{m}");

        let mut p = ctx.process(exit3, ()).start().unwrap();
        assert!(matches!(
            p.join_timeout(Duration::from_secs(20)),
            Err(Error::Exited { exitcode: 3 })
        ));
        assert_eq!(p.exitcode(), Some(3), "{m}");

        let mut p = ctx.process(segv, ()).start().unwrap();
        let _ = p.join_timeout(Duration::from_secs(20));
        assert_eq!(p.exitcode(), Some(-11), "{m}");

        let mut p = ctx.process(sleep_ms, 30_000).start().unwrap();
        assert!(matches!(
            p.join_timeout(Duration::from_millis(50)),
            Err(Error::Timeout)
        ));
        assert!(p.is_alive(), "{m}");
        assert_eq!(p.exitcode(), None);
        p.terminate().unwrap();
        let _ = p.join_timeout(Duration::from_secs(20));
        assert_eq!(p.exitcode(), Some(-15), "{m}");

        let mut p = ctx.process(sleep_ms, 30_000).start().unwrap();
        p.kill().unwrap();
        let _ = p.join_timeout(Duration::from_secs(20));
        assert_eq!(p.exitcode(), Some(-9), "{m}");
    }
}

#[test]
fn nested_children_any_method() {
    for outer in METHODS {
        for inner in METHODS {
            let ctx = get_context(outer).unwrap();
            let mut p = ctx.process(nested, inner.to_string()).start().unwrap();
            assert_eq!(
                p.join_timeout(Duration::from_secs(30)).unwrap(),
                42,
                "{outer}->{inner}"
            );
        }
    }
}

#[test]
fn identity_and_names() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx.process(whoami, ()).name("worker-x").start().unwrap();
        let (name, daemon, parent) = p.join_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(name, "worker-x");
        assert!(!daemon);
        assert_eq!(parent, Some(std::process::id() as i32), "{m}");
        assert_eq!(p.name(), "worker-x");
        assert_eq!(p.start_method(), m.parse::<StartMethod>().unwrap());
    }
}

#[test]
fn sees_cwd_and_env_set_after_start() {
    // Set after the fork server started (other tests launched it already).
    let dir = std::env::temp_dir().join(format!("mproc-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = get_context("forkserver")
        .unwrap()
        .process(add, (1, 1))
        .start()
        .unwrap()
        .join();
    // SAFETY: no other test of this binary reads this variable.
    unsafe { std::env::set_var("MPROC_TEST_LATE_VAR", "late") };
    let old = std::env::current_dir().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    let mut results = Vec::new();
    for (m, ctx) in common::contexts() {
        let mut p = ctx
            .process(env_and_cwd, "MPROC_TEST_LATE_VAR".to_string())
            .start()
            .unwrap();
        results.push((m, p.join_timeout(Duration::from_secs(20)).unwrap()));
    }
    std::env::set_current_dir(old).unwrap();
    for (m, (var, cwd)) in results {
        assert_eq!(var.as_deref(), Some("late"), "{m}");
        assert_eq!(
            cwd,
            dir.canonicalize().unwrap().display().to_string(),
            "{m}"
        );
    }
}

fn wait_then_mutate((go, ms): (Event, u64)) -> (bool, u64) {
    // The parent sets `go` only once `start` has returned: had `start`
    // waited for this child, this wait would time out.
    let went = go.wait_timeout(Duration::from_secs(30)).is_ok();
    std::thread::sleep(Duration::from_millis(ms));
    (
        went,
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
    )
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

/// The seeds' behaviours: without `join` the parent goes on at once; `join`
/// blocks until the child is done; a child's change to its copy of the data
/// is invisible to the parent.
#[test]
fn seeds_join_and_data_copies() {
    for (m, ctx) in common::contexts() {
        let go = Event::new().unwrap();
        let mut p = ctx
            .process(wait_then_mutate, (go.clone(), 300))
            .start()
            .unwrap();
        // `start` returned while the child still waits for us.
        assert!(p.is_alive(), "{m}");
        let t = std::time::Instant::now();
        go.set();
        let (went, child_saw) = p.join_timeout(Duration::from_secs(20)).unwrap();
        assert!(went, "{m}: start waited for the child");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{m}: join returned early"
        );
        assert_eq!(child_saw, 101, "{m}");
        assert_eq!(
            COUNTER.load(std::sync::atomic::Ordering::SeqCst),
            100,
            "{m}: the child's change leaked into the parent"
        );
    }
}

#[test]
fn active_children_before_and_after_each_method() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx.process(sleep_ms, 30_000).start().unwrap();
        assert_eq!(p.exitcode(), None);
        assert!(
            mproc::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m}"
        );
        p.kill().unwrap();
        let _ = p.join_timeout(Duration::from_secs(20));
        assert_eq!(p.exitcode(), Some(-9), "{m}");
        assert!(
            !mproc::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m}"
        );
    }
}

#[test]
fn start_method_setting() {
    assert_eq!(
        mproc::get_all_start_methods()[0],
        StartMethod::ForkServer,
        "default first"
    );
    assert!(mproc::cpu_count() >= 1);
    assert_eq!(mproc::current_process().name(), "MainProcess");
    assert!(mproc::parent_process().is_none());
    assert_eq!(mproc::current_process().authkey().len(), 32);
}

#[test]
fn bad_method_name() {
    let e = get_context("threads").unwrap_err();
    assert!(e.to_string().contains("forkserver"));
}

/// The child's default start method, and the one a child of its own
/// started from the default context reports.
fn default_methods(_: ()) -> (String, String) {
    let own = mproc::get_start_method().name().to_string();
    let mut grandchild = mproc::default_context()
        .process(|_: ()| mproc::get_start_method().name().to_string(), ())
        .start()
        .expect("grandchild");
    let theirs = grandchild
        .join_timeout(Duration::from_secs(30))
        .expect("grandchild's method");
    (own, theirs)
}

/// A child's `get_start_method()` is the method that started it, not its
/// parent's default: a `spawn` child using the default context starts
/// `spawn` children (it used to start `forkserver` ones).
#[test]
fn child_start_method_is_its_own_not_the_parents_default() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx.process(default_methods, ()).start().unwrap();
        let (own, theirs) = p.join_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!((own.as_str(), theirs.as_str()), (m, m));
    }
}

/// Sleeps with SIGINT at its default action (a test run in the
/// background of a shell inherits it ignored), once `ready` is set.
fn nap(ready: Event) {
    // SAFETY: setting a signal's disposition to its default; no handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    ready.set();
    std::thread::sleep(Duration::from_secs(60));
}

/// `interrupt()` (Python 3.14) sends SIGINT: exitcode `-2`.
#[test]
fn interrupt_sends_sigint() {
    for (m, ctx) in common::contexts() {
        let ready = Event::new().unwrap();
        let mut p = ctx.process(nap, ready.clone()).start().unwrap();
        ready.wait_timeout(Duration::from_secs(30)).unwrap();
        p.interrupt().unwrap();
        assert!(p.join_timeout(Duration::from_secs(30)).is_err(), "{m}");
        assert_eq!(p.exitcode(), Some(-libc::SIGINT), "{m}");
        // Already reaped: a no-op, not an error.
        p.interrupt().unwrap();
    }
}

/// The grandchild: watches its parent, which the test kills.
fn watch_parent(args: (Event, Event, mproc::Value<u32>)) {
    let (watching, done, result) = args;
    let parent = mproc::parent_process().expect("a parent");
    let waited_while_alive = parent.is_alive()
        && matches!(
            parent.join_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        )
        && parent.sentinel().is_some();
    watching.set();
    let joined = parent.join_timeout(Duration::from_secs(30)).is_ok() && !parent.is_alive();
    // A handle made after the parent ended knows it at once.
    let again = mproc::parent_process().expect("a parent");
    let late = !again.is_alive() && again.join_timeout(Duration::ZERO).is_ok();
    result.set(u32::from(waited_while_alive) | u32::from(joined) << 1 | u32::from(late) << 2);
    done.set();
}

/// The child: starts the watcher, then waits to be killed.
fn start_watcher(args: (Event, Event, mproc::Value<u32>)) {
    let _g = mproc::default_context()
        .process(watch_parent, args)
        .start()
        .expect("grandchild");
    std::thread::sleep(Duration::from_secs(60));
}

/// `parent_process().join(timeout)`: a child sees its parent still
/// running, then sees it end.
#[test]
fn parent_process_join_sees_the_parent_end() {
    const T: Duration = Duration::from_secs(30);
    for (m, ctx) in common::contexts() {
        let (watching, done) = (Event::new().unwrap(), Event::new().unwrap());
        let result = mproc::Value::new(0u32).unwrap();
        let args = (watching.clone(), done.clone(), result.clone());
        let mut child = ctx.process(start_watcher, args).start().unwrap();
        watching.wait_timeout(T).expect("the grandchild watches");
        child.kill().unwrap();
        let _ = child.join_timeout(T);
        done.wait_timeout(T)
            .expect("the grandchild saw its parent end");
        assert_eq!(result.get(), 0b111, "{m}");
    }
}
