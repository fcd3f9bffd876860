//! `Pool::apply`: synchronous, one task after the other.
//!
//! Port of the seeds' "进程池 1. apply" example: each `apply` waits for its
//! task, so the three tasks run one after another (about 3 × 100 ms).
use std::time::{Duration, Instant};

fn process_task(data: u64) {
    let parent = mproc::parent_process().map(|p| p.pid).unwrap_or(0);
    println!("task {data}: pid {}, parent {parent}", std::process::id());
    let mut res = data.pow(3);
    while res > 0 {
        res = std::hint::black_box(res - 1);
    }
    println!("task {data} done in pid {}", std::process::id());
    std::thread::sleep(Duration::from_millis(100));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _rt = mproc::init()?;
    let start = Instant::now();
    let pool = mproc::Pool::new(mproc::cpu_count())?;
    println!("main process {}", std::process::id());
    for v in [100, 200, 300] {
        // The next task starts only when this one has finished.
        pool.apply(process_task, v)?;
    }
    println!("took {:?}", start.elapsed());
    Ok(())
}
