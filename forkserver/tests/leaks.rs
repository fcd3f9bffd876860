//! Nothing is left behind: after 1,000 spawns of every kind (entry with a
//! passed pipe, exec, killed, failed), the parent's and the server's fd
//! counts are back at their baseline and the server has no unreaped child.
//!
//! One test in its own binary, so no other test's fds are counted.
mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use forkserver::{Command, EntryArgs, ForkServer};

fn entry(start: EntryArgs) -> i32 {
    match start.data.as_slice() {
        b"write" => {
            let Ok(fd) = start.take_fd(3) else { return 2 };
            let mut f = std::fs::File::from(fd);
            if f.write_all(b"ok").is_err() {
                return 3;
            }
            0
        }
        b"sleep" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 0,
    }
}
forkserver::bootstrap!(entry);

const SPAWNS: usize = 1_000;

fn one_round(fs: &ForkServer, i: usize) {
    match i % 10 {
        // An exec child.
        0 => {
            let mut c = fs.spawn(&Command::exec("/bin/true", [""; 0])).unwrap();
            assert_eq!(common::wait(&mut c).code(), Some(0));
        }
        // A child killed by a signal.
        1 => {
            let mut c = fs.spawn(&Command::run(b"sleep".to_vec())).unwrap();
            c.signal(libc::SIGKILL).unwrap();
            assert_eq!(common::wait(&mut c).signal(), Some(9));
        }
        // A spawn that fails in the child's set-up.
        2 => {
            assert!(fs.spawn(&Command::exec("/nonexistent/x", [""; 0])).is_err());
        }
        // A child dropped unwaited: the server reaps it all the same.
        3 => {
            drop(fs.spawn(&Command::run(b"".to_vec())).unwrap());
        }
        // An entry child writing through a passed pipe.
        _ => {
            let (r, w) = std::io::pipe().unwrap();
            let cmd = Command::run(b"write".to_vec()).fd(w.as_fd(), 3);
            let mut c = fs.spawn(&cmd).unwrap();
            drop(cmd);
            drop(w);
            assert_eq!(common::read_to_end(r.into(), common::WAIT), b"ok");
            assert_eq!(common::wait(&mut c).code(), Some(0));
        }
    }
}

#[test]
fn no_fd_and_no_zombie_survives_1000_spawns() {
    let _w = common::watchdog("leaks", Duration::from_secs(240));
    // What this process inherited without close-on-exec (from the shell or
    // the build tool) is not ours to judge.
    let inherited = common::fds_without_cloexec(std::process::id() as i32);
    let fs = ForkServer::launch(common::config()).expect("launch");
    let server = fs.pid();
    // Warm up once per kind, so lazily made state (pidfd detection, the
    // reaper's buffers) is in the baseline.
    for i in 0..10 {
        one_round(&fs, i);
    }
    assert!(common::eventually(common::WAIT, || common::settled(server)));
    // The warm child reserved for this connection (its socket and pidfd)
    // is received with the next reply: held before as after.
    fs.connection().unwrap().ping().unwrap();
    let parent_before = common::fd_count();
    let server_before = common::fd_count_of(server);
    let parent_list = common::fd_list(None);
    let server_list = common::fd_list(Some(server));

    for i in 0..SPAWNS {
        one_round(&fs, i);
    }

    // Dropped children may still be finishing: give them a moment.
    assert!(
        common::eventually(common::WAIT, || common::settled(server)),
        "the server still has children: {:?}",
        common::children_of(server)
    );
    assert!(common::zombies_of(server as u32).is_empty());
    fs.connection().unwrap().ping().unwrap();
    let parent_after = common::fd_count();
    let server_after = common::fd_count_of(server);
    assert_eq!(
        parent_after,
        parent_before,
        "parent fds: before {parent_list:#?} after {:#?}",
        common::fd_list(None)
    );
    assert_eq!(
        server_after,
        server_before,
        "server fds: before {server_list:#?} after {:#?}",
        common::fd_list(Some(server))
    );
    // Every fd the crate opened, here and in the server, is close-on-exec;
    // and the server holds none of what its parent inherited.
    assert_eq!(
        common::fds_without_cloexec(server),
        Vec::<String>::new(),
        "server fds without close-on-exec"
    );
    assert_eq!(
        common::fds_without_cloexec(std::process::id() as i32),
        inherited,
        "parent fds without close-on-exec"
    );
    // And this process has no zombie child either (the server is alive).
    assert!(common::zombies_of(std::process::id()).is_empty());
    eprintln!(
        "after {SPAWNS} spawns: parent {parent_after} fds, server {server_after} fds, no zombies"
    );

    drop(fs);
    server_does_not_hold_fds_its_parent_left_inheritable();
}

/// Regression: the server used to inherit every fd its parent had left
/// without close-on-exec (here, a build tool's jobserver pipe and a stray
/// `/dev/null`), and a pipe it holds never reports EOF to its reader.
#[allow(unsafe_code)]
fn server_does_not_hold_fds_its_parent_left_inheritable() {
    let mut p = [0; 2];
    // SAFETY: pipe() (no O_CLOEXEC on purpose) fills our array.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe {
        use std::os::fd::{FromRawFd, OwnedFd};
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    };
    let fs = ForkServer::launch(common::config()).expect("launch");
    drop(w);
    assert!(
        common::readable(r.as_fd(), Duration::from_secs(5)),
        "the pipe never reported EOF: the server holds its write end"
    );
    assert_eq!(common::read_to_end(r, common::WAIT), b"");
    assert_eq!(common::fds_without_cloexec(fs.pid()), Vec::<String>::new());
}
