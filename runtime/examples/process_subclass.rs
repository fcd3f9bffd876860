//! The "subclass `Process` and override `run`" style, in Rust.
//!
//! Port of the seeds' "多进程实现方式2". Rust has no inheritance: the state
//! the Python subclass keeps in `self` is a serde struct, and `run` is a
//! method called by a small `fn` that the child executes.
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct MyProcess {
    data: u64,
}

impl MyProcess {
    fn run(self) -> u64 {
        println!("task {}: pid {}", self.data, std::process::id());
        self.data.pow(3)
    }

    /// What `Process.start()` runs in the child.
    fn entry(me: MyProcess) -> u64 {
        me.run()
    }
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let mut tasks = Vec::new();
    for data in [100, 200, 300] {
        tasks.push(ctx.process(MyProcess::entry, MyProcess { data }).start()?);
    }
    for mut t in tasks {
        let cubed = t.join()?;
        println!("{} returned {cubed}", t.name());
    }
    Ok(())
}
