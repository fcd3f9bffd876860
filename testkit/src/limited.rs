//! Running a program under a process limit, so that a program that starts
//! copies of itself without end is stopped by the kernel rather than taking
//! the machine down.
//!
//! As root, the program runs as a user id nothing else on the machine uses,
//! with `RLIMIT_NPROC` (which counts that user's tasks, threads included);
//! as another user, with the limit set to the tasks that user already has
//! plus the allowance.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a limited run ended.
#[derive(Debug)]
pub struct Limited {
    /// Its exit code (`None`: killed by a signal, or by the deadline).
    pub code: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
    /// Whether the deadline ran out (the run was killed then).
    pub timed_out: bool,
}

/// Tasks a test program may have: the main thread and its helpers, the
/// fork server, two pool workers and a child, with room to spare; a copy of
/// the program started from each copy would pass it within a second.
pub const TASKS: u64 = 48;

/// How long a test program may run before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// [`run_limited`] with the tests' allowance ([`TASKS`], [`DEADLINE`]) for
/// `program`, a path (as `env!("CARGO_BIN_EXE_<name>")` gives it).
pub fn run_program(program: &str) -> Limited {
    run_program_env(program, &[])
}

/// [`run_program`] with `env` added to the program's environment.
pub fn run_program_env(program: &str, env: &[(&str, &str)]) -> Limited {
    run_limited_env(Path::new(program), env, TASKS, DEADLINE)
}

impl Limited {
    /// Asserts that the run ended by itself, with exit code `code`.
    ///
    /// # Panics
    /// Otherwise, showing the whole run.
    pub fn assert_exited(&self, code: i32) {
        assert!(!self.timed_out, "{self:?}");
        assert_eq!(self.code, Some(code), "{self:?}");
    }

    /// Asserts that stderr contains `needle`.
    ///
    /// # Panics
    /// Otherwise, showing stderr.
    pub fn assert_stderr_has(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "{needle:?} missing: {}",
            self.stderr
        );
    }

    /// Asserts that stderr does not contain `needle`.
    ///
    /// # Panics
    /// Otherwise, showing stderr.
    pub fn assert_stderr_lacks(&self, needle: &str) {
        assert!(
            !self.stderr.contains(needle),
            "{needle:?} present: {}",
            self.stderr
        );
    }
}

/// Runs `program` with at most `tasks` more tasks (processes and threads)
/// than its user already has, and kills it (and whatever it started) after
/// `deadline`. The binary is copied to a fresh directory first, so that the
/// other user can run it wherever the build tree lives.
pub fn run_limited(program: &Path, tasks: u64, deadline: Duration) -> Limited {
    run_limited_env(program, &[], tasks, deadline)
}

/// [`run_limited`] with `env` added to the program's environment.
pub fn run_limited_env(
    program: &Path,
    env: &[(&str, &str)],
    tasks: u64,
    deadline: Duration,
) -> Limited {
    let run = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("limited-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    set_mode(&dir, 0o755);
    let copy: PathBuf = dir.join(program.file_name().expect("a file"));
    // A hard link where it can be: a copy is written through an fd that a
    // concurrent fork elsewhere in this test process can hold open for a
    // moment, and exec then fails with ETXTBSY (retried below).
    if std::fs::hard_link(program, &copy).is_err() {
        std::fs::copy(program, &copy).expect("copy the program");
        set_mode(&copy, 0o755);
    }

    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let uid: u32 = if root {
        // A user id nothing else runs as: one per run, since the limit
        // counts the user's tasks and the clean-up kills them all.
        61_000 + (std::process::id() * 16 + run) % 4_000
    } else {
        // SAFETY: as above.
        unsafe { libc::getuid() }
    };
    let limit = tasks + if root { 0 } else { tasks_of_user(uid) };

    let mut cmd = Command::new(&copy);
    cmd.envs(env.iter().copied())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit,
    // setgroups, setgid, setuid) on values computed before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if root
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.expect("start the limited program"),
        }
    };
    let pgid = child.id() as i32;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= end {
            timed_out = true;
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever the program left in its group goes too (none is expected),
    // and so do the processes of the limited user.
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if root {
        kill_user(uid);
    }
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Limited {
        code: status.code(),
        stdout,
        stderr,
        timed_out,
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Tasks (threads of every process) whose real user is `uid`.
fn tasks_of_user(uid: u32) -> u64 {
    pids_of_user(uid)
        .iter()
        .map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| d.count() as u64)
                .unwrap_or(0)
        })
        .sum()
}

fn pids_of_user(uid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
                })
                == Some(uid)
        })
        .collect()
}

fn kill_user(uid: u32) {
    for pid in pids_of_user(uid) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
