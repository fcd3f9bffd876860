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
    /// The frame was longer than the buffer (`MSG_TRUNC`); the rest of it
    /// is lost.
    pub truncated: bool,
    /// The control data was truncated (`MSG_CTRUNC`): not every fd the
    /// sender attached could be installed (this process's fd table is full,
    /// usually). Treat as an error; `fds` holds those that did arrive.
    pub ctrunc: bool,
    /// Every fd that arrived, owned and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Receives one frame into `buf`: one `recvmsg`, retried on `EINTR`, with
/// the fds' control data in a buffer on the stack (no heap allocation
/// unless fds arrive) and `MSG_CMSG_CLOEXEC`.
///
/// With `nonblocking`, an empty socket gives [`io::ErrorKind::WouldBlock`]
/// (`MSG_DONTWAIT`, whatever the socket's own flags).
///
/// # Errors
/// When `recvmsg` fails.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> io::Result<Received> {
    sys::recv_frame(sock, buf, nonblocking)
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

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn recv_reports_truncation_eof_and_owns_every_fd_close_on_exec() {
        let (a, b) = seqpacket_pair().unwrap();
        let (x, y) = seqpacket_pair().unwrap();
        let mut buf = [0u8; 5];
        let e = recv(b.as_fd(), &mut buf, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        send(a.as_fd(), b"hello world", &[x.as_fd(), y.as_fd()], false).unwrap();
        let r = recv(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((r.len, r.truncated, r.ctrunc), (5, true, false));
        assert_eq!(&buf, b"hello");
        assert_eq!(r.fds.len(), 2);
        for fd in &r.fds {
            let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(
                flags & libc::FD_CLOEXEC,
                0,
                "received fd without FD_CLOEXEC"
            );
        }

        send_parts(a.as_fd(), b"he", b"llo", &[], true).unwrap();
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!((r.len, r.truncated, r.ctrunc), (5, false, false));
        assert!(r.fds.is_empty());

        drop(a);
        let r = recv(b.as_fd(), &mut buf, true).unwrap();
        assert_eq!((r.len, r.truncated), (0, false), "peer closed");
    }
}
