//! `set_forkserver_preload`: what the preload sets up in the server is there
//! in every child it forks (CPython's gh-98552 broke this silently for years).
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static PRELOADED: AtomicU64 = AtomicU64::new(0);

fn preload() {
    PRELOADED.store(4242, Ordering::SeqCst);
}

fn read_preloaded(_: ()) -> (u64, u32) {
    (PRELOADED.load(Ordering::SeqCst), std::process::id())
}

#[test]
fn preload_runs_in_server_and_is_visible_in_children() {
    // The only test of this binary: the server launches after this call.
    mproc::set_forkserver_preload(&[preload]);
    let ctx = mproc::get_context("forkserver").unwrap();
    let mut p = ctx.process(read_preloaded, ()).start().unwrap();
    let (value, pid) = p.join_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(value, 4242);
    assert_ne!(pid, std::process::id());
    // Not run in this process, and not in a spawn child either.
    assert_eq!(PRELOADED.load(Ordering::SeqCst), 0);
    let mut p = mproc::get_context("spawn")
        .unwrap()
        .process(read_preloaded, ())
        .start()
        .unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap().0, 0);
}
