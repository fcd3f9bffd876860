//! The crate's process-level system calls: fork, exit, pidfds, signals,
//! polling, fd and function-pointer plumbing.
//!
//! Contract: fds returned here are owned and close-on-exec; `EINTR` is
//! retried here. The crate root denies `unsafe`; the modules allowed it are
//! this one and the other system layers (`channel/sys.rs` for sockets,
//! `shm/sys.rs` for mappings and futexes, `shared_memory/sys.rs` for POSIX
//! shared memory), plus the few places that must work on raw memory or
//! run right after a `fork` (`sync/robust.rs`, the robust list; `shm/value.rs`,
//! typed views of shared segments; `job.rs`, `reactor.rs`, `globals.rs` and
//! the start methods), each block with its `// SAFETY:` reason.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use forkserver::FnRef;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Result of [`fork`].
pub(crate) enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork()` in the calling process (the `fork` start method).
///
/// # Safety
/// After a fork from a multithreaded process, locks held by other threads
/// stay locked forever in the child. The caller runs in the child only code
/// that is either async-signal-safe or accepts that risk (the `fork` start
/// method's documented hazard, warned about at run time).
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: forwarded to the caller.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// `_exit(code)`: no atexit handlers, no destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// A new, empty, close-on-exec memfd named `name` (as `/proc/<pid>/fd`
/// shows it) that allows sealing: the crate's one `memfd_create`, for
/// shared-memory segments and message bodies alike.
pub(crate) fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; flags are valid memfd flags.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `pidfd_open(pid)`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig)`.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments and a null siginfo, as the man page allows.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(pid, sig)` for one process (pid > 0).
pub(crate) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: integer arguments; pid > 0 targets one process.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `n` random bytes from the kernel's random source (`getrandom`, or
/// `/dev/urandom` on a kernel without it). Its failure is an error: there is
/// no fallback to anything guessable (authkeys and challenges use this).
pub(crate) fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: the pointer and length describe the unfilled part of buf.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) => {
                    use std::io::Read;
                    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf[filled..])?;
                    return Ok(buf);
                }
                _ => return Err(e),
            }
        }
        filled += r as usize;
    }
    Ok(buf)
}

/// [`random_bytes`] where there is no caller to hand an error to (the
/// identity of this process): a clear panic rather than a guessable value.
pub(crate) fn random_bytes_or_panic(n: usize, what: &str) -> Vec<u8> {
    random_bytes(n)
        .unwrap_or_else(|e| panic!("mproc: the OS random source failed making {what}: {e}"))
}

/// A wait's time limit as `poll(2)` takes it, the one conversion of the
/// crate: `None` waits without limit; zero does not wait; any other time
/// is rounded *up* to whole milliseconds (a 0.3 ms wait must not become a
/// busy loop of zero-timeout polls) and capped at `i32::MAX`.
pub(crate) fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(d) if d.is_zero() => PollTimeout::ZERO,
        Some(d) => {
            let ms = i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Waits until `fd` is ready for `events` (or hung up, or in error);
/// `false` when `timeout` ran out. `EINTR` restarts the wait with the time
/// that is left, not the whole of it.
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    let mut left = timeout;
    let mut pfd = [PollFd::new(fd, events)];
    loop {
        match poll(&mut pfd, poll_timeout(left)) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => {
                if let Some(d) = deadline {
                    left = Some(d.saturating_duration_since(std::time::Instant::now()));
                }
            }
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

/// Waits until `fd` is readable (or hung up); `false` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    wait_ready(fd, PollFlags::POLLIN, timeout)
}

/// [`wait_readable`] for at most `timeout` (`None`, or a time too long to
/// represent: no limit), `false` only once all of it has passed (a Python
/// `poll` never answers early).
pub(crate) fn wait_readable_within(
    fd: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let Some(deadline) = timeout.and_then(|t| std::time::Instant::now().checked_add(t)) else {
        return wait_readable(fd, None);
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if wait_readable(fd, Some(left))? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Waits until `fd` is writable (or the peer is gone); `false` on timeout.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    wait_ready(fd, PollFlags::POLLOUT, timeout)
}

/// Blocks until the peer of socket `fd` hangs up; `false` if polling fails.
pub(crate) fn wait_hangup(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
    }
}

/// Duplicates `fd` (close-on-exec).
pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Number of online CPUs.
pub(crate) fn cpu_count() -> usize {
    // SAFETY: sysconf takes an integer and returns one.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 { 1 } else { n as usize }
}

/// Rebuilds a function pointer of type `F` from the [`FnRef`] it travelled
/// as: [`FnRef::resolve`] is the one rebuild of an address (the crate's only
/// one); this gives the `fn()` it returns back its real type.
///
/// # Safety
/// `r` must have been made from a function of exactly type `F` (by
/// [`FnRef::from_addr`] of `f as F as usize`) in a process running this same
/// executable image.
pub(crate) unsafe fn resolve_as<F: Copy>(r: FnRef) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<fn()>());
    // SAFETY: forwarded to the caller: `r` denotes a function of this image.
    let f: fn() = unsafe { r.resolve() };
    // SAFETY: F is a function pointer type of pointer size (asserted), and
    // the caller guarantees the function behind `f` has type F; function
    // pointers of every signature share one representation.
    unsafe { std::mem::transmute_copy::<fn(), F>(&f) }
}

/// Closes a raw fd inherited across `fork` that no Rust value owns any more.
///
/// # Safety
/// No live value may own `fd`.
pub(crate) unsafe fn close_raw(fd: RawFd) {
    // SAFETY: forwarded to the caller.
    unsafe { libc::close(fd) };
}

/// Raw number of an fd, for bookkeeping across `fork`.
pub(crate) fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// The `(st_dev, st_ino)` of whatever the fd number `fd` names now, or
/// `None` when nothing is open there. Async-signal-safe (one `fstat`), so a
/// fork child may check that a number it kept still names the same file.
pub(crate) fn fd_identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain data, so zeroed is a valid value; fstat only
    // writes to it, and any fd number is acceptable (EBADF when closed).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a valid pointer to a local `stat`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ across targets
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// A cell whose value a freshly forked child can replace without touching
/// the (possibly locked) old value.
pub(crate) struct ForkCell<T> {
    inner: std::cell::UnsafeCell<T>,
}

// SAFETY: access goes through `get`, which hands out `&T` only; T is Sync
// (a Mutex), and `reset_in_child` runs only in a single-threaded fork child.
unsafe impl<T: Sync> Sync for ForkCell<T> {}

impl<T> ForkCell<T> {
    pub(crate) const fn new(v: T) -> Self {
        ForkCell {
            inner: std::cell::UnsafeCell::new(v),
        }
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: only `reset_in_child` writes, and only when no other thread
        // exists and no reference from `get` is live in the child's frame.
        unsafe { &*self.inner.get() }
    }

    /// Overwrites the value without dropping the old one (it may be a mutex
    /// locked by a thread that does not exist in this child).
    ///
    /// # Safety
    /// Only in a freshly forked child, before any other thread starts, with
    /// no reference from [`ForkCell::get`] alive.
    pub(crate) unsafe fn reset_in_child(&self, v: T) {
        // SAFETY: forwarded to the caller; `write` forgets the old value.
        unsafe { std::ptr::write(self.inner.get(), v) };
    }
}

/// A new epoll set (`epoll_create1`), close-on-exec.
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: an integer flag; returns a new fd or -1.
    let r = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// What [`epoll_ctl`] does with an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpollOp {
    /// Adds the fd to the set (`EPOLL_CTL_ADD`).
    Add,
    /// Changes its events and re-arms it (`EPOLL_CTL_MOD`).
    Modify,
    /// Removes it (`EPOLL_CTL_DEL`).
    Delete,
}

/// Waits for `fd` to be readable (or hung up), reported once: after an
/// event the fd stays in the set, disarmed until [`EpollOp::Modify`].
pub(crate) const EPOLL_READ_ONCE: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;

/// `epoll_ctl(epoll, op, fd)`, with `token` as the event's data.
pub(crate) fn epoll_ctl(
    epoll: BorrowedFd<'_>,
    op: EpollOp,
    fd: BorrowedFd<'_>,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let op = match op {
        EpollOp::Add => libc::EPOLL_CTL_ADD,
        EpollOp::Modify => libc::EPOLL_CTL_MOD,
        EpollOp::Delete => libc::EPOLL_CTL_DEL,
    };
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: two fds borrowed for the call and a live event the kernel only
    // reads (ignored for EPOLL_CTL_DEL, where a non-null pointer keeps
    // kernels before 2.6.9 happy).
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` (`None`: for ever; rounded up to whole
/// milliseconds, so a short wait never turns into a busy loop) for events
/// of the set `epoll`, and replaces `tokens` with the data of each event
/// reported. An interrupted wait (`EINTR`) reports no event.
pub(crate) fn epoll_wait(
    epoll: BorrowedFd<'_>,
    tokens: &mut Vec<u64>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    const MAX_EVENTS: usize = 64;
    let ms = match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    tokens.clear();
    // SAFETY: the buffer holds MAX_EVENTS events and lives across the call;
    // the kernel writes at most that many.
    let n = unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            MAX_EVENTS as i32,
            ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(());
        }
        return Err(e);
    }
    // `epoll_event` is packed on some targets: copy each one out before
    // reading its data, never take a reference into it.
    for ev in events.iter().take(n as usize) {
        let ev = *ev;
        tokens.push(ev.u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::poll::PollTimeout;

    use super::poll_timeout;

    #[test]
    fn one_meaning_of_each_timeout() {
        assert_eq!(poll_timeout(None), PollTimeout::NONE);
        assert_eq!(poll_timeout(Some(Duration::ZERO)), PollTimeout::ZERO);
        let ms = |t| i32::from(poll_timeout(Some(t)));
        assert_eq!(ms(Duration::from_nanos(1)), 1);
        assert_eq!(ms(Duration::from_micros(300)), 1);
        assert_eq!(ms(Duration::from_millis(7)), 7);
        assert_eq!(ms(Duration::from_micros(7_001)), 8);
        assert_eq!(poll_timeout(Some(Duration::MAX)), PollTimeout::MAX);
    }
}
