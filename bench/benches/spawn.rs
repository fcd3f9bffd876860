//! Spawn → join latency of `mproc`'s three start methods against raw floors
//! and peers, from four kinds of parent (small, 1 GiB and 4 GiB of touched
//! heap, 32 busy threads at normal and at idle priority).
//!
//! Run with `cargo bench --manifest-path bench/Cargo.toml`
//! (`MPROC_BENCH_QUICK=1` for a short smoke run). Methods are sampled in
//! round-robin order, so every method sees the same noise from the rest of
//! the machine. Prints one markdown table per parent, the target ratios, and
//! draws `docs/bench-spawn.svg` (p50 against parent heap size).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plotters::prelude::*;

/// Set in the environment of a raw re-exec: exit at once.
const REEXEC_MARKER: &str = "MPROC_BENCH_REEXEC";
const MIB: usize = 1 << 20;

/// The target every method runs.
fn inc(x: u64) -> u64 {
    x + 1
}

fn touched_heap(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    black_box(v)
}

/// `fork` + child `_exit(0)` + `waitpid`.
#[allow(unsafe_code)]
fn raw_fork() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so
    // this is sound in a multithreaded parent.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe, never returns.
        unsafe { libc::_exit(0) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    wait_ok(pid);
}

/// How long the target of the "busy child" table computes.
const BUSY_MS: u64 = 10;

/// A target that computes for `ms` milliseconds (no system call meanwhile
/// but the clock's, which is in the vDSO).
fn busy(ms: u64) -> u64 {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < Duration::from_millis(ms) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    x
}

/// Time until `start` returns, for a child that computes; the join after
/// it is not counted.
fn start_busy(ctx: mproc::Context) -> Duration {
    let t = Instant::now();
    let mut p = ctx.process(busy, BUSY_MS).start().expect("start");
    let d = t.elapsed();
    p.join().expect("join");
    d
}

/// The floor of [`start_busy`]: time until `fork` returns in the parent,
/// for a child that computes.
#[allow(unsafe_code)]
fn raw_start_busy() -> Duration {
    let t = Instant::now();
    // SAFETY: the child reads the clock and calls `_exit`, both
    // async-signal-safe (the vDSO clock takes no lock).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let start = libc_now();
        while libc_now() - start < BUSY_MS as i64 * 1_000_000 {
            std::hint::spin_loop();
        }
        // SAFETY: async-signal-safe, never returns.
        unsafe { libc::_exit(0) };
    }
    let d = t.elapsed();
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    wait_ok(pid);
    d
}

/// `CLOCK_MONOTONIC` in nanoseconds, straight from libc.
#[allow(unsafe_code)]
fn libc_now() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[allow(unsafe_code)]
fn wait_ok(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `pid` is our unreaped child; `status` is a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

/// Moves the calling thread to `SCHED_IDLE`.
#[allow(unsafe_code)]
fn set_idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the kernel reads `param`.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r != 0 {
        eprintln!("SCHED_IDLE: {}", std::io::Error::last_os_error());
    }
}

/// `posix_spawn` of `/proc/self/exe` with [`REEXEC_MARKER`] set, + `waitpid`.
struct ReExec {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl ReExec {
    fn new() -> ReExec {
        use std::os::unix::ffi::OsStrExt;
        let mut envp: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        envp.push(CString::new(format!("{REEXEC_MARKER}=1")).expect("no NUL"));
        ReExec {
            path: CString::new("/proc/self/exe").expect("no NUL"),
            argv: vec![CString::new("mproc-bench-reexec").expect("no NUL")],
            envp,
        }
    }

    #[allow(unsafe_code)]
    fn run(&self) {
        let argv: Vec<*mut libc::c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr().cast_mut())
            .chain([std::ptr::null_mut()])
            .collect();
        let envp: Vec<*mut libc::c_char> = self
            .envp
            .iter()
            .map(|a| a.as_ptr().cast_mut())
            .chain([std::ptr::null_mut()])
            .collect();
        let mut pid = 0;
        // SAFETY: every pointer is a NUL-terminated string owned by `self`,
        // both arrays end with a null pointer and outlive the call.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                argv.as_ptr(),
                envp.as_ptr(),
            )
        };
        assert_eq!(
            rc,
            0,
            "posix_spawn: {}",
            std::io::Error::from_raw_os_error(rc)
        );
        wait_ok(pid);
    }
}

fn mproc_run(ctx: mproc::Context) {
    let mut p = ctx.process(inc, 41).start().expect("start");
    assert_eq!(p.join().expect("join"), 42);
}

fn procspawn_run() {
    let h = procspawn::spawn(41u64, inc);
    assert_eq!(h.join().expect("procspawn join"), 42);
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    n: usize,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let at = |q: usize| v[((n * q) / 100).min(n - 1)].as_secs_f64() * 1e6;
    Stats {
        p50: at(50),
        p99: at(99),
        n,
    }
}

type Method<'a> = (&'static str, usize, Box<dyn FnMut() + 'a>);

/// Samples every method round-robin until each has its count.
fn measure(methods: &mut [Method<'_>]) -> Vec<(&'static str, Stats)> {
    let max = methods.iter().map(|m| m.1).max().unwrap_or(0);
    for (_, _, f) in methods.iter_mut() {
        f();
    }
    let mut samples: Vec<Vec<Duration>> = methods.iter().map(|m| Vec::with_capacity(m.1)).collect();
    for i in 0..max {
        for (k, (_, n, f)) in methods.iter_mut().enumerate() {
            if i < *n {
                let t = Instant::now();
                f();
                samples[k].push(t.elapsed());
            }
        }
    }
    methods
        .iter()
        .zip(samples)
        .map(|(m, s)| (m.0, stats(s)))
        .collect()
}

/// CPython's multiprocessing doing the same work (`None` without python3).
fn cpython(method: &str, heap_mib: usize, threads: usize, iters: usize) -> Option<Stats> {
    let script = std::env::temp_dir().join(format!("mproc_mp_bench_{}.py", std::process::id()));
    std::fs::write(&script, include_str!("mp_bench.py")).ok()?;
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([
            method.to_string(),
            heap_mib.to_string(),
            threads.to_string(),
            iters.to_string(),
        ])
        .output();
    let _ = std::fs::remove_file(&script);
    let out = out.ok()?;
    if !out.status.success() {
        eprintln!(
            "python3 {method}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (f.len() == 3).then(|| Stats {
        p50: f[0],
        p99: f[1],
        n: f[2] as usize,
    })
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

struct Parent {
    label: &'static str,
    heap_mib: usize,
    threads: usize,
    /// The busy threads run as `SCHED_IDLE`: they take every cycle nobody
    /// else wants, without starving the measured thread on a small machine.
    idle: bool,
    /// Iterations: cheap methods, re-exec methods, fork methods (which pay
    /// for the heap), CPython fork / forkserver / spawn.
    n_cheap: usize,
    n_exec: usize,
    n_fork: usize,
    n_py: [usize; 3],
}

fn main() -> ExitCode {
    if std::env::var_os(REEXEC_MARKER).is_some() {
        return ExitCode::SUCCESS;
    }
    // procspawn's children run their function inside `init` and exit there;
    // mproc's roles (fork server, spawn child) do the same inside its `init`.
    procspawn::init();
    let _rt = match mproc::init() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mproc::init: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quick = std::env::var_os("MPROC_BENCH_QUICK").is_some();
    let s = |n: usize| if quick { (n / 10).max(2) } else { n };
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let parents = [
        Parent {
            label: "small",
            heap_mib: 0,
            threads: 0,
            idle: false,
            n_cheap: s(1000),
            n_exec: s(300),
            n_fork: s(1000),
            n_py: [s(200), s(40), s(20)],
        },
        Parent {
            label: "1 GiB heap",
            heap_mib: 1024,
            threads: 0,
            idle: false,
            n_cheap: s(400),
            n_exec: s(150),
            n_fork: s(30),
            n_py: [s(20), s(30), s(15)],
        },
        Parent {
            label: "4 GiB heap",
            heap_mib: 4096,
            threads: 0,
            idle: false,
            n_cheap: s(300),
            n_exec: s(100),
            n_fork: s(12),
            n_py: [s(8), s(20), s(10)],
        },
        Parent {
            label: "32 busy threads",
            heap_mib: 0,
            threads: 32,
            idle: false,
            n_cheap: s(100),
            n_exec: s(40),
            n_fork: s(100),
            n_py: [s(30).min(5), s(30).min(5), s(30).min(5)],
        },
        Parent {
            label: "32 busy threads at idle priority",
            heap_mib: 0,
            threads: 32,
            idle: true,
            n_cheap: s(1000),
            n_exec: s(300),
            n_fork: s(1000),
            n_py: [0, 0, 0],
        },
    ];
    let started = Instant::now();
    let reexec = ReExec::new();
    let fork = mproc::get_context("fork").expect("context");
    let spawn = mproc::get_context("spawn").expect("context");
    let fsrv = mproc::get_context("forkserver").expect("context");
    // results[parent][method] = stats
    let mut results: Vec<BTreeMap<&'static str, Stats>> = Vec::new();
    for p in &parents {
        let heap = touched_heap(p.heap_mib * MIB);
        let stop = Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..p.threads)
            .map(|_| {
                let stop = stop.clone();
                let idle = p.idle;
                std::thread::spawn(move || {
                    if idle {
                        set_idle_priority();
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let mut methods: Vec<Method<'_>> = vec![
            ("raw fork + waitpid", p.n_fork, Box::new(raw_fork)),
            ("raw re-exec + waitpid", p.n_exec, Box::new(|| reexec.run())),
            ("mproc fork", p.n_fork, Box::new(|| mproc_run(fork))),
            ("mproc spawn", p.n_exec, Box::new(|| mproc_run(spawn))),
            ("mproc forkserver", p.n_cheap, Box::new(|| mproc_run(fsrv))),
            ("procspawn 1.0", p.n_exec, Box::new(procspawn_run)),
        ];
        let mut map: BTreeMap<&'static str, Stats> = measure(&mut methods).into_iter().collect();
        drop(methods);
        stop.store(true, Ordering::Relaxed);
        for t in spinners {
            let _ = t.join();
        }
        drop(heap);
        if python.is_some() {
            for ((name, m), n) in [
                ("CPython fork", "fork"),
                ("CPython forkserver", "forkserver"),
                ("CPython spawn", "spawn"),
            ]
            .into_iter()
            .zip(p.n_py)
            .filter(|(_, n)| *n > 0)
            {
                if let Some(st) = cpython(m, p.heap_mib, p.threads, n) {
                    map.insert(name, st);
                }
            }
        }
        print_table(p.label, &map);
        results.push(map);
    }
    // How long `start` takes when the child computes at once: a start method
    // whose server or parent the new child can push off its CPU shows it
    // here, not in the rows above (their children exit at once).
    {
        let n = s(100);
        let mut samples: Vec<(&str, Vec<Duration>)> = vec![
            ("raw fork (until fork returns)", Vec::new()),
            ("mproc fork", Vec::new()),
            ("mproc forkserver", Vec::new()),
            ("mproc spawn", Vec::new()),
        ];
        for _ in 0..n {
            samples[0].1.push(raw_start_busy());
            samples[1].1.push(start_busy(fork));
            samples[2].1.push(start_busy(fsrv));
            samples[3].1.push(start_busy(spawn));
        }
        let mut rows: Vec<(&str, Stats)> = samples
            .into_iter()
            .map(|(name, v)| (name, stats(v)))
            .collect();
        if python.is_some() {
            for (name, m) in [
                ("CPython fork", "fork"),
                ("CPython forkserver", "forkserver"),
                ("CPython spawn", "spawn"),
            ] {
                if let Some(st) = cpython(&format!("{m}:{BUSY_MS}"), 0, 0, n.min(30)) {
                    rows.push((name, st));
                }
            }
        }
        println!("\n### start() of a child that computes for {BUSY_MS} ms, small parent\n");
        println!("| method | p50 | p99 | n |");
        println!("|---|---|---|---|");
        for (name, st) in rows {
            println!(
                "| {name} | {} | {} | {} |",
                fmt_us(st.p50),
                fmt_us(st.p99),
                st.n
            );
        }
    }
    print_ratios(&results);
    if let Some(v) = &python {
        println!("({v})");
    }
    let svg = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bench-spawn.svg");
    match plot(svg, &results[..3]) {
        Ok(()) => println!("plot: docs/bench-spawn.svg"),
        Err(e) => eprintln!("plot failed: {e}"),
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn print_table(label: &str, map: &BTreeMap<&'static str, Stats>) {
    println!("\n### Parent: {label}\n");
    println!("| method | p50 | p99 | n |");
    println!("|---|---|---|---|");
    for (name, s) in map {
        println!(
            "| {name} | {} | {} | {} |",
            fmt_us(s.p50),
            fmt_us(s.p99),
            s.n
        );
    }
}

fn print_ratios(r: &[BTreeMap<&'static str, Stats>]) {
    let p = |i: usize, m: &str| r[i].get(m).map(|s| s.p50).unwrap_or(f64::NAN);
    println!("\n### Ratios of p50 (targets in brackets)\n");
    println!(
        "- mproc forkserver / raw fork, small: {:.2} (≤ 1.4)",
        p(0, "mproc forkserver") / p(0, "raw fork + waitpid")
    );
    println!(
        "- mproc spawn / raw re-exec, small: {:.2} (≤ 1.2)",
        p(0, "mproc spawn") / p(0, "raw re-exec + waitpid")
    );
    println!(
        "- mproc fork / raw fork, small: {:.2} (≤ 1.3)",
        p(0, "mproc fork") / p(0, "raw fork + waitpid")
    );
    println!(
        "- mproc forkserver 4 GiB / small: {:.2} (≤ 1.1); 1 GiB / small: {:.2}",
        p(2, "mproc forkserver") / p(0, "mproc forkserver"),
        p(1, "mproc forkserver") / p(0, "mproc forkserver")
    );
    println!(
        "- mproc forkserver 32 busy threads / small: {:.2} (≤ 1.2); at idle priority: {:.2}",
        p(3, "mproc forkserver") / p(0, "mproc forkserver"),
        p(4, "mproc forkserver") / p(0, "mproc forkserver")
    );
    println!(
        "- 32 busy threads at idle priority / small: raw fork {:.2}, mproc fork {:.2}, \
         mproc spawn {:.2}",
        p(4, "raw fork + waitpid") / p(0, "raw fork + waitpid"),
        p(4, "mproc fork") / p(0, "mproc fork"),
        p(4, "mproc spawn") / p(0, "mproc spawn")
    );
    for (i, label) in ["small", "1 GiB", "4 GiB", "32 threads"].iter().enumerate() {
        println!(
            "- {label}: mproc forkserver vs procspawn {:.2}, vs CPython forkserver {:.2}; \
             mproc spawn vs CPython spawn {:.2}; mproc fork vs CPython fork {:.2}",
            p(i, "mproc forkserver") / p(i, "procspawn 1.0"),
            p(i, "mproc forkserver") / p(i, "CPython forkserver"),
            p(i, "mproc spawn") / p(i, "CPython spawn"),
            p(i, "mproc fork") / p(i, "CPython fork"),
        );
    }
}

/// p50 (ms, log scale) against parent heap (GiB), one line per method.
fn plot(path: &str, r: &[BTreeMap<&'static str, Stats>]) -> Result<(), Box<dyn std::error::Error>> {
    let heaps = [0.0, 1.0, 4.0];
    let names: Vec<&'static str> = r[0].keys().copied().collect();
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for m in r {
        for s in m.values() {
            lo = lo.min(s.p50 / 1000.0);
            hi = hi.max(s.p50 / 1000.0);
        }
    }
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "spawn → join p50 vs parent heap (2 vCPU, one run)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.1f64..4.1f64, ((lo * 0.7)..(hi * 1.5)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("touched parent heap (GiB)")
        .y_desc("p50 (ms, log scale)")
        .draw()?;
    for (i, name) in names.iter().enumerate() {
        let pts: Vec<(f64, f64)> = heaps
            .iter()
            .zip(r)
            .filter_map(|(&h, m)| m.get(name).map(|s| (h, s.p50 / 1000.0)))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
