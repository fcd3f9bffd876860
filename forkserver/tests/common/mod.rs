//! Helpers shared by the forkserver's integration tests: those of every
//! crate's tests (`testkit`, re-exported here), and the ones that know the
//! fork server: bounded waits for its children, its warm children, and
//! whether it has settled.
#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use std::time::Duration;

use forkserver::{Child, ExitStatus};

#[allow(unused_imports)] // each test binary uses its own subset
pub use testkit::{
    Watchdog, children_of, eventually, exited, fd_count, fd_count_of, fd_list, fds_without_cloexec,
    pidfd_kill, pidfd_open, read_to_end, readable, watchdog, zombies_of,
};

/// How long any single wait in a test may take before it counts as a hang.
pub const WAIT: Duration = Duration::from_secs(30);

/// Waits for `child` at most [`WAIT`]; panics on a timeout.
pub fn wait(child: &mut Child) -> ExitStatus {
    child
        .wait_timeout(WAIT)
        .expect("wait failed")
        .unwrap_or_else(|| panic!("child {} did not exit within {WAIT:?}", child.pid()))
}

/// Warm children the tests' servers keep: `FORKSERVER_TEST_WARM` when set
/// (`ci/test.sh` runs the suite with 0 as well), else the crate's default.
pub fn warm() -> usize {
    std::env::var("FORKSERVER_TEST_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(forkserver::DEFAULT_WARM)
}

/// The launch configuration of the tests' servers ([`warm`] children).
pub fn config() -> forkserver::LaunchConfig {
    forkserver::LaunchConfig::new().warm(warm())
}

/// Whether `pid` is a warm child waiting for a request (it carries the
/// name `forkserver-warm` until it gets one).
pub fn is_warm(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end() == "forkserver-warm")
}

/// The children of `server` that are not warm children.
pub fn busy_children_of(server: i32) -> Vec<(i32, char)> {
    children_of(server)
        .into_iter()
        .filter(|(p, _)| !is_warm(*p))
        .collect()
}

/// Whether `server` has no child but a full pool of warm ones (so its fds
/// and children can be compared with another settled moment).
pub fn settled(server: i32) -> bool {
    settled_with(server, warm())
}

/// With warm children on, waits until the server has reserved one for the
/// connection of `fs` (from its first spawn on), so that the next spawn
/// goes straight to that child; before the first spawn, or with warm
/// children off, returns at once. A contract test calling it before its
/// spawns runs through the reserved children in the default run, and
/// through the server's own path with `FORKSERVER_TEST_WARM=0`.
pub fn reserved(fs: &forkserver::ForkServer) {
    let conn = fs.connection().expect("the server's connection");
    conn.wait_reserved(WAIT).expect("the server is gone");
}

/// [`settled`] for a server launched with `n` warm children.
pub fn settled_with(server: i32, n: usize) -> bool {
    let all = children_of(server);
    all.len() == n && all.iter().all(|(p, _)| is_warm(*p))
}
