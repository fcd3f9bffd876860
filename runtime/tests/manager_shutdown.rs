//! Shutting a manager down leaves no process and no fd behind, under every
//! start method (alone in its binary: it counts this process's fds).
use std::time::Duration;

use mproc::get_context;
use mproc::manager::{Dict, Lock};

/// This process's fds, counted with the fork server's warm child reserved
/// for it in hand (its three fds come and go with the server's refills).
fn fds() -> usize {
    mproc::__settle_fork_server(Duration::from_secs(10));
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn use_them(args: (Dict<u8, u8>, Lock)) -> u8 {
    let (d, l) = args;
    let _held = l.lock().unwrap();
    d.set(&1, &2).unwrap();
    d.get(&1).unwrap().unwrap()
}

fn alive(pid: i32) -> bool {
    // A reaped process has no /proc entry (a zombie would still have one).
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn shutdown_leaves_no_process_and_no_fd() {
    // Warm up what stays for the life of the process (the fork server,
    // thread-locals), so only the manager's own fds are counted.
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        ctx.manager().unwrap().shutdown().unwrap();
    }
    let before = fds();
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        let manager = ctx.manager().unwrap();
        let pid = manager.pid().unwrap();
        let d = manager.dict::<u8, u8>().unwrap();
        let l = manager.lock().unwrap();
        let addr = manager.listen("127.0.0.1:0", b"k").unwrap();
        let remote = mproc::manager::connect(addr, b"k").unwrap();
        remote.namespace().unwrap().set("x", &1).unwrap();
        drop(remote);
        let mut p = ctx
            .process(use_them, (d.clone(), l.clone()))
            .start()
            .unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 2, "{m}");
        drop(p);
        assert!(alive(pid), "{m}");
        manager.shutdown().unwrap();
        assert!(!alive(pid), "{m}: the server is still there");
        assert!(
            d.len().is_err(),
            "{m}: a proxy still reaches a stopped manager"
        );
        drop((d, l));
        drop(manager);
        assert!(
            mproc::active_children().is_empty(),
            "{m}: children left: {:?}",
            mproc::active_children()
        );
        assert_eq!(fds(), before, "{m}: fds leaked");
    }
    // Dropping the handle shuts down too.
    let manager = get_context("spawn").unwrap().manager().unwrap();
    let pid = manager.pid().unwrap();
    manager.list::<u8>().unwrap().push(&1).unwrap();
    drop(manager);
    assert!(!alive(pid));
    assert_eq!(fds(), before);
}
