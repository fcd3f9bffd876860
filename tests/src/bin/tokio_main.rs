//! `#[tokio::main]` with the multi-thread runtime and `mproc::init()` as
//! the first line: the runtime's threads exist before `init` runs, and every
//! start method must still work.

fn square(x: u64) -> u64 {
    x * x
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _rt = mproc::init()?;
    println!("main runs in {}", std::process::id());
    for method in ["forkserver", "spawn", "fork"] {
        let ctx = mproc::get_context(method)?;
        let got =
            tokio::task::spawn_blocking(move || ctx.process(square, 9).start()?.join()).await??;
        let pool = ctx.pool(2)?;
        let r = pool.apply_async(square, 5)?.await?;
        println!("{method}: {got} {r}");
    }
    Ok(())
}
