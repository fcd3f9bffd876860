//! A manager shares one dict between processes.
//!
//! Port of the seeds' "Managers实现数据共享" example: three children each
//! decrement `count` and store `data ** 3` under their own key in a dict
//! that lives in the manager process; the parent prints what they left.
use mproc::manager::Dict;

fn process_task(args: (i64, Dict<String, i64>)) {
    let (data, share_data) = args;
    println!(
        "child task {data}: pid {}, parent {:?}",
        std::process::id(),
        mproc::parent_process().map(|p| p.pid)
    );
    let res = data.pow(3);
    // The seeds' `share_data["count"] -= 1`, as one atomic call (a `get`
    // then a `set` could lose a decrement to another child in between).
    share_data.add("count", -1).unwrap();
    share_data.set(&data.to_string(), &res).unwrap();
    let mut spin = res;
    while spin > 0 {
        spin = std::hint::black_box(spin - 1);
    }
    println!("child task {data} done");
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let manager = ctx.manager()?;
    let share_data = manager.dict::<String, i64>()?;
    share_data.set("count", &10)?;
    println!("main process: pid {}", std::process::id());

    let mut tasks = Vec::new();
    for v in [100, 200, 300] {
        tasks.push(ctx.process(process_task, (v, share_data.clone())).start()?);
    }
    for t in &mut tasks {
        t.join()?;
    }
    println!("{:?}", share_data.items()?);
    assert_eq!(share_data.get("count")?, Some(7));
    assert_eq!(share_data.get("300")?, Some(27_000_000));
    Ok(())
}
