//! Framed messages with file descriptors over `SOCK_SEQPACKET`, for embedders.
//!
//! The same primitives the server and client use: one frame per `sendmsg`
//! (so frames from concurrent senders never interleave), fds attached as
//! `SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC` into a buffer with room for
//! the kernel's maximum (so every fd that arrives is owned and closed), and
//! sealed memfds for payloads too large for one frame.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::sys;

/// A close-on-exec `SOCK_SEQPACKET` Unix socket pair.
///
/// # Errors
/// When `socketpair` fails (fd exhaustion, for one).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    sys::seqpacket_pair()
}

/// Sends one frame with `fds` attached; never raises `SIGPIPE`.
///
/// With `nonblocking`, a full socket gives [`io::ErrorKind::WouldBlock`].
///
/// # Errors
/// `EPIPE` when the peer closed; `EMSGSIZE` when the frame exceeds the
/// socket's send buffer.
pub fn send(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<()> {
    sys::send_frame(sock, bytes, fds, nonblocking)
}

/// Like [`send`] with the frame given as two parts (header and body).
///
/// # Errors
/// As [`send`].
pub fn send_parts(
    sock: BorrowedFd<'_>,
    head: &[u8],
    body: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<()> {
    sys::send_frame_parts(sock, head, body, fds, nonblocking)
}

/// One received frame.
#[derive(Debug)]
pub struct Received {
    /// Bytes placed in the buffer; 0 with `truncated == false` means the
    /// peer closed.
    pub len: usize,
    /// The frame was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// The control data was truncated (`MSG_CTRUNC`); treat as an error.
    pub ctrunc: bool,
    /// Every fd that arrived, owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Receives one frame into `buf`.
///
/// With `nonblocking`, an empty socket gives [`io::ErrorKind::WouldBlock`].
///
/// # Errors
/// When `recvmsg` fails.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> io::Result<Received> {
    let r = sys::recv_frame(sock, buf, nonblocking)?;
    Ok(Received {
        len: r.len,
        truncated: r.truncated,
        ctrunc: r.ctrunc,
        fds: r.fds,
    })
}

/// A sealed memfd (no write, grow or shrink, by anyone) holding `bytes`.
///
/// # Errors
/// When `memfd_create`, `write` or sealing fails.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    sys::sealed_memfd(name, bytes)
}

/// Reads the first `len` bytes of a memfd made by [`sealed_memfd`]; refuses
/// one that is not sealed against writing, growing and shrinking.
///
/// # Errors
/// When the memfd is unsealed or shorter than `len`.
pub fn read_sealed_memfd(fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
    sys::read_sealed_memfd(fd, len)
}
