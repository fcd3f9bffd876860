//! The worker side of a pool, and the frames both sides exchange.
//!
//! A worker is an ordinary `mproc` process whose target is [`worker_main`]:
//! it reads frames from its own channel (one channel per worker, so the
//! parent always knows which tasks a worker holds), runs each task's items
//! in order under `catch_unwind`, and answers every task with one frame,
//! in the order the tasks came. That order is what lets the parent blame
//! exactly one task when a worker dies: the oldest unanswered one.
//!
//! A message holds one or more frames, so that a burst of short tasks (and
//! of their answers) costs one `sendmsg` rather than one each. A frame is a
//! little-endian `u32` length of the rest, a `u32` header length, an encoded
//! [`Head`], then the raw payloads the header describes (argument or result
//! bytes, one per item), so large payloads are copied once, never walked
//! byte by byte by serde; the message's fds are the frames' fds in order.
//! A worker answers a burst together, but never holds an answer back for
//! longer than [`HOLD_ANSWERS`]. Decoding is total: a short or inconsistent
//! frame is an error.

use std::ops::ControlFlow;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use forkserver::FnRef;
use serde::{Deserialize, Serialize};

use crate::channel::{Channel, RecvError};
use crate::codec;
use crate::job::{self, Encoded};

/// Header of every frame between the parent and a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Head {
    /// Parent to worker, first of all: run the initializer once.
    Init {
        tramp: FnRef,
        func: FnRef,
        len: u32,
        nfds: u32,
    },
    /// Parent to worker: run `func` on each item, `(len, nfds)` per item.
    Task {
        id: u64,
        tramp: FnRef,
        func: FnRef,
        items: Vec<(u32, u32)>,
    },
    /// Worker to parent: the outcome of task `id`, item by item.
    Done { id: u64, items: Vec<Out> },
    /// Worker to parent: the initializer panicked; the worker exits.
    InitFailed { message: String },
    /// Parent to worker: exit now (the pool is closing).
    Stop,
}

/// One item's outcome in a [`Head::Done`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Out {
    /// The encoded result: `len` payload bytes, `nfds` fds.
    Ok { len: u32, nfds: u32 },
    /// The item panicked (or its arguments could not be decoded).
    Panicked { message: String },
}

/// Largest header accepted (a bound against a bad length prefix).
const MAX_HEAD: usize = 64 << 20;

/// Longest a worker holds a finished task's answer to send it with the
/// next ones.
pub(crate) const HOLD_ANSWERS: Duration = Duration::from_micros(200);

/// Builds a frame: length, header length, header, payloads.
pub(crate) fn frame(head: &Head, payloads: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    append_frame(&mut out, head, payloads)?;
    Ok(out)
}

/// Appends a frame to a message being built.
pub(crate) fn append_frame(
    out: &mut Vec<u8>,
    head: &Head,
    payloads: &[&[u8]],
) -> Result<(), String> {
    let (h, _) = codec::encode(head).map_err(|e| e.to_string())?;
    let total: usize = payloads.iter().map(|p| p.len()).sum::<usize>() + 4 + h.len();
    let total32 = u32::try_from(total).map_err(|_| "frame too large".to_string())?;
    out.reserve(4 + total);
    out.extend_from_slice(&total32.to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    for p in payloads {
        out.extend_from_slice(p);
    }
    Ok(())
}

/// The frames of a message, in order.
pub(crate) fn frames(mut buf: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let Some(len) = read_u32(buf) else {
            buf = &[];
            return Some(Err("frame shorter than its length prefix".into()));
        };
        if 4 + len as usize > buf.len() {
            buf = &[];
            return Some(Err("frame runs past the message".into()));
        }
        let f = &buf[4..4 + len as usize];
        buf = &buf[4 + len as usize..];
        Some(Ok(f))
    })
}

fn read_u32(buf: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(..4)?.try_into().ok()?))
}

/// Splits one frame (as [`frames`] yields it) into its header and the
/// payload bytes after it.
pub(crate) fn unframe(buf: &[u8]) -> Result<(Head, &[u8]), String> {
    let hlen = read_u32(buf).ok_or("frame shorter than its header length")? as usize;
    if hlen > MAX_HEAD || 4 + hlen > buf.len() {
        return Err(format!("frame header of {hlen} bytes does not fit"));
    }
    let head: Head = codec::decode(&buf[4..4 + hlen], Vec::new()).map_err(|e| e.to_string())?;
    Ok((head, &buf[4 + hlen..]))
}

impl Head {
    /// How many of the message's fds belong to this frame.
    pub(crate) fn nfds(&self) -> usize {
        match self {
            Head::Init { nfds, .. } => *nfds as usize,
            Head::Task { items, .. } => items.iter().map(|i| i.1 as usize).sum(),
            Head::Done { items, .. } => items
                .iter()
                .map(|o| match o {
                    Out::Ok { nfds, .. } => *nfds as usize,
                    Out::Panicked { .. } => 0,
                })
                .sum(),
            Head::InitFailed { .. } | Head::Stop => 0,
        }
    }
}

/// One item's bytes and fds inside a frame.
pub(crate) type Part<'a> = (&'a [u8], Vec<OwnedFd>);

/// Cuts `payload` and `fds` into per-item parts as `(len, nfds)` says;
/// every byte and fd must be claimed.
pub(crate) fn split_items(
    lens: impl Iterator<Item = (u32, u32)>,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<Vec<Part<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut fds = fds.into_iter();
    let mut fd_left = fds.len();
    for (len, nfds) in lens {
        let (len, nfds) = (len as usize, nfds as usize);
        let end = at
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or("item payload runs past the frame")?;
        if nfds > fd_left {
            return Err("item claims more fds than the frame carries".into());
        }
        fd_left -= nfds;
        out.push((&payload[at..end], fds.by_ref().take(nfds).collect()));
        at = end;
    }
    if at != payload.len() || fd_left != 0 {
        return Err("frame carries bytes or fds no item claims".into());
    }
    Ok(out)
}

/// What a worker process is started with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// The worker's end of its channel.
    #[serde(with = "crate::codec::fd")]
    pub(crate) chan: OwnedFd,
    /// Exit after this many tasks (Python's `maxtasksperchild`).
    pub(crate) maxtasks: Option<u64>,
    /// Exit when reparented (set for `fork` workers, whose channel ends may
    /// be inherited by sibling workers and so never hang up).
    pub(crate) orphan_check: bool,
}

/// Answers waiting to be sent together.
struct Outbox {
    chan: Channel,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    since: Option<Instant>,
}

impl Outbox {
    fn push(&mut self, head: &Head, bodies: &[&[u8]], fds: Vec<OwnedFd>) -> Result<(), ()> {
        if self.fds.len() + fds.len() > crate::channel::MAX_MSG_FDS {
            self.flush(None)?;
        }
        append_frame(&mut self.bytes, head, bodies).map_err(|e| {
            tracing::error!(error = %e, "pool worker: cannot frame an answer");
        })?;
        self.fds.extend(fds);
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Sends what is held (when `hold` is given: only if held that long).
    fn flush(&mut self, hold: Option<Duration>) -> Result<(), ()> {
        let Some(since) = self.since else {
            return Ok(());
        };
        if hold.is_some_and(|h| since.elapsed() < h) {
            return Ok(());
        }
        self.since = None;
        let fds = std::mem::take(&mut self.fds);
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let r = self.chan.send(&self.bytes, &borrowed).map_err(|e| {
            tracing::debug!(error = %e, "pool worker: parent gone");
        });
        self.bytes.clear();
        r
    }
}

impl Outbox {
    fn new(chan: Channel) -> Outbox {
        Outbox {
            chan,
            bytes: Vec::new(),
            fds: Vec::new(),
            since: None,
        }
    }
}

/// The target of every pool worker process: read a message, run its
/// frames, answer; until told to stop, orphaned, hung up on, or at
/// `maxtasks`.
pub(crate) fn worker_main(args: WorkerArgs) {
    let ppid = std::os::unix::process::parent_id();
    let mut done = 0u64;
    let mut out = Outbox::new(Channel::from_fd(args.chan));
    loop {
        if args.maxtasks.is_some_and(|m| done >= m) {
            let _ = out.flush(None);
            return;
        }
        let Some(msg) = next_message(&out.chan, args.orphan_check, ppid) else {
            return;
        };
        if run_message(&mut out, msg, &mut done).is_break() || out.flush(None).is_err() {
            return;
        }
    }
}

/// Runs the frames of one message in order, counting finished tasks in
/// `done`; `Break` when the worker must exit (answers already flushed as
/// far as they can be).
fn run_message(out: &mut Outbox, (bytes, fds): Encoded, done: &mut u64) -> ControlFlow<()> {
    let mut fds = fds.into_iter();
    for f in frames(&bytes) {
        let (head, payload) = match f.and_then(unframe) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "pool worker: malformed frame");
                return exit(out);
            }
        };
        let mine: Vec<OwnedFd> = fds.by_ref().take(head.nfds()).collect();
        match head {
            Head::Init {
                tramp,
                func,
                len,
                nfds,
            } => run_init(out, (tramp, func), (len, nfds), payload, mine)?,
            Head::Task {
                id,
                tramp,
                func,
                items,
            } => {
                run_task(out, id, (tramp, func), &items, payload, mine)?;
                *done += 1;
            }
            Head::Stop => return exit(out),
            other => {
                tracing::error!(?other, "pool worker: unexpected frame");
                return exit(out);
            }
        }
    }
    ControlFlow::Continue(())
}

/// Sends what is held, and exits.
fn exit(out: &mut Outbox) -> ControlFlow<()> {
    let _ = out.flush(None);
    ControlFlow::Break(())
}

/// Runs the initializer; a panic is reported and the worker exits.
fn run_init(
    out: &mut Outbox,
    (tramp, func): (FnRef, FnRef),
    lens: (u32, u32),
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> ControlFlow<()> {
    let r = match split_items([lens].into_iter(), payload, fds) {
        Ok(mut parts) => match parts.pop() {
            Some((args, fds)) => run_item(tramp, func, args, fds),
            None => Err("malformed initializer frame".to_string()),
        },
        Err(e) => Err(e),
    };
    match r {
        Ok(_) => ControlFlow::Continue(()),
        Err(message) => {
            let _ = out.push(&Head::InitFailed { message }, &[], Vec::new());
            exit(out)
        }
    }
}

/// Runs task `id` item by item and queues its answer (sent at once, or
/// with the next ones within [`HOLD_ANSWERS`]).
fn run_task(
    out: &mut Outbox,
    id: u64,
    (tramp, func): (FnRef, FnRef),
    items: &[(u32, u32)],
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> ControlFlow<()> {
    let parts = match split_items(items.iter().copied(), payload, fds) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "pool worker: malformed task");
            return exit(out);
        }
    };
    let (outs, bodies, out_fds) = run_items(tramp, func, parts);
    let head = Head::Done { id, items: outs };
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    if out.push(&head, &refs, out_fds).is_err() || out.flush(Some(HOLD_ANSWERS)).is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Each item's outcome, the result bytes of those that returned, and
/// their fds in order.
fn run_items(
    tramp: FnRef,
    func: FnRef,
    parts: Vec<Part<'_>>,
) -> (Vec<Out>, Vec<Vec<u8>>, Vec<OwnedFd>) {
    let mut outs = Vec::with_capacity(parts.len());
    let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(parts.len());
    let mut out_fds = Vec::new();
    for (bytes, fds) in parts {
        match run_item(tramp, func, bytes, fds) {
            Ok((b, f)) => {
                outs.push(Out::Ok {
                    len: b.len() as u32,
                    nfds: f.len() as u32,
                });
                bodies.push(b);
                out_fds.extend(f);
            }
            Err(message) => outs.push(Out::Panicked { message }),
        }
    }
    (outs, bodies, out_fds)
}

fn next_message(chan: &Channel, orphan_check: bool, ppid: u32) -> Option<Encoded> {
    loop {
        let deadline = orphan_check.then(|| Instant::now() + Duration::from_secs(1));
        match chan.recv(deadline) {
            Ok(m) => return Some(m),
            Err(RecvError::Timeout) => {
                if std::os::unix::process::parent_id() != ppid {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

fn run_item(tramp: FnRef, func: FnRef, args: &[u8], fds: Vec<OwnedFd>) -> Result<Encoded, String> {
    // A task's panic is its result's error: the report hook stays quiet.
    let r = crate::process::panic_report::quietly(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job::call_trampoline(tramp, func, args, fds)
        }))
    });
    match r {
        Ok(r) => r,
        Err(p) => Err(job::panic_message(&*p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let head = Head::Task {
            id: 7,
            tramp: FnRef::from_offset(1),
            func: FnRef::from_offset(2),
            items: vec![(3, 0), (2, 0)],
        };
        let mut msg = frame(&Head::Stop, &[]).unwrap();
        append_frame(&mut msg, &head, &[b"abc", b"de"]).unwrap();
        let all: Vec<_> = frames(&msg).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 2);
        assert!(matches!(unframe(all[0]).unwrap().0, Head::Stop));
        let (h, payload) = unframe(all[1]).unwrap();
        let Head::Task { id, items, .. } = h else {
            panic!("{h:?}")
        };
        assert_eq!(id, 7);
        let parts = split_items(items.into_iter(), payload, Vec::new()).unwrap();
        assert_eq!(parts[0].0, b"abc");
        assert_eq!(parts[1].0, b"de");
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(unframe(&[]).is_err());
        assert!(frames(&[9, 0, 0, 0, 1]).next().unwrap().is_err());
        assert!(frames(&[1, 0]).next().unwrap().is_err());
        assert!(unframe(&[255, 255, 255, 255, 0]).is_err());
        assert!(unframe(&[1, 0, 0, 0]).is_err());
        assert!(split_items([(5, 0)].into_iter(), b"abc", Vec::new()).is_err());
        assert!(split_items([(1, 0)].into_iter(), b"abc", Vec::new()).is_err());
        assert!(split_items([(0, 1)].into_iter(), b"", Vec::new()).is_err());
    }
}
