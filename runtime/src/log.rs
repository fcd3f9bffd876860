//! `log_to_stderr`: Python's quick look at what the library does, on top of
//! `tracing`.
//!
//! The crate emits `tracing` events and spans (`mproc.process` from the
//! request until the exit is seen, with the child's `name`, `method` and
//! `pid`; `mproc.pool_task` from submission to result, with the `worker`'s
//! pid; `mproc.manager_call` around a manager request, with the object `id`
//! and `method`; the fork server's own events inside them). A program that
//! has a subscriber (`tracing-subscriber`'s fmt layer, say, with span
//! events on close to see where time goes) sees them there. For a program
//! that has none, [`log_to_stderr`] installs a small one that prints each
//! event with the spans it happened in, and each span's lifetime when it
//! closes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Prints this process's `tracing` events at `level` and more severe, and
/// its spans when they close, to stderr (Python's
/// `multiprocessing.log_to_stderr(level)`).
///
/// Installs a global default subscriber; returns `false` (and changes
/// nothing) when the program already has one. The subscriber lives in this
/// process: a child made by the `fork` method inherits it, the others start
/// without one.
///
/// ```
/// fn square(x: u64) -> u64 { x * x }
/// # fn main() -> mproc::Result<()> {
/// mproc::log_to_stderr(tracing::Level::DEBUG);
/// // Prints, among others:
/// // DEBUG [mproc.process{name=Process-1 method=forkserver pid=4242}] process started
/// // DEBUG [mproc.process{name=Process-1 method=forkserver pid=4242}] process exited exitcode=0
/// // DEBUG [mproc.process{name=Process-1 method=forkserver pid=4242}] closed after 612µs
/// let mut p = mproc::default_context().process(square, 3).start()?;
/// assert_eq!(p.join()?, 9);
/// # Ok(()) }
/// ```
#[doc(alias = "get_logger")]
pub fn log_to_stderr(level: Level) -> bool {
    tracing::subscriber::set_global_default(StderrLog::new(level)).is_ok()
}

struct SpanData {
    name: &'static str,
    fields: String,
    opened: Instant,
    refs: usize,
    level: Level,
}

struct StderrLog {
    max_level: Level,
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SpanData>>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static STACK: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl StderrLog {
    fn new(max_level: Level) -> StderrLog {
        StderrLog {
            max_level,
            next_id: AtomicU64::new(1),
            spans: Mutex::new(HashMap::new()),
        }
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SpanData>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn scope(&self, innermost: Option<u64>) -> String {
        let spans = self.spans();
        let mut chain: Vec<u64> = STACK.with(|s| s.borrow().clone());
        if let Some(id) = innermost
            && chain.last() != Some(&id)
        {
            chain = vec![id];
        }
        let mut out = String::new();
        for id in chain {
            if let Some(d) = spans.get(&id) {
                let _ = write!(out, "[{}{{{}}}] ", d.name, d.fields.trim_start());
            }
        }
        out
    }

    fn print(line: &str) {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Renders fields as ` key=value`; the `message` field bare, first.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for StderrLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max_level
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut f = Fields::default();
        attrs.record(&mut f);
        self.spans().insert(
            id,
            SpanData {
                name: attrs.metadata().name(),
                fields: f.rest,
                opened: Instant::now(),
                refs: 1,
                level: *attrs.metadata().level(),
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut f = Fields::default();
        values.record(&mut f);
        if let Some(d) = self.spans().get_mut(&span.into_u64()) {
            d.fields.push_str(&f.rest);
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let parent = event.parent().map(Id::into_u64);
        let scope = self.scope(parent);
        Self::print(&format!(
            "{:>5} {scope}{}{}\n",
            event.metadata().level(),
            f.message,
            f.rest
        ));
    }

    fn enter(&self, span: &Id) {
        STACK.with(|s| s.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(pos) = s.iter().rposition(|&i| i == span.into_u64()) {
                s.remove(pos);
            }
        });
    }

    fn clone_span(&self, id: &Id) -> Id {
        if let Some(d) = self.spans().get_mut(&id.into_u64()) {
            d.refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let closed = {
            let mut spans = self.spans();
            match spans.get_mut(&id.into_u64()) {
                Some(d) if d.refs > 1 => {
                    d.refs -= 1;
                    None
                }
                Some(_) => spans.remove(&id.into_u64()),
                None => None,
            }
        };
        match closed {
            Some(d) => {
                Self::print(&format!(
                    "{:>5} [{}{{{}}}] closed after {:?}\n",
                    d.level,
                    d.name,
                    d.fields.trim_start(),
                    d.opened.elapsed()
                ));
                true
            }
            None => false,
        }
    }
}
