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

    /// Encodes a function address, checking first that it can be found in
    /// another process of this executable: it must lie in the main
    /// executable, as this crate's own anchor must (not in a `dlopen`ed or
    /// dynamically linked library, whose address a process started from
    /// `/proc/self/exe` does not share).
    ///
    /// ```
    /// fn target() {}
    /// assert!(forkserver::FnRef::checked(target as fn() as usize).is_ok());
    /// assert!(forkserver::FnRef::checked(libc_free_address()).is_err());
    /// # fn libc_free_address() -> usize { unsafe extern "C" { fn free(p: *mut u8); } free as unsafe extern "C" fn(*mut u8) as usize }
    /// ```
    ///
    /// # Errors
    /// [`NotInExecutable`] otherwise.
    pub fn checked(addr: usize) -> Result<FnRef, NotInExecutable> {
        static ANCHOR_IN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let anchor_in =
            *ANCHOR_IN.get_or_init(|| crate::sys::in_main_executable(anchor as *const () as usize));
        if anchor_in && crate::sys::in_main_executable(addr) {
            Ok(FnRef::from_addr(addr))
        } else {
            Err(NotInExecutable { addr })
        }
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

/// A function that does not lie in the main executable, so another process
/// of this executable cannot find it ([`FnRef::checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the function at {addr:#x} is not in the main executable (it is in a shared library, \
     `dlopen`ed or linked as a dylib): a process started from /proc/self/exe cannot find it; \
     use a fn of the program itself, or the fork start method"
)]
pub struct NotInExecutable {
    /// The function's address in this process.
    pub addr: usize,
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
