//! Large spawn bodies leave the server as they found it.
//!
//! A spawn request whose details travel in a sealed memfd (an 8 MiB
//! environment) and requests that lie about that memfd's length must not
//! leave the server bigger, or its later spawns slower: every page the
//! server keeps resident is a page-table entry that each later `fork` copies
//! and each exit tears down. When the server allocated the announced length
//! before looking at the memfd, three requests announcing 16 MiB with a
//! one-byte memfd raised glibc's adaptive mmap threshold, later large
//! requests left the heap resident (16–25 MiB), and spawn → exit stayed
//! 2.6–4× slower for the rest of the server's life.
//!
//! The test spawns through two servers in turn, one that gets the burst and
//! one that does not, before and after the burst: the ratio of their medians
//! cancels whatever else the machine is doing. It checks, in this order:
//!
//! - each lie gets an error reply naming the real size, and the server goes
//!   on serving;
//! - each large spawn reaches its child whole (the child checks every byte
//!   of its environment or data);
//! - the server's anonymous resident memory is back within [`RSS_SLACK`] of
//!   its idle size;
//! - and it prints its spawn p50 after the burst against before (the
//!   regression was 2.6–4×; the benchmark measures it, a test on a busy
//!   machine cannot).
//!
//! One test in its own binary, so both servers are ours alone.
#![allow(unsafe_code)]

mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver::client::raw::{self, Recv};
use forkserver::codec;
use forkserver::protocol::{
    Action, ErrorKind, MAX_BULK, PROTOCOL_VERSION, Payload, Refusal, Reply, Request, SpawnDetails,
    SpawnRequest,
};
use forkserver::{Command, EntryArgs, ForkServer, ServerConnection};

/// Size of the one large variable of the first kind of large spawn.
const BIG_LEN: usize = 8 << 20;
/// The second kind: this many variables of [`MANY_LEN`] bytes (8 MiB too).
const MANY: usize = 2048;
const MANY_LEN: usize = 4096;
/// The third: this much `Run` data.
const DATA_LEN: usize = 1 << 20;

/// How much the server's anonymous resident memory may exceed its idle
/// size once the burst is over.
const RSS_SLACK: u64 = 1 << 20;

/// The byte at `i` of a large value: a pattern a child can check cheaply.
fn pattern(seed: usize, len: usize) -> String {
    const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|i| ABC[(i + seed) % ABC.len()] as char)
        .collect()
}

/// The data of a `Run` with a large body.
fn data() -> Vec<u8> {
    (0..DATA_LEN).map(|i| (i % 251) as u8).collect()
}

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        d if d.len() == DATA_LEN => {
            if *d == *data() {
                0
            } else {
                5
            }
        }
        b"big-env" => {
            let ok = std::env::var("BIG").is_ok_and(|v| v == pattern(0, BIG_LEN));
            if ok { 0 } else { 3 }
        }
        b"many-env" => {
            let ok = (0..MANY).all(|i| {
                std::env::var(format!("MANY_{i}")).is_ok_and(|v| v == pattern(i, MANY_LEN))
            });
            if ok { 0 } else { 4 }
        }
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

const T: Duration = Duration::from_secs(30);

/// `(VmRSS, RssAnon)` of `pid`, in bytes.
fn rss(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Spawn of an empty child and wait for its exit.
fn spawn_once(conn: &ServerConnection) -> Duration {
    let t = Instant::now();
    let mut c = conn.spawn(&Command::run(Vec::new())).expect("spawn");
    assert_eq!(common::wait(&mut c).code(), Some(0));
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Medians of `n` spawns on `a` and on `b`, taken in turn.
fn medians(a: &ServerConnection, b: &ServerConnection, n: usize) -> (Duration, Duration) {
    let (mut va, mut vb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        va.push(spawn_once(a));
        vb.push(spawn_once(b));
    }
    (median(va), median(vb))
}

/// A sealed memfd holding `bytes` (what a client attaches to a bulk spawn).
fn sealed_memfd(bytes: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns
    // a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"bulk-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes).expect("write memfd");
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own open fd with an integer argument.
    let r = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            seals,
        )
    };
    assert_eq!(r, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    file.into()
}

fn reply(sock: &OwnedFd) -> Reply {
    match raw::recv(sock.as_fd(), T).expect("recv") {
        Recv::Frame(f) => codec::decode(&f.bytes).expect("server sent an undecodable reply"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A raw connection with a completed handshake.
fn handshaken(conn: &ServerConnection) -> OwnedFd {
    let hello = |sock: &OwnedFd, build: u64| {
        let bytes = codec::encode(&Request::Hello {
            version: PROTOCOL_VERSION,
            build,
        })
        .unwrap();
        forkserver::fdpass::send(sock.as_fd(), &bytes, &[], false).expect("send");
        reply(sock)
    };
    let probe = conn.connect_raw().unwrap();
    let Reply::Refused(Refusal::Build { server }) = hello(&probe, 0) else {
        panic!("a zero build identity should be refused");
    };
    let sock = conn.connect_raw().unwrap();
    assert!(matches!(hello(&sock, server), Reply::Hello { .. }));
    sock
}

/// Sends a bulk spawn announcing `len` bytes with `memfd` attached and
/// returns the error the server answers with.
fn bulk_spawn_error(sock: &OwnedFd, id: u64, len: u32, memfd: &OwnedFd) -> (ErrorKind, String) {
    let req = Request::Spawn(SpawnRequest {
        id,
        slots: vec![],
        daemon: false,
        payload: Payload::Memfd { len },
    });
    forkserver::fdpass::send(
        sock.as_fd(),
        &codec::encode(&req).unwrap(),
        &[memfd.as_fd()],
        false,
    )
    .expect("send");
    match reply(sock) {
        Reply::Error {
            id: Some(got),
            kind,
            message,
        } if got == id => (kind, message),
        other => panic!("expected an error for request {id}, got {other:?}"),
    }
}

/// The hostile half of the burst: bulk spawns whose memfd is not what they
/// announce, and one whose memfd is full size but does not decode.
fn lies(conn: &ServerConnection) {
    let sock = handshaken(conn);
    let one = sealed_memfd(b"x");
    for id in 1..=3 {
        let (kind, message) = bulk_spawn_error(&sock, id, MAX_BULK as u32, &one);
        assert_eq!(kind, ErrorKind::BadFds, "{message}");
        assert!(
            message.contains(&format!("holds 1 bytes, {MAX_BULK} announced")),
            "the error names both sizes: {message}"
        );
    }
    // A memfd longer than announced is a lie too.
    let (kind, message) = bulk_spawn_error(&sock, 4, 100, &sealed_memfd(&[0u8; 4096]));
    assert_eq!(kind, ErrorKind::BadFds, "{message}");
    // Full size, well-formed until the end, then a trailing byte: the
    // server decodes all of it (allocating the 15 MiB value) and refuses.
    let details = SpawnDetails {
        cwd: None,
        env: None,
        action: Action::Run {
            data: vec![7u8; MAX_BULK - 64],
        },
    };
    let mut body = codec::encode_limited(&details, MAX_BULK).unwrap();
    body.push(0);
    let (kind, message) = bulk_spawn_error(&sock, 5, body.len() as u32, &sealed_memfd(&body));
    assert_eq!(kind, ErrorKind::Malformed, "{message}");
    // Still serving this connection.
    forkserver::fdpass::send(
        sock.as_fd(),
        &codec::encode(&Request::Ping { id: 6 }).unwrap(),
        &[],
        false,
    )
    .unwrap();
    assert_eq!(reply(&sock), Reply::Pong { id: 6 });
}

/// The legitimate half: spawns with an 8 MiB environment, as one variable
/// and as many, and with 1 MiB of data (what stayed resident once the
/// allocator had been taught that 16 MiB is "small"), each checked byte for
/// byte by the child.
fn large_spawns(conn: &ServerConnection) {
    let big = pattern(0, BIG_LEN);
    let many: Vec<(String, String)> = (0..MANY)
        .map(|i| (format!("MANY_{i}"), pattern(i, MANY_LEN)))
        .collect();
    for _ in 0..3 {
        let cmd = Command::run(b"big-env".to_vec()).env("BIG", &big);
        let mut c = conn.spawn(&cmd).expect("spawn with an 8 MiB variable");
        assert_eq!(common::wait(&mut c).code(), Some(0), "BIG arrived whole");
        let mut cmd = Command::run(b"many-env".to_vec());
        for (k, v) in &many {
            cmd = cmd.env(k, v);
        }
        let mut c = conn.spawn(&cmd).expect("spawn with 2048 variables");
        assert_eq!(common::wait(&mut c).code(), Some(0), "MANY_* arrived whole");
    }
    for _ in 0..3 {
        let mut c = conn.spawn(&Command::run(data())).expect("spawn with 1 MiB");
        assert_eq!(common::wait(&mut c).code(), Some(0), "data arrived whole");
    }
}

#[test]
fn large_or_lying_spawn_bodies_leave_the_server_as_it_was() {
    let _w = common::watchdog("bulk_memory", Duration::from_secs(300));
    let control = ForkServer::launch(common::config()).expect("launch");
    let tested = ForkServer::launch(common::config()).expect("launch");
    let (a, b) = (control.connection().unwrap(), tested.connection().unwrap());
    let server = b.server_pid();
    // Warm-up: first connection, first pidfd, every code path once.
    medians(&a, &b, 30);
    lies(&b.connect().unwrap());
    let idle = rss(server);
    let (a0, b0) = medians(&a, &b, 200);
    let before = b0.as_secs_f64() / a0.as_secs_f64();

    // Lies first: a server that allocates what they announce teaches its
    // allocator to keep what the large spawns after them allocate. The
    // RSS is read after the last child's exit, which the server reports in
    // a later loop turn than the one that handled its request.
    lies(&b);
    large_spawns(&b);
    b.ping().expect("the server still serves");

    let after_burst = rss(server);
    eprintln!(
        "server VmRSS {} → {} KiB, RssAnon {} → {} KiB",
        idle.0 / 1024,
        after_burst.0 / 1024,
        idle.1 / 1024,
        after_burst.1 / 1024
    );
    assert!(
        after_burst.1 <= idle.1 + RSS_SLACK,
        "server RssAnon grew from {} to {} KiB",
        idle.1 / 1024,
        after_burst.1 / 1024
    );
    assert!(
        after_burst.0 <= idle.0 + 2 * RSS_SLACK,
        "server VmRSS grew from {} to {} KiB",
        idle.0 / 1024,
        after_burst.0 / 1024
    );

    // The spawn time after the burst against before, normalised by the
    // control server, is printed, not asserted: on a loaded machine it
    // passed 2.0 (beside three busy loops), so it cannot be a test. It is
    // the benchmark's to measure (the bulk-burst row of `cargo bench -p
    // forkserver`); what caused the slowdown, the resident heap, is
    // asserted above.
    let (a1, b1) = medians(&a, &b, 200);
    let ratio = (b1.as_secs_f64() / a1.as_secs_f64()) / before;
    eprintln!(
        "spawn p50 before: {b0:?} (control {a0:?}); after: {b1:?} (control {a1:?}); normalised ratio {ratio:.2}"
    );
    // The last children's exits reach the server's loop a moment after
    // their requester saw them (a busy machine widens that moment).
    assert!(
        common::eventually(common::WAIT, || common::zombies_of(server as u32)
            .is_empty()),
        "zombies of the server: {:?}",
        common::zombies_of(server as u32)
    );
}
