//! A consumer that reads a Pipe until the producer closes it (Python's
//! `EOFError`, here `Error::Closed`).
use mproc::Error;
use mproc::connection::{Connection, pipe};

fn consumer(arg: (String, Connection<String>)) {
    let (name, conn) = arg;
    loop {
        match conn.recv() {
            Ok(work) => println!("{name} work is {work}"),
            Err(Error::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    println!("===============");
}

fn producer(conn: Connection<String>) {
    for i in 0..5 {
        conn.send(&format!("doing: {i}")).expect("send");
    }
    // Dropping the last sending end is what the consumer sees as EOF.
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    // `spawn` and `forkserver` children receive only the ends they are given;
    // a `fork` child would also inherit every other fd of the parent.
    let ctx = mproc::get_context("forkserver")?;
    let (rx, tx) = pipe(false)?;
    let mut c = ctx
        .process(consumer, ("process pipe".to_string(), rx))
        .start()?;
    let mut p = ctx.process(producer, tx).start()?;
    p.join()?;
    c.join()?;
    Ok(())
}
