//! A tiny worker pool built on the `forkserver` crate alone: what another
//! pool crate (one that has never heard of `mproc`) needs to embed it.
//!
//! - The program registers its own child entry with the bootstrap.
//! - The pool starts N long-lived workers through the fork server, each
//!   with one end of a fresh socketpair installed at fd 3 (daemonic, so they
//!   die with the pool's connection if the pool is dropped mid-way).
//! - Tasks go to the workers over their sockets and results come back the
//!   same way; nothing large ever passes through the server.
//! - Closing a worker's socket tells it to exit; the pool then collects
//!   each exit status (with CPU time) under a timeout.
//!
//! Run it with `cargo run --release -p forkserver --example mini_pool`.
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use forkserver::{Child, Command, EntryArgs, ForkServer, LaunchConfig, ServerConnection};

/// The task: the length of the Collatz sequence starting at `n`.
fn collatz_steps(mut n: u64) -> u64 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

/// The child entry: a worker loop. Reads little-endian `u64` tasks from
/// fd 3 and answers each with its result, until the pool closes the socket.
fn worker(start: EntryArgs) -> i32 {
    if start.data != b"worker" {
        return 2;
    }
    let Ok(fd) = start.take_fd(3) else { return 3 };
    let sock = UnixStream::from(fd);
    let Ok(mut out) = sock.try_clone() else {
        return 4;
    };
    let mut input = BufReader::new(sock);
    let mut task = [0u8; 8];
    loop {
        match input.read_exact(&mut task) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return 0,
            Err(_) => return 5,
        }
        let result = collatz_steps(u64::from_le_bytes(task));
        if out.write_all(&result.to_le_bytes()).is_err() {
            return 6;
        }
    }
}

/// One worker as the pool sees it.
struct Worker {
    child: Child,
    sock: UnixStream,
}

/// A fixed-size pool of worker processes.
struct MiniPool {
    // Kept open for as long as the workers run: closing it would terminate
    // them (they are daemonic children of this connection).
    _conn: ServerConnection,
    workers: Vec<Worker>,
}

impl MiniPool {
    /// Starts `n` workers through `server`, on a connection of their own.
    fn new(server: &ForkServer, n: usize) -> forkserver::Result<MiniPool> {
        let conn = server.connect()?;
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let (ours, theirs) = UnixStream::pair()?;
            let cmd = Command::run(b"worker".to_vec())
                .daemon(true)
                .fd(theirs.as_fd(), 3);
            let child = conn.spawn(&cmd)?;
            workers.push(Worker { child, sock: ours });
        }
        Ok(MiniPool {
            _conn: conn,
            workers,
        })
    }

    /// Runs every task, spread over the workers, and returns the results in
    /// order. Each worker's share is pipelined: one thread writes its tasks
    /// while another reads its answers.
    fn map(&mut self, tasks: &[u64]) -> io::Result<Vec<u64>> {
        let n = self.workers.len();
        let mut results = vec![0u64; tasks.len()];
        std::thread::scope(|s| -> io::Result<()> {
            let mut handles = Vec::new();
            for (w, worker) in self.workers.iter_mut().enumerate() {
                let mine: Vec<u64> = tasks.iter().skip(w).step_by(n).copied().collect();
                let mut writer = worker.sock.try_clone()?;
                let reader = &mut worker.sock;
                handles.push(s.spawn(move || -> io::Result<Vec<u64>> {
                    let count = mine.len();
                    let feeder = std::thread::spawn(move || -> io::Result<()> {
                        let mut buf = Vec::with_capacity(mine.len() * 8);
                        for t in mine {
                            buf.extend_from_slice(&t.to_le_bytes());
                        }
                        writer.write_all(&buf)
                    });
                    let mut out = Vec::with_capacity(count);
                    let mut reader = BufReader::new(reader);
                    let mut r = [0u8; 8];
                    for _ in 0..count {
                        reader.read_exact(&mut r)?;
                        out.push(u64::from_le_bytes(r));
                    }
                    feeder
                        .join()
                        .map_err(|_| io::Error::other("feeder panicked"))??;
                    Ok(out)
                }));
            }
            for (w, h) in handles.into_iter().enumerate() {
                let share = h
                    .join()
                    .map_err(|_| io::Error::other("worker thread panicked"))??;
                for (i, r) in share.into_iter().enumerate() {
                    results[w + i * n] = r;
                }
            }
            Ok(())
        })?;
        Ok(results)
    }

    /// Closes every worker's socket and collects the exit statuses.
    fn close(self) -> forkserver::Result<Vec<(i32, forkserver::ExitStatus)>> {
        let mut out = Vec::new();
        for Worker { mut child, sock } in self.workers {
            drop(sock);
            let status = child
                .wait_timeout(Duration::from_secs(10))?
                .ok_or(forkserver::Error::Timeout)?;
            out.push((child.pid(), status));
        }
        Ok(out)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First line of main: in the server process this never returns.
    if let Some(role) = forkserver::bootstrap(forkserver::Hooks {
        entry: Some(worker),
    }) {
        return Err(format!("unexpected role {}", role.name).into());
    }
    let t = Instant::now();
    let server = ForkServer::launch(LaunchConfig::new())?;
    println!(
        "fork server {} up in {:.2} ms",
        server.pid(),
        t.elapsed().as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let mut pool = MiniPool::new(&server, 4)?;
    let pids: Vec<i32> = pool.workers.iter().map(|w| w.child.pid()).collect();
    println!(
        "4 workers {pids:?} started in {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let tasks: Vec<u64> = (1..=200_000).collect();
    let t = Instant::now();
    let results = pool.map(&tasks)?;
    let took = t.elapsed();
    let (best, steps) = tasks
        .iter()
        .zip(&results)
        .max_by_key(|(_, s)| **s)
        .map(|(n, s)| (*n, *s))
        .unwrap_or((0, 0));
    println!(
        "{} tasks in {:.1} ms ({:.0} tasks/s): longest Collatz chain below {} starts at {best} ({steps} steps)",
        tasks.len(),
        took.as_secs_f64() * 1e3,
        tasks.len() as f64 / took.as_secs_f64(),
        tasks.len() + 1,
    );
    // Check the workers' answers against this process's own.
    let wrong = tasks
        .iter()
        .zip(&results)
        .filter(|(n, r)| collatz_steps(**n) != **r)
        .count();
    if wrong != 0 {
        return Err(format!("{wrong} wrong results").into());
    }
    println!("all {} results verified", results.len());

    // A second round on the same, still running workers.
    let round2 = pool.map(&[27, 97, 871, 6171])?;
    println!("again on the same workers: steps of 27, 97, 871, 6171 = {round2:?}");

    for (pid, status) in pool.close()? {
        println!(
            "worker {pid} exited {} after {:.1} ms of CPU",
            status.exitcode(),
            (status.rusage().user_us + status.rusage().system_us) as f64 / 1e3
        );
    }
    Ok(())
}
