//! What a manager client and server say to each other.
//!
//! A request is one [`Request`] encoded by the crate's codec; a reply is one
//! tag byte (`0` ok, `1` error) followed by the payload or an encoded
//! [`RemoteError`]. Values inside arguments travel as [`Bytes`]: the server
//! stores them still encoded, so it never needs to know their Rust types
//! (a dict of `String` to `Vec<f64>` is a map of byte strings to it).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value on its way into or out of a manager container: its encoding,
/// and the ids of the manager objects whose proxies it holds (one entry
/// per proxy; each marks where [`Item::bytes`] names the object).
///
/// Into the server, each id is a hold the container takes and keeps while
/// it keeps the value; out of it, each id is a hold the server has taken
/// for the receiving client, which the client's proxy gives back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) bytes: Bytes,
    pub(crate) refs: Vec<u64>,
}

/// A request from a client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Calls `method` of object `id` with encoded `args`.
    Call {
        id: u64,
        method: String,
        args: Bytes,
    },
    /// Creates an object of `kind` from encoded `args`; replies its id.
    Create { kind: String, args: Bytes },
    /// Asks for a fresh connection; the reply carries its fd (local only).
    Connect,
    /// Names object `id` so that other clients can find it.
    Publish { name: String, id: u64 },
    /// Finds a named object; replies `(id, kind)`.
    Lookup { name: String },
    /// Opens a TCP listener; replies the bound address as a string.
    Listen { addr: String, authkey: Bytes },
    /// Stops the server (the owner's first connection only).
    Shutdown,
    /// Gives back one hold this connection's session has on object `id`
    /// (a proxy of it was dropped); the object is freed with its last hold.
    Release { id: u64 },
    /// [`Request::Connect`] for a proxy of `id` that is about to travel to
    /// another process: the new connection starts a session of its own
    /// holding `id`, so the object outlives the sender's proxies for as
    /// long as the receiver keeps that connection (local only).
    ConnectHolding { id: u64 },
    /// How many objects the server holds (Python's
    /// `_number_of_objects`).
    Count,
    /// Takes one more hold on object `id` for this connection's session
    /// (a TCP proxy about to travel: the fresh connection it carries holds
    /// the object until the receiver joins it to its own session).
    Acquire { id: u64 },
    /// Joins this connection to the session of `token`, made now if no
    /// connection has it; what this connection's session held moves there.
    /// A TCP client's connections all join its one token, so that its holds
    /// last as long as any of them is open.
    Join { token: u64 },
    /// The server's identity, a random number made when it started: tells
    /// whether two proxies are of one manager (only those can be stored in
    /// each other).
    Ident,
}

/// Reply tags.
pub(crate) const REPLY_OK: u8 = 0;
pub(crate) const REPLY_ERR: u8 = 1;

/// Why the server refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The request could not be decoded.
    BadRequest,
    /// No object has that id (or name).
    NoSuchObject,
    /// The object has no such method.
    NoSuchMethod,
    /// The arguments did not decode as the method expects.
    BadArguments,
    /// An index out of range (Python's `IndexError`).
    Index,
    /// A key or member that is not there (Python's `KeyError`).
    Key,
    /// A value the operation cannot accept (Python's `ValueError`), such as
    /// a bounded semaphore released too often or arithmetic that overflows.
    Value,
    /// Releasing a lock this caller does not hold (Python's `RuntimeError`).
    NotOwner,
    /// A queue was empty and the call did not block (Python's
    /// `queue.Empty`).
    Empty,
    /// A queue stayed full: the put did not block, or its timeout passed
    /// (Python's `queue.Full`).
    Full,
    /// A blocking call ran out of time.
    Timeout,
    /// The barrier is broken (Python's `BrokenBarrierError`).
    BrokenBarrier,
    /// The operation is not available here (a fresh connection over TCP,
    /// shutting a server down from a secondary connection).
    Unsupported,
    /// A registered object's method failed or panicked.
    Failed,
}

/// An error the manager server reported for one call.
///
/// It reaches the caller inside [`crate::Error::Io`] (downcast the
/// `io::Error`'s inner error to this type to branch on [`RemoteErrorKind`]),
/// except timeouts, which are [`crate::Error::Timeout`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: RemoteErrorKind,
    /// The server's description.
    pub message: String,
}

impl RemoteError {
    pub(crate) fn new(kind: RemoteErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn timeout() -> RemoteError {
        RemoteError::new(RemoteErrorKind::Timeout, "timed out")
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "manager: {:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for RemoteError {}

/// Who is calling, for locks that have an owner (`RLock`, `Condition`):
/// one thread of one process, on any host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Owner {
    process: u64,
    pid: u32,
    thread: u64,
}

/// 0 until first use. Not a `OnceLock`: a `fork` child made while another
/// thread was initialising it would wait forever for that thread.
static PROCESS_NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static NEXT_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// This process's random nonce, made on first use; racing threads agree on
/// the first one stored.
fn process_nonce() -> u64 {
    use std::sync::atomic::Ordering;
    let n = PROCESS_NONCE.load(Ordering::Acquire);
    if n != 0 {
        return n;
    }
    let b = crate::sys::random_bytes_or_panic(8, "a process nonce");
    let mut a = [0u8; 8];
    a.copy_from_slice(&b);
    let fresh = u64::from_le_bytes(a).max(1);
    match PROCESS_NONCE.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(first) => first,
    }
}

impl Owner {
    /// The calling thread. A `fork` child keeps its parent's nonce but has
    /// another pid, so it never passes for its parent.
    pub(crate) fn current() -> Owner {
        let process = process_nonce();
        Owner {
            process,
            pid: std::process::id(),
            thread: THREAD.with(|t| *t),
        }
    }
}

/// How long a blocking call may wait: `None` is forever; `Some(ZERO)` is a
/// non-blocking try.
pub(crate) type Wait = Option<Duration>;

/// A byte string that encodes as one length and the raw bytes: the
/// crate's one [`Bytes`](crate::Bytes).
pub(crate) use crate::codec::Bytes;

/// A borrowed [`Bytes`], for encoding without a copy.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct BytesRef<'a>(pub(crate) &'a [u8]);

#[cfg(test)]
impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Numeric types the server can add to in place (`Dict::add`,
/// `Value::add`): the tag says how the stored bytes decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum NumTag {
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
}

/// Adds the encoded `delta` to the encoded `old` (zero when absent) as the
/// type `tag` names; the encoded sum.
pub(crate) fn num_add(
    tag: NumTag,
    old: Option<&[u8]>,
    delta: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, RemoteError> {
        crate::codec::decode(b, Vec::new())
            .map_err(|e| RemoteError::new(RemoteErrorKind::BadArguments, e.to_string()))
    }
    fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, RemoteError> {
        crate::codec::encode(v)
            .map(|(b, _)| b)
            .map_err(|e| RemoteError::new(RemoteErrorKind::Failed, e.to_string()))
    }
    macro_rules! int {
        ($t:ty) => {{
            let a: $t = match old {
                Some(b) => dec(b)?,
                None => 0,
            };
            let d: $t = dec(delta)?;
            let s = a.checked_add(d).ok_or_else(|| {
                RemoteError::new(RemoteErrorKind::Value, format!("{a} + {d} overflows"))
            })?;
            enc(&s)
        }};
    }
    macro_rules! float {
        ($t:ty) => {{
            let a: $t = match old {
                Some(b) => dec(b)?,
                None => 0.0,
            };
            let d: $t = dec(delta)?;
            enc(&(a + d))
        }};
    }
    match tag {
        NumTag::I8 => int!(i8),
        NumTag::I16 => int!(i16),
        NumTag::I32 => int!(i32),
        NumTag::I64 => int!(i64),
        NumTag::I128 => int!(i128),
        NumTag::U8 => int!(u8),
        NumTag::U16 => int!(u16),
        NumTag::U32 => int!(u32),
        NumTag::U64 => int!(u64),
        NumTag::U128 => int!(u128),
        NumTag::F32 => float!(f32),
        NumTag::F64 => float!(f64),
    }
}

/// A number the manager can add to in place, atomically
/// ([`Dict::add`](super::Dict::add), [`Value::add`](super::Value::add)).
///
/// Implemented for every primitive integer and float type.
pub trait Number: Serialize + serde::de::DeserializeOwned + Copy + Send + 'static {
    #[doc(hidden)]
    const TAG: NumTagPublic;
}

/// The tag of a [`Number`] type (an implementation detail).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct NumTagPublic(pub(crate) NumTag);

macro_rules! number {
    ($($t:ty => $tag:ident),*) => {$(
        impl Number for $t {
            const TAG: NumTagPublic = NumTagPublic(NumTag::$tag);
        }
    )*};
}
number!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, isize => I64,
        u8 => U8, u16 => U16, u32 => U32, u64 => U64, u128 => U128, usize => U64,
        f32 => F32, f64 => F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_match_borrowed() {
        let owned = (Bytes(vec![1, 2, 3]), 7u64);
        let (a, _) = crate::codec::encode(&owned).unwrap();
        let (b, _) = crate::codec::encode(&(BytesRef(&[1, 2, 3]), 7u64)).unwrap();
        assert_eq!(a, b);
        let back: (Bytes, u64) = crate::codec::decode(&a, Vec::new()).unwrap();
        assert_eq!(back, owned);
    }

    #[test]
    fn adds_by_tag_and_refuses_overflow() {
        let (five, _) = crate::codec::encode(&5i32).unwrap();
        let (two, _) = crate::codec::encode(&2i32).unwrap();
        let sum = num_add(NumTag::I32, Some(&five), &two).unwrap();
        assert_eq!(crate::codec::decode::<i32>(&sum, Vec::new()).unwrap(), 7);
        let fresh = num_add(NumTag::I32, None, &two).unwrap();
        assert_eq!(crate::codec::decode::<i32>(&fresh, Vec::new()).unwrap(), 2);
        let (max, _) = crate::codec::encode(&u8::MAX).unwrap();
        let (one, _) = crate::codec::encode(&1u8).unwrap();
        let e = num_add(NumTag::U8, Some(&max), &one).unwrap_err();
        assert_eq!(e.kind, RemoteErrorKind::Value);
        assert!(num_add(NumTag::I64, Some(b"\xff\xff"), &two).is_err());
    }

    #[test]
    fn owners_differ_between_threads() {
        let a = Owner::current();
        let b = std::thread::spawn(Owner::current).join().unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Owner::current());
    }
}
