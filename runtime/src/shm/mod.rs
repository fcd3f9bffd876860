//! `Value`, `Array`, `RawValue` and `RawArray` in shared memory.
//!
//! Everything shared lives in a [`memfd`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
//! mapped with `MAP_SHARED`: nothing is named in `/dev/shm`, so nothing is
//! left behind when a process is killed, and no resource-tracker process is
//! needed (CPython's gh-82300 warnings cannot happen). The memfd is sealed
//! against shrinking, so a mapping can never fault. Values travel to
//! children as process arguments or through queues: the fd goes out of band
//! (see [`crate::fd`]) and the receiver maps the same pages.
//!
//! Element types are [`bytemuck::Pod`]: any bit pattern is a valid value,
//! so bytes written by another process can never make an invalid `T`.

pub(crate) mod sys;
mod value;

pub use value::{Array, ArrayGuard, RawArray, RawValue, Value, ValueGuard};
