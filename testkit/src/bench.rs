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
