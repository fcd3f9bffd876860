//! CPython's connection authentication (`deliver_challenge` /
//! `answer_challenge`), both generations of it.
//!
//! The serving side sends `#CHALLENGE#` and a random message; the other
//! side answers with an HMAC of that message under the shared authkey; the
//! server replies `#WELCOME#` or `#FAILURE#`. A `Listener` delivers a
//! challenge and then answers one, a `Client` the other way round, so each
//! side proves it knows the key.
//!
//! Two generations share the wire and are told apart by length:
//!
//! - Python ≤ 3.11: the message is 20 random bytes and the answer a raw
//!   16-byte HMAC-MD5.
//! - Python ≥ 3.12: the message is `{sha256}` and 40 random bytes, and the
//!   answer `{digest}` followed by the HMAC with that digest, computed over
//!   the whole message, prefix included (so a peer cannot downgrade it).
//!   An answer of exactly 16 bytes is a legacy client's MD5, accepted.
//!
//! When serving, this module sends the modern challenge (a 3.11 client
//! answers it with MD5, which is accepted); when answering, it follows what
//! the challenge says. Every frame of the handshake is at most
//! [`HANDSHAKE_MAX`] bytes, so an unauthenticated peer can make us allocate
//! nothing of size. Digests `md5`, `sha256` and `sha384` are supported;
//! CPython's other two (`sha3_256`, `sha3_384`, never its default) are
//! refused as unsupported.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Sha256, Sha384};

/// Opens a challenge frame.
pub(crate) const CHALLENGE: &[u8] = b"#CHALLENGE#";
/// The verdict for a right answer.
pub(crate) const WELCOME: &[u8] = b"#WELCOME#";
/// The verdict for a wrong one.
pub(crate) const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge we send (CPython's `MESSAGE_LENGTH`).
pub(crate) const MESSAGE_LENGTH: usize = 40;
/// Largest frame read during the handshake (CPython's `recv_bytes(256)`).
pub(crate) const HANDSHAKE_MAX: usize = 256;
/// Length of a legacy (≤ 3.11) challenge message.
const MD5_ONLY_MESSAGE_LENGTH: usize = 20;
/// Length of a raw HMAC-MD5.
const MD5_DIGEST_LEN: usize = 16;
/// Longest digest name CPython allows (`sha3_256`).
const MAX_DIGEST_NAME: usize = 8;

/// An HMAC digest of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digest {
    /// HMAC-MD5, the legacy one.
    Md5,
    /// HMAC-SHA256, CPython ≥ 3.12's default.
    Sha256,
    /// HMAC-SHA384.
    Sha384,
}

impl Digest {
    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
        }
    }

    /// HMAC of `message` under `key`.
    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length: `new_from_slice` cannot fail.
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<Sha384>>(key, message),
        }
    }
}

/// Why a handshake failed; the text goes into
/// [`Error::AuthenticationFailed`](crate::Error::AuthenticationFailed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthError(pub(crate) String);

fn fail(msg: impl Into<String>) -> AuthError {
    AuthError(msg.into())
}

/// The digest a challenge message or an answer asks for (`None`: the
/// legacy, unprefixed MD5 form) and the bytes after its prefix (CPython's
/// `_get_digest_name_and_payload`).
///
/// # Errors
/// No prefix on a message that is not of a legacy length, or a digest
/// that is not supported.
pub(crate) fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8]), AuthError> {
    if message.len() == MD5_ONLY_MESSAGE_LENGTH || message.len() == MD5_DIGEST_LEN {
        return Ok((None, message));
    }
    let close = message.strip_prefix(b"{").and_then(|rest| {
        rest.iter()
            .take(MAX_DIGEST_NAME + 1)
            .position(|&b| b == b'}')
    });
    let Some(close) = close else {
        return Err(fail(format!(
            "unsupported message length ({} bytes) or missing digest prefix",
            message.len()
        )));
    };
    let name = &message[1..1 + close];
    let payload = &message[close + 2..];
    let digest = match name {
        b"md5" => Digest::Md5,
        b"sha256" => Digest::Sha256,
        b"sha384" => Digest::Sha384,
        _ => {
            return Err(fail(format!(
                "unsupported digest {:?}",
                String::from_utf8_lossy(name)
            )));
        }
    };
    Ok((Some(digest), payload))
}

/// A fresh challenge message (after `#CHALLENGE#`): `{sha256}` and
/// [`MESSAGE_LENGTH`] random bytes.
///
/// # Errors
/// When the OS random source fails (no challenge is ever made up).
pub(crate) fn new_challenge() -> std::io::Result<Vec<u8>> {
    let mut m = b"{sha256}".to_vec();
    m.extend(crate::sys::random_bytes(MESSAGE_LENGTH)?);
    Ok(m)
}

/// The answer to a challenge message (CPython's `_create_response`): a raw
/// HMAC-MD5 for a legacy message, `{digest}` and the HMAC for a modern one;
/// the HMAC covers the whole message, prefix included.
///
/// # Errors
/// A message of neither form.
pub(crate) fn response(key: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthError> {
    match digest_and_payload(message)?.0 {
        None => Ok(Digest::Md5.mac(key, message)),
        Some(d) => {
            let mut out = format!("{{{}}}", d.name()).into_bytes();
            out.extend(d.mac(key, message));
            Ok(out)
        }
    }
}

/// Checks an answer to our challenge `message` (CPython's
/// `_verify_challenge`), in constant time.
///
/// # Errors
/// A wrong or malformed answer.
pub(crate) fn verify(key: &[u8], message: &[u8], answer: &[u8]) -> Result<(), AuthError> {
    let (digest, mac) = digest_and_payload(answer)?;
    let digest = digest.unwrap_or(Digest::Md5);
    let expected = digest.mac(key, message);
    if expected.len() != mac.len() {
        return Err(fail(format!(
            "expected a {} digest of {} bytes, got {}",
            digest.name(),
            expected.len(),
            mac.len()
        )));
    }
    // Constant time: every byte is looked at whatever the first difference.
    let diff = expected
        .iter()
        .zip(mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(fail("the digest received was wrong (authkey mismatch)"));
    }
    Ok(())
}

/// The challenge message inside a `#CHALLENGE#` frame.
///
/// # Errors
/// A frame that is not a challenge, or one too short to be one.
pub(crate) fn parse_challenge(frame: &[u8]) -> Result<&[u8], AuthError> {
    let message = frame
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| fail("protocol error: expected a challenge"))?;
    if message.len() < MD5_ONLY_MESSAGE_LENGTH {
        return Err(fail(format!(
            "challenge too short: {} bytes",
            message.len()
        )));
    }
    Ok(message)
}

/// One side of a handshake's transport: frames of at most
/// [`HANDSHAKE_MAX`] bytes.
pub(crate) trait Frames {
    /// Sends one frame.
    fn send_frame(&self, frame: &[u8]) -> crate::Result<()>;
    /// Receives one frame of at most [`HANDSHAKE_MAX`] bytes.
    fn recv_frame(&self) -> crate::Result<Vec<u8>>;
}

fn recv<F: Frames + ?Sized>(io: &F) -> crate::Result<Vec<u8>> {
    io.recv_frame().map_err(|e| match e {
        crate::Error::Closed => crate::Error::AuthenticationFailed(
            "the peer closed the connection during authentication".into(),
        ),
        crate::Error::Codec(m) => {
            crate::Error::AuthenticationFailed(format!("during authentication: {m}"))
        }
        e => e,
    })
}

/// The serving side: sends a challenge and checks the answer (CPython's
/// `deliver_challenge`).
///
/// # Errors
/// [`Error::AuthenticationFailed`](crate::Error::AuthenticationFailed) for
/// a wrong answer (the peer is told `#FAILURE#`); I/O errors and timeouts
/// as they come.
pub(crate) fn deliver<F: Frames + ?Sized>(io: &F, key: &[u8]) -> crate::Result<()> {
    let message = new_challenge()?;
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    io.send_frame(&frame)?;
    let answer = recv(io)?;
    match verify(key, &message, &answer) {
        Ok(()) => io.send_frame(WELCOME),
        Err(AuthError(m)) => {
            let _ = io.send_frame(FAILURE);
            Err(crate::Error::AuthenticationFailed(m))
        }
    }
}

/// The answering side (CPython's `answer_challenge`).
///
/// # Errors
/// [`Error::AuthenticationFailed`](crate::Error::AuthenticationFailed) for
/// a malformed challenge or when the peer refuses our answer.
pub(crate) fn answer<F: Frames + ?Sized>(io: &F, key: &[u8]) -> crate::Result<()> {
    let frame = recv(io)?;
    let message =
        parse_challenge(&frame).map_err(|AuthError(m)| crate::Error::AuthenticationFailed(m))?;
    let reply =
        response(key, message).map_err(|AuthError(m)| crate::Error::AuthenticationFailed(m))?;
    io.send_frame(&reply)?;
    let verdict = recv(io)?;
    if verdict != WELCOME {
        return Err(crate::Error::AuthenticationFailed(
            "the peer rejected our digest (authkey mismatch)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-MD5 test vector (RFC 2202, case 2).
    #[test]
    fn md5_matches_rfc_2202() {
        let mac = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "750c783e6ab0b503eaa86e310a5db738");
    }

    #[test]
    fn digest_prefix_table() {
        let legacy20 = [7u8; 20];
        let legacy16 = [7u8; 16];
        type Case<'a> = (&'a [u8], Result<(Option<Digest>, &'a [u8]), ()>);
        let cases: &[Case<'_>] = &[
            (&legacy20, Ok((None, &legacy20))),
            (&legacy16, Ok((None, &legacy16))),
            (b"{sha256}abc", Ok((Some(Digest::Sha256), b"abc"))),
            (b"{md5}", Ok((Some(Digest::Md5), b""))),
            (b"{sha384}x", Ok((Some(Digest::Sha384), b"x"))),
            (b"{sha3_256}x", Err(())),
            (b"{whirlpool}x", Err(())),
            (b"{sha256", Err(())),
            (b"sha256}abc", Err(())),
            (b"", Err(())),
            (b"{", Err(())),
            (b"{}", Err(())),
            (b"{0123456789}x", Err(())),
        ];
        for (input, want) in cases {
            let got = digest_and_payload(input).map_err(|_| ());
            assert_eq!(&got, want, "{input:?}");
        }
    }

    #[test]
    fn modern_answer_is_prefixed_and_verifies() {
        let msg = new_challenge().unwrap();
        assert_eq!(msg.len(), 8 + MESSAGE_LENGTH);
        let ans = response(b"key", &msg).unwrap();
        assert!(ans.starts_with(b"{sha256}"));
        assert_eq!(ans.len(), 8 + 32);
        verify(b"key", &msg, &ans).unwrap();
        assert!(verify(b"other", &msg, &ans).is_err());
    }

    #[test]
    fn legacy_challenge_gets_raw_md5_and_md5_answers_are_accepted() {
        let msg = [3u8; 20];
        let ans = response(b"key", &msg).unwrap();
        assert_eq!(ans, Digest::Md5.mac(b"key", &msg));
        // A 3.11 client answers a modern challenge with raw MD5.
        let modern = new_challenge().unwrap();
        verify(b"key", &modern, &Digest::Md5.mac(b"key", &modern)).unwrap();
        assert!(verify(b"key", &modern, &Digest::Md5.mac(b"nope", &modern)).is_err());
    }

    #[test]
    fn challenge_frame_table() {
        let mut ok = CHALLENGE.to_vec();
        ok.extend([1u8; 20]);
        assert_eq!(parse_challenge(&ok).unwrap(), &[1u8; 20]);
        let mut short = CHALLENGE.to_vec();
        short.extend([1u8; 19]);
        assert!(parse_challenge(&short).is_err());
        assert!(parse_challenge(b"#WELCOME#").is_err());
        assert!(parse_challenge(b"").is_err());
    }

    #[test]
    fn answers_of_the_wrong_length_are_refused() {
        let msg = new_challenge().unwrap();
        let mut ans = response(b"k", &msg).unwrap();
        ans.pop();
        assert!(verify(b"k", &msg, &ans).is_err());
        assert!(verify(b"k", &msg, b"{sha256}").is_err());
        assert!(verify(b"k", &msg, b"").is_err());
    }
}
