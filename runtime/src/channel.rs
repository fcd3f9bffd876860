//! Whole messages with file descriptors between processes.
//!
//! A channel is one end of a `SOCK_SEQPACKET` socket pair. Every message is
//! one `sendmsg`, so messages from any number of threads and processes never
//! interleave and every receive takes exactly one whole message: this is what
//! lets a queue have many producers and many consumers without a lock around
//! the socket. A message larger than [`INLINE_MAX`] travels in a sealed memfd
//! attached to a small frame, so no size is too large for the socket buffer
//! and a sender never blocks for a reader to drain a big item.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use forkserver::fdpass;

use crate::sys;

/// Largest body sent inline; larger bodies go through a memfd.
pub(crate) const INLINE_MAX: usize = 60 * 1024;

const TAG_INLINE: u8 = 0;
const TAG_MEMFD: u8 = 1;

/// Largest body any receive accepts unless told a smaller limit (the
/// codec's decode limit).
pub(crate) const MAX_BODY: usize = 1 << 30;

/// Most fds one message may carry (the kernel's `SCM_MAX_FD` less the memfd).
pub(crate) const MAX_MSG_FDS: usize = 252;

/// Why a receive returned without a message.
#[derive(Debug)]
pub(crate) enum RecvError {
    /// The peer closed (every sender end is gone).
    Closed,
    /// The deadline passed.
    Timeout,
    /// The frame was malformed.
    Malformed(String),
    /// The OS failed.
    Io(io::Error),
}

/// One end of a message channel.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// Size of each thread's receive buffer: room for the largest inline frame,
/// and above glibc's default mmap threshold (128 KiB), so the zeroed buffer comes
/// straight from fresh zero pages instead of being written in full — a
/// freshly started child then touches only the pages a message fills.
const RECV_BUF: usize = 256 * 1024;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; RECV_BUF]);
}

impl Channel {
    /// A connected pair.
    pub(crate) fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = fdpass::seqpacket_pair()?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an fd that is one end of a `SOCK_SEQPACKET` pair.
    pub(crate) fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Asks for a send buffer of `bytes`, best effort: the kernel caps it
    /// at `net.core.wmem_max`. On a `SOCK_SEQPACKET` pair the sender's
    /// buffer bounds how many messages can wait unread.
    #[allow(unsafe_code)] // one setsockopt on an fd we own
    pub(crate) fn grow_send_buffer(&self, bytes: usize) {
        use std::os::fd::AsRawFd;
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket fd, and a pointer to a c_int with its size,
        // as SO_SNDBUF expects; failure only leaves the default size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw const v).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "SO_SNDBUF not raised");
        }
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends one message; blocks while the socket buffer is full.
    pub(crate) fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_opt(body, fds, false)
    }

    /// Sends one message; with `nonblocking`, a full socket gives `WouldBlock`.
    pub(crate) fn send_opt(
        &self,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> io::Result<()> {
        if fds.len() > MAX_MSG_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} fds in one message; at most {MAX_MSG_FDS}", fds.len()),
            ));
        }
        if body.len() <= INLINE_MAX {
            return fdpass::send_parts(self.fd.as_fd(), &[TAG_INLINE], body, fds, nonblocking);
        }
        let memfd = fdpass::sealed_memfd("mproc-message", body)?;
        let mut all: Vec<BorrowedFd<'_>> = fds.to_vec();
        all.push(memfd.as_fd());
        let mut head = [0u8; 9];
        head[0] = TAG_MEMFD;
        head[1..].copy_from_slice(&(body.len() as u64).to_le_bytes());
        fdpass::send_parts(self.fd.as_fd(), &head, &[], &all, nonblocking)
    }

    /// Receives one message, waiting until `deadline` (forever with `None`).
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        self.recv_max(deadline, MAX_BODY)
    }

    /// [`Channel::recv`] refusing (and discarding) a body over `max` bytes.
    pub(crate) fn recv_max(
        &self,
        deadline: Option<Instant>,
        max: usize,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        // With a deadline, try first without waiting: when a message is
        // there (the common case under load) that saves a poll per message.
        let mut first = true;
        loop {
            if let Some(d) = deadline.filter(|_| !first) {
                let left = d.saturating_duration_since(Instant::now());
                match sys::wait_readable(self.fd.as_fd(), Some(left)) {
                    Ok(true) => {}
                    // poll counts whole milliseconds: never return early.
                    Ok(false) if Instant::now() < d => continue,
                    Ok(false) => return Err(RecvError::Timeout),
                    Err(e) => return Err(RecvError::Io(e)),
                }
            }
            first = false;
            match self.recv_now(deadline.is_some(), max) {
                Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Another receiver took it first; wait again.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(RecvError::Timeout);
                    }
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Receives one message if one is there (`Timeout` if none).
    pub(crate) fn try_recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        self.try_recv_max(MAX_BODY)
    }

    /// [`Channel::try_recv`] refusing a body over `max` bytes.
    pub(crate) fn try_recv_max(&self, max: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        match self.recv_now(true, max) {
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(RecvError::Timeout)
            }
            other => other,
        }
    }

    /// Sends one message, waiting for room in the socket buffer at most
    /// until `deadline` (`TimedOut` then, with nothing sent).
    pub(crate) fn send_until(
        &self,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> io::Result<()> {
        loop {
            match self.send_opt(body, fds, true) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || !wait_writable(self.fd.as_fd(), left)? {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                other => return other,
            }
        }
    }

    fn recv_now(
        &self,
        nonblocking: bool,
        max: usize,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        BUF.with(|b| {
            let mut buf = b.borrow_mut();
            let r = fdpass::recv(self.fd.as_fd(), &mut buf, nonblocking).map_err(RecvError::Io)?;
            if r.len == 0 && !r.truncated {
                return Err(RecvError::Closed);
            }
            if r.truncated || r.ctrunc {
                return Err(RecvError::Malformed(
                    "oversized frame or control data".into(),
                ));
            }
            let mut fds = r.fds;
            match buf[0] {
                TAG_INLINE if r.len - 1 > max => Err(RecvError::Malformed(format!(
                    "message of {} bytes over the limit of {max}",
                    r.len - 1
                ))),
                TAG_INLINE => Ok((buf[1..r.len].to_vec(), fds)),
                TAG_MEMFD if r.len == 9 => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&buf[1..9]);
                    let len = u64::from_le_bytes(len) as usize;
                    let memfd = fds
                        .pop()
                        .ok_or_else(|| RecvError::Malformed("memfd frame without fd".into()))?;
                    if len > max {
                        return Err(RecvError::Malformed(format!(
                            "message of {len} bytes over the limit of {max}"
                        )));
                    }
                    // Never allocate more than the memfd really holds.
                    let size = std::fs::File::from(
                        memfd
                            .try_clone()
                            .map_err(|e| RecvError::Malformed(format!("memfd: {e}")))?,
                    )
                    .metadata()
                    .map(|m| m.len())
                    .map_err(|e| RecvError::Malformed(format!("memfd: {e}")))?;
                    if (size as usize) < len {
                        return Err(RecvError::Malformed("memfd shorter than its frame".into()));
                    }
                    let body = fdpass::read_sealed_memfd(&memfd, len)
                        .map_err(|e| RecvError::Malformed(format!("memfd: {e}")))?;
                    Ok((body, fds))
                }
                t => Err(RecvError::Malformed(format!("unknown frame tag {t}"))),
            }
        })
    }
}

/// Waits until `fd` has room to write; `false` on timeout.
fn wait_writable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    let t = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut pfd = [PollFd::new(fd, PollFlags::POLLOUT)];
    loop {
        match poll(&mut pfd, t) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}
