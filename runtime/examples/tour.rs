//! A tour of `mproc` in a multithreaded program.
//!
//! 1. Each start method runs a function in a child and carries its return
//!    value — and a panic message — back to the parent.
//! 2. The deadlock proof: another thread holds a global lock while a child
//!    is started whose target takes that lock. Under `fork` the child
//!    inherits the lock in its held state and hangs (we give up after a
//!    timeout and kill it); under `spawn` and `forkserver` it completes.
//! 3. Spawn-to-join latency per method, from a small parent and from a
//!    parent holding 1 GiB of touched heap: `fork` grows with the heap, the
//!    fork server does not.
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mproc::{Error, get_context};

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

static GLOBAL: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn describe(x: u64) -> String {
    format!(
        "{x} squared is {}, computed in pid {}",
        x * x,
        std::process::id()
    )
}

fn fail(_: ()) -> u64 {
    panic!("the child gives up")
}

fn take_global_lock(_: ()) -> usize {
    GLOBAL.lock().map(|g| g.len()).unwrap_or(0)
}

fn noop(x: u64) -> u64 {
    x
}

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn measure(method: &str, n: usize) -> mproc::Result<(Duration, Duration)> {
    let ctx = get_context(method)?;
    ctx.process(noop, 0).start()?.join()?; // warm-up
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let r = ctx.process(noop, i).start()?.join()?;
        samples.push(t.elapsed());
        assert_eq!(r, i);
    }
    Ok(p50_p99(samples))
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;

    // A busy multithreaded parent: 8 threads that take the global lock and
    // allocate, all the time.
    static STOP: AtomicBool = AtomicBool::new(false);
    let workers: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    if let Ok(mut g) = GLOBAL.lock() {
                        g.push(i);
                        if g.len() > 1000 {
                            g.clear();
                        }
                    }
                    drop(std::hint::black_box(vec![0u8; 4096]));
                }
            })
        })
        .collect();
    println!(
        "parent {} runs {} threads\n",
        std::process::id(),
        forkserver::thread_count()?
    );

    println!("== 1. return values and panics carried back");
    for m in METHODS {
        let ctx = get_context(m)?;
        let answer = ctx.process(describe, 12).start()?.join()?;
        println!("{m:>10}: {answer}");
        let mut p = ctx.process(fail, ()).start()?;
        match p.join() {
            Err(Error::Panicked { message }) => {
                println!(
                    "{m:>10}: child panicked: {message:?}, exitcode {:?}",
                    p.exitcode()
                )
            }
            other => println!("{m:>10}: unexpected {other:?}"),
        }
    }

    println!("\n== 2. a child whose target takes a lock another thread holds");
    STOP.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let guard = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    for m in METHODS {
        let mut p = get_context(m)?.process(take_global_lock, ()).start()?;
        match p.join_timeout(Duration::from_secs(2)) {
            Ok(_) => println!("{m:>10}: completed (fresh process, lock free)"),
            Err(Error::Timeout) => {
                p.kill()?;
                let _ = p.join_timeout(Duration::from_secs(5));
                println!(
                    "{m:>10}: DEADLOCKED on the inherited lock; killed after 2 s (exitcode {:?})",
                    p.exitcode()
                );
            }
            Err(e) => println!("{m:>10}: {e}"),
        }
    }
    drop(guard);

    println!("\n== 3. start + join latency (p50 / p99)");
    let small: Vec<_> = METHODS
        .iter()
        .map(|m| measure(m, if *m == "spawn" { 50 } else { 300 }))
        .collect::<mproc::Result<_>>()?;
    let heap: Vec<u8> = {
        let mut v = vec![0u8; 1 << 30];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        v
    };
    let big: Vec<_> = METHODS
        .iter()
        .map(|m| measure(m, if *m == "forkserver" { 300 } else { 20 }))
        .collect::<mproc::Result<_>>()?;
    std::hint::black_box(&heap);
    println!(
        "{:>10} | {:>21} | {:>21}",
        "method", "small parent", "1 GiB touched heap"
    );
    for (i, m) in METHODS.iter().enumerate() {
        println!(
            "{m:>10} | {:>9.0?} / {:>9.0?} | {:>9.0?} / {:>9.0?}",
            small[i].0, small[i].1, big[i].0, big[i].1
        );
    }
    Ok(())
}
