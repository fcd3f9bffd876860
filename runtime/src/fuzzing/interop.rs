//! Fuzz harness of the decoders that read what a Python process (or any
//! process that knows an address or a segment name) sent: CPython's
//! message framing, both sides of its authkey handshake, and the
//! `ShareableList` layout.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::connection::pyauth::{self, Frames, HANDSHAKE_MAX};
use crate::connection::pyframe::{self, FrameReader};
use crate::error::{Error, Result};
use crate::shared_memory::{decode_bytes, encode_bytes};

/// A handshake peer that replays scripted frames and records ours.
struct Script {
    incoming: RefCell<VecDeque<Vec<u8>>>,
    sent: RefCell<Vec<Vec<u8>>>,
}

impl Frames for Script {
    fn send_frame(&self, frame: &[u8]) -> Result<()> {
        self.sent.borrow_mut().push(frame.to_vec());
        Ok(())
    }

    fn recv_frame(&self) -> Result<Vec<u8>> {
        match self.incoming.borrow_mut().pop_front() {
            None => Err(Error::Closed),
            Some(f) if f.len() > HANDSHAKE_MAX => Err(Error::Codec("too long".into())),
            Some(f) => Ok(f),
        }
    }
}

/// Splits `data` into frames at `0xFF 0x00` pairs (a cheap way for the
/// fuzzer to script several frames).
fn split_frames(data: &[u8]) -> VecDeque<Vec<u8>> {
    let mut out = VecDeque::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0xff && data.get(i + 1) == Some(&0) {
            out.push_back(std::mem::take(&mut cur));
            i += 2;
        } else {
            cur.push(data[i]);
            i += 1;
        }
    }
    out.push_back(cur);
    out
}

/// The `mproc_pyinterop` target: the first byte picks the decoder.
///
/// - 0: the framing, fed in chunks whose sizes come from the second byte,
///   with a limit from the third; decoded messages re-encode to a prefix
///   of the input.
/// - 1: the digest prefix and challenge parsers, and answer/verify on the
///   input as a challenge and as an answer.
/// - 2: the serving side of the handshake against scripted frames.
/// - 3: the answering side of the handshake against scripted frames.
/// - 4: a `ShareableList` segment's bytes, decoded; what decodes
///   re-encodes to bytes that decode to as many items.
pub fn fuzz_pyinterop(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 5 {
        0 => framing(rest),
        1 => {
            let _ = pyauth::digest_and_payload(rest);
            let _ = pyauth::parse_challenge(rest);
            if let Ok(ans) = pyauth::response(b"key", rest) {
                pyauth::verify(b"key", rest, &ans).expect("our own answer verifies");
            }
            let _ = pyauth::verify(b"key", b"0123456789abcdefghij", rest);
        }
        2 | 3 => {
            let script = Script {
                incoming: RefCell::new(split_frames(rest)),
                sent: RefCell::new(Vec::new()),
            };
            let r = if pick % 5 == 2 {
                pyauth::deliver(&script, b"key")
            } else {
                pyauth::answer(&script, b"key")
            };
            if pick % 5 == 2 {
                // Welcomed only after an answer that verifies.
                let sent = script.sent.borrow();
                assert_eq!(
                    r.is_ok(),
                    sent.last().map(Vec::as_slice) == Some(pyauth::WELCOME)
                );
            }
        }
        _ => {
            if let Ok(items) = decode_bytes(rest)
                && let Ok(again) = encode_bytes(&items)
            {
                let back = decode_bytes(&again).expect("a fresh encoding decodes");
                assert_eq!(back.len(), items.len());
            }
        }
    }
}

fn framing(data: &[u8]) {
    let [chunk, limit, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(*limit) * 64;
    let chunk = usize::from(*chunk).max(1);
    let mut r = FrameReader::new(limit);
    let mut got = Vec::new();
    let mut rest = stream;
    let mut failed = false;
    while !rest.is_empty() {
        let dst = r.buf();
        let n = dst.len().min(chunk).min(rest.len());
        dst[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        match r.advance(n) {
            Ok(Some(m)) => {
                assert!(m.len() <= limit);
                got.push(m);
            }
            Ok(None) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    // The same messages as one whole-buffer decode.
    let (whole, err) = pyframe::decode_all(stream, limit);
    assert_eq!(whole, got);
    assert_eq!(err.is_some(), failed);
    // Re-encoded with the shortest prefixes, the messages are a prefix of
    // the input whenever the input used short prefixes throughout.
    let mut again = Vec::new();
    for m in &got {
        let (p, n) = pyframe::encode_prefix(m.len() as u64);
        again.extend_from_slice(&p[..n]);
        again.extend_from_slice(m);
    }
    if !stream.windows(4).any(|w| w == [0xff; 4]) {
        assert!(stream.starts_with(&again));
    }
}

/// Seeds: valid inputs of every kind.
pub(super) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let t = "mproc_pyinterop";
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| out.push((t, format!("seed-{name}"), bytes));
    let mut frames = vec![0u8, 7, 4];
    frames.extend_from_slice(b"\0\0\0\x05hello\0\0\0\0");
    frames.extend_from_slice(b"\xff\xff\xff\xff\0\0\0\0\0\0\0\x02ok");
    add("frames", frames);
    let mut challenge = vec![1u8];
    challenge.extend_from_slice(b"#CHALLENGE#{sha256}");
    challenge.extend_from_slice(&[9u8; 40]);
    add("challenge-modern", challenge);
    let mut legacy = vec![1u8];
    legacy.extend_from_slice(&[5u8; 20]);
    add("challenge-legacy", legacy);
    // Serving: an MD5 answer (wrong, but well-formed).
    let mut serve = vec![2u8];
    serve.extend_from_slice(&[1u8; 16]);
    add("deliver-md5", serve);
    // Answering: a legacy challenge, then a welcome.
    let mut ans = vec![3u8];
    ans.extend_from_slice(pyauth::CHALLENGE);
    ans.extend_from_slice(&[4u8; 20]);
    ans.extend_from_slice(&[0xff, 0]);
    ans.extend_from_slice(pyauth::WELCOME);
    add("answer-legacy", ans);
    let items = [
        crate::shared_memory::Item::Int(-3),
        crate::shared_memory::Item::Float(0.5),
        crate::shared_memory::Item::Bool(true),
        crate::shared_memory::Item::None,
        "hé".into(),
        crate::shared_memory::Item::Bytes(vec![0, 1]),
    ];
    let mut list = vec![4u8];
    list.extend(encode_bytes(&items).unwrap_or_default());
    add("shareable-list", list);
    out
}
