//! Every system call of the crate, behind small safe functions.
//!
//! Contract with the rest of the crate: nothing outside this module uses
//! `unsafe`. Every fd returned here is owned and close-on-exec, except where a
//! function's doc says it installs fds into fixed slots for a child. Functions
//! retry `EINTR` themselves; `EAGAIN` reaches the caller as
//! [`io::ErrorKind::WouldBlock`].
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{self, ControlMessage, MsgFlags};

use crate::protocol::{Rusage, WireStatus};

/// `SCM_MAX_FD`: the most fds Linux delivers in one message. The receive
/// buffer has room for all of them so that the kernel never truncates our
/// control data and every fd that arrives is owned (and closed) by us.
const SCM_MAX_FD: usize = 253;

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A close-on-exec `SOCK_SEQPACKET` Unix socketpair.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(errno)
}

/// Sends one frame with `fds` attached. Never raises `SIGPIPE`.
pub(crate) fn send_frame(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<()> {
    send_frame_parts(sock, bytes, &[], fds, nonblocking)
}

/// Sends one frame made of two parts (gathered, still one message).
pub(crate) fn send_frame_parts(
    sock: BorrowedFd<'_>,
    head: &[u8],
    body: &[u8],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut flags = MsgFlags::MSG_NOSIGNAL;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let iov = [IoSlice::new(head), IoSlice::new(body)];
    loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Receives one frame into `buf`, fds with `MSG_CMSG_CLOEXEC`, the control
/// data into a buffer on the stack: no heap allocation unless fds arrive.
///
/// Every fd the kernel installed is returned owned, also when it reports
/// `MSG_CTRUNC` (fd table full): those that came are closed on drop, not
/// leaked.
pub(crate) fn recv_frame(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<crate::fdpass::Received> {
    /// `CMSG_SPACE(SCM_MAX_FD * 4)` (a 16-byte header and the fds rounded
    /// up to 8), in `u64`s for `cmsghdr` alignment.
    const CMSG_WORDS: usize = (16 + SCM_MAX_FD * 4).div_ceil(8);
    // Left uninitialised: the kernel writes it and reports how much.
    let mut cmsg = std::mem::MaybeUninit::<[u64; CMSG_WORDS]>::uninit();
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of::<[u64; CMSG_WORDS]>() as _;
        // SAFETY: `msg` points at one iovec covering `buf` and at the control
        // buffer, both valid and writable for the lengths given, and both
        // outlive the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: `msg` was filled by the kernel; the CMSG_* macros walk the
        // control buffer within `msg_controllen`, which the kernel set to
        // what it wrote (at most the buffer's size), so only initialised
        // bytes are read.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
        while !c.is_null() {
            // SAFETY: `c` is a header inside the control buffer (CMSG_FIRSTHDR
            // and CMSG_NXTHDR return null past its end).
            let h = unsafe { &*c };
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: the data of a header inside the buffer.
                let data = unsafe { libc::CMSG_DATA(c) };
                // SAFETY: CMSG_LEN(0) is a constant computation.
                let header = unsafe { libc::CMSG_LEN(0) } as usize;
                let count = (h.cmsg_len as usize).saturating_sub(header) / 4;
                for i in 0..count {
                    // SAFETY: `count` fds follow the header, within
                    // `cmsg_len` bytes the kernel wrote; unaligned read
                    // because CMSG_DATA is only 4-byte aligned in general.
                    let fd: RawFd = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                    // SAFETY: the kernel just installed `fd` in our table for
                    // this message; nothing else knows of it, so we are its
                    // only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            c = unsafe { libc::CMSG_NXTHDR(&raw const msg, c) };
        }
        return Ok(crate::fdpass::Received {
            len: n as usize,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
            ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
            fds,
        });
    }
}

/// `poll(2)` over raw entries; `timeout_ms` < 0 waits without limit.
///
/// The caller keeps every fd in `fds` open for the duration of the call.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `pollfd` of the
    // given length; the kernel writes only their `revents`.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// A wait's time limit as `poll(2)` takes it, the one conversion of the
/// crate: `None` waits without limit (-1); zero does not wait; any other
/// time is rounded *up* to whole milliseconds (a 0.3 ms wait must not turn
/// into a busy loop of zero-timeout polls) and capped at `i32::MAX`.
pub(crate) fn poll_timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) if d.is_zero() => 0,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

/// Waits until `fd` is readable or hung up; `false` when `timeout` ran out.
/// `EINTR` restarts the wait with the time that is left.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let mut pfd = [libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        match poll(&mut pfd, poll_timeout_ms(left)) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end).
pub(crate) fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(errno)
}

/// Reads up to `buf.len()` bytes, retrying `EINTR`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Writes all of `buf` (used for small error reports from a child).
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(())
}

/// Result of [`fork`].
pub(crate) enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork()`.
///
/// # Safety
/// In the child only async-signal-safe work is sound unless the calling
/// process has a single thread. The fork server calls this only from its one
/// thread (checked at start), so its children may allocate and lock freely.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: forwarded to the caller, see above.
    match unsafe { nix::unistd::fork() }.map_err(errno)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// `pidfd_open(pid, 0)`: a close-on-exec pidfd (pidfds always are).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `kill(pid, signal)`.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers; pid is > 0 (checked by callers), so it
    // targets one process, never a group.
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: see above.
    let r = unsafe { libc::kill(pid, signal) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks `SIGCHLD` for this thread and returns a signalfd for it.
pub(crate) fn sigchld_fd() -> io::Result<OwnedFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(errno)?;
    let sfd = nix::sys::signalfd::SignalFd::with_flags(
        &set,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
    .map_err(errno)?;
    Ok(OwnedFd::from(sfd))
}

/// Drains a non-blocking signalfd.
pub(crate) fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 128 * 8];
    while matches!(read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Reaps one exited child without blocking: `wait4(-1, WNOHANG)`.
pub(crate) fn reap_any() -> Option<(i32, WireStatus, Rusage)> {
    reap(-1, false)
}

/// `wait4(pid, …)`, blocking or not; `None` when nothing (more) to reap.
pub(crate) fn reap(pid: i32, block: bool) -> Option<(i32, WireStatus, Rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let flags = if block { 0 } else { libc::WNOHANG };
        // SAFETY: valid pointers to local status and rusage.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r <= 0 {
            return None;
        }
        let st = if libc::WIFSIGNALED(status) {
            WireStatus::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            WireStatus::Exited(libc::WEXITSTATUS(status))
        };
        let tv = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
        let usage = Rusage {
            user_us: tv(ru.ru_utime),
            system_us: tv(ru.ru_stime),
            max_rss_kib: ru.ru_maxrss.max(0) as u64,
        };
        return Some((r, st, usage));
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit before and after.
pub(crate) fn raise_nofile() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(errno)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(errno)?;
        return Ok((soft, hard));
    }
    Ok((soft, soft))
}

/// Sets the soft `RLIMIT_NOFILE` (to give a child the limit its requester
/// would have had), keeping the hard limit.
pub(crate) fn set_nofile_soft(soft: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(errno)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard).map_err(errno)
}

/// Number of threads of this process: field 20 of `/proc/self/stat`.
///
/// Read into a stack buffer, with no heap allocation: a fork-method parent
/// counts its threads before every fork, and each heap page written between
/// two forks is a page the next child's copy-on-write has to copy.
pub(crate) fn thread_count() -> io::Result<usize> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let fd = open(
        "/proc/self/stat",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(&fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    parse_stat_threads(&buf[..len])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc/self/stat"))
}

/// `num_threads` from the text of `/proc/<pid>/stat`: the 18th field after
/// the command name, which is in parentheses and may itself hold spaces and
/// parentheses (so the fields start after the last `)`).
fn parse_stat_threads(stat: &[u8]) -> Option<usize> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    // Fields 3 (state) onwards; num_threads is field 20.
    rest.split_ascii_whitespace().nth(17)?.parse().ok()
}

/// A sealed (read-only for everyone) memfd holding `bytes`.
pub(crate) fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd =
        memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(errno)?;
    write_all(fd.as_fd(), bytes)?;
    fcntl(
        fd.as_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(errno)?;
    Ok(fd)
}

/// The size of a memfd sealed against writing, growing and shrinking (by
/// anyone), or an error when it lacks one of those seals.
fn sealed_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS).map_err(errno)?);
    let need = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    if !seals.contains(need) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bulk memfd is not sealed",
        ));
    }
    let st = nix::sys::stat::fstat(fd).map_err(errno)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Reads the first `len` bytes of a sealed memfd.
///
/// The memfd must carry write, shrink and grow seals, so the sender cannot
/// change it while we read; one shorter than `len` is refused before
/// anything is allocated.
pub(crate) fn read_sealed_memfd(fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let size = sealed_size(fd.as_fd())?;
    if size < len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("memfd holds {size} bytes, {len} asked for"),
        ));
    }
    let file = std::fs::File::from(fd.try_clone()?);
    let mut out = vec![0u8; len];
    file.read_exact_at(&mut out, 0)?;
    Ok(out)
}

/// A read-only view of a sealed memfd, unmapped on drop.
///
/// The mapping is shared and file-backed: it holds no anonymous memory of
/// ours, and `fork` copies none of its page-table entries.
pub(crate) struct SealedMap {
    /// Start of the mapping; dangling (never read) when `len` is 0.
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl std::ops::Deref for SealedMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is the start of a live read-only mapping of `len`
        // bytes (or dangling with `len` 0, which a slice allows). The memfd
        // behind it is sealed against writing and shrinking, so no one can
        // change the bytes while we borrow them, and no read past the end
        // of the file (SIGBUS) is possible.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for SealedMap {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for SealedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedMap").field("len", &self.len).finish()
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: our own mapping of exactly these bytes, made by
            // `map_sealed_memfd`; no borrow of it outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Maps a sealed memfd that must hold exactly `len` bytes, read-only.
///
/// The memfd must carry write, shrink and grow seals, so the sender can
/// change neither its bytes nor its size while we read. Its size is checked
/// (`fstat`) before anything is mapped: a peer that announces more, or less,
/// than it sent gets an error and costs us nothing.
pub(crate) fn map_sealed_memfd(fd: BorrowedFd<'_>, len: usize) -> io::Result<SealedMap> {
    let size = sealed_size(fd)?;
    if size != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bulk memfd holds {size} bytes, {len} announced"),
        ));
    }
    if len == 0 {
        return Ok(SealedMap {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
        });
    }
    // SAFETY: a new mapping chosen by the kernel (no address given), of a
    // file we hold open, read-only; it aliases nothing of ours.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(p.cast::<u8>())
        .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
    Ok(SealedMap { ptr, len })
}

/// Gives the heap's free memory back to the kernel: `malloc_trim(0)`
/// releases the top of the heap and drops every whole free page inside it
/// (`MADV_DONTNEED`). Returns whether anything was released.
#[cfg(target_env = "gnu")]
pub(crate) fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes a plain integer and works on the
    // allocator's own state under the allocator's lock.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Without glibc there is no `malloc_trim`: nothing to do.
#[cfg(not(target_env = "gnu"))]
pub(crate) fn trim_heap() -> bool {
    false
}

/// Starts `/proc/self/exe` with `posix_spawn`, safe from any thread.
///
/// `pass` is installed as fd 3 in the new process (the only fd it inherits
/// besides 0, 1 and 2: with glibc, every higher fd is closed even if the
/// caller left it inheritable); `env` is its whole environment. Returns the
/// pid.
pub(crate) fn spawn_self(
    argv0: &OsStr,
    env: &[(OsString, OsString)],
    pass: BorrowedFd<'_>,
) -> io::Result<i32> {
    let path = CString::new("/proc/self/exe").map_err(io::Error::other)?;
    let argv0 = CString::new(argv0.as_bytes()).map_err(io::Error::other)?;
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let env_c: Vec<CString> = env
        .iter()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    // SAFETY: the attribute and file-action objects are initialised before use
    // and destroyed on every path; all pointers passed to posix_spawn point to
    // live, NUL-terminated data owned by this frame.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let e = libc::posix_spawn_file_actions_init(&mut fa);
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        let e = libc::posix_spawnattr_init(&mut attr);
        if e != 0 {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(io::Error::from_raw_os_error(e));
        }
        let result = (|| {
            // dup2 onto 3 clears close-on-exec; when the fd already is 3,
            // dup2 would be a no-op that keeps the flag, so go through 4…
            let e = if pass.as_raw_fd() == 3 {
                // POSIX 2024: posix_spawn_file_actions_adddup2 with equal fds
                // clears FD_CLOEXEC (glibc ≥ 2.29 implements it).
                libc::posix_spawn_file_actions_adddup2(&mut fa, 3, 3)
            } else {
                libc::posix_spawn_file_actions_adddup2(&mut fa, pass.as_raw_fd(), 3)
            };
            if e != 0 {
                return Err(io::Error::from_raw_os_error(e));
            }
            // Fds the caller inherited without close-on-exec (a build tool's
            // jobserver pipe, a shell's stray descriptors) must not live on
            // in a long-lived server: a pipe it holds never reports EOF.
            #[cfg(target_env = "gnu")]
            {
                let e = libc::posix_spawn_file_actions_addclosefrom_np(&mut fa, 4);
                if e != 0 {
                    return Err(io::Error::from_raw_os_error(e));
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::posix_spawnattr_setsigmask(&mut attr, &empty);
            libc::posix_spawnattr_setsigdefault(&mut attr, &all);
            let e = libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            );
            if e != 0 {
                return Err(io::Error::from_raw_os_error(e));
            }
            let mut pid: libc::pid_t = 0;
            let e = libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                &fa,
                &attr,
                argv.as_ptr() as *const *mut libc::c_char,
                envp.as_ptr() as *const *mut libc::c_char,
            );
            if e != 0 {
                return Err(io::Error::from_raw_os_error(e));
            }
            Ok(pid)
        })();
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        result
    }
}

/// A value that identifies this executable file (device, inode, size, mtime).
pub(crate) fn exe_identity() -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crate::protocol::PROTOCOL_VERSION.hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    if let Ok(m) = std::fs::metadata("/proc/self/exe") {
        (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    h.finish()
}

/// Takes an fd out of the environment-provided number (fd passed at spawn).
///
/// # Safety
/// `fd` must be open, owned by nobody else in this process, and not used
/// again under its raw number.
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // F_GETFD checks that it is open at all.
    // SAFETY: fcntl on an integer is harmless if it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller promises sole ownership.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Make it close-on-exec again (posix_spawn's dup2 cleared it).
    nix::fcntl::fcntl(
        owned.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(errno)?;
    Ok(owned)
}

/// Like [`adopt_fd`] but leaves the fd inheritable.
///
/// # Safety
/// As [`adopt_fd`].
pub(crate) unsafe fn adopt_fd_keep_inheritable(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an integer is harmless if it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller promises sole ownership.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The process's fd `slot` (0, 1 or 2) if it is open.
pub(crate) fn stdio_if_open(slot: u32) -> Option<BorrowedFd<'static>> {
    if slot > 2 {
        return None;
    }
    // SAFETY: fcntl on an integer is harmless if it is not open.
    if unsafe { libc::fcntl(slot as RawFd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: fds 0–2 belong to the process as a whole and are open (just
    // checked); callers hold the borrow only for the duration of one send.
    Some(unsafe { BorrowedFd::borrow_raw(slot as RawFd) })
}

/// Hands each entry of the process environment (`KEY=VALUE`, as `environ`
/// holds it) to `f`, in place, until `f` says no; whether it said yes to
/// all. Copies nothing.
pub(crate) fn environ_all(f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    // SAFETY: reading `environ` is what `getenv` does. Changing the
    // environment while another thread reads it is the caller's fault by
    // `std::env::set_var`'s contract (it is `unsafe` for exactly this), so
    // the array and its strings stay put while we walk them; the array ends
    // with a null pointer.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return true;
        }
        while !(*p).is_null() {
            if !f(std::ffi::CStr::from_ptr(*p).to_bytes()) {
                return false;
            }
            p = p.add(1);
        }
        true
    }
}

/// Removes an environment variable.
///
/// # Safety
/// No other thread may read or write the environment meanwhile (call it
/// before any thread starts).
pub(crate) unsafe fn remove_env(key: &str) {
    // SAFETY: forwarded to the caller.
    unsafe { std::env::remove_var(key) };
}

// ---------------------------------------------------------------------------
// Between fork and exec/entry in a fork-server child.
// ---------------------------------------------------------------------------

/// Resets the signal mask and every disposition to default; `SIGPIPE` is set
/// to ignored when `ignore_sigpipe` (what a Rust `main` expects).
///
/// Raw system calls, not libc's wrappers: every libc page a fresh child
/// executes is a page fault of its own, and these calls need nothing of
/// libc (installing `SIG_DFL` or `SIG_IGN` needs no restorer).
pub(crate) fn child_reset_signals(nondefault: &[i32], ignore_sigpipe: bool) {
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads an 8-byte set we own; the old set is not
    // asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    let set = set_disposition;
    for &sig in nondefault {
        if sig != libc::SIGPIPE {
            set(sig, libc::SIG_DFL);
        }
    }
    let pipe_default = !nondefault.contains(&libc::SIGPIPE);
    match (ignore_sigpipe, pipe_default) {
        (true, _) => set(libc::SIGPIPE, libc::SIG_IGN),
        (false, false) => set(libc::SIGPIPE, libc::SIG_DFL),
        (false, true) => {}
    }
}

/// Sets `sig` to `SIG_DFL` or `SIG_IGN` with a raw `rt_sigaction`.
#[cfg(target_arch = "x86_64")]
fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    /// The kernel's `struct sigaction` on x86-64.
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let act = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: installing SIG_DFL / SIG_IGN runs no code of ours; the kernel
    // reads our struct (the x86-64 layout) and does not keep it.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Sets `sig` to `SIG_DFL` or `SIG_IGN` (libc's wrapper on other targets).
#[cfg(not(target_arch = "x86_64"))]
fn set_disposition(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: installing SIG_DFL / SIG_IGN runs no code of ours.
    unsafe { libc::signal(sig, handler) };
}

/// The signals whose disposition is not `SIG_DFL` in this process (read
/// once by the server, so that its children reset only those: one
/// `sigaction` each instead of one per signal).
pub(crate) fn nondefault_signals() -> Vec<i32> {
    let mut out = Vec::new();
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a null new action only reads the current
        // one into `old`, a plain-data struct we own.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        if r == 0 && old.sa_sigaction != libc::SIG_DFL {
            out.push(sig);
        }
    }
    out
}

/// Installs each fd at its slot, clears close-on-exec on the slots, and closes
/// every other fd of the process except `keep` (which stays close-on-exec).
///
/// Returns `keep`'s (possibly moved) number.
pub(crate) fn child_install_fds(
    fds: Vec<(OwnedFd, u32)>,
    keep: Option<OwnedFd>,
) -> io::Result<Option<OwnedFd>> {
    if fds.len() > crate::protocol::MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let top = fds.iter().map(|(_, s)| *s as RawFd).max().unwrap_or(2) + 1;
    // 1. `keep` sits on a slot only when it arrived below the slots: then it
    //    moves above them first (its old number is closed at once, before
    //    anything lands there).
    let keep = match keep {
        Some(k) if fds.iter().any(|(_, s)| *s as RawFd == k.as_raw_fd()) => {
            Some(dup_above(k.as_fd(), top)?)
        }
        k => k,
    };
    // 2. The moves, as (source, slot) numbers on the stack (a fresh child
    //    allocates nothing it does not have to). A move is made once its
    //    slot is no pending move's source, so no source is overwritten
    //    before it is copied; a cycle (each slot another's source) is broken
    //    by copying one source above the slots. Received fds usually take
    //    the lowest free numbers, just above stdio and under the slots, so
    //    this orders the `dup2`s rather than moving every fd first.
    let mut moves = [(0 as RawFd, 0 as RawFd); crate::protocol::MAX_FDS];
    let mut n = 0;
    for (fd, slot) in &fds {
        moves[n] = (fd.as_raw_fd(), *slot as RawFd);
        n += 1;
    }
    let mut kept = [0 as RawFd; crate::protocol::MAX_FDS + 1];
    let mut done = 0;
    let mut pending = n;
    while pending > 0 {
        let free = (0..pending).find(|&i| {
            let slot = moves[i].1;
            (0..pending).all(|j| j == i || moves[j].0 != slot)
        });
        let i = match free {
            Some(i) => i,
            None => {
                let copy = dup_above(fd_of(moves[0].0), top)?;
                moves[0].0 = copy.as_raw_fd();
                // Closed with the sources below.
                std::mem::forget(copy);
                continue;
            }
        };
        let (src, slot) = moves[i];
        if src == slot {
            // Already in place: `dup2` onto itself would keep close-on-exec.
            // SAFETY: F_SETFD on a number we own.
            if unsafe { libc::fcntl(slot, libc::F_SETFD, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        } else {
            // SAFETY: both are plain fd numbers; `src` is ours and open, and
            // `slot` is no pending move's source (checked above).
            if unsafe { libc::dup2(src, slot) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        kept[done] = slot;
        done += 1;
        pending -= 1;
        moves[i] = moves[pending];
    }
    // 3. Close every fd that is neither a slot nor `keep`: the sources and
    //    the copies too, in the same `close_range` calls (so they are
    //    forgotten, not dropped).
    if let Some(k) = &keep {
        kept[done] = k.as_raw_fd();
        done += 1;
    }
    close_fds_except(&mut kept[..done]);
    // Not dropped: the fds are closed already, and freeing the vector would
    // write to (and copy) a heap page for nothing.
    std::mem::forget(fds);
    Ok(keep)
}

/// A borrowed fd from a number this child owns.
fn fd_of(n: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used on the sources of `child_install_fds`, open fds this
    // single-threaded child owns for the duration of the call.
    unsafe { BorrowedFd::borrow_raw(n) }
}

/// `F_DUPFD_CLOEXEC`: a copy of `fd` numbered `min` or above.
fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    let high = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min)).map_err(errno)?;
    // SAFETY: a fresh fd from F_DUPFD_CLOEXEC, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// Closes every fd of the process except those in `keep` (sorted in place).
fn close_fds_except(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: u32 = 0;
    for &k in keep.iter() {
        let Ok(k) = u32::try_from(k) else { continue };
        if k > next {
            close_range(next, k - 1);
        }
        next = next.max(k + 1);
    }
    close_range(next, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes fds; callers own every fd in the range
    // (in a freshly forked single-threaded child, all fds are the process's).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        // Old kernel: close one by one up to the soft limit.
        let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(1 << 20) as u32)
            .unwrap_or(1024);
        for fd in first..=last.min(max) {
            // SAFETY: as above.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// Changes the environment of this process: removes `remove`, sets `set`.
///
/// # Safety
/// The process must have exactly one thread (a fork-server child).
pub(crate) unsafe fn child_apply_env(remove: &[Vec<u8>], set: &[(Vec<u8>, Vec<u8>)]) {
    for k in remove {
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
            continue;
        }
        // SAFETY: single-threaded, per the caller's contract.
        unsafe { std::env::remove_var(OsStr::from_bytes(k)) };
    }
    for (k, v) in set {
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
            continue;
        }
        // SAFETY: single-threaded, per the caller's contract.
        unsafe { std::env::set_var(OsStr::from_bytes(k), OsStr::from_bytes(v)) };
    }
}

/// `chdir(path)`.
pub(crate) fn chdir(path: &[u8]) -> io::Result<()> {
    nix::unistd::chdir(OsStr::from_bytes(path)).map_err(errno)
}

/// `execvp(program, argv)`; returns only on failure.
pub(crate) fn execvp(program: &[u8], argv: &[Vec<u8>]) -> io::Error {
    let Ok(prog) = CString::new(program) else {
        return io::Error::from_raw_os_error(libc::EINVAL);
    };
    let args: Result<Vec<CString>, _> = argv.iter().map(|a| CString::new(a.as_slice())).collect();
    let Ok(args) = args else {
        return io::Error::from_raw_os_error(libc::EINVAL);
    };
    match nix::unistd::execvp(&prog, &args) {
        Ok(never) => match never {},
        Err(e) => errno(e),
    }
}

/// `_exit(code)`: no atexit handlers, no stdio flush (for a failed child set-up).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// The base address of the object (executable or shared library) that
/// contains `addr`, as the dynamic loader knows it.
fn object_base(addr: usize) -> Option<usize> {
    // SAFETY: Dl_info is plain data; zeroed is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and fills `info`.
    let r = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) };
    (r != 0 && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// Whether `addr` lies in the main executable (not in a shared library
/// or anywhere else).
pub(crate) fn in_main_executable(addr: usize) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static MAIN_BASE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    // The last address found in it: a program starts the same few targets
    // again and again, and `dladdr` walks the loader's tables each time.
    static LAST_IN: AtomicUsize = AtomicUsize::new(0);
    if addr != 0 && LAST_IN.load(Relaxed) == addr {
        return true;
    }
    let main = *MAIN_BASE.get_or_init(|| {
        // SAFETY: getauxval has no preconditions; AT_PHDR is the address of
        // the main executable's program headers, which lie in its image.
        let phdr = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
        if phdr == 0 { None } else { object_base(phdr) }
    });
    let inside = main.is_some() && object_base(addr) == main;
    if inside {
        LAST_IN.store(addr, Relaxed);
    }
    inside
}

/// The socket pair between the server and one warm child: the server's
/// end non-blocking (its loop never waits on it), the child's blocking
/// (it waits there for its request). Both close-on-exec.
pub(crate) fn warm_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (server, child) = seqpacket_pair()?;
    let flags = nix::fcntl::fcntl(server.as_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(errno)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(server.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(errno)?;
    Ok((server, child))
}

/// `prctl(PR_SET_PDEATHSIG, signal)`: `signal` (0: none) is sent to this
/// process when the thread that forked it exits.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one integer argument; the rest are unused.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getppid()`.
pub(crate) fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// Closes every fd from 3 up except `keep` (a warm child, which keeps the
/// server's stdio until its request brings its own).
pub(crate) fn close_fds_above_stdio_except(keep: [BorrowedFd<'_>; 2]) {
    let mut kept = [0, 1, 2, keep[0].as_raw_fd(), keep[1].as_raw_fd()];
    close_fds_except(&mut kept);
}

/// A blocking, close-on-exec eventfd at 0: the kick a warm child waits on.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags and returns a new fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `value` to eventfd `fd` (wakes whoever waits for it).
pub(crate) fn kick(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    let one = value.to_ne_bytes();
    // SAFETY: writes 8 bytes from a buffer we own to an fd we borrow.
    let r = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The count of eventfd `fd` if it is not 0; never waits. The count is
/// put back: a child that waits for it to be non-zero must not miss it.
pub(crate) fn kicked(fd: BorrowedFd<'_>) -> Option<u64> {
    if !matches!(wait_readable(fd, Some(Duration::ZERO)), Ok(true)) {
        return None;
    }
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a buffer we own from an fd we borrow; it
    // is readable (non-zero), so the read does not block.
    let r = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    if r != 8 {
        return None;
    }
    let count = u64::from_ne_bytes(v);
    // A waiter that looked in between saw 0 and sleeps on: this wakes it.
    let _ = kick(fd, count);
    Some(count)
}

/// The name a warm child carries while it waits (`/proc/<pid>/comm`, what
/// `ps` and `top` show), so that it can be told from the server's other
/// children; it takes the server's name back when it gets its request.
pub(crate) const WARM_NAME: &[u8; 15] = b"forkserver-warm";

/// This thread's name (`PR_GET_NAME`): 16 bytes, NUL-padded.
pub(crate) fn thread_name() -> [u8; 16] {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer given.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    name
}

/// Sets this thread's name (`PR_SET_NAME`) from 16 NUL-padded bytes.
pub(crate) fn set_thread_name(name: &[u8; 16]) {
    // SAFETY: PR_SET_NAME reads at most 16 bytes and stops at a NUL; the
    // last byte of a name made here or by PR_GET_NAME is NUL.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// Device and inode of the directory `path` names now.
pub(crate) fn dir_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Which directory `path` names, down to the mount it is reached through:
/// its device, inode and mount id (`statx`), or `None` when it cannot be
/// told (no such directory, or a kernel without mount ids). Two equal
/// answers are the same directory reached the same way, so `getcwd` in it
/// gives the same path.
pub(crate) fn dir_identity(path: &std::ffi::CStr) -> Option<(u64, u64, u64)> {
    // SAFETY: statx only writes into the zeroed struct we own.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let want = libc::STATX_INO | libc::STATX_MNT_ID;
    // SAFETY: a NUL-terminated path, and a buffer of the right type.
    let r = unsafe { libc::statx(libc::AT_FDCWD, path.as_ptr(), 0, want, &raw mut stx) };
    if r != 0 || stx.stx_mask & want != want {
        return None;
    }
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    Some((dev, stx.stx_ino, stx.stx_mnt_id))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::poll_timeout_ms;

    #[test]
    fn one_meaning_of_each_timeout() {
        assert_eq!(poll_timeout_ms(None), -1);
        assert_eq!(poll_timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(poll_timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(poll_timeout_ms(Some(Duration::from_micros(300))), 1);
        assert_eq!(poll_timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(poll_timeout_ms(Some(Duration::from_micros(7_001))), 8);
        assert_eq!(poll_timeout_ms(Some(Duration::MAX)), i32::MAX);
    }

    #[test]
    fn stat_thread_count_parses_odd_command_names() {
        let line = b"42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0 123 4096 10";
        assert_eq!(super::parse_stat_threads(line), Some(7));
        assert_eq!(super::parse_stat_threads(b"42 (x"), None);
        assert_eq!(super::parse_stat_threads(b"42 (x) S 1"), None);
        assert!(super::thread_count().unwrap() >= 1);
    }

    #[test]
    fn sealed_memfd_is_mapped_only_at_its_real_size() {
        use std::os::fd::AsFd;
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let fd = super::sealed_memfd("t", &body).unwrap();
        let map = super::map_sealed_memfd(fd.as_fd(), body.len()).unwrap();
        assert_eq!(&*map, &body[..]);
        drop(fd);
        assert_eq!(&*map, &body[..], "the mapping outlives the fd");
        drop(map);

        // A length that lies, either way, is refused and names both sizes.
        let fd = super::sealed_memfd("t", b"x").unwrap();
        for len in [0, 2, 16 << 20] {
            let e = super::map_sealed_memfd(fd.as_fd(), len).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(
                e.to_string()
                    .contains(&format!("holds 1 bytes, {len} announced")),
                "{e}"
            );
        }
        assert_eq!(super::read_sealed_memfd(&fd, 1).unwrap(), b"x");
        let e = super::read_sealed_memfd(&fd, 16 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);

        // Empty: nothing to map, an empty view.
        let fd = super::sealed_memfd("t", b"").unwrap();
        assert!(super::map_sealed_memfd(fd.as_fd(), 0).unwrap().is_empty());

        // Not sealed (a sender could still change it): refused.
        let fd =
            nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
        super::write_all(fd.as_fd(), b"x").unwrap();
        let e = super::map_sealed_memfd(fd.as_fd(), 1).unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");
    }

    #[test]
    fn environ_is_walked_in_place() {
        use std::os::unix::ffi::OsStrExt;
        let mut want: Vec<Vec<u8>> = std::env::vars_os()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect();
        let mut got = Vec::new();
        assert!(super::environ_all(&mut |e| {
            // What `vars_os` would skip: no `=` past the first byte.
            if e.iter().skip(1).any(|b| *b == b'=') {
                got.push(e.to_vec());
            }
            true
        }));
        want.sort();
        got.sort();
        assert_eq!(got, want);
        let mut calls = 0;
        assert!(!super::environ_all(&mut |_| {
            calls += 1;
            false
        }));
        assert!(calls <= 1, "stops at the first no");
    }
}
