//! `Semaphore(3)` admits three of five processes at a time.
//!
//! Port of the seeds' "信号量 Semaphore" example: five CPU-bound tasks, at
//! most three inside the critical section at once. A shared `Value` counts
//! who is inside, so the output shows the limit holding.
use mproc::{Semaphore, Value};

fn process_task(args: (u64, Semaphore, Value<u32>)) -> u64 {
    let (data, sem, inside) = args;
    println!("--------data: {data} enter work");
    let _unit = sem.acquire().expect("a semaphore wait cannot fail");
    let now = {
        let mut n = inside.get_lock().expect("no holder died");
        *n += 1;
        *n
    };
    println!("data: {data} start work ({now} inside)");
    let mut res = data.pow(3);
    while res > 0 {
        res = std::hint::black_box(res - 1);
    }
    *inside.get_lock().expect("no holder died") -= 1;
    println!("data: {data} done work");
    data.pow(3)
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let sem = Semaphore::new(3)?;
    let inside = Value::new(0u32)?;
    let mut tasks = Vec::new();
    for data in [100, 200, 300, 400, 500] {
        tasks.push(
            ctx.process(process_task, (data, sem.clone(), inside.clone()))
                .start()?,
        );
    }
    for t in &mut tasks {
        t.join()?;
    }
    Ok(())
}
