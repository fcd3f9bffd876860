//! The rest of the seeds' "服务进程对象" table: `Manager().Queue()`,
//! `Barrier()`, `Value()` and `Array()`, all living in the manager process.
//!
//! Three workers wait at a manager barrier so they start together, take
//! jobs from a manager queue, add what they did to a manager value and
//! record it in their slot of a manager array. Slower than shared memory
//! (every access is a round trip to the server, as the seeds' "效率" line
//! says), but the same proxies would work from another host.
use std::time::Duration;

use mproc::manager::{Array, Barrier, Queue, Value};

type Shared = (usize, Barrier, Queue<Option<u64>>, Value<u64>, Array<u64>);

fn worker(args: Shared) {
    let (slot, start, jobs, total, per_worker) = args;
    let arrival = start.wait_timeout(Duration::from_secs(30)).unwrap();
    println!("worker {slot} passed the barrier (arrival {arrival})");
    let mut mine = 0;
    while let Some(n) = jobs.get_timeout(Duration::from_secs(30)).unwrap() {
        total.add(n).unwrap();
        mine += 1;
    }
    per_worker.set(slot as isize, &mine).unwrap();
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let manager = ctx.manager()?;
    let start = manager.barrier(3)?;
    let jobs = manager.queue::<Option<u64>>()?;
    let total = manager.value(&0u64)?;
    let per_worker = manager.array(&[0u64; 3])?;

    let mut ps = Vec::new();
    for slot in 0..3 {
        let args = (
            slot,
            start.clone(),
            jobs.clone(),
            total.clone(),
            per_worker.clone(),
        );
        ps.push(ctx.process(worker, args).start()?);
    }
    for n in 1..=100 {
        jobs.put(Some(n))?;
    }
    for _ in 0..3 {
        jobs.put(None)?; // one stop marker per worker
    }
    for p in &mut ps {
        p.join()?;
    }
    let counts = per_worker.to_vec()?;
    println!("jobs per worker: {counts:?}; total {}", total.get()?);
    assert_eq!(total.get()?, 5050);
    assert_eq!(counts.iter().sum::<u64>(), 100);
    Ok(())
}
