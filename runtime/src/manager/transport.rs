//! One connection to a manager: a local `SOCK_SEQPACKET` channel or an
//! authenticated TCP stream, carrying whole frames either way.
//!
//! Local frames are the crate's [`Channel`] messages (fds ride along, big
//! bodies spill into a memfd). TCP frames are a little-endian `u32` length
//! and the body, bounded by [`MAX_FRAME`]; a longer announced length is
//! refused without reading (or allocating) it, and the connection closes
//! since its framing can no longer be trusted.
//!
//! Round trips on a local connection are short, so a receive may poll for
//! a few microseconds before it blocks: on an idle machine the reply is
//! usually there before the thread would have gone to sleep, and the
//! sleep/wake-up pair is most of a blocking round trip's cost. Polling only
//! goes on while it pays ([`Backoff`]): with more runnable threads than CPUs
//! it would hold the very CPU the peer needs, so it backs off.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::channel::{Channel, RecvError};
use crate::spin::{self, Backoff};

/// Largest TCP frame (64 MiB).
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// One connection's transport.
#[derive(Debug)]
pub(crate) enum Conn {
    /// A socket pair end to a manager on this host.
    Local(Channel, Backoff),
    /// A TCP stream that passed the authentication handshake.
    Tcp(TcpStream),
}

impl Conn {
    /// A local connection over `ch`.
    pub(crate) fn local(ch: Channel) -> Conn {
        Conn::Local(ch, Backoff::default())
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Local(c, _) => c.fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }

    /// Sends one frame (fds only on a local connection).
    pub(crate) fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        match self {
            Conn::Local(c, _) => c.send(body, fds),
            Conn::Tcp(s) => {
                if !fds.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "file descriptors cannot cross a TCP connection",
                    ));
                }
                write_frame(s, body)
            }
        }
    }

    /// Receives one frame, waiting until `deadline` (forever with `None`);
    /// a local connection first polls for a while when that has been paying
    /// (see [`Backoff`]).
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        match self {
            Conn::Local(c, spin) => {
                let polled = spin.until(spin::MANAGER_REPLY, || match c.try_recv() {
                    Err(RecvError::Timeout) => None,
                    other => Some(other),
                });
                polled.unwrap_or_else(|| c.recv(deadline))
            }
            Conn::Tcp(s) => {
                let timeout = match deadline {
                    None => None,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(RecvError::Timeout);
                        }
                        Some(left)
                    }
                };
                s.set_read_timeout(timeout).map_err(RecvError::Io)?;
                read_frame(s, MAX_FRAME).map(|b| (b, Vec::new()))
            }
        }
    }

    /// Whether the peer has closed or shut down its end (never blocks).
    pub(crate) fn peer_gone(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        // nix names no POLLRDHUP; the kernel's bit is kept as is.
        let gone =
            PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLHUP | PollFlags::POLLERR;
        let mut pfd = [PollFd::new(self.fd(), gone)];
        // Only hang-up conditions were asked for, so any readiness is one
        // (nix cannot turn revents with the unnamed bit into flags).
        matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// Writes one length-prefixed frame.
pub(crate) fn write_frame(mut s: &TcpStream, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message of {} bytes exceeds the limit of {MAX_FRAME}",
                body.len()
            ),
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame)
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub(crate) fn read_frame(mut s: &TcpStream, max: usize) -> Result<Vec<u8>, RecvError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match s.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(RecvError::Closed),
            Ok(0) => return Err(RecvError::Malformed("truncated frame length".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) && got == 0 => return Err(RecvError::Timeout),
            Err(e) => return Err(RecvError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(RecvError::Malformed(format!(
            "a frame of {len} bytes exceeds the limit of {max}"
        )));
    }
    let mut body = vec![0u8; len];
    match s.read_exact(&mut body) {
        Ok(()) => Ok(body),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(RecvError::Malformed("truncated frame".into()))
        }
        Err(e) => Err(RecvError::Io(e)),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tcp_frames_round_trip_and_oversize_is_refused_unread() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let a = Conn::Tcp(a);
        let b = Conn::Tcp(b);
        a.send(b"hello", &[]).unwrap();
        let (got, fds) = b
            .recv(Some(Instant::now() + Duration::from_secs(5)))
            .unwrap();
        assert_eq!(got, b"hello");
        assert!(fds.is_empty());
        // A hostile length: refused before any allocation.
        if let Conn::Tcp(s) = &a {
            (&*s).write_all(&u32::MAX.to_le_bytes()).unwrap();
        }
        assert!(matches!(
            b.recv(Some(Instant::now() + Duration::from_secs(5))),
            Err(RecvError::Malformed(_))
        ));
        assert!(matches!(
            b.recv(Some(Instant::now() + Duration::from_millis(20))),
            Err(RecvError::Timeout)
        ));
        assert!(!b.peer_gone());
        drop(a);
        let t = Instant::now();
        while !b.peer_gone() {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn local_peer_gone() {
        let (a, b) = Channel::pair().unwrap();
        let (a, b) = (Conn::local(a), Conn::local(b));
        assert!(!b.peer_gone());
        a.send(b"x", &[]).unwrap();
        let (got, _) = b.recv(None).unwrap();
        assert_eq!(got, b"x");
        drop(a);
        assert!(b.peer_gone());
    }
}
