//! What strangers cost a manager listening on TCP: a flood of connections
//! that never authenticate leaves its threads and file descriptors bounded,
//! an authenticated client keeps being served meanwhile, silent peers are
//! dropped after the handshake timeout, and a client arriving while every
//! handshake slot is taken waits its turn instead of failing.
//!
//! Loopback only. The figures each test measured are printed (run with
//! `--nocapture` to see them).
use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mproc::get_context;

const KEY: &[u8] = b"flood key";
const MAX_HANDSHAKES: usize = 16;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Threads and open fds of process `pid`.
fn threads_and_fds(pid: i32) -> (usize, usize) {
    (
        count_dir(&format!("/proc/{pid}/task")),
        count_dir(&format!("/proc/{pid}/fd")),
    )
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn start() -> (mproc::Manager, i32, SocketAddr) {
    let manager = get_context("forkserver")
        .unwrap()
        .manager_builder()
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .max_handshakes(MAX_HANDSHAKES)
        .start()
        .unwrap();
    let pid = manager.pid().unwrap();
    let addr = manager.listen("127.0.0.1:0", KEY).unwrap();
    (manager, pid, addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// 10,000 connections that never send a byte, each held open while the
/// next 64 are made (so the server always has silent peers in the
/// handshake and more in its backlog), with an authenticated client making
/// calls the whole time.
#[test]
fn a_flood_of_silent_connections_costs_bounded_threads_and_the_client_goes_on() {
    const FLOOD: usize = 10_000;
    const WINDOW: usize = 64;
    let (manager, pid, addr) = start();
    let remote = mproc::manager::connect(addr, KEY).unwrap();
    let d = remote.dict::<u32, u64>().unwrap();
    d.set(&0, &0).unwrap();
    let (threads0, fds0) = threads_and_fds(pid);
    let rss0 = rss_kib(pid);

    let flood = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        let (mut made, mut failed) = (0usize, 0usize);
        let mut open = VecDeque::with_capacity(WINDOW + 1);
        for _ in 0..FLOOD {
            if Instant::now() > end {
                break;
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                Ok(s) => {
                    made += 1;
                    open.push_back(s);
                    if open.len() > WINDOW {
                        open.pop_front();
                    }
                }
                // Past the listen backlog the kernel drops the attempt.
                Err(_) => failed += 1,
            }
        }
        (made, failed)
    });

    let started = Instant::now();
    let (mut max_threads, mut max_fds, mut max_rss) = (threads0, fds0, rss0);
    let mut rtts = Vec::new();
    let mut n = 0u64;
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(90) {
        n += 1;
        let t = Instant::now();
        d.set(&0, &n).unwrap();
        assert_eq!(d.get(&0).unwrap(), Some(n));
        rtts.push(t.elapsed() / 2);
        let (threads, fds) = threads_and_fds(pid);
        max_threads = max_threads.max(threads);
        max_fds = max_fds.max(fds);
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(1));
    }
    let flood_took = started.elapsed();
    let (made, failed) = flood.join().unwrap();
    rtts.sort();
    let (p50, p99, max) = (
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        rtts.last().copied().unwrap_or_default(),
    );
    println!(
        "flood: {made} connections made, {failed} failed, in {flood_took:?}; \
         manager threads {threads0} -> max {max_threads}, fds {fds0} -> max {max_fds}, \
         RSS {rss0} -> max {max_rss} KiB; client round trips during the flood: \
         {} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        rtts.len()
    );
    assert!(made >= FLOOD / 2, "the flood hardly got through: {made}");
    assert!(
        max_threads <= threads0 + 2,
        "threads grew under the flood: {threads0} -> {max_threads}"
    );
    assert!(
        max_fds <= fds0 + MAX_HANDSHAKES + 8,
        "fds grew past the handshake limit: {fds0} -> {max_fds}"
    );
    assert!(
        max_rss <= rss0 + 64 * 1024,
        "memory grew under the flood: {rss0} -> {max_rss} KiB"
    );
    assert!(!rtts.is_empty(), "no call was made during the flood");
    assert!(
        max < Duration::from_secs(2),
        "a call took {max:?} during the flood"
    );
    // Once the flood is over, new clients get in and the old one is served.
    let again = mproc::manager::connect(addr, KEY).unwrap();
    assert_eq!(again.number_of_objects().unwrap(), 1);
    assert_eq!(d.get(&0).unwrap(), Some(n));
    drop(manager);
}

/// Four times as many silent peers as there are handshake slots, all held
/// open: the server drops the ones it accepted once their handshake time
/// is up, and a real client that dials meanwhile waits in the backlog for
/// a free slot, then passes.
#[test]
fn silent_peers_time_out_and_a_waiting_client_gets_its_turn() {
    let (manager, pid, addr) = start();
    let (threads0, _) = threads_and_fds(pid);
    let silent: Vec<TcpStream> = (0..4 * MAX_HANDSHAKES)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap())
        .collect();
    let t = Instant::now();
    let remote = mproc::manager::connect(addr, KEY).unwrap();
    let waited = t.elapsed();
    let l = remote.list::<u8>().unwrap();
    l.push(&1).unwrap();
    let (threads, fds) = threads_and_fds(pid);
    println!(
        "{} silent peers: a client got in after {waited:?}; manager threads {threads0} -> \
         {threads}, fds {fds}",
        silent.len()
    );
    // Its wait is bounded by the timeout per slot-full of silent peers
    // ahead of it (and the dial's own limit).
    assert!(waited < Duration::from_secs(9), "{waited:?}");
    // Two more: the client's anchor connection and its pooled one.
    assert!(threads <= threads0 + 2, "{threads0} -> {threads}");
    // Every silent peer the server took is dropped after the timeout:
    // after the challenge it reads the end of the stream (or a reset).
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 256];
        let mut got = 0;
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "a silent peer was kept past the timeout");
        assert!(got > 0, "a silent peer was never challenged");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    drop(manager);
}
