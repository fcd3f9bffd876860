//! The helpers of every crate's tests, in one place: watchdogs and waits
//! with timeouts, `/proc` probes for fds, children and zombies, pidfds,
//! and (in modules) fd limits, fuzz-corpus replay, log capture and runs
//! under a process limit.
//!
//! It depends on no crate of the workspace, so `forkserver` and `mproc` can
//! take it as a dev-dependency; what needs their types stays in their own
//! `tests/common`.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod bench;
pub mod fd_limit;
pub mod fuzz_corpus;
pub mod limited;
pub mod tracing_capture;
mod zombies;

pub use zombies::zombies_of;

/// Aborts the whole test process if not dropped within `limit`: the last
/// line of defence against a wait we did not bound.
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
}

/// Starts a [`Watchdog`] named `what`.
pub fn watchdog(what: &'static str, limit: Duration) -> Watchdog {
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let d = done.clone();
    std::thread::spawn(move || {
        let (m, cv) = &*d;
        let g = m.lock().unwrap();
        let (g, _) = cv.wait_timeout_while(g, limit, |done| !*done).unwrap();
        if !*g {
            eprintln!("watchdog: {what} still running after {limit:?}: aborting");
            std::process::abort();
        }
    });
    Watchdog { done }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.done;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Polls `fd` for readability for at most `timeout`.
pub fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: one valid pollfd on our stack.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return true;
        }
        if r == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Reads `file` to its end, failing if that takes longer than `timeout`.
pub fn read_to_end(fd: OwnedFd, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            readable(file.as_fd(), left),
            "no EOF within {timeout:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
        match file.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// `pidfd_open(pid)`, or `None` where the kernel lacks it (the caller skips).
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM) => {
                eprintln!("skipping: pidfd_open unavailable ({e})");
                return None;
            }
            _ => panic!("pidfd_open({pid}): {e}"),
        }
    }
    // SAFETY: a fresh fd from the kernel, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Whether the process behind `pidfd` has exited, waiting at most `timeout`.
pub fn exited(pidfd: &OwnedFd, timeout: Duration) -> bool {
    readable(pidfd.as_fd(), timeout)
}

/// Sends `signal` through a pidfd (no pid-reuse race).
pub fn pidfd_kill(pidfd: &OwnedFd, signal: i32) {
    // SAFETY: plain integers and a null siginfo, as the syscall documents.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    assert!(
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH),
        "pidfd_send_signal: {}",
        std::io::Error::last_os_error()
    );
}

/// Number of open fds of this process.
///
/// # Panics
/// When `/proc/self/fd` cannot be read.
pub fn fd_count() -> usize {
    count_fds("/proc/self/fd")
}

/// Number of open fds of process `pid`.
///
/// # Panics
/// When its `/proc/<pid>/fd` cannot be read.
pub fn fd_count_of(pid: i32) -> usize {
    count_fds(&format!("/proc/{pid}/fd"))
}

fn count_fds(dir: &str) -> usize {
    // read_dir itself holds one fd while it runs; it is the same every time.
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// The open fds of `pid`, with what they point to (for failure messages).
pub fn fd_list(pid: Option<i32>) -> Vec<String> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/fd"),
        None => "/proc/self/fd".to_string(),
    };
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `(pid, state)` of every process whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent = rest.next().and_then(|s| s.parse::<i32>().ok());
        if parent == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}

/// Retries `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The fds above 2 of `pid` that lack close-on-exec (from
/// `/proc/<pid>/fdinfo`, whose `flags` include `O_CLOEXEC`).
pub fn fds_without_cloexec(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<i32>().map_or(true, |fd| fd <= 2) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue; // closed meanwhile
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_CLOEXEC as u32 == 0 {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{name}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push(format!("{name} -> {target}"));
        }
    }
    out
}
