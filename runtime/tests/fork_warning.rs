//! Starting a `fork` child from a multithreaded process logs one warning that
//! names the thread count (CPython 3.12's DeprecationWarning); the other start
//! methods log none.
use std::time::Duration;

use testkit::tracing_capture::Messages;
use tracing::Level;

fn noop(_: ()) {}

#[test]
fn fork_from_multithreaded_parent_warns_once_with_thread_count() {
    // The test harness itself runs this test on a thread of its own, and we
    // add one more, so the process surely has several threads.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        let _ = rx.recv_timeout(Duration::from_secs(30));
    });
    let threads = forkserver::thread_count().unwrap();
    assert!(threads > 1);

    for (method, expected) in [("forkserver", 0), ("spawn", 0), ("fork", 1)] {
        let w = Messages::up_to(Level::WARN);
        tracing::subscriber::with_default(w.clone(), || {
            let mut p = mproc::get_context(method)
                .unwrap()
                .process(noop, ())
                .start()
                .unwrap();
            p.join_timeout(Duration::from_secs(20)).unwrap();
        });
        let got = w.list();
        let forks: Vec<_> = got.iter().filter(|m| m.contains("fork()")).collect();
        assert_eq!(forks.len(), expected, "{method}: {got:?}");
        if expected == 1 {
            assert!(forks[0].contains("threads"), "{}", forks[0]);
        }
    }
    tx.send(()).unwrap();
    helper.join().unwrap();
}
