//! Named shared memory that unrelated processes attach to by name
//! (Python's `multiprocessing.shared_memory`): [`SharedMemory`],
//! [`ShareableList`] and [`SharedMemoryManager`].
//!
//! A segment is a POSIX shared memory object (`shm_open`, a file under
//! `/dev/shm`), named and laid out as CPython names and lays them out, so a
//! Python process and a Rust process share one segment: create it on
//! either side, attach by name on the other. For memory shared only with
//! this program's own children, prefer [`Value`](crate::Value) and
//! [`Array`](crate::Array): their memfds have no name and cannot leak.
//!
//! What is hard is that a name outlives the processes using it. A memfd
//! vanishes with its last user; a named segment stays in `/dev/shm` until
//! someone unlinks it, crash or no crash. So ownership here is explicit:
//!
//! - The process that **creates** a segment owns its name and unlinks it
//!   when the `SharedMemory` is dropped, or at `exit()` if it was leaked
//!   (Rust's RAII, as a temporary file; CPython instead warns from a
//!   resource-tracker process and unlinks at exit, even segments the
//!   process only attached to). [`SharedMemory::set_unlink_on_drop`] hands
//!   the name over: `false` to leave it for others, `true` to take charge
//!   of one opened by name.
//! - A process that **opens** a segment by name never unlinks it, unless
//!   told to.
//! - A [`SharedMemoryManager`] owns the segments it hands out and unlinks
//!   them all at [`shutdown`](SharedMemoryManager::shutdown) — and when
//!   the process that started it dies, however it dies (even `SIGKILL`):
//!   it is a child process that watches its parent. This is the way to
//!   share named memory with no leak after a crash.
//!
//! A process killed while it owns segments itself leaves them behind, as
//! a killed process leaves its temporary files; use a manager when that
//! matters.

mod list;
mod manager;
pub(crate) mod sys;

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
pub use list::{Item, ShareableList};
#[cfg(feature = "internals")]
pub(crate) use list::{decode_bytes, encode_bytes};
pub use manager::SharedMemoryManager;

/// Prefix of automatic names, as CPython's (`psm_` and 8 hex digits).
const AUTO_PREFIX: &str = "psm_";
/// Longest name (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Names this process owns and has not unlinked yet, with the owner's pid
/// (a forked child inherits the list but owns nothing in it).
static OWNED: Mutex<Vec<(u32, CString)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

extern "C" fn unlink_leaked() {
    // Another thread may hold the lock at exit: then leave the names.
    let Ok(mut owned) = OWNED.try_lock() else {
        return;
    };
    let me = std::process::id();
    for (pid, name) in owned.drain(..) {
        if pid == me {
            let _ = sys::shm_unlink(&name);
        }
    }
}

fn register_owned(name: &CString) {
    AT_EXIT.call_once(|| {
        if let Err(e) = sys::at_exit(unlink_leaked) {
            tracing::warn!(error = %e, "leaked shared memory will not be unlinked at exit");
        }
    });
    OWNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((std::process::id(), name.clone()));
}

fn unregister_owned(name: &CString) {
    let me = std::process::id();
    OWNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|(pid, n)| !(*pid == me && n == name));
}

/// The kernel name (`/name`) of a segment called `name`, which may start
/// with `/` (CPython prepends one; so does glibc's `shm_open`).
fn kernel_name(name: &str) -> Result<(String, CString)> {
    let bare = name.trim_start_matches('/');
    let bad = |why: &str| {
        Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid shared memory name {name:?}: {why}"),
        ))
    };
    if bare.is_empty() || bare == "." || bare == ".." {
        return Err(bad("empty"));
    }
    if bare.contains('/') || bare.contains('\0') {
        return Err(bad("it contains '/' or NUL"));
    }
    if bare.len() > NAME_MAX - 1 {
        return Err(bad("too long"));
    }
    let c = CString::new(format!("/{bare}")).map_err(|_| bad("it contains NUL"))?;
    Ok((bare.to_string(), c))
}

/// A named block of shared memory (Python's
/// `multiprocessing.shared_memory.SharedMemory`).
///
/// [`create`](SharedMemory::create) makes a new segment under a fresh
/// CPython-style name (`psm_` and 8 hex digits);
/// [`open`](SharedMemory::open) attaches to an existing one, made by this
/// crate or by Python's `SharedMemory(create=True)`. The creator owns the
/// name and unlinks it on drop (see the [module docs](self) for why and
/// how to hand it over); every process keeps its mapping until it drops
/// its handle, unlinked or not.
///
/// Bytes are copied in and out ([`read`](SharedMemory::read),
/// [`write`](SharedMemory::write)): other processes write the same memory
/// at any time, so no Rust reference into it is handed out. Synchronise
/// with a lock or a protocol of your own, as in Python.
///
/// Sending a `SharedMemory` to a child process (as an argument or through
/// a queue) sends its name, as Python pickles it; the child attaches
/// without owning it.
///
/// # Examples
/// ```
/// use mproc::shared_memory::SharedMemory;
///
/// let shm = SharedMemory::create(4096)?;
/// assert!(shm.name().starts_with("psm_"));
/// shm.write(0, b"hello")?;
///
/// // Another process (Rust, or Python's `SharedMemory(name)`) attaches:
/// let other = SharedMemory::open(shm.name())?;
/// assert_eq!(other.size(), 4096);
/// assert_eq!(other.read_vec(0, 5)?, b"hello");
///
/// let name = shm.name().to_string();
/// drop(other);
/// drop(shm); // the creator unlinks the name
/// assert!(SharedMemory::open(&name).is_err());
/// # Ok::<(), mproc::Error>(())
/// ```
#[doc(alias = "shared_memory.SharedMemory")]
pub struct SharedMemory {
    name: String,
    kname: CString,
    map: sys::Mapping,
    fd: OwnedFd,
    /// Unlink the name on drop (only in the process `owner_pid`).
    owns: AtomicBool,
    owner_pid: u32,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("size", &self.size())
            .field("unlink_on_drop", &self.unlinks_on_drop())
            .finish()
    }
}

impl SharedMemory {
    /// Creates a segment of `size` bytes, zero-filled, under a fresh name
    /// (Python's `SharedMemory(create=True, size=size)`). This process owns
    /// the name.
    ///
    /// # Errors
    /// `InvalidInput` for a size of zero (as Python's `ValueError`); OS
    /// errors (`/dev/shm` full, out of fds).
    #[doc(alias = "SharedMemory")]
    pub fn create(size: usize) -> Result<SharedMemory> {
        loop {
            let hex: String = crate::sys::random_bytes(4)?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            match Self::create_named(&format!("{AUTO_PREFIX}{hex}"), size) {
                Err(e) if e.io_kind() == Some(io::ErrorKind::AlreadyExists) => continue,
                r => return r,
            }
        }
    }

    /// Creates a segment called `name` (Python's `SharedMemory(name,
    /// create=True, size=size)`); fails if the name exists.
    ///
    /// # Errors
    /// `AlreadyExists` when the name is taken; `InvalidInput` for a size of
    /// zero or a name that is empty, too long or contains `/` after its
    /// first character.
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory> {
        if size == 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the size of a new shared memory segment must be positive",
            )));
        }
        let (name, kname) = kernel_name(name)?;
        let fd = sys::shm_open(&kname, true)?;
        // From here on the name exists: unlink it on any failure.
        let made =
            sys::set_len(fd.as_fd(), size).and_then(|()| sys::Mapping::new(fd.as_fd(), size));
        let map = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = sys::shm_unlink(&kname);
                return Err(Error::Io(e));
            }
        };
        register_owned(&kname);
        tracing::debug!(name, size, "shared memory created");
        Ok(SharedMemory {
            name,
            kname,
            map,
            fd,
            owns: AtomicBool::new(true),
            owner_pid: std::process::id(),
        })
    }

    /// Attaches to the segment called `name` (Python's
    /// `SharedMemory(name)`), with or without a leading `/`. Its size is
    /// the file's size. This process does not own the name.
    ///
    /// # Errors
    /// `NotFound` when no such segment exists; `InvalidData` for an empty
    /// one; `InvalidInput` for an invalid name.
    pub fn open(name: &str) -> Result<SharedMemory> {
        let (name, kname) = kernel_name(name)?;
        let fd = sys::shm_open(&kname, false)?;
        let len = sys::file_len(fd.as_fd())?;
        let len = usize::try_from(len).map_err(|_| {
            Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory segment too large to map",
            ))
        })?;
        if len == 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory segment {name:?} is empty"),
            )));
        }
        let map = sys::Mapping::new(fd.as_fd(), len)?;
        Ok(SharedMemory {
            name,
            kname,
            map,
            fd,
            owns: AtomicBool::new(false),
            owner_pid: std::process::id(),
        })
    }

    /// The name other processes attach with (Python's `name`: no leading
    /// `/`; the file is `/dev/shm/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes (Python's `size`): the file's size when it was mapped,
    /// which an attaching Python process sees too. On Linux that is exactly
    /// the size asked for at creation, not rounded up to a page: the
    /// mapping covers whole pages, but as with Python's `buf` only `size`
    /// bytes are reachable. (CPython documents that the size may be larger
    /// than asked on platforms that round it to the page size, such as
    /// macOS.)
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Copies `dst.len()` bytes from `offset` into `dst` (Python's
    /// `buf[offset:offset+n]`).
    ///
    /// # Errors
    /// `InvalidInput` when the range is not inside the segment.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        if self.map.read(offset, dst) {
            Ok(())
        } else {
            Err(out_of_range(offset, dst.len(), self.size()))
        }
    }

    /// `len` bytes from `offset`, copied into a new vector.
    ///
    /// # Errors
    /// `InvalidInput` when the range is not inside the segment.
    pub fn read_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(out_of_range(offset, len, self.size()));
        }
        let mut v = vec![0u8; len];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// The whole segment, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size()];
        // In range by construction.
        let _ = self.map.read(0, &mut v);
        v
    }

    /// Copies `src` into the segment at `offset` (Python's
    /// `buf[offset:offset+n] = src`).
    ///
    /// # Errors
    /// `InvalidInput` when the range is not inside the segment (nothing is
    /// written).
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        if self.map.write(offset, src) {
            Ok(())
        } else {
            Err(out_of_range(offset, src.len(), self.size()))
        }
    }

    /// The first byte of this process's mapping, for code that takes on
    /// the `unsafe` of sharing memory with other processes itself (the
    /// mapping is [`size`](SharedMemory::size) bytes and lives as long as
    /// `self`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    /// Removes the name (Python's `unlink`): no process can attach any
    /// more; those attached keep their mappings, and the memory is freed
    /// with the last one. Once unlinked, dropping unlinks nothing.
    ///
    /// # Errors
    /// `NotFound` when the name was already removed (by anyone).
    pub fn unlink(&self) -> Result<()> {
        if self.owns.swap(false, Ordering::AcqRel) {
            unregister_owned(&self.kname);
        }
        sys::shm_unlink(&self.kname)?;
        tracing::debug!(name = self.name, "shared memory unlinked");
        Ok(())
    }

    /// Whether dropping this handle unlinks the name: `true` for the
    /// creator, until [`unlink`](SharedMemory::unlink) or
    /// [`set_unlink_on_drop(false)`](SharedMemory::set_unlink_on_drop).
    pub fn unlinks_on_drop(&self) -> bool {
        self.owns.load(Ordering::Acquire)
    }

    /// Hands the name over: `false` leaves it in `/dev/shm` after this
    /// handle is dropped (someone else unlinks it: a Python process, or
    /// a handle that set `true`); `true` makes this handle the owner, which
    /// unlinks on drop or at `exit()`.
    pub fn set_unlink_on_drop(&mut self, unlink: bool) {
        let was = self.owns.swap(unlink, Ordering::AcqRel);
        self.owner_pid = std::process::id();
        match (was, unlink) {
            (false, true) => register_owned(&self.kname),
            (true, false) => unregister_owned(&self.kname),
            _ => {}
        }
    }

    /// Closes this handle (Python's `close`); the same as dropping it, so
    /// the creator's handle unlinks the name.
    pub fn close(self) {}
}

fn out_of_range(offset: usize, len: usize, size: usize) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("range {offset}+{len} outside a shared memory segment of {size} bytes"),
    ))
}

impl AsFd for SharedMemory {
    /// The segment's fd (close-on-exec).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // A forked child holds a copy of its parent's handle: only the
        // owning process unlinks.
        if self.owns.load(Ordering::Acquire) && self.owner_pid == std::process::id() {
            unregister_owned(&self.kname);
            match sys::shm_unlink(&self.kname) {
                Ok(()) => tracing::debug!(name = self.name, "shared memory unlinked on drop"),
                Err(e) => tracing::debug!(name = self.name, error = %e, "unlink on drop"),
            }
        }
    }
}

impl Serialize for SharedMemory {
    /// The name, as Python pickles a `SharedMemory`.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    /// Attaches by name, without owning.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        SharedMemory::open(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        std::path::Path::new("/dev/shm").join(name).exists()
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(kernel_name("psm_1").unwrap().0, "psm_1");
        assert_eq!(kernel_name("/psm_1").unwrap().1.as_bytes(), b"/psm_1");
        for bad in ["", "/", "a/b", "..", "a\0b", &"x".repeat(300)] {
            assert!(kernel_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn creator_unlinks_on_drop_and_attachers_do_not() {
        let shm = SharedMemory::create(100).unwrap();
        let name = shm.name().to_string();
        assert_eq!(name.len(), 12);
        assert!(exists(&name));
        let other = SharedMemory::open(&format!("/{name}")).unwrap();
        drop(other);
        assert!(exists(&name));
        drop(shm);
        assert!(!exists(&name));
    }

    #[test]
    fn handing_over_the_name() {
        let mut shm = SharedMemory::create(10).unwrap();
        let name = shm.name().to_string();
        shm.set_unlink_on_drop(false);
        drop(shm);
        assert!(exists(&name));
        let mut again = SharedMemory::open(&name).unwrap();
        assert!(!again.unlinks_on_drop());
        again.set_unlink_on_drop(true);
        drop(again);
        assert!(!exists(&name));
    }

    #[test]
    fn explicit_unlink_and_bounds() {
        let shm = SharedMemory::create(8).unwrap();
        assert!(shm.write(4, b"abcd").is_ok());
        assert!(shm.write(5, b"abcd").is_err());
        assert!(shm.read_vec(usize::MAX, 2).is_err());
        assert_eq!(shm.read_vec(4, 4).unwrap(), b"abcd");
        shm.unlink().unwrap();
        assert!(!exists(shm.name()));
        assert!(shm.unlink().is_err());
        // Still mapped after the unlink.
        assert_eq!(shm.to_vec(), b"\0\0\0\0abcd");
    }

    #[test]
    fn existing_names_and_zero_sizes_are_refused() {
        let shm = SharedMemory::create(8).unwrap();
        let e = SharedMemory::create_named(shm.name(), 8).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::AlreadyExists));
        assert!(SharedMemory::create(0).is_err());
        assert_eq!(
            SharedMemory::open("psm_surely_not_there")
                .unwrap_err()
                .io_kind(),
            Some(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn the_fd_is_close_on_exec() {
        let shm = SharedMemory::create(8).unwrap();
        let flags = nix::fcntl::fcntl(shm.as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }
}
