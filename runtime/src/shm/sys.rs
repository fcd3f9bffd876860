//! Every system call and raw-pointer operation of shared memory and the
//! sync primitives: `memfd_create`, `mmap`, `futex`, `eventfd`, `gettid`, and the
//! [`Segment`] mapping that hands out typed views of a shared page.
//!
//! Contract: nothing else in `shm` or `sync` calls the kernel; a [`Segment`]
//! maps its whole file (sealed against shrinking, so no access can fault with
//! `SIGBUS`), every typed view is bounds- and alignment-checked here, and
//! `EINTR` is retried here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::time::Duration;

/// One shared mapping of a memfd: the base of every shared object.
///
/// The fd travels to other processes out of band (see [`crate::fd`]); each
/// process maps the same pages with `MAP_SHARED`. Nothing is named in the
/// filesystem: the memory lives while one fd or mapping of it does, and the
/// kernel frees it when the last process holding one ends, however it ends.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through
// atomics or through guards that a lock makes exclusive.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`.
unsafe impl Sync for Segment {}

impl Segment {
    /// A new zero-filled segment of at least `len` bytes.
    pub(crate) fn new(len: usize) -> io::Result<Segment> {
        let len = len.max(1);
        let fd = crate::sys::memfd(c"mproc-shm")?;
        let size =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid fd and a non-negative size.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: a valid fd created with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Segment::map(fd, len)
    }

    /// Maps a segment received from another process; it must be a sealed
    /// memfd of at least `min_len` bytes.
    pub(crate) fn from_fd(fd: OwnedFd, min_len: usize) -> io::Result<Segment> {
        // SAFETY: a valid fd; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a sealed mproc shared-memory segment",
            ));
        }
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len < min_len.max(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared segment of {len} bytes, {min_len} needed"),
            ));
        }
        Segment::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Segment> {
        // A memfd at least `len` long, sealed against shrinking.
        let ptr = map_shared(fd.as_fd(), len)?;
        Ok(Segment { fd, ptr, len })
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pointer to the byte at `offset`, checked to leave room for `size`
    /// bytes aligned to `align`.
    pub(crate) fn ptr_at(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "shared segment access out of bounds"
        );
        // SAFETY: `offset` is within the mapping (checked just above).
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        assert!(
            (p as usize).is_multiple_of(align),
            "misaligned shared segment access"
        );
        p
    }

    /// The `u32` atomic at `offset`.
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let p = self.ptr_at(offset, 4, 4);
        // SAFETY: in bounds and aligned (checked by `ptr_at`); the mapping
        // lives as long as `self`, and AtomicU32 has no invalid bit patterns.
        unsafe { &*p.cast::<AtomicU32>() }
    }
}

impl Segment {
    /// Copies `src` into the segment at `offset`.
    ///
    /// The caller makes the range exclusive (it holds the lock that guards
    /// it), as for every other view of a segment.
    ///
    /// # Panics
    /// When the range is out of bounds (a bug in this crate: callers check
    /// peer-written offsets first).
    pub(crate) fn write_bytes(&self, offset: usize, src: &[u8]) {
        let p = self.ptr_at(offset, src.len(), 1);
        // SAFETY: `p..p + len` is inside the mapping (checked by `ptr_at`);
        // `src` is process-private memory, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
    }

    /// Copies bytes from the segment at `offset` into `dst`.
    ///
    /// # Panics
    /// As [`Segment::write_bytes`].
    pub(crate) fn read_bytes(&self, offset: usize, dst: &mut [u8]) {
        let p = self.ptr_at(offset, dst.len(), 1);
        // SAFETY: as in `write_bytes`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) }
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no reference
        // into it outlives `self` (views borrow the segment).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The longest a sleeper on a process-shared word sleeps before it looks
/// at the word again.
///
/// A process changes a shared word, then wakes the word's sleepers: two
/// steps, and `SIGKILL` can land between them. Where the kernel cannot
/// stand in for the dead process (a robust lock released and then taken by
/// a third process before the kernel's owner-death pass; a semaphore
/// released, an event set, a queue item taken), nobody else would wake the
/// sleepers, so no sleep lasts longer than this: every caller re-checks
/// its condition in a loop, and the loss is bounded by one interval at the
/// cost of one wake-up an interval per sleeper.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);

/// `futex(FUTEX_WAIT)` on a shared word: sleeps while `*word == expected`,
/// for `timeout` (`None`: no limit) but never longer than [`RECHECK`].
/// Returns `false` when that sleep ran out; `true` when woken, also
/// spuriously. Callers loop, checking their own condition and deadline.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    futex_wait_exact(
        word,
        expected,
        Some(timeout.map_or(RECHECK, |d| d.min(RECHECK))),
    )
}

/// `futex(FUTEX_WAIT)` for `timeout` exactly (`None`: until woken). Only
/// for a sleeper whose wake-up is itself the event, so that looking again
/// could not tell a wake-up meant for it from one meant for another
/// (`Condition`, whose `notify(n)` wakes `n` of its sleepers); every other
/// sleeper uses [`futex_wait`].
pub(crate) fn futex_wait_exact(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid aligned u32 for the call; `tsp` is null or
    // points to a live timespec. A shared (not private) futex, as the word
    // may be mapped in several processes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
        )
    };
    !(r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT))
}

/// `futex(FUTEX_WAKE)`: wakes up to `n` waiters on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE reads nothing else.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n) };
}

/// A new non-blocking, close-on-exec `eventfd` with a count of zero.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: valid flags; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds one to an eventfd's count, making it readable.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    loop {
        // SAFETY: writes 8 bytes from a live u64.
        let r = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
        // EAGAIN: the count is at its maximum, readable already.
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Resets an eventfd's count to zero (no longer readable).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut n: u64 = 0;
    loop {
        // SAFETY: reads at most 8 bytes into a live u64.
        let r = unsafe { libc::read(fd.as_raw_fd(), (&raw mut n).cast(), 8) };
        // EAGAIN: already zero.
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Whether `fd` is an eventfd opened non-blocking (so a write or read on
/// it can never block).
pub(crate) fn is_nonblocking_eventfd(fd: BorrowedFd<'_>) -> bool {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if !link.is_ok_and(|l| l.as_os_str() == "anon_inode:[eventfd]") {
        return false;
    }
    // SAFETY: a valid fd; F_GETFL takes no argument.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    fl >= 0 && fl & libc::O_NONBLOCK != 0
}

/// `gettid()` (not cached: callers cache it).
pub(crate) fn gettid() -> u32 {
    // SAFETY: no arguments, always succeeds.
    unsafe { libc::gettid() as u32 }
}

/// The kernel's `struct robust_list_head` (linux/futex.h).
#[repr(C)]
pub(crate) struct RobustListHead {
    /// First entry; the head's own address when the list is empty.
    pub(crate) list: AtomicUsize,
    /// Offset from an entry to its futex word.
    pub(crate) futex_offset: isize,
    /// Entry being locked or unlocked right now.
    pub(crate) list_op_pending: AtomicUsize,
}

/// The robust list registered for the calling thread, if any
/// (`get_robust_list(0, ...)`).
pub(crate) fn current_robust_list() -> Option<NonNull<RobustListHead>> {
    let mut head: *mut RobustListHead = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: pid 0 is the calling thread; both out pointers are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut RobustListHead,
            &mut len as *mut libc::size_t,
        )
    };
    if r < 0 || len != size_of::<RobustListHead>() {
        return None;
    }
    NonNull::new(head)
}

/// Registers `head` as the calling thread's robust list.
///
/// # Safety
/// `head` must stay valid (and its `list_prev` slot, the word before it,
/// writable) until the thread exits, and no other head may be registered.
pub(crate) unsafe fn set_robust_list(head: NonNull<RobustListHead>) -> io::Result<()> {
    // SAFETY: forwarded to the caller; the length is the kernel's struct size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_robust_list,
            head.as_ptr(),
            size_of::<RobustListHead>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `child` in the child after every `fork()` made through libc.
pub(crate) fn at_fork_child(child: extern "C" fn()) {
    // SAFETY: registering a handler that is async-signal-safe (it only
    // writes thread-local cells).
    unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

/// Rebuilds a `fn()` sent as a [`forkserver::FnRef`] offset by a process of
/// this same executable (a `Barrier`'s action).
pub(crate) fn resolve_fn(offset: i64) -> fn() {
    // SAFETY: the offset was made by `FnRef::new` in a process running this
    // executable: every process that receives an mproc value was started
    // from `/proc/self/exe` (spawn, forkserver) or forked (fork).
    unsafe { forkserver::FnRef::from_offset(offset).resolve() }
}
/// `mmap` of the first `len` bytes of `fd`, read-write and shared: the one
/// shared mapping of the crate (memfd segments here, named POSIX segments
/// in `shared_memory`). The caller unmaps it with `munmap(ptr, len)`.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping chosen by the kernel; no existing
    // memory is affected. The result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))
}
