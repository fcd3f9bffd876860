//! Encoding of values sent between processes, file descriptors included.
//!
//! Values are encoded with the fork server's wire format
//! ([`forkserver::codec`]: compact varints, byte payloads such as a
//! `Vec<u8>`, a `String` or a `Box<[u8]>` written and read as one block,
//! decoding that allocates nothing the input cannot back). A value that owns a file
//! descriptor — a [`Connection`](crate::connection), a queue, a lock, shared
//! memory — cannot put the fd's number in the bytes: the number means nothing
//! in the other process. Its `Serialize` impl instead calls
//! [`fd::serialize`], which duplicates the fd into an out-of-band table of the
//! current encoding scope and writes the table index; the table travels as
//! `SCM_RIGHTS` next to the bytes, and [`fd::deserialize`] takes the fd back
//! out of the receiving scope's table. Outside such a scope (serde_json, say)
//! these impls refuse with a clear error instead of writing a dead number.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};

use forkserver::codec::{self as wire, CodecError, Sink};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::Outgoing;
use crate::error::{Error, Result};

/// Version of the encoding of values between processes (the fork server's
/// codec, with this module's fd table, and the manager's requests built on
/// it): 1 was bincode 2, 2 is [`forkserver::codec`]'s own format, 3 adds
/// the object references of values stored in a manager (its `Item`).
/// Processes of one build always agree; a manager's TCP handshake sends
/// it, and a client of another version stops there with an error that
/// names both.
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) const WIRE_VERSION: u32 = 3;

thread_local! {
    static OUT: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static IN: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    /// The in-memory part of the last message encoded by this thread, kept
    /// for the next one (a `put` of a small item then allocates nothing).
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest scratch buffer kept between encodings (an [`Outgoing`] never
/// holds more than about 124 KiB in memory).
const SCRATCH_KEEP: usize = 256 * 1024;

/// A value encoded for a channel: its body (in memory, or in a sealed memfd
/// when large) and the fds it carries.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The body, finished and ready to send (any number of times).
    pub(crate) body: Option<Outgoing>,
    /// Duplicates of the fds the value carries, in table order.
    pub(crate) fds: Vec<OwnedFd>,
}

impl Drop for Encoded {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            let buf = body.into_buf();
            if buf.capacity() <= SCRATCH_KEEP {
                let _ = SCRATCH.try_with(|s| s.set(buf));
            }
        }
    }
}

/// The codec's output, into an [`Outgoing`], keeping the I/O error that
/// stopped it (the codec's own error type has no room for one).
struct OutSink<'a> {
    out: &'a mut Outgoing,
    failed: Option<std::io::Error>,
}

impl Sink for OutSink<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), CodecError> {
        self.out.write(bytes).map_err(|e| {
            self.failed = Some(e);
            CodecError::Malformed("the body could not be written".into())
        })
    }
}

/// Encodes `value` for a channel, refusing to write more than `max` bytes.
///
/// Unlike [`encode`], the body is written once, where it will be sent
/// from: a reused in-memory buffer while small, a memfd as soon as it
/// outgrows a socket frame. A byte payload (`Vec<u8>`, `String`,
/// `Box<[u8]>`, [`Bytes`], at the top or in a field) is one `write`, which
/// goes straight to the memfd when large.
///
/// # Errors
/// An `InvalidInput` [`Error::Io`] when the encoding is over `max` bytes;
/// [`Error::Codec`] when the value refuses to serialize; [`Error::Io`] when
/// a memfd cannot be made.
pub(crate) fn encode_message<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Encoded> {
    let buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let mut enc = Encoded {
        body: Some(Outgoing::new(buf, max)),
        fds: Vec::new(),
    };
    let Some(out) = enc.body.as_mut() else {
        unreachable!("just set");
    };
    let saved = OUT.with(|o| o.borrow_mut().replace(Vec::new()));
    let mut sink = OutSink { out, failed: None };
    let res = wire::encode_into(value, &mut sink);
    let failed = sink.failed;
    enc.fds = OUT
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), saved))
        .unwrap_or_default();
    if out.over_limit() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message over the limit of {max} bytes"),
        )));
    }
    if let Some(e) = failed {
        return Err(Error::Io(e));
    }
    res.map_err(Error::codec)?;
    out.finish()?;
    Ok(enc)
}

/// Encodes `value`; fds it carries are duplicated into the returned table.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let saved = OUT.with(|o| o.borrow_mut().replace(Vec::new()));
    let mut bytes = Vec::new();
    let res = wire::encode_into(value, &mut bytes);
    let fds = OUT
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), saved))
        .unwrap_or_default();
    res.map_err(Error::codec)?;
    Ok((bytes, fds))
}

/// Decodes a value from `bytes`, taking fds from `fds` by index.
///
/// The decoder borrows from `bytes`: a string or byte buffer is copied
/// once, into its final home, and no allocation is larger than what
/// `bytes` can back (a length is checked against the bytes left first).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let table: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let saved = IN.with(|i| i.borrow_mut().replace(table));
    let res = wire::from_slice::<T>(bytes);
    // Unclaimed fds are dropped (closed) here with the table.
    IN.with(|i| *i.borrow_mut() = saved);
    res.map_err(Error::codec)
}

/// A byte buffer that encodes as one block (a length and a `memcpy`).
///
/// With mproc's own encoding a plain `Vec<u8>` moves as one block too; `Bytes`
/// (like `serde_bytes`) also makes other serde formats write a byte string
/// instead of a sequence of numbers.
///
/// ```
/// let b = mproc::Bytes::from(vec![1u8, 2, 3]);
/// assert_eq!(&*b, &[1, 2, 3]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte buffer")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }
        // `deserialize_bytes`, not `_byte_buf`: a decoder that can lend the
        // bytes (ours decodes from the received buffer) then hands over a
        // slice, copied once here.
        d.deserialize_bytes(V)
    }
}

/// Serde helpers that write a `Vec<u8>` field as a byte string, as
/// [`Bytes`] does (Python's `bytes`).
///
/// mproc's own encoding already moves a `Vec<u8>` field as one block, with
/// or without the mark, and the bytes on the wire are the same either way.
/// The mark matters to other serde formats, where marked fields become
/// byte strings instead of sequences of numbers, as with `serde_bytes`.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Frame {
///     id: u32,
///     #[serde(with = "mproc::bytes")]
///     pixels: Vec<u8>,
/// }
///
/// let (a, b) = mproc::connection::pipe::<Frame>(true)?;
/// a.send(&Frame { id: 1, pixels: vec![9; 1 << 20] })?;
/// let f = b.recv()?;
/// assert_eq!((f.id, f.pixels.len()), (1, 1 << 20));
/// # Ok::<(), mproc::Error>(())
/// ```
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as one byte string.
    ///
    /// # Errors
    /// When the serializer fails.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Reads a byte string (or, from formats without one, a sequence of
    /// bytes).
    ///
    /// # Errors
    /// When the input holds neither.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::Bytes::deserialize(d).map(|b| b.0)
    }
}

/// Serde helpers for values that own a file descriptor.
///
/// Use with `#[serde(with = "mproc::fd")]` on an `OwnedFd` field, or call
/// from a hand-written impl. Works only inside `mproc`'s own encoding (process
/// arguments and results, `Connection`, `Queue`); anywhere else serializing
/// fails with an error that says so.
pub mod fd {
    use super::*;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    const OUTSIDE: &str = "a value holding a file descriptor can only be sent through mproc \
                           (process arguments, Connection, Queue), not serialized elsewhere";

    /// Puts a duplicate of `fd` in the current scope's table and writes its index.
    ///
    /// # Errors
    /// Outside an `mproc` encoding scope, or when `dup` fails.
    pub fn serialize<S: Serializer>(fd: &OwnedFd, s: S) -> Result<S::Ok, S::Error> {
        serialize_borrowed(fd.as_fd(), s)
    }

    /// [`serialize`] for a borrowed fd.
    ///
    /// # Errors
    /// As [`serialize`].
    pub fn serialize_borrowed<S: Serializer>(
        fd: std::os::fd::BorrowedFd<'_>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let idx = OUT.with(|o| -> Result<u32, String> {
            let mut o = o.borrow_mut();
            let table = o.as_mut().ok_or_else(|| OUTSIDE.to_string())?;
            let dup = fd.try_clone_to_owned().map_err(|e| format!("dup: {e}"))?;
            table.push(dup);
            Ok((table.len() - 1) as u32)
        });
        match idx {
            Ok(i) => s.serialize_u32(i),
            Err(e) => Err(S::Error::custom(e)),
        }
    }

    /// Reads an index and takes that fd out of the current scope's table.
    ///
    /// # Errors
    /// Outside an `mproc` decoding scope, or for an index that names no fd
    /// (or one already taken).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
        let idx = u32::deserialize(d)? as usize;
        IN.with(|i| {
            let mut i = i.borrow_mut();
            let table = i.as_mut().ok_or_else(|| D::Error::custom(OUTSIDE))?;
            table
                .get_mut(idx)
                .and_then(Option::take)
                .ok_or_else(|| D::Error::custom(format!("no file descriptor at index {idx}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct WithFd {
        name: String,
        #[serde(with = "fd")]
        fd: OwnedFd,
    }

    #[test]
    fn fd_travels_out_of_band() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let v = vec![WithFd {
            name: "x".into(),
            fd: OwnedFd::from(a),
        }];
        let (bytes, fds) = encode(&v).unwrap();
        assert_eq!(fds.len(), 1);
        let back: Vec<WithFd> = decode(&bytes, fds).unwrap();
        assert_eq!(back[0].name, "x");
    }

    #[test]
    fn refuses_outside_scope() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let v = WithFd {
            name: "x".into(),
            fd: OwnedFd::from(a),
        };
        let err = forkserver::codec::encode(&v).unwrap_err();
        assert!(
            err.to_string().contains("only be sent through mproc"),
            "{err}"
        );
    }

    #[test]
    fn bytes_round_trip_as_one_block() {
        let b = Bytes(vec![7u8; 100_000]);
        let (enc, _) = encode(&b).unwrap();
        assert!(enc.len() < 100_010, "encoded as a block, not per element");
        let back: Bytes = decode(&enc, Vec::new()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn bytes_fields_are_one_block_and_keep_the_wire_format() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Marked(#[serde(with = "super::bytes")] Vec<u8>);
        let v = vec![3u8; 70_000];
        let (plain, _) = encode(&v).unwrap();
        let (marked, _) = encode(&Marked(v.clone())).unwrap();
        // Both are a length and the bytes: either side may
        // mark the field without the other noticing.
        assert_eq!(plain, marked);
        assert_eq!(decode::<Marked>(&plain, Vec::new()).unwrap().0, v);
        assert_eq!(decode::<Vec<u8>>(&marked, Vec::new()).unwrap(), v);
    }

    #[test]
    fn bad_index_is_an_error() {
        let (bytes, _) = encode(&(String::from("x"), 5u32)).unwrap();
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct T(String, #[serde(with = "fd")] OwnedFd);
        assert!(decode::<T>(&bytes, Vec::new()).is_err());
    }
}
