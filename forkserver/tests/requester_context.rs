//! A child starts in the requester's environment, working directory and
//! stdio as they are at the request, not as they were when the server
//! started (CPython's forkserver and Chromium's zygote get this wrong); a
//! large environment travels through a sealed memfd; and a child holds
//! exactly the fds it was given.
//!
//! One test in its own binary: it changes the process's environment, cwd
//! and fd 1, which are shared by every thread.
#![allow(unsafe_code)]

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use forkserver::{Command, EntryArgs, ForkServer};

fn entry(start: EntryArgs) -> i32 {
    let report = match start.data.as_slice() {
        b"context" => format!(
            "{}|{}",
            std::env::var("FS_TEST_LATE").unwrap_or_default(),
            std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        b"big" => format!("{}", std::env::var("FS_BIG").map(|v| v.len()).unwrap_or(0)),
        b"early" => std::env::var("FS_TEST_EARLY").unwrap_or_else(|_| "-".into()),
        b"bind_now" => std::env::var("LD_BIND_NOW").unwrap_or_else(|_| "-".into()),
        b"marker" => std::path::Path::new("marker").exists().to_string(),
        b"nofile" => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills our struct.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
            lim.rlim_cur.to_string()
        }
        b"fds" => {
            let open: Vec<String> = (0..1024)
                // SAFETY: F_GETFD on any integer only reports whether it is open.
                .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
                .map(|fd| fd.to_string())
                .collect();
            open.join(" ")
        }
        _ => return 2,
    };
    // Fd 1 is whatever the requester had (or passed) at the request.
    let mut out = std::io::stdout().lock();
    if out
        .write_all(report.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return 3;
    }
    0
}
forkserver::bootstrap!(entry);

const T: Duration = Duration::from_secs(10);

/// Spawns `cmd` with a pipe as its fd 1, and returns what the child wrote
/// to the pipe once it has exited with 0.
fn output(fs: &ForkServer, cmd: Command<'_>) -> String {
    let (r, w) = std::io::pipe().unwrap();
    let cmd = cmd.fd(w.as_fd(), 1);
    common::reserved(fs);
    let mut c = fs.spawn(&cmd).unwrap();
    drop(cmd);
    drop(w);
    let out = String::from_utf8(common::read_to_end(r.into(), T)).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(0));
    out
}

#[test]
fn child_gets_the_requesters_context_at_request_time() {
    let _w = common::watchdog("context", Duration::from_secs(120));
    // A usual soft fd limit below the hard one: the server raises its own,
    // and its children must get the usual one back.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills our struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let usual = lim.rlim_cur.min(1024);
    lim.rlim_cur = usual;
    // SAFETY: setrlimit reads our struct; lowering the soft limit is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    // SAFETY: the only test of this binary (see below).
    unsafe { std::env::set_var("FS_TEST_EARLY", "at-launch") };
    let fs = ForkServer::launch(common::config()).expect("launch");
    let (r, w) = std::io::pipe().unwrap();
    let cmd = Command::run(b"nofile".to_vec()).fd(w.as_fd(), 1);
    let mut c = fs.spawn(&cmd).unwrap();
    drop(cmd);
    drop(w);
    assert_eq!(
        String::from_utf8(common::read_to_end(r.into(), T)).unwrap(),
        usual.to_string()
    );
    assert_eq!(common::wait(&mut c).code(), Some(0));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", fs.pid())).unwrap();
    let server_soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        server_soft,
        Some(lim.rlim_max),
        "the server raises its own soft fd limit"
    );

    // 1. Environment and cwd changed after the launch.
    let dir = std::env::temp_dir().join(format!("forkserver-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let old_cwd = std::env::current_dir().unwrap();
    // SAFETY: the only test of this binary; no other thread reads the
    // environment through libc meanwhile (std's own accesses are locked).
    unsafe { std::env::set_var("FS_TEST_LATE", "set-after-launch") };
    std::env::set_current_dir(&dir).unwrap();

    // 2. Stdio at the request: point our own fd 1 at a pipe for the spawn.
    let (r, w) = std::io::pipe().unwrap();
    // SAFETY: dup/dup2 on fds we own; fd 1 is restored right after the
    // spawn, and the test harness does not write to it meanwhile (it
    // captures test output in memory).
    let saved = unsafe { libc::dup(1) };
    assert!(saved >= 0);
    // SAFETY: as above.
    let moved = unsafe { libc::dup2(w.as_raw_fd(), 1) };
    assert_eq!(moved, 1);
    common::reserved(&fs);
    let spawned = fs.spawn(&Command::run(b"context".to_vec()));
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    drop(w);
    let mut c = spawned.unwrap();
    let out = String::from_utf8(common::read_to_end(r.into(), T)).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(0));
    assert_eq!(out, format!("set-after-launch|{}", dir.display()));

    // An exec child sees the same.
    let out = output(
        &fs,
        Command::exec(
            "/bin/sh",
            ["-c", "printf '%s|%s' \"$FS_TEST_LATE\" \"$PWD\""],
        ),
    );
    assert_eq!(out, format!("set-after-launch|{}", dir.display()));

    std::env::set_current_dir(&old_cwd).unwrap();
    // SAFETY: as above.
    unsafe { std::env::remove_var("FS_TEST_LATE") };
    let _ = std::fs::remove_dir(&dir);

    // A variable the server itself has (it was set at launch) and the
    // requester has since removed is not seen; set again, it is. (A request
    // leaves out an environment equal to the server's: both cases check
    // that the comparison goes the right way.)
    let early = |fs: &ForkServer| output(fs, Command::run(b"early".to_vec()));
    assert_eq!(early(&fs), "at-launch");
    // SAFETY: as above.
    unsafe { std::env::remove_var("FS_TEST_EARLY") };
    assert_eq!(early(&fs), "-");
    // SAFETY: as above.
    unsafe { std::env::set_var("FS_TEST_EARLY", "changed") };
    assert_eq!(early(&fs), "changed");
    // SAFETY: as above.
    unsafe { std::env::set_var("FS_TEST_EARLY", "at-launch") };
    assert_eq!(early(&fs), "at-launch");

    // The server starts with LD_BIND_NOW=1 (so that its children inherit
    // resolved symbols); children, entries and execs alike, see the
    // requester's value. (The server also takes it out of its own
    // environment, so that a request from an unchanged environment can
    // still leave its environment out.)
    let ours = std::env::var("LD_BIND_NOW").unwrap_or_else(|_| "-".into());
    if ours == "-" {
        let at_start = std::fs::read(format!("/proc/{}/environ", fs.pid())).unwrap();
        assert!(
            at_start.split(|b| *b == 0).any(|kv| kv == b"LD_BIND_NOW=1"),
            "the server started with LD_BIND_NOW=1"
        );
    }
    assert_eq!(output(&fs, Command::run(b"bind_now".to_vec())), ours);
    let sh = Command::exec("/bin/sh", ["-c", "printf '%s' \"${LD_BIND_NOW--}\""]);
    assert_eq!(output(&fs, sh), ours);

    // A directory removed and made again at the same path is another
    // directory: a server started in the old one must still send its child
    // to the new one, though the paths are equal.
    let again = std::env::temp_dir().join(format!("forkserver-again-{}", std::process::id()));
    std::fs::create_dir_all(&again).unwrap();
    std::env::set_current_dir(&again).unwrap();
    let fs2 = ForkServer::launch(common::config()).expect("launch in the old directory");
    std::env::set_current_dir(&old_cwd).unwrap();
    std::fs::remove_dir(&again).unwrap();
    std::fs::create_dir(&again).unwrap();
    std::fs::write(again.join("marker"), b"").unwrap();
    std::env::set_current_dir(&again).unwrap();
    let out = output(&fs2, Command::run(b"marker".to_vec()));
    assert_eq!(out, "true", "the child is in the new directory");
    std::env::set_current_dir(&old_cwd).unwrap();
    drop(fs2);
    let _ = std::fs::remove_dir_all(&again);

    // 3. A large environment (> 64 KiB, over one frame) goes through a
    // sealed memfd, for an entry and for an exec.
    let big = "x".repeat(100_000);
    let out = output(&fs, Command::run(b"big".to_vec()).env("FS_BIG", &big));
    assert_eq!(out, "100000");

    let many: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("FS_MANY_{i}"), "v".repeat(100)))
        .collect();
    let cmd = Command::exec(
        "/bin/sh",
        ["-c", "printf '%s %s' \"${#FS_BIG}\" \"${#FS_MANY_1999}\""],
    )
    .envs(many)
    .env("FS_BIG", &big);
    assert_eq!(output(&fs, cmd), "100000 100");

    // 4. A child holds exactly the fds it was given: 0, 1, 2 and the
    // slots asked for; nothing of the server's or the parent's leaks in.
    let extra = std::fs::File::open("/dev/null").unwrap();
    // An entry child scans its fd table without opening anything.
    let out = output(&fs, Command::run(b"fds".to_vec()).fd(extra.as_fd(), 7));
    assert_eq!(out, "0 1 2 7", "entry child fds");
    // Without the requester's stdio, only what was passed.
    let out = output(&fs, Command::run(b"fds".to_vec()).inherit_stdio(false));
    assert_eq!(out, "1", "entry child fds without inherited stdio");
    // An exec child: `ls` opens the directory it lists at the lowest free
    // number, which is 3 unless something leaked in.
    let out = output(
        &fs,
        Command::exec("/bin/ls", ["/proc/self/fd"]).fd(extra.as_fd(), 7),
    );
    let mut fds: Vec<u32> = out
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, vec![0, 1, 2, 3, 7], "exec child fds: {out}");
}
