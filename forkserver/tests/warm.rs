//! Warm children: a spawn is handed to the waiting warm child, which then
//! looks like a fresh child from the inside; a warm child holds nothing of
//! the server's or its clients' and dies with its server.
//!
//! The child contract itself (cwd, environment, fds, signals, exit status,
//! lifetimes, leaks) is tested by the other test files, which run with the
//! default of warm children on and, from `ci/test.sh`, with
//! `FORKSERVER_TEST_WARM=0`.
#![allow(unsafe_code)]
mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use forkserver::{Command, EntryArgs, ForkServer, LaunchConfig};

/// Writes what the child sees of itself into slot 3: its name, its parent,
/// its open fds, its data, its directory and `$WARM_TEST`. Two other
/// roles: `linger` (writes its pid, then waits to be killed) and `client`
/// (a requester that dies without a word, see
/// `a_requester_that_dies_right_after_a_direct_spawn`).
fn entry(start: EntryArgs) -> i32 {
    if start.data.starts_with(b"client") {
        return client(start);
    }
    if start.data == b"swap" {
        // Each slot says which it is.
        for slot in [3, 4] {
            let Ok(fd) = start.take_fd(slot) else {
                return 2;
            };
            let _ = std::fs::File::from(fd).write_all(format!("slot {slot}").as_bytes());
        }
        return 0;
    }
    let Ok(fd) = start.take_fd(3) else { return 2 };
    if start.data == b"linger" {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(std::process::id().to_string().as_bytes());
        drop(f);
        std::thread::sleep(Duration::from_secs(60));
        return 0;
    }
    let mut f = std::fs::File::from(fd);
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let line = format!(
        "{}|{}|{}|{}|{}|{}",
        comm.trim_end(),
        std::os::unix::process::parent_id(),
        fds.len(),
        String::from_utf8_lossy(&start.data),
        std::env::current_dir().unwrap_or_default().display(),
        std::env::var("WARM_TEST").unwrap_or_default(),
    );
    if f.write_all(line.as_bytes()).is_err() {
        return 3;
    }
    0
}
forkserver::bootstrap!(entry);

/// A requester in a child of its own: on the connection at slot 4, spawns
/// once (so a warm child is reserved for it), waits for the reservation,
/// spawns `linger` (daemonic if its data says so) with slot 5 as the
/// child's slot 3, writes "<pid> <whether it was the reserved warm child>"
/// into slot 3, and exits at once, without a destructor: its claim is never
/// sent.
fn client(start: EntryArgs) -> i32 {
    let (Ok(report), Ok(sock), Ok(out)) = (start.take_fd(3), start.take_fd(4), start.take_fd(5))
    else {
        return 2;
    };
    let Ok(conn) = forkserver::ServerConnection::handshake(sock, common::WAIT) else {
        return 3;
    };
    let Ok(mut first) = conn.spawn(&Command::run(b"".to_vec())) else {
        return 4;
    };
    let _ = first.wait();
    let server = conn.server_pid();
    // The pool (two: one is the test's) refills once the server is idle;
    // this connection's reservation comes then.
    if !common::eventually(common::WAIT, || warm_pids(server).len() == 2) {
        return 5;
    }
    std::thread::sleep(Duration::from_millis(20));
    let warm = warm_pids(server);
    let daemon = start.data.ends_with(b"daemon");
    let cmd = Command::run(b"linger".to_vec())
        .fd(out.as_fd(), 3)
        .daemon(daemon);
    let Ok(child) = conn.spawn(&cmd) else {
        return 6;
    };
    let line = format!("{} {}", child.pid(), warm.contains(&child.pid()));
    let _ = std::fs::File::from(report).write_all(line.as_bytes());
    // SAFETY: ends this process at once, as a crash would.
    unsafe { libc::_exit(0) }
}

fn warm_pids(server: i32) -> Vec<i32> {
    let mut v: Vec<i32> = common::children_of(server)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| common::is_warm(*p))
        .collect();
    v.sort_unstable();
    v
}

/// The server reaps every child it forked (eventually: the last exits may
/// still be on their way).
fn assert_no_zombies(server: i32) {
    assert!(
        common::eventually(common::WAIT, || common::zombies_of(server as u32)
            .is_empty()),
        "zombies of {server}: {:?}",
        common::zombies_of(server as u32)
    );
}

fn launch(n: usize) -> ForkServer {
    let fs = ForkServer::launch(LaunchConfig::new().warm(n)).expect("launch");
    let server = fs.pid();
    assert!(
        common::eventually(common::WAIT, || warm_pids(server).len() == n),
        "the pool never filled: {:?}",
        common::children_of(server)
    );
    fs
}

#[test]
fn a_spawn_goes_to_the_waiting_warm_child_which_then_is_an_ordinary_child() {
    let _w = common::watchdog("warm spawn", Duration::from_secs(120));
    let fs = launch(1);
    let server = fs.pid();
    let warm = warm_pids(server)[0];
    // Waiting: stdio, its socket and its kick, nothing of the server's.
    assert_eq!(
        common::fd_count_of(warm),
        5,
        "{:?}",
        common::fd_list(Some(warm))
    );
    let (r, w) = std::io::pipe().unwrap();
    let mut c = fs
        .spawn(&Command::run(b"hello".to_vec()).fd(w.as_fd(), 3))
        .unwrap();
    drop(w);
    assert_eq!(c.pid(), warm, "the spawn did not go to the warm child");
    let out = String::from_utf8(common::read_to_end(r.into(), common::WAIT)).unwrap();
    let fields: Vec<&str> = out.split('|').collect();
    assert_eq!(fields.len(), 6, "{out}");
    assert_ne!(fields[0], "forkserver-warm", "still named as a warm child");
    assert_eq!(fields[1], server.to_string());
    // Stdio, the passed pipe, and the directory being listed.
    assert_eq!(fields[2], "5", "{out}");
    assert_eq!(fields[3], "hello");
    assert_eq!(common::wait(&mut c).code(), Some(0));
    // The pool refills once the server is idle.
    assert!(common::eventually(common::WAIT, || common::settled_with(
        server, 1
    )));
    assert_ne!(warm_pids(server), vec![warm]);
}

#[test]
fn back_to_back_spawns_beyond_the_pool_are_forked() {
    let _w = common::watchdog("warm burst", Duration::from_secs(120));
    let fs = launch(2);
    let server = fs.pid();
    let warm = warm_pids(server);
    let mut kids: Vec<_> = (0..6)
        .map(|_| fs.spawn(&Command::run(b"".to_vec())).unwrap())
        .collect();
    let mut pids: Vec<i32> = kids.iter().map(|c| c.pid()).collect();
    for c in &mut kids {
        // Slot 3 is empty: the entry returns 2.
        assert_eq!(common::wait(c).code(), Some(2));
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 6);
    assert!(warm.iter().all(|p| pids.contains(p)), "{warm:?} {pids:?}");
    assert!(common::eventually(common::WAIT, || common::settled_with(
        server, 2
    )));
}

#[test]
fn warm_children_die_with_their_server() {
    let _w = common::watchdog("warm orphan", Duration::from_secs(120));
    let fs = launch(3);
    let warm = warm_pids(fs.pid());
    let pidfds: Vec<_> = warm.iter().filter_map(|p| common::pidfd_open(*p)).collect();
    if pidfds.len() != warm.len() {
        return;
    }
    // SIGKILL: the server does nothing on its way out.
    assert_eq!(
        // SAFETY: kill with plain integers.
        unsafe { libc::kill(fs.pid(), libc::SIGKILL) },
        0
    );
    for (pid, fd) in warm.iter().zip(&pidfds) {
        assert!(
            common::exited(fd, common::WAIT),
            "warm child {pid} outlived its server"
        );
    }
    drop(fs);
}

/// A warm child killed just before a spawn reaches it: either the server
/// reaped it first and forks afresh (the entry runs), or the handover
/// finds it gone and the requester hears of a child killed by `SIGKILL`.
/// Either way nothing hangs, the server goes on serving and leaves no
/// zombie.
#[test]
fn a_warm_child_killed_before_its_handover_is_reported_or_replaced() {
    let _w = common::watchdog("warm killed", Duration::from_secs(300));
    let fs = launch(1);
    let server = fs.pid();
    let (mut ran, mut killed) = (0, 0);
    for _ in 0..20 {
        assert!(
            common::eventually(common::WAIT, || warm_pids(server).len() == 1),
            "the pool never refilled"
        );
        let warm = warm_pids(server)[0];
        // SAFETY: kill with a pid read from /proc just now; at worst the
        // pid is already gone (ESRCH).
        unsafe { libc::kill(warm, libc::SIGKILL) };
        let mut c = fs.spawn(&Command::run(b"".to_vec())).unwrap();
        let st = common::wait(&mut c);
        match (st.code(), st.signal()) {
            // Slot 3 is empty: the entry returns 2.
            (Some(2), None) => ran += 1,
            (None, Some(libc::SIGKILL)) => killed += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    eprintln!("entry ran {ran} times, handover to a dead child {killed} times");
    let mut c = fs.spawn(&Command::run(b"".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(2));
    assert_no_zombies(server);
}

/// Waits until `server` has its one warm child, and a moment more: the
/// server forks it, then sends the reservation, and the child may name
/// itself warm before the server (descheduled under load) has sent it.
fn settle_reserved(server: i32) {
    assert!(common::eventually(common::WAIT, || common::settled_with(
        server, 1
    )));
    std::thread::sleep(Duration::from_millis(20));
}

/// After its first spawn a connection has a warm child reserved for it,
/// and a spawn goes straight to that child, which sees the requester's
/// directory, environment and fds at the time of the call; set-up that
/// fails (a missing directory, a missing program) is the spawn's error, and
/// the next spawn is served as before.
#[test]
fn a_reserved_warm_child_takes_the_spawn_straight_from_the_requester() {
    let _w = common::watchdog("warm direct", Duration::from_secs(120));
    let fs = launch(1);
    let server = fs.pid();
    let spawn_ok = |cmd: &Command<'_>| {
        let mut c = fs.spawn(cmd).unwrap();
        let pid = c.pid();
        let code = common::wait(&mut c).code();
        (pid, code)
    };
    // The first spawn takes the pooled child and asks for reservations.
    spawn_ok(&Command::run(b"".to_vec()));
    let dir = std::env::temp_dir().join(format!("forkserver-warm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for round in 0..3 {
        settle_reserved(server);
        let warm = warm_pids(server)[0];
        let (r, w) = std::io::pipe().unwrap();
        let cmd = Command::run(format!("direct{round}").into_bytes())
            .fd(w.as_fd(), 3)
            .cwd(&dir)
            .env("WARM_TEST", format!("value{round}"));
        let mut c = fs.spawn(&cmd).unwrap();
        drop(cmd);
        drop(w);
        assert_eq!(c.pid(), warm, "round {round}: not the reserved child");
        let out = String::from_utf8(common::read_to_end(r.into(), common::WAIT)).unwrap();
        let fields: Vec<&str> = out.split('|').collect();
        assert_eq!(fields.len(), 6, "{out}");
        assert_ne!(fields[0], "forkserver-warm");
        assert_eq!(fields[1], server.to_string());
        assert_eq!(fields[2], "5", "{out}");
        assert_eq!(fields[3], format!("direct{round}"));
        assert_eq!(fields[4], dir.display().to_string());
        assert_eq!(fields[5], format!("value{round}"));
        assert_eq!(common::wait(&mut c).code(), Some(0));
    }
    // Set-up failures, each on the reserved child (which is then used up).
    let failing = [
        Command::run(b"".to_vec()).cwd(dir.join("missing")),
        Command::exec("forkserver-no-such-program", ["x"]),
    ];
    for cmd in &failing {
        settle_reserved(server);
        let warm = warm_pids(server)[0];
        let err = fs.spawn(cmd).expect_err("a set-up that fails");
        assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound), "{err}");
        assert!(
            common::eventually(common::WAIT, || !warm_pids(server).contains(&warm)),
            "the failing spawn did not go to the reserved child"
        );
    }
    settle_reserved(server);
    let warm = warm_pids(server)[0];
    let mut c = fs.spawn(&Command::exec("sh", ["-c", "exit 7"])).unwrap();
    assert_eq!(c.pid(), warm);
    assert_eq!(common::wait(&mut c).code(), Some(7));
    assert_eq!(spawn_ok(&Command::run(b"".to_vec())).1, Some(2));
    let _ = std::fs::remove_dir(&dir);
    assert_no_zombies(server);
}

/// A requester that dies right after a spawn went straight to its reserved
/// child, before it could tell the server (its claim is never sent): the
/// server judges by the child's kick, so a non-daemonic child runs on, as
/// any child of a closed connection does, and a daemonic one is
/// terminated.
#[test]
fn a_requester_that_dies_right_after_a_direct_spawn() {
    let _w = common::watchdog("warm orphaned spawn", Duration::from_secs(120));
    // Two warm children: one for the test's own connection, one for the
    // client's.
    let fs = launch(2);
    let server = fs.pid();
    let conn = fs.connection().unwrap();
    for daemon in [false, true] {
        let sock = conn.connect_raw().unwrap();
        let (report_r, report_w) = std::io::pipe().unwrap();
        let (out_r, out_w) = std::io::pipe().unwrap();
        let data = if daemon { "client daemon" } else { "client" };
        let cmd = Command::run(data.as_bytes().to_vec())
            .fd(report_w.as_fd(), 3)
            .fd(sock.as_fd(), 4)
            .fd(out_w.as_fd(), 5);
        let mut client = fs.spawn(&cmd).unwrap();
        drop(cmd);
        drop((report_w, out_w, sock));
        // Our own claim (when the client went to our reserved child), so
        // that the server refills for the client too.
        conn.ping().unwrap();
        let report = String::from_utf8(common::read_to_end(report_r.into(), common::WAIT)).unwrap();
        assert_eq!(common::wait(&mut client).code(), Some(0), "{report}");
        let (pid, direct) = report.split_once(' ').expect("the client's report");
        let pid: i32 = pid.parse().unwrap();
        assert_eq!(direct, "true", "the spawn did not go to the reserved child");
        // What it wrote when it ran (a daemonic one may be terminated first).
        let wrote = common::read_to_end(out_r.into(), common::WAIT);
        if !(daemon && wrote.is_empty()) {
            assert_eq!(wrote, pid.to_string().into_bytes(), "daemon {daemon}");
        }
        if daemon {
            // SIGTERMed when the connection closed, reaped by the server:
            // the pid goes away (perhaps already has).
            // SAFETY: kill with signal 0 only checks that the pid exists.
            let gone = || unsafe { libc::kill(pid, 0) } != 0;
            assert!(
                common::eventually(common::WAIT, gone),
                "a daemonic child outlived its requester's connection"
            );
        } else {
            let Some(pidfd) = common::pidfd_open(pid) else {
                return;
            };
            assert!(
                !common::exited(&pidfd, Duration::from_millis(300)),
                "a non-daemonic child was killed with its requester's connection"
            );
            common::pidfd_kill(&pidfd, libc::SIGKILL);
            assert!(common::exited(&pidfd, common::WAIT));
        }
    }
    assert_no_zombies(server);
}

/// Fds whose slots are each other's numbers as they arrive (a warm child
/// receives them at the lowest free numbers, here 3 and 4, for slots 4 and
/// 3): each still lands on its own slot, through the server and straight
/// from the requester alike.
#[test]
fn fds_that_arrive_on_each_others_slots_land_on_their_own() {
    let _w = common::watchdog("warm swap", Duration::from_secs(120));
    let fs = launch(1);
    let server = fs.pid();
    for round in 0..3 {
        assert!(common::eventually(common::WAIT, || common::settled_with(
            server, 1
        )));
        let (r4, w4) = std::io::pipe().unwrap();
        let (r3, w3) = std::io::pipe().unwrap();
        let cmd = Command::run(b"swap".to_vec())
            .inherit_stdio(false)
            .fd(w4.as_fd(), 4)
            .fd(w3.as_fd(), 3);
        let mut c = fs.spawn(&cmd).unwrap();
        drop(cmd);
        drop((w3, w4));
        assert_eq!(common::wait(&mut c).code(), Some(0), "round {round}");
        assert_eq!(common::read_to_end(r3.into(), common::WAIT), b"slot 3");
        assert_eq!(common::read_to_end(r4.into(), common::WAIT), b"slot 4");
    }
}
