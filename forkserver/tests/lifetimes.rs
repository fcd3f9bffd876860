//! Who outlives whom: daemonic children die with their connection (SIGTERM,
//! then SIGKILL after the grace period), ordinary children do not; the
//! server exits when the root connection closes; a server killed with
//! SIGKILL fails the requests in flight with a typed error and is relaunched
//! by the next spawn.
mod common;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver::{Child, Command, EntryArgs, Error, ForkServer};

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        b"exit3" => 3,
        b"sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        b"ignore-term" => {
            // SAFETY: SIG_IGN runs no code; this child has one thread.
            #[allow(unsafe_code)]
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN)
            };
            if let Ok(fd) = start.take_fd(3) {
                let _ = std::fs::File::from(fd).write_all(b"ready");
            }
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

const T: Duration = Duration::from_secs(10);

/// A two-minute watchdog named `what`, then a server of the tests'
/// configuration and a pidfd on it; `None` where the kernel has no pidfds
/// (the test then skips).
fn launch_watched(what: &'static str) -> Option<(common::Watchdog, ForkServer, OwnedFd)> {
    let w = common::watchdog(what, Duration::from_secs(120));
    let fs = ForkServer::launch(common::config()).expect("launch");
    let fd = common::pidfd_open(fs.pid())?;
    Some((w, fs, fd))
}

/// A pidfd of our own, independent of the child handle's lifetime.
fn pidfd_of(c: &Child) -> OwnedFd {
    c.pidfd()
        .expect("Linux 5.3+ hands out pidfds")
        .try_clone_to_owned()
        .unwrap()
}

#[test]
fn daemonic_children_die_with_their_connection() {
    let _w = common::watchdog("daemons", Duration::from_secs(120));
    let grace = Duration::from_millis(300);
    let fs = ForkServer::launch(common::config().grace(grace)).expect("launch");
    let conn = fs.connect().unwrap();

    let term = conn
        .spawn(&Command::run(b"sleep".to_vec()).daemon(true))
        .unwrap();
    let (r, w) = std::io::pipe().unwrap();
    let cmd = Command::run(b"ignore-term".to_vec())
        .daemon(true)
        .fd(w.as_fd(), 3);
    let stubborn = conn.spawn(&cmd).unwrap();
    drop(cmd);
    drop(w);
    // Wait until it really ignores SIGTERM, so the escalation is what we see.
    assert_eq!(common::read_to_end(r.into(), T), b"ready");
    let plain = conn.spawn(&Command::run(b"sleep".to_vec())).unwrap();
    let (term_fd, stubborn_fd, plain_fd) = (pidfd_of(&term), pidfd_of(&stubborn), pidfd_of(&plain));
    assert!(!common::exited(&term_fd, Duration::from_millis(50)));

    // Close the connection (the child handles share its socket).
    let closed = Instant::now();
    drop((term, stubborn, plain, conn));
    assert!(common::exited(&term_fd, T), "SIGTERM ends a daemon");
    assert!(
        common::exited(&stubborn_fd, T),
        "SIGKILL ends a daemon that ignores SIGTERM"
    );
    let took = closed.elapsed();
    assert!(
        took >= grace - Duration::from_millis(50),
        "the stubborn daemon died after {took:?}, before the grace of {grace:?}"
    );
    assert!(
        !common::exited(&plain_fd, Duration::from_millis(200)),
        "a non-daemonic child outlives its connection"
    );
    common::pidfd_kill(&plain_fd, libc::SIGKILL);
    assert!(common::exited(&plain_fd, T));
    // The server, meanwhile, serves on.
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
}

#[test]
fn server_exits_when_the_root_closes() {
    let _w = common::watchdog("root close", Duration::from_secs(120));
    let fs =
        ForkServer::launch(common::config().grace(Duration::from_millis(200))).expect("launch");
    let server = fs.pid();
    let Some(server_fd) = common::pidfd_open(server) else {
        return;
    };
    let daemon = fs
        .spawn(&Command::run(b"sleep".to_vec()).daemon(true))
        .unwrap();
    let plain = fs.spawn(&Command::run(b"sleep".to_vec())).unwrap();
    let (daemon_fd, plain_fd) = (pidfd_of(&daemon), pidfd_of(&plain));
    drop((daemon, plain));

    let t = Instant::now();
    drop(fs);
    assert!(common::exited(&server_fd, T), "server still running");
    assert!(
        common::exited(&daemon_fd, T),
        "daemonic child still running"
    );
    eprintln!("server gone {:?} after the root closed", t.elapsed());
    // Dropping the handle also reaps the server: no zombie of ours is left.
    assert!(
        common::eventually(T, || !std::path::Path::new(&format!("/proc/{server}"))
            .exists()),
        "the server was not reaped"
    );
    // A non-daemonic child is not the server's to kill.
    assert!(!common::exited(&plain_fd, Duration::from_millis(100)));
    common::pidfd_kill(&plain_fd, libc::SIGKILL);
    assert!(common::exited(&plain_fd, T));
}

#[test]
fn sigkilled_server_fails_waiters_and_is_relaunched() {
    let Some((_w, fs, old_fd)) = launch_watched("relaunch") else {
        return;
    };
    let old = fs.pid();
    let mut orphan = fs.spawn(&Command::run(b"sleep".to_vec())).unwrap();
    let orphan_fd = pidfd_of(&orphan);

    std::thread::scope(|s| {
        // A request in flight when the server dies: a wait on a child.
        let waiter = s.spawn(|| orphan.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        common::pidfd_kill(&old_fd, libc::SIGKILL);
        match waiter.join().unwrap() {
            Err(Error::ServerGone(_)) => {}
            other => panic!("expected ServerGone for the waiter, got {other:?}"),
        }
    });
    assert!(common::exited(&old_fd, T));

    // The next spawn relaunches and works.
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
    assert_ne!(fs.pid(), old);
    // The dead server was reaped by the relaunch.
    assert!(!std::path::Path::new(&format!("/proc/{old}")).exists());
    // The old server's child was not killed with it (it was not daemonic).
    assert!(!common::exited(&orphan_fd, Duration::from_millis(50)));
    common::pidfd_kill(&orphan_fd, libc::SIGKILL);
    assert!(common::exited(&orphan_fd, T));
    drop(orphan);

    // And again, with the death noticed before the next spawn.
    let second = fs.pid();
    let second_fd = common::pidfd_open(second).unwrap();
    common::pidfd_kill(&second_fd, libc::SIGKILL);
    assert!(common::exited(&second_fd, T));
    assert!(fs.connection().unwrap().ping().is_err());
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
    assert_ne!(fs.pid(), second);

    // And once more, with the death unnoticed: the spawn itself finds the
    // socket closed before its request leaves, relaunches and retries.
    let third = fs.pid();
    let third_fd = common::pidfd_open(third).unwrap();
    common::pidfd_kill(&third_fd, libc::SIGKILL);
    assert!(common::exited(&third_fd, T));
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
    assert_ne!(fs.pid(), third);
}

#[test]
fn dropping_the_handle_of_a_stopped_server_does_not_hang() {
    let Some((_w, fs, server_fd)) = launch_watched("stopped server") else {
        return;
    };
    common::pidfd_kill(&server_fd, libc::SIGSTOP);
    let t = Instant::now();
    drop(fs);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "drop took {:?}",
        t.elapsed()
    );
    common::pidfd_kill(&server_fd, libc::SIGKILL);
    assert!(common::exited(&server_fd, T));
}

#[test]
fn server_exits_on_root_eof_without_a_shutdown_request() {
    let _w = common::watchdog("root eof", Duration::from_secs(120));
    // Launch by hand, so nothing sends Shutdown: closing is all there is.
    let mut pair = [0; 2];
    // SAFETY: socketpair writes two fds into our array.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    #[allow(unsafe_code)]
    let (ours, theirs) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1]))
    };
    let pid = forkserver::spawn_role(
        forkserver::SERVER_ROLE,
        theirs.as_fd(),
        &[("grace_ms", "200".to_string())],
        "forkserver-test".as_ref(),
    )
    .unwrap();
    drop(theirs);
    let conn = forkserver::ServerConnection::handshake(ours, T).unwrap();
    assert_eq!(conn.server_pid(), pid);
    let daemon = conn
        .spawn(&Command::run(b"sleep".to_vec()).daemon(true))
        .unwrap();
    let daemon_fd = pidfd_of(&daemon);
    drop(daemon);
    drop(conn);
    assert!(
        common::exited(&daemon_fd, T),
        "daemonic child still running"
    );
    let mut status = None;
    assert!(common::eventually(T, || {
        status = forkserver::reap(pid, false);
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0), "a clean exit");
}

#[test]
fn spawn_in_flight_when_the_server_dies_fails_and_is_not_retried() {
    let Some((_w, fs, old_fd)) = launch_watched("spawn in flight") else {
        return;
    };
    let old = fs.pid();
    // A stopped server takes the request but cannot answer it.
    common::pidfd_kill(&old_fd, libc::SIGSTOP);
    std::thread::scope(|s| {
        let spawner = s.spawn(|| fs.spawn(&Command::run(b"exit3".to_vec())));
        std::thread::sleep(Duration::from_millis(200));
        common::pidfd_kill(&old_fd, libc::SIGKILL);
        match spawner.join().unwrap() {
            Err(Error::ServerGone(_)) => {}
            other => panic!("expected ServerGone for the spawn in flight, got {other:?}"),
        }
    });
    // The failed spawn did not start a second server behind our back.
    assert_eq!(fs.pid(), old);
    assert!(common::exited(&old_fd, T));
    let mut c = fs.spawn(&Command::run(b"exit3".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(3));
    assert_ne!(fs.pid(), old);
}
