//! Output a process has buffered but not yet written reaches stdout exactly
//! once: a child's is flushed before it exits, under every start method, and
//! the parent's is flushed before a `fork`, so that the child does not write
//! it a second time (CPython's `popen_fork` does the same).
//!
//! One test in its own binary: it points fd 1 at a pipe for a while.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Writes through Rust's stdout buffer without a newline, so nothing is
/// written until something flushes it. (`print!` would go to the test
/// harness's capture instead of fd 1.)
fn say(tag: String) {
    let _ = std::io::stdout().write_all(format!("[{tag}]").as_bytes());
}

#[test]
fn buffered_output_is_written_once() {
    // The fork server starts with the fd 1 of that moment and keeps it:
    // start it before fd 1 becomes the pipe, or the pipe never sees EOF.
    let mut warm = mproc::get_context("forkserver")
        .unwrap()
        .process(|()| (), ())
        .start()
        .unwrap();
    warm.join_timeout(T).unwrap();
    let (mut r, w) = std::io::pipe().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = r.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    std::io::stdout().flush().unwrap();
    // SAFETY: dup/dup2 on fds we own; fd 1 is restored below, and this is
    // the only test of the binary.
    let saved = unsafe { libc::dup(1) };
    assert!(saved >= 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::dup2(w.as_raw_fd(), 1) }, 1);
    for method in ["fork", "spawn", "forkserver"] {
        // Left in this process's buffer across the start of the child.
        let _ = std::io::stdout().write_all(format!("<{method}>").as_bytes());
        let mut p = mproc::get_context(method)
            .unwrap()
            .process(say, method.to_string())
            .start()
            .unwrap();
        p.join_timeout(T).unwrap();
    }
    std::io::stdout().flush().unwrap();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    drop(w);
    // Every writer of the pipe is gone (the children have exited, the fork
    // server holds no copy of fd 1), so the reader sees EOF.
    let out = rx.recv_timeout(T).expect("EOF on the pipe");
    for method in ["fork", "spawn", "forkserver"] {
        assert_eq!(out.matches(&format!("<{method}>")).count(), 1, "{out}");
        assert_eq!(out.matches(&format!("[{method}]")).count(), 1, "{out}");
    }
}
