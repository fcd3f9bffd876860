//! Spawn → exit → status latency through the fork server, against raw
//! `fork` + `_exit(0)` + `waitpid` in the same run, from a small parent and
//! from parents with 1 GiB and 4 GiB of touched heap; and `exec` of
//! `/bin/true` through the server against `std::process::Command`.
//!
//! Run with `cargo bench -p forkserver`. Set `SPAWN_BENCH_QUICK=1` for a
//! short smoke run. Samples of the two methods are interleaved, so both see
//! the same noise from other processes on the machine; the ratios printed at
//! the end are what count.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use forkserver::{ChildStart, Command, ForkServer, Hooks, LaunchConfig};

/// The child entry of `Command::run`: nothing to do.
fn entry(_: ChildStart) -> i32 {
    0
}

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// A heap of `bytes` with every 4 KiB page written (so the kernel has a
/// page-table entry for each page that `fork` must copy).
fn touched_heap(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(PAGE) {
        v[i] = 1;
    }
    black_box(v)
}

/// `fork` + child `_exit(0)` + `waitpid`: the floor.
#[allow(unsafe_code)]
fn raw_fork() -> Duration {
    let t = Instant::now();
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so it
    // is sound even though this process has other threads.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: `pid` is our own unreaped child; `status` is a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    let d = t.elapsed();
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    d
}

/// Spawn of the registered entry through the server, and wait for its exit.
fn server_run(server: &ForkServer) -> Duration {
    let t = Instant::now();
    let mut child = server
        .spawn(&Command::run(Vec::new()))
        .expect("spawn through the server");
    let st = child.wait().expect("wait");
    let d = t.elapsed();
    assert_eq!(st.code(), Some(0));
    d
}

fn server_exec(server: &ForkServer) -> Duration {
    let t = Instant::now();
    let mut child = server
        .spawn(&Command::exec("/bin/true", [] as [&str; 0]))
        .expect("exec through the server");
    let st = child.wait().expect("wait");
    let d = t.elapsed();
    assert_eq!(st.code(), Some(0));
    d
}

fn std_exec() -> Duration {
    let t = Instant::now();
    let st = std::process::Command::new("/bin/true")
        .status()
        .expect("std::process::Command");
    let d = t.elapsed();
    assert!(st.success());
    d
}

/// p50 and p99 of a sample, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    n: usize,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let at = |q: usize| v[((n * q) / 100).min(n - 1)].as_secs_f64() * 1e6;
    Stats {
        p50: at(50),
        p99: at(99),
        n,
    }
}

/// Runs `a` and `b` alternately `n` times each (after a short warm-up).
fn paired(
    n: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Stats, Stats) {
    for _ in 0..(n / 20).clamp(1, 20) {
        a();
        b();
    }
    let (mut va, mut vb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        va.push(a());
        vb.push(b());
    }
    (stats(va), stats(vb))
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn row(what: &str, parent: &str, s: Stats) {
    println!(
        "| {what} | {parent} | {} | {} | {} |",
        fmt_us(s.p50),
        fmt_us(s.p99),
        s.n
    );
}

fn main() -> ExitCode {
    if let Some(role) = forkserver::bootstrap(Hooks { entry: Some(entry) }) {
        eprintln!("unexpected role {}", role.name);
        return ExitCode::FAILURE;
    }
    let quick = std::env::var_os("SPAWN_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(3) } else { n };
    let started = Instant::now();
    let server = ForkServer::launch(LaunchConfig::new()).expect("launch the fork server");

    println!("| what | parent | p50 | p99 | n |");
    println!("|---|---|---|---|---|");
    let mut server_p50 = Vec::new();
    let mut raw_p50 = Vec::new();
    // (label, heap bytes, iterations of each method)
    let phases: [(&str, usize, usize); 3] = [
        ("small", 0, scale(2000)),
        ("1 GiB heap", 1024 * MIB, scale(60)),
        ("4 GiB heap", 4096 * MIB, scale(25)),
    ];
    for (label, bytes, n) in phases {
        let heap = touched_heap(bytes);
        let (s, r) = if bytes == 0 {
            paired(n, || server_run(&server), raw_fork)
        } else {
            // Not interleaved: right after a big-heap fork the kernel is
            // still freeing the child's page tables, which would be charged
            // to the next server sample. The server gets more samples here
            // since its runs are cheap.
            let (s, _) = paired(scale(500), || server_run(&server), || Duration::ZERO);
            let (r, _) = paired(n, raw_fork, || Duration::ZERO);
            (s, r)
        };
        drop(heap);
        row("server: spawn → exit → status", label, s);
        row("raw fork + _exit + waitpid", label, r);
        server_p50.push(s.p50);
        raw_p50.push(r.p50);
    }
    let conn = server.connection().expect("connection");
    let (ping, _) = paired(
        scale(2000),
        || conn.ping().expect("ping"),
        || Duration::ZERO,
    );
    row("server: ping round trip (no fork)", "small", ping);
    let (se, st) = paired(scale(500), || server_exec(&server), std_exec);
    row("server: exec /bin/true + status", "small", se);
    row("std::process::Command /bin/true", "small", st);

    println!();
    println!(
        "server p50 / raw fork p50, small parent: {:.2} (target ≤ 1.25)",
        server_p50[0] / raw_p50[0]
    );
    println!(
        "server p50, 1 GiB / small: {:.2}; 4 GiB / small: {:.2} (target ≤ 1.1)",
        server_p50[1] / server_p50[0],
        server_p50[2] / server_p50[0]
    );
    println!(
        "raw fork p50, 1 GiB / small: {:.0}; 4 GiB / small: {:.0}",
        raw_p50[1] / raw_p50[0],
        raw_p50[2] / raw_p50[0]
    );
    println!(
        "server exec p50 / std::process::Command p50: {:.2}",
        se.p50 / st.p50
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
