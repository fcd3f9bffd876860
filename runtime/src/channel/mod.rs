//! Whole messages with file descriptors between processes.
//!
//! A channel is one end of a `SOCK_SEQPACKET` socket pair. Every message is
//! one `sendmsg`, so messages from any number of threads and processes never
//! interleave and every receive takes exactly one whole message: this is what
//! lets a queue have many producers and many consumers without a lock around
//! the socket.
//!
//! A body larger than [`INLINE_MAX`] does not fit a frame. It travels beside
//! a small frame in a container of its own, passed as the frame's last fd,
//! so no size is too large for the socket buffer and a sender never blocks
//! for a reader to drain a big item:
//!
//! - a fresh `SOCK_STREAM` socket pair whose read end carries the body
//!   (written without waiting, then the write end closed). Socket buffers
//!   are the kernel's fastest path for bulk bytes: the pages come from
//!   per-CPU caches, where a memfd's go through the page cache and its LRU
//!   lists, which cost more than the copy itself for a 1 MiB body;
//! - a sealed memfd, when the body is larger than the stream's send buffer
//!   (`net.core.wmem_max` bounds it): the bytes already in the stream are
//!   moved over and the rest is written there. The receiver maps it
//!   read-only.
//!
//! A receiver never waits on the container: the stream is read with
//! `MSG_DONTWAIT` and must already hold every byte its frame announces, the
//! memfd must be sealed and long enough. Anything else is a malformed
//! message.

mod sys;

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use forkserver::fdpass;

/// Largest body sent inline; larger bodies go through a memfd.
pub(crate) const INLINE_MAX: usize = 60 * 1024;

const TAG_INLINE: u8 = 0;
const TAG_MEMFD: u8 = 1;
const TAG_STREAM: u8 = 2;

/// Largest body any receive accepts unless told a smaller limit (the
/// codec's decode limit).
pub(crate) const MAX_BODY: usize = 1 << 30;

/// Most fds one message may carry (the kernel's `SCM_MAX_FD` less the memfd).
pub(crate) const MAX_MSG_FDS: usize = 252;

/// Once a body spills out of the frame, small writes gather in memory up to
/// this many bytes before a `write(2)`; larger ones go straight out.
const SPILL_CHUNK: usize = 64 * 1024;

/// Frames shorter than this (tag included) that carry no fds are copied
/// into one buffer on the stack and sent with `send(2)`.
const SMALL_FRAME: usize = 512;

/// Send buffer asked for a bulk stream (the kernel caps it at
/// `net.core.wmem_max` and doubles it for bookkeeping).
const STREAM_SNDBUF: usize = 32 << 20;

/// Bytes a bulk stream takes without blocking, learned from the first one
/// made (0: not yet known). A body known to be larger goes straight into a
/// memfd instead of filling a stream first and moving over.
static STREAM_ROOM: AtomicUsize = AtomicUsize::new(0);

/// Largest bulk receive buffer a thread keeps between messages (a thread
/// that received a large body holds on to up to this much memory; bodies
/// above it get a fresh buffer each time).
const BULK_KEEP: usize = 8 << 20;

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
    /// The receive buffer, taken out while a received body is in use (so a
    /// nested receive on the same thread gets a buffer of its own).
    static BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The buffer bulk streams are read into, kept the same way.
    static BULK: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Where a body too large for its frame is going.
#[derive(Debug)]
enum Bulk {
    /// A stream socket pair: the read end travels, the write end is
    /// written without waiting and closed when the body is finished.
    Stream {
        read: OwnedFd,
        write: Option<OwnedFd>,
    },
    /// A memfd, sealed when the body is finished.
    Memfd(File),
}

/// A message body being written: in memory while it is small, moved out to
/// a bulk container (see the module docs) as soon as it outgrows
/// [`INLINE_MAX`], so a large value is written once, straight into the
/// kernel memory the receiver reads, and never held whole in a heap buffer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    buf: Vec<u8>,
    bulk: Option<Bulk>,
    len: usize,
    /// Total length up to which a write just appends to `buf`: the limit
    /// or the end of the inline frame, then the end of the chunk being
    /// gathered for the bulk container.
    fast: usize,
    max: usize,
    over: bool,
    sealed: bool,
}

fn over_limit(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("message over the limit of {max} bytes"),
    )
}

impl Bulk {
    /// A container for a body of which `need` bytes are known already: a
    /// stream, unless a stream is known to hold less than that.
    fn new(need: usize) -> io::Result<Bulk> {
        let room = STREAM_ROOM.load(Ordering::Relaxed);
        if room != 0 && need > room {
            return Ok(Bulk::Memfd(sys::memfd()?));
        }
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        let (read, write) = (OwnedFd::from(read), OwnedFd::from(write));
        // Best effort: with the default buffer, larger bodies just move to
        // a memfd sooner.
        let _ = sys::set_send_buffer(write.as_fd(), STREAM_SNDBUF);
        if room == 0 {
            // What the kernel granted (twice `net.core.wmem_max` at most);
            // a stream takes about that many bytes without blocking.
            let granted = sys::send_buffer(write.as_fd()).unwrap_or(0);
            STREAM_ROOM.store((granted / 16 * 15).max(1), Ordering::Relaxed);
        }
        if need > STREAM_ROOM.load(Ordering::Relaxed) {
            return Ok(Bulk::Memfd(sys::memfd()?));
        }
        Ok(Bulk::Stream {
            read,
            write: Some(write),
        })
    }

    /// Writes all of `bytes`; `written` is what the container already holds.
    fn write(&mut self, bytes: &[u8], written: usize) -> io::Result<()> {
        let (read, w) = match self {
            Bulk::Memfd(f) => return sys::write_all(f, bytes),
            Bulk::Stream { read, write } => match write {
                Some(w) => (read, w),
                None => return Err(io::Error::other("bulk stream already closed")),
            },
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            match sys::send_now(w.as_fd(), rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        // The stream is full (the body is larger than its send buffer):
        // move what it holds into a memfd, which takes the rest.
        let held = written + (bytes.len() - rest.len());
        let mut f = sys::memfd()?;
        let mut chunk = vec![0u8; SPILL_CHUNK];
        let mut moved = 0;
        while moved < held {
            let want = chunk.len().min(held - moved);
            let n = sys::recv_now(read.as_fd(), &mut chunk[..want])?;
            if n == 0 {
                return Err(io::Error::other("bulk stream lost bytes"));
            }
            sys::write_all(&mut f, &chunk[..n])?;
            moved += n;
        }
        sys::write_all(&mut f, rest)?;
        *self = Bulk::Memfd(f);
        Ok(())
    }
}

impl Outgoing {
    /// An empty body refusing to grow past `max` bytes, writing into `buf`
    /// (cleared; pass a reused buffer to save an allocation).
    pub(crate) fn new(mut buf: Vec<u8>, max: usize) -> Outgoing {
        buf.clear();
        // The frame's tag goes first, so an inline frame is one contiguous
        // buffer (one `send`, no `msghdr`).
        buf.push(TAG_INLINE);
        Outgoing {
            buf,
            bulk: None,
            len: 0,
            fast: max.min(INLINE_MAX),
            max,
            over: false,
            sealed: false,
        }
    }

    /// Appends `bytes`.
    ///
    /// # Errors
    /// `InvalidInput` past the limit (and [`Outgoing::over_limit`] says so
    /// from then on); an I/O error when the bulk container cannot be made or
    /// written.
    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = self.len.saturating_add(bytes.len());
        if len <= self.fast {
            self.len = len;
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.write_slow(bytes, len)
    }

    /// A write past `fast`: over the limit, the spill out of the frame, or
    /// a full in-memory chunk to flush.
    #[cold]
    fn write_slow(&mut self, bytes: &[u8], len: usize) -> io::Result<()> {
        if len > self.max || self.sealed {
            self.over = len > self.max;
            return Err(over_limit(self.max));
        }
        if self.bulk.is_none() && len <= INLINE_MAX {
            self.len = len;
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        let bulk = match &mut self.bulk {
            Some(b) => b,
            None => {
                // The body leaves the frame: the inline tag goes.
                let b = Bulk::new(self.buf.len() - 1 + bytes.len())?;
                self.buf.remove(0);
                self.bulk.insert(b)
            }
        };
        // Bytes already in the container.
        let mut flushed = self.len - self.buf.len();
        self.len = len;
        if bytes.len() >= SPILL_CHUNK || self.buf.len() + bytes.len() >= SPILL_CHUNK {
            bulk.write(&self.buf, flushed)?;
            flushed += self.buf.len();
            self.buf.clear();
        }
        if bytes.len() >= SPILL_CHUNK {
            bulk.write(bytes, flushed)?;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        // Gather the next chunk in memory, checked only at its end.
        self.fast = self.max.min(self.len - self.buf.len() + SPILL_CHUNK);
        Ok(())
    }

    /// Ends the body: the bulk container gets its last bytes, and is closed
    /// (a stream) or sealed (a memfd).
    ///
    /// # Errors
    /// When the container cannot be written or sealed.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if !self.sealed
            && let Some(b) = &mut self.bulk
        {
            b.write(&self.buf, self.len - self.buf.len())?;
            self.buf.clear();
            match b {
                Bulk::Stream { write, .. } => drop(write.take()),
                Bulk::Memfd(f) => sys::seal(f)?,
            }
        }
        self.sealed = true;
        self.fast = 0;
        Ok(())
    }

    /// The body, when it stayed in memory (no bulk container).
    pub(crate) fn inline_body(&self) -> Option<&[u8]> {
        match self.bulk {
            None => self.buf.get(1..),
            Some(_) => None,
        }
    }

    /// Whether a write was refused for going over the limit.
    pub(crate) fn over_limit(&self) -> bool {
        self.over
    }

    /// The in-memory buffer back, for reuse.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }
}

/// A received body: a view into this thread's receive buffer or bulk
/// buffer, or a read-only mapping of the memfd it came in. Decode straight
/// from [`Incoming::body`]; dropping it hands the buffers back.
#[derive(Debug)]
pub(crate) struct Incoming {
    buf: Vec<u8>,
    /// Where the frame starts in `buf` (after a prefix the channel's user
    /// put in front of it, see [`Channel::send_outgoing_prefixed`]).
    start: usize,
    len: usize,
    bulk: Vec<u8>,
    bulk_len: usize,
    map: Option<sys::SealedMap>,
}

impl Incoming {
    /// The message body.
    pub(crate) fn body(&self) -> &[u8] {
        match &self.map {
            Some(m) => m.as_slice(),
            None if self.bulk_len > 0 => &self.bulk[..self.bulk_len],
            None => &self.buf[self.start + 1..self.len],
        }
    }

    /// Reads exactly `len` bytes, all already there, from a bulk stream.
    fn read_stream(&mut self, stream: &OwnedFd, len: usize) -> Result<(), RecvError> {
        // The sender wrote every byte before sending the frame: a stream
        // holding fewer is malformed, and the buffer is sized from what the
        // kernel holds, never from the frame's word alone.
        let there = sys::pending(stream.as_fd())
            .map_err(|e| RecvError::Malformed(format!("bulk stream: {e}")))?;
        if there < len {
            return Err(RecvError::Malformed(format!(
                "bulk stream of {there} bytes, {len} announced"
            )));
        }
        let mut bulk = BULK.try_with(Cell::take).unwrap_or_default();
        if bulk.len() < len {
            // Zeroed once; a kept buffer keeps its length.
            bulk.resize(len, 0);
        }
        let mut got = 0;
        let res = loop {
            if got == len {
                break Ok(());
            }
            match sys::recv_now(stream.as_fd(), &mut bulk[got..len]) {
                Ok(0) => break Err("ended early".to_string()),
                Ok(n) => got += n,
                Err(e) => break Err(e.to_string()),
            }
        };
        self.bulk = bulk;
        match res {
            Ok(()) => {
                self.bulk_len = len;
                Ok(())
            }
            Err(e) => Err(RecvError::Malformed(format!("bulk stream: {e}"))),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() == RECV_BUF {
            let _ = BUF.try_with(|b| b.set(buf));
        }
        let bulk = std::mem::take(&mut self.bulk);
        if bulk.capacity() > 0 && bulk.capacity() <= BULK_KEEP {
            let _ = BULK.try_with(|b| b.set(bulk));
        }
    }
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
    pub(crate) fn grow_send_buffer(&self, bytes: usize) {
        if let Err(e) = sys::set_send_buffer(self.fd.as_fd(), bytes) {
            tracing::debug!(error = %e, "SO_SNDBUF not raised");
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
        if body.len() < SMALL_FRAME && fds.is_empty() {
            // One contiguous frame on the stack: `send` instead of `sendmsg`.
            let mut frame = [0u8; SMALL_FRAME];
            frame[0] = TAG_INLINE;
            frame[1..=body.len()].copy_from_slice(body);
            return sys::send_frame(self.fd.as_fd(), &frame[..=body.len()], nonblocking);
        }
        if body.len() <= INLINE_MAX {
            check_fds(fds)?;
            return fdpass::send_parts(self.fd.as_fd(), &[TAG_INLINE], body, fds, nonblocking);
        }
        let out = outgoing_of(body)?;
        self.send_outgoing(&out, fds, nonblocking)
    }

    /// Sends a finished [`Outgoing`] body; with `nonblocking`, a full socket
    /// gives `WouldBlock` (and the body can be sent again).
    pub(crate) fn send_outgoing(
        &self,
        out: &Outgoing,
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> io::Result<()> {
        self.send_outgoing_prefixed(&[], out, fds, nonblocking)
    }

    /// [`Channel::send_outgoing`] with `prefix` (at most 16 bytes) in front
    /// of the frame, in the same message: the receiver reads it with
    /// [`Channel::recv_frame_now`] and opens the frame behind it with
    /// [`Frame::open`]. A queue numbers its frames this way.
    pub(crate) fn send_outgoing_prefixed(
        &self,
        prefix: &[u8],
        out: &Outgoing,
        fds: &[BorrowedFd<'_>],
        nonblocking: bool,
    ) -> io::Result<()> {
        check_fds(fds)?;
        if prefix.len() > PREFIX_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame prefix over 16 bytes",
            ));
        }
        let Some(bulk) = &out.bulk else {
            // `buf` is the whole frame, tag included.
            if fds.is_empty() && prefix.is_empty() {
                return sys::send_frame(self.fd.as_fd(), &out.buf, nonblocking);
            }
            return fdpass::send_parts(self.fd.as_fd(), prefix, &out.buf, fds, nonblocking);
        };
        debug_assert!(out.sealed, "an Outgoing is sent after finish()");
        let (tag, fd) = match bulk {
            Bulk::Stream { read, .. } => (TAG_STREAM, read.as_fd()),
            Bulk::Memfd(f) => (TAG_MEMFD, f.as_fd()),
        };
        let mut all: Vec<BorrowedFd<'_>> = Vec::with_capacity(fds.len() + 1);
        all.extend_from_slice(fds);
        all.push(fd);
        let mut head = [0u8; PREFIX_MAX + 9];
        let p = prefix.len();
        head[..p].copy_from_slice(prefix);
        head[p] = tag;
        head[p + 1..p + 9].copy_from_slice(&(out.len as u64).to_le_bytes());
        fdpass::send_parts(self.fd.as_fd(), &head[..p + 9], &[], &all, nonblocking)
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
        let (m, fds) = self.recv_incoming(deadline, max)?;
        Ok((m.body().to_vec(), fds))
    }

    /// [`Channel::recv_max`] handing out the body in place, to be decoded
    /// without a copy.
    pub(crate) fn recv_incoming(
        &self,
        deadline: Option<Instant>,
        max: usize,
    ) -> Result<(Incoming, Vec<OwnedFd>), RecvError> {
        // With a deadline, try first without waiting: when a message is
        // there (the common case under load) that saves a poll per message.
        let mut first = true;
        loop {
            if let Some(d) = deadline.filter(|_| !first) {
                let left = d.saturating_duration_since(Instant::now());
                match crate::sys::wait_readable(self.fd.as_fd(), Some(left)) {
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
        let (m, fds) = self.try_recv_incoming(max)?;
        Ok((m.body().to_vec(), fds))
    }

    /// [`Channel::try_recv_max`] handing out the body in place.
    pub(crate) fn try_recv_incoming(
        &self,
        max: usize,
    ) -> Result<(Incoming, Vec<OwnedFd>), RecvError> {
        match self.recv_now(true, max) {
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(RecvError::Timeout)
            }
            other => other,
        }
    }

    fn recv_now(
        &self,
        nonblocking: bool,
        max: usize,
    ) -> Result<(Incoming, Vec<OwnedFd>), RecvError> {
        self.recv_frame_now(nonblocking)?.open(0, max)
    }

    /// Takes one frame off the socket without opening it: one `recvmsg`,
    /// nothing read from a bulk container yet. With `nonblocking`, an empty
    /// socket gives `Io(WouldBlock)`.
    ///
    /// # Errors
    /// `Closed` when every sender is gone (or the frame was empty), `Io`
    /// when `recvmsg` fails. A frame that is too long, or whose fds did not
    /// all arrive, is returned and refused by [`Frame::open`], so the caller
    /// can still read its prefix.
    pub(crate) fn recv_frame_now(&self, nonblocking: bool) -> Result<Frame, RecvError> {
        let mut buf = BUF.try_with(Cell::take).unwrap_or_default();
        if buf.len() != RECV_BUF {
            buf = vec![0u8; RECV_BUF];
        }
        let r = match fdpass::recv(self.fd.as_fd(), &mut buf, nonblocking) {
            Ok(r) => r,
            Err(e) => {
                let _ = BUF.try_with(|b| b.set(buf));
                return Err(RecvError::Io(e));
            }
        };
        let frame = Frame {
            buf,
            len: r.len,
            truncated: r.truncated,
            ctrunc: r.ctrunc,
            fds: r.fds,
        };
        if r.len == 0 && !r.truncated {
            return Err(RecvError::Closed);
        }
        Ok(frame)
    }
}

/// Most bytes a sender may put in front of a frame.
pub(crate) const PREFIX_MAX: usize = 16;

/// A frame taken off the socket and not yet opened: its bytes in this
/// thread's receive buffer and every fd it carried (a bulk container
/// last). Dropping it closes the fds and hands the buffer back.
#[derive(Debug)]
pub(crate) struct Frame {
    buf: Vec<u8>,
    len: usize,
    truncated: bool,
    ctrunc: bool,
    fds: Vec<OwnedFd>,
}

impl Drop for Frame {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() == RECV_BUF {
            let _ = BUF.try_with(|b| b.set(buf));
        }
    }
}

impl Frame {
    /// The bytes received (prefix and frame).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Opens the frame that starts `skip` bytes in: its body in place, read
    /// from its bulk container when it has one (without waiting: a sender
    /// fills the container before it sends the frame), refused when over
    /// `max` bytes.
    ///
    /// # Errors
    /// `Malformed` for a frame that does not parse, was truncated, or is
    /// shorter than `skip`; `Io` when its fds did not all arrive.
    pub(crate) fn open(
        mut self,
        skip: usize,
        max: usize,
    ) -> Result<(Incoming, Vec<OwnedFd>), RecvError> {
        let mut fds = std::mem::take(&mut self.fds);
        let mut m = Incoming {
            buf: std::mem::take(&mut self.buf),
            start: skip,
            len: self.len,
            bulk: Vec::new(),
            bulk_len: 0,
            map: None,
        };
        if self.truncated {
            return Err(RecvError::Malformed("oversized frame".into()));
        }
        if self.ctrunc {
            // The kernel could not install every fd the message carried
            // (usually: this process is out of fds) and closed the rest:
            // the message cannot be rebuilt, so say why it is lost.
            return Err(RecvError::Io(std::io::Error::other(format!(
                "a message's fds could not all be received ({} of them arrived; \
                     is the fd table full?)",
                fds.len()
            ))));
        }
        let Some(frame) = m.buf.get(skip..m.len).filter(|f| !f.is_empty()) else {
            return Err(RecvError::Malformed("frame shorter than its prefix".into()));
        };
        let (tag, frame_len) = (frame[0], frame.len());
        match tag {
            TAG_INLINE if frame_len - 1 > max => Err(RecvError::Malformed(format!(
                "message of {} bytes over the limit of {max}",
                frame_len - 1
            ))),
            TAG_INLINE => Ok((m, fds)),
            TAG_MEMFD | TAG_STREAM if frame_len == 9 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&m.buf[skip + 1..skip + 9]);
                let len = u64::from_le_bytes(len);
                let bulk = fds
                    .pop()
                    .ok_or_else(|| RecvError::Malformed("bulk frame without fd".into()))?;
                let len = match usize::try_from(len) {
                    Ok(l) if l <= max => l,
                    _ => {
                        return Err(RecvError::Malformed(format!(
                            "message of {len} bytes over the limit of {max}"
                        )));
                    }
                };
                if tag == TAG_STREAM {
                    // Senders stream only what does not fit a frame.
                    if len <= INLINE_MAX {
                        return Err(RecvError::Malformed(format!(
                            "bulk stream of {len} bytes fits a frame"
                        )));
                    }
                    m.read_stream(&bulk, len)?;
                    return Ok((m, fds));
                }
                let map = sys::SealedMap::new(&bulk, len)
                    .map_err(|e| RecvError::Malformed(format!("memfd: {e}")))?;
                m.map = Some(map);
                Ok((m, fds))
            }
            t => Err(RecvError::Malformed(format!("unknown frame tag {t}"))),
        }
    }
}

fn check_fds(fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_MSG_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds in one message; at most {MAX_MSG_FDS}", fds.len()),
        ));
    }
    Ok(())
}

/// A finished body holding `body` (in a memfd when it is over
/// [`INLINE_MAX`]).
pub(crate) fn outgoing_of(body: &[u8]) -> io::Result<Outgoing> {
    let mut out = Outgoing::new(Vec::new(), usize::MAX);
    out.write(body)?;
    out.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
            .collect()
    }

    #[test]
    fn bodies_of_every_kind_round_trip() {
        let (a, b) = Channel::pair().unwrap();
        for (i, n) in [0, 1, INLINE_MAX, INLINE_MAX + 1, 300_000, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let body = pattern(n, i as u32);
            a.send(&body, &[]).unwrap();
            let (got, fds) = b.try_recv().unwrap();
            assert_eq!(got, body, "{n} bytes");
            assert!(fds.is_empty());
        }
    }

    #[test]
    fn written_in_pieces_the_body_is_whole() {
        let (a, b) = Channel::pair().unwrap();
        let body = pattern(5 * SPILL_CHUNK + 17, 9);
        let mut out = Outgoing::new(Vec::new(), usize::MAX);
        // Small writes, a chunk-sized one, then small ones again.
        for piece in body[..100_000].chunks(7) {
            out.write(piece).unwrap();
        }
        out.write(&body[100_000..100_000 + 2 * SPILL_CHUNK])
            .unwrap();
        for piece in body[100_000 + 2 * SPILL_CHUNK..].chunks(1000) {
            out.write(piece).unwrap();
        }
        out.finish().unwrap();
        assert!(matches!(out.bulk, Some(Bulk::Stream { .. })));
        // A body can be sent again (a `put` retried after `WouldBlock`)...
        a.send_outgoing(&out, &[], true).unwrap();
        // ...but the stream is read by the first receiver: the second frame
        // finds it empty and is malformed, never a wait.
        a.send_outgoing(&out, &[], true).unwrap();
        assert_eq!(b.try_recv().unwrap().0, body);
        assert!(matches!(b.try_recv(), Err(RecvError::Malformed(_))));
    }

    /// Checks that `out` went to a memfd, and that `body` arrives whole
    /// once it is sent and dropped (the receiver maps its own copy).
    fn assert_sent_in_a_memfd(out: Outgoing, a: &Channel, b: &Channel, body: &[u8]) {
        assert!(matches!(out.bulk, Some(Bulk::Memfd(_))));
        a.send_outgoing(&out, &[], false).unwrap();
        drop(out);
        assert_eq!(b.try_recv().unwrap().0, body);
    }

    #[test]
    fn body_larger_than_the_stream_buffer_moves_to_a_memfd() {
        let (a, b) = Channel::pair().unwrap();
        // Larger than any send buffer the kernel grants (twice
        // `net.core.wmem_max`, capped at twice our request).
        let body = pattern(2 * STREAM_SNDBUF + 12_345, 3);
        let out = outgoing_of(&body).unwrap();
        assert_sent_in_a_memfd(out, &a, &b, &body);
    }

    /// Written a piece at a time, a body starts in a stream and moves to a
    /// memfd when the stream is full, with every byte in order.
    #[test]
    fn body_outgrowing_its_stream_moves_to_a_memfd() {
        let (a, b) = Channel::pair().unwrap();
        let body = pattern(2 * STREAM_SNDBUF + 777, 4);
        let mut out = Outgoing::new(Vec::new(), usize::MAX);
        for piece in body.chunks(SPILL_CHUNK - 1) {
            out.write(piece).unwrap();
        }
        out.finish().unwrap();
        assert_sent_in_a_memfd(out, &a, &b, &body);
    }

    #[test]
    fn limit_stops_the_writing() {
        let mut out = Outgoing::new(Vec::new(), 1000);
        assert!(out.write(&[0; 600]).is_ok());
        assert!(out.write(&[0; 600]).is_err());
        assert!(out.over_limit());
        let mut out = Outgoing::new(Vec::new(), 200_000);
        assert!(out.write(&[0; 150_000]).is_ok());
        assert!(out.write(&[0; 60_000]).is_err());
        assert!(out.over_limit());
    }

    fn frame(tag: u8, len: u64) -> [u8; 9] {
        let mut head = [0u8; 9];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_le_bytes());
        head
    }

    /// A stream frame whose stream holds less than announced (its writer
    /// still open), one that would fit a frame, and one whose fd is not a
    /// socket: each is malformed at once, and the receive buffers stay
    /// bounded by the bytes really there.
    #[test]
    fn hostile_stream_frames_are_malformed_without_waiting() {
        let (a, b) = Channel::pair().unwrap();
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut w, &[1u8; 100]).unwrap();
        let started = Instant::now();
        let cases: [(u64, BorrowedFd<'_>); 3] = [
            (1 << 29, r.as_fd()),
            (10, r.as_fd()),
            (INLINE_MAX as u64 + 1, a.fd()),
        ];
        for (len, fd) in cases {
            fdpass::send_parts(a.fd(), &frame(TAG_STREAM, len), &[], &[fd], true).unwrap();
            match b.try_recv() {
                Err(RecvError::Malformed(_)) => {}
                other => panic!("{len}: {other:?}"),
            }
        }
        // Not a socket: short, then long enough (FIONREAD counts a file's
        // bytes too, but `recv` refuses it).
        for n in [100, 80_000] {
            let memfd = fdpass::sealed_memfd("t", &vec![0u8; n]).unwrap();
            fdpass::send_parts(
                a.fd(),
                &frame(TAG_STREAM, 70_000),
                &[],
                &[memfd.as_fd()],
                true,
            )
            .unwrap();
            assert!(matches!(b.try_recv(), Err(RecvError::Malformed(_))));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let kept = BULK.with(|c| {
            let v = c.take();
            let cap = v.capacity();
            c.set(v);
            cap
        });
        assert!(kept <= 80_000, "bulk buffer of {kept} bytes");
    }

    #[test]
    fn memfd_frames_still_accepted() {
        let (a, b) = Channel::pair().unwrap();
        let body = pattern(100_000, 5);
        let memfd = fdpass::sealed_memfd("t", &body).unwrap();
        fdpass::send_parts(
            a.fd(),
            &frame(TAG_MEMFD, body.len() as u64),
            &[],
            &[memfd.as_fd()],
            true,
        )
        .unwrap();
        assert_eq!(b.try_recv().unwrap().0, body);
    }
}
