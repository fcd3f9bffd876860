//! A tiny worker pool built on the `forkserver` crate alone.
//!
//! Each task is a child forked by the server; the child's entry squares the
//! number it is given and writes the answer to a pipe passed as fd 3.
use std::io::{Read, Write};
use std::os::fd::AsFd;

use forkserver::{ChildStart, Command, ForkServer, LaunchConfig};

fn entry(start: ChildStart) -> i32 {
    let n: u64 = String::from_utf8_lossy(&start.data).parse().unwrap_or(0);
    let Ok(fd) = start.take_fd(3) else { return 2 };
    let mut out = std::fs::File::from(fd);
    match write!(out, "{}", n * n) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn main() -> forkserver::Result<()> {
    if let Some(role) = forkserver::bootstrap(forkserver::Hooks { entry: Some(entry) }) {
        panic!("unexpected role {}", role.name);
    }
    let server = ForkServer::launch(LaunchConfig::new())?;
    let mut total = 0;
    for n in 1..=10u64 {
        let (mut r, w) = std::io::pipe()?;
        let cmd = Command::run(n.to_string().into_bytes()).fd(w.as_fd(), 3);
        let mut child = server.spawn(&cmd)?;
        drop(cmd);
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s)?;
        let status = child.wait()?;
        println!(
            "{n}^2 = {s} (child {} exited {})",
            child.pid(),
            status.exitcode()
        );
        total += s.parse::<u64>().unwrap_or(0);
    }
    println!("sum of squares 1..=10 = {total}");
    Ok(())
}
