//! A manager reached over TCP by address and authkey, "between processes
//! created by different hosts" as the seeds put it.
//!
//! The server side listens (on loopback here) and publishes a job queue and
//! a result dict; a client that knows only the address and the key —
//! started here as a fresh process, but it could run anywhere — connects,
//! works, and reports. A client with a wrong key is refused before it can
//! send a single request (the refusal is logged by the server).
use mproc::manager::{Dict, Queue};

fn remote_client(args: (String, Vec<u8>)) -> u64 {
    let (addr, authkey) = args;
    let manager = mproc::manager::connect(addr.as_str(), &authkey).unwrap();
    let jobs = manager.lookup::<Queue<u64>>("jobs").unwrap();
    let results = manager.lookup::<Dict<u64, u64>>("results").unwrap();
    let mut done = 0;
    while let Some(n) = jobs.try_get().unwrap() {
        results.set(&n, &(n * n)).unwrap();
        done += 1;
    }
    done
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::get_context("spawn")?;
    let manager = ctx.manager()?;
    let authkey = b"a long random secret".to_vec();
    let addr = manager.listen("127.0.0.1:0", &authkey)?;
    println!("manager listening on {addr}");

    let jobs = manager.queue::<u64>()?;
    for n in 1..=10 {
        jobs.put(n)?;
    }
    let results = manager.dict::<u64, u64>()?;
    manager.publish("jobs", &jobs)?;
    manager.publish("results", &results)?;

    match mproc::manager::connect(addr, b"a guess") {
        Err(e) => println!("wrong key refused: {e}"),
        Ok(_) => unreachable!("a wrong key must be refused"),
    }

    let mut client = ctx
        .process(remote_client, (addr.to_string(), authkey))
        .start()?;
    let done = client.join()?;
    println!("the remote client did {done} jobs: {:?}", results.items()?);
    assert_eq!(results.get(&10)?, Some(100));
    Ok(())
}
