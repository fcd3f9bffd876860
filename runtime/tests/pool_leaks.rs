//! No fd and no zombie survive a pool: 100,000 tasks (with recycled and
//! killed workers along the way), then the parent's fd count is back at its
//! baseline and no child of ours is left unreaped.
mod common;

use std::time::Duration;

use mproc::{Pool, PoolError};

use common::{fd_count, zombies_of};

fn inc(x: u32) -> u32 {
    x + 1
}
fn die(_: ()) -> u32 {
    std::process::exit(3)
}

#[test]
fn no_fd_or_zombie_after_100_000_tasks() {
    // No warm fork-server children: the one reserved for this process's
    // connection brings three fds (socket, kick, pidfd) whenever the server
    // refills, so the count would depend on timing (the fork server's own
    // leak test counts them).
    mproc::set_forkserver_warm(0);
    let _w = common::watchdog("no_fd_or_zombie_after_100_000_tasks");
    // Warm up: the fork server launches on first use and keeps its socket.
    {
        let pool = Pool::new(1).unwrap();
        assert_eq!(pool.apply(inc, 1).unwrap(), 2);
    }
    let before = fd_count();
    let server_pid = {
        let pool = common::recycling_pool(20_000);
        // 90,000 one-item tasks (workers recycled every 20,000)...
        let v = pool.map_chunked(inc, 0..90_000, 1).unwrap();
        assert_eq!(v.len(), 90_000);
        assert_eq!(v[89_999], 90_000);
        // ...10,000 more, one at a time and a few in flight...
        for round in 0..1000u32 {
            let rs: Vec<_> = (0..10)
                .map(|i| pool.apply_async(inc, round * 10 + i).unwrap())
                .collect();
            for (i, r) in rs.into_iter().enumerate() {
                assert_eq!(
                    r.get_timeout(Duration::from_secs(30)).unwrap(),
                    round * 10 + i as u32 + 1
                );
            }
        }
        // ...and a few workers that die.
        for _ in 0..5 {
            assert!(matches!(
                pool.apply_async(die, ())
                    .unwrap()
                    .get_timeout(Duration::from_secs(30)),
                Err(PoolError::WorkerDied { exitcode: 3, .. })
            ));
        }
        pool.close();
        pool.join_timeout(Duration::from_secs(30)).unwrap();
        std::process::id()
    };
    assert_eq!(fd_count(), before, "fds leaked");
    assert!(mproc::active_children().is_empty());
    assert_eq!(zombies_of(server_pid), Vec::<u32>::new());
}
