//! What the benchmarks share: a monotonic stamp a forked child may take,
//! percentiles, and sampling in rotating, spaced blocks.

use std::time::{Duration, Instant};

/// `CLOCK_MONOTONIC` in nanoseconds (the vDSO's: no system call, and
/// async-signal-safe, so a raw `fork` child may call it).
#[allow(unsafe_code)]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into ours.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Median and 99th percentile of a sample, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// The median, µs.
    pub p50: f64,
    /// The 99th percentile, µs.
    pub p99: f64,
    /// The sample size.
    pub n: usize,
}

/// The [`Stats`] of `v` (which must not be empty).
pub fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let at = |q: usize| v[((n * q) / 100).min(n - 1)].as_secs_f64() * 1e6;
    Stats {
        p50: at(50),
        p99: at(99),
        n,
    }
}

/// Samples each of `fs` `n` times, in blocks of `block` samples of one
/// function at a time (rotating), each sample starting `gap` after the
/// previous one started (at once if it took longer): the spacing each sees
/// is `gap`, and slow drifts of the machine's load hit all. A first block
/// of each is thrown away.
pub fn spaced(
    n: usize,
    block: usize,
    gap: Duration,
    fs: &mut [&mut dyn FnMut() -> Duration],
) -> Vec<Stats> {
    let mut v: Vec<Vec<Duration>> = fs.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut next = Instant::now();
    let mut done = 0;
    let mut round = 0;
    while done < n {
        let take = block.min(n - done);
        for (i, f) in fs.iter_mut().enumerate() {
            for _ in 0..take {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next = Instant::now() + gap;
                let d = f();
                if round > 0 {
                    v[i].push(d);
                }
            }
        }
        if round > 0 {
            done += take;
        }
        round += 1;
    }
    v.into_iter().map(stats).collect()
}

/// Raw `fork`: the time from the call until the child runs (its own
/// [`mono_ns`] stamp, written into a pipe), the child reaped after. The
/// floor of every "until the child runs" row.
#[allow(unsafe_code)]
pub fn raw_fork_until_child() -> Duration {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (mut r, w) = std::io::pipe().expect("pipe");
    let t0 = mono_ns();
    // SAFETY: the child calls only clock_gettime (vDSO), write and _exit,
    // all async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let t = mono_ns();
        // SAFETY: plain syscalls on our own fd and stack buffer.
        unsafe {
            libc::write(w.as_raw_fd(), (&raw const t).cast(), 8);
            libc::_exit(0)
        }
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    drop(w);
    let mut b = [0u8; 8];
    r.read_exact(&mut b).expect("the child's stamp");
    let mut status = 0;
    // SAFETY: `pid` is our own unreaped child; `status` is a valid pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    Duration::from_nanos(u64::from_ne_bytes(b).saturating_sub(t0))
}

/// The floor under any pre-forked ("warm") child: a child forked ahead of
/// time that blocks in `recvmsg` on a `SOCK_SEQPACKET` socket;
/// [`BareWarm::start`] sends it one byte and returns the time from the send
/// until the child runs (its own [`mono_ns`] stamp). No request, no set-up:
/// one wake-up of a waiting process, which any warm child pays. With
/// `pass_fds` the byte carries this process's stdio and a stamp pipe by
/// `SCM_RIGHTS`, which the child `dup2`s into slots 0–3 before it closes
/// the rest (`close_range`) and stamps into slot 3: the least a warm child
/// pays that starts with its requester's stdio and fds.
///
/// The waiting children are forked by a helper process forked once, not by
/// this process: a child forked here would share this process's pages, and
/// each page this process wrote while it waited (the other methods' samples
/// too) would be copied.
pub struct BareWarm {
    pass_fds: bool,
    /// Our end of the helper's socket: one byte asks for the next child,
    /// which comes back as our end of its socket.
    helper: Option<std::os::fd::OwnedFd>,
    helper_pid: i32,
    /// Our end of the socket of the child waiting for us.
    waiting: Option<std::os::fd::OwnedFd>,
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET)`, close-on-exec.
#[allow(unsafe_code)]
pub fn seqpacket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two fds into our array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds from socketpair, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
}

/// Sends one byte on `sock` with `fds` (none, or up to four) attached.
#[allow(unsafe_code)]
fn send_byte(sock: i32, fds: &[i32]) -> isize {
    let byte = 1u8;
    let mut iov = libc::iovec {
        iov_base: (&raw const byte).cast_mut().cast(),
        iov_len: 1,
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; we point it at our iovec and,
    // with fds, at a control buffer holding one SCM_RIGHTS message of at
    // most four fds (16 bytes of header and 16 of fds: 32 bytes, ours).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let n = (fds.len().min(4) * 4) as u32;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(n) as _;
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(n) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<i32>(),
                fds.len().min(4),
            );
        }
        libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL)
    }
}

/// Receives one byte from `sock` (blocking) and the fds that came with it
/// into `fds`; returns how many bytes came (0 at end-of-file) and how many
/// fds.
#[allow(unsafe_code)]
fn recv_byte(sock: i32, fds: &mut [i32; 4]) -> (isize, usize) {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; it points at our iovec and our
    // control buffer, whose size it gives; the fds are read within the
    // control message the kernel wrote.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        let n = libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC);
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if n <= 0 || c.is_null() {
            return (n, 0);
        }
        let count =
            (((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / 4).min(4);
        let data = libc::CMSG_DATA(c).cast::<i32>();
        for (i, fd) in fds.iter_mut().enumerate().take(count) {
            *fd = data.add(i).read_unaligned();
        }
        (n, count)
    }
}

impl BareWarm {
    /// Forks the helper that forks the waiting children.
    #[allow(unsafe_code)]
    pub fn new(pass_fds: bool) -> Self {
        use std::os::fd::AsRawFd;
        let (ours, theirs) = seqpacket_pair();
        // SAFETY: the helper and its children call only async-signal-safe
        // functions (sigaction, close_range, read, socketpair, fork, sendmsg,
        // recvmsg, dup2, clock_gettime (vDSO), write, _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain syscalls on our own fds and stack buffers.
            unsafe {
                // Children reaped by the kernel; nothing of ours but `theirs`.
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                let ctl = theirs.as_raw_fd();
                libc::dup2(ctl, 3);
                libc::close_range(4, u32::MAX, 0);
                let ctl = 3;
                let mut b = 0u8;
                while libc::read(ctl, (&raw mut b).cast(), 1) == 1 {
                    let (parent_end, child_end) = seqpacket_pair();
                    let w = libc::fork();
                    if w == 0 {
                        libc::close(ctl);
                        libc::close(parent_end.as_raw_fd());
                        let sock = child_end.as_raw_fd();
                        let mut fds = [-1i32; 4];
                        let (n, got) = recv_byte(sock, &mut fds);
                        if n != 1 {
                            libc::_exit(0);
                        }
                        if pass_fds {
                            if got != 4 {
                                libc::_exit(1);
                            }
                            for (slot, fd) in fds.iter().enumerate() {
                                libc::dup2(*fd, slot as i32);
                            }
                            libc::close_range(4, u32::MAX, 0);
                            let t = mono_ns();
                            libc::write(3, (&raw const t).cast(), 8);
                        } else {
                            let t = mono_ns();
                            libc::write(sock, (&raw const t).cast(), 8);
                        }
                        libc::_exit(0)
                    }
                    send_byte(ctl, &[parent_end.as_raw_fd()]);
                }
                libc::_exit(0)
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        BareWarm {
            pass_fds,
            helper: Some(ours),
            helper_pid: pid,
            waiting: None,
        }
    }

    /// Asks the helper for the next waiting child.
    #[allow(unsafe_code)]
    fn next_child(&mut self) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let h = self.helper.as_ref().expect("the helper lives").as_raw_fd();
        let b = 1u8;
        // SAFETY: a one-byte write from our buffer to our socket.
        assert_eq!(unsafe { libc::write(h, (&raw const b).cast(), 1) }, 1);
        let mut fds = [-1i32; 4];
        let (n, got) = recv_byte(h, &mut fds);
        assert!(n == 1 && got == 1, "the bare helper sent no child");
        // SAFETY: a fresh fd from SCM_RIGHTS, owned by nobody else.
        self.waiting = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    }

    /// Wakes the waiting child (getting one first if none waits), returns
    /// the time from the wake-up until it ran, and gets the next.
    #[allow(unsafe_code)]
    pub fn start(&mut self) -> Duration {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        if self.waiting.is_none() {
            self.next_child();
        }
        let sock = self.waiting.take().expect("a waiting child");
        let mut stamp = [0u8; 8];
        if self.pass_fds {
            let (mut r, w) = std::io::pipe().expect("pipe");
            let t0 = mono_ns();
            let sent = send_byte(sock.as_raw_fd(), &[0, 1, 2, w.as_raw_fd()]);
            assert_eq!(sent, 1, "send: {}", std::io::Error::last_os_error());
            drop(w);
            r.read_exact(&mut stamp).expect("the child's stamp");
            self.next_child();
            return Duration::from_nanos(u64::from_ne_bytes(stamp).saturating_sub(t0));
        }
        let t0 = mono_ns();
        let sent = send_byte(sock.as_raw_fd(), &[]);
        assert_eq!(sent, 1, "send: {}", std::io::Error::last_os_error());
        // SAFETY: reads up to 8 bytes into our buffer from our socket.
        let n = unsafe { libc::read(sock.as_raw_fd(), stamp.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8, "the child's stamp");
        self.next_child();
        Duration::from_nanos(u64::from_ne_bytes(stamp).saturating_sub(t0))
    }
}

impl Drop for BareWarm {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // The waiting child sees end-of-file and exits (its helper reaps
        // it); so does the helper, which we reap.
        drop(self.waiting.take());
        drop(self.helper.take());
        let mut status = 0;
        // SAFETY: `helper_pid` is our own unreaped child.
        unsafe { libc::waitpid(self.helper_pid, &mut status, 0) };
    }
}
