//! Starting a `fork` child from a multithreaded process logs one warning that
//! names the thread count (CPython 3.12's DeprecationWarning); the other start
//! methods log none.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

mproc::bootstrap!();

#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);
impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut m = String::new();
        event.record(&mut Message(&mut m));
        self.0.lock().unwrap().push(m);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

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
        let w = Warnings::default();
        tracing::subscriber::with_default(w.clone(), || {
            let mut p = mproc::get_context(method)
                .unwrap()
                .process(noop, ())
                .start()
                .unwrap();
            p.join_timeout(Duration::from_secs(20)).unwrap();
        });
        let got = w.0.lock().unwrap().clone();
        let forks: Vec<_> = got.iter().filter(|m| m.contains("fork()")).collect();
        assert_eq!(forks.len(), expected, "{method}: {got:?}");
        if expected == 1 {
            assert!(forks[0].contains("threads"), "{}", forks[0]);
        }
    }
    tx.send(()).unwrap();
    helper.join().unwrap();
}
