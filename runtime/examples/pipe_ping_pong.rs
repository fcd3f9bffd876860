//! Pipe ping-pong: the child greets the parent, the parent answers.
use mproc::connection::{Connection, pipe};

fn process_task(arg: (u32, Connection<String>)) {
    let (data, conn) = arg;
    conn.send(&format!("hello, main process, the data is {data}"))
        .expect("send");
    println!("{}", conn.recv().expect("recv"));
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let (parent_conn, child_conn) = pipe(true)?;
    let mut p = mproc::default_context()
        .process(process_task, (100, child_conn))
        .start()?;
    println!("{}", parent_conn.recv()?);
    parent_conn.send(&"hello, child process".to_string())?;
    p.join()?;
    Ok(())
}
