//! Many threads spawning at once: 8 threads × 200 children, over one shared
//! connection (frames never interleave, replies reach the right waiter) and
//! over a connection per thread.
mod common;

use std::time::{Duration, Instant};

use forkserver::{Command, EntryArgs, ForkServer, ServerConnection};

fn entry(start: EntryArgs) -> i32 {
    // Each child exits with a code derived from its request, so a reply
    // delivered to the wrong waiter shows up as a wrong code.
    start.data.first().copied().unwrap_or(0) as i32
}
forkserver::bootstrap!(entry);

const THREADS: usize = 8;
const PER_THREAD: usize = 200;

fn hammer(conn: &ServerConnection, thread: usize) {
    for i in 0..PER_THREAD {
        let code = ((thread * PER_THREAD + i) % 200) as u8;
        let mut c = conn
            .spawn(&Command::run(vec![code]))
            .unwrap_or_else(|e| panic!("thread {thread} spawn {i}: {e}"));
        assert_eq!(common::wait(&mut c).code(), Some(code as i32));
    }
}

/// Runs `body(thread)` in `THREADS` threads at once, reports how long their
/// spawns took, and checks that the server settles afterwards.
fn in_threads(fs: &ForkServer, what: &str, body: impl Fn(usize) + Sync) {
    let t = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let body = &body;
            s.spawn(move || body(thread));
        }
    });
    eprintln!(
        "{what}: {} spawns in {:?}",
        THREADS * PER_THREAD,
        t.elapsed()
    );
    assert!(common::eventually(common::WAIT, || common::settled(
        fs.pid()
    )));
}

#[test]
fn eight_threads_share_one_connection() {
    let _w = common::watchdog("shared connection", Duration::from_secs(240));
    let fs = ForkServer::launch(common::config()).expect("launch");
    let conn = fs.connection().unwrap();
    in_threads(&fs, "shared connection", |thread| hammer(&conn, thread));
}

#[test]
fn eight_threads_with_a_connection_each() {
    let _w = common::watchdog("connection per thread", Duration::from_secs(240));
    let fs = ForkServer::launch(common::config()).expect("launch");
    in_threads(&fs, "connection per thread", |thread| {
        let conn = fs.connect().expect("connect");
        hammer(&conn, thread);
    });
}

#[test]
fn waits_from_many_threads_on_one_connection_with_timeouts() {
    // Leader/follower reading under timeouts: threads whose waits time out
    // must not lose replies meant for the others.
    let _w = common::watchdog("mixed waits", Duration::from_secs(120));
    let fs = ForkServer::launch(common::config()).expect("launch");
    let conn = fs.connection().unwrap();
    std::thread::scope(|s| {
        for thread in 0..THREADS {
            let conn = &conn;
            s.spawn(move || {
                for i in 0..50 {
                    let code = ((thread + i) % 100) as u8;
                    let mut c = conn.spawn(&Command::run(vec![code])).unwrap();
                    // Poll with tiny timeouts first, then a real wait.
                    let mut st = None;
                    for _ in 0..3 {
                        st = c.wait_timeout(Duration::from_micros(200)).unwrap();
                        if st.is_some() {
                            break;
                        }
                    }
                    let st = st.unwrap_or_else(|| common::wait(&mut c));
                    assert_eq!(st.code(), Some(code as i32));
                    conn.ping().unwrap();
                }
            });
        }
    });
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ForkServer>();
    send_sync::<ServerConnection>();
    send_sync::<forkserver::Child>();
    send_sync::<forkserver::Error>();
}
