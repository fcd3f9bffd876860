//! Daemonic processes: they die with their parent, also when the parent is
//! SIGKILLed, and may not have children of their own.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use mproc::{Error, get_context};
use testkit::eventually;

use common::METHODS;

fn sleep_forever(_: ()) {
    std::thread::sleep(Duration::from_secs(120));
}

fn start_grandchild(_: ()) -> bool {
    matches!(
        get_context("fork")
            .unwrap()
            .process(sleep_forever, ())
            .start(),
        Err(Error::DaemonChildren)
    )
}

/// Starts a daemonic child with `method`, writes its pid to `file`, sleeps.
fn parent_with_daemon((method, file): (String, PathBuf)) {
    let p = get_context(&method)
        .unwrap()
        .process(sleep_forever, ())
        .daemon(true)
        .start()
        .unwrap();
    std::fs::write(&file, p.pid().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

fn gone(pid: i32) -> bool {
    // Dead, or a zombie waiting for a reaper that is not us.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn daemon_cannot_have_children() {
    for (m, ctx) in common::contexts() {
        let mut p = ctx
            .process(start_grandchild, ())
            .daemon(true)
            .start()
            .unwrap();
        assert!(p.daemon());
        assert!(p.join_timeout(Duration::from_secs(20)).unwrap(), "{m}");
    }
}

#[test]
fn daemon_dies_when_parent_is_killed() {
    for outer in ["spawn", "forkserver"] {
        for inner in METHODS {
            let file = std::env::temp_dir().join(format!(
                "mproc-daemon-{}-{outer}-{inner}",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&file);
            let mut parent = get_context(outer)
                .unwrap()
                .process(parent_with_daemon, (inner.to_string(), file.clone()))
                .start()
                .unwrap();
            let mut pid = 0;
            assert!(
                eventually(Duration::from_secs(20), || {
                    pid = std::fs::read_to_string(&file)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    pid > 0
                }),
                "{outer}/{inner}: daemon never started"
            );
            assert!(!gone(pid));
            parent.kill().unwrap();
            let _ = parent.join_timeout(Duration::from_secs(10));
            assert_eq!(parent.exitcode(), Some(-9));
            assert!(
                eventually(Duration::from_secs(10), || gone(pid)),
                "{outer}/{inner}: daemon {pid} survived its parent"
            );
            let _ = std::fs::remove_file(&file);
        }
    }
}

#[test]
fn active_children_and_exitcode() {
    let ctx = get_context("forkserver").unwrap();
    let mut p = ctx.process(sleep_forever, ()).start().unwrap();
    assert_eq!(p.exitcode(), None);
    assert!(mproc::active_children().iter().any(|c| c.pid() == p.pid()));
    p.terminate().unwrap();
    let _ = p.join_timeout(Duration::from_secs(10));
    assert_eq!(p.exitcode(), Some(-15));
    assert!(!mproc::active_children().iter().any(|c| c.pid() == p.pid()));
}
