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
