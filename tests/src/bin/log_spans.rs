//! `mproc::log_to_stderr` in a program that starts a process, runs a pool
//! task and calls a manager: the spans around each show on stderr.

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let _rt = mproc::init().expect("init");
    assert!(mproc::log_to_stderr(tracing::Level::DEBUG));
    let ctx = mproc::get_context("forkserver").expect("context");
    let mut p = ctx
        .process(square, 3)
        .name("squarer")
        .start()
        .expect("start");
    println!("pid {}", p.pid());
    assert_eq!(p.join().expect("join"), 9);
    drop(p);
    let pool = ctx.pool(1).expect("pool");
    assert_eq!(pool.apply(square, 4).expect("apply"), 16);
    drop(pool);
    let manager = ctx.manager().expect("manager");
    let d = manager.dict::<String, i64>().expect("dict");
    d.set("k", &1).expect("set");
    assert_eq!(d.get("k").expect("get"), Some(1));
    println!("done");
}
