//! `Pool::map`: like the built-in `map`, blocking until every result is in,
//! in input order.
//!
//! Port of the seeds' "进程池 3. map" and "map 返回的结果放到一个列表中"
//! examples: tuples go in, the list of results comes out.
use std::time::{Duration, Instant};

fn process_task(info: (u64, u32)) -> u64 {
    let (data, _length) = info;
    println!("task {data}: pid {}", std::process::id());
    let mut res = data.pow(3);
    while res > 0 {
        res = std::hint::black_box(res - 1);
    }
    std::thread::sleep(Duration::from_millis(100));
    data.pow(3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _rt = mproc::init()?;
    let start = Instant::now();
    let pool = mproc::Pool::new(3)?;
    let info: Vec<(u64, u32)> = [100, 200, 300].iter().map(|&v| (v, 5)).collect();
    let res = pool.map(process_task, info)?;
    pool.close();
    pool.join()?;
    println!("{res:?}");
    assert_eq!(res, vec![1_000_000, 8_000_000, 27_000_000]);
    println!("took {:?}", start.elapsed());
    Ok(())
}
