//! The mutual challenge every TCP connection to a manager starts with.
//!
//! As CPython's `deliver_challenge` / `answer_challenge`, but both ways at
//! once and with HMAC-SHA256: the server sends a random 32-byte nonce; the
//! client answers with `HMAC(key, "client" ‖ nonce)` and a nonce of its own;
//! the server checks the answer (in constant time) and either closes with a
//! failure frame or welcomes the client with `HMAC(key, "server" ‖
//! client_nonce)`, which the client checks in turn. The role labels keep an
//! answer from being reflected back as a challenge's proof. Frames here are
//! at most [`HANDSHAKE_MAX`] bytes, so an unauthenticated peer can make the
//! server allocate nothing of size, and nothing it sends is decoded as a
//! request.

use std::io;
use std::net::TcpStream;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::transport::{read_frame, write_frame};
use crate::channel::RecvError;

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

/// The server's side; `Err` (the client is refused) on a wrong key.
pub(crate) fn serve(s: &TcpStream, key: &[u8]) -> io::Result<()> {
    let nonce = crate::sys::random_bytes(NONCE);
    let mut challenge = CHALLENGE.to_vec();
    challenge.extend_from_slice(&nonce);
    write_frame(s, &challenge)?;
    let answer = recv_small(s)?;
    if answer.len() != MAC + NONCE {
        let _ = write_frame(s, FAILURE);
        return Err(denied("malformed answer to the challenge"));
    }
    let (their_mac, their_nonce) = answer.split_at(MAC);
    if mac(key, b"client", &nonce).verify_slice(their_mac).is_err() {
        let _ = write_frame(s, FAILURE);
        return Err(denied("wrong authkey"));
    }
    let mut welcome = WELCOME.to_vec();
    welcome.extend_from_slice(&mac(key, b"server", their_nonce).finalize().into_bytes());
    write_frame(s, &welcome)
}

/// The client's side; `Err` with `PermissionDenied` when either side's key
/// is wrong.
pub(crate) fn answer(s: &TcpStream, key: &[u8]) -> io::Result<()> {
    let challenge = recv_small(s)?;
    let nonce = challenge
        .strip_prefix(CHALLENGE)
        .filter(|n| n.len() == NONCE)
        .ok_or_else(|| denied("the server sent no valid challenge"))?;
    let mine = crate::sys::random_bytes(NONCE);
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
