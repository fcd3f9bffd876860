//! Results of several children collected through one Queue.
use std::collections::HashMap;

use mproc::Queue;

fn process_task(arg: (u64, Queue<HashMap<u64, u64>>)) {
    let (data, queue) = arg;
    println!(
        "task {data} in process {}, parent {:?}",
        std::process::id(),
        mproc::parent_process().map(|p| p.pid)
    );
    queue
        .put(HashMap::from([(data, data.pow(3))]))
        .expect("put");
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let queue = Queue::new()?;
    let mut tasks = Vec::new();
    for v in [100, 200, 300] {
        tasks.push(ctx.process(process_task, (v, queue.clone())).start()?);
    }
    // Joining before reading is safe: a put never waits for a reader here.
    for t in &mut tasks {
        t.join()?;
    }
    while !queue.empty() {
        println!("{:?}", queue.get()?);
    }
    Ok(())
}
