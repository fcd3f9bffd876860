//! Several workers at once, each reporting its pid and its parent's pid.
//!
//! Port of the seeds' "多进程实现方式1": start one process per datum, then
//! join them all.
fn process_task(data: u64) -> u64 {
    let parent = mproc::parent_process().map(|p| p.pid).unwrap_or(0);
    println!("task {data}: pid {}, parent {parent}", std::process::id());
    let mut res = data.pow(3);
    let mut steps = 0;
    while res > 0 {
        res = std::hint::black_box(res - 1);
        steps += 1;
    }
    println!("task {data} done in pid {}", std::process::id());
    steps
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    println!("main process {}", std::process::id());
    let ctx = mproc::default_context();
    let mut tasks = Vec::new();
    for v in [100, 200, 300] {
        tasks.push(ctx.process(process_task, v).start()?);
    }
    for mut t in tasks {
        let steps = t.join()?;
        println!("{} counted {steps} steps", t.name());
    }
    Ok(())
}
