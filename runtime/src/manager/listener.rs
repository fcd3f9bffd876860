//! A manager's TCP listener: what a stranger may cost before it proves it
//! knows the authkey.
//!
//! Anyone who can reach the port can connect, so an unauthenticated
//! connection must be cheap and short-lived. One thread per listener runs
//! every handshake at once (non-blocking sockets and `poll`, each
//! handshake a [`ServerHandshake`] holding at most one small frame), so a
//! flood of connections that never answer costs no threads. At most
//! [`Limits::max_handshakes`] connections are in the handshake at a time;
//! while that many are, the listener accepts nothing more and further
//! connections wait in the kernel's listen backlog (which is bounded too:
//! past it the kernel drops new connection attempts, and their clients
//! retry). A handshake that is not done within
//! [`Limits::handshake_timeout`] of its accept is dropped, so slots free up
//! at the latest after that long. A client that passes gets a thread of its
//! own, as a local connection does; it is trusted from then on.
//!
//! What is hard: a peer may send its answer a byte at a time, or send more
//! than the answer; the deadline is for the whole handshake, not per read,
//! and reads never go past the answer. The sockets are switched back to
//! blocking before a passed connection is handed over.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use super::auth::{ServerHandshake, Step};

pub(crate) use super::limits::Limits;

/// How long accepting pauses after it failed for want of resources
/// (`EMFILE` and the like), when the listener would otherwise stay ready.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One connection in the handshake.
struct Pending {
    stream: TcpStream,
    hs: ServerHandshake,
    deadline: Instant,
    peer: String,
}

/// Why a pending connection leaves the handshake.
enum Outcome {
    /// Still answering.
    Stay,
    /// Passed: hand it over.
    Admit,
    /// Refused, timed out or gone.
    Drop,
}

/// Accepts on `l` forever, running handshakes with `key` within `limits`,
/// and hands each connection that passes to `admit` (blocking again, no
/// timeouts set).
pub(crate) fn run(l: TcpListener, key: &[u8], limits: Limits, mut admit: impl FnMut(TcpStream)) {
    if let Err(e) = l.set_nonblocking(true) {
        tracing::warn!(error = %e, "manager: listener cannot be made non-blocking");
        return;
    }
    let max = limits.max_handshakes.max(1);
    // Accept order is deadline order: the oldest is always at the front.
    let mut pending: VecDeque<Pending> = VecDeque::with_capacity(max);
    let mut accept_paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        while pending.front().is_some_and(|p| p.deadline <= now) {
            if let Some(p) = pending.pop_front() {
                tracing::warn!(peer = %p.peer, "manager: a TCP handshake timed out");
            }
        }
        if accept_paused_until.is_some_and(|t| t <= now) {
            accept_paused_until = None;
        }
        let accepting = pending.len() < max && accept_paused_until.is_none();
        let mut wake = pending.front().map(|p| p.deadline);
        if let Some(t) = accept_paused_until {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        // Rounded up, so that the wake-up is not before the deadline.
        let timeout = crate::sys::poll_timeout(wake.map(|w| w.saturating_duration_since(now)));
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(pending.len() + 1);
            fds.push(PollFd::new(
                l.as_fd(),
                if accepting {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                },
            ));
            for p in &pending {
                fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "manager: listener poll failed");
                    return;
                }
            }
            // Unknown bits (`None`) count as ready: the read will tell.
            fds.iter()
                .map(|f| f.revents().is_none_or(|r| !r.is_empty()))
                .collect()
        };
        let mut kept = VecDeque::with_capacity(max);
        for (mut p, &ready) in pending.drain(..).zip(&ready[1..]) {
            if !ready {
                kept.push_back(p);
                continue;
            }
            match step(&mut p, key) {
                Outcome::Stay => kept.push_back(p),
                Outcome::Drop => {}
                Outcome::Admit => {
                    let peer = p.peer;
                    match hand_over(p.stream) {
                        Ok(s) => {
                            tracing::debug!(%peer, "manager: client authenticated");
                            admit(s);
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "manager: handover failed");
                        }
                    }
                }
            }
        }
        pending = kept;
        if accepting && ready[0] {
            accept_some(&l, &mut pending, max, limits.handshake_timeout).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "manager: accept failed; pausing");
                accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
            });
        }
    }
}

/// Accepts until the backlog is empty or `max` are pending; `Err` when
/// accepting fails for a reason that waiting may cure.
fn accept_some(
    l: &TcpListener,
    pending: &mut VecDeque<Pending>,
    max: usize,
    timeout: Duration,
) -> io::Result<()> {
    while pending.len() < max {
        let (stream, addr) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer gave up before we got to it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let peer = addr.to_string();
        let (hs, challenge) = match ServerHandshake::start() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(%peer, error = %e, "manager: no nonce for a challenge");
                continue;
            }
        };
        let sent = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| write_all_now(&stream, &challenge));
        if let Err(e) = sent {
            tracing::debug!(%peer, error = %e, "manager: could not challenge a connection");
            continue;
        }
        pending.push_back(Pending {
            stream,
            hs,
            deadline: Instant::now() + timeout,
            peer,
        });
    }
    Ok(())
}

/// Reads what `p` sent and acts on it.
fn step(p: &mut Pending, key: &[u8]) -> Outcome {
    loop {
        let n = match (&p.stream).read(p.hs.buf()) {
            Ok(0) => {
                tracing::debug!(peer = %p.peer, "manager: peer closed during the handshake");
                return Outcome::Drop;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Stay,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(peer = %p.peer, error = %e, "manager: handshake read failed");
                return Outcome::Drop;
            }
        };
        match p.hs.advance(n, key) {
            Step::More => {}
            Step::Welcome(frame) => {
                return match write_all_now(&p.stream, &frame) {
                    Ok(()) => Outcome::Admit,
                    Err(e) => {
                        tracing::debug!(peer = %p.peer, error = %e, "manager: welcome failed");
                        Outcome::Drop
                    }
                };
            }
            Step::Refuse(e, frame) => {
                tracing::warn!(
                    peer = %p.peer,
                    error = %e,
                    "manager: refused a connection that failed authentication"
                );
                let _ = write_all_now(&p.stream, &frame);
                return Outcome::Drop;
            }
        }
    }
}

/// Writes a handshake frame on a non-blocking socket: it is small and the
/// socket's buffer holds nothing else of ours, so it goes at once or the
/// peer is not worth waiting for.
fn write_all_now(mut s: &TcpStream, frame: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < frame.len() {
        match s.write(&frame[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The stream of a passed connection, blocking again.
fn hand_over(s: TcpStream) -> io::Result<TcpStream> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}
