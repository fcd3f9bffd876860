//! Helpers shared by the runtime's tests: what a process holds open and
//! which of its children are left unreaped, and a watchdog for tests whose
//! calls have no timeout of their own.
#![allow(dead_code)] // each test binary uses its own subset

/// Number of open fds of this process.
pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Pids of the zombie (exited, unreaped) children of `ppid`.
pub(crate) fn zombies_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[0] == "Z" && f[1] == ppid.to_string() {
            out.push(pid);
        }
    }
    out
}

/// Aborts the test binary if the test it guards runs longer than a minute:
/// `apply` and `map` have no timeout of their own.
pub(crate) struct Watchdog(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

pub(crate) fn watchdog(name: &'static str) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(std::time::Duration::from_secs(60))
        {
            eprintln!("{name}: still running after 60 s; aborting");
            std::process::abort();
        }
    });
    Watchdog(tx)
}
