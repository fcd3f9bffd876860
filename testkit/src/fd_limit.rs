//! Running a process out of fds, for the fd-exhaustion tests.

use std::os::fd::OwnedFd;

/// Sets this process's soft `RLIMIT_NOFILE` to `soft` (at most the hard
/// limit).
pub fn set_soft_limit(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills our struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = soft.min(lim.rlim_max);
    // SAFETY: setrlimit reads our struct; the soft limit stays within the
    // hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// Opens `/dev/null` until the fd table is full, then closes `spare` of
/// them again; the rest stay open while the returned vector lives.
pub fn fill_fd_table(spare: usize) -> Vec<OwnedFd> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(OwnedFd::from(f)),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    held.truncate(held.len().saturating_sub(spare));
    held
}
