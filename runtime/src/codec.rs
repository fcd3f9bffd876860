//! Encoding of values sent between processes, file descriptors included.
//!
//! Values are encoded with bincode 2 (serde mode). A value that owns a file
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

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel::Outgoing;
use crate::error::{Error, Result};

/// Largest allocation a decode may make (a bound against hostile length
/// prefixes; real values stay far below it).
const DECODE_LIMIT: usize = 1 << 30;

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

/// bincode's output, into an [`Outgoing`].
struct Sink<'a>(&'a mut Outgoing);

impl bincode::enc::write::Writer for Sink<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0
            .write(bytes)
            .map_err(|inner| bincode::error::EncodeError::Io { inner, index: 0 })
    }
}

/// Encodes `value` for a channel, refusing to write more than `max` bytes.
///
/// Unlike [`encode`], the body is written once, where it will be sent
/// from: a reused in-memory buffer while small, a memfd as soon as it
/// outgrows a socket frame.
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
    let res = bincode::serde::encode_into_writer(value, Sink(out), bincode::config::standard());
    enc.fds = OUT
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), saved))
        .unwrap_or_default();
    if out.over_limit() {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("message over the limit of {max} bytes"),
        )));
    }
    match res {
        Ok(()) => {}
        Err(bincode::error::EncodeError::Io { inner, .. }) => return Err(Error::Io(inner)),
        Err(e) => return Err(Error::codec(e)),
    }
    out.finish()?;
    Ok(enc)
}

/// Encodes `value`; fds it carries are duplicated into the returned table.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let saved = OUT.with(|o| o.borrow_mut().replace(Vec::new()));
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard());
    let fds = OUT
        .with(|o| std::mem::replace(&mut *o.borrow_mut(), saved))
        .unwrap_or_default();
    Ok((bytes.map_err(Error::codec)?, fds))
}

/// Most bytes a decode claims per input byte: a one-byte varint claims the
/// whole width of its integer, at most a `u128`'s 16 bytes.
const CLAIM_PER_BYTE: usize = 16;

/// Decodes borrowing from `bytes`: a string or byte buffer is then copied
/// once into its final home, where the owning decoder would first copy it
/// into a zeroed buffer of its own.
fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::borrow_decode_from_slice::<T, _>(
        bytes,
        bincode::config::standard().with_limit::<LIMIT>(),
    )
}

/// Decodes a value from `bytes`, taking fds from `fds` by index.
///
/// The decode limit follows the input's length: bincode allocates a
/// string's or byte buffer's announced length before reading it, so with
/// a fixed limit a few hostile bytes would make it allocate up to
/// [`DECODE_LIMIT`]. No valid encoding claims more than
/// [`CLAIM_PER_BYTE`] bytes per input byte.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    let table: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let saved = IN.with(|i| i.borrow_mut().replace(table));
    let need = bytes.len().saturating_mul(CLAIM_PER_BYTE);
    let res = if need <= 1 << 16 {
        decode_limited::<T, { 1 << 16 }>(bytes)
    } else if need <= 1 << 24 {
        decode_limited::<T, { 1 << 24 }>(bytes)
    } else {
        decode_limited::<T, DECODE_LIMIT>(bytes)
    };
    // Unclaimed fds are dropped (closed) here with the table.
    IN.with(|i| *i.borrow_mut() = saved);
    let (value, used) = res.map_err(Error::codec)?;
    if used != bytes.len() {
        return Err(Error::Codec(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// A byte buffer that encodes as one block (a length and a `memcpy`).
///
/// serde sees a `Vec<u8>` as a sequence and encodes it byte by byte; wrap
/// large binary payloads in `Bytes` (as `serde_bytes` does) to move them at
/// memory speed through a `Queue`, a `Connection` or a process argument.
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

/// Serde helpers that move a `Vec<u8>` field as one block, as [`Bytes`]
/// does (Python's `bytes`).
///
/// serde sees a `Vec<u8>` as a sequence and encodes it byte by byte, about
/// 2 ns a byte each way; a field marked `#[serde(with = "mproc::bytes")]`
/// is written with one copy instead. Only the fields you mark change: with
/// other serde formats they become byte strings, as with `serde_bytes`.
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
        let err = bincode::serde::encode_to_vec(&v, bincode::config::standard()).unwrap_err();
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
        // bincode writes both as a length and the bytes: either side may
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
