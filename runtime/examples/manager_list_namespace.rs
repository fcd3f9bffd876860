//! `manager.list()` and `manager.Namespace()` shared with children.
//!
//! Port of the seeds' "共享内存（速度较慢）" note (`my_list =
//! manager.list()`) and their Namespace remark: a namespace has no public
//! methods, only attributes, and an attribute whose name starts with `_`
//! belongs to the proxy, not to the shared namespace.
use mproc::manager::{List, Namespace};

fn worker(args: (usize, List<String>, Namespace)) {
    let (n, my_list, ns) = args;
    my_list
        .append(&format!("worker {n} (pid {})", std::process::id()))
        .unwrap();
    ns.add("finished", 1u32).unwrap();
    ns.set("_scratch", &n).unwrap(); // stays in this proxy
}

fn main() -> mproc::Result<()> {
    let _rt = mproc::init()?;
    let ctx = mproc::default_context();
    let manager = ctx.manager()?;
    let my_list = manager.list::<String>()?;
    let ns = manager.namespace()?;
    ns.set("title", "shared state")?;

    let mut ps = Vec::new();
    for n in 0..3 {
        ps.push(
            ctx.process(worker, (n, my_list.clone(), ns.clone()))
                .start()?,
        );
    }
    for p in &mut ps {
        p.join()?;
    }
    for line in my_list.iter()? {
        println!("{line}");
    }
    println!(
        "{}: {} finished; _scratch here: {:?}",
        ns.get::<String>("title")?.unwrap_or_default(),
        ns.get::<u32>("finished")?.unwrap_or(0),
        ns.get::<usize>("_scratch")?
    );
    assert_eq!(my_list.len()?, 3);
    assert_eq!(ns.get::<u32>("finished")?, Some(3));
    assert_eq!(ns.get::<usize>("_scratch")?, None);
    Ok(())
}
