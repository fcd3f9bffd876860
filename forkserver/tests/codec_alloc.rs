//! A hostile length prefix makes the codec allocate nothing of its size.
//!
//! The process's allocator records the largest request made while a decode
//! runs; every input here claims gigabytes in a few bytes. This file holds
//! one test so that no other test allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use forkserver::codec::{decode, decode_bulk, from_slice};
use forkserver::protocol::{Reply, Request, SpawnDetails};

struct Recording;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping is two atomics and never allocates.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Recording = Recording;

/// A LEB128 varint of `v`.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn with(prefix: &[u8], claim: u64, tail: &[u8]) -> Vec<u8> {
    let mut b = prefix.to_vec();
    b.extend(varint(claim));
    b.extend_from_slice(tail);
    b
}

#[test]
fn hostile_length_prefixes_allocate_nothing_of_their_size() {
    let claims = [1u64 << 20, 1 << 30, 1 << 40, u64::MAX >> 1, u64::MAX];
    // Reply::Error { id: None, kind, message: "" }, less the message's
    // length: a prefix to which a claim is the message's length.
    let mut error = forkserver::codec::encode(&Reply::Error {
        id: None,
        kind: forkserver::protocol::ErrorKind::Os,
        message: String::new(),
    })
    .unwrap();
    assert_eq!(error.pop(), Some(0));
    let mut bare = Vec::new();
    let mut replies = Vec::new();
    let mut requests = Vec::new();
    for &c in &claims {
        // A bare claim, and one followed by a little data.
        for tail in [&[][..], &[1, 2, 3, 4, 5, 6, 7, 8][..]] {
            bare.push(with(&[], c, tail));
            replies.push(with(&error, c, tail));
            // Request::Spawn { id: 1, slots: <claim> ... }.
            requests.push(with(&[1, 1], c, tail));
        }
    }
    ARMED.store(true, Ordering::SeqCst);
    for b in &replies {
        assert!(decode::<Reply>(b).is_err());
    }
    for b in &requests {
        assert!(decode::<Request>(b).is_err());
    }
    for b in &bare {
        assert!(from_slice::<Vec<u8>>(b).is_err());
        assert!(from_slice::<Box<[u8]>>(b).is_err());
        assert!(from_slice::<String>(b).is_err());
        assert!(from_slice::<Vec<u64>>(b).is_err());
        assert!(from_slice::<Vec<String>>(b).is_err());
        assert!(from_slice::<Vec<()>>(b).is_err());
        assert!(from_slice::<HashMap<u64, Vec<u8>>>(b).is_err());
        assert!(from_slice::<Vec<[u64; 32]>>(b).is_err());
        let _ = decode_bulk::<SpawnDetails>(b);
    }
    ARMED.store(false, Ordering::SeqCst);
    let largest = LARGEST.load(Ordering::SeqCst);
    // Error messages and the like, never the claimed length.
    assert!(largest < 16 * 1024, "a decode allocated {largest} bytes");
}
