//! CPython's framing of `send_bytes` / `recv_bytes` on a stream socket.
//!
//! Every message is a length prefix and the bytes: a 4-byte big-endian
//! signed length, or, for a message over `i32::MAX` bytes, the 4 bytes
//! `0xFFFF_FFFF` (`-1`) followed by an 8-byte big-endian unsigned length.
//! A receiver accepts the long form for any length, as CPython does.
//!
//! What is hard is that every prefix comes from a peer that may lie: a
//! length is checked against the receiver's limit before anything is
//! allocated, and even an accepted length is not allocated up front — the
//! body buffer grows as bytes arrive, so a peer that announces a gigabyte
//! and sends nothing costs nothing. [`FrameReader`] is a state machine fed
//! by whatever the socket returned, so a receive that times out mid-message
//! keeps what it read and the next receive goes on from there.

use std::fmt;

/// Bytes of the short prefix.
pub(crate) const SHORT_PREFIX: usize = 4;
/// Bytes of the long prefix: `-1` then a `u64`.
pub(crate) const LONG_PREFIX: usize = 12;
/// Largest body sent with the short prefix (CPython: `n > 0x7fffffff`
/// switches to the long one).
pub(crate) const SHORT_MAX: u64 = 0x7fff_ffff;
/// The body buffer grows by at most this much per read.
const GROW_STEP: usize = 1 << 20;

/// The prefix for a body of `len` bytes: the first `n` bytes of the
/// returned array, where `n` is the second element.
pub(crate) fn encode_prefix(len: u64) -> ([u8; LONG_PREFIX], usize) {
    let mut out = [0u8; LONG_PREFIX];
    if len > SHORT_MAX {
        out[..4].copy_from_slice(&(-1i32).to_be_bytes());
        out[4..].copy_from_slice(&len.to_be_bytes());
        (out, LONG_PREFIX)
    } else {
        // In range of i32 (checked just above).
        out[..4].copy_from_slice(&(len as i32).to_be_bytes());
        (out, SHORT_PREFIX)
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A negative length other than `-1`.
    NegativeLength(i32),
    /// A length over the receiver's limit (the body was not read).
    TooLong {
        /// The announced length.
        len: u64,
        /// The receiver's limit.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NegativeLength(n) => write!(f, "bad message length {n}"),
            FrameError::TooLong { len, limit } => {
                write!(f, "message of {len} bytes over the limit of {limit}")
            }
        }
    }
}

#[derive(Debug)]
enum State {
    /// Reading the prefix: `have` bytes of `want` (4, or 12 after a `-1`).
    Prefix {
        buf: [u8; LONG_PREFIX],
        have: usize,
        want: usize,
    },
    /// Reading a body of `len` bytes, `filled` of them read into `body`
    /// (which grows ahead of `filled` by at most one step).
    Body {
        len: usize,
        body: Vec<u8>,
        filled: usize,
    },
}

const IDLE: State = State::Prefix {
    buf: [0; LONG_PREFIX],
    have: 0,
    want: SHORT_PREFIX,
};

/// Incremental decoder of CPython's framing: ask [`FrameReader::buf`] where
/// the next bytes go, read into it, report with [`FrameReader::advance`].
#[derive(Debug)]
pub(crate) struct FrameReader {
    state: State,
    limit: usize,
}

impl FrameReader {
    /// A reader that refuses bodies over `limit` bytes.
    pub(crate) fn new(limit: usize) -> FrameReader {
        FrameReader { state: IDLE, limit }
    }

    /// The largest body accepted.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the largest body accepted, from the next prefix on.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Whether no byte of a frame has been read (between messages).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.state, State::Prefix { have: 0, .. })
    }

    /// Where the next bytes read from the socket go; never empty (an empty
    /// body completes with its prefix).
    pub(crate) fn buf(&mut self) -> &mut [u8] {
        match &mut self.state {
            State::Prefix { buf, have, want } => &mut buf[*have..*want],
            State::Body { len, body, filled } => {
                let end = (*filled).saturating_add(GROW_STEP).min(*len);
                if body.len() < end {
                    body.resize(end, 0);
                }
                &mut body[*filled..end]
            }
        }
    }

    /// Records that `n` bytes were read into the slice that
    /// [`buf`](FrameReader::buf) returned (more than its length counts as
    /// its length); returns the whole message when this completes one.
    ///
    /// # Errors
    /// A refused prefix. The reader is then out of step with the stream
    /// and must not be fed again.
    pub(crate) fn advance(&mut self, n: usize) -> Result<Option<Vec<u8>>, FrameError> {
        match &mut self.state {
            State::Prefix { buf, have, want } => {
                *have = have.saturating_add(n).min(*want);
                if *have < *want {
                    return Ok(None);
                }
                let short = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let len = match short {
                    -1 if *want == SHORT_PREFIX => {
                        *want = LONG_PREFIX;
                        return Ok(None);
                    }
                    -1 => {
                        let mut long = [0u8; 8];
                        long.copy_from_slice(&buf[SHORT_PREFIX..LONG_PREFIX]);
                        u64::from_be_bytes(long)
                    }
                    n if n < 0 => return Err(FrameError::NegativeLength(n)),
                    n => u64::from(n.unsigned_abs()),
                };
                let len = match usize::try_from(len) {
                    Ok(l) if l <= self.limit => l,
                    _ => {
                        return Err(FrameError::TooLong {
                            len,
                            limit: self.limit,
                        });
                    }
                };
                self.state = State::Body {
                    len,
                    body: Vec::new(),
                    filled: 0,
                };
            }
            State::Body { body, filled, .. } => {
                *filled = filled.saturating_add(n).min(body.len());
            }
        }
        Ok(self.take_if_complete())
    }

    fn take_if_complete(&mut self) -> Option<Vec<u8>> {
        match &self.state {
            State::Body { len, filled, .. } if filled == len => {}
            _ => return None,
        }
        match std::mem::replace(&mut self.state, IDLE) {
            State::Body { mut body, len, .. } => {
                body.truncate(len);
                Some(body)
            }
            State::Prefix { .. } => None,
        }
    }
}

/// Decodes every whole frame at the start of `bytes` (a unit-test and fuzz
/// helper): the messages, and the error that stopped decoding if any.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn decode_all(bytes: &[u8], limit: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut r = FrameReader::new(limit);
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        let dst = r.buf();
        let n = dst.len().min(rest.len());
        dst[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        match r.advance(n) {
            Ok(Some(m)) => out.push(m),
            Ok(None) if n == 0 => return (out, None),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let (p, n) = encode_prefix(body.len() as u64);
        let mut v = p[..n].to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn short_prefix_is_four_bytes_big_endian() {
        assert_eq!(frame(b"abc"), b"\0\0\0\x03abc");
        assert_eq!(frame(b""), b"\0\0\0\0");
        let (p, n) = encode_prefix(SHORT_MAX);
        assert_eq!(&p[..n], &[0x7f, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn long_prefix_is_minus_one_then_eight_bytes() {
        let (p, n) = encode_prefix(SHORT_MAX + 1);
        assert_eq!(n, LONG_PREFIX);
        assert_eq!(
            &p[..n],
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]
        );
        let (p, n) = encode_prefix(5 << 32);
        assert_eq!(&p[..n], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 5, 0, 0, 0, 0]);
    }

    /// Table of inputs and what a reader with a limit of 16 makes of them.
    #[test]
    fn decoder_table() {
        type Case = (&'static [u8], &'static [&'static [u8]], Option<FrameError>);
        let cases: &[Case] = &[
            (b"", &[], None),
            (b"\0\0\0", &[], None),
            (b"\0\0\0\0", &[b""], None),
            (b"\0\0\0\x02hi\0\0\0\x01!", &[b"hi", b"!"], None),
            (b"\0\0\0\x05hel", &[], None),
            // The long form is accepted for a short body too.
            (b"\xff\xff\xff\xff\0\0\0\0\0\0\0\x02ok", &[b"ok"], None),
            (b"\xff\xff\xff\xff\0\0\0", &[], None),
            (
                b"\xff\xff\xff\xfe",
                &[],
                Some(FrameError::NegativeLength(-2)),
            ),
            (
                b"\x80\0\0\0",
                &[],
                Some(FrameError::NegativeLength(i32::MIN)),
            ),
            (
                b"\0\0\0\x11",
                &[],
                Some(FrameError::TooLong { len: 17, limit: 16 }),
            ),
            (
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                &[],
                Some(FrameError::TooLong {
                    len: u64::MAX,
                    limit: 16,
                }),
            ),
            (
                b"\0\0\0\x01a\x7f\xff\xff\xff",
                &[b"a"],
                Some(FrameError::TooLong {
                    len: 0x7fff_ffff,
                    limit: 16,
                }),
            ),
        ];
        for (input, want, err) in cases {
            let (got, e) = decode_all(input, 16);
            let want: Vec<Vec<u8>> = want.iter().map(|m| m.to_vec()).collect();
            assert_eq!(got, want, "{input:?}");
            assert_eq!(&e, err, "{input:?}");
        }
    }

    #[test]
    fn byte_at_a_time_gives_the_same_messages() {
        let mut stream = frame(b"first");
        stream.extend(frame(&[7u8; 3000]));
        stream.extend(frame(b""));
        let mut r = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        for b in &stream {
            let dst = r.buf();
            assert!(!dst.is_empty());
            dst[0] = *b;
            got.extend(r.advance(1).unwrap());
        }
        assert_eq!(got, vec![b"first".to_vec(), vec![7u8; 3000], Vec::new()]);
        assert!(r.is_idle());
    }

    #[test]
    fn a_huge_announced_body_allocates_one_step_at_most() {
        let mut r = FrameReader::new(usize::MAX);
        r.buf().copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(r.advance(4).unwrap(), None);
        assert_eq!(r.buf().len(), GROW_STEP);
    }
}
