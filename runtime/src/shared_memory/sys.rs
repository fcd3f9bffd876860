//! The system calls of named shared memory: `shm_open`, `shm_unlink`,
//! `ftruncate`, `fstat`, `mmap`/`munmap`, `atexit`, and the [`Mapping`]
//! that copies bytes in and out of a segment.
//!
//! Contract: nothing else in `shared_memory` calls the kernel or touches a
//! raw pointer. A [`Mapping`] covers exactly the file's size when it was
//! mapped; every access is bounds-checked here and returns `false` instead
//! of touching memory outside it. Unlike the crate's memfds, a named
//! segment cannot be sealed: a process that shrinks the file with
//! `ftruncate` makes later accesses past the new end fault (`SIGBUS`).
//! Nothing in this crate or in CPython ever shrinks one.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// `shm_open(name, O_RDWR [| O_CREAT | O_EXCL], 0600)`, close-on-exec.
pub(crate) fn shm_open(name: &CStr, create: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if create {
        flags |= libc::O_CREAT | libc::O_EXCL;
    }
    loop {
        // SAFETY: a NUL-terminated name and valid flags; the mode is read
        // only with O_CREAT. The result is checked.
        let fd = unsafe { libc::shm_open(name.as_ptr(), flags, 0o600 as libc::mode_t) };
        if fd >= 0 {
            // SAFETY: a fresh fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `shm_unlink(name)`: removes the name; mappings stay valid.
pub(crate) fn shm_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated name; the call only reads it.
    if unsafe { libc::shm_unlink(name.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ftruncate(fd, len)`.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: a valid fd and a non-negative length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The file's size (`fstat`'s `st_size`).
pub(crate) fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: `stat` is plain data; all-zero is a valid value to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a live `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// A shared, read-write mapping of a whole segment.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, reached only through the
// copying accessors below (no reference into it is ever handed out).
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (`len` > 0, at most the file's
    /// size).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty shared memory segment",
            ));
        }
        let ptr = crate::shm::sys::map_shared(fd, len)?;
        Ok(Mapping { ptr, len })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte (for callers that take over the unsafe part).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn in_bounds(&self, offset: usize, n: usize) -> bool {
        offset.checked_add(n).is_some_and(|end| end <= self.len)
    }

    /// Copies `dst.len()` bytes at `offset` into `dst`; `false` (nothing
    /// copied) when the range is not inside the mapping.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) -> bool {
        if !self.in_bounds(offset, dst.len()) {
            return false;
        }
        // SAFETY: `offset..offset + len` is inside the mapping (checked
        // above), which lives as long as `self`; `dst` is private memory,
        // so the ranges cannot overlap. Other processes may write the
        // source at the same time: the bytes are then torn, never invalid
        // (they are plain bytes).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        true
    }

    /// Copies `src` to `offset`; `false` (nothing written) when the range
    /// is not inside the mapping.
    pub(crate) fn write(&self, offset: usize, src: &[u8]) -> bool {
        if !self.in_bounds(offset, src.len()) {
            return false;
        }
        // SAFETY: as in `read`, with the roles swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value made; no reference
        // into it exists (accessors copy).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Runs `f` when the process exits through `exit()` (a return from
/// `main`, or `std::process::exit`), not through `_exit` or a signal.
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: registers a plain function; it must not unwind (the caller's
    // handler catches nothing and does nothing that panics).
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit failed"));
    }
    Ok(())
}
