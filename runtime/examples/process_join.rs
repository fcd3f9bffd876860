//! `join()` waits for a child; without it the parent goes on at once.
//!
//! Port of the seeds' "不使用join / 使用join" example: the same CPU-bound task
//! once without `join` (the parent prints "end" first) and once with it (the
//! child's line comes first).
use std::time::Instant;

fn process_task(data: u64) {
    let mut res = data.pow(3);
    while res > 0 {
        res = std::hint::black_box(res - 1);
    }
    println!(
        "==============: child finished (pid {})",
        std::process::id()
    );
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();

    println!("-- without join");
    let start = Instant::now();
    let mut p = ctx.process(process_task, 300).start()?;
    println!("--------end, took {:?}", start.elapsed());
    p.join()?; // still reap it before the next part (no zombie left)

    println!("-- with join");
    let start = Instant::now();
    let mut p = ctx.process(process_task, 300).start()?;
    p.join()?;
    println!("--------end, took {:?}", start.elapsed());
    Ok(())
}
