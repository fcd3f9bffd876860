//! Producer/consumer through a Queue, ended by a `None` marker (the seeds'
//! `queue.put(None)` after joining the producer).
use mproc::Queue;

fn consumer(queue: Queue<Option<String>>) {
    while let Some(task) = queue.get().expect("get") {
        println!("{task}");
    }
}

fn producer(queue: Queue<Option<String>>) {
    for i in 0..5 {
        queue.put(Some(format!("work: {i}"))).expect("put");
    }
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let queue = Queue::new()?;
    let mut c = ctx.process(consumer, queue.clone()).start()?;
    let mut p = ctx.process(producer, queue.clone()).start()?;
    p.join()?; // every item is in the queue before the end marker
    queue.put(None)?;
    c.join()?;
    Ok(())
}
