//! `Value`, `Array`, `RawValue` and `RawArray` in shared memory.
