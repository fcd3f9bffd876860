//! The reason the crate exists: a parent with 32 threads that hold a global
//! lock and allocate all the time. Through the server, 1,000 children start
//! and finish. With a plain `fork()` from that same parent, the child inherits
//! the lock in its held state, with no thread left to release it, and hangs:
//! the test sees the hang through a timeout and kills it.
#![allow(unsafe_code)]

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use forkserver::{Command, EntryArgs, ForkServer};

/// The lock every busy thread takes, and every child takes once.
static LOCK: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn entry(start: EntryArgs) -> i32 {
    // In a server child the lock is in the state the single-threaded server
    // left it: free. Take it and allocate, as the raw-fork child does below.
    let mut g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    g.extend_from_slice(&start.data);
    let v = vec![1u8; 4096];
    std::hint::black_box(&v);
    0
}
forkserver::bootstrap!(entry);

const THREADS: usize = 32;
const SPAWNS: usize = 1_000;

#[test]
fn server_spawns_where_fork_deadlocks() {
    let _w = common::watchdog("multithreaded parent", Duration::from_secs(240));
    let fs = ForkServer::launch(common::config()).expect("launch");

    // 32 threads: lock, allocate and touch memory while holding the lock,
    // release, repeat. Each holds it for a short sleep so the lock is held
    // nearly all the time without eating both CPUs.
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (stop, rounds) = (&stop, &rounds);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let mut g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
                    let v = vec![t as u8; 1024 + (i % 64) * 512];
                    g.clear();
                    g.extend_from_slice(&v[..16]);
                    std::thread::sleep(Duration::from_micros(200));
                    drop(g);
                    drop(v);
                    rounds.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        // Let them get going.
        assert!(common::eventually(Duration::from_secs(10), || {
            rounds.load(Ordering::Relaxed) >= THREADS as u64
        }));
        assert!(forkserver::thread_count().unwrap() > THREADS);

        // 1. Through the server: every spawn completes.
        let t = Instant::now();
        for i in 0..SPAWNS {
            let mut c = fs
                .spawn(&Command::run(vec![i as u8]))
                .unwrap_or_else(|e| panic!("spawn {i}: {e}"));
            let st = c
                .wait_timeout(Duration::from_secs(30))
                .unwrap()
                .unwrap_or_else(|| panic!("server child {i} hung"));
            assert_eq!(st.code(), Some(0), "server child {i}");
        }
        let per = t.elapsed() / SPAWNS as u32;
        eprintln!("{SPAWNS} server spawns from a {THREADS}-thread parent: {per:?} each");

        // 2. Plain fork() from the same parent: the child takes the same
        // lock. A fork taken while a thread held it never completes. The
        // lock is held nearly always, so the first few forks show it.
        let mut hung = 0;
        let mut completed = 0;
        for _ in 0..20 {
            match fork_and_lock(Duration::from_millis(500)) {
                Outcome::Completed => completed += 1,
                Outcome::Hung => hung += 1,
            }
            if hung >= 3 {
                break;
            }
        }
        eprintln!("raw fork: {hung} children deadlocked, {completed} completed");
        stop.store(true, Ordering::Relaxed);
        assert!(
            hung >= 1,
            "expected at least one raw-fork child to deadlock on the inherited lock"
        );
    });
}

enum Outcome {
    Completed,
    Hung,
}

/// Forks, has the child take [`LOCK`], and waits for it at most `limit`;
/// a child still running then is deadlocked and gets SIGKILL.
fn fork_and_lock(limit: Duration) -> Outcome {
    // SAFETY: this is the unsafe pattern under test. The child calls only
    // `Mutex::lock` (futex-based, no allocation) and `_exit`, so the one
    // thing it can do wrong is the thing we want to observe: wait forever
    // for a lock whose holder thread does not exist in the child.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let g = LOCK.lock();
        drop(g);
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(0) };
    }
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            return Outcome::Completed;
        }
        assert_eq!(r, 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Hung: kill it and reap, still under a timeout.
    // SAFETY: pid is our unreaped child, so the number cannot be reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: as above.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
            return Outcome::Hung;
        }
        assert!(
            Instant::now() < deadline,
            "SIGKILLed child {pid} not reaped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
