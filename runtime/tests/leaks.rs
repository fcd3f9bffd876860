//! No fd and no zombie survive finished children: 1,000 processes per
//! start method, then the parent's fd count is back at its baseline and no
//! child of ours (or of the fork server) is left unreaped.
use std::time::Duration;

use mproc::get_context;

mproc::bootstrap!();

fn double(x: u32) -> u32 {
    x * 2
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Zombie children of `ppid`.
fn zombies_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
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

#[test]
fn no_fd_or_zombie_after_1000_processes_per_method() {
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).unwrap();
        // Warm up: the fork server launches on first use and keeps its socket.
        ctx.process(double, 1).start().unwrap().join().unwrap();
        let before = fd_count();
        for i in 0..1000u32 {
            let mut p = ctx.process(double, i).start().unwrap();
            assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), i * 2);
        }
        assert_eq!(fd_count(), before, "{m}: fds leaked");
        assert!(mproc::active_children().is_empty(), "{m}");
        assert_eq!(zombies_of(std::process::id()), Vec::<u32>::new(), "{m}");
    }
}
