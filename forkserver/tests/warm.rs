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
/// and its open fds.
fn entry(start: EntryArgs) -> i32 {
    let Ok(fd) = start.take_fd(3) else { return 2 };
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
        "{}|{}|{}|{}",
        comm.trim_end(),
        std::os::unix::process::parent_id(),
        fds.len(),
        String::from_utf8_lossy(&start.data)
    );
    if f.write_all(line.as_bytes()).is_err() {
        return 3;
    }
    0
}
forkserver::bootstrap!(entry);

fn warm_pids(server: i32) -> Vec<i32> {
    let mut v: Vec<i32> = common::children_of(server)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| common::is_warm(*p))
        .collect();
    v.sort_unstable();
    v
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
    // Waiting: stdio and its socket, nothing of the server's.
    assert_eq!(
        common::fd_count_of(warm),
        4,
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
    assert_eq!(fields.len(), 4, "{out}");
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
    assert!(common::eventually(common::WAIT, || common::zombies_of(
        server as u32
    )
    .is_empty()));
}
