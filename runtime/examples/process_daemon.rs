//! A daemonic child ends when the main program ends.
//!
//! Port of the seeds' "守护进程" example: the parent starts a daemonic child
//! that would run for a long time, prints "end" and returns; dropping the
//! runtime terminates the daemon instead of waiting for it.
use std::time::{Duration, Instant};

fn process_task(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
    println!("==============: daemon finished (never printed)");
}

fn main() -> mproc::Result<()> {
    let rt = mproc::init()?;
    let start = Instant::now();
    let p = mproc::default_context()
        .process(process_task, 60)
        .daemon(true)
        .start()?;
    println!("daemon {} started (daemon = {})", p.pid(), p.daemon());
    println!("--------end, took {:?}", start.elapsed());
    drop(rt); // terminates daemonic children, joins the others
    println!("daemon exitcode after exit handling: {:?}", p.exitcode());
    Ok(())
}
