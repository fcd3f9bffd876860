//! Function pointers that stay valid in another process of the same binary.
//!
//! A process started from `/proc/self/exe` (a spawn child, the fork server and
//! its children) maps the same executable, but ASLR places it at another
//! address. The distance between two functions of the same image does not
//! change, so a function travels as its offset from an anchor function of
//! this crate and is rebuilt on the other side by adding that offset to the
//! local anchor.
//!
//! This is only sound between processes running the very same executable
//! (checked by the handshake's build identity) and only for functions of the
//! main image (not of a `dlopen`ed library).

#![allow(unsafe_code)]

use serde::{Deserialize, Serialize};

#[inline(never)]
fn anchor() {
    // Never called; its address is the origin of every offset.
    std::hint::black_box(());
}

/// A `fn` item encoded as an offset from an anchor in this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FnRef(i64);

impl FnRef {
    /// Encodes a function address (`f as usize`).
    pub fn from_addr(addr: usize) -> FnRef {
        FnRef((addr as i64).wrapping_sub(anchor as *const () as usize as i64))
    }

    /// Encodes a `fn()`.
    pub fn new(f: fn()) -> FnRef {
        FnRef::from_addr(f as *const () as usize)
    }

    /// The address this offset denotes in the current process.
    pub fn addr(self) -> usize {
        (anchor as *const () as usize as i64).wrapping_add(self.0) as usize
    }

    /// Rebuilds the `fn()` this offset denotes.
    ///
    /// # Safety
    /// `self` must come from [`FnRef::new`] in a process running this same
    /// executable image; any other value is an arbitrary code address.
    pub unsafe fn resolve(self) -> fn() {
        // SAFETY: per the contract, the address is that of a `fn()` item of
        // this image, relocated by the same ASLR slide as the anchor.
        unsafe { std::mem::transmute::<usize, fn()>(self.addr()) }
    }

    /// The raw offset, for textual transport (environment variables).
    pub fn offset(self) -> i64 {
        self.0
    }

    /// Rebuilds from [`FnRef::offset`].
    pub fn from_offset(offset: i64) -> FnRef {
        FnRef(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() {}

    #[test]
    fn round_trip() {
        let r = FnRef::new(target);
        assert_eq!(r.addr(), target as *const () as usize);
    }
}
