//! A page of 32-bit atomic words shared by every process holding a queue.
//!
//! The page is a [`Segment`] of shared memory (a sealed memfd of fixed size,
//! so no holder can shrink it under another's mapping and cause `SIGBUS`)
//! mapped `MAP_SHARED`; it travels with the queue as an fd. Waiting on a word
//! uses a process-shared futex, so a blocked `put` or `join` sleeps in the
//! kernel and is woken by a holder in any process.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;

use crate::shm::sys::Segment;
pub(crate) use crate::shm::sys::{futex_wait, futex_wake};

/// Size of the shared page, in bytes.
const PAGE: usize = 4096;
/// Number of words in the page.
pub(crate) const WORDS: usize = PAGE / 4;

/// A shared page of atomic words.
#[derive(Debug)]
pub(crate) struct SharedWords {
    seg: Segment,
}

impl SharedWords {
    /// A fresh zeroed page.
    pub(crate) fn new() -> io::Result<SharedWords> {
        Ok(SharedWords {
            seg: Segment::new(PAGE)?,
        })
    }

    /// Maps a page received from another process; refuses an fd that is not
    /// a sealed memfd of at least a page.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<SharedWords> {
        Ok(SharedWords {
            seg: Segment::from_fd(fd, PAGE)?,
        })
    }

    /// Word `i` of the page.
    ///
    /// # Panics
    /// When `i >= WORDS` (a bug in this crate, never peer data).
    pub(crate) fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < WORDS);
        self.seg.atomic_u32(i * 4)
    }

    /// The memfd behind the page.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.seg.as_fd()
    }
}
