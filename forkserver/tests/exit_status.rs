//! How children end, as the parent sees it: exit codes, signals, exec, and
//! spawns that fail in the child's set-up.
mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use forkserver::{Command, EntryArgs, Error, ForkServer};

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        b"exit3" => 3,
        b"sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        b"panic" => panic!("child panics on purpose"),
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

fn server() -> ForkServer {
    ForkServer::launch(common::config()).expect("launch")
}

#[test]
fn exit_code_3_is_reported_as_3() {
    let _w = common::watchdog("exit_code_3", Duration::from_secs(60));
    let fs = server();
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    let st = common::wait(&mut c);
    assert_eq!(st.code(), Some(3));
    assert_eq!(st.signal(), None);
    assert_eq!(st.exitcode(), 3);
    assert!(!st.success());
}

#[test]
fn sigkill_is_reported_as_signal_9() {
    let _w = common::watchdog("sigkill", Duration::from_secs(60));
    let fs = server();
    let mut c = fs.spawn(&Command::run(b"sleep".to_vec())).unwrap();
    assert!(c.pidfd().is_some(), "Linux 5.3+ hands out pidfds");
    assert!(c.try_wait().unwrap().is_none());
    assert!(
        c.wait_timeout(Duration::from_millis(50)).unwrap().is_none(),
        "a sleeping child is still running"
    );
    c.signal(libc::SIGKILL).unwrap();
    let st = common::wait(&mut c);
    assert_eq!(st.signal(), Some(9));
    assert_eq!(st.code(), None);
    assert_eq!(
        st.exitcode(),
        -9,
        "CPython's exitcode rule: -N for signal N"
    );
    // Signalling a reaped child is a no-op, not an error or a stray kill.
    c.signal(libc::SIGKILL).unwrap();
}

#[test]
fn exec_reports_its_code_and_writes_through_a_passed_pipe() {
    let _w = common::watchdog("exec", Duration::from_secs(60));
    let fs = server();
    let (r, w) = std::io::pipe().unwrap();
    let cmd = Command::exec("/bin/sh", ["-c", "echo hi; exit 7"]).fd(w.as_fd(), 1);
    let mut c = fs.spawn(&cmd).unwrap();
    drop(cmd);
    drop(w);
    let out = common::read_to_end(r.into(), common::WAIT);
    assert_eq!(out, b"hi\n");
    assert_eq!(common::wait(&mut c).code(), Some(7));
}

#[test]
fn panicking_entry_exits_101_and_does_not_touch_the_server() {
    let _w = common::watchdog("panic", Duration::from_secs(60));
    let fs = server();
    // Keep the child's panic message out of the test output.
    let (_r, w) = std::io::pipe().unwrap();
    let mut c = fs
        .spawn(&Command::run(b"panic".to_vec()).fd(w.as_fd(), 2))
        .unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(101));
    // The unwind stopped in the child: the server still serves.
    common::reserved(&fs);
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
}

#[test]
fn failed_exec_and_chdir_are_spawn_errors() {
    let _w = common::watchdog("spawn errors", Duration::from_secs(60));
    let fs = server();
    match fs.spawn(&Command::exec("/nonexistent/program", [""; 0])) {
        Err(e @ Error::SpawnFailed { .. }) => {
            assert!(matches!(&e, Error::SpawnFailed { stage, .. } if stage == "exec"));
            assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound), "{e:?}");
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    // The rest through the warm child reserved since (with warm children on).
    common::reserved(&fs);
    match fs.spawn(&Command::run(b"".to_vec()).cwd("/nonexistent/dir")) {
        Err(e @ Error::SpawnFailed { .. }) => {
            assert!(matches!(&e, Error::SpawnFailed { stage, .. } if stage == "chdir"));
            assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound), "{e:?}");
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
    // A file that is not executable: PermissionDenied, as Command gives.
    let dir = std::env::temp_dir().join(format!("fs-noexec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let std_kind = std::process::Command::new(&file)
        .spawn()
        .unwrap_err()
        .kind();
    common::reserved(&fs);
    match fs.spawn(&Command::exec(&file, [""; 0])) {
        Err(e) => assert_eq!(e.io_kind(), Some(std_kind), "{e:?}"),
        Ok(_) => panic!("a file without the x bit ran"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Neither failure costs the connection anything.
    common::reserved(&fs);
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
}
