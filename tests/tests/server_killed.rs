//! A fork server killed under a running child: the child's status is lost
//! with the server, but `is_alive` still tells when it has ended, and the
//! next start launches a new server. (A binary of its own: it kills the one
//! server this process has.)

use std::time::Duration;

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn double(x: u32) -> u32 {
    2 * x
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn ppid_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_child_of_a_killed_fork_server_is_not_alive_once_it_has_ended() {
    let ctx = mproc::get_context("forkserver").unwrap();
    let mut p = ctx.process(sleepy, 300).start().unwrap();
    assert!(p.is_alive());
    let server = ppid_of(p.pid());
    assert_ne!(server, std::process::id() as i32);
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(server, libc::SIGKILL) };
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while p.is_alive() {
        assert!(std::time::Instant::now() < end, "still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Its status went with the server: join says so, and the next start
    // gets a new server.
    assert!(p.join_timeout(Duration::from_secs(5)).is_err());
    let mut q = ctx.process(double, 5).start().unwrap();
    assert_eq!(q.join_timeout(Duration::from_secs(30)).unwrap(), 10);
}
