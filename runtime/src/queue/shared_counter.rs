//! A page of 32-bit atomic words shared by every process holding a queue.
//!
//! The page is a sealed `memfd` (fixed size: no holder can shrink it under
//! another's mapping and cause `SIGBUS`) mapped `MAP_SHARED`; it travels with
//! the queue as an fd. Waiting on a word uses a process-shared futex, so a
//! blocked `put` or `join` sleeps in the kernel and is woken by a holder in
//! any process.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Size of the shared page, in bytes.
const PAGE: usize = 4096;
/// Number of words in the page.
pub(crate) const WORDS: usize = PAGE / 4;

/// A shared page of atomic words.
pub(crate) struct SharedWords {
    ptr: NonNull<AtomicU32>,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through `AtomicU32`s, which are Sync;
// the pointer stays valid until drop unmaps it.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl std::fmt::Debug for SharedWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWords")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

impl SharedWords {
    /// A fresh zeroed page.
    pub(crate) fn new() -> io::Result<SharedWords> {
        // SAFETY: a NUL-terminated name and valid flags; returns an fd or -1.
        let raw = unsafe {
            libc::memfd_create(
                c"mproc-queue".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a valid fd and a length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a valid fd and seal flags.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd)
    }

    /// Maps a page received from another process; refuses an fd that is not
    /// a sealed memfd of the right size.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<SharedWords> {
        // SAFETY: a valid fd; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue state is not a sealed memfd",
            ));
        }
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_size != PAGE as libc::off_t {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue state has the wrong size",
            ));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<SharedWords> {
        // SAFETY: a new shared mapping of a PAGE-sized sealed memfd; the
        // kernel chooses the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU32>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedWords { ptr, fd })
    }

    /// Word `i` of the page.
    ///
    /// # Panics
    /// When `i >= WORDS` (a bug in this crate, never peer data).
    pub(crate) fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < WORDS);
        // SAFETY: the mapping is PAGE bytes, page-aligned, alive while self
        // is; i < WORDS keeps the word inside it; AtomicU32 has the size and
        // alignment of u32 and every bit pattern is valid.
        unsafe { &*self.ptr.as_ptr().add(i) }
    }

    /// The memfd behind the page.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference
        // from `word` outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), PAGE) };
    }
}

/// Sleeps while `word == expected`, at most `timeout` (forever with `None`).
/// Returns on a wake, a change, a signal or the timeout: callers re-check.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the word lives in a shared mapping valid for the call; a
    // shared (not PRIVATE) FUTEX_WAIT with a relative timeout or null.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Wakes up to `n` waiters on `word`, in any process.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: the word lives in a shared mapping valid for the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}
