//! The shared `Value`/`Array` types and their guards: the typed views of a
//! segment. Locked types put a robust mutex cell at offset 0 and the data
//! after it, or, built on a caller's [`Lock`], keep only the data and use
//! that lock's cell (both segments then travel together); raw types hold only data and copy it byte by byte with relaxed
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
use crate::sync::{
    AcquireError, Lock, LockGuard, Recoverable, SegmentFd, SegmentOf, de_segment, new_segment,
    outcome, ser_segment,
};

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

/// Where a locked value's lock and data live: the lock's cell at offset 0
/// of the data's own segment, or a caller's [`Lock`] in a segment of its
/// own, the data then at offset 0 of the data segment.
#[derive(Clone)]
struct Locked {
    raw: RawMutex,
    data: Arc<Segment>,
    offset: usize,
}

impl Locked {
    /// A fresh segment for `len` `T`s under a lock cell of its own, or
    /// under `lock`.
    fn new<T>(len: usize, lock: Option<&Lock>) -> crate::Result<Locked> {
        Ok(match lock {
            None => {
                let seg = new_segment(bytes_for::<T>(locked_offset::<T>(), len)?)?;
                Locked {
                    raw: RawMutex::new(seg.clone(), 0),
                    data: seg,
                    offset: locked_offset::<T>(),
                }
            }
            Some(lock) => Locked {
                raw: lock.raw().clone(),
                // At least one byte: a memfd cannot map zero.
                data: new_segment(bytes_for::<T>(0, len)?.max(1))?,
                offset: 0,
            },
        })
    }

    fn own_lock(&self) -> bool {
        Arc::ptr_eq(self.raw.segment(), &self.data)
    }

    fn lock(&self) -> Lock {
        Lock::from_raw(self.raw.clone())
    }

    /// Whether `guard` holds this lock.
    fn held_by(&self, guard: &LockGuard<'_>) -> bool {
        guard.lock().is_same(&self.lock()) && self.raw.is_owned_by_me()
    }

    /// The data segment and, for a caller's lock, the lock's segment.
    fn serialize<S: Serializer>(&self, extra: Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let lock = (!self.own_lock()).then(|| SegmentFd(self.raw.segment()));
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&SegmentFd(&self.data))?;
        t.serialize_element(&lock)?;
        t.serialize_element(&extra)?;
        t.end()
    }

    /// Reverses `serialize` for `len` `T`s (`len` from the encoding when
    /// `None`), checking every size before anything is mapped as a `T`.
    fn deserialize<'de, T, D: Deserializer<'de>>(
        d: D,
        len: Option<u64>,
    ) -> Result<(Locked, usize), D::Error> {
        use serde::de::Error as _;
        let (SegmentOf(data), lock, extra) =
            <(SegmentOf<0>, Option<SegmentOf<CELL>>, Option<u64>)>::deserialize(d)?;
        let len = len
            .or(extra)
            .ok_or_else(|| D::Error::custom("array length missing"))?;
        let (raw, offset) = match lock {
            None => {
                if data.len() < CELL {
                    return Err(D::Error::custom("shared value segment without its lock"));
                }
                (RawMutex::new(data.clone(), 0), locked_offset::<T>())
            }
            Some(SegmentOf(seg)) => (RawMutex::new(seg, 0), 0),
        };
        let len = check_len::<T, D::Error>(&data, offset, len)?;
        Ok((Locked { raw, data, offset }, len))
    }
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
    l: Locked,
    _t: PhantomData<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            l: self.l.clone(),
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
        Value::build(value, None)
    }

    /// A new shared value guarded by `lock` instead of a lock of its own
    /// (`Value(typecode, value, lock=lock)`): several values can share one
    /// lock, and be updated together under one
    /// [`acquire`](Lock::acquire) with [`get_mut`](Value::get_mut).
    ///
    /// `lock` is not re-entrant: while this thread holds it,
    /// [`get_lock`](Value::get_lock), [`get`](Value::get) and
    /// [`set`](Value::set) would wait for it forever; use
    /// [`get_mut`](Value::get_mut) with the guard instead.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let lock = mproc::Lock::new()?;
    /// let debit = mproc::Value::with_lock(100i64, lock.clone())?;
    /// let credit = mproc::Value::with_lock(0i64, lock.clone())?;
    /// {
    ///     // Both change under one hold of the shared lock.
    ///     let mut g = lock.acquire().unwrap();
    ///     *debit.get_mut(&mut g).unwrap() -= 30;
    ///     *credit.get_mut(&mut g).unwrap() += 30;
    /// }
    /// assert_eq!((debit.get(), credit.get()), (70, 30));
    /// assert!(debit.shared_lock().is_same(&lock));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the shared page cannot be created.
    #[doc(alias = "Value")]
    pub fn with_lock(value: T, lock: Lock) -> crate::Result<Value<T>> {
        Value::build(value, Some(&lock))
    }

    fn build(value: T, lock: Option<&Lock>) -> crate::Result<Value<T>> {
        let v = Value {
            l: Locked::new::<T>(1, lock)?,
            _t: PhantomData,
        };
        store_racy(v.ptr(), value);
        Ok(v)
    }

    fn ptr(&self) -> *mut T {
        data_ptr(&self.l.data, self.l.offset, 1)
    }

    /// The lock that guards the value (Python's `get_lock()`, which
    /// returns the lock object): the one given to
    /// [`with_lock`](Value::with_lock), or the value's own.
    pub fn shared_lock(&self) -> Lock {
        self.l.lock()
    }

    /// The value, through a guard of its lock that this thread holds
    /// already (the value's part of a `with lock:` block that updates
    /// several values sharing the lock).
    ///
    /// `None` when `guard` holds another lock.
    pub fn get_mut<'a>(&'a self, guard: &'a mut LockGuard<'_>) -> Option<&'a mut T> {
        if !self.l.held_by(guard) {
            return None;
        }
        // SAFETY: in bounds and aligned (`Segment::ptr_at`); this thread
        // holds the value's lock through `guard`, borrowed mutably for as
        // long as the reference lives, so no other reference to the value
        // is made meanwhile; any bits are a valid `T` (Pod).
        Some(unsafe { &mut *self.ptr() })
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
        outcome(self.l.raw.acquire(Wait::Until(None)), || self.guard())
    }

    /// Takes the lock if free (`get_lock().acquire(False)`).
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`]; `OwnerDied`.
    pub fn try_get_lock(&self) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        outcome(self.l.raw.acquire(Wait::Try), || self.guard())
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied`.
    pub fn get_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        outcome(self.l.raw.acquire(Wait::timeout(Some(timeout))), || {
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
        self.l.serialize(None, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value<T>, D::Error> {
        let (l, _) = Locked::deserialize::<T, D>(d, Some(1))?;
        Ok(Value { l, _t: PhantomData })
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
        self.value.l.raw.release();
    }
}

impl<T> crate::sync::error_sealed::Sealed for ValueGuard<'_, T> {}
impl<T> Recoverable for ValueGuard<'_, T> {
    fn mark_consistent(&mut self) {
        self.value.l.raw.mark_consistent();
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
    l: Locked,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            l: self.l.clone(),
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
        Array::build(len, None)
    }

    /// A copy of `items` (`Array(typecode, sequence)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn from_slice(items: &[T]) -> crate::Result<Array<T>> {
        let a = Array::zeroed(items.len())?;
        a.fill_from(items);
        Ok(a)
    }

    /// `len` zeroed elements guarded by `lock` instead of a lock of their
    /// own (`Array(typecode, len, lock=lock)`); see
    /// [`Value::with_lock`] for what sharing a lock allows and forbids.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let lock = mproc::Lock::new()?;
    /// let a = mproc::Array::<u32>::zeroed_with_lock(3, lock.clone())?;
    /// let n = mproc::Value::with_lock(0u32, lock.clone())?;
    /// {
    ///     let mut g = lock.acquire().unwrap();
    ///     a.get_mut(&mut g).unwrap()[2] = 7;
    ///     *n.get_mut(&mut g).unwrap() += 1;
    /// }
    /// assert_eq!(a.to_vec(), [0, 0, 7]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    #[doc(alias = "Array")]
    pub fn zeroed_with_lock(len: usize, lock: Lock) -> crate::Result<Array<T>> {
        Array::build(len, Some(&lock))
    }

    /// A copy of `items` guarded by `lock` (`Array(typecode, sequence,
    /// lock=lock)`).
    ///
    /// # Errors
    /// When the shared memory cannot be created.
    pub fn from_slice_with_lock(items: &[T], lock: Lock) -> crate::Result<Array<T>> {
        let a = Array::zeroed_with_lock(items.len(), lock)?;
        a.fill_from(items);
        Ok(a)
    }

    fn build(len: usize, lock: Option<&Lock>) -> crate::Result<Array<T>> {
        Ok(Array {
            l: Locked::new::<T>(len, lock)?,
            len,
            _t: PhantomData,
        })
    }

    fn fill_from(&self, items: &[T]) {
        self.get_lock()
            .unwrap_or_else(|e| e.into_guard().expect("a blocking acquire"))
            .copy_from_slice(items);
    }

    fn ptr(&self) -> *mut T {
        data_ptr(&self.l.data, self.l.offset, self.len)
    }

    /// The lock that guards the elements (Python's `get_lock()`); see
    /// [`Value::shared_lock`].
    pub fn shared_lock(&self) -> Lock {
        self.l.lock()
    }

    /// The elements, through a guard of their lock that this thread holds
    /// already; `None` when `guard` holds another lock. See
    /// [`Value::get_mut`].
    pub fn get_mut<'a>(&'a self, guard: &'a mut LockGuard<'_>) -> Option<&'a mut [T]> {
        if !self.l.held_by(guard) {
            return None;
        }
        // SAFETY: `len` elements in bounds and aligned (`Segment::ptr_at`);
        // this thread holds the lock through `guard`, borrowed mutably for
        // as long as the slice lives; any bits are valid (Pod).
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) })
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
            ptr: self.ptr(),
        }
    }

    /// Takes the array's lock; the guard derefs to `&mut [T]`
    /// (`with a.get_lock():`).
    ///
    /// # Errors
    /// [`AcquireError::OwnerDied`] (guard inside) when a holder died.
    #[doc(alias = "lock")]
    pub fn get_lock(&self) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.l.raw.acquire(Wait::Until(None)), || self.guard())
    }

    /// Takes the lock if free.
    ///
    /// # Errors
    /// [`AcquireError::WouldBlock`]; `OwnerDied`.
    pub fn try_get_lock(&self) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.l.raw.acquire(Wait::Try), || self.guard())
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`AcquireError::Timeout`]; `OwnerDied`.
    pub fn get_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ArrayGuard<'_, T>, AcquireError<ArrayGuard<'_, T>>> {
        outcome(self.l.raw.acquire(Wait::timeout(Some(timeout))), || {
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
        self.l.serialize(Some(self.len as u64), s)
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
        let (l, len) = Locked::deserialize::<T, D>(d, None)?;
        Ok(Array {
            l,
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
        self.array.l.raw.release();
    }
}

impl<T> crate::sync::error_sealed::Sealed for ArrayGuard<'_, T> {}
impl<T> Recoverable for ArrayGuard<'_, T> {
    fn mark_consistent(&mut self) {
        self.array.l.raw.mark_consistent();
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
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&SegmentFd(&self.seg))?;
        t.serialize_element(&(self.len as u64))?;
        t.end()
    }
}

impl<'de, T: Pod> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawArray<T>, D::Error> {
        let (SegmentOf(seg), len) = <(SegmentOf<0>, u64)>::deserialize(d)?;
        let len = check_len::<T, D::Error>(&seg, 0, len)?;
        Ok(RawArray {
            seg,
            len,
            _t: PhantomData,
        })
    }
}
