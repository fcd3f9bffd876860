//! Return values of `apply_async`: keep each `AsyncResult`, `get` it later.
//!
//! Port of the seeds' "进程中的返回值 / apply_async 调用每个对象下的get方法去获取结果"
//! example: the results are collected after `close` and `join`.
use std::time::Instant;

fn process_task(info: (u64, u32)) -> u64 {
    let (data, _length) = info;
    println!("task {data}: pid {}", std::process::id());
    let mut res = data.pow(3);
    while res > 0 {
        res = std::hint::black_box(res - 1);
    }
    data.pow(3)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _rt = mproc::init()?;
    let start = Instant::now();
    let pool = mproc::Pool::new(3)?;
    let mut result_list = Vec::new();
    for v in [100, 200, 300] {
        result_list.push(pool.apply_async(process_task, (v, 5))?);
    }
    pool.close();
    pool.join()?;
    for r in result_list {
        println!("{}", r.get()?);
    }
    println!("took {:?}", start.elapsed());
    Ok(())
}
