//! The shared `Value`/`Array` types and their guards: the typed views of a
//! segment. Locked types put a robust mutex cell at offset 0 and the data
//! after it; raw types hold only data and copy it byte by byte with relaxed
//! atomics (racy by design, as in Python, but never undefined behaviour).
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::sys::Segment;
use crate::sync::robust::{CELL, RawMutex, Wait};
use crate::sync::{AcquireError, Recoverable, de_segment, new_segment, outcome, ser_segment};

/// Offset of the data after a lock cell.
const fn locked_offset<T>() -> usize {
    let a = align_of::<T>();
    CELL.div_ceil(a) * a
}

fn bytes_for<T>(offset: usize, len: usize) -> crate::Result<usize> {
    size_of::<T>()
        .checked_mul(len)
        .and_then(|n| n.checked_add(offset))
        .ok_or(crate::Error::Unsupported("shared array too large"))
}

fn data_ptr<T>(seg: &Segment, offset: usize, len: usize) -> *mut T {
    seg.ptr_at(offset, size_of::<T>() * len, align_of::<T>())
        .cast::<T>()
}

/// Reads a `T` byte by byte with relaxed atomic loads.
fn load_racy<T: Pod>(p: *const T) -> T {
    let mut out = T::zeroed();
    let dst = bytemuck::bytes_of_mut(&mut out);
    for (i, b) in dst.iter_mut().enumerate() {
        // SAFETY: `p` points to a live, in-bounds `T` in a shared mapping
        // (checked by `Segment::ptr_at`); AtomicU8 has alignment 1.
        *b = unsafe { &*p.cast::<AtomicU8>().add(i) }.load(Ordering::Relaxed);
    }
    out
}

/// Writes a `T` byte by byte with relaxed atomic stores.
fn store_racy<T: Pod>(p: *mut T, v: T) {
    for (i, b) in bytemuck::bytes_of(&v).iter().enumerate() {
        // SAFETY: as in `load_racy`.
        unsafe { &*p.cast::<AtomicU8>().add(i) }.store(*b, Ordering::Relaxed);
    }
}

/// A `T` in shared memory with its own lock
/// (Python's `multiprocessing.Value`).
///
/// [`get_lock`](Value::get_lock) takes the lock and gives a guard that
/// derefs to `&mut T`, so read-modify-write is atomic across processes. The
/// lock is robust, like [`Lock`](crate::Lock).
///
/// # Examples
/// ```
/// # mproc::bootstrap!();
/// # fn main() -> mproc::Result<()> {
/// use std::time::Duration;
/// fn add(v: mproc::Value<u64>) {
///     for _ in 0..1000 {
///         *v.get_lock().unwrap() += 1;
///     }
/// }
/// let v = mproc::Value::new(0u64)?;
/// let ctx = mproc::get_context("fork")?;
/// let mut ps = Vec::new();
/// for _ in 0..2 {
///     ps.push(ctx.process(add, v.clone()).start()?);
/// }
/// for p in &mut ps {
///     p.join_timeout(Duration::from_secs(20))?;
/// }
/// assert_eq!(v.get(), 2000);
/// # Ok(()) }
/// ```
pub struct Value<T> {
    raw: RawMutex,
    _t: PhantomData<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            raw: self.raw.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Value<T> {
    /// A new shared value (`Value(typecode, value)`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn new(value: T) -> crate::Result<Value<T>> {
        let seg = new_segment(bytes_for::<T>(locked_offset::<T>(), 1)?)?;
        let v = Value {
            raw: RawMutex::new(seg, 0),
            _t: PhantomData,
        };
        store_racy(v.ptr(), value);
        Ok(v)
    }

    fn ptr(&self) -> *mut T {
        data_ptr(self.raw.segment(), locked_offset::<T>(), 1)
    }

    fn guard(&self) -> ValueGuard<'_, T> {
        ValueGuard {
            value: self,
            ptr: self.ptr(),
        }
    }

    /// Takes the value's lock (`with v.get_lock():`); the guard derefs to
    /// the value.
    ///
    /// # Errors
    /// [`AcquireError::OwnerDied`] (guard inside) when a holder died.
    #[doc(alias = "lock")]
    #[inline]
    pub fn get_lock(&self) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::Until(None)), || self.guard())
    }

    /// Takes the lock if free (`get_lock().acquire(False)`).
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`]; `OwnerDied`.
    pub fn try_get_lock(&self) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::Try), || self.guard())
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied`.
    pub fn get_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::timeout(Some(timeout))), || {
            self.guard()
        })
    }

    /// Reads the value under the lock (`v.value`). A dead holder's mark is
    /// left for [`get_lock`](Value::get_lock) users to see.
    pub fn get(&self) -> T {
        let g = self.get_lock().unwrap_or_else(|e| {
            e.into_guard()
                .expect("a blocking acquire gives a guard or OwnerDied")
        });
        *g
    }

    /// Writes the value under the lock (`v.value = x`).
    pub fn set(&self, value: T) {
        let mut g = self.get_lock().unwrap_or_else(|e| {
            e.into_guard()
                .expect("a blocking acquire gives a guard or OwnerDied")
        });
        *g = value;
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("value", &load_racy(self.ptr()))
            .finish()
    }
}

impl<T> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_segment(self.raw.segment(), s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value<T>, D::Error> {
        use serde::de::Error as _;
        let need = bytes_for::<T>(locked_offset::<T>(), 1).map_err(D::Error::custom)?;
        Ok(Value {
            raw: RawMutex::new(de_segment(d, need)?, 0),
            _t: PhantomData,
        })
    }
}

/// The held lock of a [`Value`]; derefs to the value, releases on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T> {
    value: &'a Value<T>,
    ptr: *mut T,
}

impl<T> Deref for ValueGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: in bounds and aligned (`Segment::ptr_at`); the lock is
        // held, so no other guard reads or writes it; any bits are a valid
        // `T` (Pod); the mapping outlives the borrow of the Value.
        unsafe { &*self.ptr }
    }
}

impl<T> DerefMut for ValueGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { &mut *self.ptr }
    }
}

impl<T> Drop for ValueGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.value.raw.release();
    }
}

impl<T> crate::sync::error_sealed::Sealed for ValueGuard<'_, T> {}
impl<T> Recoverable for ValueGuard<'_, T> {
    fn mark_consistent(&mut self) {
        self.value.raw.mark_consistent();
    }
}

impl<T: fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A `T` in shared memory without a lock (Python's
/// `multiprocessing.RawValue`). Reads and writes are not synchronized:
/// concurrent updates race (each byte is copied atomically, so this is
/// never undefined behaviour, but a read may see a torn value).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let v = mproc::RawValue::new(1.5f64)?;
/// v.set(v.get() * 2.0);
/// assert_eq!(v.get(), 3.0);
/// # Ok(()) }
/// ```
pub struct RawValue<T> {
    seg: Arc<Segment>,
    _t: PhantomData<T>,
}

impl<T> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue {
            seg: self.seg.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> RawValue<T> {
    /// A new unsynchronized shared value (`RawValue(typecode, value)`).
    ///
    /// # Errors
    /// When the shared page cannot be created.
    pub fn new(value: T) -> crate::Result<RawValue<T>> {
        let v = RawValue {
            seg: new_segment(size_of::<T>())?,
            _t: PhantomData,
        };
        v.set(value);
        Ok(v)
    }

    /// Reads the value (`v.value`).
    pub fn get(&self) -> T {
        load_racy(data_ptr::<T>(&self.seg, 0, 1))
    }

    /// Writes the value (`v.value = x`).
    pub fn set(&self, value: T) {
        store_racy(data_ptr::<T>(&self.seg, 0, 1), value);
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue")
            .field("value", &self.get())
            .finish()
    }
}

impl<T> Serialize for RawValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_segment(&self.seg, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawValue<T>, D::Error> {
        Ok(RawValue {
            seg: de_segment(d, size_of::<T>())?,
            _t: PhantomData,
        })
    }
}

/// A fixed-length array of `T` in shared memory with its own lock
/// (Python's `multiprocessing.Array`).
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let a = mproc::Array::from_slice(&[1u32, 2, 3])?;
/// a.get_lock().unwrap()[1] = 20;
/// assert_eq!(a.to_vec(), [1, 20, 3]);
/// # Ok(()) }
/// ```
pub struct Array<T> {
    raw: RawMutex,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            raw: self.raw.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Array<T> {
    /// `len` zeroed elements (`Array(typecode, len)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn zeroed(len: usize) -> crate::Result<Array<T>> {
        let seg = new_segment(bytes_for::<T>(locked_offset::<T>(), len)?)?;
        Ok(Array {
            raw: RawMutex::new(seg, 0),
            len,
            _t: PhantomData,
        })
    }

    /// A copy of `items` (`Array(typecode, sequence)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn from_slice(items: &[T]) -> crate::Result<Array<T>> {
        let a = Array::zeroed(items.len())?;
        a.get_lock()
            .unwrap_or_else(|e| e.into_guard().expect("a fresh lock"))
            .copy_from_slice(items);
        Ok(a)
    }

    /// Number of elements (`len(a)`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn guard(&self) -> ArrayGuard<'_, T> {
        ArrayGuard {
            array: self,
            ptr: data_ptr(self.raw.segment(), locked_offset::<T>(), self.len),
        }
    }

    /// Takes the array's lock; the guard derefs to `&mut [T]`
    /// (`with a.get_lock():`).
    ///
    /// # Errors
    /// [`AcquireError::OwnerDied`] (guard inside) when a holder died.
    #[doc(alias = "lock")]
    pub fn get_lock(&self) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::Until(None)), || self.guard())
    }

    /// Takes the lock if free.
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`]; `OwnerDied`.
    pub fn try_get_lock(&self) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::Try), || self.guard())
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied`.
    pub fn get_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.raw.acquire(Wait::timeout(Some(timeout))), || {
            self.guard()
        })
    }

    /// A copy of the elements, read under the lock (`a[:]`).
    pub fn to_vec(&self) -> Vec<T> {
        self.get_lock()
            .unwrap_or_else(|e| e.into_guard().expect("blocking acquire"))
            .to_vec()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array").field("len", &self.len).finish()
    }
}

impl<T> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Seg<'a>(&'a Segment);
        impl Serialize for Seg<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_segment(self.0, s)
            }
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Seg(self.raw.segment()))?;
        t.serialize_element(&(self.len as u64))?;
        t.end()
    }
}

struct AnySeg(Arc<Segment>);
impl<'de> Deserialize<'de> for AnySeg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnySeg, D::Error> {
        de_segment(d, 0).map(AnySeg)
    }
}

fn check_len<T, E: serde::de::Error>(seg: &Segment, offset: usize, len: u64) -> Result<usize, E> {
    let len = usize::try_from(len).map_err(E::custom)?;
    let need = bytes_for::<T>(offset, len).map_err(E::custom)?;
    if need > seg.len() {
        return Err(E::custom(format!(
            "shared array of {len} elements needs {need} bytes, segment has {}",
            seg.len()
        )));
    }
    Ok(len)
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Array<T>, D::Error> {
        let (AnySeg(seg), len) = <(AnySeg, u64)>::deserialize(d)?;
        let len = check_len::<T, D::Error>(&seg, locked_offset::<T>(), len)?;
        Ok(Array {
            raw: RawMutex::new(seg, 0),
            len,
            _t: PhantomData,
        })
    }
}

/// The held lock of an [`Array`]; derefs to the elements.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    array: &'a Array<T>,
    ptr: *mut T,
}

impl<T> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` elements in bounds and aligned (`Segment::ptr_at`);
        // the lock is held; any bits are valid (Pod); the mapping outlives
        // the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr, self.array.len) }
    }
}

impl<T> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.array.len) }
    }
}

impl<T> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        self.array.raw.release();
    }
}

impl<T> crate::sync::error_sealed::Sealed for ArrayGuard<'_, T> {}
impl<T> Recoverable for ArrayGuard<'_, T> {
    fn mark_consistent(&mut self) {
        self.array.raw.mark_consistent();
    }
}

impl<T: fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A fixed-length array of `T` in shared memory without a lock (Python's
/// `multiprocessing.RawArray`). Element reads and writes race as for
/// [`RawValue`].
///
/// # Examples
/// ```
/// # fn main() -> mproc::Result<()> {
/// let a = mproc::RawArray::<u8>::zeroed(4)?;
/// a.set(2, 7);
/// assert_eq!(a.get(2), Some(7));
/// assert_eq!(a.get(4), None);
/// assert_eq!(a.to_vec(), [0, 0, 7, 0]);
/// # Ok(()) }
/// ```
pub struct RawArray<T> {
    seg: Arc<Segment>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray {
            seg: self.seg.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> RawArray<T> {
    /// `len` zeroed elements (`RawArray(typecode, len)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn zeroed(len: usize) -> crate::Result<RawArray<T>> {
        Ok(RawArray {
            seg: new_segment(bytes_for::<T>(0, len)?)?,
            len,
            _t: PhantomData,
        })
    }

    /// A copy of `items` (`RawArray(typecode, sequence)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn from_slice(items: &[T]) -> crate::Result<RawArray<T>> {
        let a = RawArray::zeroed(items.len())?;
        for (i, v) in items.iter().enumerate() {
            a.set(i, *v);
        }
        Ok(a)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i` (`a[i]`), `None` out of bounds.
    pub fn get(&self, i: usize) -> Option<T> {
        (i < self.len).then(|| load_racy(data_ptr::<T>(&self.seg, 0, self.len).wrapping_add(i)))
    }

    /// Writes element `i` (`a[i] = v`).
    ///
    /// # Panics
    /// When `i` is out of bounds (Python's `IndexError`).
    pub fn set(&self, i: usize, value: T) {
        assert!(
            i < self.len,
            "RawArray index {i} out of range (len {})",
            self.len
        );
        store_racy(data_ptr::<T>(&self.seg, 0, self.len).wrapping_add(i), value);
    }

    /// A copy of every element (`a[:]`).
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len).filter_map(|i| self.get(i)).collect()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray").field("len", &self.len).finish()
    }
}

impl<T> Serialize for RawArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Seg<'a>(&'a Segment);
        impl Serialize for Seg<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                ser_segment(self.0, s)
            }
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Seg(&self.seg))?;
        t.serialize_element(&(self.len as u64))?;
        t.end()
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawArray<T>, D::Error> {
        let (AnySeg(seg), len) = <(AnySeg, u64)>::deserialize(d)?;
        let len = check_len::<T, D::Error>(&seg, 0, len)?;
        Ok(RawArray {
            seg,
            len,
            _t: PhantomData,
        })
    }
}
