//! A child changes its own copy of the data; the parent's stays as it was.
//!
//! Port of the seeds' "数据不共享实例", under every start method (with
//! `fork` the child even starts from a copy of the parent's memory).
fn process_task((mut codes, data): (Vec<u64>, u64)) -> Vec<u64> {
    codes.truncate(3);
    codes[2] = data;
    println!("child {}: codes are now {codes:?}", std::process::id());
    codes
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let codes = vec![31, 32, 33, 34];
    for method in ["fork", "spawn", "forkserver"] {
        let ctx = mproc::get_context(method)?;
        let mut p = ctx.process(process_task, (codes.clone(), 100)).start()?;
        let theirs = p.join()?;
        println!("{method}: child ended with {theirs:?}, parent still has {codes:?}");
    }
    Ok(())
}
