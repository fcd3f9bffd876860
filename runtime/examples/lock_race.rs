//! Two processes update one shared count, without and with a `Lock`.
//!
//! Port of the seeds' "不加锁 / 加锁" example. Without the lock the two
//! read-modify-write loops interleave and updates can be lost (the final
//! count varies from run to run; nothing here asserts it). With the lock
//! held around the whole loop, as in the seed, one process runs its five
//! steps, then the other, and the count always ends at 2000.
use std::time::Duration;

use mproc::{Lock, RawValue};

fn add_unlocked(args: (i64, RawValue<i64>)) {
    let (data, count) = args;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        let seen = count.get();
        std::thread::sleep(Duration::from_millis(5)); // widen the race
        count.set(seen + data);
        println!("share_data count is {}", count.get());
    }
}

fn add_locked(args: (i64, RawValue<i64>, Lock)) {
    let (data, count, lock) = args;
    let _held = lock.acquire().expect("no holder died");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        count.set(count.get() + data);
        println!("share_data count is {}", count.get());
    }
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();

    println!("-- without a lock");
    let count = RawValue::new(500i64)?;
    let mut ps = Vec::new();
    for data in [100, 200] {
        ps.push(ctx.process(add_unlocked, (data, count.clone())).start()?);
    }
    for p in &mut ps {
        p.join()?;
    }
    println!(
        "final count {} (2000 only if no update was lost)",
        count.get()
    );

    println!("-- with a lock");
    let count = RawValue::new(500i64)?;
    let lock = Lock::new()?;
    let mut ps = Vec::new();
    for data in [100, 200] {
        ps.push(
            ctx.process(add_locked, (data, count.clone(), lock.clone()))
                .start()?,
        );
    }
    for p in &mut ps {
        p.join()?;
    }
    println!("final count {}", count.get());
    Ok(())
}
