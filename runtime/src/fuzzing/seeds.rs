//! The seed corpus of the `mproc_*` targets, as tables.
//!
//! One function per target or family of messages, each a table of
//! `(name, bytes)`: real messages encoded by the crate (so that the seeds
//! follow the encoding when it changes) plus edge cases written out by
//! hand. [`FAMILIES`] names the target of each; [`super::seeds()`] joins them.

use std::collections::BTreeMap;
use std::time::Duration;

use forkserver::FnRef;
use serde::Serialize;

use super::BlockFields;
use crate::codec::{self, Bytes};
use crate::globals::Identity;
use crate::job::{ChunkOut, Job, Outcome};
use crate::manager::protocol::{
    self as mp, REPLY_ERR, REPLY_OK, RemoteError, RemoteErrorKind, Request,
};
use crate::pool::worker::{self, Head, Out};

/// Seeds of one family: `(name, bytes)`.
pub(super) type Family = fn() -> Vec<(&'static str, Vec<u8>)>;

/// Every family with the target its seeds are for, in corpus order.
pub(super) const FAMILIES: &[(&str, Family)] = &[
    ("mproc_codec", codec_values),
    ("mproc_codec", codec_fds),
    ("mproc_child", child),
    ("mproc_ring", ring),
    ("mproc_ring", ring_scripts),
    ("mproc_channel", channel),
    ("mproc_pool", pool),
    ("mproc_manager", manager_objects),
    ("mproc_manager", manager_references),
    ("mproc_manager", manager_wire),
    ("mproc_manager", manager_num),
];

/// The encoding of `value` (fds dropped; empty if it does not encode).
fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    codec::encode(value).map(|(b, _)| b).unwrap_or_default()
}

/// `value` after a prefix of header bytes.
fn after(head: &[u8], value: Vec<u8>) -> Vec<u8> {
    let mut s = head.to_vec();
    s.extend(value);
    s
}

// ------------------------------------------------------------------ codec

/// `mproc_codec`, plain values and broken encodings: `[pick, 0, 0] ++ value`.
fn codec_values() -> Vec<(&'static str, Vec<u8>)> {
    let map: BTreeMap<String, i64> = [("a".to_string(), -1), ("b".to_string(), i64::MIN)].into();
    let block = BlockFields {
        id: 1 << 40,
        name: "frame".into(),
        body: vec![1, 2, 3],
        boxed: vec![4; 130].into_boxed_slice(),
        wide: vec![1, 300],
        more: Some(vec![]),
    };
    // A string announcing 1 GiB in five bytes: refused by the limit, which
    // follows the input's length, before anything is allocated.
    let string_1gib = after(&[252], ((1u32 << 30) - 64).to_le_bytes().to_vec());
    let table: Vec<(&str, u8, Vec<u8>)> = vec![
        ("bytes", 0, enc(&Bytes(b"hello".to_vec()))),
        ("string", 1, enc(&"héllo".to_string())),
        ("vec-u64", 2, enc(&vec![0u64, 250, 251, 1 << 40, u64::MAX])),
        ("tuple", 3, enc(&(7u32, Some("x".to_string())))),
        ("vec-bytes", 4, enc(&vec![Bytes(vec![1]), Bytes(vec![])])),
        ("map", 5, enc(&map)),
        ("vec-u8", 16, enc(&(0..=255u8).collect::<Vec<u8>>())),
        ("boxed-u8", 17, enc(&vec![7u8; 300].into_boxed_slice())),
        ("block-fields", 18, enc(&block)),
        (
            "vec-vec-u8",
            19,
            enc(&vec![vec![1u8, 2], vec![], vec![9; 200]]),
        ),
        (
            "scalars",
            6,
            enc(&(f32::NAN, -0.0f64, 'é', true, i128::MIN)),
        ),
        ("result", 7, enc(&Err::<Vec<String>, String>("no".into()))),
        (
            "huge-length",
            0,
            vec![253, 255, 255, 255, 255, 255, 255, 255, 127],
        ),
        ("regress-string-1gib", 1, string_1gib),
        // The most a valid encoding claims per byte (one-byte varints of
        // wide integers): it must still decode under the length-based limit.
        ("wide-varints", 2, enc(&vec![1u64; 4000])),
        (
            "wide-varints-i128",
            6,
            enc(&(1f32, 2f64, 'a', false, 1i128)),
        ),
        ("bad-utf8", 1, vec![2, 0xc3, 0x28]),
        ("trailing", 2, vec![1, 5, 9]),
    ];
    table
        .into_iter()
        .map(|(name, pick, v)| (name, after(&[pick, 0, 0], v)))
        .collect()
}

/// `mproc_codec`, values with fds: `[pick, fd bits, kinds] ++ value`, the
/// index table of a real encoding and the fds given in the order the
/// harness makes them (0 segment, 1 queue state, 2 socket).
fn codec_fds() -> Vec<(&'static str, Vec<u8>)> {
    let mut table: Vec<(&str, [u8; 3], Vec<u8>)> = Vec::new();
    if let Ok(v) = crate::Value::new(5u64) {
        let v = enc(&v);
        table.extend([
            ("value", [8, 1, 0], v.clone()),
            ("value-wrong-fd", [8, 1, 3], v.clone()),
            ("value-queue-fd", [8, 1, 1], v.clone()),
            ("value-shrinkable", [8, 1, 7], v.clone()),
            ("value-no-fd", [8, 0, 0], v),
        ]);
    }
    if let Ok(a) = crate::Array::from_slice(&[1u32, 2]) {
        let a = enc(&a);
        let mut long = a.clone();
        if let Some(last) = long.last_mut() {
            *last = 250; // more elements than the segment holds
        }
        table.extend([("array", [9, 1, 0], a), ("array-too-long", [9, 1, 0], long)]);
    }
    if let Ok(q) = crate::Queue::<u8>::new() {
        // rx, tx: sockets (kind 2); the doorbell (kind 5); the ring (kind
        // 1), or a shared-memory segment (kind 0) of another size, or a
        // page that can shrink (kind 7). Four fds, three bits of kind each:
        // the ring's kind is the top bit of the third byte and the bits
        // past the count in the second.
        let q = enc(&q);
        table.extend([
            ("queue", [10, 4 | 3 << 3, 0x52], q.clone()),
            ("queue-segment-state", [10, 4 | 1 << 3, 0x52], q.clone()),
            (
                "regress-queue-state-shrinkable",
                [10, 4 | 0xf << 3, 0x52],
                q.clone(),
            ),
            // A socket where the doorbell goes.
            ("queue-doorbell-socket", [10, 4 | 2 << 3, 0x92], q),
        ]);
    }
    if let Ok((c, _d)) = crate::connection::pipe::<u8>(true) {
        table.push(("connection", [11, 1, 2], enc(&c)));
    }
    if let Ok(l) = crate::Lock::new() {
        let l = enc(&l);
        table.extend([
            ("lock", [12, 1, 0], l.clone()),
            ("lock-sealed", [12, 1, 3], l),
        ]);
    }
    table.extend([
        ("with-fd", [13, 1, 4], vec![1, b'n', 0]),
        ("with-fd-bad-index", [13, 1, 4], vec![1, b'n', 9]),
    ]);
    if let Ok(r) = crate::RawArray::from_slice(&[1u8, 2, 3]) {
        table.push(("raw-array", [14, 1, 0], enc(&r)));
    }
    if let Ok(r) = crate::RawValue::new(9u16) {
        table.push(("raw-values", [15, 2, 0], enc(&vec![(Bytes(vec![1]), r)])));
    }
    table
        .into_iter()
        .map(|(name, head, v)| (name, after(&head, v)))
        .collect()
}

// ------------------------------------------------------------------ child

/// `mproc_child`: `[pick] ++ value`, a job (0), an outcome (1), a chunk of
/// strings (2) or of byte pairs (3).
fn child() -> Vec<(&'static str, Vec<u8>)> {
    let job = Job {
        trampoline: FnRef::from_offset(-64),
        func: FnRef::from_offset(128),
        args: enc(&(1u32, "arg".to_string())),
        me: Identity {
            name: "Process-1:2".into(),
            path: vec![1, 2],
            authkey: vec![7; 32],
            daemon: true,
            parent: Some((1234, "MainProcess".into())),
        },
        start_method: Some(crate::StartMethod::ForkServer),
    };
    let full = enc(&job);
    let minimal = enc(&Job {
        me: Identity::blank(),
        start_method: None,
        args: Vec::new(),
        ..job
    });
    let mixed = ChunkOut::<String>::Mixed(vec![Ok("a".into()), Err("p".into())]);
    let table: Vec<(&str, u8, Vec<u8>)> = vec![
        ("job", 0, full),
        ("job-minimal", 0, minimal),
        (
            "returned",
            1,
            enc(&Outcome::Returned(enc(&"ok".to_string()))),
        ),
        ("returned-bad-inner", 1, enc(&Outcome::Returned(vec![9, 1]))),
        ("panicked", 1, enc(&Outcome::Panicked("boom".into()))),
        ("outcome-bad-variant", 1, vec![7]),
        (
            "chunk-all",
            2,
            enc(&ChunkOut::All(vec!["a".to_string(), "b".to_string()])),
        ),
        ("chunk-mixed", 2, enc(&mixed)),
        (
            "chunk-bytes",
            3,
            enc(&ChunkOut::All(vec![(1u8, Bytes(vec![0; 8]))])),
        ),
    ];
    table
        .into_iter()
        .map(|(name, pick, v)| (name, after(&[pick], v)))
        .collect()
}

// ------------------------------------------------------------------- ring

/// A queue ring's memory: the death flag; the words flags, head, tail,
/// count, doorbell flag, next sequence number, marker count, orphan flag;
/// the frames `(sequence number, bytes)`; the entries.
fn ring_seed(died: u8, words: [u32; 7], frames: &[(u32, &[u8])], entries: &[u8]) -> Vec<u8> {
    let mut v = vec![died];
    for w in words {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.push(frames.len() as u8);
    for (seq, f) in frames {
        v.extend_from_slice(&seq.to_le_bytes());
        v.push(f.len() as u8);
        v.extend_from_slice(f);
    }
    v.extend_from_slice(entries);
    v
}

/// Ring entries: an item "abc" (padded to 8) and the marker of frame 5.
const ITEM_AND_MARKER: [u8; 24] = [
    3, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0,
];

/// A `Bytes` of 3 bytes `b` as an inline frame: tag, then its encoding.
fn inline_frame(b: u8) -> Vec<u8> {
    after(&[0], enc(&Bytes(vec![b; 3])))
}

/// A row of the ring table: name, then the arguments of [`ring_seed`].
type RingRow<'a> = (&'static str, u8, [u32; 7], Vec<(u32, &'a [u8])>, &'a [u8]);

/// `mproc_ring`, ring memory written from the input (see [`ring_seed`]).
fn ring() -> Vec<(&'static str, Vec<u8>)> {
    let (f4, f5, f6) = (inline_frame(4), inline_frame(5), inline_frame(6));
    let two = &ITEM_AND_MARKER[..];
    // The head 8 bytes before the end of the ring: the item's header is
    // the ring's last 8 bytes, its payload wraps to the start.
    let end = (crate::queue::ring::CAPACITY - 8) as u32;
    let table: Vec<RingRow<'_>> = vec![
        ("empty", 0, [0; 7], vec![], &[]),
        (
            "item-marker",
            0,
            [0, 24, 2, 1, 6, 1, 0],
            vec![(5, &f5)],
            two,
        ),
        (
            "item-marker-died",
            1,
            [0, 24, 9, 0, 6, 0, 0],
            vec![(5, &f5)],
            two,
        ),
        (
            "tail-past-entries",
            1,
            [0, 64, 2, 1, 6, 1, 0],
            vec![(5, &f5)],
            two,
        ),
        ("misaligned", 0, [3, 24, 2, 1, 6, 1, 0], vec![(5, &f5)], two),
        (
            "wrapped-positions",
            0,
            [u32::MAX - 7, 16, 1, 1, 6, 1, 0],
            vec![(5, &f5)],
            two,
        ),
        // An orphan frame (4) ahead of the marker's (5), one behind it (6).
        (
            "orphans-around-a-marker",
            1,
            [0, 24, 2, 1, 7, 1, 1],
            vec![(4, &f4), (5, &f5), (6, &f6)],
            two,
        ),
        // The marker's frame is missing; a newer frame stands in its place.
        (
            "frame-newer-than-marker",
            0,
            [0, 24, 2, 1, 7, 1, 0],
            vec![(6, &f6)],
            two,
        ),
        // A marker with no frame at all, and a frame shorter than its number.
        (
            "marker-without-frame",
            0,
            [0, 24, 2, 1, 7, 1, 0],
            vec![(0, &[])],
            two,
        ),
        (
            "entry-wraps",
            0,
            [end, end + 24, 2, 1, 6, 1, 0],
            vec![(5, &f5)],
            two,
        ),
    ];
    table
        .into_iter()
        .map(|(name, died, words, frames, entries)| {
            (name, ring_seed(died, words, &frames, entries))
        })
        .collect()
}

/// A script step: a `put` of item `kind` that dies at point `death`.
fn put(kind: u8, death: u8) -> u8 {
    1 | kind << 2 | death << 4
}

/// `mproc_ring`, scripts (flags bit 1): every death of a `put` of each
/// kind, each followed by a `get`; every death of a `get` of each kind;
/// deaths with items of every kind queued behind and ahead.
fn ring_scripts() -> Vec<(&'static str, Vec<u8>)> {
    let mut put_deaths = vec![2u8];
    for kind in 0..4 {
        for death in 0..8 {
            put_deaths.extend([put(kind, death), 0]);
        }
    }
    let mut get_deaths = vec![2u8];
    for kind in 0..4 {
        for death in 0..4 {
            get_deaths.extend([put(kind, 0), put(kind, 0), death << 2, 0]);
        }
    }
    let mut mixed = vec![2u8];
    for death in 1..8 {
        mixed.extend([
            put(3, 0),
            put(1, death),
            put(2, 0),
            put(0, death),
            put(1, 0),
        ]);
    }
    mixed.extend([0, 1 << 2, 0, 2 << 2, 0, 3 << 2]);
    vec![
        ("script-put-deaths", put_deaths),
        ("script-get-deaths", get_deaths),
        ("script-mixed", mixed),
    ]
}

// ---------------------------------------------------------------- channel

/// A spill frame: tag 1, then the memfd's announced length.
fn spill(len: u64) -> Vec<u8> {
    after(&[1], len.to_le_bytes().to_vec())
}

/// `mproc_channel`: `[flags, kinds, mlen: u16] ++ frame`.
fn channel() -> Vec<(&'static str, Vec<u8>)> {
    let table: Vec<(&str, u8, u8, u16, Vec<u8>)> = vec![
        ("inline", 0, 0, 0, b"\0hello".to_vec()),
        ("inline-empty", 0, 0, 0, b"\0".to_vec()),
        ("empty-frame", 0, 0, 0, b"".to_vec()),
        ("inline-fds", 6, 0o42, 0, b"\0three fds".to_vec()),
        ("inline-over-limit", 16, 0, 0, vec![0u8; 100]),
        ("spill", 1, 0, 9, spill(9)),
        ("spill-large", 1, 0, 65_000, spill(65_000)),
        ("spill-short-memfd", 1, 0, 4, spill(9)),
        ("spill-huge-length", 1, 0, 9, spill(u64::MAX)),
        ("spill-no-memfd", 0, 0, 0, spill(9)),
        ("spill-unsealed", 33, 0, 9, spill(9)),
        ("spill-socket-fd", 2, 2, 0, spill(0)),
        ("spill-sealed-fd", 2, 3, 0, spill(64)),
        ("spill-over-limit", 17, 0, 100, spill(100)),
        ("spill-extra-fds", 5, 0o34, 9, spill(9)),
        ("spill-bad-size", 1, 0, 10, vec![1, 1, 0, 0]),
        ("unknown-tag", 0, 0, 0, b"\x07abc".to_vec()),
    ];
    table
        .into_iter()
        .map(|(name, flags, kinds, mlen, frame)| {
            let mut s = vec![flags, kinds];
            s.extend(mlen.to_le_bytes());
            (name, after(&s, frame))
        })
        .collect()
}

// ------------------------------------------------------------------- pool

/// A task of three items whose payloads total 5 bytes and one fd.
fn pool_task() -> Head {
    Head::Task {
        id: 3,
        tramp: FnRef::from_offset(10),
        func: FnRef::from_offset(20),
        items: vec![(3, 0), (2, 1), (0, 0)],
    }
}

/// Pool frames: each header with its payloads.
type Frames<'a> = Vec<(Head, Vec<&'a [u8]>)>;

/// `mproc_pool`: `[flags] ++ message`, framed headers with their payloads,
/// then broken framing.
fn pool() -> Vec<(&'static str, Vec<u8>)> {
    let init = Head::Init {
        tramp: FnRef::from_offset(10),
        func: FnRef::from_offset(20),
        len: 2,
        nfds: 0,
    };
    let done = Head::Done {
        id: 3,
        items: vec![
            Out::Ok { len: 2, nfds: 1 },
            Out::Panicked {
                message: "p".into(),
            },
            Out::Ok { len: 0, nfds: 0 },
        ],
    };
    let init_failed = Head::InitFailed {
        message: "init".into(),
    };
    let huge = Head::Done {
        id: u64::MAX,
        items: vec![Out::Ok {
            len: u32::MAX,
            nfds: u32::MAX,
        }],
    };
    let framed: Vec<(&str, u8, Frames<'_>)> = vec![
        ("task", 1, vec![(pool_task(), vec![b"abc", b"de"])]),
        (
            "init-task-stop",
            1,
            vec![
                (init, vec![b"in"]),
                (pool_task(), vec![b"abcde"]),
                (Head::Stop, vec![]),
            ],
        ),
        ("task-short-payload", 1, vec![(pool_task(), vec![b"abc"])]),
        ("task-missing-fd", 0, vec![(pool_task(), vec![b"abcde"])]),
        ("done", 9, vec![(done, vec![b"ok"])]),
        ("init-failed", 8, vec![(init_failed, vec![])]),
        ("done-huge-item", 8, vec![(huge, vec![])]),
    ];
    let mut out: Vec<(&str, Vec<u8>)> = framed
        .into_iter()
        .map(|(name, flags, heads)| {
            let mut s = vec![flags];
            for (h, p) in heads {
                if let Ok(f) = worker::frame(&h, &p) {
                    s.extend(f);
                }
            }
            (name, s)
        })
        .collect();
    out.extend([
        ("length-past-end", vec![0, 200, 0, 0, 0, 1, 0, 0, 0]),
        (
            "huge-header-length",
            vec![0, 8, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0],
        ),
        ("short-prefix", vec![0, 1, 0]),
    ]);
    out
}

// ---------------------------------------------------------------- manager

/// A manager script (mode 0): request frames, each after its `u16` length.
fn script(reqs: &[Vec<u8>]) -> Vec<u8> {
    let mut s = vec![0u8];
    for r in reqs {
        s.extend((r.len() as u16).to_le_bytes());
        s.extend(r);
    }
    s
}

/// A `Create` request of an object of `kind`.
fn create(kind: &str, args: Vec<u8>) -> Vec<u8> {
    enc(&Request::Create {
        kind: kind.into(),
        args: mp::Bytes(args),
    })
}

/// A `Call` of `method` on the object `id`.
fn call(id: u64, method: &str, args: Vec<u8>) -> Vec<u8> {
    enc(&Request::Call {
        id,
        method: method.into(),
        args: mp::Bytes(args),
    })
}

/// Protocol bytes.
fn b(v: &[u8]) -> mp::Bytes {
    mp::Bytes(v.to_vec())
}

/// An item: its bytes and the objects it refers to.
fn it(v: &[u8], refs: &[u64]) -> mp::Item {
    mp::Item {
        bytes: mp::Bytes(v.to_vec()),
        refs: refs.to_vec(),
    }
}

/// `mproc_manager`, scripts that create objects of each kind and call them,
/// and malformed requests.
fn manager_objects() -> Vec<(&'static str, Vec<u8>)> {
    let zero = Some(Duration::ZERO);
    let table: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "dict",
            vec![
                create("dict", enc(&())),
                call(1, "set", enc(&(b(b"k"), it(b"v", &[])))),
                call(1, "get", enc(&b(b"k"))),
                call(1, "len", enc(&())),
                enc(&Request::Publish {
                    name: "d".into(),
                    id: 1,
                }),
                enc(&Request::Lookup { name: "d".into() }),
                enc(&Request::Lookup {
                    name: "none".into(),
                }),
            ],
        ),
        (
            "list-value",
            vec![
                create("list", enc(&vec![b(b"a"), b(b"b")])),
                call(1, "len", enc(&())),
                call(1, "get", enc(&1i64)),
                create("value", enc(&b(&enc(&5i32)))),
                call(2, "get", enc(&())),
                create("array", enc(&vec![b(&enc(&1u8))])),
                create("namespace", enc(&())),
            ],
        ),
        (
            "sync",
            vec![
                create("lock", enc(&())),
                create("rlock", enc(&())),
                create("semaphore", enc(&2u64)),
                create("bounded_semaphore", enc(&1u64)),
                create("event", enc(&())),
                create("barrier", enc(&1u64)),
                create("barrier", enc(&0u64)),
                create("condition", enc(&())),
                create("queue", enc(&Some(2u64))),
                create("joinable_queue", enc(&None::<u64>)),
                call(9, "put", enc(&(it(b"x", &[]), zero))),
                call(9, "get", enc(&zero)),
                call(9, "get", enc(&zero)),
            ],
        ),
        (
            "errors",
            vec![
                vec![9, 9, 9],
                vec![],
                call(77, "get", enc(&())),
                create("dict", enc(&())),
                call(1, "no_such_method", enc(&())),
                call(1, "get", vec![255]),
                create("no-such-type", enc(&())),
            ],
        ),
        (
            "connect-shutdown",
            vec![
                enc(&Request::Connect),
                enc(&Request::Listen {
                    addr: "127.0.0.1:0".into(),
                    authkey: b(b"k"),
                }),
                enc(&Request::Shutdown),
                enc(&Request::Connect),
            ],
        ),
    ];
    table
        .into_iter()
        .map(|(name, reqs)| (name, script(&reqs)))
        .collect()
}

/// `mproc_manager`, scripts of references between objects: holding and
/// releasing, nesting, sets, and the pool this server does not offer.
fn manager_references() -> Vec<(&'static str, Vec<u8>)> {
    let none = Vec::<mp::Bytes>::new();
    let table: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "refcount",
            vec![
                create("dict", enc(&())),
                enc(&Request::ConnectHolding { id: 1 }),
                enc(&Request::Count),
                enc(&Request::Release { id: 1 }),
                enc(&Request::Release { id: 1 }),
                enc(&Request::Count),
                enc(&Request::ConnectHolding { id: 1 }),
                enc(&Request::Publish {
                    name: "gone".into(),
                    id: 1,
                }),
                create("list", enc(&none)),
                enc(&Request::Acquire { id: 2 }),
                enc(&Request::Join { token: 7 }),
                enc(&Request::Join { token: 7 }),
                enc(&Request::Release { id: 2 }),
                enc(&Request::Acquire { id: 99 }),
            ],
        ),
        (
            "nested",
            vec![
                create("dict", enc(&())),
                create("list", enc(&none)),
                enc(&Request::Ident),
                // The list holds the dict, the dict the list and itself.
                call(2, "push", enc(&it(&enc(&1u64), &[1]))),
                call(1, "set", enc(&(b(b"l"), it(&enc(&2u64), &[2, 1])))),
                call(2, "get", enc(&0i64)),
                call(2, "snapshot", enc(&())),
                call(1, "items", enc(&())),
                // Refers to nothing: refused, nothing held.
                call(2, "push", enc(&it(b"x", &[1, 99]))),
                call(2, "pop", enc(&None::<i64>)),
                enc(&Request::Release { id: 1 }),
                enc(&Request::Count),
                call(1, "clear", enc(&())),
                enc(&Request::Count),
            ],
        ),
        (
            "nested-queue-namespace",
            vec![
                create("queue", enc(&None::<u64>)),
                create("namespace", enc(&())),
                create("value", enc(&b(&enc(&0u8)))),
                call(2, "set", enc(&("q".to_string(), it(b"q", &[1])))),
                call(1, "put", enc(&(it(b"ns", &[2, 2]), None::<Duration>))),
                call(1, "get", enc(&Some(Duration::ZERO))),
                call(3, "swap", enc(&it(b"v", &[1]))),
                call(3, "cas", enc(&(b(b"v"), it(b"w", &[])))),
                call(2, "get", enc(&"q".to_string())),
                enc(&Request::Count),
            ],
        ),
        (
            "set",
            vec![
                create("set", enc(&())),
                call(1, "update", enc(&vec![b(b"a"), b(b"b"), b(b"a")])),
                call(1, "add", enc(&b(b"c"))),
                call(1, "remove", enc(&b(b"z"))),
                call(
                    1,
                    "symmetric_difference_update",
                    enc(&vec![b(b"c"), b(b"d")]),
                ),
                call(1, "is_proper_subset", enc(&vec![b(b"a")])),
                call(1, "intersection", enc(&vec![b(b"a"), b(b"d")])),
                call(1, "pop", enc(&())),
                call(1, "snapshot", enc(&())),
                call(1, "update", vec![200]),
            ],
        ),
        (
            // This server lists no pool functions: no pool, no process.
            "pool-refused",
            vec![
                create("pool", enc(&1u64)),
                create("pool", enc(&0u64)),
                create("pool", vec![255]),
                call(1, "apply", enc(&())),
            ],
        ),
    ];
    table
        .into_iter()
        .map(|(name, reqs)| (name, script(&reqs)))
        .collect()
}

/// A length-prefixed (`u32`) frame.
fn frame32(body: &[u8]) -> Vec<u8> {
    after(&(body.len() as u32).to_le_bytes(), body.to_vec())
}

/// `mproc_manager`, what a client decodes: replies (mode 1), TCP frames
/// (mode 2) and the handshake (mode 3).
fn manager_wire() -> Vec<(&'static str, Vec<u8>)> {
    let gone = RemoteError::new(RemoteErrorKind::NoSuchObject, "gone");
    let mut tcp = vec![2u8];
    tcp.extend(frame32(&enc(&Request::Lookup { name: "q".into() })));
    tcp.extend(frame32(&enc(&Request::Shutdown)));
    let mut challenge = b"#MPROC-CHALLENGE#".to_vec();
    challenge.extend(crate::codec::WIRE_VERSION.to_le_bytes());
    challenge.extend([1u8; 32]);
    let challenge = after(&[3], frame32(&challenge));
    let mut welcome = b"#MPROC-WELCOME#".to_vec();
    welcome.extend([2u8; 32]);
    vec![
        (
            "reply-ok",
            after(&[1, REPLY_OK], enc(&(7u64, "dict".to_string()))),
        ),
        ("reply-err", after(&[1, REPLY_ERR], enc(&gone))),
        (
            "reply-timeout",
            after(&[1, REPLY_ERR], enc(&RemoteError::timeout())),
        ),
        ("tcp-frames", tcp.clone()),
        ("tcp-truncated-length", after(&tcp, vec![1, 0])),
        ("tcp-oversize", vec![2, 255, 255, 255, 255, 1, 2]),
        ("tcp-truncated-body", vec![2, 10, 0, 0, 0, 1, 2]),
        ("handshake-answer", after(&[3], vec![0x5a; 64])),
        ("handshake-challenge", after(&challenge, frame32(&welcome))),
        (
            "handshake-failure",
            after(&challenge, frame32(b"#MPROC-FAILURE#")),
        ),
        ("handshake-oversize", vec![3, 0, 1, 0, 0]),
    ]
}

/// `mproc_manager`, in-place arithmetic (mode 4): `[4, tag, old length] ++
/// old ++ delta`.
fn manager_num() -> Vec<(&'static str, Vec<u8>)> {
    let table: Vec<(&str, u8, Vec<u8>, Vec<u8>)> = vec![
        ("num-i32", 0x82, enc(&5i32), enc(&2i32)),
        ("num-u8-overflow", 0x85, enc(&u8::MAX), enc(&1u8)),
        ("num-i64-fresh", 3, vec![], enc(&-7i64)),
        ("num-f64", 0x8b, enc(&1.5f64), enc(&f64::NAN)),
        ("num-i128-min", 0x84, enc(&i128::MIN), enc(&-1i128)),
        ("num-bad-old", 0x83, vec![0xff, 0xff], enc(&1i64)),
    ];
    table
        .into_iter()
        .map(|(name, tag, old, delta)| {
            let mut s = vec![4u8, tag, old.len() as u8];
            s.extend(old);
            (name, after(&s, delta))
        })
        .collect()
}
