//! A pool of 4 greeting names five ways: `map`, `map_async`,
//! `imap_unordered`, `apply`, `apply_async`.
//!
//! Port of the seeds' "采用进程池启动多个类似进程" example (with 200 ms
//! naps instead of 2 s): `map` keeps the input order and blocks;
//! `map_async` returns at once and blocks in `get`; `imap_unordered` yields
//! as results come; `apply` runs one task at a time; `apply_async` runs them
//! side by side.
use std::time::{Duration, Instant};

use mproc::Pool;

fn hello(name: String) -> String {
    std::thread::sleep(Duration::from_millis(200));
    format!("hello {name}, I am {}", std::process::id())
}

fn names() -> Vec<String> {
    ["martin", "ana", "liming", "Kev"]
        .map(String::from)
        .to_vec()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _rt = mproc::init()?;
    let pool = Pool::new(4)?;

    let start = Instant::now();
    println!("{:?}", pool.map(hello, names())?);
    println!("map used {:?}", start.elapsed());

    let start = Instant::now();
    let result = pool.map_async(hello, names())?;
    println!("print map_async result");
    println!("{:?}", result.get()?);
    println!("map_async used {:?}", start.elapsed());

    let start = Instant::now();
    for r in pool.imap_unordered(hello, names())? {
        println!("{}", r?);
    }
    println!("imap_unordered used {:?}", start.elapsed());

    let start = Instant::now();
    let result: Vec<String> = names()
        .into_iter()
        .map(|n| pool.apply(hello, n))
        .collect::<Result<_, _>>()?;
    println!("{result:?}");
    println!("apply used {:?} (one at a time)", start.elapsed());

    let start = Instant::now();
    let pending: Vec<_> = names()
        .into_iter()
        .map(|n| pool.apply_async(hello, n))
        .collect::<Result<_, _>>()?;
    for r in pending {
        println!("{}", r.get()?);
    }
    println!("apply_async used {:?}", start.elapsed());
    Ok(())
}
