//! The queue's ring: small items in shared memory, no system call per item.
//!
//! A ring is one sealed memfd mapped `MAP_SHARED` by every process holding
//! the queue: a page of header, then [`CAPACITY`] bytes of entries. A robust
//! mutex (see `sync::robust`) in the header guards everything; a holder
//! copies one entry in or out and moves one index, so the lock is held for
//! well under a microsecond.
//!
//! Header words (byte offsets): `0` the mutex cell; `64` head and `68` tail,
//! byte positions that only grow (modulo 2³²; an entry's place is the
//! position modulo the capacity); `72` the entry count; `76` the doorbell
//! flag; `80` the next frame sequence number; `84` the number of markers;
//! `88` the orphan flag; `128` the room sequence and `132` the number of
//! `put`s sleeping on it; `192` the unfinished-task count of a
//! `JoinableQueue`; `196` the shut-down flag (1: shut down, 2: shut down
//! immediately).
//!
//! An entry is a length and a kind (two `u32`), then the payload padded to
//! 8 bytes; it may wrap around the end of the data area. Its kind is an
//! item (an encoded value, no fds) or a marker: the value went on the
//! queue's socket instead (it carries fds, or is too large for the ring).
//! A marker has no payload; its first word is the sequence number of its
//! frame, which the frame carries too. Numbers are taken, frames sent and
//! markers pushed under one lock hold, so socket frames and markers are in
//! the same order, both by increasing number (modulo 2³²: numbers are
//! compared by their signed difference, and fewer than 2³¹ are ever
//! outstanding — the ring holds at most 32,768 markers, the socket a few
//! thousand frames). A `get` that pops a marker receives its frame under
//! the same hold; frames with older numbers ahead of it have no marker
//! left and are dropped.
//!
//! The orphan flag says the socket may hold frames that no marker stands
//! for: a holder died (it may have sent a frame and not pushed the marker,
//! or popped a marker and not received the frame), or the ring was emptied
//! as corrupt. A `get` that finds the flag set and no marker in the ring
//! empties the socket and clears it.
//!
//! The doorbell is an `eventfd`, the queue's pollable fd (for
//! [`wait`](crate::connection::wait)). Invariants, both kept under the lock:
//! a non-empty ring has the flag set, and a set flag means the eventfd's
//! count is above zero. A push onto a ring whose flag is clear sets it and
//! writes the eventfd; a `get` that finds the ring empty and is about to
//! sleep (or gives up) clears it and reads the eventfd. So a consumer that
//! keeps up pays no system call at all, and a sleeping one is woken by the
//! first push after it went to sleep.
//!
//! Death of a holder: every change commits with one store (the tail, or
//! the head), then the counts. When the lock reports its previous owner
//! died, the new owner walks the entries from head to tail, recounts them
//! and the markers, sets the orphan flag, and restores the doorbell
//! invariants. [`Ring::len`] does that repair first when the lock word
//! shows a dead owner nobody has followed yet, so `qsize` is exact as soon
//! as the dead process is gone. A ring that fails that check (or
//! any entry that does not parse) was written outside this protocol: it is
//! emptied and the caller gets an error, never a panic.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::failpoint::{self, Point};
use crate::shm::sys::{self, Segment};
use crate::sync::robust::{Outcome, RawMutex, Wait as LockWait};

/// Bytes of entries in a ring (a power of two).
pub(crate) const CAPACITY: usize = 256 * 1024;
/// Largest encoded item the ring takes; larger ones go on the socket.
pub(crate) const ITEM_MAX: usize = 16 * 1024;
/// Where the entries start (the header has a page of its own).
const DATA: usize = 4096;
/// Size of the whole segment.
pub(crate) const SEGMENT: usize = DATA + CAPACITY;
const MASK: u32 = CAPACITY as u32 - 1;
/// An entry's length and kind.
const ENTRY_HEAD: usize = 8;
/// Bytes items leave free for markers (512 of them), so that a ring full
/// of small items still takes the markers of items that go on the socket.
pub(crate) const MARKER_RESERVE: usize = 4096;

/// How long [`Ring::len`] waits for the lock to repair a dead holder's
/// change (another process is then repairing it).
const REPAIR_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

const HEAD: usize = 64;
const TAIL: usize = 68;
const COUNT: usize = 72;
const ARMED: usize = 76;
const ROOM: usize = 128;
const ROOM_WAITERS: usize = 132;
const UNFINISHED: usize = 192;
const SHUTDOWN: usize = 196;
const SEQ: usize = 80;
const MARKERS: usize = 84;
const ORPHANS: usize = 88;

const KIND_ITEM: u32 = 1;
const KIND_MARKER: u32 = 2;

/// What a popped entry was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An encoded value, now in the caller's buffer.
    Item,
    /// The value is the frame with this sequence number on the queue's
    /// socket.
    Marker(u32),
}

/// Whether sequence number `a` was handed out before `b` (they are never
/// 2³¹ apart: see the module docs).
pub(crate) fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The ring held bytes that no holder following the protocol writes; it
/// has been emptied.
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// Bytes an entry with a payload of `len` bytes takes.
fn entry_size(len: usize) -> usize {
    ENTRY_HEAD + len.next_multiple_of(8)
}

/// One process's handle on a ring.
#[derive(Debug)]
pub(crate) struct Ring {
    lock: RawMutex,
    doorbell: OwnedFd,
}

impl Ring {
    /// A new empty ring.
    pub(crate) fn new() -> io::Result<Ring> {
        let seg = Arc::new(Segment::new(SEGMENT)?);
        Ok(Ring {
            lock: RawMutex::new(seg, 0),
            doorbell: sys::eventfd()?,
        })
    }

    /// The ring whose segment and doorbell another process sent; refuses
    /// fds of the wrong kind.
    pub(crate) fn from_fds(segment: OwnedFd, doorbell: OwnedFd) -> io::Result<Ring> {
        if !sys::is_nonblocking_eventfd(doorbell.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a queue's doorbell must be a non-blocking eventfd",
            ));
        }
        let seg = Arc::new(Segment::from_fd(segment, SEGMENT)?);
        Ok(Ring {
            lock: RawMutex::new(seg, 0),
            doorbell,
        })
    }

    fn seg(&self) -> &Segment {
        self.lock.segment()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.seg().atomic_u32(offset)
    }

    /// The shared segment, to send along with the queue.
    pub(crate) fn segment_fd(&self) -> BorrowedFd<'_> {
        self.seg().as_fd()
    }

    /// The doorbell: readable while the ring may hold an entry.
    pub(crate) fn doorbell(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    /// The number of entries (read without the lock).
    pub(crate) fn count(&self) -> u32 {
        self.word(COUNT).load(Ordering::Acquire)
    }

    /// The number of entries, exact even when a holder died in the middle
    /// of a change that nobody has repaired yet: then the lock is taken
    /// (which repairs) and the count read under it.
    pub(crate) fn len(&self) -> u32 {
        // The kernel's marks on a robust futex word (`linux/futex.h`): a
        // dead owner's word keeps the owner-died bit and no thread id until
        // the next owner takes it.
        const OWNER_DIED: u32 = 0x4000_0000;
        const TID_MASK: u32 = 0x3fff_ffff;
        let w = self.word(0).load(Ordering::Acquire);
        if w & OWNER_DIED != 0
            && w & TID_MASK == 0
            && let Some(g) = self.lock(Some(Instant::now() + REPAIR_PATIENCE))
        {
            return g.count();
        }
        self.count()
    }

    /// The unfinished-task count of a `JoinableQueue`.
    pub(crate) fn unfinished(&self) -> &AtomicU32 {
        self.word(UNFINISHED)
    }

    /// The queue's shut-down flag (`Queue::shutdown`).
    pub(crate) fn shutdown_flag(&self) -> &AtomicU32 {
        self.word(SHUTDOWN)
    }

    /// The word a `put` waiting for room sleeps on.
    pub(crate) fn room(&self) -> &AtomicU32 {
        self.word(ROOM)
    }

    /// The number of `put`s sleeping on [`Ring::room`].
    pub(crate) fn room_waiters(&self) -> &AtomicU32 {
        self.word(ROOM_WAITERS)
    }

    /// Takes the lock, waiting until `deadline` (forever with `None`);
    /// `None` when it stayed held. After a holder's death the ring is
    /// checked and repaired first.
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> Option<Guard<'_>> {
        let g = match self.lock.acquire(LockWait::Until(deadline)) {
            Outcome::Acquired => Guard { ring: self },
            Outcome::OwnerDied => {
                let g = Guard { ring: self };
                g.repair();
                self.lock.mark_consistent();
                g
            }
            Outcome::WouldBlock | Outcome::TimedOut => return None,
        };
        failpoint::hit(Point::Locked);
        Some(g)
    }
}

/// The ring, locked.
pub(crate) struct Guard<'a> {
    ring: &'a Ring,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // A thread made to die at a failpoint keeps the lock, as a killed
        // process would: its exit hands the lock on with the owner-died mark.
        if std::thread::panicking() && failpoint::dying() {
            return;
        }
        self.ring.lock.release();
    }
}

impl Guard<'_> {
    fn get(&self, offset: usize) -> u32 {
        self.ring.word(offset).load(Ordering::Relaxed)
    }

    fn set(&self, offset: usize, v: u32) {
        self.ring.word(offset).store(v, Ordering::Release);
    }

    /// Head and tail, if they describe a ring this protocol could have
    /// written.
    fn bounds(&self) -> Option<(u32, u32)> {
        let (head, tail) = (self.get(HEAD), self.get(TAIL));
        let used = tail.wrapping_sub(head) as usize;
        (head % 8 == 0 && tail % 8 == 0 && used <= CAPACITY).then_some((head, tail))
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.bounds().map_or(0, |(h, t)| t.wrapping_sub(h) as usize)
    }

    /// The number of entries.
    pub(crate) fn count(&self) -> u32 {
        self.get(COUNT)
    }

    /// Whether an entry of `size` bytes fits now, leaving `reserve` free.
    fn fits(&self, size: usize, reserve: usize) -> bool {
        self.bounds()
            .is_some_and(|(h, t)| t.wrapping_sub(h) as usize + size + reserve <= CAPACITY)
    }

    /// Whether a marker fits now.
    pub(crate) fn has_marker_room(&self) -> bool {
        self.fits(ENTRY_HEAD, 0)
    }

    fn copy_in(&self, pos: u32, bytes: &[u8]) {
        let off = (pos & MASK) as usize;
        let first = bytes.len().min(CAPACITY - off);
        let seg = self.ring.seg();
        seg.write_bytes(DATA + off, &bytes[..first]);
        seg.write_bytes(DATA, &bytes[first..]);
    }

    fn copy_out(&self, pos: u32, out: &mut [u8]) {
        let off = (pos & MASK) as usize;
        let first = out.len().min(CAPACITY - off);
        let seg = self.ring.seg();
        let (a, b) = out.split_at_mut(first);
        seg.read_bytes(DATA + off, a);
        seg.read_bytes(DATA, b);
    }

    /// Length and kind of the entry at `pos`, if it is one and fits in the
    /// `left` bytes before the tail.
    fn entry_at(&self, pos: u32, left: usize) -> Option<(usize, Kind)> {
        if left < ENTRY_HEAD {
            return None;
        }
        let mut head = [0u8; ENTRY_HEAD];
        self.copy_out(pos, &mut head);
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        // A marker's first word is its sequence number; it has no payload.
        let (len, kind) = match u32::from_le_bytes([head[4], head[5], head[6], head[7]]) {
            KIND_ITEM if len <= ITEM_MAX => (len, Kind::Item),
            KIND_MARKER => (0, Kind::Marker(len as u32)),
            _ => return None,
        };
        (entry_size(len) <= left).then_some((len, kind))
    }

    /// Appends an entry; `false` (nothing written) when it does not fit.
    /// The entry is in the ring from the store of the tail on (the commit
    /// point: a holder that dies before it leaves no trace of the entry,
    /// one that dies after it leaves the entry, counted by the repair).
    ///
    /// # Panics
    /// When `bytes` is over [`ITEM_MAX`], or a marker has a payload (bugs
    /// in this crate).
    pub(crate) fn push(&self, kind: Kind, bytes: &[u8]) -> bool {
        assert!(bytes.len() <= ITEM_MAX && (kind == Kind::Item || bytes.is_empty()));
        if self.bounds().is_none() {
            self.reset();
        }
        let reserve = match kind {
            Kind::Item => MARKER_RESERVE,
            Kind::Marker(_) => 0,
        };
        if !self.fits(entry_size(bytes.len()), reserve) {
            return false;
        }
        let tail = self.get(TAIL);
        let (word, k) = match kind {
            Kind::Item => (bytes.len() as u32, KIND_ITEM),
            Kind::Marker(seq) => (seq, KIND_MARKER),
        };
        let mut head = [0u8; ENTRY_HEAD];
        head[..4].copy_from_slice(&word.to_le_bytes());
        head[4..].copy_from_slice(&k.to_le_bytes());
        self.copy_in(tail, &head);
        self.copy_in(tail.wrapping_add(ENTRY_HEAD as u32), bytes);
        failpoint::hit(Point::PushWritten);
        self.set(TAIL, tail.wrapping_add(entry_size(bytes.len()) as u32));
        failpoint::hit(Point::PushCommitted);
        self.set(COUNT, self.count().saturating_add(1));
        if let Kind::Marker(_) = kind {
            self.set(MARKERS, self.markers().saturating_add(1));
        }
        self.arm();
        true
    }

    /// Takes the entry at the head; an item's payload replaces `out`'s
    /// contents. `Ok(None)` when the ring is empty.
    ///
    /// # Errors
    /// [`Corrupt`] when the head entry does not parse; the ring is emptied.
    pub(crate) fn pop(&self, out: &mut Vec<u8>) -> Result<Option<Kind>, Corrupt> {
        let Some((head, tail)) = self.bounds() else {
            self.reset();
            return Err(Corrupt("head and tail out of range"));
        };
        if head == tail {
            return Ok(None);
        }
        let left = tail.wrapping_sub(head) as usize;
        let Some((len, kind)) = self.entry_at(head, left) else {
            self.reset();
            return Err(Corrupt("an entry that does not parse"));
        };
        out.clear();
        out.resize(len, 0);
        self.copy_out(head.wrapping_add(ENTRY_HEAD as u32), out);
        self.set(HEAD, head.wrapping_add(entry_size(len) as u32));
        self.set(COUNT, self.count().saturating_sub(1));
        if let Kind::Marker(_) = kind {
            self.set(MARKERS, self.markers().saturating_sub(1));
        }
        failpoint::hit(Point::Popped);
        Ok(Some(kind))
    }

    /// Rings the doorbell unless it is ringing already.
    pub(crate) fn arm(&self) {
        if self.get(ARMED) == 0 {
            self.set(ARMED, 1);
            sys::eventfd_signal(self.ring.doorbell());
        }
    }

    /// Silences the doorbell; called with the ring found empty.
    pub(crate) fn disarm(&self) {
        if self.get(ARMED) != 0 {
            sys::eventfd_drain(self.ring.doorbell());
            self.set(ARMED, 0);
        }
    }

    /// Wakes every `put` sleeping for room (the caller calls
    /// [`wake_room`] after dropping the guard).
    pub(crate) fn bump_room(&self) {
        self.ring.room().fetch_add(1, Ordering::AcqRel);
    }

    /// Takes the next frame sequence number. It is committed before the
    /// frame is sent, so a holder that dies after sending never leaves the
    /// number to be handed out again.
    pub(crate) fn next_seq(&self) -> u32 {
        let seq = self.get(SEQ);
        self.set(SEQ, seq.wrapping_add(1));
        seq
    }

    /// The number of markers in the ring.
    pub(crate) fn markers(&self) -> u32 {
        self.get(MARKERS)
    }

    /// Whether the socket may hold frames that no marker stands for (a
    /// holder died, or the ring was emptied with markers in it).
    pub(crate) fn orphans(&self) -> bool {
        self.get(ORPHANS) != 0
    }

    /// Records whether the socket may hold frames no marker stands for.
    pub(crate) fn set_orphans(&self, maybe: bool) {
        self.set(ORPHANS, u32::from(maybe));
    }

    /// Empties the ring; the frames of its markers are orphans now.
    fn reset(&self) {
        let tail = self.get(TAIL) & !7;
        self.set(TAIL, tail);
        self.set(HEAD, tail);
        self.set(COUNT, 0);
        self.set(MARKERS, 0);
        self.set_orphans(true);
        self.disarm();
    }

    /// After a holder died: recounts the entries (or empties a ring that
    /// does not parse) and restores the doorbell invariants.
    fn repair(&self) {
        let (mut n, mut markers) = (0u32, 0u32);
        match self.bounds() {
            Some((head, tail)) => {
                let mut pos = head;
                while pos != tail {
                    let left = tail.wrapping_sub(pos) as usize;
                    match self.entry_at(pos, left) {
                        Some((len, kind)) => {
                            pos = pos.wrapping_add(entry_size(len) as u32);
                            n += 1;
                            markers += u32::from(kind != Kind::Item);
                        }
                        None => {
                            self.reset();
                            (n, markers) = (0, 0);
                            break;
                        }
                    }
                }
            }
            None => self.reset(),
        }
        self.set(COUNT, n);
        self.set(MARKERS, markers);
        // The dead holder may have sent a frame and not pushed its marker,
        // or popped a marker and not received its frame.
        self.set_orphans(true);
        // Whatever the dead holder left half done, re-establish both
        // invariants from scratch.
        sys::eventfd_drain(self.ring.doorbell());
        self.set(ARMED, 0);
        if n > 0 {
            self.arm();
        }
    }

    /// Writes raw words into the header (for tests of a ring written
    /// outside the protocol).
    #[cfg(test)]
    pub(crate) fn poke(&self, offset: usize, v: u32) {
        self.set(offset, v);
    }
}

impl Ring {
    /// Overwrites the header's head, tail, count, doorbell flag, next
    /// sequence number, marker count and orphan flag with `words` and the
    /// entries from the head on with `data` (wrapping around the end of the
    /// ring as entries do), as a process ignoring the protocol could; with
    /// `died`, the ring is then repaired as after its lock owner's death
    /// (for the fuzzer).
    #[cfg(feature = "internals")]
    pub(crate) fn scribble(&self, words: [u32; 7], data: &[u8], died: bool) {
        let Some(g) = self.lock(None) else { return };
        let offsets = [HEAD, TAIL, COUNT, ARMED, SEQ, MARKERS, ORPHANS];
        for (offset, w) in offsets.into_iter().zip(words) {
            g.set(offset, w);
        }
        g.copy_in(words[0], &data[..data.len().min(CAPACITY)]);
        if died {
            g.repair();
        }
    }
}

/// Wakes the `put`s sleeping for room after [`Guard::bump_room`].
pub(crate) fn wake_room(ring: &Ring) {
    sys::futex_wake(ring.room(), u32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Ring {
        Ring::new().unwrap()
    }

    #[test]
    fn items_come_out_in_order_across_the_wrap() {
        let r = ring();
        let mut out = Vec::new();
        // Entries of 8 + 1000 bytes: the 300th wraps around the end.
        for round in 0..3u8 {
            for i in 0..200u32 {
                let item = vec![(i as u8) ^ round; 997 + (i as usize % 4)];
                assert!(r.lock(None).unwrap().push(Kind::Item, &item));
                let g = r.lock(None).unwrap();
                assert_eq!(g.pop(&mut out).unwrap(), Some(Kind::Item));
                assert_eq!(out, item);
            }
        }
        assert_eq!(r.count(), 0);
    }

    #[test]
    fn full_ring_refuses_then_takes_after_a_pop() {
        let r = ring();
        let g = r.lock(None).unwrap();
        let item = [1u8; 1024];
        let mut n = 0;
        while g.push(Kind::Item, &item) {
            n += 1;
        }
        assert_eq!(n, (CAPACITY - MARKER_RESERVE) / entry_size(1024));
        assert_eq!(g.count() as usize, n);
        let mut markers = 0;
        while g.push(Kind::Marker(0), &[]) {
            markers += 1;
        }
        assert!(
            markers >= MARKER_RESERVE / ENTRY_HEAD,
            "the reserve takes markers"
        );
        assert!(g.used() > CAPACITY - ENTRY_HEAD);
        // Items wait for the markers' reserve to be free again.
        let mut out = Vec::new();
        let mut popped = 0;
        while !g.push(Kind::Item, &item) {
            assert_eq!(g.pop(&mut out).unwrap(), Some(Kind::Item));
            popped += 1;
        }
        assert_eq!(
            popped,
            (MARKER_RESERVE + entry_size(1024)).div_ceil(entry_size(1024))
        );
    }

    #[test]
    fn doorbell_rings_on_first_push_and_is_silenced_by_disarm() {
        let r = ring();
        let readable =
            |r: &Ring| crate::sys::wait_readable(r.doorbell(), Some(Default::default())).unwrap();
        assert!(!readable(&r));
        let g = r.lock(None).unwrap();
        assert!(g.push(Kind::Item, b"a"));
        assert!(g.push(Kind::Item, b"b"));
        assert!(readable(&r));
        let mut out = Vec::new();
        g.pop(&mut out).unwrap();
        g.pop(&mut out).unwrap();
        assert_eq!(g.pop(&mut out).unwrap(), None);
        g.disarm();
        assert!(!readable(&r));
        assert!(g.push(Kind::Marker(0), &[]));
        assert!(readable(&r));
    }

    #[test]
    fn hostile_header_and_entries_empty_the_ring_without_panic() {
        let mut out = Vec::new();
        // A misaligned head, a tail far past the head, a head pointing into
        // a payload.
        for (offset, v) in [(HEAD, 3), (TAIL, u32::MAX - 7), (HEAD, 8)] {
            let r = ring();
            let g = r.lock(None).unwrap();
            assert!(g.push(Kind::Item, b"x"));
            g.poke(offset, v);
            assert!(g.pop(&mut out).is_err(), "{offset} = {v}");
            assert_eq!(g.count(), 0);
            // The ring works again afterwards.
            assert!(g.push(Kind::Item, b"ok"));
            assert_eq!(g.pop(&mut out).unwrap(), Some(Kind::Item));
            assert_eq!(out, b"ok");
        }
        let r = ring();
        // An entry header claiming more than the ring holds.
        let g = r.lock(None).unwrap();
        g.push(Kind::Item, b"12345678");
        let head = g.get(HEAD);
        g.copy_in(head, &[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
        assert!(g.pop(&mut out).is_err());
        assert_eq!(g.count(), 0);
        // An unknown kind.
        g.push(Kind::Item, b"1");
        let head = g.get(HEAD);
        g.copy_in(head, &[1, 0, 0, 0, 9, 0, 0, 0]);
        assert!(g.pop(&mut out).is_err());
    }

    #[test]
    fn a_holder_that_dies_mid_push_leaves_a_working_ring() {
        let r = Arc::new(ring());
        assert!(r.lock(None).unwrap().push(Kind::Item, b"kept"));
        let r2 = r.clone();
        std::thread::spawn(move || {
            let g = r2.lock(None).unwrap();
            // Half a push: the entry written, the tail not moved, the count
            // already changed. Then the thread ends holding the lock.
            g.copy_in(g.get(TAIL), &[4, 0, 0, 0, 1, 0, 0, 0]);
            g.set(COUNT, 7);
            std::mem::forget(g);
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let g = r
            .lock(Some(deadline))
            .expect("the dead holder's lock is handed on");
        assert_eq!(g.count(), 1);
        let mut out = Vec::new();
        assert_eq!(g.pop(&mut out).unwrap(), Some(Kind::Item));
        assert_eq!(out, b"kept");
        assert_eq!(g.pop(&mut out).unwrap(), None);
    }

    #[test]
    fn repair_recounts_entries() {
        let r = ring();
        let g = r.lock(None).unwrap();
        for _ in 0..5 {
            g.push(Kind::Item, b"abc");
        }
        g.poke(COUNT, 99);
        g.poke(ARMED, 0);
        g.repair();
        assert_eq!(g.count(), 5);
        assert!(crate::sys::wait_readable(r.doorbell(), Some(Default::default())).unwrap());
    }

    #[test]
    fn doorbell_that_is_not_an_eventfd_is_refused() {
        let r = ring();
        let seg = r.segment_fd().try_clone_to_owned().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Ring::from_fds(seg, OwnedFd::from(a)).is_err());
        let seg = r.segment_fd().try_clone_to_owned().unwrap();
        let bell = r.doorbell().try_clone_to_owned().unwrap();
        assert!(Ring::from_fds(seg, bell).is_ok());
    }
}
