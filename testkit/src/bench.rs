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
/// until the child runs (its own [`mono_ns`] stamp, written into a pipe).
/// No request, no set-up: one wake-up of a waiting process, which any warm
/// child pays. With `pass_fds` the byte carries this process's stdio and the
/// stamp pipe by `SCM_RIGHTS`, which the child `dup2`s into slots 0–3 before
/// it closes the rest (`close_range`) and stamps: the least a warm child
/// pays that starts with its requester's stdio and fds.
pub struct BareWarm {
    pass_fds: bool,
    /// The waiting child: its pid, our end of its socket, our end of its
    /// stamp pipe and the writing end (to pass).
    waiting: Option<Waiting>,
}

struct Waiting {
    pid: i32,
    sock: std::os::fd::OwnedFd,
    stamp: std::io::PipeReader,
    stamp_w: std::io::PipeWriter,
}

impl BareWarm {
    /// No child yet: the first [`BareWarm::start`] forks one first.
    pub fn new(pass_fds: bool) -> Self {
        BareWarm {
            pass_fds,
            waiting: None,
        }
    }

    /// Forks the next waiting child.
    #[allow(unsafe_code)]
    fn fork_next(&mut self) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let (stamp, stamp_w) = std::io::pipe().expect("pipe");
        let pass_fds = self.pass_fds;
        // SAFETY: the child calls only recvmsg, dup2, close, close_range,
        // clock_gettime (vDSO), write and _exit, all async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain syscalls on our own fds and stack buffers; the
            // control buffer is aligned and as large as we say.
            unsafe {
                // Our copy of the other end would hide the end-of-file that
                // tells us to exit unwoken.
                libc::close(ours.as_raw_fd());
                let mut byte = 0u8;
                let mut iov = libc::iovec {
                    iov_base: (&raw mut byte).cast(),
                    iov_len: 1,
                };
                let mut cmsg = [0u64; 8];
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cmsg.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
                let n = libc::recvmsg(theirs.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
                if n != 1 {
                    libc::_exit(0);
                }
                let mut out = stamp_w.as_raw_fd();
                if pass_fds {
                    let c = libc::CMSG_FIRSTHDR(&raw const msg);
                    if c.is_null() {
                        libc::_exit(1);
                    }
                    let fds = libc::CMSG_DATA(c).cast::<i32>();
                    for slot in 0..4 {
                        libc::dup2(fds.add(slot).read_unaligned(), slot as i32);
                    }
                    libc::close_range(4, u32::MAX, 0);
                    out = 3;
                }
                let t = mono_ns();
                libc::write(out, (&raw const t).cast(), 8);
                libc::_exit(0)
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        self.waiting = Some(Waiting {
            pid,
            sock: ours,
            stamp,
            stamp_w,
        });
    }

    /// Wakes the waiting child (forking one first if none waits), returns
    /// the time from the wake-up until it ran, reaps it and forks the next.
    #[allow(unsafe_code)]
    pub fn start(&mut self) -> Duration {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        if self.waiting.is_none() {
            self.fork_next();
        }
        let w = self.waiting.take().expect("a waiting child");
        let fds = [0, 1, 2, w.stamp_w.as_raw_fd()];
        let t0 = mono_ns();
        let byte = 1u8;
        let mut iov = libc::iovec {
            iov_base: (&raw const byte).cast_mut().cast(),
            iov_len: 1,
        };
        let mut cmsg = [0u64; 4];
        // SAFETY: an all-zero msghdr is valid; we point it at our iovec and,
        // with fds, at a control buffer holding one SCM_RIGHTS message of
        // four fds (16 bytes of header and 16 of fds: 32 bytes, ours).
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            if self.pass_fds {
                msg.msg_control = cmsg.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(16) as _;
                let c = libc::CMSG_FIRSTHDR(&raw const msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(16) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), 4);
            }
            libc::sendmsg(w.sock.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL)
        };
        assert_eq!(sent, 1, "send: {}", std::io::Error::last_os_error());
        drop(w.stamp_w);
        let mut b = [0u8; 8];
        (&w.stamp).read_exact(&mut b).expect("the child's stamp");
        let mut status = 0;
        // SAFETY: `pid` is our own unreaped child; `status` is a valid pointer.
        assert_eq!(unsafe { libc::waitpid(w.pid, &mut status, 0) }, w.pid);
        self.fork_next();
        Duration::from_nanos(u64::from_ne_bytes(b).saturating_sub(t0))
    }
}

impl Drop for BareWarm {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some(w) = self.waiting.take() {
            // Killed, not sent away: a copy of our end of its socket may live
            // on in another child forked meanwhile, hiding the end-of-file.
            let mut status = 0;
            // SAFETY: `pid` is our own unreaped child.
            unsafe {
                libc::kill(w.pid, libc::SIGKILL);
                libc::waitpid(w.pid, &mut status, 0)
            };
        }
    }
}
