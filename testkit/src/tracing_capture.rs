//! Capturing the messages of `tracing` events, for the tests that check
//! what is logged.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// A subscriber that keeps the `message` of every event at `max_level` or
/// more severe; its clones share one list (install a clone with
/// `tracing::subscriber::with_default`, read the original).
#[derive(Clone)]
pub struct Messages {
    max_level: Level,
    list: Arc<Mutex<Vec<String>>>,
}

impl Messages {
    /// Keeps the events of every level.
    pub fn all() -> Messages {
        Messages::up_to(Level::TRACE)
    }

    /// Keeps the events at `max_level` or more severe (`Level::WARN`:
    /// warnings and errors).
    pub fn up_to(max_level: Level) -> Messages {
        Messages {
            max_level,
            list: Arc::default(),
        }
    }

    /// The messages kept so far, oldest first.
    pub fn list(&self) -> Vec<String> {
        self.list.lock().unwrap().clone()
    }

    /// Whether some message kept so far contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.list.lock().unwrap().iter().any(|m| m.contains(needle))
    }
}

/// Writes an event's `message` field into the string.
struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Messages {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max_level
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut m = String::new();
        event.record(&mut Message(&mut m));
        self.list.lock().unwrap().push(m);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
