//! The one place that knows the wire encoding.
//!
//! bincode 2 (serde mode, standard config: varints, little endian) with a hard
//! allocation limit, so a length prefix claiming gigabytes fails cleanly
//! instead of allocating. Decoding is total: any byte string gives a value or
//! a [`CodecError`], never a panic, and trailing bytes are an error.

use bincode::config::{Configuration, Limit};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{MAX_BULK, MAX_FRAME};

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

type Cfg<const N: usize> =
    Configuration<bincode::config::LittleEndian, bincode::config::Varint, Limit<N>>;

const fn config<const N: usize>() -> Cfg<N> {
    bincode::config::standard().with_limit::<N>()
}

/// Encodes `value` into one frame of at most [`MAX_FRAME`] bytes.
///
/// # Errors
/// [`CodecError::TooLarge`] when the encoding exceeds the frame limit.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, MAX_FRAME)
}

/// Encodes `value`, refusing anything longer than `limit` bytes.
///
/// # Errors
/// [`CodecError::TooLarge`] when the encoding exceeds `limit`;
/// [`CodecError::Malformed`] when serde refuses the value.
pub fn encode_limited<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Decodes one frame (at most [`MAX_FRAME`] bytes of allocation).
///
/// # Errors
/// [`CodecError::Malformed`] for any invalid input, trailing bytes included.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, config::<MAX_FRAME>())
}

/// Decodes a bulk payload (at most [`MAX_BULK`] bytes of allocation).
///
/// # Errors
/// As [`decode`].
pub fn decode_bulk<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, config::<MAX_BULK>())
}

fn decode_with<T: DeserializeOwned, const N: usize>(
    bytes: &[u8],
    cfg: Cfg<N>,
) -> Result<T, CodecError> {
    if bytes.len() > N {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit: N,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, cfg)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Reply, Request};

    #[test]
    fn round_trip() {
        let r = Request::Ping { id: 7 };
        let b = encode(&r).unwrap();
        assert_eq!(decode::<Request>(&b).unwrap(), r);
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
        // Variant 0 (Hello)… then an Error reply with a string claiming 2^60 bytes.
        let bytes = [7u8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Reply>(&bytes).is_err());
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
}
