//! The one place that knows the wire encoding.
//!
//! A compact serde format of this crate's own (its `wire` submodule: LEB128
//! varints, zigzag signed integers, length-prefixed strings, byte strings
//! and sequences; the byte-level description is in `docs/protocol.md`).
//! Byte payloads (`Vec<u8>`, `[u8]`, `Box<[u8]>`, `serialize_bytes`) move
//! as one block. Decoding reads from a slice and is total: any byte string
//! gives a value or a [`CodecError`], never a panic, and trailing bytes are
//! an error. No allocation is larger than what the input can back, so a
//! length prefix claiming gigabytes fails cleanly instead of allocating.
//!
//! The format is the same in every process of one build; a connection's
//! handshake (`PROTOCOL_VERSION`) is what guards it across builds.

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::protocol::{MAX_BULK, MAX_FRAME};

mod wire;

pub use wire::{Deserializer, Serializer, Sink};

/// Why encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value encodes to more than the limit.
    #[error("encoded message is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size it would have had (at least).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `value` into one frame of at most [`crate::MAX_FRAME`] bytes.
///
/// # Errors
/// [`CodecError::TooLarge`] when the encoding exceeds the frame limit.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, MAX_FRAME)
}

/// Encodes `value`, refusing anything longer than `limit` bytes.
///
/// # Errors
/// [`CodecError::TooLarge`] when the encoding exceeds `limit`;
/// [`CodecError::Malformed`] when serde refuses the value.
pub fn encode_limited<T: Serialize + ?Sized>(
    value: &T,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::new();
    encode_into(value, &mut bytes)?;
    check_size(bytes.len(), limit)?;
    Ok(bytes)
}

/// Encodes `value` into `out`, with no limit of its own (a [`Sink`] can
/// refuse to grow).
///
/// # Errors
/// [`CodecError::Malformed`] when serde refuses the value (a sequence of
/// unknown length, a custom error); whatever `out` returns.
#[inline]
pub fn encode_into<T: Serialize + ?Sized, W: Sink>(
    value: &T,
    out: &mut W,
) -> Result<(), CodecError> {
    value.serialize(&mut Serializer::new(out))
}

/// Decodes one frame (at most [`crate::MAX_FRAME`] bytes).
///
/// # Errors
/// [`CodecError::TooLarge`] for a longer input; [`CodecError::Malformed`]
/// for any invalid input, trailing bytes included.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_max(bytes, MAX_FRAME)
}

/// Decodes a bulk payload (at most [`MAX_BULK`] bytes).
///
/// # Errors
/// As [`decode`].
pub fn decode_bulk<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_max(bytes, MAX_BULK)
}

fn decode_max<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    check_size(bytes.len(), limit)?;
    from_slice(bytes)
}

/// [`CodecError::TooLarge`] when `size` bytes exceed `limit`.
fn check_size(size: usize, limit: usize) -> Result<(), CodecError> {
    if size > limit {
        return Err(CodecError::TooLarge { size, limit });
    }
    Ok(())
}

/// Decodes exactly one value from the whole of `bytes`, borrowing strings
/// and byte strings from it where the type allows.
///
/// Every allocation is backed by input: a length is checked against the
/// bytes left before anything is allocated.
///
/// # Errors
/// [`CodecError::Malformed`] for any invalid input, trailing bytes included.
#[inline]
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let mut de = Deserializer::new(bytes);
    let value = T::deserialize(&mut de)?;
    if de.remaining() != 0 {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            de.remaining()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Reply, Request};
    use serde::ser::SerializeSeq;

    #[test]
    fn round_trip() {
        let r = Request::Ping { id: 7 };
        let b = encode(&r).unwrap();
        assert_eq!(b, [4, 7]);
        assert_eq!(decode::<Request>(&b).unwrap(), r);
        let s = Request::Signal {
            id: 2,
            pid: 10000,
            signal: 15,
        };
        let b = encode(&s).unwrap();
        assert_eq!(b, [2, 2, 0xa0, 0x9c, 0x01, 0x1e]);
        assert_eq!(decode::<Request>(&b).unwrap(), s);
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut b = encode(&Request::Ping { id: 7 }).unwrap();
        b.push(0);
        assert!(matches!(
            decode::<Request>(&b),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // An Error reply whose message claims 2^60 bytes.
        let bytes = [
            7u8, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10,
        ];
        assert!(decode::<Reply>(&bytes).is_err());
        let claim = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(from_slice::<Vec<u8>>(&claim).is_err());
        assert!(from_slice::<String>(&claim).is_err());
        assert!(from_slice::<Vec<u64>>(&claim).is_err());
        assert!(from_slice::<Vec<()>>(&claim).is_err());
    }

    #[test]
    fn too_large_refused() {
        let r = Reply::Error {
            id: None,
            kind: crate::protocol::ErrorKind::Os,
            message: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(encode(&r), Err(CodecError::TooLarge { .. })));
    }

    /// A byte sequence written element by element, as serde's default
    /// `collect_seq` would.
    struct PerElement<'a>(&'a [u8]);

    impl Serialize for PerElement<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for b in self.0 {
                seq.serialize_element(b)?;
            }
            seq.end()
        }
    }

    #[test]
    fn byte_blocks_have_the_per_element_wire_form() {
        let v: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        let block = encode_limited(&v, usize::MAX).unwrap();
        let slow = encode_limited(&PerElement(&v), usize::MAX).unwrap();
        let bytes = encode_limited(&serde_bytes_like(&v), usize::MAX).unwrap();
        assert_eq!(block, slow);
        assert_eq!(block, bytes);
        assert_eq!(from_slice::<Vec<u8>>(&block).unwrap(), v);
        assert_eq!(&*from_slice::<Box<[u8]>>(&block).unwrap(), &v[..]);
        assert_eq!(from_slice::<&[u8]>(&block).unwrap(), &v[..]);
        let boxed: Box<[u8]> = v.clone().into_boxed_slice();
        assert_eq!(encode_limited(&boxed, usize::MAX).unwrap(), block);
        assert_eq!(encode_limited(&v[..], usize::MAX).unwrap(), block);
        // Other sequences still go element by element, varints included.
        let wide: Vec<u16> = vec![1, 300];
        let b = encode(&wide).unwrap();
        assert_eq!(b, [2, 1, 0xac, 0x02]);
        assert_eq!(from_slice::<Vec<u16>>(&b).unwrap(), wide);
    }

    fn serde_bytes_like(v: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(v)
    }

    #[test]
    fn integers_are_canonical_and_bounded() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let b = encode(&v).unwrap();
            assert_eq!(from_slice::<u64>(&b).unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(from_slice::<i64>(&encode(&v).unwrap()).unwrap(), v);
        }
        assert_eq!(encode(&-1i32).unwrap(), [1]);
        // Overlong, over the width, truncated.
        assert!(from_slice::<u64>(&[0x80, 0x00]).is_err());
        assert!(from_slice::<u16>(&[0xff, 0xff, 0x04]).is_err());
        assert!(from_slice::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x10]).is_err());
        assert!(from_slice::<u64>(&[0xff; 10]).is_err());
        assert!(from_slice::<u64>(&[0x80]).is_err());
        assert_eq!(from_slice::<u16>(&[0xff, 0xff, 0x03]).unwrap(), u16::MAX);
        assert!(from_slice::<bool>(&[2]).is_err());
        assert!(from_slice::<Option<u8>>(&[2, 0]).is_err());
        assert!(from_slice::<char>(&[0x80, 0xb0, 0x03]).is_err()); // a surrogate
        assert!(from_slice::<String>(&[2, 0xc3, 0x28]).is_err());
    }

    /// Plain LEB128, the reference the encoder's fast paths must match.
    fn leb128(mut v: u128) -> Vec<u8> {
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    #[test]
    fn varints_match_leb128_at_every_length_boundary() {
        let mut values: Vec<u128> = Vec::new();
        for shift in 0..128 {
            let p = 1u128 << shift;
            values.extend([p - 1, p, p + 1]);
        }
        values.push(u128::MAX);
        for v in values {
            let want = leb128(v);
            assert_eq!(encode(&v).unwrap(), want, "u128 {v}");
            assert_eq!(from_slice::<u128>(&want).unwrap(), v);
            if let Ok(v) = u64::try_from(v) {
                assert_eq!(encode(&v).unwrap(), want, "u64 {v}");
                assert_eq!(from_slice::<u64>(&want).unwrap(), v);
            } else {
                assert!(from_slice::<u64>(&want).is_err(), "{v} over u64");
            }
            if let Ok(v) = u32::try_from(v) {
                assert_eq!(encode(&v).unwrap(), want);
                assert_eq!(from_slice::<u32>(&want).unwrap(), v);
            } else {
                assert!(from_slice::<u32>(&want).is_err(), "{v} over u32");
            }
            if let Ok(v) = u16::try_from(v) {
                assert_eq!(from_slice::<u16>(&want).unwrap(), v);
            } else {
                assert!(from_slice::<u16>(&want).is_err(), "{v} over u16");
            }
        }
        // Overlong forms of the short fast paths.
        assert!(from_slice::<u64>(&[0x81, 0x00]).is_err());
        assert!(from_slice::<u64>(&[0x81, 0x80, 0x00]).is_err());
        assert!(from_slice::<u32>(&[0x80, 0x80, 0x80, 0x00]).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        enum Tree {
            Leaf,
            Node(Box<Tree>),
        }
        let mut b = vec![1u8; 100_000];
        b.push(0);
        assert!(from_slice::<Tree>(&b).is_err());
        let mut ok = vec![1u8; 100];
        ok.push(0);
        assert!(from_slice::<Tree>(&ok).is_ok());
    }
}
