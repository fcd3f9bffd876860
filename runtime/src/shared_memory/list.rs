//! `ShareableList` in CPython's layout.
//!
//! The segment holds, in native byte order (CPython's `struct` default):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | `N`, the number of items (`q`) |
//! | 8 × (N + 1) | the offset of each item's slot from the data area's start, and the end (`q`) |
//! | K | the data area: each slot 8 bytes, or a multiple of 8 for `str`/`bytes` |
//! | 8 × N | each item's `struct` format, NUL-padded (`8s`): `q`, `d`, `xxxxxxx?` (bool), `xxxxxx?x` (None), `<n>s` |
//! | N | each item's kind code (`b`): 0 as is, 1 `str`, 2 `bytes`, 3 `None` |
//!
//! The hard part is that all of it is written by another process, Python
//! or Rust, at any time: the header is checked against the segment's size
//! (with checked arithmetic) before anything is allocated, every read is
//! bounds-checked, and a malformed item is an error, never a panic.
//!
//! As in CPython, `str` and `bytes` lose trailing NUL bytes on the way
//! back, and a slot never grows: a longer `str` than its slot holds is
//! refused.

use std::io;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SharedMemory;
use crate::error::{Error, Result};

const WORD: usize = 8;
const FMT_INT: &[u8] = b"q";
const FMT_FLOAT: &[u8] = b"d";
const FMT_BOOL: &[u8] = b"xxxxxxx?";
const FMT_NONE: &[u8] = b"xxxxxx?x";
const CODE_PLAIN: i8 = 0;
const CODE_STR: i8 = 1;
const CODE_BYTES: i8 = 2;
const CODE_NONE: i8 = 3;

/// One item of a [`ShareableList`]: the types CPython's `ShareableList`
/// stores.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Python `int` (a signed 64-bit integer, `struct` `q`).
    Int(i64),
    /// Python `float` (`d`).
    Float(f64),
    /// Python `bool`.
    Bool(bool),
    /// Python `None`.
    None,
    /// Python `str` (UTF-8).
    Str(String),
    /// Python `bytes`.
    Bytes(Vec<u8>),
}

impl From<i64> for Item {
    fn from(v: i64) -> Item {
        Item::Int(v)
    }
}

impl From<f64> for Item {
    fn from(v: f64) -> Item {
        Item::Float(v)
    }
}

impl From<bool> for Item {
    fn from(v: bool) -> Item {
        Item::Bool(v)
    }
}

impl From<&str> for Item {
    fn from(v: &str) -> Item {
        Item::Str(v.to_string())
    }
}

impl From<String> for Item {
    fn from(v: String) -> Item {
        Item::Str(v)
    }
}

impl From<&[u8]> for Item {
    fn from(v: &[u8]) -> Item {
        Item::Bytes(v.to_vec())
    }
}

impl From<Vec<u8>> for Item {
    fn from(v: Vec<u8>) -> Item {
        Item::Bytes(v)
    }
}

impl Item {
    /// The `struct` format CPython stores for this item in a fresh list.
    fn format(&self) -> Result<Vec<u8>> {
        Ok(match self {
            Item::Int(_) => FMT_INT.to_vec(),
            Item::Float(_) => FMT_FLOAT.to_vec(),
            Item::Bool(_) => FMT_BOOL.to_vec(),
            Item::None => FMT_NONE.to_vec(),
            Item::Str(s) => str_format(s.len())?,
            Item::Bytes(b) => str_format(b.len())?,
        })
    }

    fn code(&self) -> i8 {
        match self {
            Item::Str(_) => CODE_STR,
            Item::Bytes(_) => CODE_BYTES,
            Item::None => CODE_NONE,
            _ => CODE_PLAIN,
        }
    }

    /// The slot bytes of a fixed-size item.
    fn fixed_bytes(&self) -> Option<[u8; WORD]> {
        let mut b = [0u8; WORD];
        match self {
            Item::Int(v) => b = v.to_ne_bytes(),
            Item::Float(v) => b = v.to_ne_bytes(),
            Item::Bool(v) => b[7] = u8::from(*v),
            Item::None => {}
            Item::Str(_) | Item::Bytes(_) => return None,
        }
        Some(b)
    }

    fn payload(&self) -> Option<&[u8]> {
        match self {
            Item::Str(s) => Some(s.as_bytes()),
            Item::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// `<n>s` with `n` the next multiple of 8 above `len` (CPython always
/// leaves room for at least one NUL); at most 8 characters, as CPython
/// requires.
fn str_format(len: usize) -> Result<Vec<u8>> {
    let slot = (len / WORD + 1) * WORD;
    let f = format!("{slot}s").into_bytes();
    if f.len() > WORD {
        return Err(invalid_input(format!(
            "an item of {len} bytes is too long for a ShareableList"
        )));
    }
    Ok(f)
}

fn invalid_input(msg: String) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed ShareableList: {}", msg.into()),
    ))
}

/// Where the list's bytes live: a segment, or a plain buffer in tests and
/// fuzzing.
pub(crate) trait Source {
    /// Size in bytes.
    fn size(&self) -> usize;
    /// Copies bytes at `offset` into `dst`; `false` when out of range.
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> bool;
}

impl Source for SharedMemory {
    fn size(&self) -> usize {
        SharedMemory::size(self)
    }
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> bool {
        self.read(offset, dst).is_ok()
    }
}

impl Source for [u8] {
    fn size(&self) -> usize {
        self.len()
    }
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> bool {
        match offset
            .checked_add(dst.len())
            .and_then(|e| self.get(offset..e))
        {
            Some(s) => {
                dst.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

fn read_word<S: Source + ?Sized>(src: &S, offset: usize) -> Result<i64> {
    let mut b = [0u8; WORD];
    if !src.read_at(offset, &mut b) {
        return Err(malformed(format!("offset {offset} outside the segment")));
    }
    Ok(i64::from_ne_bytes(b))
}

/// The checked header of a list: item count and slot offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Slot offsets from the data area's start; `n + 1` of them.
    offsets: Vec<usize>,
}

impl Layout {
    fn for_items(items: &[Item]) -> Result<(Layout, Vec<Vec<u8>>)> {
        let mut offsets = Vec::with_capacity(items.len() + 1);
        let mut formats = Vec::with_capacity(items.len());
        let mut at = 0usize;
        offsets.push(0);
        for it in items {
            let f = it.format()?;
            at = at
                .checked_add(match it.payload() {
                    Some(p) => (p.len() / WORD + 1) * WORD,
                    None => WORD,
                })
                .ok_or_else(|| invalid_input("list too large".into()))?;
            offsets.push(at);
            formats.push(f);
        }
        Ok((Layout { offsets }, formats))
    }

    /// Reads and checks the header of `src` (the count, the offsets, and
    /// that every part lies inside it).
    pub(crate) fn parse<S: Source + ?Sized>(src: &S) -> Result<Layout> {
        let n = read_word(src, 0)?;
        let size = src.size();
        // Each item takes at least 8 (offset) + 8 (slot) + 8 (format) + 1
        // bytes: bound n by the size before allocating anything.
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= size / (3 * WORD + 1))
            .ok_or_else(|| malformed(format!("item count {n}")))?;
        let mut offsets = Vec::with_capacity(n + 1);
        for i in 0..=n {
            let off = read_word(src, WORD * (1 + i))?;
            let off = usize::try_from(off)
                .ok()
                .filter(|o| offsets.last().is_none_or(|prev| o >= prev))
                .ok_or_else(|| malformed(format!("slot offset {off} of item {i}")))?;
            offsets.push(off);
        }
        let layout = Layout { offsets };
        let end = layout
            .codes_start()
            .and_then(|c| c.checked_add(n))
            .filter(|e| *e <= size)
            .ok_or_else(|| malformed("the list does not fit in its segment"))?;
        let _ = end;
        Ok(layout)
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn data_start(&self) -> usize {
        // (n + 2) words; n is bounded by the segment's size.
        (self.len() + 2) * WORD
    }

    fn formats_start(&self) -> Option<usize> {
        self.data_start().checked_add(*self.offsets.last()?)
    }

    fn codes_start(&self) -> Option<usize> {
        self.formats_start()?
            .checked_add(self.len().checked_mul(WORD)?)
    }

    /// Total size of a list with this layout.
    fn total(&self) -> Option<usize> {
        self.codes_start()?.checked_add(self.len())
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.len() {
            return Err(invalid_input(format!(
                "index {i} out of range for a ShareableList of {}",
                self.len()
            )));
        }
        Ok(())
    }

    fn format_of<S: Source + ?Sized>(&self, src: &S, i: usize) -> Result<Vec<u8>> {
        let mut f = [0u8; WORD];
        let at = self
            .formats_start()
            .and_then(|s| s.checked_add(i * WORD))
            .ok_or_else(|| malformed("format table"))?;
        if !src.read_at(at, &mut f) {
            return Err(malformed("format table outside the segment"));
        }
        let end = f.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        Ok(f[..end].to_vec())
    }

    /// Decodes item `i` of `src`.
    pub(crate) fn get<S: Source + ?Sized>(&self, src: &S, i: usize) -> Result<Item> {
        self.check_index(i)?;
        let fmt = self.format_of(src, i)?;
        let mut code = [0u8; 1];
        let code_at = self
            .codes_start()
            .and_then(|c| c.checked_add(i))
            .ok_or_else(|| malformed("code table"))?;
        if !src.read_at(code_at, &mut code) {
            return Err(malformed("code table outside the segment"));
        }
        let code = i8::from_ne_bytes(code);
        let at = self.data_start() + self.offsets[i];
        let raw = match fmt.as_slice() {
            FMT_INT => Item::Int(read_word(src, at)?),
            FMT_FLOAT => Item::Float(f64::from_bits(read_word(src, at)? as u64)),
            FMT_BOOL | FMT_NONE => {
                let mut w = [0u8; WORD];
                if !src.read_at(at, &mut w) {
                    return Err(malformed("item outside the segment"));
                }
                Item::Bool(w[if fmt == FMT_BOOL { 7 } else { 6 }] != 0)
            }
            [digits @ .., b's'] => {
                let n: usize = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| {
                        malformed(format!("format {:?}", String::from_utf8_lossy(&fmt)))
                    })?;
                if at.checked_add(n).is_none_or(|e| e > src.size()) {
                    return Err(malformed("item outside the segment"));
                }
                let mut b = vec![0u8; n];
                if !src.read_at(at, &mut b) {
                    return Err(malformed("item outside the segment"));
                }
                Item::Bytes(b)
            }
            _ => {
                return Err(malformed(format!(
                    "unsupported format {:?} of item {i}",
                    String::from_utf8_lossy(&fmt)
                )));
            }
        };
        let strip = |mut b: Vec<u8>| {
            let end = b.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
            b.truncate(end);
            b
        };
        match (code, raw) {
            (CODE_PLAIN, v) => Ok(v),
            (CODE_STR, Item::Bytes(b)) => String::from_utf8(strip(b))
                .map(Item::Str)
                .map_err(|_| malformed(format!("item {i} is not UTF-8"))),
            (CODE_BYTES, Item::Bytes(b)) => Ok(Item::Bytes(strip(b))),
            (CODE_NONE, _) => Ok(Item::None),
            (c, _) => Err(malformed(format!("kind code {c} of item {i}"))),
        }
    }
}

/// A fixed-length list of `int`, `float`, `bool`, `None`, `str` and
/// `bytes` in a named segment, in CPython's layout (Python's
/// `multiprocessing.shared_memory.ShareableList`), so a Python process
/// and a Rust one read and write the same list.
///
/// Items may change type, but not the list's length, and a `str` or
/// `bytes` item never outgrows its slot (rounded up to a multiple of 8 at
/// creation). There is no lock, as in Python: a reader may see an item
/// half written, which decodes to some value or to an error, never to a
/// panic. Ownership of the name is the segment's: see
/// [`SharedMemory`].
///
/// # Examples
/// ```
/// use mproc::shared_memory::{Item, ShareableList};
///
/// let list = ShareableList::new(&[Item::Int(7), "héllo".into(), Item::None, 2.5.into()])?;
/// // In Python: ShareableList(name=list.name())
/// let seen = ShareableList::open(list.name())?;
/// assert_eq!(seen.get(1)?, Item::Str("héllo".into()));
/// seen.set(0, Item::Bool(true))?;
/// assert_eq!(list.to_vec()?, [Item::Bool(true), "héllo".into(), Item::None, Item::Float(2.5)]);
/// assert_eq!(list.format()?, "xxxxxxx?8sxxxxxx?xd");
/// # Ok::<(), mproc::Error>(())
/// ```
#[doc(alias = "shared_memory.ShareableList")]
#[derive(Debug)]
pub struct ShareableList {
    shm: SharedMemory,
    layout: Layout,
}

impl ShareableList {
    /// Creates a list of `items` in a new segment that this process owns
    /// (Python's `ShareableList(sequence)`).
    ///
    /// # Errors
    /// `InvalidInput` for a `str` or `bytes` item of 10 MB or more (its
    /// format would not fit CPython's 8 characters); segment creation
    /// errors.
    #[doc(alias = "ShareableList")]
    pub fn new(items: &[Item]) -> Result<ShareableList> {
        let (layout, formats) = Layout::for_items(items)?;
        let size = layout
            .total()
            .ok_or_else(|| invalid_input("list too large".into()))?;
        let shm = SharedMemory::create(size)?;
        Self::init(shm, layout, &formats, items)
    }

    /// Creates a list of `items` in a new segment called `name` (Python's
    /// `ShareableList(sequence, name=name)`).
    ///
    /// # Errors
    /// As [`new`](ShareableList::new); `AlreadyExists` when the name is
    /// taken.
    pub fn create_named(name: &str, items: &[Item]) -> Result<ShareableList> {
        let (layout, formats) = Layout::for_items(items)?;
        let size = layout
            .total()
            .ok_or_else(|| invalid_input("list too large".into()))?;
        let shm = SharedMemory::create_named(name, size)?;
        Self::init(shm, layout, &formats, items)
    }

    /// The segment size a list of `items` needs.
    pub(crate) fn size_for(items: &[Item]) -> Result<usize> {
        Layout::for_items(items)?
            .0
            .total()
            .ok_or_else(|| invalid_input("list too large".into()))
    }

    /// Writes a fresh list of `items` into `shm` (at least
    /// [`size_for`](ShareableList::size_for) bytes).
    pub(crate) fn create_in(shm: SharedMemory, items: &[Item]) -> Result<ShareableList> {
        let (layout, formats) = Layout::for_items(items)?;
        Self::init(shm, layout, &formats, items)
    }

    fn init(
        shm: SharedMemory,
        layout: Layout,
        formats: &[Vec<u8>],
        items: &[Item],
    ) -> Result<ShareableList> {
        let n = items.len();
        let mut header = Vec::with_capacity(layout.data_start());
        header.extend_from_slice(&(n as i64).to_ne_bytes());
        for o in &layout.offsets {
            header.extend_from_slice(&(*o as i64).to_ne_bytes());
        }
        shm.write(0, &header)?;
        let formats_start = layout
            .formats_start()
            .ok_or_else(|| invalid_input("list too large".into()))?;
        let codes_start = layout
            .codes_start()
            .ok_or_else(|| invalid_input("list too large".into()))?;
        for (i, (it, f)) in items.iter().zip(formats).enumerate() {
            let mut fw = [0u8; WORD];
            fw[..f.len()].copy_from_slice(f);
            shm.write(formats_start + i * WORD, &fw)?;
            shm.write(codes_start + i, &it.code().to_ne_bytes())?;
            let at = layout.data_start() + layout.offsets[i];
            match (it.fixed_bytes(), it.payload()) {
                (Some(w), _) => shm.write(at, &w)?,
                (None, Some(p)) => shm.write(at, p)?,
                (None, None) => {}
            }
        }
        Ok(ShareableList { shm, layout })
    }

    /// Attaches to the list in the segment called `name` (Python's
    /// `ShareableList(name=name)`), without owning it.
    ///
    /// # Errors
    /// As [`SharedMemory::open`]; `InvalidData` when the segment does not
    /// hold a well-formed list header.
    pub fn open(name: &str) -> Result<ShareableList> {
        Self::from_shared_memory(SharedMemory::open(name)?)
    }

    /// The list in an attached segment.
    ///
    /// # Errors
    /// `InvalidData` when the segment does not hold a well-formed list
    /// header.
    pub fn from_shared_memory(shm: SharedMemory) -> Result<ShareableList> {
        let layout = Layout::parse(&shm)?;
        Ok(ShareableList { shm, layout })
    }

    /// The segment's name (Python's `shm.name`).
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The segment (Python's `shm`).
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// The segment, to hand its name over
    /// ([`SharedMemory::set_unlink_on_drop`]).
    pub fn shm_mut(&mut self) -> &mut SharedMemory {
        &mut self.shm
    }

    /// Number of items (Python's `len`).
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index` (Python's `sl[index]`).
    ///
    /// # Errors
    /// `InvalidInput` for an index out of range (Python's `IndexError`);
    /// `InvalidData` when the item's bytes are malformed.
    pub fn get(&self, index: usize) -> Result<Item> {
        self.layout.get(&self.shm, index)
    }

    /// Replaces item `index` (Python's `sl[index] = value`).
    ///
    /// # Errors
    /// `InvalidInput` for an index out of range, or a `str`/`bytes` value
    /// longer than the item's slot (Python's `ValueError`).
    pub fn set(&self, index: usize, value: impl Into<Item>) -> Result<()> {
        let value = value.into();
        let l = &self.layout;
        l.check_index(index)?;
        let slot = l.offsets[index + 1] - l.offsets[index];
        let at = l.data_start() + l.offsets[index];
        let (fmt, bytes) = match (value.fixed_bytes(), value.payload()) {
            (Some(w), _) => {
                if slot < WORD {
                    return Err(malformed(format!("slot of item {index} is too small")));
                }
                (value.format()?, w.to_vec())
            }
            (None, Some(p)) => {
                if p.len() > slot {
                    return Err(invalid_input(format!(
                        "{} bytes exceed the {slot} bytes of item {index}'s slot",
                        p.len()
                    )));
                }
                // CPython keeps a `<n>s` format, or makes one of the slot.
                let current = l.format_of(&self.shm, index)?;
                let fmt = if current.last() == Some(&b's') {
                    current
                } else {
                    format!("{slot}s").into_bytes()
                };
                let n: usize = std::str::from_utf8(&fmt[..fmt.len() - 1])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .filter(|n| *n >= p.len() && *n <= slot)
                    .unwrap_or(slot);
                let mut b = p.to_vec();
                b.resize(n, 0);
                (format!("{n}s").into_bytes(), b)
            }
            (None, None) => unreachable!("every item is fixed-size or has a payload"),
        };
        if fmt.len() > WORD {
            return Err(invalid_input(format!("slot of item {index} too large")));
        }
        let mut fw = [0u8; WORD];
        fw[..fmt.len()].copy_from_slice(&fmt);
        let formats = l.formats_start().ok_or_else(|| malformed("format table"))?;
        let codes = l.codes_start().ok_or_else(|| malformed("code table"))?;
        self.shm.write(formats + index * WORD, &fw)?;
        self.shm.write(codes + index, &value.code().to_ne_bytes())?;
        self.shm.write(at, &bytes)
    }

    /// Every item, in order (Python's `list(sl)`).
    ///
    /// # Errors
    /// As [`get`](ShareableList::get).
    pub fn to_vec(&self) -> Result<Vec<Item>> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The `struct` formats of every item, joined (Python's `format`).
    ///
    /// # Errors
    /// `InvalidData` when a format is not text.
    pub fn format(&self) -> Result<String> {
        let mut out = String::new();
        for i in 0..self.len() {
            let f = self.layout.format_of(&self.shm, i)?;
            out.push_str(std::str::from_utf8(&f).map_err(|_| malformed("format not text"))?);
        }
        Ok(out)
    }

    /// How many items equal `value` (Python's `count`).
    ///
    /// # Errors
    /// As [`get`](ShareableList::get).
    pub fn count(&self, value: &Item) -> Result<usize> {
        Ok(self.to_vec()?.iter().filter(|v| *v == value).count())
    }

    /// The first index of `value`, if any (Python's `index`, which raises
    /// `ValueError` where this gives `None`).
    ///
    /// # Errors
    /// As [`get`](ShareableList::get).
    pub fn index(&self, value: &Item) -> Result<Option<usize>> {
        Ok(self.to_vec()?.iter().position(|v| v == value))
    }
}

impl Serialize for ShareableList {
    /// The segment's name, as Python pickles a `ShareableList`.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.shm.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ShareableList {
    /// Attaches by name, without owning.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let shm = SharedMemory::deserialize(d)?;
        ShareableList::from_shared_memory(shm).map_err(serde::de::Error::custom)
    }
}

/// Decodes a list header and every item from `bytes` (a fuzz helper):
/// never panics, whatever the bytes.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn decode_bytes(bytes: &[u8]) -> Result<Vec<Item>> {
    let layout = Layout::parse(bytes)?;
    (0..layout.len()).map(|i| layout.get(bytes, i)).collect()
}

/// CPython's bytes for a fresh list of `items` (a test and fuzz helper).
#[cfg(any(test, feature = "internals"))]
pub(crate) fn encode_bytes(items: &[Item]) -> Result<Vec<u8>> {
    let (layout, formats) = Layout::for_items(items)?;
    let size = layout
        .total()
        .ok_or_else(|| invalid_input("list too large".into()))?;
    let mut out = vec![0u8; size];
    let mut put = |at: usize, b: &[u8]| out[at..at + b.len()].copy_from_slice(b);
    put(0, &(items.len() as i64).to_ne_bytes());
    for (i, o) in layout.offsets.iter().enumerate() {
        put(WORD * (1 + i), &(*o as i64).to_ne_bytes());
    }
    let fs = layout.formats_start().unwrap_or(0);
    let cs = layout.codes_start().unwrap_or(0);
    for (i, (it, f)) in items.iter().zip(&formats).enumerate() {
        put(fs + i * WORD, f);
        put(cs + i, &it.code().to_ne_bytes());
        let at = layout.data_start() + layout.offsets[i];
        match (it.fixed_bytes(), it.payload()) {
            (Some(w), _) => put(at, &w),
            (None, Some(p)) => put(at, p),
            (None, None) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes(sl.shm.buf).hex()` for CPython 3.11's
    /// `ShareableList([7, 2.5, True, None, 'hi', b'\x01'])` on x86-64.
    const CPYTHON_HEX: &str = "0600000000000000000000000000000008000000000000001000000000000000\
        1800000000000000200000000000000028000000000000003000000000000000\
        0700000000000000000000000000044000000000000000010000000000000000\
        6869000000000000010000000000000071000000000000006400000000000000\
        787878787878783f7878787878783f7838730000000000003873000000000000\
        000000030102";

    fn cpython_bytes() -> Vec<u8> {
        (0..CPYTHON_HEX.len() / 2)
            .map(|i| u8::from_str_radix(&CPYTHON_HEX[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn items() -> Vec<Item> {
        vec![
            Item::Int(7),
            Item::Float(2.5),
            Item::Bool(true),
            Item::None,
            "hi".into(),
            Item::Bytes(vec![1]),
        ]
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn layout_matches_cpython() {
        assert_eq!(encode_bytes(&items()).unwrap(), cpython_bytes());
        assert_eq!(decode_bytes(&cpython_bytes()).unwrap(), items());
    }

    #[test]
    fn header_table() {
        let good = encode_bytes(&items()).unwrap();
        let mut cases: Vec<(Vec<u8>, bool)> = vec![
            (Vec::new(), false),
            (vec![0; 7], false),
            (vec![0; 16], true), // an empty list
            (good.clone(), true),
            (good[..good.len() - 1].to_vec(), false),
        ];
        let mut neg = good.clone();
        neg[..8].copy_from_slice(&(-1i64).to_ne_bytes());
        cases.push((neg, false));
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&i64::MAX.to_ne_bytes());
        cases.push((huge, false));
        let mut unsorted = good.clone();
        unsorted[16..24].copy_from_slice(&100i64.to_ne_bytes());
        cases.push((unsorted, false));
        let mut bad_fmt = good.clone();
        let fs = 8 * 8 + 48;
        bad_fmt[fs..fs + 8].copy_from_slice(b"9999999s");
        cases.push((bad_fmt, false));
        let mut bad_code = good.clone();
        let last = bad_code.len() - 1;
        bad_code[last] = 9;
        cases.push((bad_code, false));
        let mut bad_utf8 = good.clone();
        bad_utf8[8 * 8 + 32] = 0xff;
        bad_utf8[last] = 1;
        cases.push((bad_utf8, false));
        for (i, (bytes, ok)) in cases.iter().enumerate() {
            assert_eq!(decode_bytes(bytes).is_ok(), *ok, "case {i}");
        }
    }

    #[test]
    fn set_follows_cpython() {
        let l = ShareableList::new(&items()).unwrap();
        l.set(0, "8 bytes!").unwrap();
        assert_eq!(l.get(0).unwrap(), Item::Str("8 bytes!".into()));
        assert!(l.set(0, "9 bytes!!").is_err());
        l.set(4, Item::Int(-1)).unwrap();
        l.set(5, 1.5).unwrap();
        assert_eq!(l.format().unwrap(), "8sdxxxxxxx?xxxxxx?xqd");
        assert!(l.set(6, Item::None).is_err());
        assert_eq!(l.count(&Item::None).unwrap(), 1);
        assert_eq!(l.index(&Item::Float(1.5)).unwrap(), Some(5));
    }
}
