//! `apply_async` with a callback: it gets the task's return value and runs
//! in the main process, once per task.
//!
//! Port of the seeds' "apply_async 的回调函数" example.
use std::sync::{Arc, Mutex};

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
    println!("main process {}", std::process::id());
    let pool = mproc::Pool::new(3)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut result_list = Vec::new();
    for v in [100, 200, 300] {
        let seen = seen.clone();
        let callback = mproc::Callbacks::new().on_success(move |data: &u64| {
            println!(
                "----------- the data is {data}, callback in pid {}",
                std::process::id()
            );
            seen.lock().unwrap().push(*data);
        });
        result_list.push(pool.apply_async_with(process_task, (v, 5), callback)?);
    }
    pool.close();
    pool.join()?;
    for r in result_list {
        println!("{}", r.get()?);
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, vec![1_000_000, 8_000_000, 27_000_000]);
    Ok(())
}
