//! The channel's system calls: socket buffer sizes, `send`/`recv` without
//! fds, and memfds for bodies too large for a frame (created, filled,
//! sealed; received ones mapped read-only). Frames are received with
//! [`forkserver::fdpass::recv`] (`recvmsg`, the control data on the stack).
//!
//! Contract: nothing else in `channel` uses `unsafe`. Every fd returned is
//! owned and close-on-exec (`MFD_CLOEXEC`); `EINTR` is
//! retried here; `EAGAIN` reaches the caller as
//! [`io::ErrorKind::WouldBlock`]. A received memfd is mapped only when it
//! carries the write, grow and shrink seals and is at least as long as the
//! mapping, so the mapped bytes can neither change under a reader nor
//! vanish (`SIGBUS`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

/// Asks for a socket send buffer of `bytes` (`SO_SNDBUF`; the kernel caps
/// it at `net.core.wmem_max`).
pub(crate) fn set_send_buffer(sock: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket fd, and a pointer to a c_int with its size, as
    // SO_SNDBUF expects.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const v).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `recv(MSG_DONTWAIT)`: reads what is there now; `WouldBlock` if nothing
/// is, `ENOTSOCK` for an fd that is not a socket. Never waits, whatever the
/// fd's own flags.
pub(crate) fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let (fd, ptr, len) = (fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
    retry_eintr(|| {
        // SAFETY: `ptr` is valid and writable for `len` bytes (`buf`).
        unsafe { libc::recv(fd, ptr, len, libc::MSG_DONTWAIT) }
    })
}

/// Runs `call`, a system call that returns a count or -1, again for as long
/// as a signal interrupts it: the count, or the error.
#[inline]
fn retry_eintr(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends one whole frame with no fds: `send(2)`, which skips the `msghdr`
/// and iovec copies of `sendmsg`; never raises `SIGPIPE`. With
/// `nonblocking`, a full socket gives `WouldBlock`.
pub(crate) fn send_frame(sock: BorrowedFd<'_>, frame: &[u8], nonblocking: bool) -> io::Result<()> {
    let mut flags = libc::MSG_NOSIGNAL;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    retry_eintr(|| {
        // SAFETY: `frame` is valid and readable for `frame.len()` bytes.
        unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), flags) }
    })?;
    // A SOCK_SEQPACKET send is all or nothing.
    Ok(())
}

/// Bytes waiting to be read on `fd` (`FIONREAD`).
pub(crate) fn pending(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)`: writes what fits now; `WouldBlock`
/// if nothing does.
pub(crate) fn send_now(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let (fd, ptr, len) = (fd.as_raw_fd(), buf.as_ptr().cast(), buf.len());
    retry_eintr(|| {
        // SAFETY: `ptr` is valid and readable for `len` bytes (`buf`).
        unsafe { libc::send(fd, ptr, len, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
    })
}

/// The socket's send buffer as the kernel granted it (`SO_SNDBUF`).
pub(crate) fn send_buffer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and pointers to a c_int and its size, as
    // SO_SNDBUF expects.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw mut v).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(v).unwrap_or(0))
}

/// A new, empty, close-on-exec memfd that allows sealing.
pub(crate) fn memfd() -> io::Result<File> {
    crate::sys::memfd(c"mproc-message").map(File::from)
}

/// Writes all of `bytes` at the memfd's offset.
pub(crate) fn write_all(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)
}

/// Seals a memfd made by [`memfd`] against writing, growing, shrinking and
/// further sealing.
///
/// The kernel refuses the write seal with `EBUSY` when it still finds extra
/// references to some of the file's pages after waiting a while for them
/// to go; one 64 MiB body in about a hundred met that here on a busy
/// machine, and the `put` failed. The seal is tried again a few times,
/// after 1, 4 and 16 ms, before the error is returned.
pub(crate) fn seal(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    let mut pause = std::time::Duration::from_millis(1);
    let mut retries = SEAL_RETRIES;
    loop {
        // SAFETY: a valid fd created with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || retries == 0 {
            return Err(e);
        }
        retries -= 1;
        std::thread::sleep(pause);
        pause *= 4;
    }
}

/// How many times a write seal refused with `EBUSY` is tried again.
const SEAL_RETRIES: u32 = 3;

/// The first bytes of a received sealed memfd, mapped read-only.
#[derive(Debug)]
pub(crate) struct SealedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a read-only mapping of sealed (immutable) memory.
unsafe impl Send for SealedMap {}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl SealedMap {
    /// Maps the first `len` bytes of `fd`, which must be a memfd sealed
    /// against writing, growing and shrinking and at least `len` long.
    ///
    /// The pages are mapped up front (`MAP_POPULATE`): one call instead of a
    /// page fault per 4 KiB.
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<SealedMap> {
        // SAFETY: a valid fd; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let need = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & need != need {
            return Err(invalid("bulk memfd is not sealed".into()));
        }
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let size = usize::try_from(st.st_size).unwrap_or(0);
        if size < len {
            return Err(invalid(format!(
                "memfd of {size} bytes shorter than its frame ({len})"
            )));
        }
        if len == 0 {
            return Ok(SealedMap {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only shared mapping of a file at least `len`
        // long and sealed against shrinking and writing; no existing memory
        // is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(SealedMap { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` (or a dangling pointer with
        // length 0), immutable thanks to the write seal, mapped as long as
        // `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping this value made; slices of
            // it borrow `self` and so cannot outlive it.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}
