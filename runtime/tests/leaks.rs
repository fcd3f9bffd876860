//! No fd and no zombie survive finished children: 1,000 processes per
//! start method, then the parent's fd count is back at its baseline and no
//! child of ours (or of the fork server) is left unreaped.
mod common;

use std::time::Duration;

use mproc::get_context;

use common::{fd_count, zombies_of};

fn double(x: u32) -> u32 {
    x * 2
}

#[test]
fn no_fd_or_zombie_after_1000_processes_per_method() {
    // No warm fork-server children: the one reserved for this process's
    // connection brings three fds (socket, kick, pidfd) whenever the server
    // refills, so the count would depend on timing (the fork server's own
    // leak test counts them).
    mproc::set_forkserver_warm(0);
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        // Warm up: the fork server launches on first use and keeps its socket.
        ctx.process(double, 1).start().unwrap().join().unwrap();
        let before = fd_count();
        for i in 0..1000u32 {
            let mut p = ctx.process(double, i).start().unwrap();
            assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), i * 2);
        }
        assert_eq!(fd_count(), before, "{m}: fds leaked");
        assert!(mproc::active_children().is_empty(), "{m}");
        assert_eq!(zombies_of(std::process::id()), Vec::<u32>::new(), "{m}");
    }
}
