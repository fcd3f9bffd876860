//! fd and zombie counts return to baseline after IPC with children.
//!
//! One test in its own binary, so no parallel test disturbs the counts.
mod common;

use std::time::{Duration, Instant};

use mproc::connection::{Connection, pipe};
use mproc::{JoinableQueue, Process, Queue, get_context};

use common::{fd_count, zombies_of};

const T: Duration = Duration::from_secs(30);

/// A queue of numbers, one end of a pipe and a queue of blobs: what `work`
/// gets, and what the parent keeps of the same.
type Ends = (Queue<Option<u32>>, Connection<u32>, JoinableQueue<Vec<u8>>);

fn work(arg: Ends) {
    let (q, conn, jq) = arg;
    let mut sum = 0;
    while let Some(i) = q.get_timeout(T).unwrap() {
        sum += i;
    }
    conn.send(&sum).unwrap();
    jq.put(vec![1u8; 200_000]).unwrap();
}

/// Starts `work` under start method `m` with `q`, a fresh pipe and a fresh
/// joinable queue; gives back what the parent keeps of them.
fn start_work(m: &str, q: Queue<Option<u32>>) -> (Ends, Process<()>) {
    let (a, b) = pipe(true).unwrap();
    let jq = JoinableQueue::new().unwrap();
    let p = get_context(m)
        .unwrap()
        .process(work, (q.clone(), b, jq.clone()))
        .start()
        .unwrap();
    ((q, a, jq), p)
}

#[test]
fn fds_and_zombies_return_to_baseline() {
    // No warm fork-server children: the one reserved for this process's
    // connection brings three fds (socket, kick, pidfd) whenever the server
    // refills, so the count would depend on timing (the fork server's own
    // leak test counts them).
    mproc::set_forkserver_warm(0);
    // Warm up: the fork server and lazily created state exist before the
    // baseline is taken.
    for m in ["fork", "spawn", "forkserver"] {
        let ((q, a, jq), mut p) = start_work(m, Queue::new().unwrap());
        q.put(None).unwrap();
        a.recv_timeout(T).unwrap();
        jq.get_timeout(T).unwrap();
        p.join_timeout(T).unwrap();
    }
    let fds = fd_count();
    let z = zombies_of(std::process::id()).len();
    for round in 0..3 {
        for m in ["fork", "spawn", "forkserver"] {
            let ((q, a, jq), mut p) = start_work(m, Queue::with_maxsize(8).unwrap());
            for i in 0..100 {
                q.put_timeout(Some(i), T).unwrap();
            }
            q.put(None).unwrap();
            assert_eq!(
                a.recv_timeout(T).unwrap(),
                (0..100).sum::<u32>(),
                "{m} {round}"
            );
            assert_eq!(jq.get_timeout(T).unwrap().len(), 200_000);
            jq.task_done().unwrap();
            jq.join_timeout(T).unwrap();
            p.join_timeout(T).unwrap();
        }
    }
    // Forkserver children are reaped by the server; give its reports a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (fd_count() != fds || zombies_of(std::process::id()).len() != z)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fd_count(), fds, "fds leaked");
    assert_eq!(zombies_of(std::process::id()).len(), z, "zombies left");
}
