//! Lock and shared-value throughput against a raw futex lock and CPython,
//! all measured in this one run.
//!
//! `cargo bench -p mproc --bench sync`
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mproc::{Barrier, Lock, Value, get_context};

/// The floor: Drepper's three-state futex mutex, process-private memory.
struct FutexLock(AtomicU32);

impl FutexLock {
    #[inline]
    fn lock(&self) {
        if self
            .0
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
    }
    #[cold]
    fn lock_slow(&self) {
        while self.0.swap(2, Ordering::Acquire) != 0 {
            // SAFETY: a valid futex word; FUTEX_WAIT on a private address.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    2,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }
    #[inline]
    fn unlock(&self) {
        if self.0.swap(0, Ordering::Release) == 2 {
            // SAFETY: a valid futex word.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.0.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                )
            };
        }
    }
}

const OPS: u32 = 20_000_000;

fn best_ns(mut f: impl FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / f64::from(OPS)
        })
        .fold(f64::INFINITY, f64::min)
}

const PER_CHILD: u64 = 5_000_000;

fn hammer(args: (Value<u64>, Barrier)) {
    let (v, start) = args;
    start.wait_timeout(Duration::from_secs(60)).expect("start");
    for _ in 0..PER_CHILD {
        *v.get_lock().expect("lock") += 1;
    }
}

fn value_rate(method: &str) -> mproc::Result<f64> {
    let ctx = get_context(method)?;
    let v = Value::new(0u64)?;
    let start = Barrier::new(3)?;
    let mut ps = Vec::new();
    for _ in 0..2 {
        ps.push(ctx.process(hammer, (v.clone(), start.clone())).start()?);
    }
    start
        .wait_timeout(Duration::from_secs(60))
        .map_err(|_| mproc::Error::Timeout)?;
    let t = Instant::now();
    for p in &mut ps {
        p.join_timeout(Duration::from_secs(120))?;
    }
    let el = t.elapsed().as_secs_f64();
    assert_eq!(v.get(), 2 * PER_CHILD);
    Ok((2 * PER_CHILD) as f64 / el)
}

const PY: &str = r#"
import multiprocessing as mp, time
def lock_ns():
    l = mp.Lock(); n = 1_000_000
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            l.acquire(); l.release()
        best = min(best, (time.perf_counter() - t) / n * 1e9)
    return best
def work(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
def value_rate():
    v = mp.Value('q', 0); n = 200_000
    ps = [mp.Process(target=work, args=(v, n)) for _ in range(2)]
    t = time.perf_counter()
    for p in ps: p.start()
    for p in ps: p.join()
    assert v.value == 2 * n
    return 2 * n / (time.perf_counter() - t)
if __name__ == "__main__":
    mp.set_start_method("fork")
    print(lock_ns()); print(value_rate())
"#;

fn cpython() -> Option<(f64, f64)> {
    let out = std::process::Command::new("python3")
        .args(["-c", PY])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines().map(|l| l.trim().parse::<f64>());
    Some((lines.next()?.ok()?, lines.next()?.ok()?))
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let futex = FutexLock(AtomicU32::new(0));
    let raw = best_ns(|| {
        for _ in 0..OPS {
            futex.lock();
            black_box(&futex);
            futex.unlock();
        }
    });
    let lock = Lock::new()?;
    let ours = best_ns(|| {
        for _ in 0..OPS {
            let g = lock.acquire().expect("uncontended");
            black_box(&g);
            drop(g);
        }
    });
    let fork_rate = value_rate("fork")?;
    let fs_rate = value_rate("forkserver")?;
    let py = cpython();

    println!("| what | mproc | raw futex (same run) | CPython 3 (same run) |");
    println!("|---|---|---|---|");
    let py_lock = py.map_or("n/a".into(), |(l, _)| format!("{l:.1} ns"));
    let py_val = py.map_or("n/a".into(), |(_, v)| format!("{:.2} M/s", v / 1e6));
    println!(
        "| uncontended Lock acquire+release | {ours:.2} ns ({:.2}x futex) | {raw:.2} ns | {py_lock} |",
        ours / raw
    );
    println!(
        "| Value += 1 under its lock, 2 processes (fork) | {:.1} M/s | | {py_val} |",
        fork_rate / 1e6
    );
    println!(
        "| Value += 1 under its lock, 2 processes (forkserver) | {:.1} M/s | | |",
        fs_rate / 1e6
    );
    Ok(())
}
