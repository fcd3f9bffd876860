//! Finding unreaped children.

/// Pids of the zombie (exited, unreaped) children of `ppid`.
///
/// # Panics
/// When `/proc` cannot be read: an empty answer would let a test that
/// expects no zombies pass without looking.
pub fn zombies_of(ppid: u32) -> Vec<u32> {
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
