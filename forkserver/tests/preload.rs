//! What the server preloads is really there in its children (CPython's
//! gh-98552: the forkserver's `__main__` preload was silently broken for
//! years). The hook sets a static in the server; a child returns it as its
//! exit code; the parent's own copy stays untouched.
mod common;

use std::sync::atomic::{AtomicI32, Ordering};

use forkserver::{Command, EntryArgs, ForkServer};

static PRELOADED: AtomicI32 = AtomicI32::new(0);
static PRELOAD_RUNS: AtomicI32 = AtomicI32::new(0);

fn preload() {
    PRELOADED.store(42, Ordering::SeqCst);
}

fn count_runs() {
    PRELOAD_RUNS.fetch_add(1, Ordering::SeqCst);
}

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        b"runs" => PRELOAD_RUNS.load(Ordering::SeqCst),
        _ => PRELOADED.load(Ordering::SeqCst),
    }
}
forkserver::bootstrap!(entry);

#[test]
fn gh_98552_preload_runs_in_the_server_and_children_see_it() {
    let _w = common::watchdog("preload", std::time::Duration::from_secs(60));
    let fs =
        ForkServer::launch(common::config().preload(preload).preload(count_runs)).expect("launch");
    for _ in 0..3 {
        let mut c = fs.spawn(&Command::run(b"value".to_vec())).unwrap();
        assert_eq!(common::wait(&mut c).code(), Some(42));
    }
    // Once in the server, not once per child.
    let mut c = fs.spawn(&Command::run(b"runs".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(1));
    // It ran there, not here.
    assert_eq!(PRELOADED.load(Ordering::SeqCst), 0);
    assert_eq!(PRELOAD_RUNS.load(Ordering::SeqCst), 0);

    // A server without the hook: children see the untouched value.
    let plain = ForkServer::launch(common::config()).expect("launch");
    let mut c = plain.spawn(&Command::run(b"value".to_vec())).unwrap();
    assert_eq!(common::wait(&mut c).code(), Some(0));
}
