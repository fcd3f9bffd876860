//! `Pool::apply_async`, then `close` and `join`.
//!
//! Port of the seeds' "进程池 2. apply_async" example: the tasks are handed
//! to the pool at once and run side by side; `close` then `join` waits for
//! them (join before close is an error, as in Python).
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
    let pool = mproc::Pool::new(3)?;
    println!("main process {}", std::process::id());
    for v in [100, 200, 300] {
        // Returns at once; the task runs in a worker.
        drop(pool.apply_async(process_task, v)?); // runs even unwatched
    }
    pool.close();
    pool.join()?;
    println!("took {:?}", start.elapsed());
    Ok(())
}
