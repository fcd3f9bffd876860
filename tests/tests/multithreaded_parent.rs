//! The use case the project exists for: a parent with many busy threads that
//! hold locks and allocate, starting processes through `mproc` (default start
//! method: the fork server). Every child completes, returns its value, and
//! nothing is left behind.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use testkit::{fd_count, zombies_of};

static SHARED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Takes the lock the parent's threads hammer: under `fork` this could hang
/// forever; under the fork server it never does.
fn child(x: u64) -> u64 {
    let len = SHARED.lock().map(|g| g.len() as u64).unwrap_or(0);
    x * 2 + len
}

#[test]
fn busy_32_thread_parent_starts_500_processes() {
    let ctx = mproc::get_context("forkserver").unwrap();
    ctx.process(child, 0).start().unwrap().join().unwrap(); // launch the server
    // Counted with the warm child reserved for this process in hand (its
    // three fds come and go with the server's refills).
    let settle = || mproc::__settle_fork_server(Duration::from_secs(10));
    settle();
    let fds = fd_count();

    static STOP: AtomicBool = AtomicBool::new(false);
    let threads: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    if let Ok(mut g) = SHARED.lock() {
                        g.push(i);
                        if g.len() > 64 {
                            g.clear();
                        }
                    }
                    drop(std::hint::black_box(vec![i as u8; 1024]));
                }
            })
        })
        .collect();

    let mut spawners = Vec::new();
    for t in 0..4u64 {
        spawners.push(std::thread::spawn(move || {
            let ctx = mproc::get_context("forkserver").unwrap();
            for i in 0..125u64 {
                let x = t * 1000 + i;
                let mut p = ctx.process(child, x).start().unwrap();
                // The child sees a fresh, unlocked SHARED: its value is 2x.
                assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 2 * x);
            }
        }));
    }
    for s in spawners {
        s.join().unwrap();
    }
    STOP.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    settle();
    assert_eq!(fd_count(), fds, "fds leaked");
    assert!(mproc::active_children().is_empty());
    assert!(zombies_of(std::process::id()).is_empty());
}
