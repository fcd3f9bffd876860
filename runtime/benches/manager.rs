//! Manager latency and throughput, with CPython's `multiprocessing.Manager`
//! doing the same work in the same run (when `python3` is on the PATH).
//!
//! `cargo bench -p mproc --bench manager`. Prints, for mproc and CPython:
//! - a dict `set` + `get` round trip from one client (two calls), p50/p99;
//! - the same pairs from 4 client processes at once, pairs per second;
//!
//! then the ratios, and the floor: two 64-byte round trips over a Unix
//! socket pair between two processes (what a set + get cannot beat), in the
//! same run. Set `MANAGER_BENCH_QUICK=1` for a short run.
mod common;

use std::time::{Duration, Instant};

use mproc::get_context;
use mproc::manager::{Barrier, Dict};

const PY: &str = r#"
import multiprocessing as mp, sys, time
def client(d, b, n, i):
    b.wait()
    t = time.perf_counter()
    for k in range(n):
        d[i * n + k] = k
        d[i * n + k]
    return time.perf_counter() - t
def worker(d, b, n, i, out):
    out.put(client(d, b, n, i))
if __name__ == "__main__":
    method, rounds, per_client = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ctx = mp.get_context(method)
    with ctx.Manager() as m:
        d = m.dict()
        for k in range(1000):
            d[k] = k
            d[k]
        lat = []
        for k in range(rounds):
            t = time.perf_counter()
            d[k] = k
            d[k]
            lat.append(time.perf_counter() - t)
        lat.sort()
        print("p50_us", lat[len(lat) // 2] * 1e6)
        print("p99_us", lat[len(lat) * 99 // 100] * 1e6)
        b = m.Barrier(5)
        out = ctx.Queue()
        ps = [ctx.Process(target=worker, args=(d, b, per_client, i, out)) for i in range(4)]
        for p in ps:
            p.start()
        b.wait()
        t = time.perf_counter()
        for p in ps:
            out.get()
        wall = time.perf_counter() - t
        for p in ps:
            p.join()
        print("pairs_per_s_4", 4 * per_client / wall)
"#;

struct Figures {
    p50_us: f64,
    p99_us: f64,
    pairs_per_s_4: f64,
}

fn client(args: (Dict<u64, u64>, Barrier, u64, u64)) -> f64 {
    let (d, b, n, i) = args;
    // One call first so the connection exists before the clock starts.
    d.len().unwrap();
    b.wait().unwrap();
    let t = Instant::now();
    for k in 0..n {
        d.set(&(i * n + k), &k).unwrap();
        d.get(&(i * n + k)).unwrap();
    }
    t.elapsed().as_secs_f64()
}

fn bench_mproc(method: &str, rounds: usize, per_client: u64) -> Figures {
    let ctx = get_context(method).unwrap();
    let manager = ctx.manager().unwrap();
    let d = manager.dict::<u64, u64>().unwrap();
    for k in 0..1000 {
        d.set(&k, &k).unwrap();
        d.get(&k).unwrap();
    }
    let mut lat: Vec<Duration> = (0..rounds as u64)
        .map(|k| {
            let t = Instant::now();
            d.set(&k, &k).unwrap();
            std::hint::black_box(d.get(&k).unwrap());
            t.elapsed()
        })
        .collect();
    lat.sort_unstable();
    let pct = |p: usize| lat[lat.len() * p / 100].as_secs_f64() * 1e6;
    let (p50_us, p99_us) = (pct(50), pct(99));

    let b = manager.barrier(5).unwrap();
    let mut ps: Vec<_> = (0..4)
        .map(|i| {
            ctx.process(client, (d.clone(), b.clone(), per_client, i))
                .start()
                .unwrap()
        })
        .collect();
    b.wait_timeout(Duration::from_secs(60)).unwrap();
    let t = Instant::now();
    for p in &mut ps {
        p.join_timeout(Duration::from_secs(300)).unwrap();
    }
    let wall = t.elapsed().as_secs_f64();
    manager.shutdown().unwrap();
    Figures {
        p50_us,
        p99_us,
        pairs_per_s_4: 4.0 * per_client as f64 / wall,
    }
}

fn bench_cpython(method: &str, rounds: usize, per_client: u64) -> Option<Figures> {
    let get = common::python_figures("manager_bench.py", PY, &[&method, &rounds, &per_client])?;
    Some(Figures {
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
        pairs_per_s_4: get("pairs_per_s_4")?,
    })
}

/// p50 of two blocking 64-byte ping-pongs over a socket pair with a child.
fn floor(rounds: usize) -> f64 {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let ctx = get_context("fork").unwrap();
    let total = rounds * 2 + 2000;
    let mut child = ctx
        .process_closure(move || {
            let mut buf = [0u8; 64];
            for _ in 0..total {
                b.read_exact(&mut buf).unwrap();
                b.write_all(&buf).unwrap();
            }
        })
        .start()
        .unwrap();
    let mut buf = [0u8; 64];
    let mut ping = |a: &mut UnixStream| {
        a.write_all(&buf.clone()).unwrap();
        a.read_exact(&mut buf).unwrap();
    };
    for _ in 0..1000 {
        ping(&mut a);
        ping(&mut a);
    }
    let mut lat: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            ping(&mut a);
            ping(&mut a);
            t.elapsed()
        })
        .collect();
    child.join_timeout(Duration::from_secs(60)).unwrap();
    lat.sort_unstable();
    lat[lat.len() / 2].as_secs_f64() * 1e6
}

fn main() {
    let quick = std::env::var_os("MANAGER_BENCH_QUICK").is_some();
    let (rounds, per_client) = if quick {
        (2_000, 2_000)
    } else {
        (20_000, 20_000)
    };
    println!("manager dict set+get: {rounds} timed pairs; 4 clients x {per_client} pairs");
    let methods: Vec<String> = match std::env::var("MANAGER_BENCH_METHODS") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => vec!["forkserver".into(), "fork".into(), "spawn".into()],
    };
    let skip_py = std::env::var_os("MANAGER_BENCH_NO_PYTHON").is_some();
    println!(
        "floor   two 64 B round trips over a socket pair between processes: p50 {:.1} us",
        floor(rounds)
    );
    for method in methods.iter().map(String::as_str) {
        let m = bench_mproc(method, rounds, per_client);
        println!(
            "mproc   {method:<10} set+get p50 {:6.1} us  p99 {:6.1} us  4 clients {:>9.0} pairs/s",
            m.p50_us, m.p99_us, m.pairs_per_s_4
        );
        match (!skip_py)
            .then(|| bench_cpython(method, rounds, per_client))
            .flatten()
        {
            Some(c) => {
                println!(
                    "CPython {method:<10} set+get p50 {:6.1} us  p99 {:6.1} us  4 clients {:>9.0} pairs/s",
                    c.p50_us, c.p99_us, c.pairs_per_s_4
                );
                println!(
                    "ratio   {method:<10} p50 {:.2}x faster, 4-client throughput {:.2}x",
                    c.p50_us / m.p50_us,
                    m.pairs_per_s_4 / c.pairs_per_s_4
                );
            }
            None => println!("CPython {method:<10} (python3 not available: skipped)"),
        }
    }
}
