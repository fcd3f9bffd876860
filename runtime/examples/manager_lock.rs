//! `count += n` on a manager dict: racy without a lock, exact with one.
//!
//! Port of the seeds' "不加锁 / 加锁" pair. Each child adds its `data` to
//! `share_data["count"]` five times; `+=` on a proxy is a `get` and then a
//! `set`, two calls, and another child's update can land in between and be
//! overwritten. With a manager `Lock` around the read-modify-write, the
//! children take turns and the total is exact: 500 + 5 * (100 + 200) = 2000.
//!
//! To make the race visible the unlocked part also runs four children that
//! each do 200 unprotected `count += 1`: updates go missing. The atomic
//! alternative, `Dict::add`, needs no lock at all.
use std::time::Duration;

use mproc::manager::{Dict, Lock};

fn task_unlocked(args: (i64, Dict<String, i64>)) {
    let (data, share_data) = args;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let count = share_data.get("count").unwrap().unwrap_or(0);
        share_data.set("count", &(count + data)).unwrap();
        println!("share_data count is {}", count + data);
    }
}

fn task_locked(args: (i64, Dict<String, i64>, Lock)) {
    let (data, share_data, lc) = args;
    let _held = lc.lock().unwrap(); // lc.acquire() ... released on drop
    share_data.set(&data.to_string(), &data.pow(3)).unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let count = share_data.get("count").unwrap().unwrap_or(0);
        share_data.set("count", &(count + data)).unwrap();
        println!("share_data count is {}", count + data);
    }
}

fn hammer(args: (Dict<String, i64>, Option<Lock>)) {
    let (d, lock) = args;
    for _ in 0..200 {
        let _held = lock.as_ref().map(|l| l.lock().unwrap());
        let c = d.get("hits").unwrap().unwrap_or(0);
        d.set("hits", &(c + 1)).unwrap();
    }
}

fn run<A>(ctx: &mproc::Context, f: fn(A), args: impl Iterator<Item = A>) -> mproc::Result<()>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let mut ps = Vec::new();
    for a in args {
        ps.push(ctx.process(f, a).start()?);
    }
    for p in &mut ps {
        p.join()?;
    }
    Ok(())
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let manager = ctx.manager()?;

    println!("-- without a lock");
    let d = manager.dict::<String, i64>()?;
    d.set("count", &500)?;
    run(
        &ctx,
        task_unlocked,
        [100, 200].into_iter().map(|v| (v, d.clone())),
    )?;
    println!(
        "count: {:?} (2000 only if no update was lost)",
        d.get("count")?
    );
    run(&ctx, hammer, (0..4).map(|_| (d.clone(), None)))?;
    let hits = d.get("hits")?.unwrap_or(0);
    println!("4 x 200 unlocked `hits += 1`: {hits} ({} lost)", 800 - hits);

    println!("-- with a lock");
    let d = manager.dict::<String, i64>()?;
    d.set("count", &500)?;
    let lc = manager.lock()?;
    run(
        &ctx,
        task_locked,
        [100, 200].into_iter().map(|v| (v, d.clone(), lc.clone())),
    )?;
    println!("{:?}", d.items()?);
    assert_eq!(d.get("count")?, Some(2000));
    run(&ctx, hammer, (0..4).map(|_| (d.clone(), Some(lc.clone()))))?;
    let hits = d.get("hits")?;
    println!("4 x 200 locked `hits += 1`: {hits:?}");
    assert_eq!(hits, Some(800));
    Ok(())
}
