//! A hostile client on its own connection: random bytes, truncated frames,
//! oversized frames, 200 fds in one message, signals for pids it does not
//! own, wrong versions, a flood it never reads. Each gets an error reply or
//! a disconnect, and a well-behaved client keeps spawning successfully
//! throughout (a second thread spawns in a loop the whole time).
//!
//! One test in its own binary, so the server's fd count is ours to check.
mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use forkserver::client::raw::{self, Recv};
use forkserver::codec;
use forkserver::protocol::{
    Action, ErrorKind, PROTOCOL_VERSION, Payload, Refusal, Reply, Request, SpawnDetails,
    SpawnRequest,
};
use forkserver::{Command, EntryArgs, ForkServer, ServerConnection};

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        b"sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

const T: Duration = Duration::from_secs(10);

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn recv(sock: &OwnedFd) -> Recv {
    raw::recv(sock.as_fd(), T).expect("recv")
}

fn reply(sock: &OwnedFd) -> Reply {
    match recv(sock) {
        Recv::Frame(f) => codec::decode(&f.bytes).expect("server sent an undecodable reply"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn expect_error(sock: &OwnedFd, want: ErrorKind) {
    match reply(sock) {
        Reply::Error { kind, .. } => assert_eq!(kind, want),
        other => panic!("expected an error {want:?}, got {other:?}"),
    }
}

fn expect_eof(sock: &OwnedFd) {
    match recv(sock) {
        Recv::Eof => {}
        other => panic!("expected a disconnect, got {other:?}"),
    }
}

fn send(sock: &OwnedFd, bytes: &[u8]) {
    forkserver::fdpass::send(sock.as_fd(), bytes, &[], false).expect("send");
}

fn hello(sock: &OwnedFd, version: u32, build: Option<u64>) -> Reply {
    // The real build identity is whatever the server answers a real client;
    // a raw client learns it by asking with a wrong one first.
    let build = build.unwrap_or(0);
    send(
        sock,
        &codec::encode(&Request::Hello { version, build }).unwrap(),
    );
    reply(sock)
}

/// A raw connection with a completed handshake.
fn handshaken(conn: &ServerConnection) -> OwnedFd {
    let probe = conn.connect_raw().unwrap();
    let Reply::Refused(Refusal::Build { server }) = hello(&probe, PROTOCOL_VERSION, Some(0)) else {
        panic!("a zero build identity should be refused");
    };
    expect_eof(&probe);
    let sock = conn.connect_raw().unwrap();
    assert!(matches!(
        hello(&sock, PROTOCOL_VERSION, Some(server)),
        Reply::Hello { .. }
    ));
    sock
}

fn spawn_request(id: u64) -> Vec<u8> {
    codec::encode(&Request::Spawn(SpawnRequest {
        id,
        slots: vec![],
        daemon: false,
        payload: Payload::Inline(SpawnDetails {
            cwd: Some(b"/".to_vec()),
            env: Some(vec![(b"A".to_vec(), b"B".to_vec())]),
            action: Action::Exec {
                program: b"/bin/true".to_vec(),
                argv: vec![b"true".to_vec()],
            },
        }),
    }))
    .unwrap()
}

#[test]
fn hostile_client_never_hurts_another() {
    let _w = common::watchdog("hostile", Duration::from_secs(240));
    let fs = ForkServer::launch(common::config()).expect("launch");
    let server = fs.pid();
    let root = fs.connection().unwrap();
    // Warm the server up (first pidfd, first connection) before the baseline.
    let warm = root.connect().unwrap();
    let mut c = warm.spawn(&Command::run(b"".to_vec())).unwrap();
    common::wait(&mut c);
    drop(c);
    // With the pool of warm children full (each holds a socket and a pidfd
    // in the server).
    assert!(common::eventually(T, || common::settled(server)));
    let server_fds = common::fd_count_of(server);

    let good = root.connect().unwrap();
    let stop = AtomicBool::new(false);
    let spawned = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // The well-behaved client: spawns and waits in a loop throughout.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let mut c = good.spawn(&Command::run(b"".to_vec())).expect("good spawn");
                assert_eq!(common::wait(&mut c).code(), Some(0));
                spawned.fetch_add(1, Ordering::Relaxed);
            }
        });
        let progress = |what: &str| {
            let before = spawned.load(Ordering::Relaxed);
            assert!(
                common::eventually(T, || spawned.load(Ordering::Relaxed) > before + 2),
                "good client stalled after: {what}"
            );
        };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

        // Random bytes, before and after the handshake: each frame that is
        // not a request gets a Malformed error; the connection stays open.
        for handshake in [false, true] {
            let sock = if handshake {
                handshaken(&root)
            } else {
                root.connect_raw().unwrap()
            };
            let mut sent = 0;
            while sent < 300 {
                let len = 1 + (rng.next() % 300) as usize;
                let bytes = rng.bytes(len);
                if codec::decode::<Request>(&bytes).is_ok() {
                    continue; // a valid request by chance: not what we test
                }
                send(&sock, &bytes);
                expect_error(&sock, ErrorKind::Malformed);
                sent += 1;
            }
        }
        progress("random bytes");

        // Truncated frames: every prefix of a valid spawn request.
        let sock = handshaken(&root);
        let full = spawn_request(7);
        for cut in 1..full.len() {
            let prefix = &full[..cut];
            if codec::decode::<Request>(prefix).is_ok() {
                continue;
            }
            send(&sock, prefix);
            expect_error(&sock, ErrorKind::Malformed);
        }
        progress("truncated frames");

        // Oversized frames: over 64 KiB is refused whole, and the
        // connection still works afterwards.
        for size in [64 * 1024 + 1, 100 * 1024, 200 * 1024] {
            let mut big = spawn_request(8);
            big.resize(size, 0xAB);
            send(&sock, &big);
            expect_error(&sock, ErrorKind::TooLarge);
        }
        send(&sock, &codec::encode(&Request::Ping { id: 9 }).unwrap());
        assert_eq!(reply(&sock), Reply::Pong { id: 9 });
        progress("oversized frames");

        // 200 fds in one message (more than the 64 allowed): an error, and
        // every one of them closed by the server.
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fds: Vec<OwnedFd> = (0..200)
            .map(|_| devnull.as_fd().try_clone_to_owned().unwrap())
            .collect();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        forkserver::fdpass::send(sock.as_fd(), &spawn_request(10), &borrowed, false).unwrap();
        expect_error(&sock, ErrorKind::TooManyFds);
        // And fds the request has no slots for.
        forkserver::fdpass::send(sock.as_fd(), &spawn_request(11), &borrowed[..5], false).unwrap();
        expect_error(&sock, ErrorKind::BadFds);
        drop(borrowed);
        drop(fds);
        progress("200 fds");

        // Bulk payloads that lie: no memfd, an unsealed fd (a pipe, which a
        // read could block on), a length over the bulk limit.
        let memfd_spawn = |id: u64, len: u32| {
            codec::encode(&Request::Spawn(SpawnRequest {
                id,
                slots: vec![],
                daemon: false,
                payload: Payload::Memfd { len },
            }))
            .unwrap()
        };
        send(&sock, &memfd_spawn(20, 10));
        expect_error(&sock, ErrorKind::BadFds);
        let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
        forkserver::fdpass::send(sock.as_fd(), &memfd_spawn(21, 10), &[pipe_r.as_fd()], false)
            .unwrap();
        expect_error(&sock, ErrorKind::BadFds);
        forkserver::fdpass::send(
            sock.as_fd(),
            &memfd_spawn(22, u32::MAX),
            &[pipe_r.as_fd()],
            false,
        )
        .unwrap();
        expect_error(&sock, ErrorKind::TooLarge);
        progress("lying bulk payloads");

        // A signal for a pid it does not own: the good client's child, the
        // init process, and every group-wide pid kill(2) would accept.
        let mut victim = good.spawn(&Command::run(b"sleep".to_vec())).unwrap();
        for pid in [victim.pid(), 1, 0, -1, -victim.pid(), server] {
            let req = Request::Signal {
                id: 12,
                pid,
                signal: libc::SIGKILL,
            };
            send(&sock, &codec::encode(&req).unwrap());
            expect_error(&sock, ErrorKind::NotYourChild);
        }
        assert!(
            victim
                .wait_timeout(Duration::from_millis(100))
                .unwrap()
                .is_none(),
            "the victim must not have been signalled"
        );
        // Only the root may shut the server down.
        send(
            &sock,
            &codec::encode(&Request::Shutdown { id: 13 }).unwrap(),
        );
        expect_error(&sock, ErrorKind::NotAllowed);
        // A second hello on a handshaken connection.
        send(
            &sock,
            &codec::encode(&Request::Hello {
                version: PROTOCOL_VERSION,
                build: 0,
            })
            .unwrap(),
        );
        expect_error(&sock, ErrorKind::Handshake);
        victim.signal(libc::SIGKILL).unwrap();
        assert_eq!(common::wait(&mut victim).signal(), Some(9));
        drop(sock);
        progress("foreign signals");

        // Wrong version: refused, then disconnected.
        let sock = root.connect_raw().unwrap();
        assert_eq!(
            hello(&sock, PROTOCOL_VERSION + 1, None),
            Reply::Refused(Refusal::Version {
                server: PROTOCOL_VERSION
            })
        );
        expect_eof(&sock);
        // A request before the hello: an error, then disconnected.
        let sock = root.connect_raw().unwrap();
        send(&sock, &spawn_request(14));
        expect_error(&sock, ErrorKind::Handshake);
        expect_eof(&sock);
        progress("wrong version");

        // A flood it never reads: its reply queue overflows and the server
        // drops it rather than wait for it.
        let sock = handshaken(&root);
        let ping = codec::encode(&Request::Ping { id: 15 }).unwrap();
        let mut dropped = false;
        for _ in 0..200_000 {
            match forkserver::fdpass::send(sock.as_fd(), &ping, &[], false) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                    dropped = true;
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        assert!(dropped, "a client that never reads must be disconnected");
        progress("reply flood");

        // A connection flood: it opens connections and keeps them. The
        // server caps them before its fd table runs short, so the others'
        // spawns (which need pipes, pidfds and received fds) go on.
        if raise_own_fd_limit(4096) {
            let sock = handshaken(&root);
            let mut held = Vec::new();
            let mut refused = false;
            for id in 0..5000u64 {
                send(&sock, &codec::encode(&Request::Connect { id }).unwrap());
                match recv(&sock) {
                    Recv::Frame(mut f) => match codec::decode::<Reply>(&f.bytes).unwrap() {
                        Reply::Connected { .. } => held.push(f.fds.pop().expect("an fd")),
                        Reply::Error {
                            kind: ErrorKind::NotAllowed,
                            ..
                        } => {
                            refused = true;
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    },
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(refused, "the server must cap connections");
            assert!(held.len() <= forkserver::server::handler::MAX_CONNS);
            progress("connection flood");
            // While the flood holds every connection it may, an fd-hungry
            // spawn of the good client still works.
            let (r, w) = std::io::pipe().unwrap();
            let cmd = Command::exec("/bin/sh", ["-c", "echo ok"]).fd(w.as_fd(), 1);
            let mut c = good.spawn(&cmd).unwrap();
            drop(cmd);
            drop(w);
            assert_eq!(common::read_to_end(r.into(), T), b"ok\n");
            assert_eq!(common::wait(&mut c).code(), Some(0));
            drop(held);
        }

        stop.store(true, Ordering::Relaxed);
    });
    drop(good);
    warm.ping().unwrap();
    assert!(spawned.load(Ordering::Relaxed) > 10);
    // Every fd the hostile client sent or made the server open is closed.
    assert!(
        common::eventually(T, || common::settled(server)
            && common::fd_count_of(server) == server_fds),
        "server fds: {:#?}",
        common::fd_list(Some(server))
    );
    assert!(common::zombies_of(server as u32).is_empty());
    root.ping().unwrap();
}

/// Raises this process's soft fd limit to at least `want` (for a test that
/// holds many fds); false, with a note, when the hard limit is too low.
#[allow(unsafe_code)]
fn raise_own_fd_limit(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills our struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= want {
        return true;
    }
    if lim.rlim_max < want {
        eprintln!(
            "skipping the connection flood: fd hard limit {}",
            lim.rlim_max
        );
        return false;
    }
    lim.rlim_cur = want;
    // SAFETY: setrlimit reads our struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 }
}
