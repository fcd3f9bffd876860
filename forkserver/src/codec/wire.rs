//! The wire format itself: a compact, non-self-describing serde format
//! (LEB128 varints, zigzag for signed integers, length-prefixed strings,
//! byte strings and sequences), written to a [`Sink`] and read from a slice.
//!
//! What is hard here is speed on byte payloads and totality on hostile
//! input, together:
//!
//! - serde hands a `Vec<u8>` (or `[u8]`, `Box<[u8]>`) to a format as a
//!   sequence of `u8`, one call per byte each way. The serializer
//!   recognises `collect_seq` over a `slice::Iter<u8>` and the deserializer
//!   recognises serde's own `Vec<u8>` visitor, and move such payloads as
//!   one block. The bytes on the wire are the same either way (a length,
//!   then the bytes), so which path ran never shows.
//! - Decoding reads from a slice and never allocates more than the input
//!   can back: a string or byte length is checked against the bytes left
//!   before anything is allocated; sequence lengths draw on an element
//!   budget proportional to the input (so a sequence of zero-sized values
//!   cannot spin for 2^64 rounds); nesting is bounded (no stack overflow on
//!   recursive types). Varints must be canonical, so every value has
//!   exactly one encoding.

use std::any::TypeId;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

use super::CodecError;

/// Deepest nesting of sequences, structs, enums and options a decode follows.
const MAX_DEPTH: u32 = 256;

/// Sequence elements a decode may announce per input byte (plus a constant
/// allowance), a bound for sequences of zero-sized values.
const ELEMENTS_PER_BYTE: usize = 8;

/// Where encoded bytes go.
pub trait Sink {
    /// Appends `bytes`.
    ///
    /// # Errors
    /// Whatever the sink refuses (a limit, a failed write); the encoding
    /// stops with that error.
    fn write(&mut self, bytes: &[u8]) -> Result<(), CodecError>;
}

impl Sink for Vec<u8> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl ser::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Malformed(msg.to_string())
    }
}

impl de::Error for CodecError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CodecError::Malformed(msg.to_string())
    }
}

fn malformed(msg: impl Into<String>) -> CodecError {
    CodecError::Malformed(msg.into())
}

// ------------------------------------------------------------ byte blocks

/// The bytes under `it` when it is a `slice::Iter<u8>` (what serde's
/// `Serialize` for `[u8]`, `Vec<u8>` and `Box<[u8]>` hands to
/// `collect_seq`).
#[inline]
fn as_byte_slice<'a, It>(it: &'a It) -> Option<&'a [u8]> {
    if typeid::of::<It>() != typeid::of::<std::slice::Iter<'static, u8>>() {
        return None;
    }
    #[allow(unsafe_code)]
    // SAFETY: `It` is `slice::Iter<'x, u8>` for some `'x` (type ids are
    // equal up to lifetimes, and this type has no other parameter). `It:
    // 'a` (it is borrowed for `'a`), so `'x: 'a`, and the iterator is
    // covariant in `'x`: reading it as a `slice::Iter<'a, u8>` only
    // shortens the lifetime.
    let it = unsafe { &*(it as *const It as *const std::slice::Iter<'a, u8>) };
    Some(it.as_slice())
}

/// The type id of serde's own visitor for `Vec<u8>` (private to serde, so
/// learnt once by asking `Vec<u8>` to deserialize from a probe).
fn vec_u8_visitor() -> TypeId {
    static ID: OnceLock<TypeId> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut probe = Probe(None);
        let _ = <Vec<u8> as de::Deserialize>::deserialize(&mut probe);
        // A `TypeId` no visitor has, should serde ever not call
        // `deserialize_seq` for a `Vec`.
        probe.0.unwrap_or(TypeId::of::<Probe>())
    })
}

/// A deserializer that records which visitor `deserialize_seq` got.
struct Probe(Option<TypeId>);

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = CodecError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(malformed("probe"))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        self.0 = Some(typeid::of::<V>());
        Err(malformed("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// `v` as a `V` when they are the same type.
#[inline]
fn cast<T, V>(v: T) -> Option<V> {
    if typeid::of::<T>() != typeid::of::<V>() {
        return None;
    }
    let v = std::mem::ManuallyDrop::new(v);
    #[allow(unsafe_code)]
    // SAFETY: `T` and `V` have the same type id, and `T` (here always
    // `Vec<u8>`) has no lifetime that the id could have erased: they are
    // one type. `v` is not dropped, so ownership moves exactly once.
    Some(unsafe { std::ptr::read(&*v as *const T as *const V) })
}

/// The byte-by-byte LEB128 loop of [`Deserializer::varint64`] and
/// [`Deserializer::varint`], in the width of `$t` (one body, each width
/// keeping its own arithmetic: 128-bit shifts cost twice as much).
macro_rules! leb128_loop {
    ($de:ident, $bits:ident, $t:ty) => {{
        let b = $de.byte()?;
        if b < 0x80 {
            return Ok(b.into());
        }
        let mut v = <$t>::from(b & 0x7f);
        let mut shift = 7;
        loop {
            let b = $de.byte()?;
            if shift >= $bits || (shift + 7 > $bits && u32::from(b) >> ($bits - shift) != 0) {
                return Err(malformed(format!("integer over {} bits", $bits)));
            }
            v |= <$t>::from(b & 0x7f) << shift;
            if b < 0x80 {
                if b == 0 {
                    return Err(malformed("non-canonical integer"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }};
}

/// Writes the LEB128 bytes of `$v` (a `mut` integer of any width, consumed)
/// into the array `$buf`; the number of bytes. One body for the 64- and
/// 128-bit encoders, each keeping its own arithmetic.
macro_rules! leb128_into {
    ($v:ident, $buf:ident) => {{
        let mut n = 0;
        while $v >= 0x80 {
            $buf[n] = ($v as u8) | 0x80;
            $v >>= 7;
            n += 1;
        }
        $buf[n] = $v as u8;
        n + 1
    }};
}

// ------------------------------------------------------------- serializer

/// A serde serializer writing the wire format to a [`Sink`].
pub struct Serializer<'a, W: Sink> {
    out: &'a mut W,
}

impl<'a, W: Sink> Serializer<'a, W> {
    /// A serializer writing to `out`.
    pub fn new(out: &'a mut W) -> Self {
        Serializer { out }
    }

    /// A LEB128 varint of a value up to 64 bits: the common case, kept off
    /// 128-bit arithmetic (a `u64` item costs about a third as much).
    #[inline(always)]
    fn varint64(&mut self, v: u64) -> Result<(), CodecError> {
        // Up to three bytes as fixed-size writes, which the sink copies
        // without a `memcpy` call.
        if v < 0x80 {
            return self.out.write(&[v as u8]);
        }
        if v < 1 << 14 {
            return self.out.write(&[v as u8 | 0x80, (v >> 7) as u8]);
        }
        if v < 1 << 21 {
            return self
                .out
                .write(&[v as u8 | 0x80, (v >> 7) as u8 | 0x80, (v >> 14) as u8]);
        }
        self.varint64_long(v)
    }

    /// [`varint64`](Self::varint64) of four bytes and more, out of line so
    /// that the short forms inline into every caller.
    #[inline(never)]
    fn varint64_long(&mut self, mut v: u64) -> Result<(), CodecError> {
        let mut buf = [0u8; 10];
        let n = leb128_into!(v, buf);
        match n {
            4 => self.out.write(&buf[..4]),
            5 => self.out.write(&buf[..5]),
            6 => self.out.write(&buf[..6]),
            7 => self.out.write(&buf[..7]),
            8 => self.out.write(&buf[..8]),
            9 => self.out.write(&buf[..9]),
            _ => self.out.write(&buf),
        }
    }

    #[inline]
    fn varint(&mut self, mut v: u128) -> Result<(), CodecError> {
        if let Ok(v) = u64::try_from(v) {
            return self.varint64(v);
        }
        let mut buf = [0u8; 19];
        let n = leb128_into!(v, buf);
        self.out.write(&buf[..n])
    }

    #[inline]
    fn len(&mut self, len: usize) -> Result<(), CodecError> {
        self.varint64(len as u64)
    }

    #[inline]
    fn block(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.len(bytes.len())?;
        self.out.write(bytes)
    }
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl<'s, 'a, W: Sink> ser::Serializer for &'s mut Serializer<'a, W> {
    type Ok = ();
    type Error = CodecError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), CodecError> {
        self.out.write(&[v as u8])
    }
    fn serialize_i8(self, v: i8) -> Result<(), CodecError> {
        self.out.write(&[v as u8])
    }
    fn serialize_i16(self, v: i16) -> Result<(), CodecError> {
        self.varint64(zigzag64(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<(), CodecError> {
        self.varint64(zigzag64(v.into()))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), CodecError> {
        self.varint64(zigzag64(v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), CodecError> {
        self.varint(zigzag(v))
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), CodecError> {
        self.out.write(&[v])
    }
    fn serialize_u16(self, v: u16) -> Result<(), CodecError> {
        self.varint64(v.into())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), CodecError> {
        self.varint64(v.into())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), CodecError> {
        self.varint64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), CodecError> {
        self.varint(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), CodecError> {
        self.out.write(&v.to_le_bytes())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CodecError> {
        self.out.write(&v.to_le_bytes())
    }
    fn serialize_char(self, v: char) -> Result<(), CodecError> {
        self.varint(u32::from(v).into())
    }
    fn serialize_str(self, v: &str) -> Result<(), CodecError> {
        self.block(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CodecError> {
        self.block(v)
    }
    fn serialize_none(self) -> Result<(), CodecError> {
        self.out.write(&[0])
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), CodecError> {
        self.out.write(&[1])?;
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CodecError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), CodecError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), CodecError> {
        self.varint(index.into())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), CodecError> {
        self.varint(index.into())?;
        v.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, CodecError> {
        let len = len.ok_or_else(|| malformed("a sequence must know its length"))?;
        self.len(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CodecError> {
        self.varint(index.into())?;
        Ok(self)
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self, CodecError> {
        let len = len.ok_or_else(|| malformed("a map must know its length"))?;
        self.len(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, CodecError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, CodecError> {
        self.varint(index.into())?;
        Ok(self)
    }

    /// A `[u8]`, `Vec<u8>` or `Box<[u8]>` is written as one block; any
    /// other sequence element by element.
    #[inline]
    fn collect_seq<I>(self, iter: I) -> Result<(), CodecError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let iter = iter.into_iter();
        if let Some(bytes) = as_byte_slice(&iter) {
            return self.block(bytes);
        }
        let len = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let mut seq = ser::Serializer::serialize_seq(&mut *self, len)?;
        for item in iter {
            ser::SerializeSeq::serialize_element(&mut seq, &item)?;
        }
        ser::SerializeSeq::end(seq)
    }
}

/// The compound serializers but maps: each element or field goes out as
/// its value alone (a struct's field names are the type's to know), and
/// the end writes nothing.
macro_rules! compound {
    ($($tr:ident :: $m:ident ($($key:ty)?)),*) => {$(
        impl<W: Sink> ser::$tr for &mut Serializer<'_, W> {
            type Ok = ();
            type Error = CodecError;
            #[inline]
            fn $m<T: Serialize + ?Sized>(
                &mut self,
                $(_: $key,)?
                v: &T,
            ) -> Result<(), CodecError> {
                v.serialize(&mut **self)
            }
            fn end(self) -> Result<(), CodecError> {
                Ok(())
            }
        }
    )*};
}
compound!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str)
);

impl<W: Sink> ser::SerializeMap for &mut Serializer<'_, W> {
    type Ok = ();
    type Error = CodecError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CodecError> {
        k.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CodecError> {
        v.serialize(&mut **self)
    }
    fn end(self) -> Result<(), CodecError> {
        Ok(())
    }
}

// ----------------------------------------------------------- deserializer

/// A serde deserializer reading the wire format from a slice, borrowing
/// strings and byte strings from it.
pub struct Deserializer<'de> {
    input: &'de [u8],
    /// Sequence and map elements that may still be announced.
    budget: usize,
    depth: u32,
}

impl<'de> Deserializer<'de> {
    /// A deserializer reading `input`.
    pub fn new(input: &'de [u8]) -> Self {
        Deserializer {
            input,
            budget: input
                .len()
                .saturating_mul(ELEMENTS_PER_BYTE)
                .saturating_add(1024),
            depth: 0,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], CodecError> {
        if n > self.input.len() {
            return Err(malformed(format!(
                "{n} bytes announced, {} left",
                self.input.len()
            )));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .input
            .split_first()
            .ok_or_else(|| malformed("unexpected end of input"))?;
        self.input = rest;
        Ok(b)
    }

    /// A canonical LEB128 varint of at most `bits` (≤ 64) bits, in 64-bit
    /// arithmetic: the common case (lengths, indices, every integer up to
    /// `u64`), about twice as fast as the general [`varint`](Self::varint).
    #[inline]
    fn varint64(&mut self, bits: u32) -> Result<u64, CodecError> {
        debug_assert!(bits <= 64);
        match self.input {
            [b, rest @ ..] if *b < 0x80 => {
                self.input = rest;
                return Ok(u64::from(*b));
            }
            [a, b, rest @ ..] if *b < 0x80 && *b != 0 && bits >= 14 => {
                self.input = rest;
                return Ok(u64::from(a & 0x7f) | u64::from(*b) << 7);
            }
            [a, b, c, rest @ ..] if *b >= 0x80 && *c < 0x80 && *c != 0 && bits >= 21 => {
                self.input = rest;
                return Ok(u64::from(a & 0x7f) | u64::from(b & 0x7f) << 7 | u64::from(*c) << 14);
            }
            _ => {}
        }
        leb128_loop!(self, bits, u64)
    }

    /// A canonical LEB128 varint of at most `bits` bits.
    #[inline]
    fn varint(&mut self, bits: u32) -> Result<u128, CodecError> {
        if bits <= 64 {
            return self.varint64(bits).map(u128::from);
        }
        leb128_loop!(self, bits, u128)
    }

    fn signed(&mut self, bits: u32) -> Result<i128, CodecError> {
        let u = self.varint(bits)?;
        Ok(((u >> 1) as i128) ^ -((u & 1) as i128))
    }

    #[inline]
    fn len(&mut self) -> Result<usize, CodecError> {
        usize::try_from(self.varint64(64)?).map_err(|_| malformed("length over usize"))
    }

    /// A length-prefixed block, checked against the input before use.
    #[inline]
    fn block(&mut self) -> Result<&'de [u8], CodecError> {
        let n = self.len()?;
        self.take(n)
    }

    /// A sequence or map length, drawn from the element budget.
    fn elements(&mut self) -> Result<usize, CodecError> {
        let n = self.len()?;
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or_else(|| malformed(format!("{n} elements announced in too short an input")))?;
        Ok(n)
    }

    fn nest<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<T, CodecError> {
        if self.depth >= MAX_DEPTH {
            return Err(malformed("nested too deep"));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }
}

macro_rules! unsigned {
    ($($m:ident $v:ident $t:ty, $read:ident),*) => {$(
        #[inline]
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
            let v = self.$read(<$t>::BITS)?;
            visitor.$v(v as $t)
        }
    )*};
}

macro_rules! signed {
    ($($m:ident $v:ident $t:ty),*) => {$(
        fn $m<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
            let v = self.signed(<$t>::BITS)?;
            visitor.$v(v as $t)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = CodecError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(malformed("the format is not self-describing"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, CodecError> {
        Err(malformed("the format is not self-describing"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(malformed(format!("bool byte {b}"))),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_i8(self.byte()? as i8)
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_u8(self.byte()?)
    }

    unsigned!(
        deserialize_u16 visit_u16 u16, varint64,
        deserialize_u32 visit_u32 u32, varint64,
        deserialize_u64 visit_u64 u64, varint64,
        deserialize_u128 visit_u128 u128, varint
    );
    signed!(
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
        deserialize_i128 visit_i128 i128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let b = self.take(4)?;
        visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        visitor.visit_f64(f64::from_le_bytes(a))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let v = self.varint(32)? as u32;
        let c = char::from_u32(v).ok_or_else(|| malformed(format!("char {v:#x}")))?;
        visitor.visit_char(c)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let b = self.block()?;
        let s = std::str::from_utf8(b).map_err(|e| malformed(format!("string: {e}")))?;
        visitor.visit_borrowed_str(s)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let b = self.block()?;
        visitor.visit_borrowed_bytes(b)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nest(|d| visitor.visit_some(d)),
            b => Err(malformed(format!("option tag {b}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.nest(|d| visitor.visit_newtype_struct(d))
    }

    /// serde's `Vec<u8>` visitor (also behind `Box<[u8]>`) gets its bytes
    /// as one block; any other sequence goes element by element.
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        if typeid::of::<V>() == vec_u8_visitor() {
            let v = self.block()?.to_vec();
            return cast::<Vec<u8>, V::Value>(v)
                .ok_or_else(|| malformed("a Vec<u8> visitor that does not make a Vec<u8>"));
        }
        let len = self.elements()?;
        self.nest(|d| visitor.visit_seq(Access { de: d, left: len }))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.nest(|d| visitor.visit_seq(Access { de: d, left: len }))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let len = self.elements()?;
        self.nest(|d| visitor.visit_map(Access { de: d, left: len }))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        self.nest(|d| visitor.visit_enum(d))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        let v = self.varint(32)? as u32;
        visitor.visit_u32(v)
    }
}

/// Elements of a sequence, tuple or map with `left` still to read.
struct Access<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
    type Error = CodecError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, CodecError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Access<'_, 'de> {
    type Error = CodecError;

    /// A key counts as one of the `left` elements; its value does not.
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, CodecError> {
        de::SeqAccess::next_element_seed(self, seed)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, CodecError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Deserializer<'de> {
    type Error = CodecError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), CodecError> {
        let index = self.varint(32)? as u32;
        let v = seed.deserialize(IntoDeserializer::<CodecError>::into_deserializer(index))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Deserializer<'de> {
    type Error = CodecError;

    fn unit_variant(self) -> Result<(), CodecError> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, CodecError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}
