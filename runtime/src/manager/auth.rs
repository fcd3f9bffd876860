//! The mutual challenge every TCP connection to a manager starts with.
//!
//! As CPython's `deliver_challenge` / `answer_challenge`, but both ways at
//! once and with HMAC-SHA256: the server sends a random 32-byte nonce; the
//! client answers with `HMAC(key, "client" ‖ nonce)` and a nonce of its own;
//! the server checks the answer (in constant time) and either closes with a
//! failure frame or welcomes the client with `HMAC(key, "server" ‖
//! client_nonce)`, which the client checks in turn. The challenge also
//! names the server's [`WIRE_VERSION`] (the encoding of every request and
//! reply after the handshake), and a client of another version stops there
//! with an error that says so, before anything is decoded. The role labels keep an
//! answer from being reflected back as a challenge's proof. Frames here are
//! at most [`HANDSHAKE_MAX`] bytes, so an unauthenticated peer can make the
//! server allocate nothing of size, and nothing it sends is decoded as a
//! request. The server's side is a state machine without I/O
//! ([`ServerHandshake`]), so that the listener can run many handshakes on
//! one thread.

use std::io;
use std::net::TcpStream;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::transport::{read_frame, write_frame};
use crate::channel::RecvError;
use crate::codec::WIRE_VERSION;

const CHALLENGE: &[u8] = b"#MPROC-CHALLENGE#";
const WELCOME: &[u8] = b"#MPROC-WELCOME#";
const FAILURE: &[u8] = b"#MPROC-FAILURE#";
const NONCE: usize = 32;
const MAC: usize = 32;

/// Largest handshake frame.
pub(crate) const HANDSHAKE_MAX: usize = 256;

fn mac(key: &[u8], label: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(label);
    m.update(nonce);
    m
}

fn denied(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg.to_string())
}

fn recv_small(s: &TcpStream) -> io::Result<Vec<u8>> {
    match read_frame(s, HANDSHAKE_MAX) {
        Ok(b) => Ok(b),
        Err(RecvError::Closed) => Err(denied("the peer closed during authentication")),
        Err(RecvError::Timeout) => Err(io::ErrorKind::TimedOut.into()),
        Err(RecvError::Malformed(m)) => Err(denied(&format!("authentication: {m}"))),
        Err(RecvError::Io(e)) => Err(e),
    }
}

/// A length-prefixed frame as it goes on the wire.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// What the server does after some bytes of the client's answer arrived.
#[derive(Debug)]
pub(crate) enum Step {
    /// The answer is not complete yet.
    More,
    /// The client proved it knows the key: send this frame and serve it.
    Welcome(Vec<u8>),
    /// Refused: send this frame (possibly empty) and close.
    Refuse(io::Error, Vec<u8>),
}

/// The server's side of one handshake, without I/O: the caller sends the
/// challenge, reads into [`ServerHandshake::buf`] and reports what it read,
/// so that one thread can drive many handshakes at once. It holds at most
/// one handshake frame.
pub(crate) struct ServerHandshake {
    nonce: Vec<u8>,
    buf: [u8; 4 + HANDSHAKE_MAX],
    got: usize,
}

impl ServerHandshake {
    /// A handshake with a fresh nonce, and the challenge frame to send.
    ///
    /// # Errors
    /// When the OS random source fails (no nonce is ever made up).
    pub(crate) fn start() -> io::Result<(ServerHandshake, Vec<u8>)> {
        let nonce = crate::sys::random_bytes(NONCE)?;
        let mut challenge = CHALLENGE.to_vec();
        challenge.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        challenge.extend_from_slice(&nonce);
        let hs = ServerHandshake {
            nonce,
            buf: [0; 4 + HANDSHAKE_MAX],
            got: 0,
        };
        Ok((hs, frame(&challenge)))
    }

    /// How many bytes the answer has in all, as far as is known yet.
    fn need(&self) -> usize {
        if self.got < 4 {
            return 4;
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[..4]);
        4 + (u32::from_le_bytes(len) as usize).min(HANDSHAKE_MAX)
    }

    /// Where the next bytes of the answer go: never past the answer, so
    /// nothing the client sends after it is consumed here.
    pub(crate) fn buf(&mut self) -> &mut [u8] {
        let need = self.need();
        &mut self.buf[self.got..need]
    }

    /// Records `n` bytes read into [`ServerHandshake::buf`].
    pub(crate) fn advance(&mut self, n: usize, key: &[u8]) -> Step {
        self.got += n;
        if self.got == 4 {
            let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            if len as usize > HANDSHAKE_MAX {
                return Step::Refuse(
                    denied(&format!(
                        "authentication: a frame of {len} bytes exceeds the limit of {HANDSHAKE_MAX}"
                    )),
                    Vec::new(),
                );
            }
        }
        if self.got < self.need() {
            return Step::More;
        }
        let answer = &self.buf[4..self.got];
        if answer.len() != MAC + NONCE {
            return Step::Refuse(denied("malformed answer to the challenge"), frame(FAILURE));
        }
        let (their_mac, their_nonce) = answer.split_at(MAC);
        if mac(key, b"client", &self.nonce)
            .verify_slice(their_mac)
            .is_err()
        {
            return Step::Refuse(denied("wrong authkey"), frame(FAILURE));
        }
        let mut welcome = WELCOME.to_vec();
        welcome.extend_from_slice(&mac(key, b"server", their_nonce).finalize().into_bytes());
        Step::Welcome(frame(&welcome))
    }
}

/// The server's side over a blocking stream, one handshake on its own (the
/// listener drives [`ServerHandshake`] itself); `Err` (the client is
/// refused) on a wrong key.
#[cfg(feature = "internals")]
pub(crate) fn serve(s: &TcpStream, key: &[u8]) -> io::Result<()> {
    use std::io::{Read, Write};
    let (mut hs, challenge) = ServerHandshake::start()?;
    (&*s).write_all(&challenge)?;
    loop {
        let n = (&*s).read(hs.buf())?;
        if n == 0 {
            return Err(denied("the peer closed during authentication"));
        }
        match hs.advance(n, key) {
            Step::More => {}
            Step::Welcome(f) => return (&*s).write_all(&f),
            Step::Refuse(e, f) => {
                let _ = (&*s).write_all(&f);
                return Err(e);
            }
        }
    }
}

/// The nonce of a challenge (label, wire version, nonce), once its version
/// is this build's.
fn challenge_nonce(challenge: &[u8]) -> io::Result<&[u8]> {
    let rest = challenge
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| denied("the server sent no valid challenge"))?;
    let mismatch = |theirs: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the manager speaks mproc wire format {theirs}, this program version \
                 {WIRE_VERSION}: both ends need the same mproc release"
            ),
        )
    };
    if rest.len() == NONCE {
        // The challenge of releases before the version was sent.
        return Err(mismatch("version 1"));
    }
    let (version, nonce) = rest
        .split_first_chunk::<4>()
        .filter(|(_, n)| n.len() == NONCE)
        .ok_or_else(|| denied("the server sent no valid challenge"))?;
    let version = u32::from_le_bytes(*version);
    if version != WIRE_VERSION {
        return Err(mismatch(&format!("version {version}")));
    }
    Ok(nonce)
}

/// The client's side; `Err` with `PermissionDenied` when either side's key
/// is wrong, with `InvalidData` when the server's [`WIRE_VERSION`] is not
/// this build's.
pub(crate) fn answer(s: &TcpStream, key: &[u8]) -> io::Result<()> {
    let challenge = recv_small(s)?;
    let nonce = challenge_nonce(&challenge)?;
    let mine = crate::sys::random_bytes(NONCE)?;
    let mut reply = mac(key, b"client", nonce).finalize().into_bytes().to_vec();
    reply.extend_from_slice(&mine);
    write_frame(s, &reply)?;
    let verdict = recv_small(s)?;
    if verdict == FAILURE {
        return Err(denied(
            "authentication failed: the server refused this authkey",
        ));
    }
    let proof = verdict
        .strip_prefix(WELCOME)
        .ok_or_else(|| denied("the server sent no valid verdict"))?;
    mac(key, b"server", &mine)
        .verify_slice(proof)
        .map_err(|_| denied("the server could not prove it knows the authkey"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
        }
        (a, b)
    }

    #[test]
    fn right_key_passes_both_ways() {
        let (c, s) = pair();
        let t = std::thread::spawn(move || serve(&s, b"secret"));
        answer(&c, b"secret").unwrap();
        t.join().unwrap().unwrap();
    }

    #[test]
    fn wrong_key_is_refused_on_both_sides() {
        let (c, s) = pair();
        let t = std::thread::spawn(move || serve(&s, b"secret"));
        let e = answer(&c, b"guess").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    /// The answer a client that knows `key` gives to `challenge` (a frame),
    /// framed, and the nonce it sent.
    fn client_answer(challenge: &[u8], key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce = challenge_nonce(&challenge[4..]).unwrap();
        let mine = vec![7u8; NONCE];
        let mut reply = mac(key, b"client", nonce).finalize().into_bytes().to_vec();
        reply.extend_from_slice(&mine);
        (frame(&reply), mine)
    }

    #[test]
    fn an_answer_a_byte_at_a_time_passes_and_nothing_past_it_is_read() {
        let (mut hs, challenge) = ServerHandshake::start().unwrap();
        let (answer, mine) = client_answer(&challenge, b"k");
        let mut sent = answer.clone();
        sent.extend_from_slice(b"the first request");
        let mut at = 0;
        let verdict = loop {
            let room = hs.buf();
            assert!(!room.is_empty() && at + room.len() <= answer.len());
            room[0] = sent[at];
            at += 1;
            match hs.advance(1, b"k") {
                Step::More => {}
                other => break other,
            }
        };
        assert_eq!(at, answer.len());
        let Step::Welcome(f) = verdict else {
            panic!("{verdict:?}")
        };
        let proof = f[4..].strip_prefix(WELCOME).unwrap();
        assert!(mac(b"k", b"server", &mine).verify_slice(proof).is_ok());
    }

    #[test]
    fn a_long_frame_or_a_wrong_key_is_refused() {
        let (mut hs, _) = ServerHandshake::start().unwrap();
        let room = hs.buf();
        assert_eq!(room.len(), 4);
        room.copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(hs.advance(4, b"k"), Step::Refuse(..)));

        let (mut hs, challenge) = ServerHandshake::start().unwrap();
        let (answer, _) = client_answer(&challenge, b"guess");
        hs.buf().copy_from_slice(&answer[..4]);
        assert!(matches!(hs.advance(4, b"k"), Step::More));
        hs.buf().copy_from_slice(&answer[4..]);
        match hs.advance(answer.len() - 4, b"k") {
            Step::Refuse(e, f) => {
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
                assert_eq!(f, frame(FAILURE));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A client facing a manager of another wire version (or of a release
    /// that sent none) stops with an error that names both versions.
    #[test]
    fn mixed_wire_versions_are_a_clear_error() {
        for version in [None, Some(WIRE_VERSION + 1), Some(WIRE_VERSION - 1)] {
            let (c, s) = pair();
            let mut ch = CHALLENGE.to_vec();
            if let Some(v) = version {
                ch.extend_from_slice(&u32::to_le_bytes(v));
            }
            ch.extend_from_slice(&[9; NONCE]);
            write_frame(&s, &ch).unwrap();
            let e = answer(&c, b"k").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            let shown = version.unwrap_or(1);
            assert!(
                e.to_string().contains(&format!(
                    "wire format version {shown}, this program version {WIRE_VERSION}"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn garbage_answer_is_refused() {
        let (c, s) = pair();
        let t = std::thread::spawn(move || serve(&s, b"secret"));
        let _ = recv_small(&c).unwrap();
        write_frame(&c, b"not a mac").unwrap();
        assert!(t.join().unwrap().is_err());
        assert_eq!(recv_small(&c).unwrap(), FAILURE);
    }
}
