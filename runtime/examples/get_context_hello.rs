//! Two processes from an explicit context (the seeds' `get_context` example).
use std::time::Duration;

fn hello(name: String) {
    std::thread::sleep(Duration::from_millis(
        100 + u64::from(std::process::id() % 400),
    ));
    println!("hello {name}, I am {}", std::process::id());
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let context = mproc::get_context("spawn")?;
    let mut p1 = context.process(hello, "martin".to_string()).start()?;
    let mut p2 = context.process(hello, "martin".to_string()).start()?;
    p1.join()?;
    p2.join()?;
    Ok(())
}
