//! Spawn → exit → status latency through the fork server, against raw
//! `fork` + `_exit(0)` + `waitpid` in the same run, from a small parent and
//! from parents with 1 GiB and 4 GiB of touched heap; and `exec` of
//! `/bin/true` through the server against `std::process::Command`.
//!
//! A bare-bones fork server (fork plus a one-byte round trip, no protocol)
//! is sampled in the same rotation, so that each run also says what the
//! full protocol adds over the minimum any fork server pays.
//!
//! Last, spawn → exit → status is sampled again right before and right
//! after a burst of large and lying bulk spawn requests (8 MiB
//! environments, 1 MiB of data, memfds that hold less or more than they
//! announce): the ratio says whether such a burst leaves the server slower,
//! and the server's resident memory before and after is printed with it.
//!
//! Then `start()` with spawns arriving 2 ms apart: from the call until the
//! child's entry runs (a `CLOCK_MONOTONIC` stamp the child writes into a
//! pipe), through a server with warm children, one without, and raw `fork`
//! until its child runs; spawn → exit → status back to back with warm
//! children on and off; and what a waiting warm child costs.
//! `SPAWN_BENCH_WARM_ONLY=1` runs only these rows;
//! `SPAWN_BENCH_WARM_N=n` gives the first server `n` warm children instead
//! of the default.
//!
//! Run with `cargo bench -p forkserver`. Set `SPAWN_BENCH_QUICK=1` for a
//! short smoke run. Samples of the two methods are interleaved, so both see
//! the same noise from other processes on the machine; the ratios printed at
//! the end are what count.

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use forkserver::{Command, EntryArgs, ForkServer, Hooks, LaunchConfig};
use testkit::bench::{
    BareWarm, Stats, mono_ns, raw_fork_until_child, seqpacket_pair, spaced, stats,
};

/// The child entry of `Command::run`: nothing to do, or (`stamp`) write
/// the time it started to run into slot 3.
fn entry(start: EntryArgs) -> i32 {
    if start.data == b"stamp" {
        let t = mono_ns();
        let Ok(fd) = start.take_fd(3) else { return 2 };
        let mut f = std::fs::File::from(fd);
        return if f.write_all(&t.to_ne_bytes()).is_ok() {
            0
        } else {
            3
        };
    }
    if start.data == b"busy" {
        // Computes for BUSY, as a child that does real work would.
        let t = Instant::now();
        while t.elapsed() < BUSY {
            std::hint::spin_loop();
        }
    }
    0
}

/// How long the entry of a "busy" child computes.
const BUSY: Duration = Duration::from_millis(10);

/// `start()` of a child that computes: from the call until `spawn`
/// returns (the requester has `Spawned`), which a child computing on the
/// requester's CPU delays until the next scheduler tick unless it yields
/// first.
fn busy_start(server: &ForkServer) -> Duration {
    let t0 = Instant::now();
    let mut child = server
        .spawn(&Command::run(b"busy".to_vec()))
        .expect("spawn through the server");
    let d = t0.elapsed();
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    d
}

/// Reads the 8-byte start stamp a child wrote.
fn read_stamp(r: std::io::PipeReader) -> u64 {
    let mut b = [0u8; 8];
    (&r).read_exact(&mut b).expect("the child's start stamp");
    u64::from_ne_bytes(b)
}

/// `start()` through the server: from the call until the child's entry
/// runs (its own stamp), then the exit is waited for outside the timing.
fn server_start(server: &ForkServer) -> Duration {
    let (r, w) = std::io::pipe().expect("pipe");
    let t0 = mono_ns();
    let cmd = Command::run(b"stamp".to_vec()).fd(w.as_fd(), 3);
    let mut child = server.spawn(&cmd).expect("spawn through the server");
    drop(cmd);
    drop(w);
    let t1 = read_stamp(r);
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    Duration::from_nanos(t1.saturating_sub(t0))
}

/// A warm child of `server` (named so while it waits), if one waits.
fn warm_child_of(server: i32) -> Option<i32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|c| stat[c + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            ppid == Some(server)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == "forkserver-warm")
        })
}

/// The named fields (kB) of `/proc/<pid>/smaps_rollup` and `status`.
fn mem_fields(pid: i32, names: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default()
        + &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    names
        .iter()
        .map(|n| {
            text.lines()
                .find(|l| l.starts_with(&format!("{n}:")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(c) = stat.rfind(')') else { return 0 };
    let f: Vec<&str> = stat[c + 1..].split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
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

/// The bare-bones fork server the full protocol is measured against: a
/// single-threaded process that reads one byte from a `SOCK_SEQPACKET`
/// socket, forks a child that `_exit(0)`s, waits for it and writes the byte
/// back. No fds, no set-up, no replies besides that byte.
struct Bare {
    sock: std::os::fd::OwnedFd,
    pid: i32,
}

/// Starts the bare-bones server. Call while this process has one thread.
#[allow(unsafe_code)]
fn start_bare() -> Bare {
    use std::os::fd::AsRawFd;
    let (ours, theirs) = seqpacket_pair();
    // SAFETY: the caller guarantees one thread; the child makes only
    // async-signal-safe calls (read, write, fork, waitpid, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // Our copy of the client's end would hide its EOF from us.
        drop(ours);
        let fd = theirs.as_raw_fd();
        let mut c = [0u8; 1];
        // SAFETY: plain syscalls on our own fd and buffer; the grandchild
        // only calls `_exit`.
        unsafe {
            while libc::read(fd, c.as_mut_ptr().cast(), 1) == 1 {
                let p = libc::fork();
                if p == 0 {
                    libc::_exit(0);
                }
                let mut st = 0;
                libc::waitpid(p, &mut st, 0);
                libc::write(fd, c.as_ptr().cast(), 1);
            }
            libc::_exit(0)
        }
    }
    drop(theirs);
    Bare { sock: ours, pid }
}

/// One request to the bare-bones server.
#[allow(unsafe_code)]
fn bare_run(b: &Bare) -> Duration {
    use std::os::fd::AsRawFd;
    let fd = b.sock.as_raw_fd();
    let mut c = [1u8; 1];
    let t = Instant::now();
    // SAFETY: plain syscalls on our own socket and buffer.
    let (w, r) = unsafe {
        (
            libc::write(fd, c.as_ptr().cast(), 1),
            libc::read(fd, c.as_mut_ptr().cast(), 1),
        )
    };
    let d = t.elapsed();
    assert!(w == 1 && r == 1, "bare-bones server failed");
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

/// `(VmRSS, RssAnon)` of process `pid`, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The burst: bulk spawns whose memfd holds less or more than announced (a
/// raw connection, since a real client never lies), then spawns with an
/// 8 MiB environment (one variable, then 2048) and with 1 MiB of data.
fn bulk_burst(server: &ForkServer) {
    use std::os::fd::AsFd;

    use forkserver::client::raw;
    use forkserver::codec;
    use forkserver::fdpass::sealed_memfd;
    use forkserver::protocol::{MAX_BULK, PROTOCOL_VERSION, Payload, Reply, Request, SpawnRequest};

    let conn = server.connection().expect("connection");
    let reply = |sock: &std::os::fd::OwnedFd| match raw::recv(sock.as_fd(), Duration::from_secs(30))
    {
        Ok(raw::Recv::Frame(f)) => codec::decode::<Reply>(&f.bytes).expect("a reply"),
        other => panic!("no reply from the server: {other:?}"),
    };
    let hello = |build: u64| {
        let sock = conn.connect_raw().expect("raw connection");
        let req = Request::Hello {
            version: PROTOCOL_VERSION,
            build,
        };
        forkserver::fdpass::send(
            sock.as_fd(),
            &codec::encode(&req).expect("encode"),
            &[],
            false,
        )
        .expect("send");
        (reply(&sock), sock)
    };
    let Reply::Refused(forkserver::protocol::Refusal::Build { server: build }) = hello(0).0 else {
        panic!("a zero build identity should be refused");
    };
    let (Reply::Hello { .. }, sock) = hello(build) else {
        panic!("handshake refused");
    };
    let one = sealed_memfd("bench", b"x").expect("memfd");
    let page = sealed_memfd("bench", &[0u8; 4096]).expect("memfd");
    for (id, len, fd) in [
        (1, MAX_BULK, &one),
        (2, MAX_BULK, &one),
        (3, MAX_BULK, &one),
        (4, 100, &page),
    ] {
        let req = Request::Spawn(SpawnRequest {
            id,
            slots: vec![],
            daemon: false,
            payload: Payload::Memfd { len: len as u32 },
        });
        forkserver::fdpass::send(
            sock.as_fd(),
            &codec::encode(&req).expect("encode"),
            &[fd.as_fd()],
            false,
        )
        .expect("send");
        assert!(
            matches!(reply(&sock), Reply::Error { .. }),
            "a lie must be refused"
        );
    }
    let big: String = "x".repeat(8 * MIB);
    for _ in 0..3 {
        let cmd = Command::run(Vec::new()).env("BIG", &big);
        let mut c = server.spawn(&cmd).expect("spawn with an 8 MiB variable");
        assert_eq!(c.wait().expect("wait").code(), Some(0));
        let mut cmd = Command::run(Vec::new());
        for i in 0..2048 {
            cmd = cmd.env(format!("MANY_{i}"), &big[..4096]);
        }
        let mut c = server.spawn(&cmd).expect("spawn with 2048 variables");
        assert_eq!(c.wait().expect("wait").code(), Some(0));
        let mut c = server
            .spawn(&Command::run(vec![1u8; MIB]))
            .expect("spawn with 1 MiB of data");
        assert_eq!(c.wait().expect("wait").code(), Some(0));
    }
}

/// Runs the three in rotation `n` times each (after a short warm-up).
fn rotated(
    n: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
    mut c: impl FnMut() -> Duration,
) -> (Stats, Stats, Stats) {
    for _ in 0..(n / 20).clamp(1, 20) {
        a();
        b();
        c();
    }
    let (mut va, mut vb, mut vc) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for _ in 0..n {
        va.push(a());
        vb.push(b());
        vc.push(c());
    }
    (stats(va), stats(vb), stats(vc))
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

/// The rows on warm children: `start()` with spawns 2 ms apart against raw
/// `fork`, back-to-back spawns with warm children on and off, and what a
/// waiting warm child costs. Returns the summary lines.
fn warm_rows(
    server: &ForkServer,
    cold: &ForkServer,
    scale: impl Fn(usize) -> usize,
    quick: bool,
) -> Vec<String> {
    let server_pid = server.pid();
    let mut warm_summary = Vec::new();
    // start() with spawns arriving 2 ms apart: the server is idle between
    // them, so each spawn finds a warm child.
    let gap = Duration::from_millis(2);
    // The floors' waiting children are forked by helpers (see `BareWarm`),
    // so they share none of this process's pages.
    let mut bare_warm = BareWarm::new(false);
    let mut bare_warm_fds = BareWarm::new(true);
    let starts = spaced(
        scale(600),
        20,
        gap,
        &mut [
            &mut || server_start(server),
            &mut || server_start(cold),
            &mut raw_fork_until_child,
            &mut || bare_warm.start(),
            &mut || bare_warm_fds.start(),
        ],
    );
    drop((bare_warm, bare_warm_fds));
    row(
        "start() until the entry runs, spawns 2 ms apart, warm children",
        "small",
        starts[0],
    );
    row(
        "start() until the entry runs, spawns 2 ms apart, warm off",
        "small",
        starts[1],
    );
    row(
        "raw fork until the child runs, 2 ms apart",
        "small",
        starts[2],
    );
    row(
        "floor: bare pre-forked child, one byte until it runs, 2 ms apart",
        "small",
        starts[3],
    );
    row(
        "floor: bare pre-forked child, one byte with stdio and one fd, installed, 2 ms apart",
        "small",
        starts[4],
    );
    // The floor under any server: two wake-ups (requester → server →
    // requester) after the same idle time.
    let conn = cold.connection().expect("connection");
    let pings = spaced(
        scale(600),
        20,
        gap,
        &mut [&mut || conn.ping().expect("ping")],
    );
    row("server: ping round trip, 2 ms apart", "small", pings[0]);
    // Back to back (no idle time: nothing refills), warm on against off.
    let bb = spaced(
        scale(2000),
        50,
        Duration::ZERO,
        &mut [&mut || server_run(server), &mut || server_run(cold)],
    );
    row(
        "server: spawn → exit → status, back to back, warm children",
        "small",
        bb[0],
    );
    row(
        "server: spawn → exit → status, back to back, warm off",
        "small",
        bb[1],
    );
    // start() of children that compute, spaced so the previous one is done.
    let busy = spaced(
        scale(200),
        10,
        BUSY + Duration::from_millis(5),
        &mut [&mut || busy_start(server), &mut || busy_start(cold)],
    );
    row(
        "start() returns, the child computing 10 ms, warm children",
        "small",
        busy[0],
    );
    row(
        "start() returns, the child computing 10 ms, warm off",
        "small",
        busy[1],
    );
    // What a waiting warm child costs.
    std::thread::sleep(Duration::from_millis(50));
    let warm_pid = warm_child_of(server_pid);
    let idle = warm_pid.map(|pid| {
        let names = ["Rss", "Pss", "Private_Dirty", "VmPTE"];
        let m = mem_fields(pid, &names);
        let t0 = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(if quick { 1 } else { 5 }));
        (m, cpu_ticks(pid) - t0)
    });

    warm_summary.push(format!(
        "start() p50 / raw fork p50, spawns 2 ms apart: warm {:.2} (target ≤ 0.5), warm off {:.2}; p99 warm / raw {:.2}",
        starts[0].p50 / starts[2].p50,
        starts[1].p50 / starts[2].p50,
        starts[0].p99 / starts[2].p99
    ));
    warm_summary.push(format!(
        "floors, bare pre-forked child / raw fork p50: {:.2} (one byte), {:.2} (with stdio and one fd installed); warm start() / the latter {:.2}",
        starts[3].p50 / starts[2].p50,
        starts[4].p50 / starts[2].p50,
        starts[0].p50 / starts[4].p50,
    ));
    warm_summary.push(format!(
        "spawn → exit → status back to back, warm / warm off p50: {:.2} (target ≤ 1.05)",
        bb[0].p50 / bb[1].p50
    ));
    match idle {
        Some((m, ticks)) => warm_summary.push(format!(
            "a waiting warm child: Rss {} KiB, Pss {} KiB, Private_Dirty {} KiB, page tables {} KiB; CPU while waiting {} ticks",
            m[0], m[1], m[2], m[3], ticks
        )),
        None => warm_summary.push("no warm child found to measure".into()),
    }
    warm_summary
}

fn main() -> ExitCode {
    if let Some(role) = forkserver::bootstrap(Hooks { entry: Some(entry) }) {
        eprintln!("unexpected role {}", role.name);
        return ExitCode::FAILURE;
    }
    let quick = std::env::var_os("SPAWN_BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(3) } else { n };
    let started = Instant::now();
    // Before anything starts a thread.
    let bare = start_bare();
    let mut cfg = LaunchConfig::new();
    if let Some(n) = std::env::var("SPAWN_BENCH_WARM_N")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cfg = cfg.warm(n);
    }
    let server = ForkServer::launch(cfg).expect("launch the fork server");
    let cold = ForkServer::launch(LaunchConfig::new().warm(0))
        .expect("launch a server without warm children");

    println!("| what | parent | p50 | p99 | n |");
    println!("|---|---|---|---|---|");
    let warm_summary = warm_rows(&server, &cold, scale, quick);
    if std::env::var_os("SPAWN_BENCH_WARM_ONLY").is_some() {
        println!();
        for line in &warm_summary {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    let mut server_p50 = Vec::new();
    let mut raw_p50 = Vec::new();
    // (label, heap bytes, iterations of each method)
    let phases: [(&str, usize, usize); 3] = [
        ("small", 0, scale(2000)),
        ("1 GiB heap", 1024 * MIB, scale(60)),
        ("4 GiB heap", 4096 * MIB, scale(25)),
    ];
    let mut bare_p50 = 0.0;
    for (label, bytes, n) in phases {
        let heap = touched_heap(bytes);
        let (s, r) = if bytes == 0 {
            let (s, r, b) = rotated(n, || server_run(&server), raw_fork, || bare_run(&bare));
            row("bare-bones server: fork + one round trip", label, b);
            bare_p50 = b.p50;
            (s, r)
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

    // Before and after a burst of large and lying bulk requests, each
    // paired with the bare-bones server, so that a change of machine load
    // shows. (Not with raw forks: the burst leaves this process's own heap
    // larger, which makes its forks dearer and disturbs the next sample.)
    let server_pid = server.connection().expect("connection").server_pid();
    let (b0, bare0) = paired(scale(1000), || server_run(&server), || bare_run(&bare));
    let rss0 = rss_kib(server_pid);
    bulk_burst(&server);
    let rss1 = rss_kib(server_pid);
    let (b1, bare1) = paired(scale(1000), || server_run(&server), || bare_run(&bare));
    row(
        "server: spawn → exit → status, before a bulk burst",
        "small",
        b0,
    );
    row(
        "server: spawn → exit → status, after a bulk burst",
        "small",
        b1,
    );
    row("bare-bones server, before the burst", "small", bare0);
    row("bare-bones server, after the burst", "small", bare1);

    println!();
    for line in &warm_summary {
        println!("{line}");
    }
    println!(
        "server p50 after / before a bulk burst: {:.2}; normalised by the bare-bones server: {:.2} (target ≤ 1.2)",
        b1.p50 / b0.p50,
        (b1.p50 / bare1.p50) / (b0.p50 / bare0.p50)
    );
    println!(
        "server VmRSS before / after the burst: {} / {} KiB; RssAnon {} / {} KiB",
        rss0.0, rss1.0, rss0.1, rss1.1
    );
    println!(
        "server p50 / raw fork p50, small parent: {:.2} (target ≤ 1.25)",
        server_p50[0] / raw_p50[0]
    );
    println!(
        "bare-bones server p50 / raw fork p50, small parent: {:.2}; server p50 / bare-bones p50: {:.2}",
        bare_p50 / raw_p50[0],
        server_p50[0] / bare_p50
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
    let Bare { sock, pid } = bare;
    drop(sock);
    let mut st = 0;
    // SAFETY: `pid` is our unreaped child, which exits on EOF.
    #[allow(unsafe_code)]
    unsafe {
        libc::waitpid(pid, &mut st, 0)
    };
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
