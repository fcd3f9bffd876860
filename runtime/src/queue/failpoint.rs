//! Places in `put` and `get` where a test can make the calling thread die,
//! to check what the queue promises about a process killed at any instant.
//!
//! A thread arms one [`Point`] for itself; the `nth` time it reaches that
//! point, it dies in the chosen way: [`Death::Kill`] sends `SIGKILL` to the
//! whole process (what `Process::kill` does from outside, at an instant a
//! test chooses), [`Death::Unwind`] ends only the thread, keeping the ring's
//! lock if it holds it, so the thread's exit hands the lock on with the
//! owner-died mark, as a killed process's would (the fuzzer runs deaths in
//! one process this way). Disarmed, each point costs one relaxed load of a
//! process-wide counter.
//!
//! Not a stable API: for this crate's tests and fuzzer.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// A place in `put` or `get`, in the order a call reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
#[non_exhaustive]
pub enum Point {
    /// The ring's lock was just taken (by a `put` or a `get`).
    Locked = 1,
    /// A `put` going through the socket took its frame's sequence number
    /// and has not sent the frame.
    Numbered,
    /// The frame was sent; its marker is not pushed yet.
    Sent,
    /// An entry's bytes are in the ring; the tail has not moved.
    PushWritten,
    /// The tail moved (the entry is in); the count has not changed.
    PushCommitted,
    /// The entry is pushed; the lock is still held.
    Pushed,
    /// The lock is released; `put` has not returned.
    PutUnlocked,
    /// A `get` popped an entry (an item, or a marker whose frame it has not
    /// received yet).
    Popped,
    /// A `get` received a marker's frame; the lock is still held.
    Received,
    /// A `get` released the lock; the item is not decoded yet.
    GetUnlocked,
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; 10] = [
        Point::Locked,
        Point::Numbered,
        Point::Sent,
        Point::PushWritten,
        Point::PushCommitted,
        Point::Pushed,
        Point::PutUnlocked,
        Point::Popped,
        Point::Received,
        Point::GetUnlocked,
    ];
}

/// How an armed thread dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Death {
    /// `SIGKILL` to the whole process.
    Kill,
    /// The thread unwinds (with [`Died`] as the payload, and no panic
    /// message) holding whatever lock it holds.
    Unwind,
}

/// The unwind payload of a thread that died at its failpoint.
#[derive(Debug)]
pub struct Died(pub Point);

/// Threads armed now, in this process.
static ARMED: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static THIS: Cell<Option<(Point, u32, Death)>> = const { Cell::new(None) };
    static DYING: Cell<bool> = const { Cell::new(false) };
}

/// Arms `point` for the calling thread: the `nth` time (from 1) it gets
/// there, it dies as `death` says. Replaces what the thread had armed.
pub fn arm(point: Point, nth: u32, death: Death) {
    let was = THIS.with(|t| t.replace(Some((point, nth.max(1), death))));
    if was.is_none() {
        ARMED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Disarms the calling thread.
pub fn disarm() {
    if THIS.with(|t| t.take()).is_some() {
        ARMED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks reaching `point`.
#[inline]
pub(crate) fn hit(point: Point) {
    if ARMED.load(Ordering::Relaxed) != 0 {
        hit_armed(point);
    }
}

#[cold]
fn hit_armed(point: Point) {
    let Some((p, nth, death)) = THIS.with(Cell::get) else {
        return;
    };
    if p != point {
        return;
    }
    if nth > 1 {
        THIS.with(|t| t.set(Some((p, nth - 1, death))));
        return;
    }
    disarm();
    match death {
        Death::Kill => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be blocked or caught: not reached.
            std::process::abort();
        }
        Death::Unwind => {
            DYING.with(|d| d.set(true));
            std::panic::resume_unwind(Box::new(Died(point)));
        }
    }
}

/// Whether the calling thread is unwinding from its failpoint (it keeps
/// the ring's lock).
pub(crate) fn dying() -> bool {
    DYING.try_with(Cell::get).unwrap_or(false)
}
