//! How a child reports a panic: once, labelled, without the machinery.
//!
//! std's default hook prints `thread 'main' panicked at …` and, with
//! `RUST_BACKTRACE`, every frame down to the role dispatch (the fork
//! server's loop, the bootstrap, `main`), which reads as if the parent's
//! `main` had panicked. In a child this crate started, the hook is replaced:
//!
//! - a panic in a [`crate::Process`] target prints one report in the manner
//!   of CPython's `Process Process-1:` header — the process name, its pid,
//!   the thread when it is not the main one, the location and the message —
//!   and, when `RUST_BACKTRACE` asks for one, only the frames between the
//!   panic and the target;
//! - a panic in a pool or executor task prints nothing: the task's error
//!   carries the message back, as Python's pool does.
//!
//! `MPROC_PANIC_OUTPUT=std` in the environment keeps std's own hook in
//! children (full output, every frame), for debugging.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;

use crate::globals;

/// The environment variable that keeps std's panic output in children.
pub(crate) const OUTPUT_VAR: &str = "MPROC_PANIC_OUTPUT";

thread_local! {
    /// Set while a pool task runs: its panic is the task's error, not news.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Installs the report hook in a freshly started child (unless
/// `MPROC_PANIC_OUTPUT=std`).
pub(crate) fn install() {
    // Once a process: a warm fork-server child installs it while it waits.
    // (A flag, not a `Once`: a `fork` child of a thread that was inside a
    // `Once` would wait for it forever.)
    static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if INSTALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if std::env::var_os(OUTPUT_VAR).is_some_and(|v| v == "std") {
        return;
    }
    std::panic::set_hook(Box::new(report));
}

/// Runs `f` (a pool task) with its panics kept quiet.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(self.0));
        }
    }
    let _restore = Restore(QUIET.with(|q| q.replace(true)));
    f()
}

fn report(info: &std::panic::PanicHookInfo<'_>) {
    if QUIET.with(|q| q.get()) {
        return;
    }
    let name = globals::try_name().unwrap_or_else(|| "?".into());
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a non-string payload");
    let mut out = format!("Process {name} (pid {}", std::process::id());
    let thread = std::thread::current();
    match thread.name() {
        Some("main") | None if is_main_thread() => {}
        Some(t) => {
            let _ = write!(out, ", thread '{t}'");
        }
        None => {
            let _ = write!(out, ", thread {:?}", thread.id());
        }
    }
    out.push_str("):\n");
    match info.location() {
        Some(l) => {
            let _ = writeln!(out, "panicked at {}:{}:{}:", l.file(), l.line(), l.column());
        }
        None => out.push_str("panicked:\n"),
    }
    out.push_str(message);
    out.push('\n');
    let bt = std::backtrace::Backtrace::capture();
    if bt.status() == std::backtrace::BacktraceStatus::Captured {
        out.push_str("stack backtrace (the target's frames):\n");
        out.push_str(&target_frames(&bt.to_string()));
    }
    // One write, so that reports of processes sharing a terminal do not mix.
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

fn is_main_thread() -> bool {
    std::thread::current().id() == main_thread_id()
}

fn main_thread_id() -> std::thread::ThreadId {
    static MAIN: std::sync::OnceLock<std::thread::ThreadId> = std::sync::OnceLock::new();
    *MAIN.get_or_init(|| std::thread::current().id())
}

/// Records the calling thread as the child's main thread (called where the
/// hook is installed).
pub(crate) fn note_main_thread() {
    let _ = main_thread_id();
}

/// The frames of a rendered backtrace between the panic machinery and the
/// first frame of this crate's child path, renumbered from 0.
fn target_frames(rendered: &str) -> String {
    // A frame is a line `  N: symbol` and the `at file:line` lines after it.
    let mut frames: Vec<(String, String)> = Vec::new();
    for line in rendered.lines() {
        let t = line.trim_start();
        match t.split_once(": ") {
            Some((n, sym)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                frames.push((sym.to_string(), String::new()));
            }
            _ => {
                if let Some(last) = frames.last_mut() {
                    last.1.push_str(line);
                    last.1.push('\n');
                }
            }
        }
    }
    const MACHINERY: [&str; 8] = [
        "std::panicking",
        "std::sys::backtrace",
        "std::panic",
        "core::panicking",
        "__rustc::",
        "rust_begin_unwind",
        "std::backtrace",
        "mproc::process::panic_report",
    ];
    const OURS: [&str; 5] = [
        "mproc::process::",
        "mproc::job::",
        "mproc::pool::",
        "std::panicking::catch_unwind",
        "std::panic::catch_unwind",
    ];
    // The target's frames end where this crate's child path begins, and
    // start after the last frame of the panic machinery above them.
    let end = frames
        .iter()
        .position(|(s, _)| {
            OURS.iter().any(|o| s.starts_with(o)) && !s.starts_with("mproc::process::panic_report")
        })
        .unwrap_or(frames.len());
    let first = frames[..end]
        .iter()
        .rposition(|(s, _)| MACHINERY.iter().any(|m| s.starts_with(m)))
        .map_or(0, |i| i + 1);
    let mut out = String::new();
    for (i, (sym, at)) in frames[first..end].iter().enumerate() {
        let _ = writeln!(out, "{i:>4}: {sym}");
        out.push_str(at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_targets_frames_are_kept() {
        let rendered = "   0: std::panicking::panic_with_hook\n   0: __rustc::rust_begin_unwind\n             at /rustc/x/panicking.rs:1:5\n   1: core::panicking::panic_fmt\n             at /rustc/x/panicking.rs:2:5\n   2: app::inner\n             at src/main.rs:10:5\n   3: app::target\n             at src/main.rs:20:5\n   4: core::ops::function::FnOnce::call_once\n   5: mproc::job::trampoline\n             at runtime/src/job.rs:50:5\n   6: forkserver::server::serve\n   7: main\n";
        let kept = target_frames(rendered);
        assert_eq!(
            kept,
            "   0: app::inner\n             at src/main.rs:10:5\n   1: app::target\n             at src/main.rs:20:5\n   2: core::ops::function::FnOnce::call_once\n"
        );
    }

    #[test]
    fn quiet_is_restored_after_a_panic() {
        let r = std::panic::catch_unwind(|| quietly(|| panic!("x")));
        assert!(r.is_err());
        assert!(!QUIET.with(|q| q.get()));
    }
}
