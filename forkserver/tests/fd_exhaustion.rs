//! A requester out of fds gets a clear error and loses nothing: no child is
//! left behind, the connection stays usable, and once fds are free again the
//! next spawn works.
//!
//! One test in its own binary: it lowers the process's own fd limit.

mod common;

use std::time::Duration;

use forkserver::{Command, EntryArgs, ForkServer};
use testkit::fd_limit;

fn entry(_: EntryArgs) -> i32 {
    0
}
forkserver::bootstrap!(entry);

#[test]
fn out_of_fds_is_an_error_that_loses_nothing() {
    let _w = common::watchdog("fd exhaustion", Duration::from_secs(120));
    let fs = ForkServer::launch(common::config()).expect("launch");
    let server = fs.pid();
    let mut c = fs.spawn(&Command::run(Vec::new())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(0));
    assert!(common::eventually(common::WAIT, || common::settled(server)));
    let server_fds = common::fd_count_of(server);

    fd_limit::set_soft_limit(common::fd_count() as u64 + 16);
    for round in 0..3 {
        let mut held = fd_limit::fill_fd_table(0);
        // With no fd to spare, a spawn (which must receive the child's
        // pidfd, and whose request carries the requester's stdio) fails or
        // succeeds, but never hangs or panics.
        let full = fs.spawn(&Command::run(Vec::new()));
        // A spawn that went to the reserved warm child leaves that child's
        // socket and kick open until the connection's next request, which
        // closes them with its claim: one (a ping) goes first, then the
        // table is filled again.
        let _ = fs.connection().and_then(|c| c.ping());
        held.extend(fd_limit::fill_fd_table(0));
        // A request too large for a frame needs a memfd, which cannot be
        // made: an error, before anything was sent.
        let big = "x".repeat(100_000);
        let err = fs
            .spawn(&Command::run(Vec::new()).env("FS_BIG", &big))
            .expect_err("no fd for the memfd");
        assert!(
            err.to_string().contains("Too many open files"),
            "round {round}: {err}"
        );
        // Leave exactly one fd free: the pidfd cannot come with the reply,
        // or can; either way the outcome is clear.
        held.pop();
        let one_free = fs.spawn(&Command::run(Vec::new()));
        drop(held);
        for r in [full, one_free] {
            match r {
                Ok(mut child) => {
                    assert_eq!(common::wait(&mut child).code(), Some(0), "round {round}");
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(!msg.is_empty(), "round {round}: an empty error");
                    eprintln!("round {round}: {msg}");
                }
            }
        }
        // Fds free again: the same connection spawns as before.
        let mut c = fs
            .spawn(&Command::run(Vec::new()))
            .expect("spawn after the fds came back");
        assert_eq!(common::wait(&mut c).code(), Some(0));
    }
    // Nothing leaked in the server, and no child is left unreaped.
    assert!(
        common::eventually(common::WAIT, || common::fd_count_of(server) == server_fds),
        "server fds: {:#?}",
        common::fd_list(Some(server))
    );
    assert!(common::eventually(common::WAIT, || common::settled(server)));
    // A warm child reserved for this connection whose fds could not be
    // received was released, and another reserved: the next spawn goes to
    // the one warm child there is.
    if common::warm() > 0 {
        // The server forks it, then sends the reservation: a moment for
        // the second after the first is seen.
        std::thread::sleep(Duration::from_millis(20));
        let warm: Vec<i32> = common::children_of(server)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let mut c = fs.spawn(&Command::run(Vec::new())).unwrap();
        assert_eq!(
            warm,
            vec![c.pid()],
            "the spawn did not go to the warm child"
        );
        assert_eq!(common::wait(&mut c).code(), Some(0));
    }
}
