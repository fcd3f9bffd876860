//! A program that uses mproc the way a newcomer might write it first: no
//! `mproc::init()`, no `mproc::bootstrap!()`. Every start method must work,
//! and no process may run this `main` a second time.

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    println!("main runs in {}", std::process::id());
    for method in ["forkserver", "spawn", "fork"] {
        let ctx = mproc::get_context(method).expect("context");
        let mut p = ctx.process(square, 12).start().expect("start");
        let got = p.join().expect("join");
        let pool = ctx.pool(2).expect("pool");
        let squares = pool.map(square, 1..=4).expect("map");
        drop(pool);
        println!("{method}: {got} {squares:?}");
    }
}
