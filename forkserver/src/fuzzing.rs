//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay test (`tests/fuzz_corpus.rs`). Not a stable API.
//!
//! Every function here is total: it accepts any byte string and panics only
//! when it finds a bug, which is what the fuzzer looks for.
//!
//! - [`fuzz_decode_request`], [`fuzz_decode_reply`],
//!   [`fuzz_decode_spawn_details`] and [`fuzz_decode_to_warm`] (what a warm
//!   child receives, from its server or straight from a client) decode, and
//!   when that succeeds check a
//!   round trip: the value re-encodes within the limit, no longer than the
//!   input, to bytes that decode to the same value and re-encode identically.
//! - [`fuzz_handler`] reads the bytes as a *script* for the server's
//!   [`Handler`]: frames with fds and receive flags on several connections,
//!   child exits, set-up reports, closes, timer ticks and queue flushes, run
//!   against a recording [`Os`] that forks nothing. The hard part of fuzzing
//!   a server is reaching the deep states (a spawned child, a signal for it,
//!   its exit after its connection closed), so besides raw frames a script
//!   can ask for a well-formed request built from a few bytes.
//!
//! # Script format
//!
//! All integers little endian; a script ends where its bytes do (or after
//! [`MAX_OPS`] operations), wherever that falls.
//!
//! ```text
//! header  cfg:u8  os:u8  bulk_len:u16  bulk:[u8; bulk_len]
//! cfg     bits 0-3  max_queued = 1 + 3 * n
//!         bit 4     refuse every handshake (a server with two threads)
//!         bit 5     send a valid Hello on the first connections first
//!         bit 6     open a second connection
//!         bit 7     zero grace period (otherwise one second)
//! os      bits 0-1  spawn: 0 announced at once, 1 through a set-up pipe,
//!                   2 every third spawn fails, 3 alternate 0 and 1
//!         bit 2     pidfds supported
//!         bit 3     socketpair fails
//!         bit 4     mapping the bulk memfd fails (not sealed)
//!         bit 5     kill fails
//!         bit 6     the first connection is the root
//!         bit 7     one warm child (its forks fail as spawns do in mode 2)
//! bulk    what the memfd of a memfd payload holds (a payload announcing
//!         another length is refused, as the real server does)
//! op      code:u8; code % 10 picks the operation, code / 10 (p) a connection
//!   0, 1  raw frame: flags:u8 (bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC)
//!         nfds:u8 (% 71) len:u16 bytes:[u8; len]
//!   2, 3  well-formed request, see `request`
//!   4     child reaped: pid:u8 status:u8 (bit 7 signal, else exit code;
//!         bit 0 also drains a pending set-up pipe first, as the loop does)
//!   5     connection closed
//!   6     timer tick: now, or an hour later when p is odd
//!   7     set-up report: pid:u8 len:u8 (% 8) bytes
//!   8     flush the connection's reply queue, checking every reply
//!   9     the server is idle (a warm child may be forked and reserved)
//! ```
//!
//! A `pid:u8` picks one of the children spawned so far (in spawn order), or,
//! past their number, a pid that was never a child.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, CodecError};
use crate::protocol::{
    Action, Handover, MAX_BULK, MAX_FDS, MAX_FRAME, MAX_SLOT, PROTOCOL_VERSION, Payload, Reply,
    Request, Rusage, SpawnDetails, SpawnRequest, ToWarm, WarmSpawn, WireStatus,
};
use crate::server::handler::{
    ConnId, Effects, ForkedChild, Handler, HandlerConfig, Os, SpawnPlan, WarmChild, WarmLink,
};

/// Most operations one handler script runs.
pub const MAX_OPS: usize = 200;

/// Most fds one scripted frame carries (over [`MAX_FDS`], to test the limit).
pub const MAX_SCRIPT_FDS: usize = 70;

/// Build identity of the fuzzed server.
pub const BUILD: u64 = 0x5eed;

/// First pid the recording [`Os`] hands out (far from any pid a script names
/// directly, which are at most 256).
const FIRST_PID: i32 = 10_000;

/// Decodes `data` as a [`Request`] and checks the round trip.
pub fn fuzz_decode_request(data: &[u8]) {
    round_trip::<Request>(data, codec::decode, MAX_FRAME);
}

/// Decodes `data` as a [`Reply`] and checks the round trip.
pub fn fuzz_decode_reply(data: &[u8]) {
    round_trip::<Reply>(data, codec::decode, MAX_FRAME);
}

/// Decodes `data` as a bulk [`SpawnDetails`] (the sealed-memfd payload) and
/// checks the round trip.
pub fn fuzz_decode_spawn_details(data: &[u8]) {
    round_trip::<SpawnDetails>(data, codec::decode_bulk, MAX_BULK);
}

/// Decodes `data` as a [`ToWarm`] (what a warm child reads, from the
/// server or from the client it is reserved for) and checks the round trip.
pub fn fuzz_decode_to_warm(data: &[u8]) {
    round_trip::<ToWarm>(data, codec::decode, MAX_FRAME);
}

fn round_trip<T>(data: &[u8], decode: fn(&[u8]) -> Result<T, CodecError>, limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(value) = decode(data) else { return };
    let again = match codec::encode_limited(&value, limit) {
        Ok(b) => b,
        Err(e) => panic!("decoded {value:?} does not re-encode: {e}"),
    };
    assert!(
        again.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        again.len()
    );
    let value2 = match decode(&again) {
        Ok(v) => v,
        Err(e) => panic!("re-encoded {value:?} does not decode: {e}"),
    };
    assert_eq!(value, value2, "round trip changed the value");
    assert_eq!(
        codec::encode_limited(&value2, limit).ok().as_deref(),
        Some(again.as_slice()),
        "encoding is not a fixed point"
    );
}

/// Runs `data` as a handler script (see the module docs) and checks the
/// handler's invariants throughout:
///
/// - it never panics, whatever the frames, fds and event order;
/// - every queued reply decodes as a [`Reply`], fits a frame and carries
///   exactly the fds it announces (a pidfd, a connection end, or none);
/// - a reply queue never holds more than its bound;
/// - `Spawned` reaches only the connection that asked, once, and before the
///   child's `Exited`; `Exited` only for a reaped child, once;
/// - a signal goes only to a live child, never to a reaped pid;
/// - at the end, after every connection closed and every child was reaped,
///   the handler holds nothing, and once dropped no fd it was given is open.
pub fn fuzz_handler(data: &[u8]) {
    let mut input = Input(data);
    let cfg_bits = input.u8().unwrap_or(0);
    let os_bits = input.u8().unwrap_or(0);
    let bulk_len = input.u16().unwrap_or(0) as usize;
    let bulk = input.take(bulk_len).to_vec();
    let (base, base_id) = base_fd().unzip();
    let cfg = HandlerConfig {
        build: BUILD,
        pid: 1,
        max_queued: 1 + 3 * usize::from(cfg_bits & 0x0f),
        grace: if cfg_bits & 0x80 != 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        },
        refuse_threads: (cfg_bits & 0x10 != 0).then_some(2),
        cwd: Some(b"/".to_vec()),
        cwd_id: None,
        env: (cfg_bits & 0x20 != 0).then(|| vec![(b"A".to_vec(), b"1".to_vec())]),
        warm: usize::from(os_bits >> 7),
        ..HandlerConfig::default()
    };
    let mut run = Run {
        max_queued: cfg.max_queued,
        h: Handler::new(cfg),
        os: RecordingOs {
            bits: os_bits,
            bulk,
            next_pid: FIRST_PID,
            spawns: 0,
            spawned: HashMap::new(),
            warm: HashSet::new(),
            kicks: 0,
            order: Vec::new(),
            reaped: HashSet::new(),
            current_conn: 0,
            base,
            numbers: BTreeSet::new(),
        },
        seen: HashMap::new(),
        reported: HashSet::new(),
        granted: HashSet::new(),
    };
    let mut conns = Vec::new();
    let first = run.os.fake_fd();
    conns.push(run.h.add_conn(first, os_bits & 0x40 != 0));
    if cfg_bits & 0x40 != 0 {
        let second = run.os.fake_fd();
        conns.push(run.h.add_conn(second, false));
    }
    let mut stopped = false;
    if cfg_bits & 0x20 != 0 {
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            build: BUILD,
        };
        for c in conns {
            stopped |= run.frame_of(c, &hello, Vec::new()).shutdown;
        }
    }
    let mut ops = 0;
    while !stopped && ops < MAX_OPS {
        let Some(code) = input.u8() else { break };
        ops += 1;
        let p = usize::from(code / 10);
        let conn = run.pick_conn(p);
        stopped = match code % 10 {
            0 | 1 => {
                let flags = input.u8().unwrap_or(0);
                let nfds = usize::from(input.u8().unwrap_or(0)) % (MAX_SCRIPT_FDS + 1);
                let len = input.u16().unwrap_or(0) as usize;
                let bytes = input.take(len).to_vec();
                let fds = run.os.fake_fds(nfds);
                run.os.current_conn = conn;
                let eff = run.h.on_frame(
                    &mut run.os,
                    conn,
                    &bytes,
                    flags & 1 != 0,
                    flags & 2 != 0,
                    fds,
                );
                eff.shutdown
            }
            2 | 3 => {
                let (req, nfds) = request(&mut input, &run.os.order);
                let fds = run.os.fake_fds(nfds);
                run.frame_of(conn, &req, fds).shutdown
            }
            4 => {
                let pid = pick_pid(&run.os.order, input.u8().unwrap_or(0));
                let s = input.u8().unwrap_or(0);
                let status = if s & 0x80 != 0 {
                    WireStatus::Signaled {
                        signal: i32::from(s & 0x3f),
                        core_dumped: s & 0x40 != 0,
                    }
                } else {
                    WireStatus::Exited(i32::from(s))
                };
                run.exit(pid, status, s & 1 != 0);
                false
            }
            5 => run.h.on_close(&mut run.os, conn).shutdown,
            6 => {
                let now = if p % 2 == 1 {
                    Instant::now() + Duration::from_secs(3600)
                } else {
                    Instant::now()
                };
                run.h.on_tick(&mut run.os, now);
                false
            }
            7 => {
                let pid = pick_pid(&run.os.order, input.u8().unwrap_or(0));
                let len = usize::from(input.u8().unwrap_or(0) % 8);
                let report = input.take(len).to_vec();
                run.h.on_setup_done(&mut run.os, pid, &report);
                false
            }
            8 => run.flush(conn),
            _ => {
                run.h.on_idle(&mut run.os, Instant::now());
                false
            }
        };
        run.check();
    }
    run.finish(base_id.flatten());
}

/// A cursor over the fuzzer's bytes; reads past the end give `None` / empty.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn u16(&mut self) -> Option<u16> {
        let lo = self.u8()?;
        let hi = self.u8().unwrap_or(0);
        Some(u16::from_le_bytes([lo, hi]))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn pick_pid(order: &[i32], b: u8) -> i32 {
    order
        .get(usize::from(b))
        .copied()
        .unwrap_or(i32::from(b) + 1)
}

/// Builds a well-formed request from a few bytes; returns it with the number
/// of fds to attach.
///
/// ```text
/// kind:u8 % 9
///   0  Hello  bits:u8 (bit 0: right version, bit 1: right build)
///   1  Spawn  id:u8 bits:u8 nfds:u8 (% 71), then for run: len:u8 (% 32)
///             data; for exec: len:u8 (% 16) program argc:u8 (% 3)
///             argc × (len:u8 (% 8) arg); for memfd: len:u16
///             bits: 0 daemon, 1 memfd payload, 2 exec, 3-4 slots (0 in
///             order, 1 one repeated, 2 one out of range, 3 one too many),
///             5 cwd, 6 env
///   2  Signal id:u8 pid:u8 signal:u8 (minus 8)
///   3  Connect id:u8     4  Ping id:u8     5  Shutdown id:u8
///   6  Reserve id:u8 (unused)
///   7  Claim  id:u8 pid:u8 daemon:u8 (bit 0)
///   8  Release id:u8 (unused) pid:u8
/// ```
fn request(input: &mut Input<'_>, order: &[i32]) -> (Request, usize) {
    let kind = input.u8().unwrap_or(0) % 9;
    let id = u64::from(input.u8().unwrap_or(0));
    match kind {
        0 => {
            let bits = id;
            let req = Request::Hello {
                version: if bits & 1 != 0 {
                    PROTOCOL_VERSION
                } else {
                    PROTOCOL_VERSION + 1
                },
                build: if bits & 2 != 0 { BUILD } else { !BUILD },
            };
            (req, 0)
        }
        1 => {
            let bits = input.u8().unwrap_or(0);
            let nfds = usize::from(input.u8().unwrap_or(0)) % (MAX_SCRIPT_FDS + 1);
            let action = if bits & 4 != 0 {
                let n = usize::from(input.u8().unwrap_or(0) % 16);
                let program = input.take(n).to_vec();
                let argc = input.u8().unwrap_or(0) % 3;
                let argv = (0..argc)
                    .map(|_| {
                        let n = usize::from(input.u8().unwrap_or(0) % 8);
                        input.take(n).to_vec()
                    })
                    .collect();
                Action::Exec { program, argv }
            } else {
                let n = usize::from(input.u8().unwrap_or(0) % 32);
                Action::Run {
                    data: input.take(n).to_vec(),
                }
            };
            let details = SpawnDetails {
                cwd: (bits & 0x20 != 0).then(|| b"/".to_vec()),
                env: (bits & 0x40 != 0).then(|| vec![(b"K".to_vec(), b"V".to_vec())]),
                action,
            };
            let payload = if bits & 2 != 0 {
                Payload::Memfd {
                    len: u32::from(input.u16().unwrap_or(0)),
                }
            } else {
                Payload::Inline(details)
            };
            let mut slots: Vec<u32> = (0..nfds as u32).collect();
            match (bits >> 3) & 3 {
                1 if slots.len() >= 2 => slots[1] = slots[0],
                2 if !slots.is_empty() => slots[0] = MAX_SLOT + 1,
                3 => slots.push(nfds as u32),
                _ => {}
            }
            let total = nfds + usize::from(bits & 2 != 0);
            let req = Request::Spawn(SpawnRequest {
                id,
                slots,
                daemon: bits & 1 != 0,
                payload,
            });
            (req, total)
        }
        2 => {
            let pid = pick_pid(order, input.u8().unwrap_or(0));
            let signal = i32::from(input.u8().unwrap_or(0)) - 8;
            (Request::Signal { id, pid, signal }, 0)
        }
        3 => (Request::Connect { id }, 0),
        4 => (Request::Ping { id }, 0),
        5 => (Request::Shutdown { id }, 0),
        6 => (Request::Reserve, 0),
        8 => {
            let pid = pick_pid(order, input.u8().unwrap_or(0));
            (Request::Release { pid }, 0)
        }
        _ => {
            let pid = pick_pid(order, input.u8().unwrap_or(0));
            let daemon = input.u8().unwrap_or(0) & 1 != 0;
            (Request::Claim { id, pid, daemon }, 0)
        }
    }
}

/// A cheap, recognisable fd for one run: every fd the harness makes is a dup
/// of it, so once the run is over any fd with its identity still open is a
/// leak. The identity is `None` when memfds are unavailable (the harness
/// then makes `/dev/null` fds, unchecked).
fn base_fd() -> Option<(OwnedFd, Option<(u64, u64)>)> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    match memfd_create("forkserver-fuzz", MFdFlags::MFD_CLOEXEC) {
        Ok(fd) => {
            let id = identity(fd.as_raw_fd());
            Some((fd, id))
        }
        Err(_) => {
            let null = std::fs::File::open("/dev/null").ok()?;
            Some((OwnedFd::from(null), None))
        }
    }
}

/// (device, inode) of what fd number `n` refers to, if it is open.
fn identity(n: RawFd) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/self/fd/{n}")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The [`Os`] of the fuzzer: forks nothing, records everything, and checks
/// that the handler only ever asks about children that exist.
struct RecordingOs {
    bits: u8,
    bulk: Vec<u8>,
    next_pid: i32,
    spawns: u32,
    /// Every child ever spawned, with the connection that asked.
    spawned: HashMap<i32, ConnId>,
    /// Warm children forked (also in `spawned`, under no connection).
    warm: HashSet<i32>,
    /// Kicks read.
    kicks: usize,
    /// The same pids in spawn order (what a script's `pid:u8` indexes).
    order: Vec<i32>,
    /// Children the harness reported as reaped.
    reaped: HashSet<i32>,
    /// The connection whose frame is being handled.
    current_conn: ConnId,
    /// What every fd handed out is a dup of.
    base: Option<OwnedFd>,
    /// Every fd number handed out.
    numbers: BTreeSet<RawFd>,
}

impl RecordingOs {
    fn fake_fd(&mut self) -> Option<OwnedFd> {
        let fd = self.base.as_ref()?.try_clone().ok()?;
        self.numbers.insert(fd.as_raw_fd());
        Some(fd)
    }

    fn fake_fds(&mut self, n: usize) -> Vec<OwnedFd> {
        (0..n).filter_map(|_| self.fake_fd()).collect()
    }

    fn assert_live(&self, pid: i32, what: &str) {
        assert!(
            self.spawned.contains_key(&pid),
            "{what} for pid {pid}, never spawned"
        );
        assert!(
            !self.reaped.contains(&pid),
            "{what} for pid {pid}, already reaped (the pid may be reused)"
        );
    }
}

impl Os for RecordingOs {
    fn spawn(&mut self, spec: SpawnPlan) -> io::Result<ForkedChild> {
        assert!(
            spec.fds.len() <= MAX_FDS,
            "{} fds to a child",
            spec.fds.len()
        );
        let mut slots: Vec<u32> = spec.fds.iter().map(|(_, s)| *s).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), spec.fds.len(), "repeated slot reached spawn");
        assert!(
            slots.last().is_none_or(|s| *s <= MAX_SLOT),
            "slot over {MAX_SLOT} reached spawn"
        );
        if let Action::Exec { program, argv } = &spec.details.action {
            assert!(
                !program.is_empty() && !argv.is_empty(),
                "empty exec reached spawn"
            );
        }
        drop(spec);
        self.spawns += 1;
        let mode = self.bits & 3;
        if mode == 2 && self.spawns.is_multiple_of(3) {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let piped = mode == 1 || (mode == 3 && self.spawns.is_multiple_of(2));
        let setup = if piped {
            Some(
                self.fake_fd()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EMFILE))?,
            )
        } else {
            None
        };
        let pid = self.next_pid;
        self.next_pid += 1;
        self.spawned.insert(pid, self.current_conn);
        self.order.push(pid);
        Ok(ForkedChild { pid, setup })
    }

    fn fork_warm(&mut self) -> io::Result<WarmChild> {
        if self.bits & 3 == 2 && self.spawns.is_multiple_of(2) {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let emfile = || io::Error::from_raw_os_error(libc::EMFILE);
        let sock = self.fake_fd().ok_or_else(emfile)?;
        let kick = self.fake_fd().ok_or_else(emfile)?;
        let pid = self.next_pid;
        self.next_pid += 1;
        self.spawned.insert(pid, ConnId::MAX);
        self.warm.insert(pid);
        self.order.push(pid);
        Ok(WarmChild {
            pid,
            link: WarmLink { sock, kick },
        })
    }

    /// Each answer in turn: never kicked, a spawn, a daemonic spawn, sent
    /// away.
    fn kicked(&mut self, _kick: &OwnedFd) -> Option<u64> {
        self.kicks += 1;
        [None, Some(1), Some(2), Some(3)][self.kicks % 4]
    }

    fn pidfd(&mut self, pid: i32) -> Option<OwnedFd> {
        self.assert_live(pid, "pidfd_open");
        if self.bits & 4 != 0 {
            self.fake_fd()
        } else {
            None
        }
    }

    fn kill(&mut self, pid: i32, signal: i32) -> io::Result<()> {
        self.assert_live(pid, "kill");
        assert!((1..=64).contains(&signal), "signal {signal} sent");
        if self.bits & 0x20 != 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    }

    fn socketpair(&mut self) -> io::Result<(OwnedFd, OwnedFd)> {
        if self.bits & 8 != 0 {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let emfile = || io::Error::from_raw_os_error(libc::EMFILE);
        let a = self.fake_fd().ok_or_else(emfile)?;
        let b = self.fake_fd().ok_or_else(emfile)?;
        Ok((a, b))
    }

    type Bulk = Vec<u8>;

    /// The script's memfd holds exactly `bulk`: like the real one, any
    /// other announced length is refused before a byte is copied.
    fn map_memfd(&mut self, _fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
        assert!(len <= MAX_BULK, "memfd mapping of {len} bytes");
        if self.bits & 0x10 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not sealed"));
        }
        if len != self.bulk.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "bulk memfd holds {} bytes, {len} announced",
                    self.bulk.len()
                ),
            ));
        }
        Ok(self.bulk.clone())
    }
}

/// What a connection's client has received so far.
#[derive(Default)]
struct Seen {
    spawned: HashSet<i32>,
    exited: HashSet<i32>,
    /// Warm children reserved for this connection.
    reserved: HashSet<i32>,
}

/// One script run: the handler, its Os, and what the clients saw.
struct Run {
    max_queued: usize,
    h: Handler,
    os: RecordingOs,
    seen: HashMap<ConnId, Seen>,
    /// Pids whose `Exited` went out, on any connection.
    reported: HashSet<i32>,
    /// Warm children reserved, on any connection.
    granted: HashSet<i32>,
}

impl Run {
    fn pick_conn(&self, p: usize) -> ConnId {
        let mut ids: Vec<ConnId> = self.h.conns().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids.get(p % (ids.len() + 1)).copied().unwrap_or(ConnId::MAX)
    }

    fn frame_of(&mut self, conn: ConnId, req: &Request, fds: Vec<OwnedFd>) -> Effects {
        // A request the builder makes can exceed a frame (a long argv); the
        // real client would send it as a memfd, here it is just dropped.
        let Ok(bytes) = codec::encode(req) else {
            return Effects::default();
        };
        self.os.current_conn = conn;
        self.h
            .on_frame(&mut self.os, conn, &bytes, false, false, fds)
    }

    /// A reaped child, as the server loop reports it: when `drain`, a set-up
    /// pipe still open is read first (the loop's order), otherwise the
    /// handler finds it pending itself.
    fn exit(&mut self, pid: i32, status: WireStatus, drain: bool) {
        if self.os.spawned.contains_key(&pid) {
            self.os.reaped.insert(pid);
        }
        if drain && self.h.setup_fd(pid).is_some() {
            self.h.on_setup_done_reaped(&mut self.os, pid, &[]);
        }
        self.h.on_exit(&mut self.os, pid, status, Rusage::default());
    }

    /// What the server loop's flush does, reading every reply as a client.
    /// Returns whether the server must stop.
    fn flush(&mut self, id: ConnId) -> bool {
        loop {
            let Some(c) = self.h.conn_mut(id) else {
                return false;
            };
            if c.overflowed {
                return self.h.on_close(&mut self.os, id).shutdown;
            }
            let Some(out) = c.out.pop_front() else {
                if c.close_after_flush {
                    return self.h.on_close(&mut self.os, id).shutdown;
                }
                return false;
            };
            let close_after_flush = c.close_after_flush;
            assert!(out.bytes.len() <= MAX_FRAME, "reply over a frame");
            let reply: Reply = match codec::decode(&out.bytes) {
                Ok(r) => r,
                Err(e) => panic!("queued reply does not decode: {e}"),
            };
            let fds = out.fds.len();
            let seen = self.seen.entry(id).or_default();
            match &reply {
                Reply::Spawned { pid, pidfd, .. } => {
                    assert_eq!(fds, usize::from(*pidfd), "{reply:?} with {fds} fds");
                    assert_eq!(
                        self.os.spawned.get(pid),
                        Some(&id),
                        "{reply:?} on a connection that did not spawn it"
                    );
                    assert!(seen.spawned.insert(*pid), "{reply:?} twice");
                }
                Reply::Exited { pid, .. } => {
                    assert_eq!(fds, 0, "{reply:?} with fds");
                    assert!(self.os.reaped.contains(pid), "{reply:?} before the reap");
                    assert!(
                        seen.spawned.contains(pid) || seen.reserved.contains(pid),
                        "{reply:?} before Spawned or Reserved"
                    );
                    assert!(seen.exited.insert(*pid), "{reply:?} twice");
                    assert!(self.reported.insert(*pid), "{reply:?} on two connections");
                }
                Reply::Connected { .. } => assert_eq!(fds, 1, "{reply:?} with {fds} fds"),
                Reply::Reserved { pid, pidfd } => {
                    assert_eq!(fds, 2 + usize::from(*pidfd), "{reply:?} with {fds} fds");
                    assert!(self.os.warm.contains(pid), "{reply:?} of no warm child");
                    assert!(self.granted.insert(*pid), "{reply:?} twice");
                    seen.reserved.insert(*pid);
                }
                Reply::Refused(_) => {
                    assert_eq!(fds, 0, "{reply:?} with fds");
                    assert!(close_after_flush, "{reply:?} but the connection stays");
                }
                _ => assert_eq!(fds, 0, "{reply:?} with fds"),
            }
        }
    }

    /// Invariants that hold between any two events.
    fn check(&self) {
        for (id, c) in self.h.conns() {
            assert!(
                c.out.len() <= self.max_queued,
                "connection {id} queues {} replies, over {}",
                c.out.len(),
                self.max_queued
            );
        }
        let live = self
            .os
            .spawned
            .keys()
            .filter(|p| !self.os.reaped.contains(p))
            .count();
        let known = self.h.live_children()
            + self.h.warm_children()
            + self.h.reserved_children()
            + self.h.retired_children();
        assert_eq!(known, live, "children out of step");
        for (pid, _) in self.h.pending_setups() {
            self.os.assert_live(pid, "set-up pipe kept");
        }
    }

    /// The end of the server's life: flush and close every connection, reap
    /// every child, let every grace period run out; then nothing may remain.
    fn finish(mut self, base_id: Option<(u64, u64)>) {
        let mut ids: Vec<ConnId> = self.h.conns().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            self.flush(id);
            self.h.on_close(&mut self.os, id);
        }
        self.check();
        let live: Vec<i32> = self
            .os
            .order
            .iter()
            .copied()
            .filter(|p| !self.os.reaped.contains(p))
            .collect();
        for pid in live {
            self.exit(pid, WireStatus::Exited(0), false);
        }
        self.h
            .on_tick(&mut self.os, Instant::now() + Duration::from_secs(3600));
        self.check();
        assert_eq!(self.h.conns().count(), 0, "connections left");
        assert_eq!(self.h.live_children(), 0, "children left");
        assert_eq!(self.h.pending_setups().count(), 0, "set-up pipes left");
        assert!(!self.h.has_pending_kills(), "kills left");
        let numbers = std::mem::take(&mut self.os.numbers);
        drop(self);
        if let Some(id) = base_id {
            for n in numbers {
                assert_ne!(
                    identity(n),
                    Some(id),
                    "fd {n} still open after the handler was dropped"
                );
            }
        }
    }
}

/// Builds handler scripts (for seeds and tests); see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Script(Vec<u8>);

/// Script header bit: send a valid Hello first.
pub const CFG_HELLO: u8 = 0x20;
/// Script header bit: open a second connection.
pub const CFG_TWO_CONNS: u8 = 0x40;
/// Script header bit: refuse every handshake.
pub const CFG_REFUSE: u8 = 0x10;
/// Script header bit: zero grace period.
pub const CFG_NO_GRACE: u8 = 0x80;
/// Script Os bit: children announce through a set-up pipe.
pub const OS_SETUP_PIPE: u8 = 1;
/// Script Os bit: every third spawn fails.
pub const OS_SPAWN_FAILS: u8 = 2;
/// Script Os bit: pidfds supported.
pub const OS_PIDFD: u8 = 4;
/// Script Os bit: the first connection is the root.
pub const OS_ROOT: u8 = 0x40;
/// Script Os bit: keep one warm child.
pub const OS_WARM: u8 = 0x80;

impl Script {
    /// A script header: config bits, Os bits and the bulk memfd content.
    pub fn new(cfg: u8, os: u8, bulk: &[u8]) -> Script {
        let mut v = vec![cfg, os];
        v.extend_from_slice(&(bulk.len() as u16).to_le_bytes());
        v.extend_from_slice(bulk);
        Script(v)
    }

    fn op(mut self, code: u8, conn: u8, args: &[u8]) -> Script {
        self.0.push(code + 10 * conn);
        self.0.extend_from_slice(args);
        self
    }

    /// A raw frame on connection index `conn`.
    pub fn raw(self, conn: u8, flags: u8, nfds: u8, bytes: &[u8]) -> Script {
        let mut args = vec![flags, nfds];
        args.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        args.extend_from_slice(bytes);
        self.op(0, conn, &args)
    }

    /// A request frame built from `args` (see `request` in the source).
    pub fn req(self, conn: u8, args: &[u8]) -> Script {
        self.op(2, conn, args)
    }

    /// The exit of child index `pid` with status byte `status`.
    pub fn exit(self, pid: u8, status: u8) -> Script {
        self.op(4, 0, &[pid, status])
    }

    /// Connection index `conn` closes.
    pub fn close(self, conn: u8) -> Script {
        self.op(5, conn, &[])
    }

    /// A timer tick, an hour later when `late`.
    pub fn tick(self, late: bool) -> Script {
        self.op(6, u8::from(late), &[])
    }

    /// Set-up report of child index `pid` (empty: success).
    pub fn setup(self, pid: u8, report: &[u8]) -> Script {
        let mut args = vec![pid, report.len() as u8];
        args.extend_from_slice(report);
        self.op(7, 0, &args)
    }

    /// Flush connection index `conn`.
    pub fn flush(self, conn: u8) -> Script {
        self.op(8, conn, &[])
    }

    /// The server falls idle.
    pub fn idle(self) -> Script {
        self.op(9, 0, &[])
    }

    /// The script's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Seed inputs for every target: `(target, name, bytes)`.
///
/// Valid encodings of every request and reply variant, bulk payloads, and
/// handler scripts that reach each branch of the handler, built from the
/// tables below, so that they follow the encoding when it changes (the
/// ignored `write_seeds` test writes them to `fuzz/corpus`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, r) in request_seeds() {
        if let Ok(b) = codec::encode(&r) {
            out.push(("decode_request", format!("seed-{name}"), b));
        }
    }
    for (name, r) in reply_seeds() {
        if let Ok(b) = codec::encode(&r) {
            out.push(("decode_reply", format!("seed-{name}"), b));
        }
    }
    for (name, d) in [("run", run_details()), ("exec", exec_details())] {
        if let Ok(b) = codec::encode_limited(&d, MAX_BULK) {
            out.push(("decode_spawn_details", format!("seed-{name}"), b));
        }
    }
    for (name, m) in to_warm_seeds() {
        if let Ok(b) = codec::encode(&m) {
            out.push(("decode_to_warm", format!("seed-{name}"), b));
        }
    }
    for (name, s) in handler_seeds() {
        out.push(("handler", format!("seed-{name}"), s.into_bytes()));
    }
    out
}

/// A spawn of the registered entry, with no cwd or environment change.
fn run_details() -> SpawnDetails {
    SpawnDetails {
        cwd: None,
        env: None,
        action: Action::Run {
            data: b"hello".to_vec(),
        },
    }
}

/// An `exec` with a cwd and an environment.
fn exec_details() -> SpawnDetails {
    SpawnDetails {
        cwd: Some(b"/tmp".to_vec()),
        env: Some(vec![
            (b"PATH".to_vec(), b"/usr/bin:/bin".to_vec()),
            (b"LANG".to_vec(), b"C.UTF-8".to_vec()),
        ]),
        action: Action::Exec {
            program: b"/bin/sh".to_vec(),
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi; exit 7".to_vec()],
        },
    }
}

/// A server's handover and a client's spawn, as a warm child gets them.
fn to_warm_seeds() -> Vec<(&'static str, ToWarm)> {
    vec![
        (
            "handover",
            ToWarm::Handover(Handover {
                slots: vec![0, 1, 2, 3],
                chdir: Some(b"/tmp".to_vec()),
                env_remove: vec![b"OLD".to_vec()],
                env_set: Some(vec![(b"NEW".to_vec(), b"1".to_vec())]),
                confirm: true,
                action: run_details().action,
            }),
        ),
        (
            "spawn-run",
            ToWarm::Spawn(WarmSpawn {
                slots: vec![0, 1, 2, 3],
                details: run_details(),
                confirm: false,
            }),
        ),
        (
            "spawn-exec",
            ToWarm::Spawn(WarmSpawn {
                slots: vec![0, 1, 2],
                details: exec_details(),
                confirm: true,
            }),
        ),
    ]
}

/// One request of each kind.
fn request_seeds() -> Vec<(&'static str, Request)> {
    let (run, exec) = (run_details(), exec_details());
    vec![
        (
            "hello",
            Request::Hello {
                version: PROTOCOL_VERSION,
                build: BUILD,
            },
        ),
        (
            "spawn-run",
            Request::Spawn(SpawnRequest {
                id: 1,
                slots: vec![0, 1, 2],
                daemon: false,
                payload: Payload::Inline(run.clone()),
            }),
        ),
        (
            "spawn-exec",
            Request::Spawn(SpawnRequest {
                id: 300,
                slots: vec![0, 1, 2, 3, 1024],
                daemon: true,
                payload: Payload::Inline(exec.clone()),
            }),
        ),
        (
            "spawn-memfd",
            Request::Spawn(SpawnRequest {
                id: u64::MAX,
                slots: vec![0],
                daemon: false,
                payload: Payload::Memfd { len: 70_000 },
            }),
        ),
        (
            "signal",
            Request::Signal {
                id: 2,
                pid: 10_000,
                signal: 15,
            },
        ),
        ("connect", Request::Connect { id: 3 }),
        ("ping", Request::Ping { id: 70_000 }),
        ("shutdown", Request::Shutdown { id: 5 }),
        ("reserve", Request::Reserve),
        ("release", Request::Release { pid: 10_001 }),
        (
            "claim",
            Request::Claim {
                id: 7,
                pid: 10_001,
                daemon: true,
            },
        ),
    ]
}

/// One reply of each kind, and an error reply of each kind.
fn reply_seeds() -> Vec<(String, Reply)> {
    use crate::protocol::{ErrorKind, Refusal};
    let kinds = [
        ErrorKind::Malformed,
        ErrorKind::TooLarge,
        ErrorKind::TooManyFds,
        ErrorKind::BadFds,
        ErrorKind::Handshake,
        ErrorKind::NotYourChild,
        ErrorKind::SpawnFailed,
        ErrorKind::NotAllowed,
        ErrorKind::Os,
    ];
    let mut replies = vec![
        (
            "hello".to_string(),
            Reply::Hello {
                version: PROTOCOL_VERSION,
                build: BUILD,
                server_pid: 4242,
                cwd: Some(b"/srv".to_vec()),
                cwd_id: Some((2049, 2)),
                env: Some(vec![(b"HOME".to_vec(), b"/root".to_vec())]),
                entry: true,
                warm: 1,
            },
        ),
        (
            "refused-version".into(),
            Reply::Refused(Refusal::Version { server: 1 }),
        ),
        (
            "refused-build".into(),
            Reply::Refused(Refusal::Build { server: BUILD }),
        ),
        (
            "refused-threads".into(),
            Reply::Refused(Refusal::Threads { threads: 3 }),
        ),
        (
            "spawned".into(),
            Reply::Spawned {
                id: 1,
                pid: 10_000,
                pidfd: true,
            },
        ),
        (
            "exited-code".into(),
            Reply::Exited {
                id: 1,
                pid: 10_000,
                status: WireStatus::Exited(3),
                rusage: Rusage {
                    user_us: 1_500,
                    system_us: 700,
                    max_rss_kib: 2_048,
                },
            },
        ),
        (
            "exited-signal".into(),
            Reply::Exited {
                id: 2,
                pid: -1,
                status: WireStatus::Signaled {
                    signal: 9,
                    core_dumped: true,
                },
                rusage: Rusage::default(),
            },
        ),
        ("done".into(), Reply::Done { id: 4 }),
        ("connected".into(), Reply::Connected { id: 5 }),
        ("pong".into(), Reply::Pong { id: 6 }),
        (
            "reserved".into(),
            Reply::Reserved {
                pid: 10_001,
                pidfd: true,
            },
        ),
    ];
    for (i, kind) in kinds.iter().enumerate() {
        replies.push((
            format!("error-{kind:?}").to_lowercase(),
            Reply::Error {
                id: (i % 2 == 0).then_some(i as u64),
                kind: *kind,
                message: format!("{kind:?} detail"),
            },
        ));
    }
    replies
}

/// Handler scripts that reach each branch of the handler (request builder
/// arguments: see `request`).
fn handler_seeds() -> Vec<(&'static str, Script)> {
    let hello_ok = [0, 3];
    let spawn_run = [1, 1, 0, 0, 2, b'h', b'i'];
    let spawn_daemon = [1, 2, 1, 0, 0];
    let bulk = codec::encode_limited(&exec_details(), MAX_BULK).unwrap_or_default();
    let blen = (bulk.len() as u16).to_le_bytes();
    let ping = codec::encode(&Request::Ping { id: 9 }).unwrap_or_default();
    let hello = codec::encode(&Request::Hello {
        version: PROTOCOL_VERSION,
        build: BUILD,
    })
    .unwrap_or_default();
    vec![
        (
            "raw-hello-ping",
            Script::new(0, OS_ROOT, &[])
                .raw(0, 0, 0, &hello)
                .raw(0, 0, 0, &ping)
                .flush(0),
        ),
        (
            "ping-before-hello",
            Script::new(0, 0, &[]).req(0, &[4, 1]).flush(0).flush(0),
        ),
        (
            "wrong-version",
            Script::new(0, 0, &[]).req(0, &[0, 2]).flush(0),
        ),
        (
            "refused-threads",
            Script::new(CFG_REFUSE, 0, &[]).req(0, &[0, 3]).flush(0),
        ),
        (
            "second-hello",
            Script::new(CFG_HELLO, 0, &[]).req(0, &hello_ok).flush(0),
        ),
        (
            "spawn-exit",
            Script::new(CFG_HELLO, OS_PIDFD, &[])
                .req(0, &spawn_run)
                .flush(0)
                .exit(0, 3)
                .flush(0),
        ),
        (
            "spawn-setup-pipe",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, OS_SETUP_PIPE | OS_PIDFD, &[])
                .req(0, &spawn_run)
                .req(1, &spawn_run)
                .setup(0, b"")
                .setup(1, b"exec: ENOENT")
                .exit(1, 127)
                .exit(0, 0)
                .flush(0)
                .flush(1),
        ),
        (
            "exit-before-setup",
            Script::new(CFG_HELLO, OS_SETUP_PIPE, &[])
                .req(0, &spawn_run)
                .exit(0, 0x89)
                .flush(0),
        ),
        (
            // The loop drains the set-up pipe of a child it has just reaped:
            // no pidfd may be opened for that pid any more.
            "regress-pidfd-after-reap",
            Script::new(CFG_HELLO, OS_SETUP_PIPE | OS_PIDFD, &[])
                .req(0, &spawn_run)
                .req(0, &spawn_run)
                .exit(0, 1)
                .exit(1, 0)
                .flush(0),
        ),
        (
            "spawn-fails",
            Script::new(CFG_HELLO, OS_SPAWN_FAILS, &[])
                .req(0, &spawn_run)
                .req(0, &spawn_run)
                .req(0, &spawn_run)
                .flush(0),
        ),
        (
            "spawn-exec-fds",
            Script::new(CFG_HELLO, 0, &[])
                .req(
                    0,
                    &[
                        1, 7, 4, 3, 7, b'/', b'b', b'i', b'n', b'/', b's', b'h', 1, 2, b's', b'h',
                    ],
                )
                .flush(0),
        ),
        (
            "spawn-bad-slots",
            Script::new(CFG_HELLO, 0, &[])
                .req(0, &[1, 1, 8, 3, 0])
                .req(0, &[1, 2, 16, 3, 0])
                .req(0, &[1, 3, 24, 3, 0])
                .req(0, &[1, 4, 4, 0, 0, 0])
                .flush(0),
        ),
        (
            "spawn-memfd",
            Script::new(CFG_HELLO, 0, &bulk)
                .req(0, &[1, 1, 2 | 4, 2, blen[0], blen[1]])
                .req(0, &[1, 2, 2, 0, 0xff, 0xff])
                .req(0, &[1, 3, 2, 0, 1, 0])
                .flush(0),
        ),
        (
            "too-many-fds",
            Script::new(CFG_HELLO, 0, &[])
                .raw(0, 0, 65, &ping)
                .raw(0, 2, 1, &ping)
                .raw(0, 1, 0, &ping)
                .req(0, &[1, 1, 0, 70, 0])
                .flush(0),
        ),
        (
            // Reserved on the first connection, claimed, reported there.
            "warm-reserve-claim",
            Script::new(CFG_HELLO, OS_WARM | OS_PIDFD, &[])
                .idle()
                .req(0, &[6, 0])
                .flush(0)
                .req(0, &[7, 5, 0, 1])
                .req(0, &[2, 6, 0, 15])
                .idle()
                .exit(0, 3)
                .flush(0)
                .req(0, &[8, 0, 1])
                .flush(0),
        ),
        (
            // It dies before the claim arrives; a claim of a pid never
            // reserved is refused.
            "warm-dies-then-claim",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, OS_WARM, &[])
                .idle()
                .req(1, &[6, 0])
                .exit(0, 0x89)
                .req(1, &[7, 5, 0, 0])
                .req(0, &[7, 6, 0, 0])
                .req(1, &[7, 7, 9, 0])
                .flush(1)
                .flush(0),
        ),
        (
            // A connection closes holding a reservation; the server path
            // takes a pool child (its handover fails here: forked afresh).
            "warm-close-and-server-path",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, OS_WARM | OS_ROOT, &[])
                .idle()
                .req(1, &[6, 0])
                .flush(1)
                .close(1)
                .exit(0, 0x89)
                .idle()
                .req(0, &spawn_run)
                .flush(0)
                .close(0),
        ),
        (
            "signal-own-and-other",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, OS_PIDFD, &[])
                .req(0, &spawn_run)
                .req(0, &[2, 2, 0, 23])
                .req(1, &[2, 3, 0, 23])
                .req(0, &[2, 4, 0, 0])
                .req(0, &[2, 5, 9, 17])
                .exit(0, 0x89)
                .req(0, &[2, 6, 0, 17])
                .flush(0)
                .flush(1),
        ),
        (
            "daemon-close-tick",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, 0, &[])
                .req(1, &spawn_daemon)
                .req(1, &spawn_run)
                .close(1)
                .tick(false)
                .tick(true)
                .exit(0, 0x89),
        ),
        (
            "root-shutdown",
            Script::new(CFG_HELLO | CFG_TWO_CONNS, OS_ROOT, &[])
                .req(0, &spawn_daemon)
                .req(1, &[5, 1])
                .req(0, &[5, 2]),
        ),
        (
            "root-close",
            Script::new(CFG_HELLO | CFG_NO_GRACE, OS_ROOT, &[])
                .req(0, &spawn_daemon)
                .close(0),
        ),
        (
            "connect",
            Script::new(CFG_HELLO, 0, &[])
                .req(0, &[3, 1])
                .flush(0)
                .req(1, &hello_ok)
                .req(1, &spawn_daemon)
                .close(1)
                .flush(0),
        ),
        (
            "queue-overflow",
            Script::new(CFG_HELLO | 1, 0, &[])
                .req(0, &[4, 1])
                .req(0, &[4, 2])
                .req(0, &[4, 3])
                .req(0, &[4, 4])
                .req(0, &[4, 5])
                .flush(0),
        ),
    ]
}

/// Runs `data` through the harness of fuzz target `target`.
///
/// Returns `false` for an unknown target name.
pub fn run_target(target: &str, data: &[u8]) -> bool {
    match target {
        "decode_request" => fuzz_decode_request(data),
        "decode_reply" => fuzz_decode_reply(data),
        "decode_spawn_details" => fuzz_decode_spawn_details(data),
        "decode_to_warm" => fuzz_decode_to_warm(data),
        "handler" => fuzz_handler(data),
        _ => return false,
    }
    true
}
