//! Child panics as a user sees them on stderr: a `Process` target that
//! panics under each start method, then a pool task that panics.

fn boom(method: String) -> u32 {
    panic!("no luck under {method}");
}

fn task(x: u32) -> u32 {
    if x == 2 {
        panic!("task {x} failed");
    }
    x
}

fn main() {
    let _rt = mproc::init().expect("init");
    for method in ["forkserver", "spawn", "fork"] {
        let ctx = mproc::get_context(method).expect("context");
        let mut p = ctx
            .process(boom, method.to_string())
            .name(format!("boomer-{method}"))
            .start()
            .expect("start");
        match p.join() {
            Err(mproc::Error::Panicked { message }) => println!("joined: {message}"),
            other => println!("unexpected: {other:?}"),
        }
    }
    let pool = mproc::get_context("forkserver")
        .expect("context")
        .pool(1)
        .expect("pool");
    match pool.apply(task, 2) {
        Err(e) => println!("task error: {e}"),
        Ok(v) => println!("unexpected: {v}"),
    }
    println!("done");
}
