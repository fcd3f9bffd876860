//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` (the
//! `mproc_*` ones) and by the corpus replay test (`tests/fuzz_corpus.rs`).
//! Not a stable API.
//!
//! Every function here is total: it accepts any byte string and panics only
//! when it finds a bug, which is what the fuzzer looks for. Each covers the
//! decoders that run on bytes another process sent:
//!
//! - [`fuzz_codec`]: `codec::decode` of a value picked by the first byte,
//!   plain values, byte payloads (whose block paths must decode as a
//!   byte-by-byte decoder does) and values that carry fds (`Value`, `Array`, `Queue`,
//!   `Connection`, `Lock`, a bare fd), with an fd table from the second
//!   byte (real shared-memory and queue-ring memfds, a queue's doorbell
//!   eventfd, a socket, a sealed read-only memfd, `/dev/null`, a memfd that
//!   can shrink); whatever maps memory must refuse an fd that can shrink
//!   under the mapping.
//! - [`fuzz_child`]: the `Job` a child decodes, the `Outcome` a parent
//!   decodes (and the value inside it), a pool chunk's `ChunkOut`.
//! - [`fuzz_channel`]: one raw frame received on a real `SOCK_SEQPACKET`
//!   pair by `Channel`, inline or with a memfd attached (the spill
//!   frame), with extra fds.
//! - [`fuzz_pool`]: a message of pool frames as a worker or the parent
//!   reads it: framing, headers, per-item payload and fd split.
//! - [`fuzz_ring`]: a queue ring's shared memory written from the input
//!   (header words and entries), optionally repaired as after its lock
//!   owner's death, then popped to the end; the ring must work after.
//! - [`fuzz_manager`]: a manager server served in process on a script of
//!   request frames, the reply frames a client decodes, the TCP
//!   length-prefixed framing, both sides of the HMAC handshake, and the
//!   server's in-place arithmetic on stored numbers.
//!
//! A value that decodes must re-encode, no longer than the input, to bytes
//! that decode again and re-encode identically (a fixed point).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::{Channel, MAX_BODY, RecvError};
use crate::codec::{self, Bytes};
use crate::job::{ChunkOut, Job, Outcome};
use crate::manager::protocol::{self as mp, NumTag, REPLY_ERR, REPLY_OK, RemoteError, Request};
use crate::manager::{auth, server, transport};
use crate::pool::{engine, worker};

mod interop;
mod seeds;
pub use interop::fuzz_pyinterop;

/// A harness: takes any bytes, panics only on a bug.
pub type Harness = fn(&[u8]);

/// Names of the cargo-fuzz targets, each with its harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("mproc_codec", fuzz_codec),
    ("mproc_child", fuzz_child),
    ("mproc_channel", fuzz_channel),
    ("mproc_pool", fuzz_pool),
    ("mproc_manager", fuzz_manager),
    ("mproc_ring", fuzz_ring),
    ("mproc_pyinterop", fuzz_pyinterop),
];

/// Runs the harness of `target` on `data`; `false` for an unknown target.
pub fn run_target(target: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == target) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------- helpers

/// Encodes `value` with the crate's codec; a failure is a bug.
fn enc<T: Serialize + ?Sized>(value: &T, what: &str) -> (Vec<u8>, Vec<OwnedFd>) {
    match codec::encode(value) {
        Ok(x) => x,
        Err(e) => panic!("decoded {what} does not re-encode: {e}"),
    }
}

/// Checks the round trip of a value decoded from `data` with `fds`.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8], fds: Vec<OwnedFd>) -> Option<T> {
    let value: T = codec::decode(data, fds).ok()?;
    let name = std::any::type_name::<T>();
    let (again, fds2) = enc(&value, name);
    assert!(
        again.len() <= data.len(),
        "{name}: re-encoding grew from {} to {} bytes",
        data.len(),
        again.len()
    );
    let value2: T = match codec::decode(&again, fds2) {
        Ok(v) => v,
        Err(e) => panic!("{name}: re-encoded value does not decode: {e}"),
    };
    let (third, _) = enc(&value2, name);
    assert_eq!(again, third, "{name}: encoding is not a fixed point");
    Some(value2)
}

/// [`round_trip`] that also compares the values' `Debug` forms (for types
/// with no `PartialEq`).
fn round_trip_debug<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + std::fmt::Debug,
{
    let first: T = codec::decode(data, Vec::new()).ok()?;
    let v = round_trip::<T>(data, Vec::new())?;
    assert_eq!(
        format!("{first:?}"),
        format!("{v:?}"),
        "round trip changed the value"
    );
    Some(v)
}

/// Reads little-endian integers from the front of a byte string.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// fds of every kind a hostile table may hold, duplicated afresh per call.
struct FdKinds {
    /// A `Value<u64>`'s shared segment.
    segment: OwnedFd,
    /// A queue's ring segment.
    queue_state: OwnedFd,
    /// A queue's doorbell (an eventfd).
    doorbell: OwnedFd,
    /// One end of a `SOCK_SEQPACKET` pair.
    socket: OwnedFd,
    /// A memfd sealed against writing (not mappable for writing).
    sealed: OwnedFd,
    /// `/dev/null`.
    null: OwnedFd,
    /// A page-sized memfd sealed against growing only: a sender can still
    /// shrink it under a receiver's mapping.
    shrinkable: OwnedFd,
    /// The other end of `socket`, kept so that it stays connected.
    _peer: OwnedFd,
}

thread_local! {
    static KINDS: Option<FdKinds> = make_kinds();
}

fn make_kinds() -> Option<FdKinds> {
    let value = crate::Value::new(0u64).ok()?;
    let (_, mut seg) = codec::encode(&value).ok()?;
    let q = crate::Queue::<u8>::new().ok()?;
    let (_, mut qfds) = codec::encode(&q).ok()?;
    let (socket, peer) = forkserver::fdpass::seqpacket_pair().ok()?;
    Some(FdKinds {
        segment: seg.pop()?,
        queue_state: qfds.pop()?,
        doorbell: qfds.pop()?,
        socket,
        sealed: forkserver::fdpass::sealed_memfd("mproc-fuzz", &[0u8; 64]).ok()?,
        null: std::fs::File::open("/dev/null").ok()?.into(),
        shrinkable: shrinkable_page()?,
        _peer: peer,
    })
}

/// A page-sized memfd sealed against growing but not shrinking.
fn shrinkable_page() -> Option<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"mproc-fuzz-shrinkable",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .ok()?;
    let f = std::fs::File::from(fd);
    f.set_len(4096).ok()?;
    fcntl(&f, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).ok()?;
    Some(f.into())
}

/// Checks that no memfd `value` maps can shrink under the mapping (a
/// `SIGBUS` on the next access): every memfd it re-encodes with, past the
/// first `unmapped` fds (a queue's socket ends and doorbell), is sealed against
/// shrinking.
fn assert_mapped_sealed<T: Serialize>(value: &T, unmapped: usize) {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let (_, fds) = enc(value, std::any::type_name::<T>());
    for fd in fds.iter().skip(unmapped) {
        if let Ok(seals) = fcntl(fd, FcntlArg::F_GET_SEALS) {
            assert!(
                SealFlag::from_bits_retain(seals).contains(SealFlag::F_SEAL_SHRINK),
                "{} maps a memfd that can shrink",
                std::any::type_name::<T>()
            );
        }
    }
}

/// An fd table of `bits & 7` (at most 7) fds, the kind of each from
/// `kinds` three bits at a time (0, 6 segment; 1 queue ring; 2 socket;
/// 3 sealed memfd; 4 `/dev/null`; 5 queue doorbell; 7 a page memfd that
/// can shrink), cycling
/// through its 16 bits.
fn fd_table(bits: u8, kinds: u16) -> Vec<OwnedFd> {
    KINDS.with(|k| {
        let Some(k) = k else { return Vec::new() };
        (0..usize::from(bits & 7))
            .filter_map(|i| {
                let src = match (kinds >> ((3 * i) % 16)) & 7 {
                    0 | 6 => &k.segment,
                    1 => &k.queue_state,
                    5 => &k.doorbell,
                    2 => &k.socket,
                    3 => &k.sealed,
                    4 => &k.null,
                    _ => &k.shrinkable,
                };
                src.try_clone().ok()
            })
            .collect()
    })
}

// ------------------------------------------------------------------ codec

/// A struct with a bare fd, as user types carry them (`#[serde(with = "mproc::fd")]`).
#[derive(serde::Serialize, serde::Deserialize)]
struct WithFd {
    name: String,
    #[serde(with = "crate::fd")]
    fd: OwnedFd,
}

/// Runs a queue's `get` over ring memory and socket frames written from
/// `data`, or a script of `put`s and `get`s that die half way.
///
/// The first byte holds flags: bit 1 picks the script, else bit 0 repairs
/// the written ring first (as after its lock owner's death).
///
/// Written state: the header's head, tail, count, doorbell flag, next
/// sequence number, marker count and orphan flag (seven little-endian
/// `u32`s); a byte `n` and `n % 16` frames for the socket, each a `u32`
/// sequence number, a length byte and that many bytes of frame (tag and
/// body); then the bytes of entries from the head on. Every entry is taken
/// with `get_nowait`; the queue must then be empty and work.
///
/// Script: each byte is one step on a queue of items that are small (in
/// the ring), over the ring's limit, carrying an fd, or over a frame's
/// limit (in a stream of their own). `b % 4 == 0` is a `get`, made to die
/// at the `(b >> 2) % 4`-th of none, `Popped`, `Received`, `GetUnlocked`;
/// otherwise a `put` of kind `(b >> 2) % 4`, made to die at the
/// `(b >> 4) % 8`-th of none, `Locked`, `Numbered`, `Sent`,
/// `PushWritten`, `PushCommitted`, `Pushed`, `PutUnlocked`. A death ends
/// the thread holding the ring's lock, as a killed process would. Every
/// `get` must return exactly the next item whose `put` reached the ring
/// (an item is in from the `PushCommitted` point on), whole, with its fd,
/// and the queue must be empty at the end.
pub fn fuzz_ring(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    if flags & 2 != 0 {
        ring_script(input.rest());
    } else {
        ring_written(flags & 1 != 0, input);
    }
}

fn ring_written(died: bool, mut input: Input<'_>) {
    use crate::queue::ring::{CAPACITY, ITEM_MAX};
    let mut words = [0u32; 7];
    for w in &mut words {
        let b = input.take(4);
        let mut le = [0u8; 4];
        le[..b.len()].copy_from_slice(b);
        *w = u32::from_le_bytes(le);
    }
    let Ok(q) = crate::Queue::<Bytes>::new() else {
        return;
    };
    let (ring, rx, tx) = q.parts();
    for _ in 0..input.u8() % 16 {
        let seq = input.take(4);
        let len = usize::from(input.u8());
        let frame = input.take(len);
        let _ = forkserver::fdpass::send_parts(tx.fd(), seq, frame, &[], true);
    }
    ring.scribble(words, input.rest(), died);
    // Each entry takes at least 8 bytes: a ring holds fewer than this.
    for _ in 0..=CAPACITY / 8 + 16 {
        match q.get_nowait() {
            Ok(_) | Err(crate::GetError::Failed(_)) => {}
            Err(_) => break,
        }
    }
    assert!(q.empty(), "the ring is empty");
    // Frames no marker asked for may remain: what a process sending on the
    // socket outside the protocol leaves is beyond repair.
    while rx.try_recv().is_ok() {}
    let items = [vec![1u8; 3], vec![2u8; ITEM_MAX + 1], vec![3u8; 5]];
    for i in &items {
        q.put_nowait(Bytes(i.clone())).expect("a put after");
    }
    for i in &items {
        assert_eq!(&q.get_nowait().expect("a get after").0, i);
    }
    assert!(q.empty());
}

/// An item of the ring script: its number, a body, maybe an fd whose
/// stream holds the number.
type ScriptItem = (u32, Bytes, Option<ScriptFd>);

#[derive(serde::Serialize, serde::Deserialize)]
struct ScriptFd(#[serde(with = "crate::fd")] OwnedFd);

fn script_item(id: u32, kind: u8) -> ScriptItem {
    use crate::queue::ring::ITEM_MAX;
    let len = match kind {
        0 => 8,
        1 => ITEM_MAX + 1 + id as usize % 64,
        2 => 16,
        _ => crate::channel::INLINE_MAX + 1 + id as usize % 64,
    };
    let body = Bytes(vec![id as u8; len]);
    let fd = (kind == 2).then(|| {
        let (a, b) = UnixStream::pair().expect("socketpair");
        (&a).write_all(&id.to_le_bytes()).expect("write");
        ScriptFd(OwnedFd::from(b))
    });
    (id, body, fd)
}

/// Checks a script item that came out of the queue: `id`, whole.
fn check_script_item(got: ScriptItem, id: u32, kind: u8) {
    let want = script_item(id, kind);
    assert_eq!(got.0, id, "items out of order");
    assert_eq!(got.1.0, want.1.0, "item {id} not whole");
    assert_eq!(got.2.is_some(), want.2.is_some(), "item {id}: fd");
    if let Some(ScriptFd(fd)) = got.2 {
        let s = UnixStream::from(fd);
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut &s, &mut b).expect("the fd's stream");
        assert_eq!(
            u32::from_le_bytes(b),
            id,
            "item {id} came with another's fd"
        );
    }
}

fn ring_script(steps: &[u8]) {
    use crate::queue::failpoint::{self, Death, Died, Point};
    use std::collections::VecDeque;
    const PUT_DEATHS: [Option<Point>; 8] = [
        None,
        Some(Point::Locked),
        Some(Point::Numbered),
        Some(Point::Sent),
        Some(Point::PushWritten),
        Some(Point::PushCommitted),
        Some(Point::Pushed),
        Some(Point::PutUnlocked),
    ];
    const GET_DEATHS: [Option<Point>; 4] = [
        None,
        Some(Point::Popped),
        Some(Point::Received),
        Some(Point::GetUnlocked),
    ];
    let Ok(q) = crate::Queue::<ScriptItem>::new() else {
        return;
    };
    // Items in the queue, in order: (number, kind).
    let mut model: VecDeque<(u32, u8)> = VecDeque::new();
    for (id, &b) in (0u32..).zip(steps.iter().take(64)) {
        let kind = (b >> 2) % 4;
        if b % 4 == 0 {
            let death = GET_DEATHS[usize::from((b >> 2) % 4)];
            let q2 = q.clone();
            let got = std::thread::spawn(move || {
                if let Some(p) = death {
                    failpoint::arm(p, 1, Death::Unwind);
                }
                let got = q2.get_nowait();
                failpoint::disarm();
                got
            })
            .join();
            match got {
                Ok(Ok(item)) => {
                    let (want, kind) = model.pop_front().expect("an item from an empty queue");
                    check_script_item(item, want, kind);
                }
                Ok(Err(crate::GetError::Empty)) => {
                    assert!(model.is_empty(), "{} items missing", model.len());
                }
                Ok(Err(e)) => panic!("get: {e}"),
                // The taker died with the item.
                Err(p) if p.is::<Died>() => {
                    model.pop_front().expect("a get died taking nothing");
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        } else {
            let death = PUT_DEATHS[usize::from((b >> 4) % 8)];
            let item = script_item(id, kind);
            let q2 = q.clone();
            let put = std::thread::spawn(move || {
                if let Some(p) = death {
                    failpoint::arm(p, 1, Death::Unwind);
                }
                let put = q2.put_nowait(item).map_err(|e| e.to_string());
                failpoint::disarm();
                put
            })
            .join();
            match put {
                Ok(Ok(())) => model.push_back((id, kind)),
                Ok(Err(e)) => panic!("put: {e}"),
                Err(p) => match p.downcast::<Died>() {
                    // In from the commit of its entry on.
                    Ok(d)
                        if matches!(
                            d.0,
                            Point::PushCommitted | Point::Pushed | Point::PutUnlocked
                        ) =>
                    {
                        model.push_back((id, kind));
                    }
                    Ok(_) => {}
                    Err(p) => std::panic::resume_unwind(p),
                },
            }
        }
        assert_eq!(q.qsize(), model.len(), "qsize");
    }
    while let Some((id, kind)) = model.pop_front() {
        check_script_item(q.get_nowait().expect("an item put is there"), id, kind);
    }
    assert!(matches!(q.get_nowait(), Err(crate::GetError::Empty)));
    assert!(q.empty());
}

/// Decodes `data[3..]` as the value `data[0]` picks, with the fd table
/// `data[1..3]` describes, and checks the round trip.
pub fn fuzz_codec(data: &[u8]) {
    let mut input = Input(data);
    let pick = input.u8();
    let bits = input.u8();
    let kinds = u16::from(input.u8()) | u16::from(bits >> 3) << 8;
    let fds = fd_table(bits, kinds);
    let body = input.rest();
    match pick % 20 {
        0 => drop(round_trip::<Bytes>(body, fds)),
        1 => drop(round_trip::<String>(body, fds)),
        2 => drop(round_trip::<Vec<u64>>(body, fds)),
        3 => drop(round_trip::<(u32, Option<String>)>(body, fds)),
        4 => drop(round_trip::<Vec<Bytes>>(body, fds)),
        5 => drop(round_trip::<BTreeMap<String, i64>>(body, fds)),
        6 => drop(round_trip::<(f32, f64, char, bool, i128)>(body, fds)),
        7 => drop(round_trip::<Result<Vec<String>, String>>(body, fds)),
        8 => {
            if let Some(v) = round_trip::<crate::Value<u64>>(body, fds) {
                assert_mapped_sealed(&v, 0);
                // The mapping is really there (and no smaller than a u64).
                let _ = v.get();
            }
        }
        9 => {
            if let Some(a) = round_trip::<crate::Array<u32>>(body, fds) {
                assert_mapped_sealed(&a, 0);
                let _ = a.to_vec();
            }
        }
        10 => {
            if let Some(q) = round_trip::<crate::Queue<u8>>(body, fds) {
                assert_mapped_sealed(&q, 3);
                let _ = q.empty();
                if q.put_nowait(7).is_ok() {
                    let _ = q.get_nowait();
                }
            }
        }
        11 => {
            if let Some(c) = round_trip::<crate::connection::Connection<u8>>(body, fds) {
                let _ = c.poll(Some(Duration::ZERO));
            }
        }
        12 => {
            if let Some(l) = round_trip::<crate::Lock>(body, fds) {
                assert_mapped_sealed(&l, 0);
                drop(l.try_acquire());
            }
        }
        13 => drop(round_trip::<WithFd>(body, fds)),
        14 => {
            if let Some(a) = round_trip::<crate::RawArray<u8>>(body, fds) {
                assert_mapped_sealed(&a, 0);
            }
        }
        15 => {
            if let Some(v) = round_trip::<Vec<(Bytes, crate::RawValue<u16>)>>(body, fds) {
                assert_mapped_sealed(&v, 0);
            }
        }
        // Byte payloads, which the codec moves as one block: the block
        // paths must agree with a decoder that goes byte by byte.
        16 => same_bytes(round_trip::<Vec<u8>>(body, fds), body),
        17 => same_bytes(round_trip::<Box<[u8]>>(body, fds).map(Vec::from), body),
        18 => drop(round_trip_debug::<BlockFields>(body)),
        _ => {
            let blocks = round_trip::<Vec<Vec<u8>>>(body, fds);
            let seqs = codec::decode::<Vec<PerByte>>(body, Vec::new()).ok();
            assert_eq!(
                blocks,
                seqs.map(|v| v.into_iter().map(|b| b.0).collect()),
                "byte blocks and byte sequences decode apart"
            );
        }
    }
}

/// Checks that `decoded` (a byte payload from `body`) is what a decoder
/// going byte by byte gets.
fn same_bytes(decoded: Option<Vec<u8>>, body: &[u8]) {
    let slow = codec::decode::<PerByte>(body, Vec::new()).ok().map(|b| b.0);
    assert_eq!(
        decoded, slow,
        "a byte block and a byte sequence decode apart"
    );
}

/// A byte sequence read element by element, as serde's visitors for
/// other formats do.
#[derive(Debug, PartialEq)]
struct PerByte(Vec<u8>);

impl<'de> serde::Deserialize<'de> for PerByte {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PerByte;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PerByte, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(PerByte(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Byte payloads in fields, beside values that are not bytes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BlockFields {
    id: u64,
    name: String,
    body: Vec<u8>,
    boxed: Box<[u8]>,
    wide: Vec<u16>,
    more: Option<Vec<u8>>,
}

// ------------------------------------------------------------------ child

/// Decodes `data[1..]` as what a child or its parent receives, picked by
/// `data[0]`: a `Job`, an `Outcome` (and a `String` inside a
/// `Returned`, as `join` decodes it), or a pool chunk's `ChunkOut`.
pub fn fuzz_child(data: &[u8]) {
    let (pick, body) = data.split_first().map_or((0, &[][..]), |(p, b)| (*p, b));
    match pick % 4 {
        0 => drop(round_trip_debug::<Job>(body)),
        1 => {
            if let Some(Outcome::Returned(v)) = round_trip_debug::<Outcome>(body) {
                drop(round_trip::<String>(&v, Vec::new()));
            }
        }
        2 => drop(round_trip_debug::<ChunkOut<String>>(body)),
        _ => drop(round_trip_debug::<ChunkOut<(u8, Bytes)>>(body)),
    }
}

// ---------------------------------------------------------------- channel

thread_local! {
    static PAIR: Option<(Channel, Channel)> = Channel::pair().ok();
}

/// Sends one raw frame on a `SOCK_SEQPACKET` pair and receives it with
/// `Channel::try_recv_max`, then checks what came out.
///
/// ```text
/// flags:u8  bit 0     attach a memfd (after the extra fds, as a spill frame)
///           bits 1-3  extra fds (a table as in `fuzz_codec`)
///           bit 4     a small limit (`max` = 64) instead of the default
///           bit 5     the memfd is a plain (unsealed) file, not a memfd
/// kinds:u8  kinds of the extra fds
/// mlen:u16  bytes of the memfd: the frame bytes, repeated
/// frame     the rest
/// ```
pub fn fuzz_channel(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let kinds = input.u8();
    let mlen = usize::from(input.u16());
    let frame = input.rest();
    let max = if flags & 16 != 0 { 64 } else { MAX_BODY };
    let mut fds = fd_table(flags >> 1, u16::from(kinds));
    let mut mem = Vec::new();
    if flags & 1 != 0 {
        mem = frame.iter().copied().cycle().take(mlen).collect();
        let fd = if flags & 32 != 0 {
            plain_file(&mem)
        } else {
            forkserver::fdpass::sealed_memfd("mproc-fuzz", &mem).ok()
        };
        let Some(fd) = fd else { return };
        fds.push(fd);
    }
    PAIR.with(|p| {
        let Some((tx, rx)) = p else { return };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if forkserver::fdpass::send_parts(tx.fd(), &[], frame, &borrowed, true).is_err() {
            return;
        }
        drop(borrowed);
        drop(fds);
        let got = rx.try_recv_max(max);
        // Whatever happened, the frame was consumed: nothing is left over.
        assert!(
            matches!(rx.try_recv(), Err(RecvError::Timeout)),
            "a frame left something behind"
        );
        let Ok((body, _fds)) = got else { return };
        assert!(body.len() <= max, "a body over the limit came through");
        match frame.first() {
            Some(0) => assert_eq!(body, frame[1..], "inline body changed"),
            // 1: the body in a memfd; 2: the body in a stream socket (only
            // accepted when the attached fd is a socket holding all of it).
            Some(tag @ (1 | 2)) => {
                assert_eq!(
                    frame.len(),
                    9,
                    "a spill frame of the wrong size came through"
                );
                let mut len = [0u8; 8];
                len.copy_from_slice(&frame[1..9]);
                assert_eq!(u64::from_le_bytes(len), body.len() as u64, "spill length");
                if *tag == 1 && flags & 1 != 0 {
                    assert_eq!(body, mem[..body.len()], "spilled body changed");
                }
            }
            t => panic!("frame tag {t:?} came through"),
        }
        // The body goes back through the channel (inline or spilled) intact.
        if tx.send(&body, &[]).is_ok() {
            match rx.try_recv() {
                Ok((back, back_fds)) => {
                    assert_eq!(back, body, "resent body changed");
                    assert!(back_fds.is_empty(), "fds appeared");
                }
                Err(e) => panic!("resent body of {} bytes lost: {e:?}", body.len()),
            }
        }
    });
}

/// An unlinked temporary file holding `bytes` (not a memfd, not sealed).
fn plain_file(bytes: &[u8]) -> Option<OwnedFd> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("mproc-fuzz-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .ok()?;
    let _ = std::fs::remove_file(&path);
    f.write_all(bytes).ok()?;
    Some(f.into())
}

// ------------------------------------------------------------------- pool

/// Reads `data[1..]` as one message of pool frames with `data[0] & 7` fds,
/// as a worker (`data[0]` bit 3 clear) or the parent (set) reads it.
///
/// Every frame that parses must re-frame, with its payload, to one frame
/// that parses to the same header and payload; the fds a frame claims are
/// taken in order, and the item split claims every byte and fd or fails.
pub fn fuzz_pool(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let msg = input.rest();
    let mut fds = fd_table(flags & 7, 0x4924).into_iter();
    let parent = flags & 8 != 0;
    for f in worker::frames(msg) {
        let Ok(f) = f else { break };
        assert!(f.len() <= msg.len(), "frame longer than its message");
        let Ok((head, payload)) = worker::unframe(f) else {
            break;
        };
        let shown = format!("{head:?}");
        // Re-framing gives the same frame back.
        let again = match worker::frame(&head, &[payload]) {
            Ok(b) => b,
            Err(e) => panic!("header {shown} does not re-frame: {e}"),
        };
        let frames: Vec<_> = worker::frames(&again).collect();
        assert_eq!(frames.len(), 1, "re-framed {shown} is not one frame");
        let (head2, payload2) = match frames[0].clone().and_then(worker::unframe) {
            Ok(x) => x,
            Err(e) => panic!("re-framed {shown} does not parse: {e}"),
        };
        assert_eq!(format!("{head2:?}"), shown, "re-framing changed the header");
        assert_eq!(payload2, payload, "re-framing changed the payload");
        assert!(
            again.len() <= 4 + f.len(),
            "re-framing grew the frame from {} to {} bytes",
            f.len() + 4,
            again.len()
        );
        let want = head.nfds();
        let mine: Vec<OwnedFd> = fds.by_ref().take(want).collect();
        let have = mine.len();
        match head {
            worker::Head::Task { items, .. } if !parent => {
                check_split(items.iter().copied(), payload, mine, have);
            }
            worker::Head::Init { len, nfds, .. } if !parent => {
                check_split([(len, nfds)].into_iter(), payload, mine, have);
            }
            worker::Head::Done { items, .. } if parent => {
                let n = items.len();
                if let Ok(Ok(out)) = engine::parse_done(items, payload, mine) {
                    assert_eq!(out.len(), n, "an item outcome went missing");
                }
            }
            _ => {}
        }
    }
}

fn check_split(
    lens: impl Iterator<Item = (u32, u32)> + Clone,
    payload: &[u8],
    fds: Vec<OwnedFd>,
    have: usize,
) {
    let Ok(parts) = worker::split_items(lens.clone(), payload, fds) else {
        return;
    };
    let bytes: usize = parts.iter().map(|p| p.0.len()).sum();
    let nfds: usize = parts.iter().map(|p| p.1.len()).sum();
    assert_eq!(bytes, payload.len(), "a split left bytes unclaimed");
    assert_eq!(nfds, have, "a split left fds unclaimed");
    for ((b, f), (len, n)) in parts.iter().zip(lens) {
        assert_eq!((b.len(), f.len()), (len as usize, n as usize));
    }
}

// ---------------------------------------------------------------- manager

/// Most request frames one manager script sends.
pub const MAX_REQUESTS: usize = 24;

/// Runs `data[1..]` through the manager's decoders, picked by `data[0] % 5`:
///
/// - 0: a script of request frames (`len:u16 bytes`, at most
///   [`MAX_REQUESTS`]) sent to a manager server served in this process on
///   a socket pair, then the client end shut for writing. The server must
///   answer every frame, malformed or not, with one well-formed reply and
///   then stop. `Listen` requests are not sent (they bind a port and serve
///   it for good), nor anything after a `Shutdown`.
/// - 1: a reply frame as a client decodes it.
/// - 2: a TCP byte stream read as length-prefixed frames, each then
///   decoded as a request.
/// - 3: the HMAC handshake, both sides, against a peer that sends the
///   given frames: neither side may accept a peer that does not know the
///   key (it cannot, here: each run has fresh random nonces).
/// - 4: `num_add(tag, old, delta)`, the server's in-place arithmetic.
pub fn fuzz_manager(data: &[u8]) {
    let (pick, body) = data.split_first().map_or((0, &[][..]), |(p, b)| (*p, b));
    match pick % 5 {
        0 => manager_script(body),
        1 => check_reply(body),
        2 => tcp_frames(body),
        3 => handshake(body),
        _ => num_add(body),
    }
}

fn manager_script(body: &[u8]) {
    let mut input = Input(body);
    let mut frames = Vec::new();
    let mut shutdown = false;
    // Nothing is sent after a shutdown: the server would close with
    // requests unread, and the kernel then resets the connection before
    // the replies already queued are read.
    while !input.0.is_empty() && frames.len() < MAX_REQUESTS && !shutdown {
        let len = usize::from(input.u16());
        let f = input.take(len);
        let req = codec::decode::<Request>(f, Vec::new());
        if let Ok(r) = &req {
            let _ = round_trip_debug::<Request>(f);
            if matches!(r, Request::Listen { .. }) {
                continue;
            }
        }
        shutdown = matches!(req, Ok(Request::Shutdown));
        frames.push(f);
    }
    let Ok((client, root)) = Channel::pair() else {
        return;
    };
    for f in &frames {
        if client.send(f, &[]).is_err() {
            return;
        }
    }
    let Ok(dup) = client.fd().try_clone_to_owned() else {
        return;
    };
    let _ = UnixStream::from(dup).shutdown(Shutdown::Write);
    let Ok(root_fd) = root.fd().try_clone_to_owned() else {
        return;
    };
    drop(root);
    let threads = thread_count();
    let t = std::thread::spawn(move || {
        server::serve::<()>(server::ServeArgs {
            root: root_fd,
            init: None,
            pool_fns: Vec::new(),
        });
    });
    let mut replies = 0usize;
    loop {
        match client.recv(Some(Instant::now() + Duration::from_secs(60))) {
            Ok((reply, _fds)) => {
                replies += 1;
                check_reply(&reply);
                assert!(
                    matches!(reply.first(), Some(&REPLY_OK | &REPLY_ERR)),
                    "reply without a tag"
                );
                if reply[0] == REPLY_ERR {
                    assert!(
                        codec::decode::<RemoteError>(&reply[1..], Vec::new()).is_ok(),
                        "an error reply that does not decode"
                    );
                }
            }
            Err(RecvError::Closed) => break,
            Err(e) => panic!("manager script: {e:?}"),
        }
    }
    assert!(t.join().is_ok(), "the manager server panicked");
    // A `Connect` leaves a thread serving the new connection until it sees
    // the close of the end it was given (dropped above): wait for it, so
    // that nothing of this input outlives it (a leak checker would see
    // that thread's buffers as leaked).
    let deadline = Instant::now() + Duration::from_secs(5);
    while let (Some(now), Some(before)) = (thread_count(), threads) {
        if now <= before || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(replies, frames.len(), "not one reply per request");
}

/// Threads of this process (`None` if `/proc` cannot tell).
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Decodes a reply as a client does: the tag, then an error or a value.
fn check_reply(reply: &[u8]) {
    let Some((&tag, rest)) = reply.split_first() else {
        return;
    };
    match tag {
        REPLY_ERR => {
            if let Some(e) = round_trip_debug::<RemoteError>(rest) {
                assert!(!e.to_string().is_empty());
            }
        }
        _ => {
            // Payloads of the shapes proxies decode.
            let _ = round_trip::<u64>(rest, Vec::new());
            let _ = round_trip::<(u64, String)>(rest, Vec::new());
            let _ = round_trip::<Option<Bytes>>(rest, Vec::new());
            let _ = round_trip::<Vec<(Bytes, Bytes)>>(rest, Vec::new());
        }
    }
}

/// A stream pair for [`transport::read_frame`] (a Unix stream socket
/// behaves as a TCP stream for `read`), with `bytes` written and the writer
/// shut.
fn stream_with(bytes: &[u8]) -> Option<(TcpStream, TcpStream)> {
    let (a, b) = UnixStream::pair().ok()?;
    let (a, b) = (
        TcpStream::from(OwnedFd::from(a)),
        TcpStream::from(OwnedFd::from(b)),
    );
    b.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    (&a).write_all(bytes).ok()?;
    Some((a, b))
}

fn tcp_frames(body: &[u8]) {
    const LIMIT: usize = 1024;
    let Some((a, b)) = stream_with(body) else {
        return;
    };
    let _ = a.shutdown(Shutdown::Write);
    let mut at = 0usize;
    loop {
        match transport::read_frame(&b, LIMIT) {
            Ok(f) => {
                assert!(f.len() <= LIMIT, "a frame over the limit");
                assert_eq!(f, body[at + 4..at + 4 + f.len()], "frame bytes changed");
                at += 4 + f.len();
                let _ = round_trip_debug::<Request>(&f);
            }
            Err(RecvError::Closed) => {
                assert_eq!(at, body.len(), "closed before the end of the stream");
                break;
            }
            Err(RecvError::Malformed(_)) => break,
            Err(e) => panic!("tcp framing: {e:?}"),
        }
    }
}

fn handshake(body: &[u8]) {
    // A client's answer to the server's challenge: the whole body, framed.
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(body);
    if let Some((peer, s)) = stream_with(&framed) {
        let _ = peer.shutdown(Shutdown::Write);
        assert!(
            auth::serve(&s, b"fuzz-key").is_err(),
            "the server accepted a client that does not know the key"
        );
    }
    // A server's challenge and verdict, as raw stream bytes.
    if let Some((peer, c)) = stream_with(body) {
        let _ = peer.shutdown(Shutdown::Write);
        assert!(
            auth::answer(&c, b"fuzz-key").is_err(),
            "the client accepted a server that does not know the key"
        );
    }
}

fn num_add(body: &[u8]) {
    let mut input = Input(body);
    let tag = input.u8();
    let has_old = tag & 0x80 != 0;
    let tags = [
        NumTag::I8,
        NumTag::I16,
        NumTag::I32,
        NumTag::I64,
        NumTag::I128,
        NumTag::U8,
        NumTag::U16,
        NumTag::U32,
        NumTag::U64,
        NumTag::U128,
        NumTag::F32,
        NumTag::F64,
    ];
    let t = tags[usize::from(tag & 0x7f) % tags.len()];
    let old_len = usize::from(input.u8());
    let old = input.take(old_len);
    let delta = input.rest();
    if let Ok(sum) = mp::num_add(t, has_old.then_some(old), delta) {
        // The sum is a stored number of the same type: adding to it works
        // or reports an error, and it decodes as that type.
        let _ = mp::num_add(t, Some(&sum), delta);
    }
}

// ------------------------------------------------------------------ seeds

/// The seed corpus: `(target, file name, bytes)`, valid encodings of every
/// message kind plus edge cases, built from the tables of each target's
/// family of messages (the ignored `write_seeds` test writes them to
/// `fuzz/corpus`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (target, family) in seeds::FAMILIES {
        for (name, bytes) in family() {
            out.push((*target, format!("seed-{name}"), bytes));
        }
    }
    out.extend(interop::seeds());
    out
}
