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
//! goes on while it pays ([`Spin`]): with more runnable threads than CPUs it
//! would hold the very CPU the peer needs, so it backs off.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::channel::{Channel, RecvError};

/// Largest TCP frame (64 MiB).
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// How long a receive polls before it blocks, when polling pays.
pub(crate) const SPIN: Duration = Duration::from_micros(20);

/// Longest run of receives that skip polling after polls kept failing.
const MAX_SKIP: u32 = 1024;

/// Whether polling before blocking pays on one connection.
///
/// Polling wins when the peer answers within [`SPIN`] (an idle machine, a
/// client in a tight loop); it loses badly when the peer needs the very CPU
/// the poller occupies (more runnable threads than CPUs), since then the
/// answer cannot come before the poll gives up. So every failed poll doubles
/// the number of receives that block at once before the next try, and a
/// successful one halves it: a loaded machine soon stops polling, an idle
/// one keeps doing it.
#[derive(Debug, Default)]
pub(crate) struct Spin {
    /// Receives left before the next poll.
    skip: Cell<u32>,
    /// Current back-off (0: poll every time).
    penalty: Cell<u32>,
}

impl Spin {
    fn should_poll(&self) -> bool {
        let skip = self.skip.get();
        if skip > 0 {
            self.skip.set(skip - 1);
            return false;
        }
        true
    }

    fn record(&self, hit: bool) {
        let p = self.penalty.get();
        let p = if hit {
            p / 2
        } else {
            (p * 2).clamp(1, MAX_SKIP)
        };
        self.penalty.set(p);
        self.skip.set(p);
    }
}

/// One connection's transport.
#[derive(Debug)]
pub(crate) enum Conn {
    /// A socket pair end to a manager on this host.
    Local(Channel, Spin),
    /// A TCP stream that passed the authentication handshake.
    Tcp(TcpStream),
}

impl Conn {
    /// A local connection over `ch`.
    pub(crate) fn local(ch: Channel) -> Conn {
        Conn::Local(ch, Spin::default())
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
    /// (see [`Spin`]).
    pub(crate) fn recv(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
        match self {
            Conn::Local(c, spin) => {
                if spin.should_poll() {
                    let start = Instant::now();
                    loop {
                        match c.try_recv() {
                            Err(RecvError::Timeout) => {}
                            other => {
                                spin.record(true);
                                return other;
                            }
                        }
                        if start.elapsed() >= SPIN {
                            spin.record(false);
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
                c.recv(deadline)
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
    fn polling_backs_off_when_it_fails_and_resumes_when_it_pays() {
        let s = Spin::default();
        assert!(s.should_poll());
        for _ in 0..20 {
            s.record(false);
        }
        assert_eq!(s.penalty.get(), MAX_SKIP);
        let skipped = (0..MAX_SKIP).filter(|_| !s.should_poll()).count();
        assert_eq!(skipped as u32, MAX_SKIP);
        assert!(s.should_poll());
        for _ in 0..11 {
            s.record(true);
        }
        assert_eq!(s.penalty.get(), 0);
        assert!(s.should_poll());
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
